//! A connection switched to another protocol (WebSocket or another `Upgrade`, after the upstream's
//! 101): bytes relayed both ways, unread, until both sides have closed, either side fails, or nothing
//! moved in either direction for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;

use crate::exchange::Io;

/// How a relayed connection ended.
#[derive(Debug)]
pub(crate) enum Closed {
    /// Both sides closed their sending side; bytes each way (client to upstream, upstream to client).
    Both(u64, u64),
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A side's connection failed.
    Failed(io::Error),
}

/// Relays between the client (its read and write halves, and bytes it sent past its request head)
/// and the upstream (its connection, and bytes it sent past its 101).
pub(crate) async fn relay<R, W>(
    client_rd: R,
    client_wr: W,
    client_early: Bytes,
    upstream: Box<dyn Io>,
    upstream_early: Bytes,
    idle: Duration,
) -> Closed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = tokio::io::join(
        Watched {
            io: client_rd,
            start,
            last: last.clone(),
        },
        client_wr,
    );
    let mut upstream = Watched {
        io: upstream,
        start,
        last: last.clone(),
    };
    if !upstream_early.is_empty() {
        if let Err(e) = client.write_all(&upstream_early).await {
            return Closed::Failed(e);
        }
    }
    if !client_early.is_empty() {
        if let Err(e) = upstream.write_all(&client_early).await {
            return Closed::Failed(e);
        }
    }
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return match r {
                Ok((up, down)) => Closed::Both(up, down),
                Err(e) => Closed::Failed(e),
            },
            () = tokio::time::sleep_until(deadline) => {
                let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if moved + idle <= Instant::now() {
                    return Closed::Idle;
                }
            }
        }
    }
}

/// A reader that notes when it last read something (milliseconds since `start`).
struct Watched<S> {
    io: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn bytes_go_both_ways_early_ones_first_and_a_close_on_each_side_ends_it() {
        let (client_far, client_near) = tokio::io::duplex(64 * 1024);
        let (up_near, mut up_far) = tokio::io::duplex(64 * 1024);
        let (rd, wr) = tokio::io::split(client_near);
        let relay = tokio::spawn(relay(
            rd,
            wr,
            Bytes::from_static(b"c0"),
            Box::new(up_near),
            Bytes::from_static(b"u0"),
            Duration::from_secs(30),
        ));
        let (mut crd, mut cwr) = tokio::io::split(client_far);
        cwr.write_all(b"c1").await.unwrap();
        up_far.write_all(b"u1").await.unwrap();
        let mut got = [0u8; 4];
        up_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"c0c1");
        crd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"u0u1");
        cwr.shutdown().await.unwrap();
        // The client's close reaches the upstream; the upstream may still answer, then closes.
        assert_eq!(up_far.read(&mut got).await.unwrap(), 0);
        up_far.write_all(b"bye").await.unwrap();
        up_far.shutdown().await.unwrap();
        let mut rest = Vec::new();
        crd.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        match relay.await.unwrap() {
            Closed::Both(up, down) => assert_eq!((up, down), (2, 5)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_past_the_timeout_is_closed_and_traffic_keeps_it_open() {
        let (client_far, client_near) = tokio::io::duplex(1024);
        let (up_near, mut up_far) = tokio::io::duplex(1024);
        let (rd, wr) = tokio::io::split(client_near);
        let started = Instant::now();
        let relay = tokio::spawn(relay(
            rd,
            wr,
            Bytes::new(),
            Box::new(up_near),
            Bytes::new(),
            Duration::from_secs(10),
        ));
        let (_crd, mut cwr) = tokio::io::split(client_far);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            cwr.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            up_far.read_exact(&mut b).await.unwrap();
        }
        let closed = relay.await.unwrap();
        assert!(matches!(closed, Closed::Idle), "{closed:?}");
        // Last byte at 18 s, idle for 10 s after it.
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(28) && took < Duration::from_secs(30), "{took:?}");
    }
}

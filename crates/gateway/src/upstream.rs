//! A worker's pool of HTTP/1.1 keep-alive connections to upstreams, keyed by authority.
//!
//! Each data-plane worker thread owns its pool (a thread-local: the worker is a single-threaded
//! runtime, so a request, its upstream connection and the connection's task all live on that thread).
//! The hot path takes no lock. Idle connections are reused last-in first-out, so a light load keeps
//! a few connections hot and the rest age out after [`IDLE_TIMEOUT`]. A connection goes
//! back to its queue when the response body it carried has been read to the end (see [`PooledBody`]);
//! one dropped mid-body is closed. A request that fails on a reused connection before any of it was
//! written (the upstream closed the idle connection) is retried once on a new connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::proxy::{Body, BoxError};

/// Idle connections kept per upstream authority, per worker.
pub const MAX_IDLE_PER_HOST: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// One upstream authority: its `Host` header and its idle connections, most recently used last.
#[derive(Default)]
struct Host {
    host_header: Option<HeaderValue>,
    idle: Vec<Idle>,
}

/// Upstreams by authority (as written in the integration URI).
type Hosts = HashMap<Box<str>, Host, foldhash::fast::RandomState>;

thread_local! {
    static HOSTS: RefCell<Hosts> = RefCell::new(Hosts::default());
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum SendError {
    /// Could not connect (refused, unreachable, name not resolved).
    Connect(std::io::Error),
    /// The connection failed while sending the request or reading the response head.
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "cannot connect to the upstream: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

/// Sends `req` (absolute URI, `http://authority/path?query`) to its upstream over a pooled or new
/// connection of the calling worker thread. The response body returns the connection to the pool when
/// read to the end.
pub async fn send(mut req: Request<Body>) -> Result<Response<Body>, SendError> {
    let authority = req
        .uri()
        .authority()
        .cloned()
        .ok_or_else(|| SendError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no authority")))?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    // One lookup: the Host header and, when there is one, an idle connection.
    let (host_header, idle) = HOSTS.with_borrow_mut(|hosts| {
        let h = match hosts.get_mut(authority.as_str()) {
            Some(h) => h,
            None => hosts.entry(authority.as_str().into()).or_default(),
        };
        let header = h
            .host_header
            .get_or_insert_with(|| HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost")))
            .clone();
        (header, take_idle(&mut h.idle))
    });
    req.headers_mut().insert(HOST, host_header);

    let mut req = req;
    let mut idle = idle;
    // A reused connection may have been closed by the upstream while idle; such a request was not
    // written and is retried once on a new connection.
    for attempt in 0..2 {
        let reusable = match idle.take() {
            Some(i) => ready(i).await,
            None => None,
        };
        let reusable = match reusable {
            Some(s) => Some(s),
            None if attempt == 0 => checkout(&authority).await,
            None => None,
        };
        let (mut sender, reused) = match reusable {
            Some(s) => (s, true),
            None => (connect(&authority).await?, false),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = PooledBody {
                    inner: body,
                    conn: Some((sender, authority)),
                };
                return Ok(Response::from_parts(parts, Body::new(body)));
            }
            Err(mut e) => match e.take_message() {
                Some(back) if reused => req = back,
                _ => return Err(SendError::Http(e.into_error())),
            },
        }
    }
    unreachable!("the second attempt always returns")
}

/// Closes this thread's idle connections past the idle timeout (the worker calls it periodically).
pub fn sweep() {
    HOSTS.with_borrow_mut(|hosts| {
        for h in hosts.values_mut() {
            h.idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() <= IDLE_TIMEOUT);
        }
    });
}

/// Idle connections of this thread, across all upstreams.
pub fn idle_count() -> usize {
    HOSTS.with_borrow(|hosts| hosts.values().map(|h| h.idle.len()).sum())
}

/// Takes an idle connection: a ready one among the four most recent (the most recent may have been
/// returned a moment ago and not be ready yet), else the most recent.
fn take_idle(idle: &mut Vec<Idle>) -> Option<Idle> {
    let n = idle.len();
    let pick = (n.saturating_sub(4)..n)
        .rev()
        .find(|&i| idle[i].sender.is_ready())
        .unwrap_or(n.checked_sub(1)?);
    Some(idle.remove(pick))
}

/// The idle connection, once ready; `None` if it is closed or too old.
async fn ready(Idle { mut sender, since }: Idle) -> Option<http1::SendRequest<Body>> {
    if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
        return None;
    }
    // Not ready yet: its connection task marks it ready within one turn of the worker's loop.
    if sender.is_ready() || sender.ready().await.is_ok() {
        Some(sender)
    } else {
        None
    }
}

/// An idle connection ready for a request, if there is one.
async fn checkout(authority: &http::uri::Authority) -> Option<http1::SendRequest<Body>> {
    loop {
        let idle = HOSTS.with_borrow_mut(|hosts| take_idle(&mut hosts.get_mut(authority.as_str())?.idle))?;
        if let Some(s) = ready(idle).await {
            return Some(s);
        }
    }
}

fn checkin(authority: http::uri::Authority, sender: http1::SendRequest<Body>) {
    if sender.is_closed() {
        return;
    }
    HOSTS.with_borrow_mut(|hosts| {
        let Some(h) = hosts.get_mut(authority.as_str()) else { return };
        // Full: the connection is dropped, which closes it.
        if h.idle.len() < MAX_IDLE_PER_HOST {
            h.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    });
}

async fn connect(authority: &http::uri::Authority) -> Result<http1::SendRequest<Body>, SendError> {
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that gives its connection back to the pool once read to the end.
struct PooledBody {
    inner: Incoming,
    conn: Option<(http1::SendRequest<Body>, http::uri::Authority)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, authority)) = self.conn.take() {
            checkin(authority, sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left to read (empty, HEAD, 204) may never be polled: its connection is
        // reusable all the same. One dropped mid-body is closed with it.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken: drop it.
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP/1.1 backend: answers every request on a connection with `body` (keep-alive), and
    /// closes the connection after `close_after` answers. Counts accepted connections.
    async fn backend(body: &'static [u8], close_after: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    while answered < close_after {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
                                return;
                            }
                            answered += 1;
                        }
                    }
                    // Closes without saying so, as an upstream's idle timeout does.
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: std::net::SocketAddr) -> Request<Body> {
        let mut r = Request::new(Body::new(http_body_util::Empty::new().map_err(|never| match never {})));
        *r.uri_mut() = format!("http://{addr}/x?y=1").parse().unwrap();
        r
    }

    async fn body_of(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = backend(b"hello", usize::MAX).await;
        for _ in 0..50 {
            let resp = send(get(addr)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(body_of(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for 50 sequential requests");
        assert_eq!(idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (addr, accepted) = backend(b"ok", 1).await;
        for i in 0..20 {
            let resp = send(get(addr)).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            // Whether the close has reached the pool yet (skipped) or not (retried on a new
            // connection), the request must succeed.
            assert_eq!(body_of(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
        let (addr, accepted) = backend(big, usize::MAX).await;
        let resp = send(get(addr)).await.unwrap();
        drop(resp);
        assert_eq!(idle_count(), 0, "not returned to the pool");
        let resp = send(get(addr)).await.unwrap();
        assert_eq!(body_of(resp).await.len(), 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the second request needed a new connection");
        assert_eq!(idle_count(), 1, "read to the end: back in the pool");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = send(get(addr)).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }
}

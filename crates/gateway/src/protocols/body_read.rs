//! Reading a framed HTTP/1.1 body off a connection: the one loop that request bodies (from clients)
//! and response bodies (from upstreams) share. It decodes what is buffered, reads more when it needs
//! more, and gives up when the peer sends nothing for `timeout` while it waits (counted from the start
//! of each wait, as nginx's `client_body_timeout` and `proxy_read_timeout` are).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};

use crate::protocols::h1::{Decoded, Decoder, ProtocolError};

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Framing errors, and the connection closing before the body's end ([`ProtocolError::Truncated`]).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("no body bytes for {} ms", .0.as_millis())]
    Stalled(Duration),
}

/// A body's decoding state and read buffer.
pub(crate) struct BodyRead {
    pub(crate) buf: BytesMut,
    pub(crate) decoder: Decoder,
    timeout: Duration,
    /// Armed when a read has to wait; its deadline is `timeout` after the wait began.
    timer: Option<Pin<Box<Sleep>>>,
    waiting_since: Option<Instant>,
}

impl BodyRead {
    pub(crate) fn new(buf: BytesMut, decoder: Decoder, timeout: Duration) -> BodyRead {
        BodyRead {
            buf,
            decoder,
            timeout,
            timer: None,
            waiting_since: None,
        }
    }

    /// The next piece of the body, reading from `io` as needed; `None` at its end.
    pub(crate) fn poll_next<R: AsyncRead + Unpin>(&mut self, io: &mut R, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
            }
            self.buf.reserve(self.decoder.want());
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf) {
                Poll::Pending => {
                    let at = *self.waiting_since.get_or_insert_with(Instant::now) + self.timeout;
                    let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        self.decoder = Decoder::Done;
                        return Poll::Ready(Some(Err(ReadError::Stalled(self.timeout))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Ok(0)) => {
                    return match self.decoder.eof() {
                        Ok(_) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Poll::Ready(Ok(_)) => self.waiting_since = None,
            }
        }
    }
}

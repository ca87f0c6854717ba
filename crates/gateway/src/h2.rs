//! HTTP/2 on the client side, on hyper's HTTP/2 server (over the `h2` crate): over TLS when ALPN chose
//! `h2`, and in cleartext with prior knowledge on the plain listener (a connection that opens with the
//! HTTP/2 preface). Every stream is a request of its own through [`crate::request::handle`]: its own
//! variant choice, metrics, access log line and span. The stream's response body tells the request's
//! `Finish` how it ended: read to its end, failed by the upstream, or reset by the client (the client's).
//!
//! The `h2` crate keeps HTTP/2's framing rules: a `content-length` that disagrees with the DATA frames,
//! connection-specific fields (`transfer-encoding`, `connection`, ...) and malformed pseudo-headers are
//! stream or connection errors, never forwarded; field values cannot hold CR, LF or NUL.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{Body, BoxError};
use crate::exchange::{Ending, Peer};
use crate::request::{self, Finish};
use crate::server::ConnCtl;
use crate::Gateway;

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits of an HTTP/2 connection (`server.http2`).
#[derive(Debug, Clone, Copy)]
pub struct Http2Limits {
    /// Streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// Largest header list a client may send (RFC 9113 §6.5.2, uncompressed), bytes.
    pub max_header_list_bytes: u32,
    /// Flow-control window of each stream, bytes.
    pub stream_window: u32,
    /// Flow-control window of the connection, bytes.
    pub connection_window: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 128,
            max_header_list_bytes: 64 * 1024,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
        }
    }
}

/// Serves an HTTP/2 connection until it closes (or the worker shuts down: then it stops taking new
/// streams and lets the open ones finish).
pub(crate) async fn serve<S>(gw: Arc<Gateway>, io: S, peer: Peer, ctl: Arc<ConnCtl>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gw.limits.http2;
    let svc_gw = gw.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (gw, peer) = (svc_gw.clone(), peer.clone());
        async move { Ok::<_, Infallible>(stream(gw, req, peer).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let closing = std::future::poll_fn(|cx| ctl.poll_closing(cx));
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
        }
        () = closing => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// One stream: the request through the handler, its response with a body that reports its end.
async fn stream(gw: Arc<Gateway>, mut req: Request<hyper::body::Incoming>, peer: Peer) -> Response<FinishBody> {
    // HTTP/2 carries the host in `:authority` (the URI); the handler and upstreams read `Host`.
    if !req.headers().contains_key(header::HOST) {
        if let Some(a) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    let head = req.method() == Method::HEAD;
    // The request runs in its own task: a client that resets the stream before the answer (a gRPC
    // deadline, a cancelled call) drops this future, but the request still ends and is recorded — as
    // the client's doing, like a client that goes away mid-answer.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let g = gw.clone();
    tokio::spawn(async move {
        let answer = request::handle(&g, req.map(Incoming), &peer).await;
        if let Err((resp, finish)) = tx.send(answer) {
            drop(resp);
            finish.done(g.access_log(), Ending::ClientGone);
        }
    });
    let Ok((resp, finish)) = rx.await else {
        // The request's task panicked: nothing to record it with.
        let mut r = Response::new(FinishBody {
            inner: crate::body::empty(),
            finish: None,
            gw,
            head,
        });
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    };
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        FinishBody {
            inner: body,
            finish: Some(finish),
            gw,
            head,
        },
    )
}

/// A client's HTTP/2 request body, as the handler takes it.
pub(crate) struct Incoming(hyper::body::Incoming);

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(|e| crate::error::ClientBodyError::Io(std::io::Error::other(format!("the client's HTTP/2 stream failed: {e}"))).into())
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A response body that tells the request's `Finish` how it ended.
pub(crate) struct FinishBody {
    inner: Body,
    finish: Option<Finish>,
    gw: Arc<Gateway>,
    /// A HEAD's response: hyper sends no body, so an unread one is not a client going away.
    head: bool,
}

impl FinishBody {
    fn end(&mut self, ending: Ending) {
        if let Some(f) = self.finish.take() {
            f.done(self.gw.access_log(), ending);
        }
    }
}

impl HttpBody for FinishBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.end(Ending::Complete),
            Poll::Ready(Some(Err(e))) => {
                let cause = e.to_string();
                self.end(Ending::Failed(cause));
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A gRPC call's status comes in the trailers.
                if let (Some(t), Some(f)) = (frame.trailers_ref(), self.finish.as_mut()) {
                    f.trailers(t);
                }
                // The last frame: hyper may not ask again once the body says it has ended.
                if self.inner.is_end_stream() {
                    self.end(Ending::Complete);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for FinishBody {
    fn drop(&mut self) {
        // Dropped before its end: the client reset the stream or went away (its doing), unless nothing
        // was to be sent.
        let ending = if self.head || self.inner.is_end_stream() {
            Ending::Complete
        } else {
            Ending::ClientGone
        };
        self.end(ending);
    }
}

/// A stream with bytes already read from it put back in front (the preface and what followed it).
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

//! A worker's HTTP/2 client to `http2: true` upstreams, on hyper's HTTP/2 client (over the `h2` crate):
//! one connection per upstream authority (and scheme) per worker thread, every request a stream on it,
//! so concurrent requests are multiplexed rather than each holding a connection. Cleartext upstreams
//! are spoken to with prior knowledge; `https://` ones over TLS with ALPN `h2`.
//!
//! Trailers pass both ways (gRPC's status comes in them). The time limits are those of the HTTP/1.1
//! client ([`Timeouts`]): `timeoutMs` from connecting to the response head, `readTimeoutMs` between
//! pieces of the response body. A connection that has closed (the upstream sent GOAWAY, or it failed)
//! is replaced by a new one; a request the old connection never took is sent once more on the new one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Sleep;

use crate::body::{Body, BoxError};
use crate::upstream::{connect, SendError, Timeouts};

/// A connection's stream-level flow-control window, bytes (hyper's default is 2 MiB too).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The connection's window, shared by its streams.
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// An upstream: its authority, and whether it is spoken to over TLS.
type Key = (Box<str>, bool);
type Connections = HashMap<Key, SendRequest<Body>, foldhash::fast::RandomState>;

thread_local! {
    /// This worker's connections.
    static CONNECTIONS: RefCell<Connections> = RefCell::new(HashMap::default());
}

/// Sends `req` (absolute URI) to its HTTP/2 upstream on this worker's connection to it, made when
/// there is none (or it closed).
pub(crate) async fn send(
    req: Request<Body>,
    timeouts: Timeouts,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Response<Body>, SendError> {
    let deadline = tokio::time::Instant::now() + timeouts.head;
    match tokio::time::timeout_at(deadline, exchange(req, tls)).await {
        Ok(Ok(resp)) => Ok(resp.map(|b| Body::new(Incoming::new(b, timeouts.body_read)))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SendError::Timeout(timeouts.head)),
    }
}

async fn exchange(mut req: Request<Body>, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Response<hyper::body::Incoming>, SendError> {
    let authority = req.uri().authority().cloned().ok_or(SendError::NoHost)?;
    // HTTP/2 carries the host in `:authority` (from the URI).
    req.headers_mut().remove(header::HOST);
    let key: Key = (authority.as_str().into(), tls.is_some());
    let pooled = CONNECTIONS.with_borrow_mut(|c| match c.get(&key) {
        Some(s) if !s.is_closed() => Some(s.clone()),
        Some(_) => {
            c.remove(&key);
            None
        }
        None => None,
    });
    let mut sender = match pooled {
        Some(s) => s,
        None => open(&key, authority.clone(), tls).await?,
    };
    let mut retried = false;
    loop {
        if sender.ready().await.is_err() {
            // Closed since it was taken: a new one (the request has not been sent).
            forget(&key);
            sender = open(&key, authority.clone(), tls).await?;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // Not sent: the connection closed under it. Once more on a new one.
                Some(r) if !retried => {
                    retried = true;
                    req = r;
                    forget(&key);
                    sender = open(&key, authority.clone(), tls).await?;
                }
                _ => return Err(SendError::Http2(e.into_error())),
            },
        }
    }
}

fn forget(key: &Key) {
    CONNECTIONS.with_borrow_mut(|c| {
        if c.get(key).is_some_and(SendRequest::is_closed) {
            c.remove(key);
        }
    });
}

/// A new connection to `authority`, kept for this worker's next requests to it.
async fn open(
    key: &(Box<str>, bool),
    authority: Authority,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Body>, SendError> {
    let tcp = connect(authority.clone()).await?;
    let sender = match tls {
        None => handshake(tcp).await?,
        Some(cfg) => {
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| SendError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(SendError::Connect)?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(SendError::Connect(std::io::Error::other(
                    "the upstream does not offer HTTP/2 over TLS (ALPN h2); set http2: false for it",
                )));
            }
            handshake(stream).await?
        }
    };
    CONNECTIONS.with_borrow_mut(|c| c.insert(key.clone(), sender.clone()));
    Ok(sender)
}

async fn handshake<S>(io: S) -> Result<SendRequest<Body>, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Http2)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP/2 upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body the HTTP/2 upstream broke off (reset the stream, closed the connection) or stalled.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamStreamError {
    #[error("the upstream's HTTP/2 response body failed: {0}")]
    Failed(#[source] hyper::Error),
    #[error("the upstream sent nothing of its response body for {} ms", .0.as_millis())]
    Stalled(Duration),
}

/// The upstream's response body, with the pause allowed between its pieces.
struct Incoming {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl Incoming {
    fn new(inner: hyper::body::Incoming, idle: Duration) -> Incoming {
        Incoming {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(UpstreamStreamError::Failed(e).into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(UpstreamStreamError::Stalled(self.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

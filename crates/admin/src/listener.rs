//! The admin listener: serves the admin router over HTTP/1.1 with its own deadlines and connection
//! cap, so that no client can hold it, or the process's descriptors, before it has even been
//! authenticated.
//!
//! - A request head (request line and fields) must arrive within `head_timeout`; the same deadline
//!   closes a keep-alive connection idle between requests.
//! - A request body may pause at most `body_timeout` between pieces (then the call fails with 400
//!   naming the pause).
//! - At most `max_connections` connections at once; a new one past that is closed at once.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

/// The admin listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets the requests at work finish.
pub async fn serve(listener: TcpListener, app: Router, limits: ListenerLimits, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut failures = 0u32;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning, and say so once.
                if failures == 0 {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "admin listener: connection refused, too many open");
            continue;
        };
        let app = app.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let req = req.map(|b| axum::body::Body::new(Paced::new(b, body_timeout)));
            let mut app = app.clone();
            async move {
                use tower_service::Service as _;
                Ok::<_, Infallible>(match app.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A request body that may pause at most `timeout` between pieces.
struct Paced {
    inner: hyper::body::Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Paced {
        Paced {
            inner,
            timeout,
            timer: None,
        }
    }
}

/// A request body that stopped for longer than the admin listener allows.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {} s", .0.as_secs())]
pub struct BodyTimeout(Duration);

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(timeout).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

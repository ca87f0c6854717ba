//! Mirroring: a copy of a production request sent to the canary's integration, beside the real one.
//!
//! The copy never delays or fails the client's request: it runs as its own task; a request body is
//! copied as it streams to production (up to `maxBodyBytes`, else the copy is skipped); and no more than
//! `maxInFlight` copies of a stage are on their way at once — more are dropped, not queued, so a slow
//! canary costs production nothing. The copy carries `x-canarygate-mirror: 1` and the original's request
//! id; its answer is read to the end and discarded, and recorded as variant `mirror` (metrics, the
//! stage's `Mirror.log`). When both the original and its copy have ended, a pair where exactly one of
//! them failed (5xx) is counted for the paired analysis.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::AcqRel};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use canarygate_metrics::{Observation, Routed, Series};
use canarygate_model::Variant;
use http::header::{HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::oneshot;

use crate::access_log::Record;
use crate::body::{empty, full, BoxError};
use crate::exchange::Peer;
use crate::proxy::ctx::Ctx;
use crate::proxy::serve;
use crate::routing::table::{MirrorRoute, StageRoute};
use crate::Gateway;

/// Marks a mirrored copy, so a canary (and its operators) can tell copies from real requests.
pub static MIRROR_HEADER: HeaderName = HeaderName::from_static("x-canarygate-mirror");

const ORIGINAL_DONE: u8 = 1;
const ORIGINAL_FAILED: u8 = 2;
const COPY_DONE: u8 = 4;
const COPY_FAILED: u8 = 8;

/// A production request and its copy: whichever ends second counts the pair if it is discordant.
pub(crate) struct Pair {
    state: AtomicU8,
    /// The original's second.
    sec: u64,
    series: Arc<Series>,
}

impl Pair {
    fn end(&self, done: u8, failed: u8, is_failed: bool) {
        let bits = done | if is_failed { failed } else { 0 };
        let before = self.state.fetch_or(bits, AcqRel);
        let other_done = (COPY_DONE | ORIGINAL_DONE) & !done;
        if before & other_done == 0 {
            return;
        }
        let all = before | bits;
        let (copy, original) = (all & COPY_FAILED != 0, all & ORIGINAL_FAILED != 0);
        if copy != original {
            self.series.record_discordant_pair(self.sec, copy);
        }
    }

    /// The original's response has ended, with this status (5xx: failed).
    pub(crate) fn original_ended(&self, status: u16) {
        self.end(ORIGINAL_DONE, ORIGINAL_FAILED, status >= 500);
    }

    fn copy_ended(&self, status: u16) {
        self.end(COPY_DONE, COPY_FAILED, status >= 500);
    }
}

/// The request body's bytes, collected for the copy as they stream to production.
pub(crate) struct Tee {
    tx: oneshot::Sender<Bytes>,
    buf: BytesMut,
    limit: u64,
}

/// A request body that, when it has a [`Tee`], hands a copy of its bytes to it once it has been read
/// whole (without one it is its inner body). Dropping it before (the request failed, or the body was
/// larger than the limit) leaves the copy without a body: it is skipped.
pub(crate) struct TeeBody<B> {
    inner: B,
    tee: Option<Tee>,
}

impl<B> TeeBody<B> {
    pub(crate) fn new(inner: B, tee: Option<Tee>) -> Self {
        TeeBody { inner, tee }
    }

    fn finish(&mut self) {
        if let Some(tee) = self.tee.take() {
            let _ = tee.tx.send(tee.buf.freeze());
        }
    }
}

impl<B> HttpBody for TeeBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(tee) = this.tee.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if tee.buf.len() as u64 + data.len() as u64 > tee.limit {
                            this.tee = None;
                        } else {
                            tee.buf.extend_from_slice(data);
                        }
                    }
                    if this.inner.is_end_stream() {
                        this.finish();
                    }
                }
                Poll::Ready(None) => this.finish(),
                Poll::Ready(Some(Err(_))) => this.tee = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Starts a copy of a production request (whose head is `parts`) to the stage's mirror: returns the
/// [`Tee`] its body must stream through, if it has one, and the [`Pair`] its end must be told to. `None`
/// when the copy is dropped (too many on their way) or skipped (body too large), counted.
pub(crate) fn start(
    ctx: &Ctx<'_>,
    stage: &Arc<StageRoute>,
    m: &MirrorRoute,
    parts: &http::request::Parts,
    rest: &str,
) -> Option<(Option<Tee>, Arc<Pair>)> {
    let series = &m.route.series;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let has_body = parts.headers.contains_key(http::header::TRANSFER_ENCODING) || declared.is_some_and(|n| n > 0);
    if declared.is_some_and(|n| n > m.max_body) {
        series.mirror_skipped();
        return None;
    }
    let Ok(permit) = m.in_flight.clone().try_acquire_owned() else {
        series.mirror_dropped();
        return None;
    };
    let (tee, body) = if has_body {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            tx,
            buf: BytesMut::with_capacity(declared.unwrap_or(0) as usize),
            limit: m.max_body,
        };
        (Some(tee), Some(rx))
    } else {
        (None, None)
    };
    let pair = Arc::new(Pair {
        state: AtomicU8::new(0),
        sec: ctx.sec,
        series: series.clone(),
    });
    let mut head = http::Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = ctx.uri.clone();
    *head.headers_mut() = parts.headers.clone();
    head.headers_mut().insert(MIRROR_HEADER.clone(), HeaderValue::from_static("1"));
    let copy = Copy {
        gw: ctx.gw.clone(),
        stage: stage.clone(),
        head: head.into_parts().0,
        rest: rest.to_string(),
        host: ctx.host.clone(),
        peer: ctx.peer.clone(),
        rid: ctx.rid.clone(),
        sec: ctx.sec,
        pair: pair.clone(),
    };
    tokio::spawn(async move {
        copy.send(body).await;
        drop(permit);
    });
    Some((tee, pair))
}

/// A copy on its way.
struct Copy {
    gw: Arc<Gateway>,
    stage: Arc<StageRoute>,
    head: http::request::Parts,
    rest: String,
    host: Option<HeaderValue>,
    peer: Peer,
    rid: HeaderValue,
    sec: u64,
    pair: Arc<Pair>,
}

impl Copy {
    async fn send(mut self, body: Option<oneshot::Receiver<Bytes>>) {
        let Some(m) = self.stage.mirror.as_deref() else { return };
        let vr = &m.route;
        let body = match body {
            None => empty(),
            Some(rx) => match rx.await {
                Ok(b) => full(b),
                // The original's body never arrived whole, or was larger than the copy may be.
                Err(_) => {
                    vr.series.mirror_skipped();
                    return;
                }
            },
        };
        let wall = SystemTime::now();
        let ctx = Ctx {
            gw: &self.gw,
            peer: &self.peer,
            start: Instant::now(),
            wall,
            // Counted in the original's second, beside it.
            sec: self.sec,
            rid: self.rid.clone(),
            trace: None,
            host: self.host.take(),
            uri: self.head.uri.clone(),
            grpc: false,
        };
        let method = self.head.method.clone();
        let user_agent = self
            .head
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let outcome = serve(&ctx, &self.stage, vr, &mut self.head, None, body, &self.rest).await;
        let (status, error) = match outcome.result {
            Ok(resp) => drain(resp).await,
            Err(e) => (e.response().status().as_u16(), Some((e.source(), e.to_string()))),
        };
        let latency_us = ctx.elapsed_us();
        vr.series.record(
            self.sec,
            &Observation {
                status,
                latency_us,
                integration_us: outcome.integration_us,
                cache: None,
                routed: Routed::Random,
            },
        );
        self.pair.copy_ended(status);
        let log = self.gw.access_log();
        if log.enabled() {
            log.send(Record {
                request_id: ctx.rid,
                time: wall.into(),
                ip: self.peer.addr.ip(),
                method,
                path: ctx.uri.path().to_string(),
                status,
                latency_ms: latency_us as f64 / 1000.0,
                integration_latency_ms: outcome.integration_us.map(|u| u as f64 / 1000.0),
                variant: Variant::Mirror,
                deployment_id: vr.deployment_id.clone(),
                cache: None,
                user_agent,
                trace_id: None,
                error_source: error.as_ref().map(|(s, _)| s.as_str()),
                grpc_status: None,
                error: error.map(|(_, e)| e),
                api: self.stage.api.clone(),
                stage: self.stage.stage.clone(),
            });
        }
    }
}

/// Reads a copy's response to its end: its status, or 502 and the upstream's failure when the body
/// failed on the way.
async fn drain(resp: http::Response<crate::body::Body>) -> (u16, Option<(crate::error::Source, String)>) {
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            return (502, Some((crate::error::Source::Upstream, e.to_string())));
        }
    }
    (status, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Arc<Series>, Pair) {
        let series = Arc::new(Series::new());
        let p = Pair {
            state: AtomicU8::new(0),
            sec: 1_000,
            series: series.clone(),
        };
        (series, p)
    }

    fn counts(s: &Series) -> (u64, u64) {
        // A pair is kept beside a second that had requests.
        s.record(
            1_000,
            &Observation {
                status: 200,
                latency_us: 1,
                integration_us: None,
                cache: None,
                routed: Routed::Random,
            },
        );
        let j = s.second(1_000).unwrap();
        (j.pairs_copy_failed, j.pairs_original_failed)
    }

    #[test]
    fn a_pair_counts_once_when_both_ended_and_only_when_discordant() {
        let (s, p) = pair();
        p.copy_ended(503);
        assert_eq!(counts(&s), (0, 0), "not before the original ended");
        p.original_ended(200);
        assert_eq!(counts(&s), (1, 0));

        let (s, p) = pair();
        p.original_ended(500);
        p.copy_ended(200);
        assert_eq!(counts(&s), (0, 1));

        for (a, b) in [(200, 200), (502, 500)] {
            let (s, p) = pair();
            p.original_ended(a);
            p.copy_ended(b);
            assert_eq!(counts(&s), (0, 0), "concordant {a}/{b}");
        }
    }
}

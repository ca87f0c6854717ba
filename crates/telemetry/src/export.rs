//! The export side: a task that takes ended spans from the bounded queue, batches them (up to
//! `batch` spans, or what is queued every `delay`) and hands each batch to the OTLP/HTTP
//! exporter of `opentelemetry-otlp`. A batch the collector does not take (down, refusing, too slow) is
//! dropped and counted: tracing never holds memory without bound or slows the request path.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::span::{FinishedSpan, Kind};
use crate::Counters;

/// What the queue carries.
pub(crate) enum Msg {
    Span(Box<FinishedSpan>),
    /// Export everything queued before this, then acknowledge.
    Flush(oneshot::Sender<()>),
}

pub(crate) struct Worker<E> {
    pub(crate) exporter: E,
    pub(crate) counters: Arc<Counters>,
    pub(crate) batch: usize,
    pub(crate) delay: Duration,
    pub(crate) timeout: Duration,
    pub(crate) scope: InstrumentationScope,
}

impl<E: SpanExporter> Worker<E> {
    /// Wakes when `batch` spans are queued, a flush is asked for, or `delay` has passed, and exports
    /// what is queued. The request path never wakes this task for a single span: a wake-up per span
    /// (a futex and a context switch on another core) would cost the data plane more than the span.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Msg>, queued: Arc<AtomicUsize>, wake: Arc<Notify>) {
        let mut spans: Vec<SpanData> = Vec::with_capacity(self.batch);
        let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let _ = tokio::time::timeout(self.delay, wake.notified()).await;
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Span(s)) => {
                        queued.fetch_sub(1, Relaxed);
                        spans.push(self.convert(*s));
                        if spans.len() >= self.batch {
                            self.export(&mut spans, &mut last_warning).await;
                        }
                    }
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.export(&mut spans, &mut last_warning).await;
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Exports `spans` (if any) as one batch, counting them as exported or dropped.
    async fn export(&self, spans: &mut Vec<SpanData>, last_warning: &mut Option<tokio::time::Instant>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        let batch = std::mem::replace(spans, Vec::with_capacity(self.batch));
        let failure = match tokio::time::timeout(self.timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match failure {
            None => {
                self.counters.exported.fetch_add(n, Relaxed);
            }
            Some(e) => {
                self.counters.export_failed.fetch_add(n, Relaxed);
                // One line a minute at most: a collector that is down must not flood the log.
                let now = tokio::time::Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                    *last_warning = Some(now);
                    tracing::warn!(error = %e, spans = n, "trace export failed; the spans are dropped (counted in canarygate_trace_spans_dropped_total)");
                }
            }
        }
    }

    fn convert(&self, s: FinishedSpan) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(s.trace_id),
                SpanId::from_bytes(s.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: s.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: s.remote_parent,
            span_kind: match s.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            },
            name: Cow::Owned(s.name),
            start_time: s.start,
            end_time: s.end,
            attributes: s.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match s.error {
                Some(d) => Status::error(d),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// `opentelemetry-otlp`'s HTTP transport over the workspace's `reqwest` client, with the time limit
/// the transport leaves to its client.
#[derive(Debug)]
pub(crate) struct Client(pub(crate) reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self.0.request(parts.method, parts.uri.to_string()).body(body);
        for (k, v) in &parts.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            out = out.header(k.as_str(), v.as_bytes());
        }
        // The collector's answer is small (a partial-success message at most); a larger one is cut off.
        let body = read_limited(resp, 4 * 1024 * 1024).await?;
        Ok(out.body(body)?)
    }
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<bytes::Bytes, opentelemetry_http::HttpError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Err("the collector's answer is larger than 4 MiB".into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

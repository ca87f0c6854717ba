//! OpenTelemetry tracing of canarygate's data plane.
//!
//! It owns the trace context of a request ([`TraceCtx`]: the W3C `traceparent` continued, or a trace
//! started, and the head-sampling decision — parent-based, then by trace-id ratio), the spans the
//! request path ends ([`FinishedSpan`]), and their way out: a bounded queue of our own (a full queue
//! drops the span and counts it; the request path never waits) and a task that batches spans and
//! exports them over OTLP/HTTP (protobuf) with `opentelemetry-otlp`'s exporter, counting what it
//! exported and what it dropped because the collector did not take it. The request path calls
//! [`Tracer::begin`] and [`Tracer::end`]; what a span says (its attributes) is the gateway's business.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod export;
mod span;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use canarygate_model::trace::{sample, TraceParent};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, Notify};

pub use opentelemetry::{KeyValue, Value};
pub use span::{new_span_id, new_trace_id, FinishedSpan, Kind, TraceCtx};

use export::{Client, Msg, Worker};

/// How traces are exported (the config file's `server.telemetry`).
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP endpoint: a base URL (`http://collector:4318`, to which `/v1/traces` is
    /// added) or the full traces URL (any other path is used as it is).
    pub endpoint: String,
    /// The share of new traces sampled, in [0, 1]; a request with a parent follows the parent's flag.
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Ended spans waiting for export; more are dropped (and counted).
    pub queue: usize,
    /// Spans per export request at most.
    pub batch: usize,
    /// The longest a span waits for its batch to fill (the export task looks this often).
    pub delay: Duration,
    /// The longest one export may take (retries included); then its spans are dropped.
    pub timeout: Duration,
}

impl TracingConfig {
    pub fn new(endpoint: impl Into<String>) -> TracingConfig {
        TracingConfig {
            endpoint: endpoint.into(),
            sample_ratio: 1.0,
            service_name: "canarygate".into(),
            queue: 2048,
            batch: 512,
            delay: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> Result<String, TelemetryError> {
        let e = &self.endpoint;
        let uri: http::Uri = e.parse().map_err(|_| TelemetryError::Endpoint(e.clone()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(TelemetryError::Endpoint(e.clone()));
        }
        Ok(match uri.path() {
            "" | "/" => format!("{}/v1/traces", e.trim_end_matches('/')),
            _ => e.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("server.telemetry.otlpEndpoint: {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("server.telemetry.sampleRatio: {0} is not a number from 0 to 1")]
    SampleRatio(f64),
    #[error("the OTLP exporter cannot be built: {0}")]
    Exporter(String),
}

/// What happened to ended spans so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) export_failed: AtomicU64,
}

/// A snapshot of [`Counters`], for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    pub exported: u64,
    /// Dropped because the queue was full.
    pub queue_full: u64,
    /// Dropped because the collector did not take their batch.
    pub export_failed: u64,
}

/// The request path's handle: sampling, and the queue's sending side.
pub struct Tracer {
    ratio: f64,
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    /// Spans in the queue, and the batch size at which the export task is woken.
    queued: Arc<AtomicUsize>,
    batch: usize,
    wake: Arc<Notify>,
}

impl Tracer {
    /// Validates the config, builds the exporter and starts the export task on the current Tokio
    /// runtime.
    pub fn start(cfg: &TracingConfig) -> Result<Arc<Tracer>, TelemetryError> {
        if !(0.0..=1.0).contains(&cfg.sample_ratio) {
            return Err(TelemetryError::SampleRatio(cfg.sample_ratio));
        }
        let url = cfg.traces_url()?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client(client))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(cfg.service_name.clone())
                .build(),
        );
        Ok(Self::with_exporter(cfg, exporter))
    }

    /// The tracer over any exporter (tests use an in-memory one).
    pub fn with_exporter<E: opentelemetry_sdk::trace::SpanExporter + 'static>(cfg: &TracingConfig, exporter: E) -> Arc<Tracer> {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            exporter,
            counters: counters.clone(),
            batch: cfg.batch.max(1),
            delay: cfg.delay,
            timeout: cfg.timeout,
            scope: opentelemetry::InstrumentationScope::builder("canarygate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        let (queued, wake) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        tokio::spawn(worker.run(rx, queued.clone(), wake.clone()));
        Arc::new(Tracer {
            ratio: cfg.sample_ratio,
            tx,
            counters,
            queued,
            batch: cfg.batch.max(1),
            wake,
        })
    }

    /// A request's trace context from its `traceparent` (continued when valid, else a new trace) and
    /// the sampling decision.
    pub fn begin(&self, traceparent: Option<&http::HeaderValue>) -> TraceCtx {
        let parent = traceparent.and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        let trace_id = parent.as_ref().map_or_else(new_trace_id, |p| p.trace_id);
        TraceCtx {
            trace_id,
            span_id: new_span_id(),
            parent_id: parent.as_ref().map(|p| p.parent_id),
            sampled: sample(parent.as_ref(), &trace_id, self.ratio),
        }
    }

    /// Queues an ended span for export, without waiting: when the queue is full it is dropped and
    /// counted.
    pub fn end(&self, span: FinishedSpan) {
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.counters.queue_full.fetch_add(1, Relaxed);
        } else if self.queued.fetch_add(1, Relaxed) + 1 == self.batch {
            // A batch is ready: the one wake-up per batch (else the task looks every `delay`).
            self.wake.notify_one();
        }
    }

    /// Waits until every span ended before this call has been exported or dropped (at shutdown).
    pub async fn flush(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            self.wake.notify_one();
            let _ = done.await;
        }
    }

    pub fn counts(&self) -> SpanCounts {
        SpanCounts {
            exported: self.counters.exported.load(Relaxed),
            queue_full: self.counters.queue_full.load(Relaxed),
            export_failed: self.counters.export_failed.load(Relaxed),
        }
    }

    /// The Prometheus text of the counters.
    pub fn render_prometheus(&self, out: &mut String) {
        use canarygate_metrics::Family;
        let c = self.counts();
        const EXPORTED: Family = Family::counter("canarygate_trace_spans_exported_total", "Spans the OTLP collector accepted.");
        const DROPPED: Family = Family::counter(
            "canarygate_trace_spans_dropped_total",
            "Spans dropped: the export queue was full, or the collector did not take their batch.",
        );
        EXPORTED.single(out, c.exported);
        DROPPED.header(out);
        DROPPED.sample(out, &[("reason", "queue_full")], c.queue_full);
        DROPPED.sample(out, &[("reason", "export_failed")], c.export_failed);
    }
}

#[cfg(test)]
mod tests;

//! The types the request path fills: a request's trace context and the spans it ends.

use std::time::SystemTime;

use canarygate_model::trace::TraceParent;
use opentelemetry::KeyValue;

/// One request's place in a trace: its trace, the gateway's server span, the caller's span (when the
/// request carried a valid `traceparent`) and the head-sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    /// The server span's id.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceCtx {
    /// Whether the trace came with the request (else this hop started it).
    pub fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The `traceparent` to send upstream with `span_id` (the client span's) as the parent.
    pub fn traceparent(&self, span_id: [u8; 8]) -> http::HeaderValue {
        let value = TraceParent::start(self.trace_id, span_id, self.sampled).header();
        http::HeaderValue::try_from(value).expect("a traceparent is a valid header value")
    }

    /// The trace id as 32 lowercase hex digits, as the access log shows it.
    pub fn trace_id_hex(&self) -> String {
        TraceParent::start(self.trace_id, self.span_id, self.sampled).trace_id_hex()
    }
}

/// A new span id: random, never all zeros.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// A new trace id: random, never all zeros.
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// Which side of a call a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The gateway serving a client's request.
    Server,
    /// The gateway calling an upstream.
    Client,
}

/// A span that has ended, on its way to the exporter.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    /// The parent is another process's span (the caller's), not one of ours.
    pub remote_parent: bool,
    pub kind: Kind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Set when the span failed (status `Error` with this description).
    pub error: Option<String>,
}

impl FinishedSpan {
    /// The gateway's server span for the request of `ctx`.
    pub fn server(ctx: &TraceCtx, name: String, start: SystemTime, end: SystemTime, attributes: Vec<KeyValue>) -> FinishedSpan {
        FinishedSpan {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_id: ctx.parent_id,
            remote_parent: ctx.parent_id.is_some(),
            kind: Kind::Server,
            name,
            start,
            end,
            attributes,
            error: None,
        }
    }

    /// A client span with id `span_id`, a child of `ctx`'s server span.
    pub fn client(
        ctx: &TraceCtx,
        span_id: [u8; 8],
        name: String,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> FinishedSpan {
        FinishedSpan {
            trace_id: ctx.trace_id,
            span_id,
            parent_id: Some(ctx.span_id),
            remote_parent: false,
            kind: Kind::Client,
            name,
            start,
            end,
            attributes,
            error: None,
        }
    }
}

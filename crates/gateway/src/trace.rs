//! The gateway's spans (with tracing on): what a request's server span and each upstream call's client
//! span say — OpenTelemetry's HTTP semantic conventions plus `canarygate.*` attributes — and the trace
//! context headers. Recording and export belong to `canarygate-telemetry`.

use std::sync::Arc;
use std::time::SystemTime;

use canarygate_model::trace::{tracestate_is_valid, TraceParent};
use canarygate_model::Variant;
use canarygate_telemetry::{FinishedSpan, KeyValue, TraceCtx, Tracer};
use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri, Version};

use crate::error::ProxyError;
use crate::exchange::Peer;
use crate::protocols::h1::fields::FieldsRef;
use crate::routing::table::{StageRoute, VariantRoute};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Continues the request's trace (or starts one) and drops a `tracestate` that may not be forwarded:
/// one that is not valid, or that came without a valid `traceparent` (a new trace has no state).
pub(crate) fn begin(tracer: &Tracer, headers: &mut HeaderMap) -> TraceCtx {
    let ctx = tracer.begin(headers.get(&TRACEPARENT));
    if headers.contains_key(&TRACESTATE) {
        let valid = ctx.continued()
            && headers
                .get_all(&TRACESTATE)
                .iter()
                .all(|v| v.to_str().is_ok_and(tracestate_is_valid));
        if !valid {
            headers.remove(&TRACESTATE);
        }
    }
    ctx
}

/// With tracing off, the access log still names the trace a request came with: its `traceparent` is
/// forwarded unchanged, so the upstream's spans are in that trace.
pub(crate) fn incoming_trace_id(fields: FieldsRef<'_>) -> Option<String> {
    let v = fields.text_of(&TRACEPARENT)?;
    TraceParent::parse(v).map(|p| p.trace_id_hex())
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// A sampled request's server span, from the response head until the response has ended.
pub(crate) struct ServerSpan {
    tracer: Arc<Tracer>,
    ctx: TraceCtx,
    start: SystemTime,
    name: String,
    attributes: Vec<KeyValue>,
}

/// What a server span is told about the request.
pub(crate) struct Served<'a> {
    pub(crate) method: &'a Method,
    pub(crate) version: Version,
    pub(crate) path: &'a str,
    pub(crate) host: Option<&'a str>,
    pub(crate) peer: &'a Peer,
    pub(crate) request_id: &'a http::HeaderValue,
    /// The stage and variant, when a stage was found.
    pub(crate) stage: Option<(&'a StageRoute, &'a VariantRoute)>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cache: Option<&'static str>,
}

impl ServerSpan {
    pub(crate) fn new(tracer: Arc<Tracer>, ctx: TraceCtx, start: SystemTime, r: Served<'_>) -> ServerSpan {
        let name = match &r.route {
            Some(route) => format!("{} {route}", r.method),
            None => r.method.to_string(),
        };
        let mut a = Vec::with_capacity(16);
        a.push(KeyValue::new("http.request.method", r.method.to_string()));
        a.push(KeyValue::new("url.path", r.path.to_string()));
        a.push(KeyValue::new("url.scheme", r.peer.scheme()));
        a.push(KeyValue::new("network.protocol.version", protocol(r.version)));
        a.push(KeyValue::new("client.address", r.peer.addr.ip().to_string()));
        if let Some(h) = r.host {
            a.push(KeyValue::new("server.address", h.to_string()));
        }
        if let Some(route) = r.route {
            a.push(KeyValue::new("http.route", route));
        }
        if let Ok(id) = r.request_id.to_str() {
            a.push(KeyValue::new("canarygate.request_id", id.to_string()));
        }
        if let Some((stage, vr)) = r.stage {
            a.push(KeyValue::new("canarygate.api", stage.api.clone()));
            a.push(KeyValue::new("canarygate.stage", stage.stage.clone()));
            a.push(KeyValue::new("canarygate.variant", vr.variant.as_str()));
            a.push(KeyValue::new("canarygate.deployment_id", vr.deployment_id.clone()));
        }
        if let Some(c) = r.cache {
            a.push(KeyValue::new("canarygate.cache", c));
        }
        ServerSpan {
            tracer,
            ctx,
            start,
            name,
            attributes: a,
        }
    }

    /// Ends the span when the response has ended, with its final status (a response body the upstream
    /// broke off is a 502) and, for a failure, what went wrong and whose fault it was.
    pub(crate) fn end(self, status: u16, error: Option<(&'static str, &str)>) {
        let ServerSpan {
            tracer,
            ctx,
            start,
            name,
            mut attributes,
        } = self;
        attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Some((source, _)) = error {
            attributes.push(KeyValue::new("canarygate.error_source", source));
        }
        let mut span = FinishedSpan::server(&ctx, name, start, SystemTime::now(), attributes);
        // Server spans: only a 5xx is an error (a 4xx is the client's, per the HTTP conventions).
        if status >= 500 {
            span.attributes.push(KeyValue::new("error.type", status.to_string()));
            span.error = Some(error.map_or_else(|| format!("HTTP {status}"), |(_, e)| e.to_string()));
        }
        tracer.end(span);
    }
}

/// One upstream call's client span.
pub(crate) struct ClientCall<'a> {
    pub(crate) ctx: TraceCtx,
    pub(crate) span_id: [u8; 8],
    pub(crate) start: SystemTime,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) variant: Variant,
}

impl ClientCall<'_> {
    /// Ends the span when the upstream's response head arrived (or the call failed).
    /// `result` is the response's status, or the call's failure.
    pub(crate) fn end(self, tracer: &Tracer, result: Result<http::StatusCode, &ProxyError>) {
        let mut a = Vec::with_capacity(9);
        a.push(KeyValue::new("http.request.method", self.method.to_string()));
        a.push(KeyValue::new("url.full", self.uri.to_string()));
        if let Some(h) = self.uri.host() {
            a.push(KeyValue::new("server.address", h.to_string()));
        }
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.uri.scheme_str() == Some("https") { 443 } else { 80 });
        a.push(KeyValue::new("server.port", i64::from(port)));
        a.push(KeyValue::new("network.protocol.version", "1.1"));
        a.push(KeyValue::new("canarygate.variant", self.variant.as_str()));
        let error = match result {
            Ok(status) => {
                let status = status.as_u16();
                a.push(KeyValue::new("http.response.status_code", i64::from(status)));
                // Client spans: 4xx and 5xx are errors.
                (status >= 400).then(|| (status.to_string(), format!("HTTP {status}")))
            }
            Err(e) => Some((e.kind().to_string(), e.to_string())),
        };
        let mut span = FinishedSpan::client(&self.ctx, self.span_id, self.method.to_string(), self.start, SystemTime::now(), a);
        if let Some((kind, message)) = error {
            span.attributes.push(KeyValue::new("error.type", kind));
            span.error = Some(message);
        }
        tracer.end(span);
    }
}

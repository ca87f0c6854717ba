//! One request's facts, made once when its head has been read and passed by reference through the
//! phases of [`crate::proxy::request`] and [`crate::proxy`] (what Pingora's `CTX` is): who asked, when, for
//! which host and path, under which request id and trace. What a phase finds out later (the stage,
//! the variant, the route, the outcome) is its return value, not a field set on the way.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use canarygate_model::grpc;
use canarygate_telemetry::TraceCtx;
use http::header::{self, HeaderName, HeaderValue};

use crate::exchange::{GrpcRequest, Peer};
use crate::protocols::h1::fields::{FieldsRef, RequestFields};
use crate::Gateway;

pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) struct Ctx<'a> {
    pub(crate) gw: &'a Arc<Gateway>,
    pub(crate) peer: &'a Peer,
    /// When the head was read: latency counts from here.
    pub(crate) start: Instant,
    pub(crate) wall: SystemTime,
    /// The Unix second the request is counted in.
    pub(crate) sec: u64,
    /// `x-request-id`: the client's when it is fit to pass on, else a new one.
    pub(crate) rid: HeaderValue,
    /// With tracing on: the request's trace (continued from `traceparent`, or new).
    pub(crate) trace: Option<TraceCtx>,
    /// The `Host` without its port, in lower case (a field value: the upstream's `x-forwarded-host`).
    pub(crate) host: Option<HeaderValue>,
    /// The request's URI as it came (its path before any stage or base path is taken off), taken
    /// from its head (whose URI is then `/`): the phases read it here.
    pub(crate) uri: http::Uri,
    /// A gRPC call (HTTP/2 with a gRPC content type).
    pub(crate) grpc: bool,
}

impl<'a> Ctx<'a> {
    /// The facts of a request whose head is `parts` (its fields in its map, or still on the `wire`),
    /// taking its URI; marks a gRPC call's head ([`GrpcRequest`]) and takes the trace headers a traced request
    /// replaces (in the map: with tracing on, the caller has made one).
    pub(crate) fn begin(gw: &'a Arc<Gateway>, peer: &'a Peer, parts: &mut http::request::Parts, wire: Option<&RequestFields>) -> Ctx<'a> {
        let start = Instant::now();
        let wall = SystemTime::now();
        let grpc =
            parts.version == http::Version::HTTP_2 && parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| grpc::is_grpc(v.as_bytes()));
        if grpc {
            parts.extensions.insert(GrpcRequest);
        }
        debug_assert!(gw.tracer.is_none() || wire.is_none(), "a traced request's fields are in its map");
        let trace = gw.tracer.as_deref().map(|t| crate::trace::begin(t, &mut parts.headers));
        let fields = FieldsRef::of(&parts.headers, wire);
        Ctx {
            gw,
            peer,
            start,
            wall,
            sec: wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            rid: request_id(fields),
            trace,
            host: host(fields),
            uri: std::mem::take(&mut parts.uri),
            grpc,
        }
    }

    /// The request's path as it came.
    pub(crate) fn path(&self) -> &str {
        self.uri.path()
    }

    /// [`Ctx::host`] as text.
    pub(crate) fn host_str(&self) -> Option<&str> {
        self.host.as_ref().and_then(|h| h.to_str().ok())
    }

    /// Microseconds since the head was read.
    pub(crate) fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The trace id an access log line names: this request's trace, or the one it came with.
    pub(crate) fn trace_id(&self, fields: FieldsRef<'_>) -> Option<String> {
        match &self.trace {
            Some(t) => Some(t.trace_id_hex()),
            None => crate::trace::incoming_trace_id(fields),
        }
    }
}

/// The `Host` field without its port, in lower case: the field's own value when it is that already.
fn host<'h>(fields: impl Into<FieldsRef<'h>>) -> Option<HeaderValue> {
    let field = fields.into().value(&header::HOST)?;
    let h = field.to_str().ok()?;
    let h = h
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(h, _)| h);
    if h.len() == field.len() && !h.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(field);
    }
    let mut lower = bytes::BytesMut::from(h.as_bytes());
    lower.make_ascii_lowercase();
    HeaderValue::from_maybe_shared(lower.freeze()).ok()
}

/// Bytes of request ids cut from one allocation.
const ID_BLOCK: usize = 32 * 128;

thread_local! {
    static IDS: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// The client's `x-request-id` when it is fit to pass on (1–200 visible ASCII characters), else 32
/// random hex digits. Either way marked sensitive: HTTP/2's header compression sends it as a literal
/// never indexed (RFC 7541 §7.1.3), since a value no later message repeats would only evict useful
/// entries from the connection's table, at a cost per message. HTTP/1.1 ignores the mark.
fn request_id<'h>(fields: impl Into<FieldsRef<'h>>) -> HeaderValue {
    let mut id = client_request_id(fields.into()).unwrap_or_else(new_request_id);
    id.set_sensitive(true);
    id
}

/// The client's `x-request-id` when it is fit to pass on.
fn client_request_id(fields: FieldsRef<'_>) -> Option<HeaderValue> {
    let v = fields.get(&REQUEST_ID)?;
    if v.is_empty() || v.len() > 200 || !v.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    fields.value(&REQUEST_ID)
}

/// 32 random hex digits.
fn new_request_id() -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(fastrand::u128(..).to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 15)];
    }
    // Cut from a block of this thread's (one allocation per 128 ids, shared by reference count)
    // rather than an allocation each, and another when the id is first copied.
    let id = IDS.with_borrow_mut(|block| {
        if block.capacity() < hex.len() {
            *block = bytes::BytesMut::with_capacity(ID_BLOCK);
        }
        block.extend_from_slice(&hex);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn host_loses_its_port_and_case() {
        let mut h = HeaderMap::new();
        assert_eq!(host(&h), None);
        h.insert(header::HOST, HeaderValue::from_static("API.Example.com:8080"));
        assert_eq!(host(&h).as_ref().map(|h| h.to_str().unwrap()), Some("api.example.com"));
        h.insert(header::HOST, HeaderValue::from_static("[::1]:80"));
        assert_eq!(host(&h).as_ref().map(|h| h.to_str().unwrap()), Some("[::1]"));
        h.insert(header::HOST, HeaderValue::from_static("shop.test"));
        assert_eq!(host(&h).as_ref().map(|h| h.to_str().unwrap()), Some("shop.test"));
        h.insert(header::HOST, HeaderValue::from_static("Shop.test"));
        assert_eq!(host(&h).as_ref().map(|h| h.to_str().unwrap()), Some("shop.test"));
    }

    #[test]
    fn a_request_id_is_kept_when_fit_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        assert!(request_id(&h).is_sensitive(), "a client's id is never indexed in HPACK either");
        h.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(request_id(&HeaderMap::new()), made);
    }

    #[test]
    fn request_ids_cut_from_blocks_are_each_their_own() {
        let h = HeaderMap::new();
        // Across several blocks, some dropped on the way: each id keeps its own 32 hex digits.
        let mut kept = Vec::new();
        for i in 0..3 * ID_BLOCK / 32 + 7 {
            let id = request_id(&h);
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert!(id.is_sensitive(), "never indexed in HPACK");
            if i % 3 == 0 {
                kept.push((id.clone(), id.as_bytes().to_vec()));
            }
        }
        let distinct: std::collections::HashSet<_> = kept.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(distinct.len(), kept.len());
        for (id, bytes) in &kept {
            assert_eq!(id.as_bytes(), &bytes[..]);
        }
    }
}

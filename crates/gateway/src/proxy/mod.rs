//! Serving a request as one variant of a stage: match the route, render the integration, and answer the
//! mock or call the upstream — through the stage cache for GET/HEAD where it is on — with the
//! forwarding headers, the trace context and a client span; failures say whose fault they were.

pub(crate) mod ctx;
pub(crate) mod mirror;
pub(crate) mod request;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use canarygate_metrics::{CacheResult, Variant};
use canarygate_telemetry::TraceCtx;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::body::{empty, full, Body, BoxError};
use crate::cache::{hit_response, storable, vary_hash, CacheKey, StageCache};
use crate::error::{ClientBodyError, ProxyError};
use crate::exchange::{GrpcRequest, UpgradeRequest};
use crate::protocols::h1::fields::{move_to_map, FieldsRef, RequestFields, WireFields};
use crate::protocols::h1::{named_by_connection, Reply};
use crate::proxy::ctx::{Ctx, REQUEST_ID};
use crate::routing::table::{CompiledIntegration, StageRoute, VariantRoute};
use crate::trace::{ClientCall, TRACEPARENT};
use crate::upstream::{self, SendError, Timeouts};
use crate::Gateway;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    doomed(h, |_| false).remove_from(h);
}

/// The fields to remove from a header map: the hop-by-hop ones and those `also` picks, found in one
/// pass of cheap comparisons (most messages carry none, or `connection: keep-alive`), so that only
/// those found are looked up again.
fn doomed(h: &HeaderMap, also: impl Fn(&str) -> bool) -> Doomed {
    let mut found = Vec::new();
    for k in h.keys() {
        let name = k.as_str();
        if crate::protocols::h1::client::is_hop_by_hop(name.as_bytes()) || also(name) {
            found.push(k.clone());
        }
    }
    Doomed(found)
}

struct Doomed(Vec<HeaderName>);

impl Doomed {
    fn has(&self, name: &HeaderName) -> bool {
        self.0.contains(name)
    }

    /// Removes the fields found, and those a `Connection` field names.
    fn remove_from(self, h: &mut HeaderMap) {
        if self.0.is_empty() {
            return;
        }
        let named: Vec<HeaderName> = named_by_connection(h.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named.into_iter().chain(self.0) {
            h.remove(name);
        }
    }
}

/// The fields the gateway adds to an upstream request (`x-forwarded-for`, `-proto`, `-host`, the
/// request id), replacing any the client sent. An HTTP/1.1 upstream request's head writes them after
/// the client's fields (they are not inserted into its map: four hashed inserts per request); for
/// HTTP/2 and the cache they go into the map ([`Forwarded::insert_into`]). All but a client's
/// `x-forwarded-for` are the context's.
pub(crate) struct Forwarded {
    /// `x-forwarded-for` when the client sent one: its first value and the peer's address (else the
    /// peer's address alone).
    pub(crate) xff: Option<HeaderValue>,
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Up to `N` header fields the gateway writes, as the HTTP/1.1 head encoders take them (a slice).
pub(crate) struct FieldList<'a, const N: usize> {
    fields: [(&'a HeaderName, &'a HeaderValue); N],
    len: usize,
}

/// What fills a list's unused places.
static UNUSED: (HeaderName, HeaderValue) = (HeaderName::from_static("x-unused"), HeaderValue::from_static(""));

impl<'a, const N: usize> FieldList<'a, N> {
    pub(crate) fn new() -> Self {
        FieldList {
            fields: [(&UNUSED.0, &UNUSED.1); N],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        self.fields[self.len] = (name, value);
        self.len += 1;
    }
}

impl<'a, const N: usize> std::ops::Deref for FieldList<'a, N> {
    type Target = [(&'a HeaderName, &'a HeaderValue)];

    fn deref(&self) -> &Self::Target {
        &self.fields[..self.len]
    }
}

impl Forwarded {
    fn fields<'a>(&'a self, ctx: &'a Ctx<'_>) -> FieldList<'a, 4> {
        let mut fields = FieldList::new();
        fields.push(&X_FORWARDED_FOR, self.xff.as_ref().unwrap_or(&ctx.peer.ip));
        fields.push(&X_FORWARDED_PROTO, if ctx.peer.tls { &HTTPS } else { &HTTP });
        fields.push(&REQUEST_ID, &ctx.rid);
        if let Some(h) = &ctx.host {
            fields.push(&X_FORWARDED_HOST, h);
        }
        fields
    }

    fn insert_into(self, ctx: &Ctx<'_>, h: &mut HeaderMap) {
        for (n, v) in self.fields(ctx).iter() {
            h.insert((*n).clone(), (*v).clone());
        }
    }
}

/// What serving one request produced.
pub(crate) struct Outcome {
    pub(crate) result: Result<Response<Body>, ProxyError>,
    /// The response's fields when they are still in an HTTP/1.1 upstream's head (its map then
    /// empty): only for an HTTP/1.1 client's request past the cache (see [`serve`]).
    pub(crate) wire: Option<crate::protocols::h1::WireFields>,
    pub(crate) integration_us: Option<u64>,
    pub(crate) cache: Option<CacheResult>,
    /// The matched route's path, for a sampled request's span.
    pub(crate) route: Option<Arc<str>>,
}

impl Outcome {
    fn error(e: ProxyError) -> Outcome {
        Outcome {
            result: Err(e),
            wire: None,
            integration_us: None,
            cache: None,
            route: None,
        }
    }
}

/// The upstream request, ready to be sent (again, for a cache waiter that gives up waiting).
struct UpstreamCall {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    /// The client's fields to pass on as they came, when they are still in its HTTP/1.1 head
    /// (`headers` then empty): an HTTP/1.1 call past the cache (see [`upstream_wire`]).
    wire: Option<WireFields>,
    /// The forwarding fields when they are not in `headers` (an HTTP/1.1 call past the cache).
    forwarded: Option<Forwarded>,
    timeouts: Timeouts,
    variant: Variant,
    /// With tracing on: each call is a client span of this trace, its id the upstream's parent.
    trace: Option<TraceCtx>,
    /// For an `https://` upstream: how its certificate is verified.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The client asks to switch protocols (its `upgrade` field is in `headers`).
    upgrade: Option<UpgradeRequest>,
    /// Over HTTP/2 (an `http2: true` integration).
    http2: bool,
}

/// How to reach an upstream: time limits, TLS, protocol.
#[derive(Clone, Copy)]
struct Upstream<'a> {
    timeouts: Timeouts,
    tls: Option<&'a Arc<rustls::ClientConfig>>,
    http2: bool,
}

/// A traced call's client span id and its trace.
type CallSpan = Option<(TraceCtx, [u8; 8])>;

impl UpstreamCall {
    /// The request, keeping this call for another try (the cache path may need two).
    fn request(&self, body: Body) -> (Request<Body>, CallSpan) {
        let mut up = Request::new(body);
        *up.method_mut() = self.method.clone();
        *up.uri_mut() = self.uri.clone();
        // The cache's calls: their fields and the forwarding fields are in the map (see `prepare`).
        debug_assert!(
            self.forwarded.is_none() && self.wire.is_none(),
            "a call through the cache with its fields apart"
        );
        *up.headers_mut() = self.headers.clone();
        let span = trace_call(self.trace, up.headers_mut());
        (up, span)
    }

    /// The request, consuming the call (no copy of the headers), and the client's fields still on the
    /// wire and the forwarding fields its head is to carry besides its map's.
    fn into_request(mut self, body: Body) -> (Request<Body>, CallSpan, Option<WireFields>, Option<Forwarded>) {
        let span = trace_call(self.trace, &mut self.headers);
        let mut up = Request::new(body);
        *up.method_mut() = self.method;
        *up.uri_mut() = self.uri;
        *up.headers_mut() = self.headers;
        if let Some(u) = self.upgrade {
            up.extensions_mut().insert(u);
        }
        (up, span, self.wire, self.forwarded)
    }

    async fn send(&self, gw: &Gateway, body: Body) -> (Result<Response<Body>, ProxyError>, u64) {
        let (mut req, span) = self.request(body);
        let to = Upstream {
            timeouts: self.timeouts,
            tls: self.tls.as_ref(),
            http2: self.http2,
        };
        let (res, us) = send(gw, &mut req, None, &[], span, self.variant, to).await;
        (res.and_then(in_map), us)
    }
}

/// A new client span for one call of a traced request: its id goes upstream as the parent in
/// `traceparent`.
fn trace_call(trace: Option<TraceCtx>, headers: &mut HeaderMap) -> CallSpan {
    let ctx = trace?;
    let id = canarygate_telemetry::new_span_id();
    headers.insert(TRACEPARENT.clone(), ctx.traceparent(id));
    Some((ctx, id))
}

/// Sends a request upstream with the client's fields still on the `wire` (an HTTP/1.1 upstream only)
/// and the `extra` fields besides its map's (see [`upstream`] for its time limits), says whose fault a
/// failure was, and ends the call's client span when the request is sampled. The request stays where
/// its caller keeps it (its body is taken): a request is not copied into each level of future.
async fn send(
    gw: &Gateway,
    req: &mut Request<Body>,
    wire: Option<&WireFields>,
    extra: &[(&HeaderName, &HeaderValue)],
    span: CallSpan,
    variant: Variant,
    to: Upstream<'_>,
) -> (Result<Reply<Body>, ProxyError>, u64) {
    let t0 = Instant::now();
    let traced = match (span, gw.tracer.as_deref()) {
        (Some((ctx, span_id)), Some(tracer)) if ctx.sampled => {
            Some((tracer, ctx, span_id, SystemTime::now(), req.method().clone(), req.uri().clone()))
        }
        _ => None,
    };
    let res = if to.http2 {
        debug_assert!(wire.is_none(), "an HTTP/2 call's fields are in its map");
        for &(n, v) in extra {
            req.headers_mut().insert(n.clone(), v.clone());
        }
        // Boxed: hyper's HTTP/2 client call is a future of several KiB, which every HTTP/1.1 call
        // (and every level of future above it) would otherwise carry and copy.
        // An HTTP/1.1 upstream's head is read without its hop-by-hop fields (`protocols/h1/client.rs`);
        // `h2` refuses most of them in an HTTP/2 one's, not `trailer` or those `connection` named.
        let req = std::mem::replace(req, Request::new(crate::body::empty()));
        Box::pin(crate::upstream::h2::send(req, to.timeouts, to.tls))
            .await
            .map(|r| Reply::new(without_hop_by_hop(r)))
    } else {
        upstream::send(req, wire, extra, to.timeouts, to.tls).await
    };
    let us = t0.elapsed().as_micros() as u64;
    let res = res.map_err(|e| attribute(&e, gw.limits.max_body_bytes));
    if let Some((tracer, ctx, span_id, start, method, uri)) = traced {
        let call = ClientCall {
            ctx,
            span_id,
            start,
            method: &method,
            uri: &uri,
            variant,
        };
        call.end(tracer, res.as_ref().map(|r| r.response.status()));
    }
    (res, us)
}

/// The response of a reply with its fields in its map.
fn in_map(reply: Reply<Body>) -> Result<Response<Body>, ProxyError> {
    reply.into_response().map_err(|e| ProxyError::Upstream(error_chain(&e)))
}

/// The proxy error for a failed upstream call: the client's when its body was at fault, else the
/// upstream's.
fn attribute(e: &SendError, max_body: u64) -> ProxyError {
    if let SendError::Timeout(d) = e {
        return ProxyError::Timeout(*d);
    }
    if caused_by::<http_body_util::LengthLimitError>(e) {
        return ProxyError::BodyTooLarge(max_body);
    }
    match cause::<ClientBodyError>(e) {
        Some(ClientBodyError::TooLarge(_)) => ProxyError::BodyTooLarge(max_body),
        Some(ClientBodyError::Timeout(d)) => ProxyError::ClientTimeout(*d),
        Some(_) => ProxyError::ClientBody(error_chain(e)),
        None => ProxyError::Upstream(error_chain(e)),
    }
}

/// The response without hop-by-hop fields. A 101 (only ever to an upgrade request: see `upstream`)
/// keeps the protocol it switches to.
fn without_hop_by_hop(mut resp: Response<Body>) -> Response<Body> {
    let upgrade = match resp.status() {
        http::StatusCode::SWITCHING_PROTOCOLS => resp.headers().get(header::UPGRADE).cloned(),
        _ => None,
    };
    strip_hop_by_hop(resp.headers_mut());
    if let Some(u) = upgrade {
        resp.headers_mut().insert(header::UPGRADE, u);
    }
    resp
}

/// Serves a request as variant `vr` of `stage`, its path in the stage `rest`. The body is limited to the
/// request body limit already (by the caller: for a client's request, as it arrives). The phases: the
/// upstream call ([`prepare`]: match the route, answer a mock, render the upstream URI, check the
/// request, the upstream request's head), then send it — through the stage cache for GET/HEAD where
/// the variant uses it.
pub(crate) async fn serve<B>(
    ctx: &Ctx<'_>,
    stage: &StageRoute,
    vr: &VariantRoute,
    parts: &mut http::request::Parts,
    wire: Option<RequestFields>,
    body: B,
    rest: &str,
) -> Outcome
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    let (call, cache_key, route) = match prepare(ctx, stage, vr, parts, wire, rest) {
        Prepared::Call { call, cache_key, route } => (call, cache_key, route),
        Prepared::Answered(outcome) => return outcome,
    };
    let outcome = match (stage.cache.as_ref(), cache_key) {
        // Boxed: the cache path's future (moka's included) is large, and every connection's task
        // would otherwise carry it inline.
        (Some(cache), Some(key)) => Box::pin(cached(ctx.gw, cache, key, &call, stage.cache_ttl)).await,
        // Sent from here (not from a function of its own): the upstream call's future is large, and
        // each level of `async fn` around it is one more copy of it per request.
        _ => {
            let (timeouts, variant, tls, http2) = (call.timeouts, call.variant, call.tls.clone(), call.http2);
            let (mut req, span, wire, forwarded) = call.into_request(body.boxed_unsync());
            let to = Upstream {
                timeouts,
                tls: tls.as_ref(),
                http2,
            };
            let extra = forwarded.as_ref().map(|f| f.fields(ctx));
            let extra = extra.as_deref().unwrap_or_default();
            let (res, us) = send(ctx.gw, &mut req, wire.as_ref(), extra, span, variant, to).await;
            // An HTTP/1.1 client's driver writes the fields from the upstream's head as they are;
            // anything else (an HTTP/2 client) reads them from the map.
            let (result, wire) = match res {
                Ok(Reply { response, wire }) if parts.version != http::Version::HTTP_2 => (Ok(response), wire),
                res => (res.and_then(in_map), None),
            };
            Outcome {
                result,
                wire,
                integration_us: Some(us),
                cache: None,
                route: None,
            }
        }
    };
    Outcome { route, ..outcome }
}

/// What [`prepare`] gives: the upstream call to make, or the answer when there is none to make (a
/// mock's, or a refusal).
// Made once per request and taken apart at once: boxing the call would be an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// The call, its stage cache key when the cache may answer it, and the matched route (for a
    /// sampled request's span).
    Call {
        call: UpstreamCall,
        cache_key: Option<CacheKey>,
        route: Option<Arc<str>>,
    },
    Answered(Outcome),
}

/// Matches the route and makes the upstream call: with the client's fields as they came (`wire`) to an
/// HTTP/1.1 upstream past the cache, else in a map.
fn prepare(
    ctx: &Ctx<'_>,
    stage: &StageRoute,
    vr: &VariantRoute,
    parts: &mut http::request::Parts,
    wire: Option<RequestFields>,
    rest: &str,
) -> Prepared {
    let Ok(route_path) = crate::routing::path::resolve_dot_segments(rest) else {
        return Prepared::Answered(Outcome::error(ProxyError::AboveRoot(rest.to_string())));
    };
    let route_path = if route_path.is_empty() { "/" } else { &route_path };
    let Ok(matched) = vr.deployment.router.at(route_path) else {
        return Prepared::Answered(Outcome::error(ProxyError::NoRoute));
    };
    // Taken only for a sampled request's span.
    let route = ctx.trace.filter(|t| t.sampled).map(|_| matched.value.route.clone());
    let refused = |e| {
        Prepared::Answered(Outcome {
            route: route.clone(),
            ..Outcome::error(e)
        })
    };
    let Some(integration) = matched.value.find(&parts.method) else {
        return refused(ProxyError::MethodNotAllowed);
    };
    let var = |n: &str| vr.variables.get(n).map(String::as_str);
    let (uri, timeouts, tls, http2) = match &**integration {
        CompiledIntegration::Mock { status, headers, body } => {
            return Prepared::Answered(Outcome {
                route,
                ..mock(*status, headers, body, var)
            })
        }
        CompiledIntegration::Http {
            uri,
            bound,
            timeouts,
            tls,
            http2,
        } => (vr.target(uri, *bound), *timeouts, tls.clone(), *http2),
    };
    let params = &matched.params;
    let checked = uri
        .render(var, |n| params.get(n), ctx.uri.query())
        .map_err(ProxyError::BadIntegrationUri)
        .and_then(|uri| check(ctx.gw, parts, FieldsRef::of(&parts.headers, wire.as_ref()), &uri, http2).map(|()| uri));
    let upstream_uri = match checked {
        Ok(uri) => uri,
        Err(e) => return refused(e),
    };
    let upgrade = parts.extensions.get::<UpgradeRequest>().copied();
    let cacheable = (parts.method == http::Method::GET || parts.method == http::Method::HEAD) && upgrade.is_none();
    let cache_key = (stage.cache.is_some() && vr.use_cache && cacheable).then(|| cache_key(&parts.method, ctx.uri.query(), route_path, vr));
    // An upgrade (WebSocket) is an HTTP/1.1 exchange: it goes over HTTP/1.1 whatever the integration says.
    let http2 = http2 && upgrade.is_none();
    let (headers, wire, forwarded) = call_fields(ctx, &mut parts.headers, wire, upgrade, http2, cache_key.is_some());
    let call = UpstreamCall {
        method: parts.method.clone(),
        uri: upstream_uri,
        headers,
        wire,
        forwarded,
        timeouts,
        variant: vr.variant,
        trace: ctx.trace,
        tls,
        upgrade,
        http2,
    };
    Prepared::Call { call, cache_key, route }
}

/// The upstream request's fields: the client's as they came (`wire`) with the forwarding fields apart,
/// to an HTTP/1.1 upstream past the cache; else in a map (`headers`, which they leave), the forwarding
/// fields in it too where the map is what is sent (HTTP/2) or looked at `whole` (the cache).
fn call_fields(
    ctx: &Ctx<'_>,
    headers: &mut HeaderMap,
    mut wire: Option<RequestFields>,
    upgrade: Option<UpgradeRequest>,
    http2: bool,
    whole: bool,
) -> (HeaderMap, Option<WireFields>, Option<Forwarded>) {
    // A map is what an HTTP/2 upstream is sent, and what the cache looks at whole (a response's
    // `Vary` may name any field).
    if http2 || whole {
        move_to_map(headers, &mut wire);
    }
    match wire {
        Some(wire) => {
            let (wire, forwarded) = upstream_wire(ctx.peer.addr.ip(), wire);
            (HeaderMap::new(), Some(wire), Some(forwarded))
        }
        None => {
            let (mut headers, forwarded) = upstream_headers(ctx.peer.addr.ip(), std::mem::take(headers), upgrade, http2);
            // The forwarding fields go into the map where a map is what is sent (HTTP/2) or looked at
            // whole (the cache: a response's `Vary` may name one).
            if http2 || whole {
                forwarded.insert_into(ctx, &mut headers);
                (headers, None, None)
            } else {
                (headers, None, Some(forwarded))
            }
        }
    }
}

/// A mock integration's answer: its status, headers and rendered body.
fn mock<'v>(
    status: http::StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    template: &canarygate_model::template::Template,
    var: impl Fn(&str) -> Option<&'v str>,
) -> Outcome {
    let t0 = Instant::now();
    let mut text = String::new();
    template.render_into(&mut text, var, |_| None);
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    for (k, v) in headers {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    Outcome {
        result: Ok(r),
        wire: None,
        integration_us: Some(t0.elapsed().as_micros() as u64),
        cache: None,
        route: None,
    }
}

/// Refuses what the upstream call cannot carry: a gRPC call to an HTTP/1.1 upstream, a body declared
/// larger than the limit.
fn check(gw: &Gateway, parts: &http::request::Parts, fields: FieldsRef<'_>, uri: &http::Uri, http2: bool) -> Result<(), ProxyError> {
    if !http2 && parts.extensions.get::<GrpcRequest>().is_some() {
        return Err(ProxyError::GrpcNeedsHttp2(uri.to_string()));
    }
    let max = gw.limits.max_body_bytes;
    let declared = fields.text_of(&header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ProxyError::BodyTooLarge(max));
    }
    Ok(())
}

/// The upstream request's header fields: the client's without hop-by-hop fields (but an upgrade's
/// protocol and an HTTP/2 upstream's `te: trailers`) and without its own forwarding fields; and the
/// gateway's forwarding fields: `x-forwarded-for`, `-proto`, `-host` and the request id.
/// (`peer`: the client's address.)
pub(crate) fn upstream_headers(
    peer: IpAddr,
    mut headers: HeaderMap,
    upgrade: Option<UpgradeRequest>,
    http2: bool,
) -> (HeaderMap, Forwarded) {
    let protocol = upgrade.and_then(|_| headers.get(header::UPGRADE).cloned());
    // `te: trailers` is the one TE an HTTP/2 request may carry (gRPC servers ask for it).
    let te_trailers = http2
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| crate::protocols::h1::connection_tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    // The client's Host is not forwarded: the upstream request head writes the upstream's
    // (`protocols/h1/client.rs`). Its forwarding fields are replaced by the gateway's.
    let ours = |k: &str| {
        k.starts_with("x-")
            && [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &REQUEST_ID]
                .iter()
                .any(|n| n.as_str() == k)
    };
    let doomed = doomed(&headers, ours);
    let prev = if doomed.has(&X_FORWARDED_FOR) {
        headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok())
    } else {
        None
    };
    let xff = prev.and_then(|prev| HeaderValue::try_from(format!("{prev}, {peer}")).ok());
    doomed.remove_from(&mut headers);
    if let Some(p) = protocol {
        // The one hop-by-hop field forwarded: the protocol an upgrade request asks for (the request
        // head adds `connection: upgrade`).
        headers.insert(header::UPGRADE, p);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let forwarded = Forwarded { xff };
    (headers, forwarded)
}

/// [`upstream_headers`] for fields still in an HTTP/1.1 client's head, to go to an HTTP/1.1 upstream
/// as they came: the same fields taken out (the hop-by-hop ones and those `Connection` names, those
/// the upstream request's head writes itself, the client's forwarding fields), in one pass over the
/// lines and one in place, no map made.
pub(crate) fn upstream_wire(peer: IpAddr, fields: RequestFields) -> (WireFields, Forwarded) {
    let xff = FieldsRef::Wire(&fields)
        .text_of(&X_FORWARDED_FOR)
        .and_then(|prev| HeaderValue::try_from(format!("{prev}, {peer}")).ok());
    let named: Vec<Vec<u8>> = if fields.index.names_more {
        let connection = fields.wire.iter().filter(|(n, ..)| n.eq_ignore_ascii_case(b"connection"));
        named_by_connection(connection.map(|(_, v, _)| v)).map(<[u8]>::to_vec).collect()
    } else {
        Vec::new()
    };
    (fields.passed_on(&named), Forwarded { xff })
}

/// The stage cache's key of a GET/HEAD: method, path in the stage with the query, the variant's
/// fingerprint (no vary hash yet).
fn cache_key(method: &http::Method, query: Option<&str>, route_path: &str, vr: &VariantRoute) -> CacheKey {
    let mut path_and_query = String::with_capacity(route_path.len() + 32);
    path_and_query.push_str(route_path);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    CacheKey {
        method: method.clone(),
        path_and_query,
        fingerprint: vr.fingerprint,
        vary: 0,
    }
}

/// The initiator's own answer when it could not (or must not) be stored.
struct NotStored;

/// Serves a GET/HEAD through the stage cache, coalescing concurrent misses for one key. `resource`
/// is the key without a vary hash.
async fn cached(gw: &Gateway, cache: &StageCache, resource: CacheKey, call: &UpstreamCall, ttl: Duration) -> Outcome {
    let now = SystemTime::now();
    // The key: with the request's values of the fields this resource's responses vary on, if any.
    let (key, resource) = match cache.vary.get(&resource).await {
        None => (resource, None),
        Some(names) => {
            let key = CacheKey {
                vary: vary_hash(&call.headers, names.iter()),
                ..resource.clone()
            };
            (key, Some(resource))
        }
    };
    if let Some(entry) = cache.entries.get(&key).await {
        if let Some(age) = entry.answers(&call.headers, now) {
            return hit(&entry, &call.method, age);
        }
        // Stale, or not for this request's `Vary` values: fetched anew and replaced.
        cache.entries.invalidate(&key).await;
    }
    // Filled only if this request's own fill ran: then it called the upstream itself.
    let mut own = Own::default();
    let fill = fill(gw, cache, call, ttl, &mut own);
    let waited = tokio::time::timeout(call.timeouts.head, cache.entries.try_get_with(key.clone(), fill)).await;
    match (waited, own.result) {
        // This request fetched and stored it: a miss. Filed under the key of the fields it varies on.
        (Ok(Ok(entry)), _) if own.fetched_us.is_some() => {
            file_under_vary(cache, &key, resource, &entry, &call.headers).await;
            Outcome {
                result: Ok(hit_response(&entry, &call.method, entry.age(SystemTime::now())).map(full)),
                wire: None,
                integration_us: own.fetched_us,
                cache: Some(CacheResult::Miss),
                route: None,
            }
        }
        // Another request fetched it: ours only if it answers this request too.
        (Ok(Ok(entry)), _) if entry.answers(&call.headers, SystemTime::now()).is_some() => {
            hit(&entry, &call.method, entry.age(SystemTime::now()))
        }
        (_, Some(result)) => Outcome {
            result,
            wire: None,
            integration_us: own.fetched_us,
            cache: Some(CacheResult::Miss),
            route: None,
        },
        // Waited for another request's fetch that was not stored or is not for this request, or
        // waited too long: call ourselves.
        (_, None) => {
            let (res, us) = call.send(gw, empty()).await;
            Outcome {
                result: res,
                wire: None,
                integration_us: Some(us),
                cache: Some(CacheResult::Miss),
                route: None,
            }
        }
    }
}

/// A stored answer to this request.
fn hit(entry: &crate::cache::CachedResponse, method: &http::Method, age: Duration) -> Outcome {
    Outcome {
        result: Ok(hit_response(entry, method, age).map(full)),
        wire: None,
        integration_us: None,
        cache: Some(CacheResult::Hit),
        route: None,
    }
}

/// What this request's own fill did: how long its upstream call took, and its own answer when that
/// was not stored.
#[derive(Default)]
struct Own {
    fetched_us: Option<u64>,
    result: Option<Result<Response<Body>, ProxyError>>,
}

/// Fetches the resource to store it (the cache runs one fill per key at a time).
async fn fill(
    gw: &Gateway,
    cache: &StageCache,
    call: &UpstreamCall,
    ttl: Duration,
    own: &mut Own,
) -> Result<Arc<crate::cache::CachedResponse>, NotStored> {
    let (res, us) = call.send(gw, empty()).await;
    own.fetched_us = Some(us);
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            own.result = Some(Err(e));
            return Err(NotStored);
        }
    };
    let Some(storable) = storable(&call.method, &call.headers, resp.status(), resp.headers(), ttl, SystemTime::now()) else {
        own.result = Some(Ok(resp));
        return Err(NotStored);
    };
    match buffer(resp, cache.max_entry_bytes).await {
        Buffered::Whole(parts, body) => Ok(Arc::new(storable.into_entry(parts.status, parts.headers, body))),
        Buffered::TooLarge(r) => {
            own.result = Some(Ok(r));
            Err(NotStored)
        }
        Buffered::Failed(e) => {
            own.result = Some(Err(e));
            Err(NotStored)
        }
    }
}

/// Files a fetched entry under the key of the fields its response varies on (and remembers those
/// fields for the resource), moving it when this request's key was made with other fields.
async fn file_under_vary(
    cache: &StageCache,
    key: &CacheKey,
    resource: Option<CacheKey>,
    entry: &Arc<crate::cache::CachedResponse>,
    headers: &HeaderMap,
) {
    let names: Arc<[HeaderName]> = entry.vary_names().cloned().collect();
    let resource = resource.unwrap_or_else(|| key.clone());
    if names.is_empty() {
        cache.vary.invalidate(&resource).await;
        return;
    }
    let right = vary_hash(headers, names.iter());
    cache.vary.insert(resource.clone(), names).await;
    if right != key.vary {
        cache.entries.insert(CacheKey { vary: right, ..resource }, entry.clone()).await;
        cache.entries.invalidate(key).await;
    }
}

enum Buffered {
    Whole(http::response::Parts, Bytes),
    /// Larger than an entry may be: the response, streamed on from what was read so far.
    TooLarge(Response<Body>),
    Failed(ProxyError),
}

/// Reads a response body to store it, up to `limit` bytes.
async fn buffer(resp: Response<Body>, limit: usize) -> Buffered {
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Buffered::TooLarge(resp);
    }
    let (parts, mut body) = resp.into_parts();
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Buffered::Whole(parts, buf.freeze()),
            Some(Err(e)) => return Buffered::Failed(ProxyError::Upstream(error_chain(&*e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        use futures_util::StreamExt;
                        let head = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(http_body::Frame::data(buf.freeze()))));
                        let tail = http_body_util::BodyStream::new(body);
                        let r = Response::from_parts(parts, http_body_util::StreamBody::new(head.chain(tail)).boxed_unsync());
                        return Buffered::TooLarge(r);
                    }
                }
            }
        }
    }
}

/// Whether `e` or an error in its source chain is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    cause::<T>(e).is_some()
}

/// The first `T` in `e`'s source chain.
fn cause<'e, T: std::error::Error + 'static>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let _ = write!(s, ": {err}");
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Peer;
    use crate::{AccessLog, Limits};
    use canarygate_metrics::Registry;

    type Fields = Vec<(String, String)>;

    /// The upstream request head written from `client`'s fields as an HTTP/1.1 call past the cache
    /// sends it (the map and the forwarding fields after it), and the map an HTTP/2 or cached call
    /// sends: each as `(name, value)` pairs in order.
    fn upstream_fields(client: &[(&str, &str)]) -> (Fields, Fields, String) {
        let gw = Arc::new(crate::Gateway::new(
            Arc::new(Registry::new()),
            AccessLog::disabled(),
            Limits::default(),
        ));
        let peer = Peer::new("127.0.0.1:5000".parse().unwrap());
        let mut req = Request::new(());
        for (k, v) in client {
            req.headers_mut()
                .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let (mut parts, ()) = req.into_parts();
        let ctx = Ctx::begin(&gw, &peer, &mut parts, None);
        let rid = ctx.rid.to_str().unwrap().to_string();
        // The same fields still in an HTTP/1.1 client's head, as they came: the same fields written.
        let mut lines = String::new();
        for (k, v) in client {
            lines.push_str(&format!("{k}: {v}\r\n"));
        }
        lines.push_str("\r\n");
        let wire = RequestFields::of_lines(lines.as_bytes());
        let ip = peer.addr.ip();
        let (wire, wire_forwarded) = upstream_wire(ip, wire);
        let mut from_wire = Vec::new();
        crate::protocols::h1::encode_head(
            &mut from_wire,
            &http::Method::GET,
            "/a",
            &HeaderValue::from_static("up.test:8080"),
            crate::protocols::h1::client::Fields {
                map: &HeaderMap::new(),
                wire: Some(&wire),
                extra: &wire_forwarded.fields(&ctx),
            },
            crate::protocols::h1::RequestFraming::Empty,
        );
        let (map, forwarded) = upstream_headers(ip, std::mem::take(&mut parts.headers), None, false);
        let mut out = Vec::new();
        let host = HeaderValue::from_static("up.test:8080");
        crate::protocols::h1::encode_head(
            &mut out,
            &http::Method::GET,
            "/a",
            &host,
            (&map, &forwarded.fields(&ctx)[..]),
            crate::protocols::h1::RequestFraming::Empty,
        );
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut fields);
        assert!(parsed.parse(&out).unwrap().is_complete(), "{}", String::from_utf8_lossy(&out));
        let written: Fields = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
            .collect();
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut fields);
        assert!(parsed.parse(&from_wire).unwrap().is_complete());
        let by_name = |fields: Vec<(String, String)>| {
            let mut fields: Vec<_> = fields.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            fields
        };
        let wire_written = parsed
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).unwrap()))
            .collect();
        assert_eq!(by_name(wire_written), by_name(written.clone()), "{client:?}");
        let mut whole = map;
        forwarded.insert_into(&ctx, &mut whole);
        for (k, v) in &whole {
            // HPACK sends a sensitive value as a literal never indexed.
            assert_eq!(v.is_sensitive(), *k == REQUEST_ID, "{k}: only the request id goes never indexed");
        }
        let whole = whole
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        (written, whole, rid)
    }

    fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn the_upstream_request_carries_the_gateways_forwarding_fields_once_and_no_hop_by_hop_ones() {
        let (written, whole, rid) = upstream_fields(&[
            ("host", "Shop.Test:8443"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-request-id", "has space"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        assert_eq!(rid.len(), 32, "a request id unfit to pass on is replaced");
        for fields in [&written, &whole] {
            assert_eq!(values(fields, "x-forwarded-for"), ["10.0.0.1, 127.0.0.1"], "{fields:?}");
            assert_eq!(values(fields, "x-forwarded-proto"), ["http"], "{fields:?}");
            assert_eq!(values(fields, "x-forwarded-host"), ["shop.test"], "{fields:?}");
            assert_eq!(values(fields, "x-request-id"), [rid.as_str()], "{fields:?}");
            assert_eq!(values(fields, "accept"), ["*/*"], "{fields:?}");
            for gone in ["connection", "x-secret", "keep-alive", "te"] {
                assert!(values(fields, gone).is_empty(), "{gone}: {fields:?}");
            }
        }
        assert_eq!(values(&written, "host"), ["up.test:8080"], "the upstream's host, once: {written:?}");

        // Nothing of its own: the peer's address, and the client's request id kept.
        let (written, whole, rid) = upstream_fields(&[("host", "shop.test"), ("x-request-id", "abc-123")]);
        assert_eq!(rid, "abc-123");
        for fields in [&written, &whole] {
            assert_eq!(values(fields, "x-forwarded-for"), ["127.0.0.1"], "{fields:?}");
            assert_eq!(values(fields, "x-forwarded-host"), ["shop.test"], "{fields:?}");
            assert_eq!(values(fields, "x-request-id"), ["abc-123"], "{fields:?}");
        }
        // Names in any case (as an HTTP/1.1 client's head has them, passed on as they came): the same.
        let (written, whole, _) = upstream_fields(&[
            ("Host", "shop.test"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Connection", "Keep-Alive, X-Secret"),
            ("X-SECRET", "s"),
            ("Proxy-Connection", "keep-alive"),
            ("Accept", "*/*"),
        ]);
        for fields in [&written, &whole] {
            let lower: Fields = fields.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
            assert_eq!(values(&lower, "x-forwarded-for"), ["10.0.0.1, 127.0.0.1"], "{fields:?}");
            assert_eq!(values(&lower, "accept"), ["*/*"], "{fields:?}");
            for gone in ["connection", "x-secret", "proxy-connection"] {
                assert!(values(&lower, gone).is_empty(), "{gone}: {fields:?}");
            }
        }
        // No host: no x-forwarded-host.
        let (written, _, _) = upstream_fields(&[]);
        assert!(values(&written, "x-forwarded-host").is_empty(), "{written:?}");
        assert_eq!(values(&written, "x-forwarded-proto"), ["http"]);
    }
}

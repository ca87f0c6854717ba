//! Serving a request as one variant of a stage: match the route, render the integration, and answer the
//! mock or call the upstream — through the stage cache for GET/HEAD where it is on — with the
//! forwarding headers, the trace context and a client span; failures say whose fault they were.

pub(crate) mod ctx;
pub(crate) mod mirror;
pub(crate) mod request;

use std::fmt::Write as _;
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
use crate::proxy::ctx::{Ctx, REQUEST_ID};
use crate::routing::table::{CompiledIntegration, StageRoute, VariantRoute};
use crate::trace::{ClientCall, TRACEPARENT};
use crate::upstream::{self, SendError, Timeouts};
use crate::Gateway;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn is_hop_by_hop(n: &HeaderName) -> bool {
    crate::protocols::h1::client::is_hop_by_hop(n.as_str().as_bytes())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none or one (`connection: keep-alive`): find them in one pass of cheap
    // comparisons, then remove only those.
    let mut found: [Option<HeaderName>; 9] = Default::default();
    let mut n = 0;
    for k in h.keys().filter(|k| is_hop_by_hop(k)) {
        if n < found.len() {
            found[n] = Some(k.clone());
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::protocols::h1::connection_tokens(v.as_bytes()))
        .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named.into_iter().chain(found.into_iter().flatten()) {
        h.remove(name);
    }
}

/// What serving one request produced.
pub(crate) struct Outcome {
    pub(crate) result: Result<Response<Body>, ProxyError>,
    pub(crate) integration_us: Option<u64>,
    pub(crate) cache: Option<CacheResult>,
    /// The matched route's path, for a sampled request's span.
    pub(crate) route: Option<Arc<str>>,
}

impl Outcome {
    fn error(e: ProxyError) -> Outcome {
        Outcome {
            result: Err(e),
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
        *up.headers_mut() = self.headers.clone();
        let span = trace_call(self.trace, up.headers_mut());
        (up, span)
    }

    /// The request, consuming the call (no copy of the headers).
    fn into_request(mut self, body: Body) -> (Request<Body>, CallSpan) {
        let span = trace_call(self.trace, &mut self.headers);
        let mut up = Request::new(body);
        *up.method_mut() = self.method;
        *up.uri_mut() = self.uri;
        *up.headers_mut() = self.headers;
        if let Some(u) = self.upgrade {
            up.extensions_mut().insert(u);
        }
        (up, span)
    }

    async fn send(&self, gw: &Gateway, body: Body, max_body: u64) -> (Result<Response<Body>, ProxyError>, u64) {
        let (req, span) = self.request(body);
        let to = Upstream {
            timeouts: self.timeouts,
            tls: self.tls.as_ref(),
            http2: self.http2,
        };
        send(gw, req, span, self.variant, to, max_body).await
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

/// Sends a request upstream (see [`upstream`] for its time limits), says whose fault a failure was,
/// and ends the call's client span when the request is sampled.
async fn send(
    gw: &Gateway,
    req: Request<Body>,
    span: CallSpan,
    variant: Variant,
    to: Upstream<'_>,
    max_body: u64,
) -> (Result<Response<Body>, ProxyError>, u64) {
    let t0 = Instant::now();
    let traced = match (span, gw.tracer.as_deref()) {
        (Some((ctx, span_id)), Some(tracer)) if ctx.sampled => {
            Some((tracer, ctx, span_id, SystemTime::now(), req.method().clone(), req.uri().clone()))
        }
        _ => None,
    };
    let res = if to.http2 {
        // Boxed: hyper's HTTP/2 client call is a future of several KiB, which every HTTP/1.1 call
        // (and every level of future above it) would otherwise carry and copy.
        Box::pin(crate::upstream::h2::send(req, to.timeouts, to.tls)).await
    } else {
        upstream::send(req, to.timeouts, to.tls).await
    };
    let us = t0.elapsed().as_micros() as u64;
    let res = res.map_err(|e| attribute(&e, max_body));
    if let Some((tracer, ctx, span_id, start, method, uri)) = traced {
        let call = ClientCall {
            ctx,
            span_id,
            start,
            method: &method,
            uri: &uri,
            variant,
        };
        call.end(tracer, &res);
    }
    (res, us)
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

fn stream_response(mut resp: Response<Body>) -> Response<Body> {
    // A 101 (only ever to an upgrade request: see `upstream`) keeps the protocol it switches to.
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
    body: B,
    rest: &str,
) -> Outcome
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    let (call, cache_key, route) = match prepare(ctx, stage, vr, parts, rest) {
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
            let (req, span) = call.into_request(body.boxed_unsync());
            let to = Upstream {
                timeouts,
                tls: tls.as_ref(),
                http2,
            };
            let (res, us) = send(ctx.gw, req, span, variant, to, ctx.gw.limits.max_body_bytes).await;
            Outcome {
                result: res.map(stream_response),
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

/// Matches the route and makes the upstream call.
fn prepare(ctx: &Ctx<'_>, stage: &StageRoute, vr: &VariantRoute, parts: &mut http::request::Parts, rest: &str) -> Prepared {
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
        CompiledIntegration::Http { uri, timeouts, tls, http2 } => (uri, *timeouts, tls.clone(), *http2),
    };
    let params = &matched.params;
    let checked = uri
        .render(var, |n| params.get(n), parts.uri.query())
        .map_err(ProxyError::BadIntegrationUri)
        .and_then(|uri| check(ctx.gw, parts, &uri, http2).map(|()| uri));
    let upstream_uri = match checked {
        Ok(uri) => uri,
        Err(e) => return refused(e),
    };
    let upgrade = parts.extensions.get::<UpgradeRequest>().copied();
    let cacheable = (parts.method == http::Method::GET || parts.method == http::Method::HEAD) && upgrade.is_none();
    let cache_key = (stage.cache.is_some() && vr.use_cache && cacheable).then(|| cache_key(parts, route_path, vr));
    let call = UpstreamCall {
        method: parts.method.clone(),
        uri: upstream_uri,
        headers: upstream_headers(ctx, std::mem::take(&mut parts.headers), upgrade, http2),
        timeouts,
        variant: vr.variant,
        trace: ctx.trace,
        tls,
        upgrade,
        // An upgrade (WebSocket) is an HTTP/1.1 exchange: it goes over HTTP/1.1 whatever the integration says.
        http2: http2 && upgrade.is_none(),
    };
    Prepared::Call { call, cache_key, route }
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
        integration_us: Some(t0.elapsed().as_micros() as u64),
        cache: None,
        route: None,
    }
}

/// Refuses what the upstream call cannot carry: a gRPC call to an HTTP/1.1 upstream, a body declared
/// larger than the limit.
fn check(gw: &Gateway, parts: &http::request::Parts, uri: &http::Uri, http2: bool) -> Result<(), ProxyError> {
    if !http2 && parts.extensions.get::<GrpcRequest>().is_some() {
        return Err(ProxyError::GrpcNeedsHttp2(uri.to_string()));
    }
    let max = gw.limits.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ProxyError::BodyTooLarge(max));
    }
    Ok(())
}

/// The upstream request's header fields: the client's without hop-by-hop fields (but an upgrade's
/// protocol and an HTTP/2 upstream's `te: trailers`), with `x-forwarded-for`, `-proto`, `-host` and
/// the request id.
fn upstream_headers(ctx: &Ctx<'_>, mut headers: HeaderMap, upgrade: Option<UpgradeRequest>, http2: bool) -> HeaderMap {
    let protocol = upgrade.and_then(|_| headers.get(header::UPGRADE).cloned());
    // `te: trailers` is the one TE an HTTP/2 request may carry (gRPC servers ask for it).
    let te_trailers = http2
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| crate::protocols::h1::connection_tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    // The client's Host is not forwarded: the upstream request head writes the upstream's (`protocols/h1/client.rs`).
    strip_hop_by_hop(&mut headers);
    if let Some(p) = protocol {
        // The one hop-by-hop field forwarded: the protocol an upgrade request asks for (the request
        // head adds `connection: upgrade`).
        headers.insert(header::UPGRADE, p);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let peer = ctx.peer;
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(peer.scheme()));
    if let Some(h) = ctx.host.as_deref().and_then(|h| HeaderValue::try_from(h).ok()) {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    headers.insert(REQUEST_ID.clone(), ctx.rid.clone());
    headers
}

/// The stage cache's key of a GET/HEAD: method, path in the stage with the query, the variant's
/// fingerprint (no vary hash yet).
fn cache_key(parts: &http::request::Parts, route_path: &str, vr: &VariantRoute) -> CacheKey {
    let mut path_and_query = String::with_capacity(route_path.len() + 32);
    path_and_query.push_str(route_path);
    if let Some(q) = parts.uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    CacheKey {
        method: parts.method.clone(),
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
            integration_us: own.fetched_us,
            cache: Some(CacheResult::Miss),
            route: None,
        },
        // Waited for another request's fetch that was not stored or is not for this request, or
        // waited too long: call ourselves.
        (_, None) => {
            let (res, us) = call.send(gw, empty(), gw.limits.max_body_bytes).await;
            Outcome {
                result: res.map(stream_response),
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
    let (res, us) = call.send(gw, empty(), gw.limits.max_body_bytes).await;
    own.fetched_us = Some(us);
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            own.result = Some(Err(e));
            return Err(NotStored);
        }
    };
    let Some(storable) = storable(&call.method, &call.headers, resp.status(), resp.headers(), ttl, SystemTime::now()) else {
        own.result = Some(Ok(stream_response(resp)));
        return Err(NotStored);
    };
    match buffer(resp, cache.max_entry_bytes).await {
        Buffered::Whole(parts, body) => {
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            Ok(Arc::new(storable.into_entry(parts.status, headers, body)))
        }
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
        return Buffered::TooLarge(stream_response(resp));
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
                        let mut r = Response::from_parts(parts, http_body_util::StreamBody::new(head.chain(tail)).boxed_unsync());
                        strip_hop_by_hop(r.headers_mut());
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

//! One client request's life: resolve the stage, choose the variant (and start a mirrored copy),
//! serve it through [`crate::proxy`], say how the response is marked ([`Marks`]), and — once the connection driver has written
//! the response to its end — record the variant's metrics, the access log line and the server span
//! ([`Finish`]).

use std::sync::Arc;

use canarygate_metrics::{CacheResult, Observation, Routed, Series, Variant};
use canarygate_model::grpc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Limited;

use crate::access_log::{AccessLog, Record};
use crate::body::{Body, BoxError};
use crate::error::{ProxyError, Source};
use crate::exchange::{Ending, Peer, UpgradeRequest};
use crate::protocols::h1::fields::{move_to_map, FieldsRef, RequestFields};
use crate::protocols::h1::Reply;
use crate::proxy::ctx::{Ctx, REQUEST_ID};
use crate::proxy::mirror::{Pair, TeeBody};
use crate::proxy::{serve, FieldList};
use crate::routing::choose::choose;
use crate::routing::table::{StageRoute, VariantRoute};
use crate::trace::ServerSpan;
use crate::Gateway;

static VARIANT_HEADER: HeaderName = HeaderName::from_static("x-canarygate-variant");
static CACHE_HEADER: HeaderName = HeaderName::from_static("x-canarygate-cache");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The response's marks: the variant that served it, the request id, the cache's result. The
/// connection driver writes them with the response's head, replacing any field of theirs the
/// response has (HTTP/1.1: after the response's fields, never inserted into its map — two or three
/// hashed inserts per request; HTTP/2: into the map, [`Marks::insert_into`]).
pub(crate) struct Marks {
    variant: Option<Variant>,
    rid: HeaderValue,
    cache: Option<&'static str>,
}

static PRODUCTION: HeaderValue = HeaderValue::from_static("production");
static CANARY: HeaderValue = HeaderValue::from_static("canary");
static MIRROR: HeaderValue = HeaderValue::from_static("mirror");
static HIT: HeaderValue = HeaderValue::from_static("hit");
static MISS: HeaderValue = HeaderValue::from_static("miss");

impl Marks {
    pub(crate) fn fields(&self) -> FieldList<'_, 3> {
        let mut fields = FieldList::new();
        fields.push(&REQUEST_ID, &self.rid);
        if let Some(v) = self.variant {
            let value = match v {
                Variant::Production => &PRODUCTION,
                Variant::Canary => &CANARY,
                Variant::Mirror => &MIRROR,
            };
            fields.push(&VARIANT_HEADER, value);
        }
        if let Some(c) = self.cache {
            fields.push(&CACHE_HEADER, if c == "hit" { &HIT } else { &MISS });
        }
        fields
    }

    /// Into a response's map, replacing fields of the same names.
    pub(crate) fn insert_into(&self, h: &mut HeaderMap) {
        for &(n, v) in self.fields().iter() {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// What is left to do for a request once its response has ended: record its metrics and its access
/// log line, which depend on how the response body ended.
pub(crate) struct Finish {
    /// `None` when no stage was found: nothing is recorded.
    series: Option<Arc<Series>>,
    sec: u64,
    obs: Observation,
    /// Boxed: only with access logs on, and it keeps `Finish` (moved along with the response) small.
    record: Option<Box<Record>>,
    /// When the request was mirrored: the pair to tell how the original ended.
    pair: Option<Arc<Pair>>,
    /// A sampled request's server span, ended with the response.
    span: Option<Box<ServerSpan>>,
    /// What went wrong, when the gateway answered with a refusal or failure: whose fault, and the cause.
    error: Option<(&'static str, String)>,
    /// A gRPC call: its status as far as known.
    grpc: Option<GrpcCall>,
}

/// A gRPC call's outcome as far as known.
pub(crate) struct GrpcCall {
    /// The upstream answered (its `grpc-status` counts, in its head or trailers); else the gateway's
    /// own failure, counted by its HTTP status as for any request.
    from_upstream: bool,
    status: Option<u32>,
}

impl Finish {
    /// Counts a connection of the request's variant as open (after a 101) until the guard is dropped.
    pub(crate) fn open_connection(&self, kind: canarygate_metrics::OpenKind) -> Option<canarygate_metrics::OpenConnection> {
        self.series.as_ref().map(|s| s.open_connection(kind))
    }

    /// The response's trailers, as they pass: a gRPC call's status is in them.
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(g) = self.grpc.as_mut() {
            if let Some(code) = trailers.get(&GRPC_STATUS).and_then(|v| grpc::parse_status(v.as_bytes())) {
                g.status = Some(code);
            }
        }
    }

    pub(crate) fn done(self, log: &AccessLog, ending: Ending) {
        let mut obs = self.obs;
        let mut record = self.record;
        let mut error = self.error;
        if let Some(g) = &self.grpc {
            let mut status = g.status;
            // A whole gRPC answer from the upstream counts by its status (none at all is UNKNOWN, as
            // a gRPC client sees it).
            if g.from_upstream && obs.status == 200 && matches!(ending, Ending::Complete) {
                let code = *status.get_or_insert(grpc::code::UNKNOWN);
                obs.status = grpc::counted_status(code);
            }
            if let Some(r) = record.as_mut() {
                r.grpc_status = status;
            }
        }
        match ending {
            Ending::Complete => {}
            Ending::Failed(cause) => {
                // The head said 200, but the upstream failed the response: its failure.
                obs.status = 502;
                error = Some((Source::Upstream.as_str(), cause));
            }
            Ending::ClientGone => {
                error = Some((Source::Client.as_str(), "the client went away before the response's end".into()));
            }
        }
        if let Some(span) = self.span {
            span.end(obs.status, error.as_ref().map(|(s, e)| (*s, e.as_str())));
        }
        let Some(series) = self.series else { return };
        if let (Some(r), Some((source, e))) = (record.as_mut(), error) {
            r.error = Some(e);
            r.error_source = Some(source);
        }
        series.record(self.sec, &obs);
        if let Some(pair) = self.pair {
            pair.original_ended(obs.status);
        }
        if let Some(r) = record {
            log.send(*r);
        }
    }
}

/// Serves one request: the response, its marks, and what to record once it has been written.
///
/// Generic over the request body: the connection drivers (HTTP/1.1 and HTTP/2, over TCP or TLS)
/// each hand over their own. The phases: the request's facts ([`Ctx::begin`]), resolve the stage,
/// choose the variant, start a mirrored copy, serve it ([`serve`]: match the route, render the
/// integration, the upstream request, the cache), answer (a failure as the client's protocol says
/// it), its marks, and what to record at its end ([`finish`]).
///
/// An HTTP/1.1 client's request comes with its header fields still in its head (`wire`, its map then
/// empty); they are made a map only for a phase that edits them or reads them whole (tracing, a
/// mirrored copy, the cache, an HTTP/2 upstream), else passed on as they came.
pub(crate) async fn handle<B>(
    gw: &Arc<Gateway>,
    req: Request<B>,
    mut wire: Option<RequestFields>,
    peer: &Peer,
) -> (Reply<Body>, Marks, Finish)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let table = gw.table.load_full();
    let (mut parts, body) = req.into_parts();
    if gw.tracer.is_some() {
        move_to_map(&mut parts.headers, &mut wire);
    }
    let ctx = Ctx::begin(gw, peer, &mut parts, wire.as_ref());
    let domain = if table.domains.is_empty() { None } else { ctx.host_str() };
    let Some((stage, rest)) = table.resolve(domain, ctx.path()) else {
        return no_stage(&ctx, &parts);
    };
    if stage.mirror.is_some() {
        move_to_map(&mut parts.headers, &mut wire);
    }
    let fields = FieldsRef::of(&parts.headers, wire.as_ref());
    let (variant, routed) = choose(&stage.routing, stage.split, fields, ctx.uri.query(), peer.addr.ip());
    let vr = stage.variant(variant);
    let (tee, pair) = mirror(&ctx, stage, variant, &parts, rest);
    // Taken before the headers move to the upstream request, and only when there is a log to write.
    let logged = gw.log.enabled().then(|| Logged {
        user_agent: fields.text_of(&header::USER_AGENT).map(str::to_string),
        trace_id: ctx.trace_id(fields),
    });
    // One body type whether or not the request is mirrored (one `serve` on the request path).
    let body = TeeBody::new(Limited::new(body, gw.limits.max_body_bytes as usize), tee);
    // Until `serve` returns, this request's work can be dropped (an HTTP/2 client resets its stream):
    // then it is recorded as the client's.
    let mut abandoned = Abandoned {
        ctx: &ctx,
        stage,
        vr,
        routed,
        method: parts.method.clone(),
        logged: logged.as_ref(),
        pair: pair.as_ref(),
        armed: true,
    };
    let outcome = serve(&ctx, stage, vr, &mut parts, wire, body, rest).await;
    abandoned.armed = false;
    drop(abandoned);
    let (response, answered) = answer(&ctx, stage, variant, outcome.result);
    let cache_label = outcome.cache.map(|c| match c {
        CacheResult::Hit => "hit",
        CacheResult::Miss => "miss",
    });
    let marks = Marks {
        variant: Some(variant),
        rid: ctx.rid.clone(),
        cache: cache_label,
    };
    let served = Served {
        stage,
        vr,
        routed,
        status: response.status().as_u16(),
        integration_us: outcome.integration_us,
        cache: outcome.cache,
        cache_label,
        route: outcome.route,
    };
    let finish = finish(ctx, &parts, served, answered, logged, pair);
    let reply = Reply {
        response,
        wire: outcome.wire,
    };
    (reply, marks, finish)
}

/// What an access log line needs from the request's head, taken before the head moves upstream.
struct Logged {
    user_agent: Option<String>,
    trace_id: Option<String>,
}

/// No stage serves the request's host and path: 404 (a gRPC error to a gRPC client), the client's
/// mistake, nothing counted.
fn no_stage(ctx: &Ctx<'_>, parts: &http::request::Parts) -> (Reply<Body>, Marks, Finish) {
    let r = if ctx.grpc {
        ProxyError::NoStage.grpc_response()
    } else {
        ProxyError::NoStage.response()
    };
    let marks = Marks {
        variant: None,
        rid: ctx.rid.clone(),
        cache: None,
    };
    let finish = Finish {
        series: None,
        sec: ctx.sec,
        obs: Observation {
            status: 404,
            latency_us: 0,
            integration_us: None,
            cache: None,
            routed: Routed::Random,
        },
        record: None,
        pair: None,
        span: server_span(ctx, parts, None, None, None),
        error: Some((Source::Client.as_str(), ProxyError::NoStage.to_string())),
        grpc: None,
    };
    (Reply::new(r), marks, finish)
}

/// Starts a copy of a production request to the stage's mirror, if it has one that wants it: the
/// tee the body must stream through, and the pair the original's end is told to.
fn mirror(
    ctx: &Ctx<'_>,
    stage: &Arc<StageRoute>,
    variant: Variant,
    parts: &http::request::Parts,
    rest: &str,
) -> (Option<crate::proxy::mirror::Tee>, Option<Arc<Pair>>) {
    match stage.mirror.as_deref() {
        // A WebSocket handshake is not copied: the copy could not be relayed.
        Some(m) if variant == Variant::Production && m.wants(&parts.method) && parts.extensions.get::<UpgradeRequest>().is_none() => {
            match crate::proxy::mirror::start(ctx, stage, m, parts, rest) {
                Some((tee, pair)) => (tee, Some(pair)),
                None => (None, None),
            }
        }
        _ => (None, None),
    }
}

/// How the request was answered, beyond its response: the failure and whose it was, the status it
/// counts by when that is not the response's, and a gRPC call's status as far as known.
#[derive(Default)]
struct Answered {
    error: Option<(&'static str, String)>,
    /// A gateway failure answered to a gRPC client as a gRPC error counts by its HTTP status.
    counted: Option<u16>,
    grpc: Option<GrpcCall>,
}

/// The response to send: the upstream's (or the mock's, or the cache's), or the failure said the way
/// the client's protocol says it.
fn answer(ctx: &Ctx<'_>, stage: &StageRoute, variant: Variant, result: Result<Response<Body>, ProxyError>) -> (Response<Body>, Answered) {
    let mut answered = Answered::default();
    let response = match result {
        Ok(r) => {
            if ctx.grpc {
                answered.grpc = Some(GrpcCall {
                    from_upstream: true,
                    status: r.headers().get(&GRPC_STATUS).and_then(|v| grpc::parse_status(v.as_bytes())),
                });
            }
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, api = %stage.api, stage = %stage.stage, %variant, "request failed");
            let r = if ctx.grpc {
                answered.counted = Some(e.status().as_u16());
                answered.grpc = Some(GrpcCall {
                    from_upstream: false,
                    status: Some(e.grpc_code()),
                });
                e.grpc_response()
            } else {
                e.response()
            };
            answered.error = Some((e.source().as_str(), e.to_string()));
            r
        }
    };
    (response, answered)
}

/// What serving the request as a stage's variant gave, for [`finish`].
struct Served<'t> {
    stage: &'t StageRoute,
    vr: &'t VariantRoute,
    routed: Routed,
    status: u16,
    integration_us: Option<u64>,
    cache: Option<CacheResult>,
    cache_label: Option<&'static str>,
    route: Option<Arc<str>>,
}

/// What to record once the response has been written: the observation, the access log line, the
/// server span, the mirrored pair.
fn finish(
    ctx: Ctx<'_>,
    parts: &http::request::Parts,
    served: Served<'_>,
    answered: Answered,
    logged: Option<Logged>,
    pair: Option<Arc<Pair>>,
) -> Finish {
    let latency_us = ctx.elapsed_us();
    let (stage, vr) = (served.stage, served.vr);
    let span = server_span(&ctx, parts, Some((stage, vr)), served.route, served.cache_label);
    let record = logged.map(|l| {
        Box::new(Record {
            request_id: ctx.rid,
            time: ctx.wall.into(),
            ip: ctx.peer.addr.ip(),
            method: parts.method.clone(),
            path: ctx.uri.path().to_string(),
            status: served.status,
            latency_ms: latency_us as f64 / 1000.0,
            integration_latency_ms: served.integration_us.map(|u| u as f64 / 1000.0),
            variant: vr.variant,
            deployment_id: vr.deployment_id.clone(),
            cache: served.cache_label,
            user_agent: l.user_agent,
            trace_id: l.trace_id,
            error_source: None,
            error: None,
            grpc_status: None,
            api: stage.api.clone(),
            stage: stage.stage.clone(),
        })
    });
    Finish {
        series: Some(vr.series.clone()),
        sec: ctx.sec,
        obs: Observation {
            status: answered.counted.unwrap_or(served.status),
            latency_us,
            integration_us: served.integration_us,
            cache: served.cache,
            routed: served.routed,
        },
        record,
        pair,
        span,
        error: answered.error,
        grpc: answered.grpc,
    }
}

/// A request whose work was dropped before its answer (an HTTP/2 stream the client reset): recorded
/// as the client's doing with status 499 (nginx's "client closed request"), a 4XXError of its variant.
struct Abandoned<'a> {
    ctx: &'a Ctx<'a>,
    stage: &'a StageRoute,
    vr: &'a VariantRoute,
    routed: Routed,
    method: http::Method,
    logged: Option<&'a Logged>,
    pair: Option<&'a Arc<Pair>>,
    armed: bool,
}

/// The status an abandoned request is recorded with.
pub(crate) const CLIENT_CLOSED: u16 = 499;

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ctx = self.ctx;
        let latency_us = ctx.elapsed_us();
        let obs = Observation {
            status: CLIENT_CLOSED,
            latency_us,
            integration_us: None,
            cache: None,
            routed: self.routed,
        };
        self.vr.series.record(ctx.sec, &obs);
        if let Some(pair) = self.pair {
            pair.original_ended(CLIENT_CLOSED);
        }
        if let Some(l) = self.logged {
            ctx.gw.log.send(Record {
                request_id: ctx.rid.clone(),
                time: ctx.wall.into(),
                ip: ctx.peer.addr.ip(),
                method: self.method.clone(),
                path: ctx.uri.path().to_string(),
                status: CLIENT_CLOSED,
                latency_ms: latency_us as f64 / 1000.0,
                integration_latency_ms: None,
                variant: self.vr.variant,
                deployment_id: self.vr.deployment_id.clone(),
                cache: None,
                user_agent: l.user_agent.clone(),
                trace_id: l.trace_id.clone(),
                error_source: Some(Source::Client.as_str()),
                error: Some("the client reset the stream before the response".into()),
                grpc_status: None,
                api: self.stage.api.clone(),
                stage: self.stage.stage.clone(),
            });
        }
    }
}

/// A sampled request's server span, begun (with tracing on).
fn server_span(
    ctx: &Ctx<'_>,
    parts: &http::request::Parts,
    stage: Option<(&StageRoute, &VariantRoute)>,
    route: Option<Arc<str>>,
    cache: Option<&'static str>,
) -> Option<Box<ServerSpan>> {
    let trace = ctx.trace.filter(|t| t.sampled)?;
    let served = crate::trace::Served {
        method: &parts.method,
        version: parts.version,
        path: ctx.path(),
        host: ctx.host_str(),
        peer: ctx.peer,
        request_id: &ctx.rid,
        stage,
        route,
        cache,
    };
    Some(Box::new(ServerSpan::new(ctx.gw.tracer.clone()?, trace, ctx.wall, served)))
}

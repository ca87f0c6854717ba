//! One client request's life: resolve the stage, choose the variant (and start a mirrored copy),
//! serve it through [`crate::proxy`], mark the response, and — once the connection driver has written
//! the response to its end — record the variant's metrics, the access log line and the server span
//! ([`Finish`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use canarygate_metrics::{CacheResult, Observation, Routed, Series, Variant};
use canarygate_model::grpc;
use canarygate_telemetry::TraceCtx;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Limited;

use crate::access_log::{AccessLog, Record};
use crate::body::{Body, BoxError};
use crate::choose::choose;
use crate::error::{ProxyError, Source};
use crate::exchange::{Ending, GrpcRequest, Peer, UpgradeRequest};
use crate::mirror::{Pair, TeeBody};
use crate::proxy::{serve, REQUEST_ID};
use crate::table::{StageRoute, VariantRoute};
use crate::trace::{Served, ServerSpan};
use crate::Gateway;

static VARIANT_HEADER: HeaderName = HeaderName::from_static("x-canarygate-variant");
static CACHE_HEADER: HeaderName = HeaderName::from_static("x-canarygate-cache");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut hex = [0u8; 32];
    let mut n = fastrand::u128(..);
    for b in hex.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
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

/// Serves one request: the response, and what to record once it has been written.
///
/// Generic over the request body: the connection drivers (HTTP/1.1 and HTTP/2, over TCP or TLS)
/// each hand over their own.
pub(crate) async fn handle<B>(gw: &Arc<Gateway>, req: Request<B>, peer: &Peer) -> (Response<Body>, Finish)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let wall = SystemTime::now();
    let table = gw.table.load_full();
    let (mut parts, body) = req.into_parts();
    let grpc =
        parts.version == http::Version::HTTP_2 && parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| grpc::is_grpc(v.as_bytes()));
    if grpc {
        parts.extensions.insert(GrpcRequest);
    }
    let rid = request_id(&parts.headers);
    let trace = gw.tracer.as_deref().map(|t| crate::trace::begin(t, &mut parts.headers));

    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| {
        let h = h
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(h, _)| h);
        h.to_ascii_lowercase()
    });
    let domain = if table.domains.is_empty() { None } else { host.as_deref() };
    let path = parts.uri.path().to_owned();
    let sec = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Some((stage, rest)) = table.resolve(domain, &path) else {
        let mut r = if grpc {
            ProxyError::NoStage.grpc_response()
        } else {
            ProxyError::NoStage.response()
        };
        let span = server_span(gw, trace, wall, &parts, &path, host.as_deref(), peer, &rid, None, None, None);
        r.headers_mut().insert(REQUEST_ID.clone(), rid);
        let obs = Observation {
            status: 404,
            latency_us: 0,
            integration_us: None,
            cache: None,
            routed: Routed::Random,
        };
        return (
            r,
            Finish {
                series: None,
                sec,
                obs,
                record: None,
                pair: None,
                span,
                error: Some((Source::Client.as_str(), ProxyError::NoStage.to_string())),
                grpc: None,
            },
        );
    };
    let (variant, routed) = choose(&stage.routing, stage.split, &parts.headers, parts.uri.query(), peer.addr.ip());
    let vr = stage.variant(variant);
    let (tee, pair) = match stage.mirror.as_deref() {
        // A WebSocket handshake is not copied: the copy could not be relayed.
        Some(m) if variant == Variant::Production && m.wants(&parts.method) && parts.extensions.get::<UpgradeRequest>().is_none() => {
            match crate::mirror::start(gw, stage, m, &parts, rest, host.as_deref(), peer, &rid, sec) {
                Some((tee, pair)) => (tee, Some(pair)),
                None => (None, None),
            }
        }
        _ => (None, None),
    };
    // Taken before the headers move to the upstream request, and only when there is a log to write.
    let (user_agent, trace_id) = if gw.log.enabled() {
        let ua = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let trace_id = match &trace {
            Some(t) => Some(t.trace_id_hex()),
            None => crate::trace::incoming_trace_id(&parts.headers),
        };
        (ua, trace_id)
    } else {
        (None, None)
    };

    // One body type whether or not the request is mirrored (one `serve` on the request path).
    let body = TeeBody::new(Limited::new(body, gw.limits.max_body_bytes as usize), tee);
    // Until `serve` returns, this request's work can be dropped (an HTTP/2 client resets its stream):
    // then it is recorded as the client's.
    let mut abandoned = Abandoned {
        gw,
        stage,
        vr,
        sec,
        start,
        wall,
        routed,
        method: parts.method.clone(),
        path: &path,
        rid: &rid,
        peer,
        user_agent: user_agent.as_deref(),
        trace_id: trace_id.as_deref(),
        pair: pair.as_ref(),
        armed: true,
    };
    let outcome = serve(gw, stage, vr, &mut parts, body, rest, host.as_deref(), peer, &rid, trace.as_ref()).await;
    abandoned.armed = false;
    drop(abandoned);
    let mut error = None;
    // A gateway failure answered to a gRPC client as a gRPC error counts by its HTTP status.
    let mut counted = None;
    let mut grpc_call = None;
    let mut response = match outcome.result {
        Ok(r) => {
            if grpc {
                grpc_call = Some(GrpcCall {
                    from_upstream: true,
                    status: r.headers().get(&GRPC_STATUS).and_then(|v| grpc::parse_status(v.as_bytes())),
                });
            }
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, api = %stage.api, stage = %stage.stage, %variant, "request failed");
            let r = if grpc {
                counted = Some(e.status().as_u16());
                grpc_call = Some(GrpcCall {
                    from_upstream: false,
                    status: Some(e.grpc_code()),
                });
                e.grpc_response()
            } else {
                e.response()
            };
            error = Some((e.source().as_str(), e.to_string()));
            r
        }
    };
    let h = response.headers_mut();
    h.insert(VARIANT_HEADER.clone(), HeaderValue::from_static(variant.as_str()));
    h.insert(REQUEST_ID.clone(), rid.clone());
    let cache_label = outcome.cache.map(|c| match c {
        CacheResult::Hit => "hit",
        CacheResult::Miss => "miss",
    });
    if let Some(label) = cache_label {
        h.insert(CACHE_HEADER.clone(), HeaderValue::from_static(label));
    }

    let latency_us = start.elapsed().as_micros() as u64;
    let status = response.status().as_u16();
    let integration_us = outcome.integration_us;
    let span = server_span(
        gw,
        trace,
        wall,
        &parts,
        &path,
        host.as_deref(),
        peer,
        &rid,
        Some((stage, vr)),
        outcome.route,
        cache_label,
    );
    let record = gw.log.enabled().then(|| {
        Box::new(Record {
            request_id: rid,
            time: wall.into(),
            ip: peer.addr.ip(),
            method: parts.method.clone(),
            path,
            status,
            latency_ms: latency_us as f64 / 1000.0,
            integration_latency_ms: integration_us.map(|u| u as f64 / 1000.0),
            variant,
            deployment_id: vr.deployment_id.clone(),
            cache: cache_label,
            user_agent,
            trace_id,
            error_source: None,
            error: None,
            grpc_status: None,
            api: stage.api.clone(),
            stage: stage.stage.clone(),
        })
    });
    let finish = Finish {
        series: Some(vr.series.clone()),
        sec,
        obs: Observation {
            status: counted.unwrap_or(status),
            latency_us,
            integration_us,
            cache: outcome.cache,
            routed,
        },
        record,
        pair,
        span,
        error,
        grpc: grpc_call,
    };
    (response, finish)
}

/// A request whose work was dropped before its answer (an HTTP/2 stream the client reset): recorded
/// as the client's doing with status 499 (nginx's "client closed request"), a 4XXError of its variant.
struct Abandoned<'a> {
    gw: &'a Gateway,
    stage: &'a StageRoute,
    vr: &'a VariantRoute,
    sec: u64,
    start: Instant,
    wall: SystemTime,
    routed: Routed,
    method: http::Method,
    path: &'a str,
    rid: &'a HeaderValue,
    peer: &'a Peer,
    user_agent: Option<&'a str>,
    trace_id: Option<&'a str>,
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
        let latency_us = self.start.elapsed().as_micros() as u64;
        let obs = Observation {
            status: CLIENT_CLOSED,
            latency_us,
            integration_us: None,
            cache: None,
            routed: self.routed,
        };
        self.vr.series.record(self.sec, &obs);
        if let Some(pair) = self.pair {
            pair.original_ended(CLIENT_CLOSED);
        }
        if self.gw.log.enabled() {
            self.gw.log.send(Record {
                request_id: self.rid.clone(),
                time: self.wall.into(),
                ip: self.peer.addr.ip(),
                method: self.method.clone(),
                path: self.path.to_string(),
                status: CLIENT_CLOSED,
                latency_ms: latency_us as f64 / 1000.0,
                integration_latency_ms: None,
                variant: self.vr.variant,
                deployment_id: self.vr.deployment_id.clone(),
                cache: None,
                user_agent: self.user_agent.map(str::to_string),
                trace_id: self.trace_id.map(str::to_string),
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
#[allow(clippy::too_many_arguments)]
fn server_span(
    gw: &Gateway,
    trace: Option<TraceCtx>,
    start: SystemTime,
    parts: &http::request::Parts,
    path: &str,
    host: Option<&str>,
    peer: &Peer,
    rid: &HeaderValue,
    stage: Option<(&StageRoute, &VariantRoute)>,
    route: Option<Arc<str>>,
    cache: Option<&'static str>,
) -> Option<Box<ServerSpan>> {
    let ctx = trace.filter(|t| t.sampled)?;
    let served = Served {
        method: &parts.method,
        version: parts.version,
        path,
        host,
        peer,
        request_id: rid,
        stage,
        route,
        cache,
    };
    Some(Box::new(ServerSpan::new(gw.tracer.clone()?, ctx, start, served)))
}

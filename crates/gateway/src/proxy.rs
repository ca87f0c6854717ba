//! One request's life: resolve the stage, choose the variant, match the route, render the integration,
//! call the upstream (or answer the mock), and record metrics and the access log line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use canarygate_metrics::Observation;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::access_log::Record;
use crate::choose::choose;
use crate::error::ProxyError;
use crate::table::{CompiledIntegration, VariantRoute};
use crate::Gateway;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type UpstreamClient = Client<HttpConnector, Body>;

static VARIANT_HEADER: HeaderName = HeaderName::from_static("x-canarygate-variant");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The pooled keep-alive upstream client.
pub fn client() -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_keepalive(Some(Duration::from_secs(60)));
    conn.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(conn)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{:032x}", fastrand::u128(..));
    HeaderValue::try_from(s).expect("hex is a valid header value")
}

fn error_response(e: &ProxyError) -> Response<Body> {
    let msg = serde_json::to_string(&e.to_string()).unwrap_or_else(|_| "\"error\"".into());
    let body = format!("{{\"error\":{{\"code\":\"{}\",\"message\":{msg}}}}}", e.code());
    let mut r = Response::new(full(body));
    *r.status_mut() = e.status();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// What the integration produced, before the common response headers are added.
struct Served {
    response: Response<Body>,
    integration_us: Option<u64>,
}

pub async fn handle(gw: &Gateway, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let start = Instant::now();
    let wall = SystemTime::now();
    let table = gw.table.load_full();
    let (mut parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);

    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| {
        let h = h
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(h, _)| h);
        h.to_ascii_lowercase()
    });
    let domain = if table.domains.is_empty() { None } else { host.as_deref() };
    let path = parts.uri.path().to_owned();
    let Some((stage, rest)) = table.resolve(domain, &path) else {
        let mut r = error_response(&ProxyError::NoStage);
        r.headers_mut().insert(REQUEST_ID.clone(), rid);
        return r;
    };
    let variant = choose(stage, &parts.headers);
    let vr = stage.variant(variant);
    // Taken before the headers move to the upstream request, and only when there is a log to write.
    let user_agent = if gw.log.enabled() {
        parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };

    let result = serve(gw, vr, &mut parts, body, rest, host.as_deref(), peer, &rid).await;
    let (mut response, integration_us) = match result {
        Ok(s) => (s.response, s.integration_us),
        Err((e, integration_us)) => {
            tracing::debug!(error = %e, api = %stage.api, stage = %stage.stage, %variant, "request failed");
            (error_response(&e), integration_us)
        }
    };
    let h = response.headers_mut();
    h.insert(VARIANT_HEADER.clone(), HeaderValue::from_static(variant.as_str()));
    h.insert(REQUEST_ID.clone(), rid.clone());

    let latency_us = start.elapsed().as_micros() as u64;
    let status = response.status().as_u16();
    let sec = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    vr.series.record(
        sec,
        &Observation {
            status,
            latency_us,
            integration_us,
            cache: None,
        },
    );
    if gw.log.enabled() {
        gw.log.send(Record {
            request_id: rid.to_str().unwrap_or_default().to_string(),
            time: wall.into(),
            ip: peer.ip(),
            method: parts.method.as_str().to_string(),
            path,
            status,
            latency_ms: latency_us as f64 / 1000.0,
            integration_latency_ms: integration_us.map(|u| u as f64 / 1000.0),
            variant,
            deployment_id: vr.deployment_id.clone(),
            cache: None,
            user_agent,
            api: stage.api.clone(),
            stage: stage.stage.clone(),
        });
    }
    response
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    gw: &Gateway,
    vr: &VariantRoute,
    parts: &mut http::request::Parts,
    body: Incoming,
    rest: &str,
    host: Option<&str>,
    peer: SocketAddr,
    rid: &HeaderValue,
) -> Result<Served, (ProxyError, Option<u64>)> {
    let route_path = if rest.is_empty() { "/" } else { rest };
    let matched = vr.deployment.router.at(route_path).map_err(|_| (ProxyError::NoRoute, None))?;
    let integration: Arc<CompiledIntegration> = matched
        .value
        .find(&parts.method)
        .cloned()
        .ok_or((ProxyError::MethodNotAllowed, None))?;
    let var = |n: &str| vr.variables.get(n).map(String::as_str);
    let params = matched.params;
    let param = |n: &str| params.get(n);
    match &*integration {
        CompiledIntegration::Mock {
            status,
            headers,
            body: template,
        } => {
            let t0 = Instant::now();
            let mut text = String::new();
            template.render_into(&mut text, var, |_| None);
            let mut r = Response::new(full(text));
            *r.status_mut() = *status;
            for (k, v) in headers {
                r.headers_mut().insert(k.clone(), v.clone());
            }
            Ok(Served {
                response: r,
                integration_us: Some(t0.elapsed().as_micros() as u64),
            })
        }
        CompiledIntegration::Http { uri, timeout } => {
            let mut target = String::with_capacity(128);
            uri.render_into(&mut target, var, param);
            if let Some(q) = parts.uri.query() {
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str(q);
            }
            let upstream_uri: http::Uri = target.parse().map_err(|_| (ProxyError::BadIntegrationUri(target.clone()), None))?;
            if upstream_uri.host().is_none() {
                return Err((ProxyError::BadIntegrationUri(target), None));
            }
            let max = gw.limits.max_body_bytes;
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Err((ProxyError::BodyTooLarge(max), None));
            }
            let mut headers = std::mem::take(&mut parts.headers);
            strip_hop_by_hop(&mut headers);
            headers.remove(header::HOST);
            let ip = peer.ip().to_string();
            let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            if let Ok(v) = HeaderValue::try_from(xff) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
            if let Some(h) = host.and_then(|h| HeaderValue::try_from(h).ok()) {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
            headers.insert(REQUEST_ID.clone(), rid.clone());
            let mut up = Request::new(Limited::new(body, max as usize).boxed_unsync());
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = upstream_uri;
            *up.headers_mut() = headers;

            let t0 = Instant::now();
            let res = tokio::time::timeout(*timeout, gw.client.request(up)).await;
            let integration_us = Some(t0.elapsed().as_micros() as u64);
            match res {
                Err(_) => Err((ProxyError::Timeout(timeout.as_millis()), integration_us)),
                Ok(Err(e)) => {
                    if is_length_limit(&e) {
                        Err((ProxyError::BodyTooLarge(max), integration_us))
                    } else {
                        Err((ProxyError::Upstream(error_chain(&e)), integration_us))
                    }
                }
                Ok(Ok(resp)) => {
                    let (mut rp, rb) = resp.into_parts();
                    strip_hop_by_hop(&mut rp.headers);
                    let response = Response::from_parts(rp, rb.map_err(BoxError::from).boxed_unsync());
                    Ok(Served { response, integration_us })
                }
            }
        }
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
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

//! OpenTelemetry tracing (PRODUCT.md §13) end to end: requests with and without `traceparent` through
//! both variants to a real backend that echoes the headers it got, with an OTLP/HTTP receiver started by
//! the test that decodes the real protobuf export requests; sampling by ratio and by the parent's flag;
//! `tracestate` passed through; `traceId` in the access log; a receiver that is down costs no request
//! and its drops are counted in `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{json, Value};

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    /// 2 server, 3 client (OTLP's `SpanKind`).
    kind: i32,
    attrs: HashMap<String, String>,
    service: String,
    /// OTLP's status code: 2 is error.
    status: i32,
}

/// A real OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    task: tokio::task::JoinHandle<()>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

impl Receiver {
    async fn start() -> Receiver {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let spans2 = spans.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the receiver closes them too (and the listener).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let spans = spans2.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let spans = spans.clone();
                        async move {
                            use http_body_util::BodyExt;
                            assert_eq!(req.uri().path(), "/v1/traces");
                            assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).expect("a valid OTLP protobuf export request");
                            let mut got = Vec::new();
                            for rs in export.resource_spans {
                                let res = rs.resource.map(|r| attrs(&r.attributes)).unwrap_or_default();
                                let service = res.get("service.name").cloned().unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for s in ss.spans {
                                        got.push(Got {
                                            trace_id: hex(&s.trace_id),
                                            span_id: hex(&s.span_id),
                                            parent_id: hex(&s.parent_span_id),
                                            name: s.name,
                                            kind: s.kind,
                                            attrs: attrs(&s.attributes),
                                            service: service.clone(),
                                            status: s.status.map_or(0, |st| st.code),
                                        });
                                    }
                                }
                            }
                            spans.lock().unwrap().extend(got);
                            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )));
                            r.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { addr, spans, task }
    }

    /// The spans of `trace_id` once there are `n` of them (waits for the export, up to 30 s).
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Got> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if got.len() >= n {
                assert_eq!(got.len(), n, "more spans than expected for trace {trace_id}: {got:#?}");
                return got;
            }
            assert!(Instant::now() < deadline, "trace {trace_id}: {} of {n} spans arrived", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn has_trace(&self, trace_id: &str) -> bool {
        self.spans.lock().unwrap().iter().any(|s| s.trace_id == trace_id)
    }
}

fn config(dir: &std::path::Path, telemetry: Value) -> std::path::PathBuf {
    let p = dir.join("canarygate.yaml");
    let text = format!("server:\n  telemetry: {telemetry}\n");
    std::fs::write(&p, text).unwrap();
    p
}

/// A GET through the gateway with extra headers: (variant, the headers the backend got).
async fn get(c: &reqwest::Client, s: &Server, path: &str, headers: &[(&str, &str)]) -> (String, HashMap<String, String>) {
    let mut req = c.get(format!("{}{path}", s.gateway));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let variant = r.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let seen = body["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    (variant, seen)
}

/// `00-<trace>-<parent>-<flags>` split in its parts.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_through_both_variants_and_exported_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let cfg = config(
        dir.path(),
        json!({"otlpEndpoint": format!("http://{}", receiver.addr), "sampleRatio": 1.0}),
    );
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    let deployment = setup_split(&c, &s, prod.addr, canary.addr, 10.0, json!({})).await;

    // 1. A sampled parent, through the canary, with a tracestate: continued and passed on.
    let parent = format!("00-{TRACE}-{CALLER}-01");
    let state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let (variant, seen) = get(
        &c,
        &s,
        "/orders/prod/items/1?x=2",
        &[("traceparent", &parent), ("tracestate", state), ("x-canarygate-variant", "canary")],
    )
    .await;
    assert_eq!(variant, "canary");
    let (trace, upstream_parent, flags) = parts(&seen["traceparent"]);
    assert_eq!(trace, TRACE, "the backend sees the same trace");
    assert_ne!(upstream_parent, CALLER, "and a new parent span");
    assert_eq!(flags, "01");
    assert_eq!(seen["tracestate"], state, "tracestate passes through");

    let spans = receiver.trace(TRACE, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let client_span = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(server.parent_id, CALLER, "the server span's parent is the caller's span");
    assert_eq!(client_span.parent_id, server.span_id, "the client span is the server span's child");
    assert_eq!(client_span.span_id, upstream_parent, "the upstream's parent is the client span");
    assert_eq!(server.service, "canarygate");
    assert_eq!(server.name, "GET /{proxy+}");
    let a = &server.attrs;
    for (k, v) in [
        ("http.request.method", "GET"),
        ("http.route", "/{proxy+}"),
        ("url.path", "/orders/prod/items/1"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("canarygate.api", "orders"),
        ("canarygate.stage", "prod"),
        ("canarygate.variant", "canary"),
        ("canarygate.deployment_id", deployment.as_str()),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "server span attribute {k}: {a:?}");
    }
    let a = &client_span.attrs;
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.full"], format!("http://{}/items/1?x=2", canary.addr));
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], canary.addr.port().to_string());
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["canarygate.variant"], "canary");

    // 2. A parent that is not sampled: no span, but the context goes on (not sampled) — sent before a
    // sampled request, whose spans then arrive after anything it would have made.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let (_, seen) = get(
        &c,
        &s,
        "/orders/prod/items/2",
        &[
            ("traceparent", &format!("00-{unsampled}-b7ad6b7169203331-00")),
            ("x-canarygate-variant", "canary"),
        ],
    )
    .await;
    let (trace, upstream_parent, flags) = parts(&seen["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled, "00"));
    assert_ne!(upstream_parent, "b7ad6b7169203331");

    // 3. No traceparent, production: a new trace, sampled at ratio 1, and an invalid tracestate dropped.
    let (variant, seen) = get(
        &c,
        &s,
        "/orders/prod/items/3",
        &[("x-canarygate-variant", "production"), ("tracestate", "NOT VALID")],
    )
    .await;
    assert_eq!(variant, "production");
    assert!(
        !seen.contains_key("tracestate"),
        "a tracestate without a traceparent is not forwarded"
    );
    let (new_trace, upstream_parent, flags) = parts(&seen["traceparent"]);
    assert_eq!(flags, "01");
    let spans = receiver.trace(&new_trace, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert!(server.parent_id.is_empty(), "a new trace's server span is a root");
    assert_eq!(server.attrs["canarygate.variant"], "production");
    let client_span = spans.iter().find(|s| s.kind == 3).unwrap();
    assert_eq!(client_span.span_id, upstream_parent);
    assert_eq!(client_span.attrs["url.full"], format!("http://{}/items/3", prod.addr));
    assert!(!receiver.has_trace(unsampled), "a parent that is not sampled yields no span");

    // 4. A failing canary: the server span is an error with the variant's 500.
    let (_, seen500) = {
        let r = c
            .get(format!("{}/orders/prod/items/4?fail=1", s.gateway))
            .header("x-canarygate-variant", "canary")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let body: Value = r.json().await.unwrap();
        ((), body["headers"]["traceparent"].as_str().unwrap().to_string())
    };
    let (t500, _, _) = parts(&seen500);
    let spans = receiver.trace(&t500, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.attrs["http.response.status_code"], "500");
    assert_eq!(server.attrs["error.type"], "500");
    assert_eq!(server.status, 2, "an error span");

    // The access log names each request's trace.
    let log = dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if lines.len() >= 4 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access log lines: {}", lines.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let traces: Vec<&str> = lines.iter().map(|l| l["traceId"].as_str().unwrap_or("-")).collect();
    assert_eq!(traces, [TRACE, unsampled, new_trace.as_str(), t500.as_str()]);

    // 5. The receiver goes away: requests are unaffected, and the spans they made are counted as dropped.
    let Receiver { task, .. } = receiver;
    task.abort();
    let _ = task.await;
    for i in 0..20 {
        let (_, seen) = get(&c, &s, &format!("/orders/prod/items/{i}"), &[]).await;
        assert!(seen.contains_key("traceparent"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
        let dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("canarygate_trace_spans_dropped_total{reason=\"export_failed\"} "))
            .map(|v| v.trim().parse::<u64>().unwrap());
        let exported = text
            .lines()
            .find_map(|l| l.strip_prefix("canarygate_trace_spans_exported_total "))
            .map(|v| v.trim().parse::<u64>().unwrap());
        assert!(exported.unwrap() >= 6, "{text}");
        if dropped.unwrap() == 40 {
            break;
        }
        assert!(dropped.unwrap() < 40, "more dropped than made: {text}");
        assert!(Instant::now() < deadline, "drops not counted: {dropped:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_ratio_decides_new_traces_and_a_sampled_parent_still_wins() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let cfg = config(
        dir.path(),
        json!({"otlpEndpoint": format!("http://{}/v1/traces", receiver.addr), "sampleRatio": 0.0}),
    );
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let f_prod = Backend::start("production", Behaviour::Echo).await;
    let c = client();
    setup_split(&c, &s, f_prod.addr, f_prod.addr, 0.0, json!({})).await;
    let mut unsampled = Vec::new();
    for _ in 0..20 {
        let (_, seen) = get(&c, &s, "/orders/prod/a", &[]).await;
        let (trace, _, flags) = parts(&seen["traceparent"]);
        assert_eq!(flags, "00", "ratio 0 samples no new trace, and says so upstream");
        unsampled.push(trace);
    }
    let (_, seen) = get(&c, &s, "/orders/prod/b", &[("traceparent", &format!("00-{TRACE}-{CALLER}-01"))]).await;
    assert_eq!(parts(&seen["traceparent"]).2, "01");
    receiver.trace(TRACE, 2).await;
    assert!(unsampled.iter().all(|t| !receiver.has_trace(t)), "no span of an unsampled trace");
}

#[tokio::test]
async fn bad_telemetry_settings_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (telemetry, want) in [
        (
            json!({"otlpEndpoint": "http://127.0.0.1:4318", "sampleRatio": 1.5}),
            "server.telemetry.sampleRatio",
        ),
        (json!({"otlpEndpoint": "collector:4318"}), "server.telemetry.otlpEndpoint"),
        (json!({"otlpEndpoint": "http://127.0.0.1:4318", "sampleRatoi": 1}), "sampleRatoi"),
    ] {
        let cfg = config(dir.path(), telemetry);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{want}: {err}");
    }
}

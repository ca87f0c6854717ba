//! Mirroring (PRODUCT.md §13): copies of production requests to a slow, failing canary never hold up a
//! client; copies are counted (sent, dropped, skipped) in metrics, `/v1/metrics`, Prometheus output
//! and `Mirror.log`; a rollout's mirroring phase watched by an alarm on the `mirror` variant rolls back
//! before the canary answers any client.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// One request the canary backend got.
#[derive(Debug, Clone)]
struct Seen {
    request_id: String,
    mirrored: bool,
    method: String,
    body_bytes: usize,
    /// The value of the shared sequence when it answered.
    answered_at: u64,
}

/// A canary backend that answers after `delay`, fails every second call with 500, and records every
/// request it got, stamped with a sequence number shared with the test's clients.
struct Canary {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    async fn start(delay: Duration, seq: Arc<AtomicU64>) -> Canary {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (seen2, calls2, failed2) = (seen.clone(), calls.clone(), failed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (seen, calls, failed, seq) = (seen2.clone(), calls2.clone(), failed2.clone(), seq.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, calls, failed, seq) = (seen.clone(), calls.clone(), failed.clone(), seq.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                            let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
                            let (request_id, mirrored) =
                                (header("x-request-id").unwrap_or_default(), header("x-canarygate-mirror").is_some());
                            let method = req.method().to_string();
                            let body_bytes = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                            tokio::time::sleep(delay).await;
                            let fail = call % 2 == 0;
                            if fail {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                            seen.lock().unwrap().push(Seen {
                                request_id,
                                mirrored,
                                method,
                                body_bytes,
                                answered_at: seq.fetch_add(1, Ordering::SeqCst),
                            });
                            let mut r =
                                hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"backend\":\"canary\"}")));
                            if fail {
                                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Canary {
            addr,
            seen,
            calls,
            failed,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// API `orders` (a greedy proxy route with a 10-s timeout), deployments d1 and d2, stage `prod` on d1
/// with `production` as its backend and `extra` merged into the stage body. Returns d2.
async fn setup(c: &reqwest::Client, s: &Server, production: &Backend, extra: Value) -> String {
    let route = json!({"routes": [{"method": "ANY", "path": "/{proxy+}",
        "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}", "timeoutMs": 10000}}]});
    ok(c, s, "PUT", "/v1/apis/orders", Some(route)).await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let mut stage = json!({"deploymentId": d1["id"], "variables": {"backend": production.addr.to_string()}});
    stage.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    ok(c, s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
    d2["id"].as_str().unwrap().to_string()
}

/// Polls until `f` holds; the guard only turns a hang into a failure.
async fn until(what: &str, guard: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + guard;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A value of the Prometheus output, by its whole series name with labels.
fn prom(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in the output"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_to_a_slow_failing_canary_never_hold_up_clients_and_are_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let production = Backend::start("production", Behaviour::Echo).await;
    let seq = Arc::new(AtomicU64::new(0));
    let canary = Canary::start(Duration::from_secs(2), seq.clone()).await;

    // Bad mirror settings: 400 naming the field, nothing changed.
    let d2 = setup(&c, &s, &production, json!({})).await;
    for (body, field) in [
        (json!({"mirror": {"percentTraffic": 120}}), "mirror.percentTraffic"),
        (json!({"mirror": {"percentTraffic": 10, "maxInFlight": 0}}), "mirror.maxInFlight"),
        (json!({"mirror": {"percentTraffic": 10, "methods": ["G T"]}}), "mirror.methods[0]"),
    ] {
        let mut stage = json!({"variables": {"backend": production.addr.to_string()}});
        stage.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let (status, e) = admin(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
        assert_eq!(status, 400, "{e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    let (status, e) = admin(
        &c,
        &s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "replace", "path": "/mirror/percentTraffic", "value": "-1"}]})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("/mirror/percentTraffic"), "{e}");
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert!(st.get("mirror").is_none(), "{st}");

    // The canary (the new deployment with the canary backend) at 0%, every production request of the
    // default methods mirrored, at most 8 copies on their way.
    let patch = json!({"patchOperations": [
        {"op": "replace", "path": "/canarySettings", "value": {"deploymentId": d2, "percentTraffic": 0,
            "stageVariableOverrides": {"backend": canary.addr.to_string()}}},
        {"op": "replace", "path": "/mirror", "value": {"percentTraffic": 100, "maxInFlight": 8}},
    ]});
    let st = ok(&c, &s, "PATCH", "/v1/apis/orders/stages/prod", Some(patch)).await;
    assert_eq!(st["mirror"]["percentTraffic"], 100.0);
    assert_eq!(st["mirror"]["methods"], json!(["GET", "HEAD", "OPTIONS"]));

    // Clients: 6 GETs and a POST (not mirrored by default), then a burst of 20 GETs at once (over the 8
    // the canary may have on their way); later PUTs, once PUT is mirrored too.
    let url = format!("{}/orders/prod/items", s.gateway);
    let got: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let send = |method: &'static str, id: String, body: usize| {
        let (c, url, got, seq) = (c.clone(), url.clone(), got.clone(), seq.clone());
        async move {
            let r = c
                .request(method.parse().unwrap(), &url)
                .header("x-request-id", &id)
                .body("b".repeat(body))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let variant = r.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
            let v: Value = r.json().await.expect("body");
            got.lock().unwrap().push((id.clone(), seq.fetch_add(1, Ordering::SeqCst)));
            assert_eq!(
                (status, variant.as_str(), v["backend"].as_str()),
                (200, "production", Some("production")),
                "{id}"
            );
        }
    };
    for i in 0..6 {
        send("GET", format!("get-{i}"), 0).await;
    }
    send("POST", "post".into(), 10).await;
    let burst: Vec<_> = (0..20).map(|i| tokio::spawn(send("GET", format!("burst-{i}"), 0))).collect();
    for t in burst {
        t.await.unwrap();
    }
    let labels = "api=\"orders\",stage=\"prod\"";
    let not_sent = |reason: &'static str| {
        let c = c.clone();
        let url = format!("{}/metrics", s.admin);
        async move {
            let text = c.get(url).send().await.unwrap().text().await.unwrap();
            prom(
                &text,
                &format!("canarygate_mirror_copies_not_sent_total{{{labels},reason=\"{reason}\"}}"),
            )
        }
    };
    let dropped = not_sent("dropped").await;
    assert!(dropped >= 1.0, "the burst had more copies than the canary may have on their way");
    until("the canary to answer the GETs' copies", Duration::from_secs(30), || {
        canary.seen().len() == 26 - dropped as usize
    })
    .await;
    // PUT mirrored too, with bodies up to 1 KiB.
    let patch = json!({"patchOperations": [
        {"op": "replace", "path": "/mirror/methods", "value": "GET,PUT"},
        {"op": "replace", "path": "/mirror/maxBodyBytes", "value": "1024"},
    ]});
    ok(&c, &s, "PATCH", "/v1/apis/orders/stages/prod", Some(patch)).await;
    send("PUT", "put-small".into(), 100).await;
    send("PUT", "put-large".into(), 4096).await;
    assert_eq!(production.calls(), 29);
    assert_eq!(not_sent("skipped").await, 1.0, "the PUT over the body limit");
    assert_eq!(not_sent("dropped").await, dropped);
    let sent = 27 - dropped as usize;
    until("the canary to answer every copy", Duration::from_secs(30), || {
        canary.seen().len() == sent
    })
    .await;

    // Clients were not held up: every client response came before the canary answered its copy.
    let seen = canary.seen();
    let got = got.lock().unwrap().clone();
    for copy in &seen {
        assert!(copy.mirrored, "the canary got only marked copies: {copy:?}");
        let (_, client_at) = got
            .iter()
            .find(|(id, _)| *id == copy.request_id)
            .expect("a copy of a client's request");
        assert!(
            *client_at < copy.answered_at,
            "{} answered to the client after its copy",
            copy.request_id
        );
    }
    assert!(seen.iter().all(|c| c.method == "GET" || c.request_id == "put-small"), "{seen:?}");
    let put = seen.iter().find(|c| c.request_id == "put-small").expect("the small PUT is copied");
    assert_eq!((put.method.as_str(), put.body_bytes), ("PUT", 100), "with its body");
    assert!(!seen.iter().any(|c| c.request_id == "post" || c.request_id == "put-large"));

    // Metrics: copies under variant `mirror`, with their 5XXErrors; production's unaffected.
    let failed = canary.failed.load(Ordering::SeqCst) as f64;
    assert!(failed >= 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
        let m = |class: &str| {
            prom(
                &text,
                &format!("canarygate_requests_total{{{labels},variant=\"mirror\",status_class=\"{class}\"}}"),
            )
        };
        if m("2xx") + m("5xx") == sent as f64 {
            assert_eq!(m("5xx"), failed);
            assert_eq!(
                prom(
                    &text,
                    &format!("canarygate_mirror_discordant_pairs_total{{{labels},failed=\"copy\"}}")
                ),
                failed,
                "production never failed: every failed copy is a discordant pair"
            );
            break;
        }
        assert!(Instant::now() < deadline, "mirror metrics never added up: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v1_sum(&c, &s, "mirror", "Count").await, sent as f64);
    assert_eq!(v1_sum(&c, &s, "mirror", "5XXError").await, failed);
    assert_eq!(v1_sum(&c, &s, "production", "Count").await, 29.0);
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 0.0);

    // Mirror.log: one line per copy; the stage's own log has only the clients' requests.
    let logs = s.data_dir.join("logs/orders");
    let read = |p: &str| std::fs::read_to_string(logs.join(p)).unwrap_or_default();
    until("the access logs", Duration::from_secs(10), || {
        read("prod/Mirror.log").lines().count() == sent && read("prod.log").lines().count() == 29
    })
    .await;
    let lines: Vec<Value> = read("prod/Mirror.log").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|l| l["variant"] == "mirror" && l["deploymentId"] == d2.as_str()));
    assert_eq!(lines.iter().filter(|l| l["status"] == 500).count() as f64, failed);
    assert!(read("prod.log").lines().all(|l| l.contains("\"variant\":\"production\"")));
    assert_eq!(canary.calls.load(Ordering::SeqCst), sent);

    // Removing the mirror stops the copies.
    ok(
        &c,
        &s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "remove", "path": "/mirror"}]})),
    )
    .await;
    send("GET", "after".into(), 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(canary.calls.load(Ordering::SeqCst), sent, "no copy after /mirror was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirroring_phase_watched_by_an_alarm_rolls_back_before_the_canary_serves_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let production = Backend::start("production", Behaviour::Echo).await;
    let canary = Canary::start(Duration::ZERO, Arc::new(AtomicU64::new(0))).await;
    let d2 = setup(&c, &s, &production, json!({})).await;
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "mirror", "metric": "5XXError", "statistic": "Average",
        "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.1});
    ok(&c, &s, "PUT", "/v1/alarms/mirror-5xx", Some(alarm)).await;

    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let start = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": canary.addr.to_string()},
        "deploymentConfig": "Canary10Percent5Minutes", "alarms": ["mirror-5xx"], "mirrorSeconds": 120});
    let r = ok(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(start)).await;
    let id = r["id"].as_str().unwrap().to_string();
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(60)).await;
    let (sent, failures) = load.finish().await;

    assert_eq!(r["status"], "RolledBack", "{r}");
    let events = r["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["weight"] == 0.0),
        "the canary never got a share: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("mirroring 100% of production requests")),
        "{events:?}"
    );
    assert!(
        events.last().unwrap()["reason"].as_str().unwrap().contains("mirror-5xx"),
        "{events:?}"
    );
    let seen = canary.seen();
    assert!(!seen.is_empty(), "the canary was judged on copies");
    assert!(seen.iter().all(|c| c.mirrored), "the canary answered no client");
    assert!(
        failures.is_empty(),
        "{} of {sent} client requests failed: {failures:?}",
        failures.len()
    );
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert!(st.get("mirror").is_none() && st["canarySettings"].is_null(), "{st}");
}

//! Notifications (PRODUCT.md §13) end to end: a real HTTP receiver started by the test gets a rolled
//! back rollout's events as CloudEvents, in order, signed as Standard Webhooks does — after being down
//! for a while, and after a SIGKILL of canarygate while deliveries were pending.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver: records every POST's headers and body; answers 503 while `up` is false.
struct Receiver {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(hyper::HeaderMap, bytes::Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(up: bool) -> Receiver {
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let got: Arc<Mutex<Vec<(hyper::HeaderMap, bytes::Bytes)>>> = Arc::default();
        let (u, g) = (up.clone(), got.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (u, g) = (u.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (u, g) = (u.clone(), g.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = if u.load(Ordering::SeqCst) {
                                g.lock().unwrap().push((headers, body));
                                204
                            } else {
                                503
                            };
                            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, up, got, task }
    }

    /// The events received so far, first arrival of each id only, in order; each checked as a
    /// CloudEvent with a valid Standard Webhooks signature.
    fn events(&self) -> Vec<Value> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (h, body) in self.got.lock().unwrap().iter() {
            let id = h["webhook-id"].to_str().unwrap();
            let ts = h["webhook-timestamp"].to_str().unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(body);
            let want = format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            );
            assert_eq!(h["webhook-signature"].to_str().unwrap(), want, "signature of {id}");
            assert_eq!(h["content-type"], "application/cloudevents+json");
            let e: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["id"], id);
            assert!(e["source"].as_str().unwrap().starts_with("/canarygate/rollouts/"));
            assert!(chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).is_ok(), "{e}");
            if seen.insert(id.to_string()) {
                out.push(e);
            }
        }
        out
    }

    fn types(&self) -> Vec<String> {
        self.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const WANT: [&str; 4] = [
    "dev.canarygate.rolloutstarted",
    "dev.canarygate.stepchanged",
    "dev.canarygate.alarmfired",
    "dev.canarygate.rolledback",
];

/// API `orders` on `production`, deployment d2, plan Canary20Percent30Seconds, alarm canary-5xx, and
/// notification `chat` to the receiver. Starts a rollout to `next`; returns its id.
async fn setup_and_start(c: &reqwest::Client, s: &Server, production: &Backend, next: &Backend, rx: &Receiver) -> String {
    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    ok(c, s, "PUT", "/v1/apis/orders", Some(routes)).await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let stage = json!({"deploymentId": d1["id"], "variables": {"backend": production.addr.to_string()}});
    ok(c, s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
    canary_plan_and_alarm(c, s, "Canary20Percent30Seconds", 30).await;
    // A bad secret is refused, naming the field and not echoing it.
    let (status, e) = admin(
        c,
        s,
        "PUT",
        "/v1/notifications/chat",
        Some(json!({"url": format!("http://{}/hook", rx.addr), "secret": "hunter2"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("secret") && !e.to_string().contains("hunter2"), "{e}");
    let n = ok(
        c,
        s,
        "PUT",
        "/v1/notifications/chat",
        Some(json!({"url": format!("http://{}/hook", rx.addr), "secret": SECRET})),
    )
    .await;
    assert_eq!(n["signed"], true);
    assert!(!n.to_string().contains("whsec_"), "{n}");
    let body = json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": next.addr.to_string()},
                      "deploymentConfig": "Canary20Percent30Seconds", "alarms": ["canary-5xx"]});
    let (status, r) = admin(c, s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

async fn until_received(rx: &Receiver, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.events().len() < n {
        assert!(Instant::now() < deadline, "received only {:?}", rx.types());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_rollouts_events_arrive_in_order_signed_after_the_receiver_was_down() {
    let rx = Receiver::start(false).await;
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::FailTenths(5)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let id = setup_and_start(&c, &s, &prod, &next, &rx).await;
    assert_eq!(wait_rollout(&c, &s, &id, Duration::from_secs(30)).await["status"], "RolledBack");
    load.finish().await;
    // The receiver is down for 5 s: deliveries fail and wait, with the reason in the API.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = ok(&c, &s, "GET", "/v1/notifications/chat", None).await;
    assert!(n["pending"].as_u64().unwrap() >= 4, "{n}");
    assert_eq!(n["lastError"], "HTTP 503", "{n}");
    rx.up.store(true, Ordering::SeqCst);
    until_received(&rx, 4).await;
    let events = rx.events();
    assert_eq!(rx.types(), WANT, "{events:?}");
    for e in &events {
        assert_eq!(e["data"]["rolloutId"], id.as_str());
        assert_eq!(e["subject"], "orders/prod");
    }
    assert!(
        events[3]["data"]["reason"].as_str().unwrap().contains("canary-5xx"),
        "{}",
        events[3]
    );
    // Delivery state through the API.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = ok(&c, &s, "GET", "/v1/notifications/chat", None).await;
        if n["pending"] == 0 {
            assert_eq!(n["delivered"], 4, "{n}");
            break;
        }
        assert!(Instant::now() < deadline, "{n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = ok(&c, &s, "GET", "/v1/notifications/chat/deliveries", None).await;
    let first = &d["items"][0];
    assert!(
        first["attempts"].as_u64().unwrap() >= 2 && first["deliveredAt"].is_string(),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_sigkill() {
    let rx = Receiver::start(false).await;
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::FailTenths(5)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let id = setup_and_start(&c, &s, &prod, &next, &rx).await;
    assert_eq!(wait_rollout(&c, &s, &id, Duration::from_secs(30)).await["status"], "RolledBack");
    load.finish().await;
    let n = ok(&c, &s, "GET", "/v1/notifications/chat", None).await;
    assert!(n["pending"].as_u64().unwrap() >= 4, "{n}");
    assert!(rx.events().is_empty());
    s.kill();
    rx.up.store(true, Ordering::SeqCst);
    let data = s.data_dir.clone();
    s = Server::start(&data, &[], &[]);
    until_received(&rx, 4).await;
    assert_eq!(rx.types(), WANT);
    drop(s);
}

//! Notifications (PRODUCT.md §13) end to end: a real HTTP receiver started by the test gets a rolled
//! back rollout's events as CloudEvents, in order, signed as Standard Webhooks does — after being down
//! for a while, and after a SIGKILL of canarygate while deliveries were pending.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
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

/// Checks a Slack incoming-webhook message against the limits Slack documents for Block Kit: a
/// fallback `text`; at most 50 blocks; a header's plain_text at most 150 characters; a section's text
/// at most 3,000 or at most 10 fields of at most 2,000; a button's text at most 75 and its URL at most
/// 3,000 characters.
fn check_slack(m: &Value) {
    assert!(m["text"].as_str().is_some_and(|t| !t.is_empty()), "{m}");
    let blocks = m["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty() && blocks.len() <= 50, "{m}");
    let text_len = |t: &Value, kinds: &[&str], max: usize| {
        assert!(kinds.contains(&t["type"].as_str().unwrap()), "{t}");
        let s = t["text"].as_str().expect("text");
        assert!(!s.is_empty() && s.chars().count() <= max, "{t}");
    };
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => text_len(&b["text"], &["plain_text"], 150),
            "section" => match b.get("fields") {
                Some(fields) => {
                    let fields = fields.as_array().unwrap();
                    assert!(!fields.is_empty() && fields.len() <= 10, "{b}");
                    fields.iter().for_each(|f| text_len(f, &["mrkdwn", "plain_text"], 2000));
                }
                None => text_len(&b["text"], &["mrkdwn", "plain_text"], 3000),
            },
            "context" => b["elements"]
                .as_array()
                .unwrap()
                .iter()
                .for_each(|e| text_len(e, &["mrkdwn", "plain_text"], 3000)),
            "actions" => {
                for e in b["elements"].as_array().unwrap() {
                    assert_eq!(e["type"], "button");
                    text_len(&e["text"], &["plain_text"], 75);
                    assert!(
                        e["url"].as_str().is_some_and(|u| u.len() <= 3000 && u.starts_with("https://")),
                        "{e}"
                    );
                }
            }
            other => panic!("block type {other} is not one canarygate sends: {b}"),
        }
    }
}

/// Checks a Teams Workflows message: a `message` with one adaptive card attachment (AdaptiveCard with
/// a version, a body of TextBlocks with text and FactSets of title/value pairs, OpenUrl actions).
fn check_teams(m: &Value) {
    assert_eq!(m["type"], "message", "{m}");
    let a = &m["attachments"][0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive", "{m}");
    let card = &a["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
    assert!(card["version"].as_str().is_some_and(|v| v.starts_with("1.")), "{card}");
    for item in card["body"].as_array().expect("body") {
        match item["type"].as_str().unwrap() {
            "TextBlock" => assert!(item["text"].as_str().is_some_and(|t| !t.is_empty()), "{item}"),
            "FactSet" => {
                for f in item["facts"].as_array().unwrap() {
                    assert!(f["title"].is_string() && f["value"].is_string(), "{f}");
                }
            }
            other => panic!("element {other} is not one canarygate sends: {item}"),
        }
    }
    for action in card["actions"].as_array().expect("actions with a publicUrl") {
        assert_eq!(action["type"], "Action.OpenUrl");
        assert!(action["title"].is_string() && action["url"].is_string(), "{action}");
    }
}

/// A rolled-back rollout notified in Slack's and Teams' formats, each a readable message with the
/// stage, step, weight, the evidence line and a link to the rollout's dashboard page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_teams_get_their_own_shapes_for_a_rolled_back_rollout() {
    let (slack, teams) = (Receiver::start(true).await, Receiver::start(true).await);
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::FailTenths(5)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  publicUrl: https://canarygate.example.com/\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    for (name, format, rx) in [("slack", "slack", &slack), ("teams", "teams", &teams)] {
        let n = json!({"url": format!("http://{}/hook", rx.addr), "format": format, "events": ["RolledBack"]});
        let v = ok(&c, &s, "PUT", &format!("/v1/notifications/{name}"), Some(n)).await;
        assert_eq!(v["format"], format);
    }
    let (status, e) = admin(
        &c,
        &s,
        "PUT",
        "/v1/notifications/x",
        Some(json!({"url": "http://h/x", "format": "discord"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("discord"), "{e}");

    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    ok(&c, &s, "PUT", "/v1/apis/orders", Some(routes)).await;
    let d1 = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let stage = json!({"deploymentId": d1["id"], "variables": {"backend": prod.addr.to_string()}});
    ok(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
    canary_plan_and_alarm(&c, &s, "Canary20Percent30Seconds", 30).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let body = json!({"stageVariableOverrides": {"backend": next.addr.to_string()}, "deploymentConfig": "Canary20Percent30Seconds",
                      "alarms": ["canary-5xx"], "analysis": {"errorRate": {"alpha": 0.01}}});
    let r = ok(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(wait_rollout(&c, &s, &id, Duration::from_secs(30)).await["status"], "RolledBack");
    load.finish().await;

    let received = |rx: &Receiver| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((h, body)) = rx.got.lock().unwrap().first().cloned() {
                assert_eq!(h["content-type"], "application/json");
                return serde_json::from_slice::<Value>(&body).unwrap();
            }
            assert!(Instant::now() < deadline, "nothing received");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let link = format!("https://canarygate.example.com/ui/#/rollout/{id}");
    let m = received(&slack);
    check_slack(&m);
    let text = m.to_string();
    assert!(text.contains(&format!("Rollout {id} on orders/prod: rolled back")), "{m}");
    assert!(
        text.contains("*Weight*") && text.contains("errors: canary"),
        "the weight and the evidence line: {m}"
    );
    assert!(text.contains(&link), "{m}");
    let m = received(&teams);
    check_teams(&m);
    let card = &m["attachments"][0]["content"];
    let facts: Vec<&str> = card["body"][2]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert_eq!(facts, ["Stage", "Status", "Step", "Weight", "Deployment"]);
    assert!(card.to_string().contains("errors: canary"), "{card}");
    assert_eq!(card["actions"][0]["url"], link.as_str());
}

//! Ready-made set-ups: a stage split between two backends, steady client load, canary plans and
//! alarms, waiting for a rollout, reading a raw response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::backends::{Backend, Behaviour};
use super::server::{client, ok, Server};

/// Declares API `orders` with a greedy proxy route to `${stageVariables.backend}`, deploys it, and
/// creates stage `prod` on `production` with a canary overriding the backend to `canary` at `percent`.
pub async fn setup_split(
    c: &reqwest::Client,
    s: &Server,
    production: SocketAddr,
    canary: SocketAddr,
    percent: f64,
    routing: Value,
) -> String {
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [
            {"method": "ANY", "path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}", "timeoutMs": 2000}},
            {"method": "GET", "path": "/version", "integration": {"type": "mock", "body": "${stageVariables.version}"}}
        ]})),
    )
    .await;
    let d = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v1"}))).await;
    let id = d["id"].as_str().unwrap().to_string();
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders/stages/prod",
        Some(json!({
            "deploymentId": id,
            "variables": {"backend": production.to_string(), "version": "1"},
            "canarySettings": {"percentTraffic": percent, "stageVariableOverrides": {"backend": canary.to_string(), "version": "2"}},
            "canaryRouting": routing,
        })),
    )
    .await;
    id
}

pub async fn set_percent(c: &reqwest::Client, s: &Server, p: f64) {
    ok(
        c,
        s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "replace", "path": "/canarySettings/percentTraffic", "value": p.to_string()}]})),
    )
    .await;
}

/// Sends `n` GETs to `url` with `conc` concurrent workers; returns how many were served by the canary
/// (per the `x-canarygate-variant` header), insisting that each succeeded.
pub async fn count_canary(c: &reqwest::Client, url: &str, n: usize, conc: usize) -> usize {
    let canary = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, url, canary, next) = (c.clone(), url.to_string(), canary.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let r = c.get(&url).send().await.expect("request");
                assert_eq!(r.status(), 200, "request failed");
                if r.headers()["x-canarygate-variant"] == "canary" {
                    canary.fetch_add(1, Ordering::SeqCst);
                }
                let _ = r.bytes().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    canary.load(Ordering::SeqCst) as usize
}

/// A server with API `orders`, stage `prod` split between two echo backends (see [`setup_split`]).
pub struct Fixture {
    pub s: Server,
    pub prod: Backend,
    pub canary: Backend,
    pub c: reqwest::Client,
    pub deployment: String,
    pub dir: tempfile::TempDir,
}

pub async fn fixture(percent: f64, routing: Value) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    let deployment = setup_split(&c, &s, prod.addr, canary.addr, percent, routing).await;
    Fixture {
        s,
        prod,
        canary,
        c,
        deployment,
        dir,
    }
}

/// Steady client load: `tasks` loops of GETs until stopped. A response counts as a failure unless it is
/// 200 or the backend's own 500 (a JSON body naming the backend): a 502, 504, reset or hang is one.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub sent: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(c: &reqwest::Client, url: &str, tasks: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles = (0..tasks)
            .map(|_| {
                let (c, url, stop, sent, failures) = (c.clone(), url.to_string(), stop.clone(), sent.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let outcome = match c.get(&url).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                match r.json::<Value>().await {
                                    Ok(v) if status == 200 || (status == 500 && v.get("backend").is_some()) => None,
                                    Ok(v) => Some(format!("{status}: {v}")),
                                    Err(e) => Some(format!("{status}: body: {e}")),
                                }
                            }
                            Err(e) => Some(format!("request: {e}")),
                        };
                        sent.fetch_add(1, Ordering::SeqCst);
                        if let Some(f) = outcome {
                            failures.lock().unwrap().push(f);
                        }
                        // About 100 requests/s per task: steady, not saturating.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failures,
            tasks: handles,
        }
    }

    /// Stops the load; returns (requests sent, failures).
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::SeqCst), failures)
    }
}

/// Declares the plan most rollout tests use, `name` (TimeBasedCanary: 20% for `seconds`), and alarm
/// `canary-5xx` on stage orders/prod: the canary's 5XXError Average above 0.05 over 1 s periods, 2 of 3.
pub async fn canary_plan_and_alarm(c: &reqwest::Client, s: &Server, name: &str, seconds: u64) {
    let plan = json!({"type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": seconds});
    ok(c, s, "PUT", &format!("/v1/deployment-configs/{name}"), Some(plan)).await;
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError", "statistic": "Average",
        "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05});
    ok(c, s, "PUT", "/v1/alarms/canary-5xx", Some(alarm)).await;
}

/// Polls a rollout until it has ended; the guard only turns a hang into a failure.
pub async fn wait_rollout(c: &reqwest::Client, s: &Server, id: &str, guard: Duration) -> Value {
    let deadline = std::time::Instant::now() + guard;
    loop {
        let r = ok(c, s, "GET", &format!("/v1/rollouts/{id}"), None).await;
        if !matches!(r["status"].as_str(), Some("Created" | "InProgress")) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "rollout {id} did not end: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads one response with a `content-length` body; what follows stays in `buf`.
pub async fn read_response<R: tokio::io::AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (status, head, body);
            }
        }
        let mut more = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(s, &mut more))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed; got so far: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&more[..n]);
    }
}

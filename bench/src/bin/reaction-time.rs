//! Reaction time: from the canary's first failing request to canary weight 0.
//!
//! Starts the real `canarygate` binary (release build) and two backends in this process: v1 healthy, v2
//! answering 500 to 3 of every 10 requests. With steady client load, it starts a rollout to v2 (canary
//! 20% for 30 s) watched by an alarm on the canary's 5XXError Average > 0.05 over 1 s periods, 2 of 3,
//! and measures the time from v2's first 500 to the moment the stage's canary is gone (polled every
//! 5 ms). Repeats `REACTION_RUNS` times (default 10) and reports every run, the median, min and max.
//!
//! With `REACTION_STORE=postgres://...` it starts three replicas on that database instead (each with one
//! gateway worker, `leaseSeconds` 3) and sends the load and the rollout through a replica that is not
//! the leader, so the leader judges the canary only from the seconds the others publish; the canary is
//! "gone" when that replica's stage has none.
//!
//! Usage: `bash bench/run --only reaction` (builds, then runs this); `bash bench/run --only cluster`
//! runs it with three replicas.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Runs when `REACTION_RUNS` is not set.
const RUNS: usize = 10;

/// A backend; `fail_tenths` of every 10 answers are 500, and the first 500's time is recorded.
async fn backend(name: &'static str, fail_tenths: usize, first_failure: Arc<Mutex<Option<Instant>>>) -> Result<std::net::SocketAddr> {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (calls, first_failure) = (calls.clone(), first_failure.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let fail = n % 10 < fail_tenths;
                    if fail {
                        let mut f = first_failure.lock().unwrap();
                        if f.is_none() {
                            *f = Some(Instant::now());
                        }
                    }
                    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!("{{\"backend\":\"{name}\"}}"))));
                    if fail {
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> Result<Value> {
    let mut req = c.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    Ok(v)
}

/// Starts `canarygate serve` with `extra` arguments; the process and its gateway and admin URLs.
fn start(exe: &str, dir: &std::path::Path, extra: &[&str]) -> Result<(std::process::Child, String, String)> {
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("CANARYGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut gw, mut admin) = (String::new(), String::new());
    while gw.is_empty() || admin.is_empty() {
        let line = lines.next().context("canarygate exited")??;
        if let Some(a) = line.strip_prefix("canarygate: gateway listening on ") {
            gw = a.to_string();
        } else if let Some(a) = line.strip_prefix("canarygate: admin listening on ") {
            admin = a.to_string();
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((child, gw, admin))
}

#[tokio::main]
async fn main() -> Result<()> {
    let exe = std::env::var("CANARYGATE_BIN").context("set CANARYGATE_BIN to the canarygate binary (bench/run does)")?;
    let dir = std::env::temp_dir().join(format!("canarygate-reaction-{}", std::process::id()));
    let store = std::env::var("REACTION_STORE").ok().filter(|s| !s.is_empty());
    let mut children = Vec::new();
    let result = async {
        let Some(url) = &store else {
            let (child, gw, admin) = start(&exe, &dir, &[])?;
            children.push(child);
            return run(&gw, &admin).await;
        };
        let mut replicas = Vec::new();
        for i in 1..=3 {
            let d = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&d)?;
            let cfg = d.join("config.yaml");
            std::fs::write(&cfg, format!("server:\n  replicaName: r{i}\n  leaseSeconds: 3\n"))?;
            let (child, gw, admin) = start(&exe, &d, &["--store", url, "--config", cfg.to_str().unwrap_or_default()])?;
            children.push(child);
            replicas.push((format!("r{i}"), gw, admin));
        }
        // Through a replica that is not the leader.
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let v = call(&c, reqwest::Method::GET, format!("{}/v1/cluster", replicas[0].2), None).await?;
            if let (Some(l), Some(3)) = (v["leader"].as_str(), v["replicas"].as_array().map(Vec::len)) {
                break l.to_string();
            }
            if Instant::now() > deadline {
                bail!("the three replicas did not elect a leader within 30 s: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (name, gw, admin) = replicas.iter().find(|r| r.0 != leader).context("no follower")?;
        println!("three replicas on PostgreSQL; leader {leader}, load and rollouts through {name}");
        run(gw, admin).await
    }
    .await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(gw: &str, admin: &str) -> Result<()> {
    let c = reqwest::Client::new();
    let a = |p: &str| format!("{admin}{p}");
    let none = Arc::new(Mutex::new(None));
    let v1 = backend("v1", 0, none).await?;
    call(
        &c,
        reqwest::Method::PUT,
        a("/v1/apis/orders"),
        Some(
            json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]}),
        ),
    )
    .await?;
    let d1 = call(&c, reqwest::Method::POST, a("/v1/apis/orders/deployments"), Some(json!({}))).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    call(
        &c,
        reqwest::Method::PUT,
        a("/v1/apis/orders/stages/prod"),
        Some(json!({"deploymentId": d1, "variables": {"backend": v1.to_string()}})),
    )
    .await?;
    call(
        &c,
        reqwest::Method::PUT,
        a("/v1/deployment-configs/Canary20Percent30Seconds"),
        Some(json!({"type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": 30})),
    )
    .await?;
    call(
        &c,
        reqwest::Method::PUT,
        a("/v1/alarms/canary-5xx"),
        Some(json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError", "statistic": "Average",
                    "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05})),
    )
    .await?;

    // Steady load: 4 loops of about 100 requests/s each.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, stop) = (c.clone(), format!("{gw}/orders/prod/items"), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = c.get(&url).send().await {
                    let _ = r.bytes().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let runs = std::env::var("REACTION_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(RUNS);
    let mut times = Vec::new();
    for run in 1..=runs {
        let first_failure = Arc::new(Mutex::new(None));
        let v2 = backend("v2", 3, first_failure.clone()).await?;
        let r = call(
            &c,
            reqwest::Method::POST,
            a("/v1/apis/orders/stages/prod/rollouts"),
            Some(json!({"stageVariableOverrides": {"backend": v2.to_string()}, "deploymentConfig": "Canary20Percent30Seconds", "alarms": ["canary-5xx"]})),
        )
        .await?;
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait for the canary to appear, then for it to be gone.
        let mut seen_canary = false;
        let gone_at = loop {
            let st = call(&c, reqwest::Method::GET, a("/v1/apis/orders/stages/prod"), None).await?;
            let has = st["canarySettings"]
                .as_object()
                .is_some_and(|c| c["percentTraffic"].as_f64().unwrap_or(0.0) > 0.0);
            if has {
                seen_canary = true;
            } else if seen_canary {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!("run {run}: the canary was not removed within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let r = call(&c, reqwest::Method::GET, a(&format!("/v1/rollouts/{id}")), None).await?;
        if r["status"] != "RolledBack" {
            bail!("run {run}: rollout ended {}", r["status"]);
        }
        let first = first_failure.lock().unwrap().context("the canary never failed")?;
        let t = gone_at.duration_since(first);
        println!(
            "run {run:>2}: {:>6.0} ms from the canary's first failing request to canary weight 0",
            t.as_secs_f64() * 1000.0
        );
        times.push(t);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        let _ = t.await;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if runs.is_multiple_of(2) {
        (ms(times[runs / 2 - 1]) + ms(times[runs / 2])) / 2.0
    } else {
        ms(times[runs / 2])
    };
    println!(
        "reaction time over {runs} runs: median {median:.0} ms, min {:.0} ms, max {:.0} ms (1 s periods, 2 of 3 datapoints, 5XXError Average > 0.05)",
        ms(times[0]),
        ms(times[runs - 1])
    );
    // One machine-readable line for bench/run.
    println!("{}", json!({"reaction_ms": times.iter().map(|t| ms(*t)).collect::<Vec<_>>()}));
    Ok(())
}

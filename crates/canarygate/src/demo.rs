//! `canarygate demo`: the whole story in one process, with nothing else to install or start.
//!
//! An embedded store in a temporary folder, the gateway, the admin API, three versions of a demo
//! backend (v1 healthy; v2 slower with 25% errors; v3 healthy) and a steady client load. The stage
//! serves v1; a rollout to v2 with a short canary plan, judged by the canary analysis and watched by an
//! error-rate alarm, ends in an automatic rollback (the analysis rejects v2 within seconds, before the
//! alarm's 10-second periods can); a rollout to v3 with a Steps plan whose approval step the demo
//! approves itself after a pause (printing what a person would type), under the same analysis, ends
//! promoted. A timeline is printed as it goes, with the analysis's evidence in one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use canarygate_metrics::{Metric, SeriesKey, Statistic, Variant};
use canarygate_model::rollout::{RolloutRequest, RolloutStatus};
use chrono::Utc;
use tokio::net::TcpListener;

use crate::serve::{Running, ServeArgs};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Gateway listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin API (and dashboard) listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Keep the state here instead of a temporary folder (removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// End after the story: exit 0 when the first rollout was rolled back by its alarm and the second
    /// succeeded, 1 otherwise.
    #[arg(long)]
    pub exit_when_done: bool,
}

const API: &str = "shop";
const STAGE: &str = "prod";
const ALARM: &str = "shop-prod-canary-5xx";
const ANALYSIS: &str = "errors-and-latency";
/// How long the demo waits before it approves an approval step itself.
const APPROVAL_PAUSE: Duration = Duration::from_secs(10);

fn config(v1: SocketAddr, data_dir: &std::path::Path) -> Result<crate::config::ConfigFile> {
    let yaml = format!(
        r#"
server:
  dataDir: {data_dir:?}
apis:
  - name: {API}
    routes:
      - path: /{{proxy+}}
        integration: {{type: http, uri: "http://${{stageVariables.backend}}/{{proxy}}", timeoutMs: 5000}}
    stages:
      - name: {STAGE}
        variables: {{backend: "{v1}", version: "v1"}}
deploymentConfigs:
  - {{name: DemoCanary20Percent30Seconds, type: TimeBasedCanary, percentage: 20, intervalSeconds: 30}}
  - name: DemoGated
    type: Steps
    steps:
      - {{percentage: 25, intervalSeconds: 15}}
      - {{percentage: 25, approval: true}}
      - {{percentage: 75, intervalSeconds: 15}}
alarms:
  - name: {ALARM}
    api: {API}
    stage: {STAGE}
    variant: canary
    metric: 5XXError
    statistic: Average
    periodSeconds: 10
    evaluationPeriods: 3
    datapointsToAlarm: 2
    comparison: GreaterThanThreshold
    threshold: 0.05
analyses:
  - name: {ANALYSIS}
    errorRate: {{alpha: 0.001}}
    latency: {{alpha: 0.001}}
"#,
        data_dir = data_dir.display().to_string()
    );
    crate::config::parse(&yaml).context("the demo's own config")
}

async fn backend(name: &str, error_rate: f64, delay: Duration) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::backend::serve(listener, name.to_string(), error_rate, delay));
    Ok(addr)
}

/// Prints timeline lines with the time since the story began.
struct Timeline {
    t0: Instant,
}

impl Timeline {
    fn say(&self, what: impl AsRef<str>) {
        println!("[t+{:>5.1}s] {}", self.t0.elapsed().as_secs_f64(), what.as_ref());
    }
}

/// Requests/s and 5xx share of a variant over the last `secs` complete seconds.
fn rates(running: &Running, variant: Variant, secs: u64) -> (f64, f64) {
    let key = SeriesKey {
        api: API.into(),
        stage: STAGE.into(),
        variant,
    };
    let Some(series) = running.metrics.get(&key) else {
        return (0.0, 0.0);
    };
    let now = Utc::now().timestamp().max(0) as u64;
    let n = series.reduce(Metric::Count, Statistic::Sum, now - secs, now).unwrap_or(0.0);
    let err = series.reduce(Metric::Error5xx, Statistic::Average, now - secs, now).unwrap_or(0.0);
    (n / secs as f64, err)
}

fn traffic_line(running: &Running) -> String {
    let (p_rps, p_err) = rates(running, Variant::Production, 5);
    let (c_rps, c_err) = rates(running, Variant::Canary, 5);
    format!(
        "traffic: production {p_rps:.0} req/s, {:.1}% 5xx | canary {c_rps:.0} req/s, {:.1}% 5xx",
        p_err * 100.0,
        c_err * 100.0
    )
}

/// Starts a rollout and prints its events, alarm changes and traffic until it ends.
/// Returns how it ended and, for a rollback, what rolled it back.
async fn rollout(running: &Running, tl: &Timeline, req: RolloutRequest) -> Result<(RolloutStatus, Option<&'static str>)> {
    let id = format!("r-demo{:04x}", fastrand::u16(..));
    let r = running
        .store
        .mutate(move |s| s.create_rollout(API, STAGE, req, id, Utc::now()))
        .await?;
    let id = r.id.clone();
    let mut printed = 0;
    let mut alarm_state = running.store.current().alarms.get(ALARM).map(|a| a.status.state);
    let mut last_traffic = Instant::now();
    let mut approve_at: Option<Instant> = None;
    loop {
        let state = running.store.current();
        let r = state.rollout(&id)?.clone();
        for e in r.events.iter().skip(printed) {
            tl.say(format!("rollout {id}: {} at {}%: {}", e.status.as_str(), e.weight, e.reason));
        }
        printed = r.events.len();
        let now_state = state.alarms.get(ALARM).map(|a| a.status.state);
        if now_state != alarm_state {
            if let Some(a) = state.alarms.get(ALARM) {
                tl.say(format!("alarm {ALARM}: {} ({})", a.status.state.as_str(), a.status.reason));
            }
            alarm_state = now_state;
        }
        let evidence = || {
            r.analysis_state
                .as_ref()
                .map(|a| a.evidence(canarygate_metrics::bucket_bounds_us()).line())
                .filter(|l| !l.is_empty())
        };
        if last_traffic.elapsed() >= Duration::from_secs(5) {
            tl.say(traffic_line(running));
            if let Some(line) = evidence() {
                tl.say(format!("evidence: {line}"));
            }
            last_traffic = Instant::now();
        }
        // A plan's approval step: the demo plays the person who approves, after a pause.
        let waiting = r.waiting_for.as_deref().is_some_and(|w| w.starts_with("waiting for an approval"));
        match approve_at {
            None if waiting => {
                tl.say(format!(
                    "the plan waits for an approval, without a time limit (alarms and analysis keep watching); a person would type: canarygate rollout approve {id}   (the demo approves in {} s)",
                    APPROVAL_PAUSE.as_secs()
                ));
                approve_at = Some(Instant::now() + APPROVAL_PAUSE);
            }
            Some(at) if waiting && Instant::now() >= at => {
                let rid = id.clone();
                running.store.mutate(move |s| s.approve_rollout(&rid, "demo", Utc::now())).await?;
                approve_at = Some(Instant::now() + Duration::from_secs(3600));
            }
            _ => {}
        }
        if !r.status.is_active() {
            if let Some(line) = evidence() {
                tl.say(format!("evidence: {line}"));
            }
            let reason = r.events.last().map_or("", |e| e.reason.as_str());
            let by = if reason.starts_with("analysis rejected") {
                Some("the canary analysis")
            } else if reason.starts_with("alarm") {
                Some("its alarm")
            } else {
                None
            };
            return Ok((r.status, by));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pause(running: &Running, tl: &Timeline, secs: u64) {
    for _ in 0..secs / 5 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        tl.say(traffic_line(running));
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let temporary = args.data_dir.is_none();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("canarygate-demo-{}", std::process::id())));
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let v1 = backend("v1", 0.0, Duration::ZERO).await?;
    let v2 = backend("v2", 0.25, Duration::from_millis(40)).await?;
    let v3 = backend("v3", 0.0, Duration::ZERO).await?;
    let cfg = config(v1, &data_dir)?;
    let serve_args = ServeArgs {
        listen: Some(args.listen),
        admin_listen: Some(args.admin_listen),
        data_dir: Some(data_dir.clone()),
        ..ServeArgs::default()
    };
    let running = crate::serve::start(&cfg, &serve_args).await?;
    println!();
    println!(
        "canarygate demo: stage {API}/{STAGE} at http://{}/{API}/{STAGE}/",
        running.gateway_addr
    );
    println!("  dashboard: http://{}/ui/", running.admin_addr);
    println!(
        "  admin API: http://{}/v1/rollouts   metrics: http://{}/metrics",
        running.admin_addr, running.admin_addr
    );
    println!("  backends:  v1 {v1} (healthy), v2 {v2} (slower, 25% errors), v3 {v3} (healthy)");
    println!();

    // Steady client load: 4 loops of about 25 requests/s.
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let (c, url, stop) = (
            client.clone(),
            format!("http://{}/{API}/{STAGE}/items", running.gateway_addr),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = c.get(&url).send().await {
                    let _ = r.bytes().await;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
    }

    let tl = Timeline { t0: Instant::now() };
    tl.say("production serves v1; steady load of about 100 requests/s");
    pause(&running, &tl, 15).await;

    tl.say(format!("rollout 1: {STAGE} -> v2 with DemoCanary20Percent30Seconds, judged by analysis {ANALYSIS} (canary against production: errors and latency, alpha 0.001 each) and watched by alarm {ALARM} (canary 5xx Average > 5%, 2 of 3 ten-second periods)"));
    tl.say(format!(
        "  as a pipeline would: canarygate rollout start {API} {STAGE} --config DemoCanary20Percent30Seconds --override backend={v2} --override version=v2 --analysis {ANALYSIS} --alarm {ALARM} --wait"
    ));
    let req = |backend: SocketAddr, version: &str, config: &str| RolloutRequest {
        deployment_id: None,
        stage_variable_overrides: [
            ("backend".to_string(), backend.to_string()),
            ("version".to_string(), version.to_string()),
        ]
        .into(),
        deployment_config: config.into(),
        alarms: vec![ALARM.into()],
        hooks: Default::default(),
        auto_rollback: None,
        analysis: Some(canarygate_model::analysis::AnalysisRef::Named(ANALYSIS.into())),
        mirror_seconds: None,
        mirror_percent: None,
    };
    let (first, by) = rollout(&running, &tl, req(v2, "v2", "DemoCanary20Percent30Seconds")).await?;
    tl.say(format!(
        "rollout 1 ended {}{}",
        first.as_str(),
        by.map(|b| format!(" by {b}: v2 never reached more than 20%")).unwrap_or_default()
    ));
    pause(&running, &tl, 15).await;

    tl.say("rollout 2: prod -> v3 with DemoGated (25% for 15 s, 25% until approved, 75% for 15 s, then 100%), the same analysis and alarm");
    let (second, _) = rollout(&running, &tl, req(v3, "v3", "DemoGated")).await?;
    let stage = running.store.current().stage(API, STAGE)?.clone();
    tl.say(format!(
        "rollout 2 ended {}; the stage now serves {}",
        second.as_str(),
        stage.variables.get("version").map_or("?", String::as_str)
    ));
    tl.say(traffic_line(&running));

    let as_expected = first == RolloutStatus::RolledBack
        && by.is_some()
        && second == RolloutStatus::Succeeded
        && stage.variables.get("backend") == Some(&v3.to_string());
    println!();
    if as_expected {
        println!("story done: v2 was rolled back by {}, v3 was promoted.", by.unwrap_or("?"));
    } else {
        println!(
            "story done, but not as expected: rollout 1 {}, rollout 2 {}",
            first.as_str(),
            second.as_str()
        );
    }
    if !args.exit_when_done {
        println!("still serving (dashboard http://{}/ui/); Ctrl-C to stop", running.admin_addr);
        crate::serve::shutdown_signal().await;
    }
    stop.store(true, Ordering::Relaxed);
    running.stop().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if !as_expected {
        bail!("the demo's story did not end as expected");
    }
    Ok(())
}

//! `canarygate rollout ...` and `canarygate alarms ...`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use chrono::Utc;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, Output};

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    pub api: String,
    pub stage: String,
    /// Deployment configuration: a CodeDeploy name (Canary10Percent5Minutes, ...) or a custom one.
    #[arg(long = "config", short = 'c')]
    pub deployment_config: String,
    /// Deployment to move to (default: the stage's own, for a variables-only rollout).
    #[arg(long)]
    pub deployment_id: Option<String>,
    /// NAME=VALUE stage variable override for the new version (repeatable).
    #[arg(long = "override")]
    pub overrides: Vec<String>,
    /// Alarm to watch (repeatable).
    #[arg(long = "alarm")]
    pub alarms: Vec<String>,
    #[arg(long)]
    pub before_hook: Option<String>,
    #[arg(long)]
    pub after_hook: Option<String>,
    /// Hook timeout in seconds (default 3600).
    #[arg(long)]
    pub hook_timeout: Option<u64>,
    /// Never roll back automatically.
    #[arg(long)]
    pub no_auto_rollback: bool,
    /// Canary analysis: the judgements to run, comma-separated (errors, latency), or the name of a
    /// stored analysis (`analyses` in a config file).
    #[arg(long, value_delimiter = ',')]
    pub analysis: Vec<String>,
    /// The analysis's false-alarm probability over the whole rollout, per judgement (default 0.01).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Seconds after each weight increase left out of the analysis.
    #[arg(long)]
    pub warmup_seconds: Option<u64>,
    /// A step ends only after the canary has served this many requests in it.
    #[arg(long)]
    pub min_canary_requests: Option<u64>,
    /// Mirror production requests to the canary for this long (watched by the alarms and the paired
    /// analysis) before the first shift.
    #[arg(long)]
    pub mirror_seconds: Option<u64>,
    /// Share of production requests mirrored in the mirroring phase (default 100).
    #[arg(long)]
    pub mirror_percent: Option<f64>,
    /// Follow the rollout to its end: exit 0 when it succeeds, 1 when it is rolled back or fails.
    #[arg(long)]
    pub wait: bool,
}

/// The `analysis` object from the CLI's flags.
fn analysis_body(a: &StartArgs) -> Result<Option<Value>> {
    let tuning = a.alpha.is_some() || a.warmup_seconds.is_some() || a.min_canary_requests.is_some();
    if a.analysis.is_empty() {
        if tuning {
            bail!("--alpha, --warmup-seconds and --min-canary-requests need --analysis errors,latency");
        }
        return Ok(None);
    }
    let judgement = |j: &str| matches!(j.trim(), "errors" | "errorRate" | "latency");
    if let [name] = a.analysis.as_slice() {
        if !judgement(name) {
            if tuning {
                bail!("--analysis {name:?} names a stored analysis: its alpha, warm-up and minimum are its own");
            }
            return Ok(Some(json!(name)));
        }
    }
    let alpha = a.alpha.unwrap_or(0.01);
    let mut body = json!({});
    for j in &a.analysis {
        match j.trim() {
            "errors" | "errorRate" => body["errorRate"] = json!({"alpha": alpha}),
            "latency" => body["latency"] = json!({"alpha": alpha}),
            other => bail!("--analysis {other:?}: expected errors, latency or both (errors,latency), or one stored analysis's name"),
        }
    }
    if let Some(w) = a.warmup_seconds {
        body["warmupSeconds"] = json!(w);
    }
    if let Some(n) = a.min_canary_requests {
        body["minCanaryRequests"] = json!(n);
    }
    Ok(Some(body))
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

pub async fn start(c: &Client, a: StartArgs) -> Result<()> {
    let mut overrides = BTreeMap::new();
    for kv in &a.overrides {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--override {kv:?}: expected NAME=VALUE"))?;
        overrides.insert(k.to_string(), v.to_string());
    }
    let mut hooks = json!({});
    if let Some(u) = &a.before_hook {
        hooks["beforeAllowTraffic"] = json!(u);
    }
    if let Some(u) = &a.after_hook {
        hooks["afterAllowTraffic"] = json!(u);
    }
    if let Some(t) = a.hook_timeout {
        hooks["timeoutSeconds"] = json!(t);
    }
    let mut body = json!({
        "deploymentConfig": a.deployment_config,
        "stageVariableOverrides": overrides,
        "alarms": a.alarms,
        "hooks": hooks,
    });
    if let Some(d) = &a.deployment_id {
        body["deploymentId"] = json!(d);
    }
    if a.no_auto_rollback {
        body["autoRollback"] = json!([]);
    }
    if let Some(s) = a.mirror_seconds {
        body["mirrorSeconds"] = json!(s);
    }
    if let Some(p) = a.mirror_percent {
        body["mirrorPercent"] = json!(p);
    }
    if let Some(analysis) = analysis_body(&a)? {
        body["analysis"] = analysis;
    }
    let r = c
        .call(Method::POST, &format!("/v1/apis/{}/stages/{}/rollouts", a.api, a.stage), Some(body))
        .await?;
    let id = s(&r, "/id");
    if !a.wait {
        c.print(&r, |r| {
            format!("started rollout {} ({})", s(r, "/id"), s(r, "/deploymentConfig/name"))
        });
        return Ok(());
    }
    if c.output == Output::Text {
        println!(
            "started rollout {id} on {}/{} with {}",
            a.api,
            a.stage,
            s(&r, "/deploymentConfig/name")
        );
    }
    follow(c, &id, &a.api, &a.stage).await
}

/// Error rate and request rate of one variant over the last 10 seconds.
async fn rates(c: &Client, api: &str, stage: &str, variant: &str) -> (f64, f64) {
    let end = Utc::now();
    let start = end - chrono::Duration::seconds(10);
    let q = |metric: &str, stat: &str| {
        format!(
            "/v1/metrics?api={api}&stage={stage}&variant={variant}&metric={metric}&statistic={stat}&periodSeconds=10&start={}&end={}",
            start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).replace('+', "%2B"),
            end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).replace('+', "%2B")
        )
    };
    let sum = |v: Option<Value>| -> f64 {
        v.and_then(|v| {
            v["datapoints"]
                .as_array()
                .map(|d| d.iter().filter_map(|p| p["value"].as_f64()).fold(0.0, |a, b| a + b))
        })
        .unwrap_or(0.0)
    };
    let count = sum(c.get(&q("Count", "Sum")).await.ok());
    let errors = sum(c.get(&q("5XXError", "Sum")).await.ok());
    let rate = if count > 0.0 { errors / count } else { 0.0 };
    (count / 10.0, rate)
}

async fn follow(c: &Client, id: &str, api: &str, stage: &str) -> Result<()> {
    let tty = std::io::stdout().is_terminal() && c.output == Output::Text;
    let bar = tty.then(|| {
        let pb = indicatif::ProgressBar::new(100);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} canary [{bar:30}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    });
    let mut printed = 0usize;
    let mut last_line = String::new();
    let mut evidence_printed: Option<std::time::Instant> = None;
    loop {
        let r = c.get(&format!("/v1/rollouts/{id}")).await?;
        let events = r["events"].as_array().cloned().unwrap_or_default();
        for e in events.iter().skip(printed) {
            let line = format!(
                "{}  {:<10}  step {:>2}  weight {:>5}%  {}",
                s(e, "/time").get(11..19).unwrap_or(""),
                s(e, "/status"),
                s(e, "/step"),
                s(e, "/weight"),
                s(e, "/reason")
            );
            match (&bar, c.output) {
                (Some(pb), _) => pb.println(line),
                (None, Output::Text) => println!("{line}"),
                (None, Output::Json) => {}
            }
        }
        printed = events.len();
        let status = s(&r, "/status");
        let weight = r["weight"].as_f64().unwrap_or(0.0);
        let (prod_rps, prod_err) = rates(c, api, stage, "production").await;
        let (can_rps, can_err) = rates(c, api, stage, "canary").await;
        let steps = r["steps"].as_array().map_or(0, Vec::len);
        let msg = format!(
            "{status} step {}/{steps} {}s left | production {prod_rps:.0} rps {:.1}% 5xx | canary {can_rps:.0} rps {:.1}% 5xx",
            r["currentStep"].as_u64().map_or("-".to_string(), |x| (x + 1).to_string()),
            s(&r, "/timeLeftSeconds"),
            prod_err * 100.0,
            can_err * 100.0
        );
        match &bar {
            Some(pb) => {
                pb.set_position(weight.round() as u64);
                pb.set_message(msg);
            }
            None if c.output == Output::Text => {
                let line = format!("progress: weight {weight}% {msg}");
                // In a log, one line per change of state, not per poll.
                let key: String = line.split(" | ").next().unwrap_or("").to_string();
                if key != last_line {
                    println!("{line}");
                    last_line = key;
                }
            }
            None => {}
        }
        let active = matches!(status.as_str(), "Created" | "InProgress");
        // The analysis's evidence, every 10 s while it runs.
        if let Some(line) = r.pointer("/evidence/line").and_then(Value::as_str).filter(|l| !l.is_empty()) {
            if active && evidence_printed.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                evidence_printed = Some(std::time::Instant::now());
                let line = format!("evidence: {line}");
                match (&bar, c.output) {
                    (Some(pb), _) => pb.println(line),
                    (None, Output::Text) => println!("{line}"),
                    (None, Output::Json) => {}
                }
            }
        }
        if !active {
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
            match c.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Text => {
                    if let Some(line) = r.pointer("/evidence/line").and_then(Value::as_str) {
                        println!("evidence: {line}");
                    }
                    println!("rollout {id} ended {status}")
                }
            }
            if status == "Succeeded" {
                return Ok(());
            }
            bail!(
                "rollout {id} ended {status}: {}",
                events.last().map(|e| s(e, "/reason")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn rollout_text(r: &Value) -> String {
    let mut out = format!(
        "rollout {} on {}/{}: {} (weight {}%, step {}, {}s left)\n  config {} -> deployment {}, overrides {}",
        s(r, "/id"),
        s(r, "/api"),
        s(r, "/stage"),
        s(r, "/status"),
        s(r, "/weight"),
        s(r, "/currentStep"),
        s(r, "/timeLeftSeconds"),
        s(r, "/deploymentConfig/name"),
        s(r, "/deploymentId"),
        s(r, "/stageVariableOverrides"),
    );
    if let Some(p) = r.get("paused").filter(|p| p.is_object()) {
        out.push_str(&format!(
            "\n  paused by {} since {}: canarygate rollout resume {}",
            s(p, "/by"),
            s(p, "/at"),
            s(r, "/id")
        ));
    }
    if let Some(w) = r["waitingFor"].as_str() {
        out.push_str(&format!("\n  {w}"));
    }
    for w in r["wouldHaveRolledBack"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  dry run: {} would have rolled back at {} (step {}, {}%): {}",
            s(w, "/by"),
            s(w, "/at"),
            s(w, "/step"),
            s(w, "/weight"),
            s(w, "/reason")
        ));
    }
    if let Some(line) = r.pointer("/evidence/line").and_then(Value::as_str) {
        out.push_str(&format!("\n  evidence: {line}"));
    }
    for e in r["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {}  {:<10} {:>5}%  {}",
            s(e, "/time"),
            s(e, "/status"),
            s(e, "/weight"),
            s(e, "/reason")
        ));
    }
    out
}

pub async fn status(c: &Client, id: &str) -> Result<()> {
    let r = c.get(&format!("/v1/rollouts/{id}")).await?;
    c.print(&r, rollout_text);
    Ok(())
}

pub async fn list(c: &Client, api: Option<String>, stage: Option<String>, status: Option<String>) -> Result<()> {
    let mut q = Vec::new();
    for (k, v) in [("api", api), ("stage", stage), ("status", status)] {
        if let Some(v) = v {
            q.push(format!("{k}={v}"));
        }
    }
    let v = c.get(&format!("/v1/rollouts?{}", q.join("&"))).await?;
    c.print(&v, |v| {
        let mut lines = vec![format!(
            "{:<14} {:<20} {:<11} {:>6} {:<28} CREATED",
            "ID", "STAGE", "STATUS", "WEIGHT", "CONFIG"
        )];
        for r in v["items"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{:<14} {:<20} {:<11} {:>6} {:<28} {}",
                s(r, "/id"),
                format!("{}/{}", s(r, "/api"), s(r, "/stage")),
                s(r, "/status"),
                s(r, "/weight"),
                s(r, "/deploymentConfig/name"),
                s(r, "/createdAt")
            ));
        }
        lines.join("\n")
    });
    Ok(())
}

pub async fn stop(c: &Client, id: &str, no_rollback: bool) -> Result<()> {
    let v = c
        .call(
            Method::POST,
            &format!("/v1/rollouts/{id}/stop"),
            Some(json!({"rollback": !no_rollback})),
        )
        .await?;
    c.print(&v, |_| {
        format!("stop requested for rollout {id}{}", if no_rollback { " (no rollback)" } else { "" })
    });
    Ok(())
}

pub async fn promote(c: &Client, id: &str) -> Result<()> {
    let v = c.call(Method::POST, &format!("/v1/rollouts/{id}/promote"), None).await?;
    c.print(&v, |_| format!("promotion to 100% requested for rollout {id}"));
    Ok(())
}

pub async fn approve(c: &Client, id: &str) -> Result<()> {
    let v = c.call(Method::POST, &format!("/v1/rollouts/{id}/approve"), None).await?;
    c.print(&v, |_| format!("approved the step rollout {id} waited at"));
    Ok(())
}

/// `rollout pause|resume|continue`: one POST to the rollout's `action`.
pub async fn control(c: &Client, id: &str, action: &str, done: &str) -> Result<()> {
    let v = c.call(Method::POST, &format!("/v1/rollouts/{id}/{action}"), None).await?;
    c.print(&v, |_| format!("{done} rollout {id}"));
    Ok(())
}

pub async fn alarms_list(c: &Client) -> Result<()> {
    let v = c.get("/v1/alarms").await?;
    c.print(&v, |v| {
        let mut lines = vec![format!("{:<32} {:<18} {:<24} RULE", "ALARM", "STATE", "STAGE/VARIANT")];
        for a in v["items"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{:<32} {:<18} {:<24} {} {} {} {} over {}x{}s ({} to alarm)",
                s(a, "/name"),
                s(a, "/state"),
                format!("{}/{}/{}", s(a, "/api"), s(a, "/stage"), s(a, "/variant")),
                s(a, "/statistic"),
                s(a, "/metric"),
                s(a, "/comparison"),
                s(a, "/threshold"),
                s(a, "/evaluationPeriods"),
                s(a, "/periodSeconds"),
                s(a, "/datapointsToAlarm")
            ));
        }
        lines.join("\n")
    });
    Ok(())
}

pub async fn alarms_get(c: &Client, name: &str) -> Result<()> {
    let v = c.get(&format!("/v1/alarms/{name}")).await?;
    c.print(&v, |a| {
        let mut out = format!("alarm {}: {}\n  {}", s(a, "/name"), s(a, "/state"), s(a, "/stateReason"));
        for h in a["history"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n  {}  {} -> {}", s(h, "/time"), s(h, "/from"), s(h, "/to")));
        }
        out
    });
    Ok(())
}

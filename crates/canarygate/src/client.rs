//! The CLI side: a small admin API client and the commands that use it.

use anyhow::{anyhow, bail, Context, Result};
use canarygate_model::config::{plan, Action, PlanMode};
use canarygate_model::state::ApiState;
use canarygate_model::{Api, Deployment, Domain, PatchOperation, Stage, State};
use reqwest::Method;
use serde_json::{json, Value};

/// Text for people, JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    pub output: Output,
}

impl Client {
    pub fn new(server: &str, token: Option<String>, output: Output) -> Client {
        Client {
            base: server.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
            output,
        }
    }

    /// Calls the admin API; an error reply becomes an error carrying its code and message.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the admin API's reply")?;
        let v: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("Error");
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_string);
            bail!("{method} {path}: {} {code}: {msg}", status.as_u16());
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Prints a reply: as JSON, or with `text` for people.
    pub fn print(&self, v: &Value, text: impl FnOnce(&Value) -> String) {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Output::Text => println!("{}", text(v)),
        }
    }
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

pub fn stage_text(v: &Value) -> String {
    let mut out = format!(
        "stage {}/{}\n  deployment: {}\n  variables: {}\n  cache: {}",
        s(v, "/api"),
        s(v, "/name"),
        s(v, "/deploymentId"),
        s(v, "/variables"),
        s(v, "/cache")
    );
    match v.get("canarySettings") {
        Some(c) if !c.is_null() => out.push_str(&format!(
            "\n  canary: {}% on {}, overrides {}, useStageCache {}",
            s(c, "/percentTraffic"),
            s(c, "/deploymentId"),
            s(c, "/stageVariableOverrides"),
            s(c, "/useStageCache")
        )),
        _ => out.push_str("\n  canary: none"),
    }
    if let Some(r) = v.get("activeRollout").filter(|r| !r.is_null()) {
        out.push_str(&format!("\n  active rollout: {r}"));
    }
    out
}

pub async fn apis_list(c: &Client) -> Result<()> {
    let v = c.get("/v1/apis").await?;
    c.print(&v, |v| {
        let mut lines = vec![format!("{:<24} {:>7} {:<12} STAGES", "API", "ROUTES", "DEPLOYMENT")];
        for a in v["items"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{:<24} {:>7} {:<12} {}",
                s(a, "/name"),
                a["routes"].as_array().map_or(0, Vec::len),
                s(a, "/latestDeploymentId"),
                a["stages"]
                    .as_array()
                    .map(|x| x.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            ));
        }
        lines.join("\n")
    });
    Ok(())
}

pub async fn apis_get(c: &Client, api: &str) -> Result<()> {
    let v = c.get(&format!("/v1/apis/{api}")).await?;
    c.print(&v, |v| {
        let mut lines = vec![format!("api {} (latest deployment {})", s(v, "/name"), s(v, "/latestDeploymentId"))];
        for r in v["routes"].as_array().into_iter().flatten() {
            lines.push(format!("  {:<7} {:<32} {}", s(r, "/method"), s(r, "/path"), r["integration"]));
        }
        lines.join("\n")
    });
    Ok(())
}

pub async fn deployments_create(c: &Client, api: &str, description: &str) -> Result<()> {
    let v = c
        .call(
            Method::POST,
            &format!("/v1/apis/{api}/deployments"),
            Some(json!({"description": description})),
        )
        .await?;
    c.print(&v, |v| format!("created deployment {}", s(v, "/id")));
    Ok(())
}

pub async fn deployments_list(c: &Client, api: &str) -> Result<()> {
    let v = c.get(&format!("/v1/apis/{api}/deployments")).await?;
    c.print(&v, |v| {
        let mut lines = vec![format!("{:<12} {:<26} DESCRIPTION", "ID", "CREATED")];
        for d in v["items"].as_array().into_iter().flatten() {
            lines.push(format!("{:<12} {:<26} {}", s(d, "/id"), s(d, "/createdAt"), s(d, "/description")));
        }
        lines.join("\n")
    });
    Ok(())
}

pub async fn stage_call(c: &Client, method: Method, path: String, body: Option<Value>) -> Result<()> {
    let v = c.call(method, &path, body).await?;
    c.print(&v, stage_text);
    Ok(())
}

/// Builds patch operations from `--set PATH=VALUE`, `--remove PATH` and `--percent P`.
pub fn update_ops(set: &[String], remove: &[String], percent: Option<String>) -> Result<Vec<PatchOperation>> {
    let mut ops = Vec::new();
    if let Some(p) = percent {
        ops.push(PatchOperation::replace("/canarySettings/percentTraffic", p));
    }
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {kv:?}: expected PATH=VALUE, e.g. /variables/backend=10.0.0.7:8080"))?;
        ops.push(PatchOperation::replace(k, v));
    }
    ops.extend(remove.iter().map(PatchOperation::remove));
    if ops.is_empty() {
        bail!("nothing to update: give --percent, --set PATH=VALUE or --remove PATH");
    }
    Ok(ops)
}

/// Reads the server's state into a model `State` (routes, newest deployment, stages, domains).
async fn remote_state(c: &Client) -> Result<State> {
    let mut state = State::default();
    let apis = c.get("/v1/apis").await?;
    for a in apis["items"].as_array().into_iter().flatten() {
        let name = s(a, "/name");
        let api: Api = serde_json::from_value(json!({
            "name": name, "routes": a["routes"], "createdAt": a["createdAt"], "updatedAt": a["updatedAt"]
        }))?;
        let mut deployments = Vec::new();
        if let Some(id) = a["latestDeploymentId"].as_str() {
            let d: Deployment = serde_json::from_value(c.get(&format!("/v1/apis/{name}/deployments/{id}")).await?)?;
            deployments.push(d);
        }
        let stages_v = c.get(&format!("/v1/apis/{name}/stages")).await?;
        let mut stages = std::collections::BTreeMap::new();
        for st in stages_v["items"].as_array().into_iter().flatten() {
            let st: Stage = serde_json::from_value(st.clone())?;
            stages.insert(st.name.clone(), st);
        }
        state.apis.insert(name, ApiState { api, deployments, stages });
    }
    let alarms = c.get("/v1/alarms").await?;
    for a in alarms["items"].as_array().into_iter().flatten() {
        let mut def = a.clone();
        if let Some(o) = def.as_object_mut() {
            for k in ["state", "stateReason", "datapoints", "stateUpdatedAt", "history"] {
                o.remove(k);
            }
        }
        let alarm: canarygate_model::alarm::Alarm = serde_json::from_value(def)?;
        let entry = canarygate_model::state::AlarmEntry {
            alarm,
            status: Default::default(),
        };
        state.alarms.insert(entry.alarm.name.clone(), entry);
    }
    let configs = c.get("/v1/deployment-configs").await?;
    for d in configs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["predefined"] != true)
    {
        let mut cfg: canarygate_model::deployment_config::DeploymentConfig = serde_json::from_value(d.clone())?;
        cfg.predefined = false;
        state.deployment_configs.insert(cfg.name.clone(), cfg);
    }
    let notifications = c.get("/v1/notifications").await?;
    for n in notifications["items"].as_array().into_iter().flatten() {
        let events = serde_json::from_value(n["events"].clone())?;
        let url = n["url"].as_str().unwrap_or_default().to_string();
        let name = n["name"].as_str().unwrap_or_default().to_string();
        // The secret is never shown: a placeholder says there is one.
        let secret = (n["signed"] == true).then(|| "(set)".to_string());
        state.notifications.insert(
            name.clone(),
            canarygate_model::notification::Notification { name, url, events, secret },
        );
    }
    let analyses = c.get("/v1/analyses").await?;
    for a in analyses["items"].as_array().into_iter().flatten() {
        let a: canarygate_model::analysis::AnalysisSpec = serde_json::from_value(a.clone())?;
        state.analyses.insert(a.name.clone().unwrap_or_default(), a);
    }
    let domains = c.get("/v1/domains").await?;
    for d in domains["items"].as_array().into_iter().flatten() {
        let d: Domain = serde_json::from_value(d.clone())?;
        state.domains.insert(d.domain.clone(), d);
    }
    Ok(state)
}

/// `apply -f`: makes the server match the file; prints each change; `--dry-run` changes nothing.
pub async fn apply(c: &Client, file: &std::path::Path, dry_run: bool) -> Result<()> {
    let cfg = crate::config::load(file)?;
    let current = remote_state(c).await?;
    let actions = plan(&current, &cfg.resources(), PlanMode::Converge);
    let mut done = Vec::new();
    for a in &actions {
        let line = if dry_run { format!("would {a}") } else { a.to_string() };
        if !dry_run {
            execute(c, a).await.with_context(|| format!("while applying: {a}"))?;
        }
        if c.output == Output::Text {
            println!("{line}");
        }
        done.push(line);
    }
    match c.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json!({"dryRun": dry_run, "changes": done}))?),
        Output::Text if actions.is_empty() => println!("no changes"),
        Output::Text => {}
    }
    Ok(())
}

async fn execute(c: &Client, a: &Action) -> Result<()> {
    match a {
        Action::PutApi { api, routes, .. } => {
            c.call(Method::PUT, &format!("/v1/apis/{api}"), Some(json!({"routes": routes})))
                .await?
        }
        Action::CreateDeployment { api, description } => {
            c.call(
                Method::POST,
                &format!("/v1/apis/{api}/deployments"),
                Some(json!({"description": description})),
            )
            .await?
        }
        Action::CreateStage { api, stage, input } => {
            c.call(
                Method::PUT,
                &format!("/v1/apis/{api}/stages/{stage}"),
                Some(serde_json::to_value(input)?),
            )
            .await?
        }
        Action::PatchStage { api, stage, ops } => {
            c.call(
                Method::PATCH,
                &format!("/v1/apis/{api}/stages/{stage}"),
                Some(json!({"patchOperations": ops})),
            )
            .await?
        }
        Action::PutDomain { domain, mappings } => {
            c.call(Method::PUT, &format!("/v1/domains/{domain}"), Some(json!({"mappings": mappings})))
                .await?
        }
        Action::PutDeploymentConfig(cfg) => {
            c.call(
                Method::PUT,
                &format!("/v1/deployment-configs/{}", cfg.name),
                Some(serde_json::to_value(cfg)?),
            )
            .await?
        }
        Action::PutAlarm(a) => {
            c.call(Method::PUT, &format!("/v1/alarms/{}", a.name), Some(serde_json::to_value(a)?))
                .await?
        }
        Action::PutNotification(n) => {
            c.call(
                Method::PUT,
                &format!("/v1/notifications/{}", n.name),
                Some(serde_json::to_value(n)?),
            )
            .await?
        }
        Action::PutAnalysis(a) => {
            let name = a.name.clone().unwrap_or_default();
            let mut body = a.clone();
            body.name = None;
            c.call(Method::PUT, &format!("/v1/analyses/{name}"), Some(serde_json::to_value(body)?))
                .await?
        }
    };
    Ok(())
}

//! The CLI side: a small admin API client and the commands that use it.

use anyhow::{anyhow, bail, Context, Result};
use canarygate_model::PatchOperation;
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

pub async fn cluster(c: &Client) -> Result<()> {
    let v = c.get("/v1/cluster").await?;
    c.print(&v, |v| {
        let leader = v["leader"].as_str().unwrap_or("");
        let mut lines = vec![format!(
            "{:<24} {:>8} {:>10} {:<8} {:<7} ADDRESSES",
            "REPLICA", "VERSION", "HEARTBEAT", "BINARY", "ROLE"
        )];
        for r in v["replicas"].as_array().into_iter().flatten() {
            let name = s(r, "/name");
            lines.push(format!(
                "{:<24} {:>8} {:>10} {:<8} {:<7} {}",
                name,
                r["configVersion"].as_u64().unwrap_or(0),
                r["heartbeatAgeSeconds"]
                    .as_f64()
                    .map_or("-".to_string(), |a| format!("{a:.1} s ago")),
                s(r, "/binaryVersion"),
                if name == leader { "leader" } else { "" },
                s(r, "/addresses"),
            ));
        }
        if leader.is_empty() {
            lines.push("no replica holds the controller lease now".into());
        }
        lines.join("\n")
    });
    Ok(())
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

/// `apply -f`: makes the server match the file; prints each change; `--dry-run` changes nothing.
pub async fn apply(c: &Client, file: &std::path::Path, dry_run: bool) -> Result<()> {
    let cfg = crate::config::load(file)?;
    // The server plans and applies the whole file in one change (all or nothing, published once).
    let path = if dry_run { "/v1/apply?dryRun=true" } else { "/v1/apply" };
    let r = c.call(Method::POST, path, Some(serde_json::to_value(cfg.resources())?)).await?;
    let changes: Vec<String> = r["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .map(|a| if dry_run { format!("would {a}") } else { a })
        .collect();
    match c.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json!({"dryRun": dry_run, "changes": changes}))?),
        Output::Text if changes.is_empty() => println!("no changes"),
        Output::Text => {
            for line in &changes {
                println!("{line}");
            }
        }
    }
    Ok(())
}

//! The config file: a `server` section (each key also a flag of `serve`) and the declared resources.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use canarygate_model::config::{ApiSpec, DomainSpec, Resources};
use serde::Deserialize;

/// An admin token: a plain string is an admin token; `{name, token, readOnly: true}` may only read.
/// The name (default `admin-token-<n>`, n its place in the list from 1) is what events record, e.g.
/// who approved a rollout's step; the token itself is never recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    Admin(String),
    Detailed {
        #[serde(default)]
        name: Option<String>,
        token: String,
        #[serde(default, rename = "readOnly")]
        read_only: bool,
    },
}

/// Where the access logs go and how they rotate.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_log_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn yes() -> bool {
    true
}
fn default_log_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_keep() -> usize {
    5
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            enabled: true,
            max_bytes: default_log_bytes(),
            keep: default_keep(),
        }
    }
}

/// The `server` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<SocketAddr>,
    /// TLS listener (HTTP/1.1 over TLS 1.2/1.3); needs `tls`.
    pub tls_listen: Option<SocketAddr>,
    /// The server's certificate and key (PEM files), served unless a domain's own matches the SNI.
    pub tls: Option<canarygate_model::state::TlsFiles>,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    /// This replica's name in `GET /v1/cluster` and as the controller lease's holder (default:
    /// hostname and gateway port). Must differ between replicas of one database.
    pub replica_name: Option<String>,
    /// The controller lease's length, seconds (default 10, 2..300): a dead leader is replaced within
    /// it plus 2 s.
    pub lease_seconds: Option<u64>,
    #[serde(default)]
    pub admin_tokens: Vec<TokenSpec>,
    /// With tokens configured, reads of the admin API need a token too (read-only or admin); `false`
    /// opens them on purpose (default true).
    pub read_requires_token: Option<bool>,
    /// Without tokens, `Host` names the admin API answers besides loopback ones (for a proxy in front
    /// on the same machine).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// Web origins (`https://ops.example`) besides the admin API's own whose pages may make
    /// state-changing calls; every other cross-site write is refused (tokens or not).
    #[serde(default)]
    pub admin_origins: Vec<String>,
    /// Client connections open at once; past it a new one takes the place of the oldest idle one, or
    /// is closed at once (default: half the open-file limit left after 256).
    pub max_connections: Option<usize>,
    /// Connections the admin listener serves at once; a new one past it is closed (default 256).
    pub admin_max_connections: Option<usize>,
    /// Largest request body the gateway accepts, bytes (default 10 MiB).
    pub max_body_bytes: Option<u64>,
    /// Largest request head, bytes (default 64 KiB).
    pub max_header_bytes: Option<usize>,
    /// Longest request line, bytes (default 8 KiB); longer gets 414.
    pub max_request_line_bytes: Option<usize>,
    /// Longest header field, bytes (default 8 KiB); longer gets 431.
    pub max_header_field_bytes: Option<usize>,
    /// Seconds a client may pause while sending a request body (default 60); then 408.
    pub body_read_timeout_seconds: Option<u64>,
    /// Seconds a client has to send its request head (default 10).
    pub header_read_timeout_seconds: Option<u64>,
    /// Seconds a WebSocket (or other upgraded) connection may carry nothing either way before it is
    /// closed (default 300).
    pub upgrade_idle_timeout_seconds: Option<u64>,
    /// Data-plane worker threads, each a single-threaded runtime with its own accept loop and upstream
    /// pool (default: one per core). `CANARYGATE_GATEWAY_WORKERS` overrides it.
    pub workers: Option<usize>,
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// OpenTelemetry tracing; off without `otlpEndpoint`.
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// HTTP/2 connections' limits.
    #[serde(default)]
    pub http2: Http2Section,
    /// The admin API's address as users reach it (`https://canarygate.example.com`): chat
    /// notifications link to the dashboard there.
    pub public_url: Option<String>,
    /// The AWS-compatible endpoints' listener (API Gateway, CodeDeploy, CloudWatch); off unless set.
    pub aws_listen: Option<SocketAddr>,
    /// The region AWS clients sign for (default `us-east-1`).
    pub aws_region: Option<String>,
    /// The keys that may sign AWS calls (Signature Version 4).
    #[serde(default)]
    pub aws_credentials: Vec<AwsCredentialSpec>,
}

/// One AWS key: its id, where its secret is read from, and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsCredentialSpec {
    pub name: String,
    pub access_key_id: String,
    /// The environment variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// A file holding the secret access key (one line).
    pub secret_access_key_file: Option<PathBuf>,
    pub role: AwsRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AwsRole {
    Admin,
    Read,
}

/// HTTP/2 limits (client side); each has a default.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2Section {
    /// Streams a client may have open at once (default 128).
    pub max_concurrent_streams: Option<u32>,
    /// Largest header list a client may send, bytes (default 65536).
    pub max_header_list_bytes: Option<u32>,
    /// Each stream's flow-control window, bytes (default 262144).
    pub stream_window_bytes: Option<u32>,
    /// The connection's flow-control window, bytes (default 1048576).
    pub connection_window_bytes: Option<u32>,
    /// Response bytes a stream may hold waiting for the client's window (default 65536).
    pub send_buffer_bytes: Option<u32>,
    /// Seconds a connection may have no open stream before it is closed with GOAWAY (default 60).
    pub idle_timeout_seconds: Option<u64>,
    /// Seconds a header block (HEADERS and CONTINUATION) may take (default: headerReadTimeoutSeconds).
    pub head_timeout_seconds: Option<u64>,
    /// Seconds a stream may get no window from its client, or have no bytes taken, before it is reset
    /// (default 60).
    pub send_timeout_seconds: Option<u64>,
}

/// Tracing: where spans go (OTLP/HTTP) and which requests are sampled.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySection {
    /// The collector's OTLP/HTTP endpoint (`http://collector:4318`, `/v1/traces` added; or the full
    /// traces URL). Tracing is off without it.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1 (default 1); a request with a parent follows its flag.
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans (default `canarygate`).
    pub service_name: Option<String>,
}

/// The whole file: `server`, `apis`, and the entries of every declared kind of named record (`domains`,
/// `deploymentConfigs`, `alarms`, `notifications`, `analyses`: the keys come from the model's registry).
/// Those are gathered by `flatten`, which makes serde ignore `deny_unknown_fields`; [`parse`] refuses a
/// key that is no kind (a misspelt `sever:` too), naming it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub apis: Vec<ApiSpec>,
    #[serde(flatten)]
    pub named: BTreeMap<String, serde_json::Value>,
}

impl ConfigFile {
    pub fn resources(&self) -> Resources {
        Resources {
            apis: self.apis.clone(),
            named: self.named.clone(),
        }
    }

    /// The declared domains (for their certificates).
    pub fn domains(&self) -> Vec<DomainSpec> {
        let domains = self.named.get("domains").cloned().unwrap_or_default();
        // Read by `parse` already, as `Resources::check` reads them.
        serde_json::from_value(domains).unwrap_or_default()
    }
}

pub fn load(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid config file {}", path.display()))
}

pub fn parse(text: &str) -> Result<ConfigFile> {
    let de = serde_norway::Deserializer::from_str(text);
    let cfg: ConfigFile = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let path = e.path().to_string();
            bail!("{path}: {}", e.into_inner())
        }
    };
    cfg.resources().check()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example() {
        let cfg = parse(include_str!("../../../examples/quickstart.yaml")).unwrap();
        assert_eq!(cfg.apis[0].name, "orders");
        assert!(!cfg.apis[0].stages.is_empty());
    }

    #[test]
    fn a_resource_declared_twice_is_refused() {
        let e = parse("apis:\n  - name: a\n  - name: a\n").unwrap_err().to_string();
        assert!(e.contains("apis[1].name") && e.contains("second time"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("server:\n  listen: nope\n").unwrap_err().to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = parse("apis:\n  - name: a\n    routes:\n      - path: /x\n        integration: {type: mock, stauts: 200}\n").unwrap_err();
        assert!(format!("{e:#}").contains("stauts"), "{e:#}");
        let e = parse("apis:\n  - name: a\n    stages:\n      - name: prod\n        varibles: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("varibles"), "{e}");
        let e = parse("bogus: 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("sever:\n  listen: 127.0.0.1:1\n").unwrap_err().to_string();
        assert!(e.starts_with("sever: is no kind of resource"), "{e}");
        // An entry of a named kind: read on its own, the field named under its place in the file.
        let e = parse("alarms:\n  - name: a\n    threshhold: 1\n").unwrap_err().to_string();
        assert!(e.starts_with("alarms[0].threshhold: unknown field `threshhold`"), "{e}");
        let e = parse("deploymentConfigs:\n  - name: a\n    percentage: lots\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("deploymentConfigs[0].percentage: invalid type"), "{e}");
        let e = parse("analyses: {}\n").unwrap_err().to_string();
        assert!(e.starts_with("analyses: must be a list"), "{e}");
    }
}

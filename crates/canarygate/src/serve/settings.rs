//! A config file and `serve`'s flags made into the process's settings, checked before anything is
//! touched: listeners, store, tokens, limits, the AWS endpoints; every problem names its field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use canarygate_admin::{Role, Token};
use canarygate_gateway::Limits;

use super::ServeArgs;
use crate::config::{ConfigFile, TokenSpec};

/// The admin tokens of the config file, named.
fn tokens(cfg: &ConfigFile) -> Vec<Token> {
    let mut out: Vec<Token> = cfg
        .server
        .admin_tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            TokenSpec::Admin(t) => Token {
                token: t.clone(),
                role: Role::Admin,
                name: format!("admin-token-{}", i + 1),
            },
            TokenSpec::Detailed { name, token, read_only } => Token {
                token: token.clone(),
                role: if *read_only { Role::ReadOnly } else { Role::Admin },
                name: name.clone().unwrap_or_else(|| format!("admin-token-{}", i + 1)),
            },
        })
        .collect();
    if let Ok(t) = std::env::var("CANARYGATE_ADMIN_TOKEN") {
        out.extend(t.split(',').enumerate().map(|(i, t)| Token {
            token: t.trim().to_string(),
            role: Role::Admin,
            name: format!("env-token-{}", i + 1),
        }));
    }
    out.retain(|t| !t.token.is_empty());
    out
}

/// This machine's host name.
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "canarygate".into())
}

/// A store URL with its password (if any) replaced by `***`, for messages.
pub(super) fn redact(url: &str) -> String {
    // A store URL may carry a password; never print it.
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Data-plane workers: `CANARYGATE_GATEWAY_WORKERS`, else `server.workers`, else one per core.
pub(super) fn gateway_workers(cfg: &ConfigFile) -> Result<usize> {
    let from_env = match std::env::var("CANARYGATE_GATEWAY_WORKERS") {
        Ok(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("CANARYGATE_GATEWAY_WORKERS must be a positive integer, got {v:?}"))?,
        ),
        Err(_) => None,
    };
    match from_env.or(cfg.server.workers) {
        Some(0) => bail!("server.workers must be at least 1, got 0"),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// What a config file and the flags make of the process, checked: no file, socket or store is
/// touched (`serve` starts from it; `check` stops at it).
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub store_kind: String,
    pub postgres: bool,
    pub tokens: Vec<Token>,
    pub limits: Limits,
    pub admin_limits: canarygate_admin::listener::ListenerLimits,
    pub lease_seconds: u64,
    /// The AWS endpoints' listener and settings, when `server.awsListen` is set.
    pub aws: Option<(SocketAddr, canarygate_admin::aws::AwsConfig)>,
}

/// The AWS endpoints' settings, secrets read: every problem names its field.
fn aws_settings(cfg: &ConfigFile) -> Result<Option<(SocketAddr, canarygate_admin::aws::AwsConfig)>> {
    use crate::config::AwsRole;
    let Some(listen) = cfg.server.aws_listen else {
        if !cfg.server.aws_credentials.is_empty() {
            bail!("server.awsCredentials: set server.awsListen too (the AWS endpoints are off without it)");
        }
        return Ok(None);
    };
    if cfg.server.aws_credentials.is_empty() {
        bail!("server.awsListen {listen}: needs server.awsCredentials (every AWS call is signed with one of them)");
    }
    let region = cfg.server.aws_region.clone().unwrap_or_else(|| "us-east-1".into());
    if region.is_empty() || region.len() > 32 || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("server.awsRegion {region:?}: not a region name (lowercase letters, digits and -, as us-east-1)");
    }
    let mut credentials = Vec::new();
    for (i, c) in cfg.server.aws_credentials.iter().enumerate() {
        let at = format!("server.awsCredentials[{i}]");
        if c.access_key_id.len() < 4 || c.access_key_id.len() > 128 || !c.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("{at}.accessKeyId {:?}: must be 4 to 128 letters and digits", c.access_key_id);
        }
        if credentials
            .iter()
            .any(|x: &canarygate_admin::aws::Credential| x.access_key_id == c.access_key_id)
        {
            bail!("{at}.accessKeyId {:?}: declared twice", c.access_key_id);
        }
        let secret = match (&c.secret_access_key_env, &c.secret_access_key_file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| anyhow::anyhow!("{at}.secretAccessKeyEnv: the environment variable {var} is not set"))?
            }
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("{at}.secretAccessKeyFile: cannot read {}", file.display()))?
                .trim()
                .to_string(),
            _ => bail!("{at}: give exactly one of secretAccessKeyEnv and secretAccessKeyFile"),
        };
        if secret.len() < 8 {
            bail!("{at}: the secret access key is shorter than 8 characters");
        }
        credentials.push(canarygate_admin::aws::Credential {
            name: c.name.clone(),
            access_key_id: c.access_key_id.clone(),
            secret,
            role: match c.role {
                AwsRole::Admin => Role::Admin,
                AwsRole::Read => Role::ReadOnly,
            },
        });
    }
    Ok(Some((listen, canarygate_admin::aws::AwsConfig { region, credentials })))
}

/// The settings of `cfg` with `args` winning, for a process allowed `open_files` descriptors; an error
/// names the field and value at fault.
pub fn settings(cfg: &ConfigFile, args: &ServeArgs, open_files: u64) -> Result<Settings> {
    let listen = args
        .listen
        .or(cfg.server.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid"));
    let admin_listen = args
        .admin_listen
        .or(cfg.server.admin_listen)
        .unwrap_or_else(|| "127.0.0.1:9090".parse().expect("valid"));
    let data_dir = args
        .data_dir
        .clone()
        .or(cfg.server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./canarygate-data"));
    let store_kind = args.store.clone().or(cfg.server.store.clone()).unwrap_or_else(|| "sqlite".into());
    let tokens = tokens(cfg);
    if tokens.is_empty() && !admin_listen.ip().is_loopback() {
        bail!(
            "refusing to start: the admin listener {admin_listen} is not a loopback address and no admin token is configured; \
             set CANARYGATE_ADMIN_TOKEN or server.adminTokens, or listen on 127.0.0.1"
        );
    }
    let postgres = store_kind.starts_with("postgres://") || store_kind.starts_with("postgresql://");
    if store_kind != "sqlite" && !postgres {
        bail!(
            "server.store {:?}: not a store (use sqlite, or a postgres://user:password@host:port/database URL)",
            redact(&store_kind)
        );
    }
    let max_connections = match cfg.server.max_connections {
        None => connections_for(open_files),
        Some(n) if n >= 1 => n,
        Some(n) => bail!("server.maxConnections: {n} must be at least 1"),
    };
    let defaults = Limits::default();
    let limits = Limits {
        max_connections,
        max_header_bytes: cfg.server.max_header_bytes.unwrap_or(defaults.max_header_bytes),
        max_request_line: cfg.server.max_request_line_bytes.unwrap_or(defaults.max_request_line),
        max_field_bytes: cfg.server.max_header_field_bytes.unwrap_or(defaults.max_field_bytes),
        max_body_bytes: cfg.server.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        header_read_timeout: cfg
            .server
            .header_read_timeout_seconds
            .map_or(defaults.header_read_timeout, Duration::from_secs),
        body_read_timeout: cfg
            .server
            .body_read_timeout_seconds
            .map_or(defaults.body_read_timeout, Duration::from_secs),
        http2: http2_limits(
            &cfg.server.http2,
            cfg.server
                .header_read_timeout_seconds
                .map_or(defaults.header_read_timeout, Duration::from_secs),
        )?,
        upgrade_idle_timeout: match cfg.server.upgrade_idle_timeout_seconds {
            None => defaults.upgrade_idle_timeout,
            Some(s @ 1..=86_400) => Duration::from_secs(s),
            Some(s) => bail!("server.upgradeIdleTimeoutSeconds: {s} is not a number of seconds from 1 to 86400"),
        },
    };
    if let Some(u) = &cfg.server.public_url {
        let ok = (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= 2048 && !u.contains(char::is_whitespace);
        if !ok {
            bail!("server.publicUrl {u:?}: not an http:// or https:// URL (the admin API's address as users reach it)");
        }
    }
    let lease_seconds = match cfg.server.lease_seconds {
        None => 10,
        Some(s @ 2..=300) => s,
        Some(s) => bail!("server.leaseSeconds: {s} is not a number of seconds from 2 to 300"),
    };
    let admin_limits = canarygate_admin::listener::ListenerLimits {
        head_timeout: limits.header_read_timeout,
        body_timeout: limits.body_read_timeout,
        max_connections: match cfg.server.admin_max_connections {
            None => canarygate_admin::listener::ListenerLimits::default().max_connections,
            Some(n) if n >= 1 => n,
            Some(n) => bail!("server.adminMaxConnections: {n} must be at least 1"),
        },
    };
    let tls_listen = args.tls_listen.or(cfg.server.tls_listen);
    if let Some(addr) = tls_listen {
        let Some(files) = &cfg.server.tls else {
            bail!("server.tlsListen {addr}: needs server.tls {{certFile, keyFile}}, the certificate served by default");
        };
        files.check("server.tls").map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let aws = aws_settings(cfg)?;
    Ok(Settings {
        listen,
        admin_listen,
        tls_listen,
        data_dir,
        store_kind,
        postgres,
        tokens,
        limits,
        admin_limits,
        lease_seconds,
        aws,
    })
}

/// Raises the open-file soft limit to the hard limit (at most what the kernel allows a process,
/// `fs.nr_open`), logging both; returns the limit now in force.
pub(super) fn raise_open_files() -> u64 {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            return 1024;
        }
    };
    let kernel = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    match rlimit::increase_nofile_limit(hard.min(kernel)) {
        Ok(now) => {
            tracing::info!(soft_before = soft, hard, now, "open-file limit");
            now
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Descriptors kept for everything but client connections: the store, the admin API, access logs,
/// certificates, the upstream pools' idle connections.
const RESERVED_FILES: u64 = 256;

/// The default `server.maxConnections` for an open-file limit: each client connection may hold an
/// upstream connection too, so half of what is left after [`RESERVED_FILES`], at least 64.
fn connections_for(open_files: u64) -> usize {
    (open_files.saturating_sub(RESERVED_FILES) / 2).max(64) as usize
}

/// `server.http2`, checked against what HTTP/2 allows (RFC 9113 §6.5.2, §6.9.2).
fn http2_limits(h: &crate::config::Http2Section, head_timeout: Duration) -> Result<canarygate_gateway::Http2Limits> {
    let d = canarygate_gateway::Http2Limits::default();
    let seconds = |field: &str, v: Option<u64>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(n @ 1..=86_400) => Ok(Duration::from_secs(n)),
            Some(n) => bail!("server.http2.{field}: {n} is not a number of seconds from 1 to 86400"),
        }
    };
    let send_buffer = match h.send_buffer_bytes {
        None => d.send_buffer_bytes,
        Some(n @ 1024..=16_777_216) => n,
        Some(n) => bail!("server.http2.sendBufferBytes: {n} is not from 1024 to 16777216"),
    };
    let window = |field: &str, v: Option<u32>, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) if (65_535..=2_147_483_647).contains(&n) => Ok(n),
            Some(n) => bail!("server.http2.{field}: {n} is not from 65535 to 2147483647"),
        }
    };
    let streams = match h.max_concurrent_streams {
        None => d.max_concurrent_streams,
        Some(n) if n >= 1 => n,
        Some(n) => bail!("server.http2.maxConcurrentStreams: {n} must be at least 1"),
    };
    let header_list = match h.max_header_list_bytes {
        None => d.max_header_list_bytes,
        Some(n) if n >= 1024 => n,
        Some(n) => bail!("server.http2.maxHeaderListBytes: {n} must be at least 1024"),
    };
    Ok(canarygate_gateway::Http2Limits {
        max_concurrent_streams: streams,
        max_header_list_bytes: header_list,
        stream_window: window("streamWindowBytes", h.stream_window_bytes, d.stream_window)?,
        connection_window: window("connectionWindowBytes", h.connection_window_bytes, d.connection_window)?,
        send_buffer_bytes: send_buffer,
        idle_timeout: seconds("idleTimeoutSeconds", h.idle_timeout_seconds, d.idle_timeout)?,
        head_timeout: seconds("headTimeoutSeconds", h.head_timeout_seconds, head_timeout)?,
        send_timeout: seconds("sendTimeoutSeconds", h.send_timeout_seconds, d.send_timeout)?,
    })
}

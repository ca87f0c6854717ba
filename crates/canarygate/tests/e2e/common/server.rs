//! The real `canarygate serve` on free loopback ports, its CLI, and the admin API as a client calls it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::postgres::postgres;

/// A running `canarygate serve`.
pub struct Server {
    pub child: Child,
    pub gateway: String,
    /// The TLS listener (`https://...`), when the config has one.
    pub tls: Option<String>,
    pub admin: String,
    /// The AWS endpoints (`http://...`), when the config has `server.awsListen`.
    pub aws: Option<String>,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
    /// The admin token it was started with (`CANARYGATE_ADMIN_TOKEN`), which [`admin`] presents.
    pub token: Option<String>,
}

impl Server {
    /// Starts the binary with its own data dir, on free ports, and waits until both listeners are up.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_open_files(data_dir, extra, env, None)
    }

    /// As [`Server::start`], with the open-file limit (soft and hard) set to `open_files` first, as
    /// `ulimit -n` would (through util-linux's `prlimit`).
    pub fn start_with_open_files(data_dir: &Path, extra: &[&str], env: &[(&str, &str)], open_files: Option<u64>) -> Server {
        Server::launch(Path::new(env!("CARGO_BIN_EXE_canarygate")), data_dir, extra, env, open_files)
    }

    /// As [`Server::start`], with this binary (a packaged one, say).
    pub fn launch(bin: &Path, data_dir: &Path, extra: &[&str], env: &[(&str, &str)], open_files: Option<u64>) -> Server {
        let stderr_log = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut cmd = match open_files {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(store_args(data_dir, extra))
            .env_remove("CANARYGATE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start canarygate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut gateway, mut admin, mut tls, mut aws) = (None, None, None, None);
        while gateway.is_none() || admin.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("canarygate exited before listening:\n{err}");
            };
            if let Some(a) = line.strip_prefix("canarygate: gateway (TLS) listening on ") {
                tls = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("canarygate: gateway listening on ") {
                gateway = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("canarygate: AWS endpoints listening on ") {
                aws = Some(a.to_string());
            } else if let Some(a) = line.strip_prefix("canarygate: admin listening on ") {
                admin = Some(a.to_string());
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            gateway: gateway.unwrap(),
            tls,
            admin: admin.unwrap(),
            aws,
            data_dir: data_dir.to_path_buf(),
            stderr_log,
            token: env
                .iter()
                .find(|(k, _)| *k == "CANARYGATE_ADMIN_TOKEN")
                .map(|(_, v)| v.split(',').next().unwrap_or_default().to_string()),
        }
    }

    /// Waits until `/readyz` answers 200 (its workers run a moment after the listeners are printed):
    /// the answer.
    pub async fn ready(&self) -> reqwest::Response {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = client().get(format!("{}/readyz", self.admin)).send().await.unwrap();
            if r.status() == 200 {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "never ready: {}", r.status());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with this config file (written into `dir`) and its data in `dir/data`.
pub fn start_with_config(dir: &Path, yaml: &str) -> Server {
    let cfg = dir.join("canarygate.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    Server::start(&dir.join("data"), &["--config", cfg.to_str().unwrap()], &[])
}

/// With `CANARYGATE_TEST_STORE=postgres`, every server a test starts uses the test binary's PostgreSQL
/// server instead of SQLite (unless the test chose its store): a database per data dir, so a server
/// restarted on the same data dir finds its state again. scripts/test runs the stage, rule, restart and
/// rollout tests both ways.
fn store_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    if std::env::var("CANARYGATE_TEST_STORE").as_deref() != Ok("postgres") || extra.contains(&"--store") {
        return Vec::new();
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    vec!["--store".into(), postgres().database_named(&format!("dir_{:016x}", h.finish()))]
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the CLI against the server's admin API: (success, stdout, stderr).
pub fn cli(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .arg("--server")
        .arg(&s.admin)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        // Below the admin listener's 10 s keep-alive idle close: a connection idle that long is not
        // reused as the server closes it (a test that slept 10 s between two admin calls got a reset).
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Calls the admin API (with the server's admin token, if it has one) and returns status and JSON body.
pub async fn admin(c: &reqwest::Client, s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_with_token(c, s, method, path, body, s.token.as_deref()).await
}

pub async fn admin_with_token(
    c: &reqwest::Client,
    s: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = c.request(method.parse().unwrap(), format!("{}{path}", s.admin));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("admin call");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        },
    )
}

/// Calls the admin API and insists on a 2xx.
/// The sum over the last hour of `metric` for a variant of `orders/prod`, from `/v1/metrics`.
pub async fn v1_sum(c: &reqwest::Client, s: &Server, variant: &str, metric: &str) -> f64 {
    let q = format!("/v1/metrics?api=orders&stage=prod&variant={variant}&metric={metric}&statistic=Sum&periodSeconds=3600");
    let v = ok(c, s, "GET", &q, None).await;
    v["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["value"].as_f64().unwrap())
        .sum()
}

pub async fn ok(c: &reqwest::Client, s: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = admin(c, s, method, path, body).await;
    assert!((200..300).contains(&status), "{method} {path} -> {status}: {v}");
    v
}

/// The resident set of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

//! Shared parts of the end-to-end tests: the real `canarygate` binary started on free loopback ports,
//! real HTTP backends started in the test process, and a real HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

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

/// How a test backend behaves.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    Echo,
    /// Answers after this long.
    Slow(Duration),
    /// Answers 500 to `n` of every 10 calls (deterministically), as a broken new version would.
    FailTenths(usize),
}

/// A real HTTP backend in the test process. Answers JSON naming itself and echoing what it got.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub calls: Arc<AtomicUsize>,
    /// Per ten thousand calls answered 500 (deterministically spread), changeable while it runs.
    pub fail_per_10k: Arc<AtomicUsize>,
    /// Extra delay of every answer, in milliseconds, changeable while it runs.
    pub delay_ms: Arc<AtomicU64>,
    /// 500s it has answered (exposed, with its calls, at `GET /metrics` in Prometheus' text format).
    pub errors: Arc<AtomicUsize>,
    /// The most calls it has had in progress at once.
    pub peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts a call in progress until dropped, keeping the peak.
struct InFlight(Arc<(AtomicUsize, Arc<AtomicUsize>)>);

impl InFlight {
    fn new(state: &Arc<(AtomicUsize, Arc<AtomicUsize>)>) -> InFlight {
        let now = state.0.fetch_add(1, Ordering::SeqCst) + 1;
        state.1.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    pub async fn start(name: &str, behaviour: Behaviour) -> Backend {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fail_per_10k = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let flight = Arc::new((AtomicUsize::new(0), peak.clone()));
        let (n, c, fk, dm, er) = (
            name.to_string(),
            calls.clone(),
            fail_per_10k.clone(),
            delay_ms.clone(),
            errors.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (n, c, fk, dm, er, fl) = (n.clone(), c.clone(), fk.clone(), dm.clone(), er.clone(), flight.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (n, c, fk, dm, er) = (n.clone(), c.clone(), fk.clone(), dm.clone(), er.clone());
                        let in_flight = InFlight::new(&fl);
                        async move {
                            let _in_flight = in_flight;
                            if req.uri().path() == "/metrics" {
                                // The backend's own metrics, as a Prometheus server scrapes them.
                                let text = format!(
                                    "# TYPE app_requests_total counter\napp_requests_total{{backend=\"{n}\"}} {}\n\
                                     # TYPE app_errors_total counter\napp_errors_total{{backend=\"{n}\"}} {}\n",
                                    c.load(Ordering::SeqCst),
                                    er.load(Ordering::SeqCst)
                                );
                                return Ok(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text))));
                            }
                            let call = c.fetch_add(1, Ordering::SeqCst) + 1;
                            if let Behaviour::Slow(d) = behaviour {
                                tokio::time::sleep(d).await;
                            }
                            let extra = dm.load(Ordering::SeqCst);
                            if extra > 0 {
                                tokio::time::sleep(Duration::from_millis(extra)).await;
                            }
                            // Spread the failures evenly: call k fails when floor(k*f/10000) steps up.
                            let f = fk.load(Ordering::SeqCst);
                            let fail_now = f > 0 && (call * f / 10_000) != ((call - 1) * f / 10_000);
                            // Query parameters steer the answer: cc=<cache-control>, vary=<vary>, age=N, expired (a past
                            // Expires, with any value), cookie=1, delay_ms=N, pad=N.
                            let q: std::collections::HashMap<String, String> = req
                                .uri()
                                .query()
                                .unwrap_or("")
                                .split('&')
                                .filter_map(|kv| kv.split_once('='))
                                .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%3D", "=")))
                                .collect();
                            if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse().ok()) {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let headers: serde_json::Map<String, Value> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").to_string())))
                                .collect();
                            let (method, path, query) = (
                                req.method().clone(),
                                req.uri().path().to_string(),
                                req.uri().query().map(str::to_string),
                            );
                            // Like a real service, read the whole request body before answering.
                            let body_bytes = {
                                use http_body_util::BodyExt;
                                req.into_body().collect().await.map(|b| b.to_bytes().len()).ok()
                            };
                            let pad = "p".repeat(q.get("pad").and_then(|v| v.parse().ok()).unwrap_or(0));
                            let body = json!({
                                "backend": n, "call": call, "method": method.as_str(), "path": path,
                                "query": query, "headers": headers, "pad": pad, "bodyBytes": body_bytes,
                            });
                            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body.to_string())));
                            r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            if let Behaviour::FailTenths(n) = behaviour {
                                if call % 10 < n {
                                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                }
                            }
                            if fail_now || q.contains_key("fail") {
                                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            if r.status() == hyper::StatusCode::INTERNAL_SERVER_ERROR {
                                er.fetch_add(1, Ordering::SeqCst);
                            }
                            if let Some(cc) = q.get("cc") {
                                r.headers_mut().insert("cache-control", cc.parse().unwrap());
                            }
                            if let Some(v) = q.get("vary") {
                                r.headers_mut().insert("vary", v.parse().unwrap());
                            }
                            if let Some(v) = q.get("age") {
                                r.headers_mut().insert("age", v.parse().unwrap());
                            }
                            if q.contains_key("expired") {
                                r.headers_mut().insert("expires", "Thu, 01 Jan 2015 00:00:00 GMT".parse().unwrap());
                            }
                            if q.contains_key("cookie") {
                                r.headers_mut().insert("set-cookie", "session=abc".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            calls,
            fail_per_10k,
            delay_ms,
            errors,
            peak,
            task,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Fails this share of its calls from now on (0.01 is 1%).
    pub fn fail(&self, share: f64) {
        self.fail_per_10k.store((share * 10_000.0).round() as usize, Ordering::SeqCst);
    }

    /// Answers this much later from now on.
    pub fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

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

/// A real Prometheus server (Debian's `prometheus`), on a free loopback port, scraping `targets` every
/// second; killed on drop.
pub struct Prometheus {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: backends\n    static_configs: [{{targets: [{}]}}]\n", list.join(", ")),
        )
        .unwrap();
        let addr = closed_port();
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("prometheus not found: the test command (scripts/test) installs Debian's prometheus");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            url: format!("http://{addr}"),
            child,
            _dir: dir,
        };
        let c = client();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = c.get(format!("{}/-/ready", p.url)).send().await {
                if r.status() == 200 {
                    return p;
                }
            }
            assert!(std::time::Instant::now() < deadline, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant query now, if it returns one sample.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let v: Value = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA in `dir` and a way to issue leaf certificates for DNS names.
pub struct Ca {
    pub dir: PathBuf,
}

pub fn openssl(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=canarygate test CA",
                "-days",
                "2",
            ],
            dir,
        );
        Ca { dir: dir.to_path_buf() }
    }

    /// Issues `<file>.pem` and `<file>.key` for `name` (CN and subjectAltName), written in place
    /// (through a temporary file and a rename each, as a certificate manager does).
    pub fn issue(&self, file: &str, name: &str) -> (PathBuf, PathBuf) {
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(&ext, format!("subjectAltName=DNS:{name}\n")).unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{file}.key.new"),
                "-out",
                &format!("{file}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{file}.pem.new"),
                "-days",
                "2",
                "-extfile",
                &format!("{file}.ext"),
            ],
            &self.dir,
        );
        let (pem, key) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::rename(self.dir.join(format!("{file}.key.new")), &key).unwrap();
        std::fs::rename(self.dir.join(format!("{file}.pem.new")), &pem).unwrap();
        (pem, key)
    }
}

/// A real PostgreSQL server (Debian's `postgresql` package), one per test binary: `initdb` in a
/// temporary directory and `postgres` on a free loopback port, as the `postgres` user when the tests run
/// as root (initdb refuses root). It stops when the test process exits (a watcher shell waits for it).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    next_db: AtomicUsize,
    /// The shell that runs the server and stops it when we exit (it outlives us; never waited for).
    _watcher: Child,
}

static POSTGRES: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): scripts/test installs Debian's postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A fresh database cluster (`initdb`, owned by the postgres user) in a new temporary directory with
/// this `prefix`: the directory (its `data` inside).
fn initdb(bin: &Path, prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap().keep();
    let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The test binary's PostgreSQL server, started on first use.
pub fn postgres() -> &'static Postgres {
    POSTGRES.get_or_init(|| {
        let bin = postgres_bin();
        let dir = initdb(&bin, "canarygate-pg-");
        let data = dir.join("data");
        let port = closed_port().port();
        // The server stops when this test process does: a shell watches our pid (through /proc: as another
        // user it may not signal us).
        let script = format!(
            "{pg} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 >{dir}/postgres.log 2>&1 & pg=$!; \
             while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done; kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
            pg = bin.join("postgres").display(),
            data = data.display(),
            dir = dir.display(),
            parent = std::process::id(),
        );
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let mut sh = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        sh.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let watcher = sh.spawn().expect("start postgres");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Postgres {
            port,
            bin,
            next_db: AtomicUsize::new(0),
            _watcher: watcher,
        }
    })
}

impl Postgres {
    /// A new, empty database of its own for a test: its URL.
    pub fn database(&self) -> String {
        let name = format!("test_{}_{}", std::process::id(), self.next_db.fetch_add(1, Ordering::SeqCst));
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", &name])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The database `name`, created if it does not exist yet: its URL.
    pub fn database_named(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .expect("createdb");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("already exists"), "createdb: {err}");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL on a database (psql), returning its unaligned output.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        psql_with(&self.bin, url, sql)
    }
}

fn psql_with(bin: &Path, url: &str, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL server of a test's own (for a test that stops and starts it), run with `pg_ctl`;
/// stopped and removed when dropped.
pub struct OwnPostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        Self::start_with(|_| {})
    }

    /// A server that accepts only TLS connections over TCP (`hostssl`; plain ones are rejected),
    /// serving `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> OwnPostgres {
        Self::start_with(|data| {
            std::fs::copy(cert, data.join("server.crt")).unwrap();
            std::fs::copy(key, data.join("server.key")).unwrap();
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status();
            let _ = Command::new("chmod").arg("600").arg(data.join("server.key")).status();
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        })
    }

    /// Runs `setup` on the data directory after `initdb`, before the server starts.
    fn start_with(setup: impl FnOnce(&Path)) -> OwnPostgres {
        let bin = postgres_bin();
        let dir = initdb(&bin, "canarygate-pg-own-");
        setup(&dir.join("data"));
        let pg = OwnPostgres {
            port: closed_port().port(),
            bin,
            dir,
        };
        pg.up();
        let out = Command::new(pg.bin.join("createdb"))
            .env("PGSSLMODE", "prefer")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "canarygate"])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/canarygate", self.port)
    }

    /// Runs SQL on its database (psql, over TLS when the server offers it).
    pub fn psql(&self, sql: &str) -> String {
        psql_with(&self.bin, &format!("{}?sslmode=prefer", self.url()), sql)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("pg_ctl")
    }

    /// Starts the server (and waits until it accepts connections).
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let out = self.pg_ctl(&["-w", "-o", &opts, "-l", log.to_str().unwrap(), "start"]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server (fast: open connections are cut).
    pub fn down(&self) {
        let out = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

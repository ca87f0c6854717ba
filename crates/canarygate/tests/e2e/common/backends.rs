//! Real HTTP backends started in the test process: echo, slow or failing, counting their calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

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
        // 500s it has answered (exposed, with its calls, at `GET /metrics` in Prometheus' text format).
        let errors = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let flight = Arc::new((AtomicUsize::new(0), peak.clone()));
        let (n, c, fk, dm, er) = (name.to_string(), calls.clone(), fail_per_10k.clone(), delay_ms.clone(), errors);
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

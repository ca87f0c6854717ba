//! WebSocket through the gateway (PRODUCT.md §11), with a real WebSocket client and real WebSocket
//! servers (`tokio-tungstenite`): the handshake is routed like any request (the variant header forces
//! the canary), the 101 is counted as a request of its variant and written to the access log, 1 MB of
//! messages goes each way intact, `canarygate_open_connections` counts the relayed connection while it
//! is open, and the connection ends on the client's close, on the server's close, and after the idle
//! timeout. `Upgrade: h2c` is ignored: the request is served over HTTP/1.1, never switched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that greets with its name, echoes every message, and closes when asked to
/// (a text message `close, please`).
struct WsBackend {
    addr: SocketAddr,
    /// TCP connections accepted (a request that reached it, WebSocket or not).
    accepted: Arc<AtomicUsize>,
    /// WebSocket sessions that ended (closed by either side, or the connection lost).
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsBackend {
    async fn start(name: &'static str) -> WsBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                        let _ = ws.send(Message::text(format!("hello from {name}"))).await;
                        while let Some(Ok(m)) = ws.next().await {
                            match m {
                                Message::Text(t) if t.as_str() == "close, please" => {
                                    let _ = ws.close(None).await;
                                }
                                m @ (Message::Text(_) | Message::Binary(_)) if ws.send(m.clone()).await.is_err() => break,
                                _ => {}
                            }
                        }
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        WsBackend {
            addr,
            accepted,
            ended,
            task,
        }
    }

    async fn wait_ended(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ended.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{} sessions ended, want {n}",
                self.ended.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket through the gateway; the variant that answered the handshake.
async fn open(gateway: &str, force: Option<&str>) -> (Ws, String) {
    let mut req = format!("ws://{}/orders/prod/chat", gateway.trim_start_matches("http://"))
        .into_client_request()
        .unwrap();
    if let Some(v) = force {
        req.headers_mut().insert("x-canarygate-variant", v.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    let variant = resp.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
    (ws, variant)
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends 1 MB in 64 binary messages of 16 KiB, each different, and checks each echo.
async fn echo_a_megabyte(ws: &mut Ws) {
    let msgs: Vec<Vec<u8>> = (0..64u32)
        .map(|i| (0..16_384u32).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect())
        .collect();
    let (mut tx, mut rx) = ws.split();
    let sender = async {
        for m in &msgs {
            tx.send(Message::binary(m.clone())).await.unwrap();
        }
    };
    let receiver = async {
        for (i, m) in msgs.iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => assert!(b[..] == m[..], "echo {i} differs"),
                other => panic!("echo {i}: {other:?}"),
            }
        }
    };
    tokio::join!(sender, receiver);
}

async fn open_gauge(c: &reqwest::Client, s: &Server, variant: &str) -> u64 {
    let text = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
    let series = format!("canarygate_open_connections{{api=\"orders\",stage=\"prod\",variant=\"{variant}\",kind=\"websocket\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

async fn wait_gauge(c: &reqwest::Client, s: &Server, variant: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = open_gauge(c, s, variant).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{got} open {variant} WebSockets, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_routed_relayed_counted_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("canarygate.yaml");
    std::fs::write(&cfg, "server:\n  upgradeIdleTimeoutSeconds: 2\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let (prod, canary) = (WsBackend::start("production").await, WsBackend::start("canary").await);
    let c = client();
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, json!({})).await;

    // Forced to the canary by the variant header: its greeting, 1 MB each way, counted while open.
    let (mut ws, variant) = open(&s.gateway, Some("canary")).await;
    assert_eq!(variant, "canary");
    assert_eq!(next_text(&mut ws).await, "hello from canary");
    assert_eq!(open_gauge(&c, &s, "canary").await, 1);
    echo_a_megabyte(&mut ws).await;
    // The client closes: the close reaches the server, and the relay ends.
    ws.close(None).await.unwrap();
    canary.wait_ended(1).await;
    wait_gauge(&c, &s, "canary", 0).await;

    // Production (0% canary): the server closes this time.
    let (mut ws, variant) = open(&s.gateway, None).await;
    assert_eq!(variant, "production");
    assert_eq!(next_text(&mut ws).await, "hello from production");
    assert_eq!(open_gauge(&c, &s, "production").await, 1);
    echo_a_megabyte(&mut ws).await;
    ws.send(Message::text("close, please")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(_)))) => {}
        other => panic!("expected the server's close, got {other:?}"),
    }
    prod.wait_ended(1).await;
    wait_gauge(&c, &s, "production", 0).await;

    // Idle: nobody sends anything; the gateway closes both sides after the idle timeout.
    let (mut ws, _) = open(&s.gateway, None).await;
    assert_eq!(next_text(&mut ws).await, "hello from production");
    assert_eq!(open_gauge(&c, &s, "production").await, 1);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) => assert!(m.is_ping() || m.is_pong(), "unexpected {m:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle WebSocket was not closed");
    prod.wait_ended(2).await;
    wait_gauge(&c, &s, "production", 0).await;

    // Each handshake is one request of its variant: a 101, in the metrics and the access log.
    assert_eq!(v1_sum(&c, &s, "canary", "Count").await, 1.0);
    assert_eq!(v1_sum(&c, &s, "production", "Count").await, 2.0);
    assert_eq!(
        v1_sum(&c, &s, "production", "4XXError").await + v1_sum(&c, &s, "production", "5XXError").await,
        0.0
    );
    let log = dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 3 {
            assert_eq!(lines.len(), 3, "{text}");
            assert!(
                lines.iter().all(|l| l["status"] == 101 && l["path"] == "/orders/prod/chat"),
                "{text}"
            );
            assert_eq!(lines.iter().filter(|l| l["variant"] == "canary").count(), 1, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "access log: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `Upgrade: h2c` is ignored (as nginx and HAProxy do): the request is an ordinary GET, which the
    // WebSocket server hangs up on (the gateway answers 502); nothing is switched or relayed.
    let before = prod.accepted.load(Ordering::SeqCst);
    let mut tcp = tokio::net::TcpStream::connect(s.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(
        b"GET /orders/prod/chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = read_response(&mut tcp, &mut buf).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    // A plain GET after it reaches production the same way.
    let r = c.get(format!("{}/orders/prod/chat", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        prod.accepted.load(Ordering::SeqCst),
        before + 2,
        "both reached production as plain GETs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_idle_timeout_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("canarygate.yaml");
    std::fs::write(&cfg, "server:\n  upgradeIdleTimeoutSeconds: 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.upgradeIdleTimeoutSeconds: 0"), "{err}");
}

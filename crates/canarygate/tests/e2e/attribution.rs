//! Errors are charged to whoever caused them, through the real binary with real backends: a client that
//! sends its body too slowly gets 408 and counts as a 4XXError (never a 5XXError, so it cannot roll a
//! canary back); an upstream that stalls or cuts off its response body after a 200 head counts as a
//! 5XXError, is logged with its cause, and the client sees a truncated response; an upstream that
//! refuses an upload early has its answer relayed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that reads a request head, then does what `then` says with the connection.
async fn raw_backend<F, Fut>(then: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let then = std::sync::Arc::new(then);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let then = then.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                then(s).await;
            });
        }
    });
    addr
}

/// Reads until the gateway closes the connection (or 10 s pass): everything received.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    got
}

/// The access log's line for the request whose path is `path`, once it is written.
async fn log_line(s: &Server, path: &str) -> Value {
    let file = s.data_dir.join("logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["path"] == path)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no access log line for {path}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_against_whoever_caused_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  bodyReadTimeoutSeconds: 1\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let echo = Backend::start("production", Behaviour::Echo).await;
    let stall = raw_backend(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let cut = raw_backend(|mut s| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
    })
    .await;
    let early = raw_backend(|mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nx-from: upstream\r\ncontent-length: 9\r\n\r\ntoo large")
            .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let route = |path: &str, var: &str, extra: Value| {
        let mut integration = json!({"type": "http", "uri": format!("http://${{stageVariables.{var}}}{path}"), "timeoutMs": 300});
        integration.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"path": path, "integration": integration})
    };
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [
            route("/upload", "echo", json!({})),
            route("/stall", "stall", json!({"readTimeoutMs": 500})),
            route("/cut", "cut", json!({})),
            route("/early", "early", json!({})),
        ]})),
    )
    .await;
    ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let vars = json!({"echo": echo.addr.to_string(), "stall": stall.to_string(), "cut": cut.to_string(), "early": early.to_string()});
    ok(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(json!({"variables": vars}))).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();

    // A client that declares 1000 bytes, sends 10 and stalls: 408 after the body timeout (1 s), not a
    // 504 after the route's 300 ms, and the client's error.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /orders/prod/upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "RequestTimeout");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no request body bytes for 1000 ms"),
        "{v}"
    );
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 1.0);
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 0.0);
    let line = log_line(&s, "/orders/prod/upload").await;
    assert_eq!((line["status"].as_u64(), line["errorSource"].as_str()), (Some(408), Some("client")));

    // An upstream that stalls after its head and 7 of 100 bytes: the body ends after its read timeout
    // (500 ms), the client sees a truncated response, and it is the upstream's 5XXError.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /orders/prod/stall HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let t0 = Instant::now();
    let got = String::from_utf8(read_to_close(&mut conn).await).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(500), "{:?}", t0.elapsed());
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("content-length: 100\r\n") && got.ends_with("\r\n\r\npartial"), "{got}");
    let line = log_line(&s, "/orders/prod/stall").await;
    assert_eq!(line["status"], 200, "the status that was sent");
    assert_eq!(line["errorSource"], "upstream");
    assert!(line["error"].as_str().unwrap().contains("no body bytes for 500 ms"), "{line}");

    // An upstream that closes after 10 of 100 bytes: the same.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /orders/prod/cut HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let got = String::from_utf8(read_to_close(&mut conn).await).unwrap();
    assert!(got.ends_with("\r\n\r\n0123456789"), "{got}");
    let line = log_line(&s, "/orders/prod/cut").await;
    assert_eq!(
        (line["status"].as_u64(), line["errorSource"].as_str()),
        (Some(200), Some("upstream"))
    );
    assert!(
        line["error"].as_str().unwrap().contains("closed the connection in the middle"),
        "{line}"
    );
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 2.0, "the stall and the cut");
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 1.0);

    // An upstream that refuses an upload before reading it: its 413 reaches the client (not a 504),
    // while the client is still sending.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /orders/prod/early HTTP/1.1\r\nhost: a\r\ncontent-length: 5000000\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&vec![b'x'; 100_000]).await.unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 413, "{head}");
    assert!(head.contains("x-from: upstream"), "{head}");
    assert_eq!(body, b"too large");
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 2.0);
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 2.0);

    // The echo backend still serves a whole upload on a fresh connection.
    let r = c
        .post(format!("{}/orders/prod/upload", s.gateway))
        .body(vec![b'y'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["bodyBytes"], 5000);
}

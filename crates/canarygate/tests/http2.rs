//! HTTP/2 on the client side (PRODUCT.md §11), cleartext with prior knowledge on the plain listener: `curl
//! --http2-prior-knowledge` gets HTTP/2 answers, and 1,000 streams over one connection (a real HTTP/2
//! client, hyper's) are each a request of their own: split at 10% within 4 binomial σ, each counted in
//! the variant's metrics and written to the access log; a stream the client resets mid-answer is charged to
//! the client, not the variant. (HTTP/2 over TLS with ALPN: tests/tls.rs.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_one_prior_knowledge_connection_are_split_and_counted_one_by_one() {
    let f = fixture(10.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();

    // curl, as a user would.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %header{x-canarygate-variant}",
        ])
        .arg(format!("http://{addr}/orders/prod/items/1"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(answer.starts_with("2 200 "), "{answer} {}", String::from_utf8_lossy(&out.stderr));
    // The curl request is one of the 1,001 too, on either side.
    let curl_canary = usize::from(answer.ends_with(" canary"));

    // 1,000 streams on one connection, 20 at a time.
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (mut send, next, addr) = (send.clone(), next.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut canary = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 1000 {
                send.ready().await.unwrap();
                let req = hyper::Request::get(format!("http://{addr}/orders/prod/items/2"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                if resp.headers()["x-canarygate-variant"] == "canary" {
                    canary += 1;
                }
                use http_body_util::BodyExt;
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(!body.is_empty());
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    // n = 1000, p = 0.1: σ = 9.5, so within 4σ of 100.
    assert!((62..=138).contains(&canary), "{canary} of 1000 streams to the canary");

    // Each stream is a request of its own in the variant's metrics and in the access log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let canary_count = v1_sum(&f.c, &f.s, "canary", "Count").await;
        let prod_count = v1_sum(&f.c, &f.s, "production", "Count").await;
        let log = std::fs::read_to_string(f.dir.path().join("data/logs/orders/prod.log")).unwrap_or_default();
        let lines = log.lines().count();
        if canary_count as usize == canary + curl_canary && (canary_count + prod_count) as usize == 1001 && lines == 1001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {canary_count} canary + {prod_count} production, {lines} log lines (want {canary} + {curl_canary} canary, 1001 in all)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_resets_is_charged_to_the_client() {
    let f = fixture(0.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A small window: the 4 MB answer cannot all be sent before the client resets the stream.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/orders/prod/big?pad=4000000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Dropping the body before its end resets the stream (RST_STREAM CANCEL).
    drop(resp);

    let log = f.dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line: serde_json::Value = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("/orders/prod/big")) {
            break serde_json::from_str(l).unwrap();
        }
        assert!(Instant::now() < deadline, "no access log line for the reset stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["errorSource"], "client", "{line}");
    assert_eq!(v1_sum(&f.c, &f.s, "production", "5XXError").await, 0.0, "not the variant's error");
    assert_eq!(v1_sum(&f.c, &f.s, "production", "Count").await, 1.0);
}

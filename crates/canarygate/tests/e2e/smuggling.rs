//! Request smuggling and path tricks against the real binary, in front of a real HTTP backend (hyper)
//! that counts the requests reaching it. Each shape named in the hardening issue is a case here: it is
//! refused with nothing forwarded, or forwarded as exactly the one request a strict proxy forwards.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` on a new connection and reads responses until the gateway closes it; the statuses and
/// bodies, and whether it closed (rather than waiting for more).
async fn send_raw(addr: &str, raw: &[u8]) -> (Vec<(u16, Value)>, bool) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got))
        .await
        .is_ok();
    let mut out = Vec::new();
    let mut rest = &got[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let body = &rest[end + 4..(end + 4 + len).min(rest.len())];
        out.push((status, serde_json::from_slice(body).unwrap_or(Value::Null)));
        rest = &rest[(end + 4 + len).min(rest.len())..];
    }
    (out, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_with_nothing_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  maxBodyBytes: 1000\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let prod = Backend::start("production", Behaviour::Echo).await;
    let canary = Backend::start("canary", Behaviour::Echo).await;
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, json!({})).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    let post = "POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let next = "GET /orders/prod/smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("empty chunk-size line", format!("{post}\r\n\r\n{next}"), 400, "no chunk size"),
        (
            "bare LF in a chunk extension",
            format!("{post}2;\nxx\r\n0\r\n\r\n{next}"),
            400,
            "bare LF",
        ),
        (
            "CR inside a chunk extension",
            format!("{post}2;a\rb\r\nxx\r\n0\r\n\r\n{next}"),
            400,
            "bare CR",
        ),
        (
            "trailer section ended by a bare LF",
            format!("{post}2\r\nxx\r\n0\r\n\n{next}"),
            400,
            "bare LF",
        ),
        (
            "chunk size of 2^63",
            format!("{post}8000000000000000\r\nxx\r\n0\r\n\r\n"),
            400,
            "2^63",
        ),
        (
            "chunk size of 2^64-1",
            format!("{post}ffffffffffffffff\r\nxx\r\n0\r\n\r\n"),
            400,
            "2^63",
        ),
        (
            "a first chunk over the body limit",
            format!("{post}1000\r\nxx"),
            413,
            "larger than 1000 bytes",
        ),
        (
            "transfer-encoding other than exactly chunked",
            "POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: ,chunked\r\n\r\n0\r\n\r\n".to_string(),
            501,
            "unsupported transfer-encoding",
        ),
        (
            "transfer-encoding and content-length",
            format!("POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n{next}"),
            400,
            "both transfer-encoding and content-length",
        ),
        (
            "obs-fold",
            format!("GET /orders/prod/x HTTP/1.1\r\nhost: a\r\nx-a: 1\r\n transfer-encoding: chunked\r\n\r\n{next}"),
            400,
            "invalid request head",
        ),
        (
            "bare LF in the head",
            format!("GET /orders/prod/x HTTP/1.1\nhost: a\n\n{next}"),
            400,
            "bare LF",
        ),
        (
            "a path that climbs above the stage's root",
            "GET /orders/prod/../other/x HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
            400,
            "climbs above the stage's root",
        ),
        (
            "an encoded climb above the stage's root",
            "GET /orders/prod/%2e%2E/x HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
            400,
            "climbs above the stage's root",
        ),
        (
            "an invalid host",
            "GET /orders/prod/x HTTP/1.1\r\nhost: a, b\r\n\r\n".to_string(),
            400,
            "invalid host",
        ),
    ];
    for (name, raw, status, says) in cases {
        let before = prod.calls();
        let (responses, closed) = send_raw(&addr, raw.as_bytes()).await;
        assert_eq!(responses.len(), 1, "{name}: one answer, then close: {responses:?}");
        let (got, body) = &responses[0];
        assert_eq!(*got, status, "{name}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{name}: {msg:?} should say {says:?}");
        assert!(closed, "{name}: the connection closes after a refusal");
        assert_eq!(prod.calls(), before, "{name}: nothing reached the backend");
    }
    // Refusals of the body and the path happen after routing: counted as the variant's 4XXError.
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 0.0);
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 9.0);

    // A later chunk over the limit (after the request was forwarded): the upstream call is abandoned
    // and the client gets 413.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    conn.write_all(format!("{post}a\r\n0123456789\r\n").as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(b"10000\r\nxx").await.unwrap();
    let (status, _, body) = read_response(&mut conn, &mut buf).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 413, "{v}");

    // A valid chunked body that came whole with its head is decoded first and forwarded with its
    // length, once.
    let before = prod.calls();
    let (responses, _) = send_raw(
        &addr,
        format!("{post}5;ext=\"a b\"\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nGET /orders/prod/second HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert_eq!(responses[0].1["bodyBytes"], 11);
    assert_eq!(responses[0].1["headers"]["content-length"], "11");
    assert_eq!(responses[1].1["path"], "/second");
    assert_eq!(prod.calls(), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_routing_and_absolute_form_names_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let prod = Backend::start("production", Behaviour::Echo).await;
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/shop",
        Some(json!({"routes": [
            {"method": "GET", "path": "/public/{file+}", "integration": {"type": "http", "uri": format!("http://{}/public/{{file}}", prod.addr)}},
            {"method": "GET", "path": "/admin", "integration": {"type": "mock", "status": 200, "body": "admin"}},
        ]})),
    )
    .await;
    ok(&c, &s, "POST", "/v1/apis/shop/deployments", Some(json!({}))).await;
    ok(&c, &s, "PUT", "/v1/apis/shop/stages/prod", Some(json!({}))).await;
    ok(
        &c,
        &s,
        "PUT",
        "/v1/domains/shop.example",
        Some(json!({"mappings": [{"basePath": "", "api": "shop", "stage": "prod"}]})),
    )
    .await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    let get = |target: &str, host: &str| format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");

    // `/public/../admin` is the stage's `/admin` route, never the backend's `/public/../admin`.
    let (r, _) = send_raw(&addr, get("/shop/prod/public/../admin", "a").as_bytes()).await;
    assert_eq!(r[0].0, 200);
    assert_eq!(prod.calls(), 0, "the public route's backend was not called");
    let (r, _) = send_raw(&addr, get("/shop/prod/public/a/%2E%2e/b/./c.txt", "a").as_bytes()).await;
    assert_eq!(r[0].0, 200, "{:?}", r[0].1);
    assert_eq!(r[0].1["path"], "/public/b/c.txt", "the backend gets the resolved path");
    let (r, _) = send_raw(&addr, get("/shop/prod/public/../../x", "a").as_bytes()).await;
    assert_eq!(r[0].0, 400);

    // Absolute form: its authority is the host, whatever Host says (RFC 9112 §3.2.2).
    let (r, _) = send_raw(&addr, get("http://shop.example/public/p.txt", "other.example").as_bytes()).await;
    assert_eq!(r[0].0, 200, "{:?}", r[0].1);
    assert_eq!(r[0].1["path"], "/public/p.txt");
    assert_eq!(r[0].1["headers"]["x-forwarded-host"], "shop.example");
    let (r, _) = send_raw(&addr, get("http://other.example/public/p.txt", "shop.example").as_bytes()).await;
    assert_eq!(r[0].0, 404, "routed by the target's authority, not Host");
}

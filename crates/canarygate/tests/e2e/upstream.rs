//! Upstream failures and metrics: refused connections give 502, slow upstreams 504, each counted as a
//! 5XXError of the variant that called it; `/metrics` and `/v1/metrics` agree exactly with what was sent.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn prom_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no line {prefix} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_slow_upstreams_are_502_and_504_counted_per_variant() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let healthy = Backend::start("production", Behaviour::Echo).await;
    let slow = Backend::start("slow", Behaviour::Slow(Duration::from_millis(1500))).await;
    let refused = closed_port();
    // Production is healthy; the canary's backend refuses connections.
    setup_split(&c, &s, healthy.addr, refused, 0.0, json!({})).await;
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [
            {"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}", "timeoutMs": 200}},
            {"path": "/slow", "integration": {"type": "http", "uri": "http://${stageVariables.slow}/slow", "timeoutMs": 200}},
            {"path": "/missing", "method": "GET", "integration": {"type": "mock", "status": 404, "body": "no"}}
        ]})),
    )
    .await;
    let d = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let id = d["id"].as_str().unwrap();
    ok(
        &c,
        &s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [
            {"op": "replace", "path": "/canarySettings/deploymentId", "value": id},
            {"op": "copy", "from": "/canarySettings/deploymentId", "path": "/deploymentId"},
            {"op": "replace", "path": "/variables/slow", "value": slow.addr.to_string()}
        ]})),
    )
    .await;

    let get = |path: &'static str, variant: &'static str| {
        let (c, url) = (c.clone(), format!("{}/orders/prod{path}", s.gateway));
        async move {
            let r = c.get(url).header("x-canarygate-variant", variant).send().await.unwrap();
            assert_eq!(r.headers()["x-canarygate-variant"], variant);
            assert!(r.headers().contains_key("x-request-id"));
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    // Sent, per variant: production 7 x 200, 3 x 504, 2 x 404; canary 5 x 502, 1 x 404.
    for _ in 0..7 {
        assert_eq!(get("/ok", "production").await.0, 200);
    }
    for _ in 0..3 {
        let (status, body) = get("/slow", "production").await;
        assert_eq!(status, 504);
        assert_eq!(body["error"]["code"], "GatewayTimeout");
    }
    for _ in 0..2 {
        assert_eq!(get("/missing", "production").await.0, 404);
    }
    for _ in 0..5 {
        let (status, body) = get("/ok", "canary").await;
        assert_eq!(status, 502);
        assert_eq!(body["error"]["code"], "BadGateway");
    }
    assert_eq!(get("/missing", "canary").await.0, 404);

    let prom = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
    let l = |variant: &str, class: &str| {
        format!("canarygate_requests_total{{api=\"orders\",stage=\"prod\",variant=\"{variant}\",status_class=\"{class}\"}} ")
    };
    let expect = [
        ("production", "2xx", 7.0),
        ("production", "5xx", 3.0),
        ("production", "4xx", 2.0),
        ("canary", "5xx", 5.0),
        ("canary", "4xx", 1.0),
        ("canary", "2xx", 0.0),
    ];
    for (variant, class, n) in expect {
        assert_eq!(prom_value(&prom, &l(variant, class)), n, "{variant} {class}");
    }
    for (variant, count, e5, e4) in [("production", 12.0, 3.0, 2.0), ("canary", 6.0, 5.0, 1.0)] {
        assert_eq!(v1_sum(&c, &s, variant, "Count").await, count);
        assert_eq!(v1_sum(&c, &s, variant, "5XXError").await, e5);
        assert_eq!(v1_sum(&c, &s, variant, "4XXError").await, e4);
        let hist = format!("canarygate_request_duration_seconds_count{{api=\"orders\",stage=\"prod\",variant=\"{variant}\"}} ");
        assert_eq!(prom_value(&prom, &hist), count);
    }
    // The 504s took at least their timeout: the integration latency maximum says so.
    let v = ok(
        &c,
        &s,
        "GET",
        "/v1/metrics?api=orders&stage=prod&variant=production&metric=IntegrationLatency&statistic=Maximum&periodSeconds=3600",
        None,
    )
    .await;
    let max = v["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["value"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(max >= 200.0, "{v}");
    assert_eq!(v["unit"], "Milliseconds");
    // Bad query parameters name themselves.
    let (status, v) = admin(&c, &s, "GET", "/v1/metrics?api=orders&stage=prod&metric=Errors", None).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("Errors"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_body_and_headers_and_proxy_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "server:\n  maxBodyBytes: 1000\n  maxHeaderBytes: 16384\n  headerReadTimeoutSeconds: 1\n",
    )
    .unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, json!({})).await;
    let url = format!("{}/orders/prod/upload", s.gateway);
    let r = c.post(&url).body(vec![b'x'; 500]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["bodyBytes"],
        500,
        "the body is streamed to the upstream"
    );
    let r = c.post(&url).body(vec![b'x'; 5000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["connection"], "close", "the unread body makes the connection unusable");
    // A streamed body without a length that grows past the limit is refused too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![b'y'; 500])).collect();
    let r = c
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => panic!("streamed oversize body: {e}"),
    }
    let r = c.get(&url).header("x-big", "a".repeat(40_000)).send().await.unwrap();
    assert_eq!(r.status(), 431);
    // Hop-by-hop headers are dropped, forwarding headers set, the request id kept.
    let r = c
        .get(&url)
        .header("x-request-id", "abc-123")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "s")
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let v: Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-request-id"], "abc-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.test");
    assert!(h.get("x-secret").is_none(), "headers named by Connection are hop-by-hop: {h}");
    assert_eq!(h["host"], prod.addr.to_string());

    // A client that never finishes its request head is disconnected (the read ends). The configured 1 s
    // applies, not the 10 s default: the guard sits between the two.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(s.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    slow.write_all(b"GET /orders/prod/x HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway kept a connection with an unfinished request head open");

    // Health and readiness.
    assert_eq!(ok(&c, &s, "GET", "/healthz", None).await["status"], "ok");
    assert_eq!(ok(&c, &s, "GET", "/readyz", None).await["status"], "ready");
}

/// A raw HTTP/1.1 backend that answers every request on a connection with `response`, as it is.
async fn raw_backend(response: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// An upstream's response head reaches an HTTP/1.1 client written from the upstream's head, each line
/// as it came, and an HTTP/2 client from a header map: the same fields either way, without the
/// hop-by-hop ones (and those `Connection` names), with the gateway's framing and request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_response_fields_reach_http1_and_http2_clients_alike() {
    let backend = raw_backend(
        "HTTP/1.1 200 OK\r\nServer:  raw\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
         Set-Cookie: a=1\r\nset-cookie: b=2\r\nX-Request-Id: theirs\r\nContent-Length: 2\r\nX-Empty:\r\n\r\nok",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    setup_split(&c, &s, backend, backend, 0.0, json!({})).await;
    for http2 in [false, true] {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "-D", "-"]);
        if http2 {
            curl.arg("--http2-prior-knowledge");
        }
        let out = curl.arg(format!("{}/orders/prod/fields", s.gateway)).output().unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(body, "ok", "{out:?}");
        assert!(head.starts_with(if http2 { "HTTP/2 200" } else { "HTTP/1.1 200" }), "{head}");
        let named = |name: &str| -> Vec<String> {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .collect()
        };
        assert_eq!(named("server"), ["raw"], "{head}");
        assert_eq!(named("set-cookie"), ["a=1", "b=2"], "{head}");
        assert_eq!(named("x-empty"), [""], "{head}");
        assert_eq!(named("content-length"), ["2"], "{head}");
        for gone in ["x-hop", "keep-alive", "connection"] {
            assert!(named(gone).is_empty(), "{gone}: {head}");
        }
        let rid = named("x-request-id");
        assert!(rid.len() == 1 && rid[0] != "theirs" && rid[0].len() == 32, "{head}");
        if !http2 {
            // Written from the upstream's head: each line as it came.
            assert!(
                head.contains("\r\nServer:  raw\r\n") && head.contains("\r\nset-cookie: b=2\r\n"),
                "{head}"
            );
        }
    }
}

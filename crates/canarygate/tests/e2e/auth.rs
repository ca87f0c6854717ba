//! Admin API auth: with tokens, changes need an admin token and reads a token (unless
//! `readRequiresToken: false`); without tokens, only loopback `Host` names are answered (no DNS
//! rebinding); a non-loopback admin listener needs a token to start.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  adminTokens:\n    - {token: reader, readOnly: true}\n").unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &[("CANARYGATE_ADMIN_TOKEN", "s3cret")],
    );
    let c = client();
    let body = || Some(json!({"routes": [{"path": "/h", "integration": {"type": "mock"}}]}));
    for token in [None, Some("wrong"), Some("reader")] {
        let (status, v) = admin_with_token(&c, &s, "PUT", "/v1/apis/orders", body(), token).await;
        assert_eq!(status, 401, "{token:?}: {v}");
        assert_eq!(v["error"]["code"], "Unauthorized");
    }
    let read = |token: Option<&'static str>| {
        let (c, s) = (&c, &s);
        async move { admin_with_token(c, s, "GET", "/v1/apis/orders", None, token).await }
    };
    assert_eq!(read(Some("s3cret")).await.0, 404, "refused calls created nothing");
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/apis/orders", body(), Some("s3cret")).await.0,
        201
    );
    // Reads need a token too: read-only or admin.
    let (status, v) = read(None).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"]["code"], "Unauthorized");
    assert_eq!(read(Some("wrong")).await.0, 401);
    assert_eq!(read(Some("reader")).await.0, 200);
    assert_eq!(read(Some("s3cret")).await.0, 200);
    for (token, role) in [(Some("reader"), "readOnly"), (Some("s3cret"), "admin")] {
        let (_, who) = admin_with_token(&c, &s, "GET", "/v1/auth", None, token).await;
        assert_eq!(who["role"], role);
    }
    assert_eq!(admin_with_token(&c, &s, "DELETE", "/v1/apis/orders", None, None).await.0, 401);
    assert_eq!(read(Some("reader")).await.0, 200);
    // With tokens, the token decides whatever the Host says.
    let r = c
        .get(format!("{}/v1/apis/orders", s.admin))
        .header("host", "evil.example")
        .bearer_auth("reader")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The token never reaches the logs.
    drop(s);
    let logs = std::fs::read_to_string(dir.path().join("data.stderr.log")).unwrap();
    assert!(!logs.contains("s3cret"));
}

#[test]
fn non_loopback_admin_without_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("CANARYGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start") && err.contains("0.0.0.0") && err.contains("token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_can_be_opened_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  readRequiresToken: false\n").unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &[("CANARYGATE_ADMIN_TOKEN", "s3cret")],
    );
    let c = client();
    assert_eq!(admin_with_token(&c, &s, "GET", "/v1/apis", None, None).await.0, 200);
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/apis/orders", Some(json!({"routes": []})), None)
            .await
            .0,
        401
    );
}

/// Without tokens, a page on another site that the operator opens cannot drive the admin API by
/// DNS rebinding: its requests carry that site's host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_loopback_host_names_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  adminHosts: [canarygate.internal]\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let port = s.admin.rsplit(':').next().unwrap().to_string();
    let with_host = |path: &'static str, host: String| {
        let (c, s) = (&c, &s);
        async move {
            let r = c.get(format!("{}{path}", s.admin)).header("host", host).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    for path in ["/v1/apis", "/metrics", "/ui/"] {
        let (status, body) = with_host(path, "evil.example".into()).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("evil.example") && body.contains("adminHosts"), "{body}");
        assert_eq!(with_host(path, format!("evil.example:{port}")).await.0, 403, "{path}");
        assert_eq!(with_host(path, format!("localhost:{port}")).await.0, 200, "{path}");
        assert_eq!(with_host(path, format!("127.0.0.1:{port}")).await.0, 200, "{path}");
        assert_eq!(with_host(path, format!("[::1]:{port}")).await.0, 200, "{path}");
        assert_eq!(with_host(path, "canarygate.internal".into()).await.0, 200, "{path}");
    }
    // A change from the rebinding page is refused and changes nothing.
    let r = c
        .put(format!("{}/v1/apis/orders", s.admin))
        .header("host", "evil.example")
        .json(&json!({"routes": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(admin(&c, &s, "GET", "/v1/apis/orders", None).await.0, 404);
}

/// Cross-site request forgery: without tokens (the quickstart's setup) a page the operator opens could
/// send the admin API a request. Every state-changing call that a browser could send from another site
/// without asking first — a `text/plain` or form body, a body without a type, an `Origin` that is not
/// the admin API's, `Sec-Fetch-Site: cross-site` — gets 403 and changes nothing; the CLI and the
/// dashboard's own calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_writes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let apply = json!({"apis": [{"name": "forged", "routes": [{"path": "/h", "integration": {"type": "mock"}}]}]}).to_string();
    let url = format!("{}/v1/apply", s.admin);
    let own_origin = s.admin.clone();

    // curl as a forged page's requests would arrive.
    let forged: [&[&str]; 6] = [
        &["-H", "content-type: text/plain"],
        &["-H", "content-type: application/x-www-form-urlencoded"],
        &["-H", "content-type:"],
        &["-H", "content-type: application/json", "-H", "origin: http://evil.example"],
        &["-H", "content-type: application/json", "-H", "origin: null"],
        &["-H", "content-type: application/json", "-H", "sec-fetch-site: cross-site"],
    ];
    for headers in forged {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", &apply])
            .args(headers)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "403", "{headers:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "Unauthorized", "{body}");
    }
    let c = client();
    let (status, v) = admin(&c, &s, "GET", "/v1/apis", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "a refused call created nothing: {v}");
    // A forged DELETE is refused the same way.
    let r = c
        .delete(format!("{}/v1/alarms/any", s.admin))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The dashboard's own call (same origin, as Chromium sends it) works.
    let r = c
        .put(format!("{}/v1/apis/orders", s.admin))
        .header("origin", &own_origin)
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"routes": [{"path": "/h", "integration": {"type": "mock"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // So does the CLI.
    let file = dir.path().join("apply.yaml");
    std::fs::write(
        &file,
        "apis:\n  - name: cli\n    routes:\n      - path: /h\n        integration: {type: mock}\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&s, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (_, v) = admin(&c, &s, "GET", "/v1/apis", None).await;
    let names: Vec<&str> = v["items"].as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["cli", "orders"]);

    // The dashboard is never framed by another site and loads only its own scripts.
    let r = c.get(format!("{}/ui/", s.admin)).send().await.unwrap();
    let h = r.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{csp}");
}

/// The admin listener has deadlines and a cap of its own: 1,000 connections that never finish their
/// request head are all closed — those past `adminMaxConnections` at once, the rest at the head
/// timeout — before any of them is authenticated, and the API answers again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_closes_unfinished_heads() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_config(dir.path(), "server:\n  headerReadTimeoutSeconds: 2\n  adminMaxConnections: 100\n");
    let addr = s.admin.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let mut t = tokio::net::TcpStream::connect(&addr).await.unwrap();
        // The write may fail on a connection already closed past the cap.
        let _ = t.write_all(b"GET /v1/apis HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ").await;
        conns.push(t);
    }
    let mut closed = 0;
    for mut t in conns {
        let read = tokio::time::timeout(Duration::from_secs(20), t.read(&mut [0u8; 256])).await;
        if matches!(read, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000, "unfinished heads left open after {:?}", started.elapsed());
    let (status, _) = admin(&client(), &s, "GET", "/v1/apis", None).await;
    assert_eq!(status, 200);
}

//! Admin API auth: with tokens, changes need an admin token and reads a token (unless
//! `readRequiresToken: false`); without tokens, only loopback `Host` names are answered (no DNS
//! rebinding); a non-loopback admin listener needs a token to start.

mod common;

use common::*;
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

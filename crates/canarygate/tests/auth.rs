//! Admin API auth: with a token, changes need it; a non-loopback admin listener needs one to start.

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
    assert_eq!(
        admin(&c, &s, "GET", "/v1/apis/orders", None).await.0,
        404,
        "refused calls created nothing"
    );
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/apis/orders", body(), Some("s3cret")).await.0,
        201
    );
    // Reads stay open (the dashboard reads without a token); every change needs one.
    assert_eq!(admin(&c, &s, "GET", "/v1/apis/orders", None).await.0, 200);
    assert_eq!(admin(&c, &s, "DELETE", "/v1/apis/orders", None).await.0, 401);
    assert_eq!(admin(&c, &s, "GET", "/v1/apis/orders", None).await.0, 200);
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

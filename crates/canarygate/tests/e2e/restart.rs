//! Durability: every API, deployment, stage and canary setting survives a restart, also after SIGKILL.

use crate::common::*;
use serde_json::{json, Value};

async fn snapshot(c: &reqwest::Client, s: &Server) -> Value {
    json!({
        "apis": ok(c, s, "GET", "/v1/apis", None).await,
        "deployments": ok(c, s, "GET", "/v1/apis/orders/deployments", None).await,
        "stages": ok(c, s, "GET", "/v1/apis/orders/stages", None).await,
        "domains": ok(c, s, "GET", "/v1/domains", None).await,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    let mut s = Server::start(&data, &[], &[]);
    setup_split(&c, &s, prod.addr, canary.addr, 12.5, json!({"stickiness": "cookie:sid"})).await;
    ok(
        &c,
        &s,
        "POST",
        "/v1/apis/orders/deployments",
        Some(json!({"description": "second"})),
    )
    .await;
    ok(
        &c,
        &s,
        "PUT",
        "/v1/domains/api.example.com",
        Some(json!({"mappings": [{"basePath": "v1", "api": "orders", "stage": "prod"}]})),
    )
    .await;
    let before = snapshot(&c, &s).await;
    assert_eq!(before["stages"]["items"][0]["canarySettings"]["percentTraffic"], 12.5);

    // A clean stop (SIGTERM) and start.
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(s.child.wait().unwrap().success(), "SIGTERM ends canarygate cleanly");
    let mut s = Server::start(&data, &[], &[]);
    assert_eq!(snapshot(&c, &s).await, before);

    // A change, acknowledged, then SIGKILL straight away: the change is there after the restart.
    set_percent(&c, &s, 33.0).await;
    s.kill();
    let s = Server::start(&data, &[], &[]);
    let after = snapshot(&c, &s).await;
    assert_eq!(after["stages"]["items"][0]["canarySettings"]["percentTraffic"], 33.0);
    assert_eq!(after["apis"], before["apis"]);
    assert_eq!(after["deployments"], before["deployments"]);
    assert_eq!(after["domains"], before["domains"]);
    // And the restarted gateway serves from it.
    let r = c
        .get(format!("{}/orders/prod/x", s.gateway))
        .header("x-canarygate-variant", "canary")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["backend"], "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_seeds_once_and_never_undoes_api_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "apis:\n  - name: orders\n    routes:\n      - path: /v\n        integration: {type: mock, body: 'v${stageVariables.version}'}\n    stages:\n      - name: prod\n        variables: {version: '1'}\n",
    )
    .unwrap();
    let c = client();
    let arg = cfg.to_str().unwrap();
    let s = Server::start(&data, &["--config", arg], &[]);
    assert_eq!(
        c.get(format!("{}/orders/prod/v", s.gateway))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1"
    );
    ok(
        &c,
        &s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "replace", "path": "/variables/version", "value": "2"}]})),
    )
    .await;
    drop(s);
    let s = Server::start(&data, &["--config", arg], &[]);
    assert_eq!(
        c.get(format!("{}/orders/prod/v", s.gateway))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v2",
        "restart kept the API change"
    );
    assert_eq!(
        ok(&c, &s, "GET", "/v1/apis/orders/deployments", None).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

//! Steps plans with approval gates (PRODUCT.md §13): the real binary, real backends, client load, the
//! CLI's `rollout approve` with a named token, a SIGKILL while waiting, and an alarm during the wait.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-approver-token";

/// A server whose only admin token is named `alice`; API `orders` on `production`, deployment d2,
/// the plan `Gated` (5% for 2 s, 5% until approved, 50% for 2 s) and alarm `canary-5xx`.
async fn setup(dir: &std::path::Path, production: &Backend) -> (Server, String) {
    let cfg = dir.join("c.yaml");
    std::fs::write(&cfg, format!("server:\n  adminTokens:\n    - {{name: alice, token: {TOKEN}}}\n")).unwrap();
    let s = Server::start(&dir.join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let t = Some(TOKEN);
    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    assert_eq!(admin_with_token(&c, &s, "PUT", "/v1/apis/orders", Some(routes), t).await.0, 201);
    let d1 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1;
    let d2 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1;
    let stage = json!({"deploymentId": d1["id"], "variables": {"backend": production.addr.to_string()}});
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(stage), t)
            .await
            .0,
        201
    );

    // Bad step lists: 400 naming the step and the field; nothing is stored.
    for (steps, field) in [
        (
            json!([{"percentage": 50, "intervalSeconds": 2}, {"percentage": 20, "intervalSeconds": 2}]),
            "steps[1].percentage",
        ),
        (
            json!([{"percentage": 5, "intervalSeconds": 2}, {"percentage": 10}]),
            "steps[1].intervalSeconds",
        ),
        (
            json!([{"percentage": 5, "intervalSeconds": 2, "approval": true}]),
            "steps[0].approval",
        ),
        (json!([{"percentage": 100, "approval": true}]), "steps[0].percentage"),
    ] {
        let (status, e) = admin_with_token(
            &c,
            &s,
            "PUT",
            "/v1/deployment-configs/Gated",
            Some(json!({"type": "Steps", "steps": steps})),
            t,
        )
        .await;
        assert_eq!(status, 400, "{e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
        assert_eq!(
            admin_with_token(&c, &s, "GET", "/v1/deployment-configs/Gated", None, t).await.0,
            404
        );
    }
    let plan = json!({"type": "Steps", "steps": [
        {"percentage": 5, "intervalSeconds": 2}, {"percentage": 5, "approval": true}, {"percentage": 50, "intervalSeconds": 2}]});
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/deployment-configs/Gated", Some(plan), t)
            .await
            .0,
        201
    );
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError", "statistic": "Average",
        "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05});
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/alarms/canary-5xx", Some(alarm), t).await.0,
        201
    );
    (s, d2["id"].as_str().unwrap().to_string())
}

async fn get(c: &reqwest::Client, s: &Server, id: &str) -> Value {
    let (status, r) = admin_with_token(c, s, "GET", &format!("/v1/rollouts/{id}"), None, Some(TOKEN)).await;
    assert_eq!(status, 200, "{r}");
    r
}

async fn until(c: &reqwest::Client, s: &Server, id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(c, s, id).await;
        if cond(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "condition not reached: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn waiting_for_approval(r: &Value) -> bool {
    r["waitingFor"].as_str().is_some_and(|w| w.starts_with("waiting for an approval"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_waits_survives_a_restart_and_continues_when_approved() {
    let dir = tempfile::tempdir().unwrap();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let (mut s, d2) = setup(dir.path(), &prod).await;
    let c = client();
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 2);
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string()},
                      "deploymentConfig": "Gated", "alarms": ["canary-5xx"]});
    let (status, r) = admin_with_token(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body), Some(TOKEN)).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    // Step 0 (2 s) passes; step 1 waits for an approval, longer than any interval of the plan.
    let r = until(&c, &s, &id, waiting_for_approval).await;
    assert_eq!((r["currentStep"].as_u64(), r["weight"].as_f64()), (Some(1), Some(5.0)), "{r}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = get(&c, &s, &id).await;
    assert_eq!(
        (r["status"].as_str(), r["currentStep"].as_u64()),
        (Some("InProgress"), Some(1)),
        "{r}"
    );

    // Without a token, or with a wrong one, an approval is refused.
    let (status, _) = admin(&c, &s, "POST", &format!("/v1/rollouts/{id}/approve"), None).await;
    assert_eq!(status, 401);

    // SIGKILL while waiting: after the restart it is still waiting at the same step and weight.
    load.finish().await;
    s.kill();
    let data = s.data_dir.clone();
    let cfg = dir.path().join("c.yaml");
    s = Server::start(&data, &["--config", cfg.to_str().unwrap()], &[]);
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = get(&c, &s, &id).await;
    assert!(waiting_for_approval(&r), "{r}");
    assert_eq!((r["currentStep"].as_u64(), r["weight"].as_f64()), (Some(1), Some(5.0)), "{r}");
    let st = admin_with_token(&c, &s, "GET", "/v1/apis/orders/stages/prod", None, Some(TOKEN))
        .await
        .1;
    assert_eq!(st["canarySettings"]["percentTraffic"], 5.0, "{st}");

    // Approved with the CLI: on to 50%, then promoted; the event names the token's name, never the token.
    cli_as_alice(&s, &["rollout", "approve", &id]);
    let r = until(&c, &s, &id, |r| r["status"] == "Succeeded").await;
    let (sent, failures) = load.finish().await;
    let approved = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "step approved by alice")
        .unwrap_or_else(|| panic!("no approval event: {r}"));
    assert_eq!(approved["observed"]["approvedBy"], "alice");
    assert!(r["events"].as_array().unwrap().iter().any(|e| e["weight"] == 50.0), "{r}");
    assert!(!r.to_string().contains(TOKEN), "the token leaked into the record: {r}");
    let st = admin_with_token(&c, &s, "GET", "/v1/apis/orders/stages/prod", None, Some(TOKEN))
        .await
        .1;
    assert_eq!(st["deploymentId"], d2.as_str());
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // An ended rollout cannot be approved.
    let (status, _) = admin_with_token(&c, &s, "POST", &format!("/v1/rollouts/{id}/approve"), None, Some(TOKEN)).await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_during_the_wait_for_an_approval_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let (s, d2) = setup(dir.path(), &prod).await;
    let c = client();
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string()},
                      "deploymentConfig": "Gated", "alarms": ["canary-5xx"]});
    let (status, r) = admin_with_token(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body), Some(TOKEN)).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    until(&c, &s, &id, waiting_for_approval).await;
    // Paused as well: a paused rollout is still watched.
    let (status, r) = admin_with_token(&c, &s, "POST", &format!("/v1/rollouts/{id}/pause"), None, Some(TOKEN)).await;
    assert_eq!((status, r["paused"]["by"].as_str()), (200, Some("alice")), "{r}");
    // The canary starts failing while the rollout waits for a human.
    next.fail(0.5);
    let r = until(&c, &s, &id, |r| r["status"] != "InProgress").await;
    load.finish().await;
    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap();
    assert!(last["reason"].as_str().unwrap().contains("canary-5xx"), "{last}");
    let st = admin_with_token(&c, &s, "GET", "/v1/apis/orders/stages/prod", None, Some(TOKEN))
        .await
        .1;
    assert!(st["canarySettings"].is_null(), "{st}");
}

fn cli_as_alice(s: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["--server", &s.admin, "--token", TOKEN])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Operator control: `rollout pause` holds a step past its interval (also through a SIGKILL), `resume`
/// goes on with the rest of it, `continue` ends a ten-minute wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_continue_a_timed_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let (mut s, d2) = setup(dir.path(), &prod).await;
    let c = client();
    let plan = json!({"type": "Steps", "steps": [
        {"percentage": 5, "intervalSeconds": 3}, {"percentage": 20, "intervalSeconds": 600}, {"percentage": 50, "intervalSeconds": 1}]});
    let (status, e) = admin_with_token(&c, &s, "PUT", "/v1/deployment-configs/Timed", Some(plan), Some(TOKEN)).await;
    assert_eq!(status, 201, "{e}");
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string()},
                      "deploymentConfig": "Timed", "alarms": ["canary-5xx"]});
    let (status, r) = admin_with_token(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body), Some(TOKEN)).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    until(&c, &s, &id, |r| r["currentStep"] == 0).await;

    // Paused with the CLI; it holds 5% for twice the step's interval.
    let out = cli_as_alice(&s, &["rollout", "pause", &id]);
    assert!(out.contains("paused rollout"), "{out}");
    let held_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < held_until {
        let r = get(&c, &s, &id).await;
        assert_eq!((r["currentStep"].as_u64(), r["weight"].as_f64()), (Some(0), Some(5.0)), "{r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // SIGKILL while paused: still paused after the restart, and still at 5%.
    s.kill();
    let data = s.data_dir.clone();
    let cfg = dir.path().join("c.yaml");
    s = Server::start(&data, &["--config", cfg.to_str().unwrap()], &[]);
    let r = get(&c, &s, &id).await;
    assert_eq!(r["paused"]["by"], "alice", "{r}");
    let status_text = cli_as_alice(&s, &["rollout", "status", &id]);
    assert!(status_text.contains("paused by alice"), "{status_text}");
    let left = r["timeLeftSeconds"].as_u64().unwrap();
    // The restarted controller takes the rollout up while it is paused (on PostgreSQL, once the killed
    // replica's lease has run out): it moves the checkpoint, and reports no gap for a paused rollout.
    let before = r["checkpointAt"].clone();
    let r = until(&c, &s, &id, |r| r["checkpointAt"] != before).await;
    assert_eq!(
        r["timeLeftSeconds"].as_u64(),
        Some(left),
        "time left stands still while paused: {r}"
    );
    assert_eq!((r["currentStep"].as_u64(), r["weight"].as_f64()), (Some(0), Some(5.0)), "{r}");
    // A second pause and a continue while paused are refused (409), naming why.
    let (status, e) = admin_with_token(&c, &s, "POST", &format!("/v1/rollouts/{id}/continue"), None, Some(TOKEN)).await;
    assert_eq!(status, 409, "{e}");
    assert!(e.to_string().contains("resume it first"), "{e}");

    // Resumed: the rest of the 3 s, then the ten-minute step.
    cli_as_alice(&s, &["rollout", "resume", &id]);
    let r = until(&c, &s, &id, |r| r["currentStep"] == 1).await;
    assert_eq!(r["weight"], 20.0, "{r}");
    assert!(r["paused"].is_null(), "{r}");
    // `continue` ends the ten-minute wait at once: 50%, then promoted.
    cli_as_alice(&s, &["rollout", "continue", &id]);
    let r = until(&c, &s, &id, |r| r["status"] == "Succeeded").await;
    let reasons: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.iter().any(|e| e.starts_with("paused by alice")), "{reasons:?}");
    assert!(reasons.iter().any(|e| e.starts_with("resumed by alice")), "{reasons:?}");
    assert!(reasons.contains(&"step ended early on request by alice"), "{reasons:?}");
    assert!(!reasons.iter().any(|e| e.contains("gap")), "a pause is not a gap: {reasons:?}");
    let created = chrono::DateTime::parse_from_rfc3339(r["createdAt"].as_str().unwrap()).unwrap();
    let done = chrono::DateTime::parse_from_rfc3339(r["completedAt"].as_str().unwrap()).unwrap();
    assert!(
        (done - created).num_seconds() < 300,
        "the ten-minute step did not run its course: {r}"
    );
}

//! Rollouts end to end: the real binary, real backends, steady client load, a custom canary config,
//! an alarm on the canary's 5XXError rate, automatic rollback, success, variables-only rollouts,
//! SIGKILL during a wait, and the CLI's exit codes.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

/// API `orders` with deployments d1 and d2 (the same routes), stage `prod` on d1 with no canary, the
/// custom config Canary20Percent30Seconds (or `seconds`), and alarm `canary-5xx`.
async fn setup(c: &reqwest::Client, s: &Server, production: &Backend, seconds: u64) -> (String, String) {
    let routes = json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}", "timeoutMs": 5000}}]});
    ok(c, s, "PUT", "/v1/apis/orders", Some(routes)).await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v1"}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v2"}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders/stages/prod",
        Some(json!({"deploymentId": d1, "variables": {"backend": production.addr.to_string(), "version": "1"}})),
    )
    .await;
    canary_plan_and_alarm(c, s, "Canary20Percent30Seconds", seconds).await;
    (d1, d2)
}

/// A server set up by [`setup`], with backend v1 behind the stage and v2 (behaving as given) to roll out to.
struct RolloutFixture {
    s: Server,
    c: reqwest::Client,
    prod: Backend,
    next: Backend,
    d1: String,
    d2: String,
    dir: tempfile::TempDir,
}

async fn rollout_fixture(next: Behaviour, seconds: u64) -> RolloutFixture {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let (prod, next) = (Backend::start("v1", Behaviour::Echo).await, Backend::start("v2", next).await);
    let (d1, d2) = setup(&c, &s, &prod, seconds).await;
    RolloutFixture {
        s,
        c,
        prod,
        next,
        d1,
        d2,
        dir,
    }
}

/// Starts the rollout most tests use: to `d2` with `backend` as the new version (`version: 2`), plan
/// Canary20Percent30Seconds, watched by alarm canary-5xx.
async fn start_canary(c: &reqwest::Client, s: &Server, d2: &str, backend: &Backend) -> String {
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": backend.addr.to_string(), "version": "2"},
                      "deploymentConfig": "Canary20Percent30Seconds", "alarms": ["canary-5xx"]});
    start(c, s, body).await
}

async fn start(c: &reqwest::Client, s: &Server, body: Value) -> String {
    let (status, r) = admin(c, s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_by_its_alarm() {
    let RolloutFixture {
        s,
        c,
        prod: _prod,
        next: broken,
        d1: _d1,
        d2,
        dir: _dir,
    } = rollout_fixture(Behaviour::FailTenths(3), 30).await;
    let before = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);

    let id = start_canary(&c, &s, &d2, &broken).await;
    // A second rollout on the same stage is refused while this one runs.
    let (status, _) = admin(
        &c,
        &s,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(json!({"deploymentConfig": "AllAtOnce"})),
    )
    .await;
    assert_eq!(status, 409);
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(25)).await;
    let (sent, failures) = load.finish().await;

    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap();
    assert!(last["reason"].as_str().unwrap().contains("canary-5xx"), "{last}");
    assert_eq!(last["observed"]["alarm"], "canary-5xx");
    assert_eq!(last["observed"]["threshold"], 0.05);
    let breaching = last["observed"]["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["value"].as_f64().is_some_and(|v| v > 0.05))
        .count();
    assert!(breaching >= 2, "{last}");
    assert!(broken.calls() > 0, "the canary got traffic before the alarm");
    // The stage is exactly as before.
    let after = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    for field in ["deploymentId", "variables", "canarySettings", "activeRollout"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The alarm's state and history are kept and exported.
    let alarm = ok(&c, &s, "GET", "/v1/alarms/canary-5xx", None).await;
    assert!(alarm["history"].as_array().unwrap().iter().any(|h| h["to"] == "ALARM"), "{alarm}");
    let prom = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
    assert!(prom.contains("canarygate_rollouts{status=\"RolledBack\"} 1"), "{prom}");
    assert!(prom.contains("canarygate_alarm_state{alarm=\"canary-5xx\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_succeeds_and_the_stage_moves() {
    let RolloutFixture {
        s,
        c,
        prod: _prod,
        next: healthy,
        d1: _d1,
        d2,
        dir: _dir,
    } = rollout_fixture(Behaviour::Echo, 30).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let id = start_canary(&c, &s, &d2, &healthy).await;
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(60)).await;
    let (sent, failures) = load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let weights: Vec<f64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["weight"].as_f64().unwrap())
        .collect();
    assert!(weights.contains(&20.0) && weights.last() == Some(&100.0), "{weights:?}");
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["deploymentId"], d2.as_str());
    assert_eq!(st["variables"], json!({"backend": healthy.addr.to_string(), "version": "2"}));
    assert!(st["canarySettings"].is_null() && st["activeRollout"].is_null());
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let calls = healthy.calls();
    for _ in 0..20 {
        let v: Value = c
            .get(format!("{}/orders/prod/x", s.gateway))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["backend"], "v2");
    }
    assert_eq!(healthy.calls(), calls + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variables_only_rollout_moves_the_stage_to_the_new_backend() {
    let RolloutFixture {
        s,
        c,
        prod: _prod,
        next,
        d1,
        d2: _,
        dir: _dir,
    } = rollout_fixture(Behaviour::Echo, 30).await;
    let id = start(
        &c,
        &s,
        json!({"stageVariableOverrides": {"backend": next.addr.to_string()}, "deploymentConfig": "CodeDeployDefault.LambdaAllAtOnce"}),
    )
    .await;
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(10)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["deploymentId"], d1.as_str(), "same deployment");
    assert_eq!(st["variables"]["backend"], next.addr.to_string());
    let v: Value = c
        .get(format!("{}/orders/prod/x", s.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["backend"], "v2");
    // Stop on an ended rollout: 409. Unknown config: 400 naming the field.
    assert_eq!(admin(&c, &s, "POST", &format!("/v1/rollouts/{id}/stop"), None).await.0, 409);
    let (status, v) = admin(
        &c,
        &s,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(json!({"deploymentConfig": "Nope"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("deploymentConfig"), "{v}");
    // Listing filters.
    let list = ok(&c, &s, "GET", "/v1/rollouts?api=orders&stage=prod&status=Succeeded", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(ok(&c, &s, "GET", "/v1/rollouts?status=Failed", None).await["items"], json!([]));
    assert_eq!(admin(&c, &s, "GET", "/v1/rollouts?status=Bogus", None).await.0, 400);
    assert_eq!(ok(&c, &s, "GET", "/v1/rollouts?limit=1", None).await["items"][0]["id"], id.as_str());
    for bad in ["0", "1001", "ten"] {
        let (status, v) = admin(&c, &s, "GET", &format!("/v1/rollouts?limit={bad}"), None).await;
        assert_eq!(status, 400);
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("limit") && m.contains(bad), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_wait_then_restart_finishes_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[], &[]);
    let c = client();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let (_d1, d2) = setup(&c, &s, &prod, 10).await;
    let id = start_canary(&c, &s, &d2, &next).await;
    // Wait until the canary is at 20%, then kill the process in the middle of the wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await;
        if r["weight"] == 20.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    s.kill();
    // Down for a while: that time does not count as watched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = Server::start(&data, &[], &[]);
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["canarySettings"]["percentTraffic"], 20.0, "the canary survived the restart");
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let gap = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"].as_str().unwrap().contains("resumed after a gap"));
    let gap = gap.unwrap_or_else(|| panic!("no gap event: {r}"));
    assert!(gap["observed"]["gapMs"].as_i64().unwrap() >= 3000, "{gap}");
    assert_eq!(
        ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await["deploymentId"],
        d2.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_waits_and_exits_0_on_success_and_1_on_rollback() {
    let RolloutFixture {
        s,
        c,
        prod: _prod,
        next: broken,
        d1: _d1,
        d2,
        dir: _dir,
    } = rollout_fixture(Behaviour::FailTenths(5), 30).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 3);
    let cli = |args: Vec<String>| {
        let admin = s.admin.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_canarygate"))
                    .arg("--server")
                    .arg(admin)
                    .args(args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = cli([
        "rollout",
        "start",
        "orders",
        "prod",
        "--config",
        "Canary20Percent30Seconds",
        "--deployment-id",
        &d2,
        "--override",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain([
        format!("backend={}", broken.addr),
        "--alarm".into(),
        "canary-5xx".into(),
        "--wait".into(),
    ])
    .collect())
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ended RolledBack"), "{stdout}");
    // Readable line by line in a non-terminal: no carriage returns or escape codes, one event a line.
    assert!(!stdout.contains('\r') && !stdout.contains('\x1b'), "{stdout:?}");
    assert!(stdout.lines().any(|l| l.contains("canary-5xx")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("progress: weight 20")), "{stdout}");

    let out = cli([
        "rollout",
        "start",
        "orders",
        "prod",
        "--config",
        "AllAtOnce",
        "--deployment-id",
        &d2,
        "--wait",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect())
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ended Succeeded"), "{stdout}");
    load.finish().await;

    let out = cli(vec!["-o".into(), "json".into(), "rollout".into(), "list".into()]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let out = cli(vec!["alarms".into(), "get".into(), "canary-5xx".into()]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ALARM"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_allow_traffic_hook_answers_202_reaches_the_canary_and_calls_back() {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;

    let RolloutFixture {
        s,
        c,
        prod: _prod,
        next,
        d1: _d1,
        d2,
        dir: _dir,
    } = rollout_fixture(Behaviour::Echo, 30).await;

    // The hook: records what it was sent and answers 202 (it will report later).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        tx.send(serde_json::from_slice(&body).unwrap()).unwrap();
                        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *r.status_mut() = hyper::StatusCode::ACCEPTED;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });

    let id = start(
        &c,
        &s,
        json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string()}, "deploymentConfig": "AllAtOnce",
               "hooks": {"beforeAllowTraffic": format!("http://{hook_addr}/before")}}),
    )
    .await;
    let call = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the hook was called")
        .unwrap();
    assert_eq!(call["rolloutId"], id.as_str());
    assert_eq!(call["lifecycleEvent"], "BeforeAllowTraffic");
    let exec = call["lifecycleEventHookExecutionId"].as_str().unwrap().to_string();

    // While the hook runs, no traffic has moved, but the hook can reach the canary with the header.
    let r = ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    assert_eq!(r["status"], "InProgress");
    assert_eq!(r["weight"], 0.0);
    let forced: Value = c
        .get(format!("{}/orders/prod/x", s.gateway))
        .header("x-canarygate-variant", "canary")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(forced["backend"], "v2");
    let plain: Value = c
        .get(format!("{}/orders/prod/x", s.gateway))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain["backend"], "v1");

    // A bad report is refused; the callback moves the rollout on.
    let (status, _) = admin(
        &c,
        &s,
        "PUT",
        &format!("/v1/rollouts/{id}/hooks/{exec}"),
        Some(json!({"status": "Maybe"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        admin(
            &c,
            &s,
            "PUT",
            &format!("/v1/rollouts/{id}/hooks/h-unknown"),
            Some(json!({"status": "Succeeded"}))
        )
        .await
        .0,
        404
    );
    ok(
        &c,
        &s,
        "PUT",
        &format!("/v1/rollouts/{id}/hooks/{exec}"),
        Some(json!({"status": "Succeeded"})),
    )
    .await;
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(10)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_and_updates_alarms_and_deployment_configs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let file = dir.path().join("r.yaml");
    let write = |threshold: f64| {
        std::fs::write(
            &file,
            format!(
                "deploymentConfigs:\n  - {{name: Canary20Percent30Seconds, type: TimeBasedCanary, percentage: 20, intervalSeconds: 30}}\n\
                 alarms:\n  - {{name: orders-prod-canary-5xx, api: orders, stage: prod, variant: canary, metric: 5XXError, statistic: Average,\n     \
                 periodSeconds: 10, evaluationPeriods: 3, datapointsToAlarm: 2, comparison: GreaterThanThreshold, threshold: {threshold}, treatMissingData: notBreaching}}\n"
            ),
        )
        .unwrap()
    };
    let apply = || {
        let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(["--server", &s.admin, "apply", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    write(0.05);
    let out = apply();
    assert!(
        out.contains("put deployment config Canary20Percent30Seconds") && out.contains("put alarm orders-prod-canary-5xx"),
        "{out}"
    );
    assert_eq!(apply().trim(), "no changes");
    write(0.1);
    let out = apply();
    assert_eq!(out.lines().count(), 1, "{out}");
    let c = client();
    let a = ok(&c, &s, "GET", "/v1/alarms/orders-prod-canary-5xx", None).await;
    assert_eq!(a["threshold"], 0.1);
    assert_eq!(a["treatMissingData"], "notBreaching");
    let configs = ok(&c, &s, "GET", "/v1/deployment-configs", None).await;
    let names: Vec<&str> = configs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 10, "9 predefined + 1 custom: {names:?}");
    assert!(names.contains(&"Linear10PercentEvery1Minute") && names.contains(&"Canary20Percent30Seconds"));
    // Bad definitions are refused with the field named.
    let (status, v) = admin(
        &c,
        &s,
        "PUT",
        "/v1/deployment-configs/x",
        Some(json!({"type": "TimeBasedLinear", "percentage": 150, "intervalSeconds": 1})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("percentage"), "{v}");
    let (status, v) = admin(&c, &s, "PUT", "/v1/alarms/y", Some(json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "Errors",
        "statistic": "Sum", "periodSeconds": 1, "evaluationPeriods": 1, "datapointsToAlarm": 1, "comparison": "GreaterThanThreshold", "threshold": 1}))).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("metric"), "{v}");
}

//! Canary analysis end to end (PRODUCT.md §12): the real binary, real backends with set error rates
//! and delays, steady client load. Healthy scenarios are judged at alpha 1e-4 so the suite does not
//! fail by chance.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// API `orders` with deployments d1 and d2, stage `prod` on d1 behind `production` (with `routing`),
/// and the plan Canary20Percent`seconds`Seconds. Returns d2.
async fn setup(c: &reqwest::Client, s: &Server, production: &Backend, seconds: u64, routing: Value) -> String {
    let routes = json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}", "timeoutMs": 5000}}]});
    ok(c, s, "PUT", "/v1/apis/orders", Some(routes)).await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v1"}))).await;
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v2"}))).await;
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders/stages/prod",
        Some(json!({"deploymentId": d1["id"], "variables": {"backend": production.addr.to_string()}, "canaryRouting": routing})),
    )
    .await;
    ok(
        c,
        s,
        "PUT",
        &format!("/v1/deployment-configs/Canary20Percent{seconds}Seconds"),
        Some(json!({"type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": seconds})),
    )
    .await;
    d2["id"].as_str().unwrap().to_string()
}

struct Fx {
    s: Server,
    c: reqwest::Client,
    prod: Backend,
    next: Backend,
    d2: String,
    _dir: tempfile::TempDir,
}

async fn fx(seconds: u64, routing: Value) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let d2 = setup(&c, &s, &prod, seconds, routing).await;
    Fx {
        s,
        c,
        prod,
        next,
        d2,
        _dir: dir,
    }
}

async fn start(f: &Fx, seconds: u64, analysis: Value) -> String {
    let body = json!({"deploymentId": f.d2, "stageVariableOverrides": {"backend": f.next.addr.to_string()},
                      "deploymentConfig": format!("Canary20Percent{seconds}Seconds"), "analysis": analysis});
    let (status, r) = admin(&f.c, &f.s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// Polls the rollout until `cond` holds; the guard only turns a hang into a failure.
async fn until(f: &Fx, id: &str, guard: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + guard;
    loop {
        let r = ok(&f.c, &f.s, "GET", &format!("/v1/rollouts/{id}"), None).await;
        if cond(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "condition not reached: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn last_event(r: &Value) -> &Value {
    r["events"].as_array().unwrap().last().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_three_times_the_errors_is_rolled_back_by_the_analysis() {
    let f = fx(120, json!({})).await;
    f.prod.fail(0.01);
    f.next.fail(0.03);
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    // Started and followed by the CLI, as a pipeline would; no threshold alarm at all.
    let (admin_url, d2, next) = (f.s.admin.clone(), f.d2.clone(), f.next.addr.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args([
                "--server",
                &admin_url,
                "rollout",
                "start",
                "orders",
                "prod",
                "--config",
                "Canary20Percent120Seconds",
            ])
            .args(["--deployment-id", &d2, "--override", &format!("backend={next}")])
            .args(["--analysis", "errors", "--alpha", "0.01", "--wait"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (sent, failures) = load.finish().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("evidence: errors: canary"), "{stdout}");
    assert!(stdout.contains("analysis rejected the canary (errorRate)"), "{stdout}");

    let list = ok(&f.c, &f.s, "GET", "/v1/rollouts", None).await;
    let r = &list["items"][0];
    assert_eq!(r["status"], "RolledBack", "{r}");
    let ev = &last_event(r)["observed"]["errorRate"];
    assert!(ev["eValue"].as_f64().unwrap() >= 100.0, "{ev}");
    assert!(ev["pValue"].as_f64().unwrap() <= 0.01, "{ev}");
    assert!(ev["ratio"].as_f64().unwrap() > 1.5, "{ev}");
    assert!(ev["canaryErrors"].as_u64().unwrap() > 0 && ev["productionErrors"].as_u64().unwrap() > 0);
    let st = ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert!(st["canarySettings"].is_null(), "{st}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // `rollout status` prints the evidence too.
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["--server", &f.s.admin, "rollout", "status", r["id"].as_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evidence: errors: canary") && text.contains("REJECTED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_under_a_shared_incident_is_promoted() {
    let f = fx(30, json!({})).await;
    f.prod.fail(0.01);
    f.next.fail(0.01);
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let id = start(&f, 30, json!({"errorRate": {"alpha": 1e-4}, "latency": {"alpha": 1e-4}})).await;
    // Once the judgement has seen some seconds, both backends fail 20% for 10 s.
    until(&f, &id, Duration::from_secs(30), |r| {
        r["evidence"]["batches"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    f.prod.fail(0.2);
    f.next.fail(0.2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    f.prod.fail(0.01);
    f.next.fail(0.01);
    let r = wait_rollout(&f.c, &f.s, &id, Duration::from_secs(60)).await;
    let (sent, failures) = load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let ev = &r["evidence"]["errorRate"];
    // The incident is in the evidence: many errors on both sides, and no rejection.
    assert!(ev["productionErrors"].as_u64().unwrap() > 100, "{ev}");
    assert!(ev["canaryErrors"].as_u64().unwrap() > 20, "{ev}");
    assert_eq!(ev["rejected"], false);
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_50ms_slower_is_rolled_back_by_the_latency_judgement() {
    let f = fx(120, json!({})).await;
    f.next.delay(Duration::from_millis(50));
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let id = start(&f, 120, json!({"latency": {"alpha": 0.01}})).await;
    let r = wait_rollout(&f.c, &f.s, &id, Duration::from_secs(90)).await;
    load.finish().await;
    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = last_event(&r);
    assert!(last["reason"].as_str().unwrap().contains("(latency)"), "{last}");
    let ev = &last["observed"]["latency"];
    assert!(ev["eValue"].as_f64().unwrap() >= 100.0, "{ev}");
    let (canary, production) = (ev["canaryP50Ms"].as_f64().unwrap(), ev["productionP50Ms"].as_f64().unwrap());
    assert!(canary > production + 30.0, "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_canary_requests_holds_a_step_until_traffic_comes() {
    let f = fx(2, json!({})).await;
    let id = start(&f, 2, json!({"errorRate": {"alpha": 1e-4}, "minCanaryRequests": 300})).await;
    // No traffic: the 2-second step does not end; the rollout says why.
    let r = until(&f, &id, Duration::from_secs(20), |r| r["waitingFor"].as_str().is_some()).await;
    assert!(r["waitingFor"].as_str().unwrap().contains("waiting for traffic"), "{r}");
    assert_eq!(r["weight"], 20.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = ok(&f.c, &f.s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    assert_eq!(
        (r["status"].as_str(), r["weight"].as_f64()),
        (Some("InProgress"), Some(20.0)),
        "{r}"
    );
    // Traffic comes: the step ends once the canary has served 300 requests.
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let r = wait_rollout(&f.c, &f.s, &id, Duration::from_secs(60)).await;
    load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    assert!(r["evidence"]["errorRate"]["canaryRequests"].as_u64().unwrap() >= 300, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evidence_survives_a_sigkill() {
    let mut f = fx(30, json!({})).await;
    f.prod.fail(0.01);
    f.next.fail(0.01);
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let id = start(&f, 30, json!({"errorRate": {"alpha": 1e-4}})).await;
    let before = until(&f, &id, Duration::from_secs(30), |r| {
        r["evidence"]["batches"].as_u64().unwrap_or(0) >= 8
    })
    .await;
    f.s.kill();
    load.finish().await;
    let data = f.s.data_dir.clone();
    f.s = Server::start(&data, &[], &[]);
    let after = ok(&f.c, &f.s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    let n = |r: &Value, p: &str| r["evidence"].pointer(p).and_then(Value::as_u64).unwrap();
    // The e-values continue from where they were, not from the start.
    assert!(n(&after, "/batches") >= n(&before, "/batches"), "{before}\n{after}");
    assert!(n(&after, "/errorRate/canaryRequests") >= n(&before, "/errorRate/canaryRequests"));
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let more = until(&f, &id, Duration::from_secs(30), |r| {
        r["evidence"]["batches"].as_u64().unwrap_or(0) > n(&after, "/batches") + 3
    })
    .await;
    assert!(n(&more, "/errorRate/canaryRequests") > n(&after, "/errorRate/canaryRequests"));
    let r = wait_rollout(&f.c, &f.s, &id, Duration::from_secs(60)).await;
    load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stickiness_one_clients_errors_count_once_per_batch() {
    let f = fx(60, json!({"stickiness": "header:x-user"})).await;
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 3);
    // At the smallest alpha, so that one failing user does not end the rollout during the test.
    let id = start(&f, 60, json!({"errorRate": {"alpha": 1e-9}})).await;
    until(&f, &id, Duration::from_secs(20), |r| r["weight"] == 20.0).await;
    // A sticky user whose requests land on the canary, and fail there: 50 a second.
    let mut user = None;
    for i in 0..200 {
        let u = format!("user-{i}");
        let r =
            f.c.get(format!("{}/orders/prod/items", f.s.gateway))
                .header("x-user", &u)
                .send()
                .await
                .unwrap();
        if r.headers()["x-canarygate-variant"] == "canary" {
            user = Some(u);
            break;
        }
    }
    let user = user.expect("a user on the canary");
    let t0 = Instant::now();
    let mut failing = 0u64;
    while t0.elapsed() < Duration::from_secs(8) {
        let r =
            f.c.get(format!("{}/orders/prod/items?fail=1", f.s.gateway))
                .header("x-user", &user)
                .send()
                .await
                .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.headers()["x-canarygate-variant"].to_str().unwrap()),
            (500, "canary")
        );
        failing += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = ok(&f.c, &f.s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    load.finish().await;
    let errors = r["evidence"]["errorRate"]["canaryErrors"].as_u64().unwrap();
    // About one per second it failed in (at most 10), not one per failed request (hundreds).
    assert!(failing >= 100, "{failing}");
    assert!(
        (5..=11).contains(&errors),
        "{errors} canary errors counted from {failing} failed requests: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_analyses_come_from_apply_and_are_copied_into_rollouts() {
    let f = fx(60, json!({})).await;
    let file = f._dir.path().join("analysis.yaml");
    std::fs::write(
        &file,
        "analyses:\n  - name: strict\n    errorRate: {alpha: 0.001}\n    latency: {alpha: 0.001}\n    warmupSeconds: 5\n    minCanaryRequests: 100\n",
    )
    .unwrap();
    let apply = || {
        Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(["--server", &f.s.admin, "apply", "-f"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = apply();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("put analysis strict"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&apply().stdout).trim(), "no changes");
    let listed = ok(&f.c, &f.s, "GET", "/v1/analyses", None).await;
    assert_eq!(listed["items"][0]["name"], "strict");
    assert_eq!(listed["items"][0]["minCanaryRequests"], 100);

    // Bad input names the field and changes nothing.
    let (status, e) = admin(&f.c, &f.s, "PUT", "/v1/analyses/loose", Some(json!({"errorRate": {"alpha": 0.5}}))).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e.to_string().contains("analysis.errorRate.alpha") && e.to_string().contains("0.5"),
        "{e}"
    );
    let (status, _) = admin(&f.c, &f.s, "GET", "/v1/analyses/loose", None).await;
    assert_eq!(status, 404);
    let body = json!({"deploymentId": f.d2, "deploymentConfig": "Canary20Percent60Seconds", "analysis": "nope"});
    let (status, e) = admin(&f.c, &f.s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("analysis") && e.to_string().contains("nope"), "{e}");

    // By name, from the CLI: the rollout carries a copy.
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args([
            "--server",
            &f.s.admin,
            "-o",
            "json",
            "rollout",
            "start",
            "orders",
            "prod",
            "--config",
            "Canary20Percent60Seconds",
        ])
        .args(["--deployment-id", &f.d2, "--analysis", "strict"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["analysis"]["name"], "strict", "{r}");
    assert_eq!(r["analysis"]["warmupSeconds"], 5);
    // Changing the stored analysis does not change the running rollout's copy.
    ok(
        &f.c,
        &f.s,
        "PUT",
        "/v1/analyses/strict",
        Some(json!({"errorRate": {"alpha": 0.01}})),
    )
    .await;
    let id = r["id"].as_str().unwrap();
    let now = ok(&f.c, &f.s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    assert_eq!(now["analysis"]["latency"]["alpha"], 0.001, "{now}");
    assert!(now["evidence"]["latency"].is_object(), "{now}");
    ok(&f.c, &f.s, "POST", &format!("/v1/rollouts/{id}/stop"), Some(json!({}))).await;
}

/// Requests of a cohort are judged as forced ones: a canary failing every request of a beta cohort
/// (and none of the randomly routed ones) is not rejected by the error-rate judgement, which compares
/// the randomly routed requests of both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cohort_alone_is_not_the_random_canarys_errors() {
    let f = fx(8, json!({"cohorts": [{"query": "beta", "equals": "1"}]})).await;
    let random = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 3);
    // The backend answers 500 to `fail`: every cohort request fails, on the canary only.
    let cohort = Load::start(&f.c, &format!("{}/orders/prod/items?beta=1&fail=1", f.s.gateway), 2);
    let id = start(&f, 8, json!({"errorRate": {"alpha": 0.01}})).await;
    let r = until(&f, &id, Duration::from_secs(60), |r| {
        r["status"] != "InProgress" && r["status"] != "Created"
    })
    .await;
    let (_, cohort_failures) = cohort.finish().await;
    let (sent, failures) = random.finish().await;
    assert_eq!(r["status"], "Succeeded", "{}", last_event(&r));
    assert!(failures.is_empty(), "{} of {sent} random requests failed", failures.len());
    // The cohort's requests did reach the canary and fail there.
    assert!(f.next.calls() > 0);
    assert!(
        cohort_failures.is_empty(),
        "the backend's own 500s are answers, not failures: {cohort_failures:?}"
    );
    let canary_errors = v1_sum(&f.c, &f.s, "canary", "5XXError").await;
    assert!(
        canary_errors >= 10.0,
        "the cohort's errors are in the canary's metrics ({canary_errors})"
    );
    let judged = &r["evidence"]["errorRate"];
    assert_eq!(judged["canaryErrors"].as_u64(), Some(0), "{judged}");
}

/// A dry-run analysis judges and records, never acts: a canary with twenty times production's errors is
/// rejected on paper ("would have rolled back at ..." in the record and in `rollout status`), and the
/// rollout still succeeds. A dry-run alarm on the same errors is noted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_analysis_records_what_it_would_have_done_and_the_rollout_succeeds() {
    let f = fx(8, json!({})).await;
    f.prod.fail(0.01);
    f.next.fail(0.2);
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError", "statistic": "Average",
        "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05,
        "dryRun": true});
    let a = ok(&f.c, &f.s, "PUT", "/v1/alarms/trial-5xx", Some(alarm)).await;
    assert_eq!(a["dryRun"], true, "{a}");
    let load = Load::start(&f.c, &format!("{}/orders/prod/items", f.s.gateway), 4);
    let body = json!({"deploymentId": f.d2, "stageVariableOverrides": {"backend": f.next.addr.to_string()},
                      "deploymentConfig": "Canary20Percent8Seconds", "alarms": ["trial-5xx"],
                      "analysis": {"errorRate": {"alpha": 0.05}, "minCanaryRequests": 100000000, "dryRun": true}});
    let r = ok(&f.c, &f.s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    let id = r["id"].as_str().unwrap().to_string();
    let r = until(&f, &id, Duration::from_secs(60), |r| {
        r["status"] != "InProgress" && r["status"] != "Created"
    })
    .await;
    load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{}", last_event(&r));
    let moments = r["wouldHaveRolledBack"]
        .as_array()
        .unwrap_or_else(|| panic!("nothing recorded: {r}"));
    let by: Vec<&str> = moments.iter().map(|w| w["by"].as_str().unwrap()).collect();
    assert!(by.contains(&"analysis (errorRate)"), "{by:?}");
    assert!(by.contains(&"alarm trial-5xx"), "{by:?}");
    let text = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(["--server", &f.s.admin, "rollout", "status", &id])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(text.contains("dry run: analysis (errorRate) would have rolled back at"), "{text}");
    let st = ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["deploymentId"], f.d2.as_str(), "promoted: {st}");
}

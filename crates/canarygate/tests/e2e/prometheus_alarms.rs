//! Alarms over Prometheus (PRODUCT.md §13): a real Prometheus server (Debian's package) scraping the real
//! backends' own metrics; a templated PromQL alarm rolls back a canary whose backend starts reporting
//! errors, and an alarm on a Prometheus that is down stays INSUFFICIENT_DATA without failing the rollout.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// API `orders`, deployments d1 and d2, stage `prod` on `production` (variables backend and name), and
/// the plan Canary20Percent`seconds`Seconds. Returns d2.
async fn setup(c: &reqwest::Client, s: &Server, production: &Backend, seconds: u64) -> String {
    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    ok(c, s, "PUT", "/v1/apis/orders", Some(routes)).await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    let stage = json!({"deploymentId": d1["id"], "variables": {"backend": production.addr.to_string(), "name": production.name}});
    ok(c, s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
    let plan = json!({"type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": seconds});
    ok(
        c,
        s,
        "PUT",
        &format!("/v1/deployment-configs/Canary20Percent{seconds}Seconds"),
        Some(plan),
    )
    .await;
    d2["id"].as_str().unwrap().to_string()
}

/// The canary backend's own error rate, by its name from the canary's stage variables.
fn alarm(url: &str) -> Value {
    json!({"api": "orders", "stage": "prod", "variant": "canary",
           "prometheus": {"url": url, "query": "sum(rate(app_errors_total{backend=\"${stageVariables.name}\"}[5s]))"},
           "periodSeconds": 2, "evaluationPeriods": 3, "datapointsToAlarm": 2,
           "comparison": "GreaterThanThreshold", "threshold": 1})
}

async fn start(c: &reqwest::Client, s: &Server, d2: &str, next: &Backend, seconds: u64) -> String {
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string(), "name": next.name},
                      "deploymentConfig": format!("Canary20Percent{seconds}Seconds"), "alarms": ["canary-errors"]});
    let (status, r) = admin(c, s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    assert_eq!(status, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

async fn until(c: &reqwest::Client, s: &Server, path: &str, guard: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + guard;
    loop {
        let v = ok(c, s, "GET", path, None).await;
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not reached on {path}: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promql_alarm_on_the_canary_backends_own_errors_rolls_back() {
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let prom = Prometheus::start(&[prod.addr, next.addr]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let d2 = setup(&c, &s, &prod, 120).await;
    ok(&c, &s, "PUT", "/v1/alarms/canary-errors", Some(alarm(&prom.url))).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let id = start(&c, &s, &d2, &next, 120).await;

    // Healthy first: the templated query (the canary's `name` override, v2) gives values, all below the
    // threshold, so the alarm is OK and the rollout goes on.
    let a = until(&c, &s, "/v1/alarms/canary-errors", Duration::from_secs(30), |a| a["state"] == "OK").await;
    let values: Vec<f64> = a["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .collect();
    assert!(!values.is_empty() && values.iter().all(|v| *v < 1.0), "{a}");
    assert_eq!(ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await["status"], "InProgress");
    assert!(prom.value("sum(app_requests_total{backend=\"v2\"})").await.unwrap_or(0.0) > 0.0);

    // The canary's backend starts failing: its own error counter climbs, the alarm fires, rollback.
    next.fail(0.5);
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(40)).await;
    let (sent, failures) = load.finish().await;
    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap();
    assert!(
        last["reason"].as_str().unwrap().contains("alarm canary-errors entered ALARM"),
        "{last}"
    );
    let breaching = last["observed"]["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["value"].as_f64().is_some_and(|v| v > 1.0))
        .count();
    assert!(breaching >= 2, "{last}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // The definition shows its query, not a metric.
    let a = ok(&c, &s, "GET", "/v1/alarms/canary-errors", None).await;
    assert!(
        a["metric"].is_null() && a["prometheus"]["query"].as_str().unwrap().contains("${stageVariables.name}"),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_is_down_leaves_the_alarm_without_data_and_the_rollout_goes_on() {
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let d2 = setup(&c, &s, &prod, 8).await;
    let down = format!("http://{}", closed_port());
    ok(&c, &s, "PUT", "/v1/alarms/canary-errors", Some(alarm(&down))).await;
    // Bad definitions are refused with the field named.
    let mut bad = alarm(&down);
    bad["metric"] = json!("5XXError");
    let (status, e) = admin(&c, &s, "PUT", "/v1/alarms/both", Some(bad)).await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("metric"), "{e}");
    let mut bad = alarm(&down);
    bad["prometheus"]["query"] = json!("up{x=\"${nope}\"}");
    let (status, e) = admin(&c, &s, "PUT", "/v1/alarms/bad-placeholder", Some(bad)).await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("${nope}"), "{e}");

    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 2);
    let id = start(&c, &s, &d2, &next, 8).await;
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(40)).await;
    load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let a = ok(&c, &s, "GET", "/v1/alarms/canary-errors", None).await;
    assert_eq!(a["state"], "INSUFFICIENT_DATA", "{a}");
    assert!(a["stateReason"].as_str().unwrap().contains("cannot be reached"), "{a}");
}

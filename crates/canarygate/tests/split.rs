//! The traffic split of a stage's canary, measured through the real binary against two real backends.

mod common;

use common::*;
use serde_json::json;

/// Asserts `got` canary requests out of `n` at `percent` is within 4 binomial standard deviations.
fn within_4_sigma(got: usize, n: usize, percent: f64) {
    let p = percent / 100.0;
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (got as f64 - mean).abs() <= 4.0 * sd,
        "{got} canary of {n} at {percent}%: expected {mean} ± {}",
        4.0 * sd
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_binomially() {
    let Fixture {
        s,
        prod,
        canary,
        c,
        dir: _dir,
        ..
    } = fixture(10.0, json!({})).await;
    let url = format!("{}/orders/prod/items", s.gateway);

    let got = count_canary(&c, &url, 5000, 8).await;
    within_4_sigma(got, 5000, 10.0);
    assert_eq!(canary.calls(), got, "every canary-labelled request reached the canary backend");
    assert_eq!(prod.calls(), 5000 - got);

    set_percent(&c, &s, 0.1).await;
    let got = count_canary(&c, &url, 20_000, 8).await;
    within_4_sigma(got, 20_000, 0.1);

    set_percent(&c, &s, 0.0).await;
    assert_eq!(count_canary(&c, &url, 1000, 8).await, 0);
    set_percent(&c, &s, 100.0).await;
    assert_eq!(count_canary(&c, &url, 1000, 8).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_header_forces_either_side_and_overrides_reach_only_the_canary() {
    let Fixture {
        s,
        prod,
        canary,
        c,
        dir: _dir,
        ..
    } = fixture(50.0, json!({})).await;
    let url = format!("{}/orders/prod/items/7?x=1", s.gateway);
    for (forced, backend) in [("canary", "canary"), ("production", "production")] {
        for _ in 0..50 {
            let r = c.get(&url).header("x-canarygate-variant", forced).send().await.unwrap();
            assert_eq!(r.headers()["x-canarygate-variant"], forced);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["backend"], backend, "the override sends the canary to its own backend only");
            assert_eq!(v["path"], "/items/7");
            assert_eq!(v["query"], "x=1");
        }
    }
    // Stage variables reach mock integrations too: the canary sees its overridden `version`.
    let body = |v: &'static str| {
        let (c, url) = (c.clone(), format!("{}/orders/prod/version", s.gateway));
        async move {
            c.get(url)
                .header("x-canarygate-variant", v)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(body("canary").await, "2");
    assert_eq!(body("production").await, "1");
    // Random choice: every response labelled canary came from the canary backend, and the reverse.
    for _ in 0..200 {
        let r = c.get(&url).send().await.unwrap();
        let label = r.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["backend"], label);
    }
    assert_eq!(prod.calls() + canary.calls(), 300);

    // Access logs: every request in the stage log, canary requests also in Canary.log. SIGTERM flushes.
    let mut s = s;
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(s.child.wait().unwrap().success());
    let logs = s.data_dir.join("logs/orders");
    let stage_log = std::fs::read_to_string(logs.join("prod.log")).unwrap();
    let canary_log = std::fs::read_to_string(logs.join("prod/Canary.log")).unwrap();
    assert_eq!(stage_log.lines().count(), 302, "300 proxied + 2 mock requests");
    let canary_lines: Vec<serde_json::Value> = canary_log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        canary_lines.len(),
        canary.calls() + 1,
        "every canary request, the mock one included"
    );
    assert!(canary_lines.iter().all(|l| l["variant"] == "canary"));
    let first: serde_json::Value = serde_json::from_str(stage_log.lines().next().unwrap()).unwrap();
    for field in [
        "requestId",
        "time",
        "ip",
        "method",
        "path",
        "status",
        "latencyMs",
        "integrationLatencyMs",
        "variant",
        "deploymentId",
        "cache",
        "userAgent",
    ] {
        assert!(first.get(field).is_some(), "access log line lacks {field}: {first}");
    }
    assert_eq!(first["path"], "/orders/prod/items/7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_forces_the_variant_when_configured() {
    let Fixture {
        s,
        prod: _prod,
        canary: _canary,
        c,
        dir: _dir,
        ..
    } = fixture(0.0, json!({"header": null, "cookie": "cg-variant"})).await;
    let url = format!("{}/orders/prod/x", s.gateway);
    let r = c.get(&url).header("cookie", "a=b; cg-variant=canary").send().await.unwrap();
    assert_eq!(r.headers()["x-canarygate-variant"], "canary");
    // The header was switched off, so it no longer forces anything.
    let r = c.get(&url).header("x-canarygate-variant", "canary").send().await.unwrap();
    assert_eq!(r.headers()["x-canarygate-variant"], "production");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_stay_and_canary_clients_stay_as_the_weight_grows() {
    let Fixture {
        s,
        prod: _prod,
        canary: _canary,
        c,
        dir: _dir,
        ..
    } = fixture(10.0, json!({"stickiness": "header:x-user"})).await;
    let url = format!("{}/orders/prod/x", s.gateway);

    async fn side(c: &reqwest::Client, url: &str, user: usize) -> String {
        let r = c.get(url).header("x-user", format!("user-{user}")).send().await.unwrap();
        r.headers()["x-canarygate-variant"].to_str().unwrap().to_string()
    }

    let users = 400;
    let mut at10 = Vec::new();
    for u in 0..users {
        let first = side(&c, &url, u).await;
        for _ in 0..4 {
            assert_eq!(side(&c, &url, u).await, first, "user {u} switched sides at 10%");
        }
        at10.push(first == "canary");
    }
    let canary10 = at10.iter().filter(|x| **x).count();
    within_4_sigma(canary10, users, 10.0);

    set_percent(&c, &s, 30.0).await;
    let mut canary30 = 0;
    for (u, was_canary) in at10.iter().enumerate() {
        let now = side(&c, &url, u).await;
        if *was_canary {
            assert_eq!(now, "canary", "user {u} was on the canary at 10% and left it at 30%");
        }
        canary30 += usize::from(now == "canary");
    }
    within_4_sigma(canary30, users, 30.0);
    assert!(canary30 > canary10);
}

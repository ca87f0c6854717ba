//! The traffic split of a stage's canary, measured through the real binary against two real backends.

use crate::common::*;
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

/// The set of `keys` sticky users the canary serves now (one request each, 16 at a time).
async fn canary_keys(c: &reqwest::Client, url: &str, keys: usize) -> std::collections::BTreeSet<usize> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..keys)
        .map(|u| async move {
            let r = c.get(url).header("x-user", format!("user-{u}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (r.headers()["x-canarygate-variant"] == "canary").then_some(u)
        })
        .buffer_unordered(16)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Starts a variables-only rollout on the `Gates` plan (20% until approved, 50% until approved) and
/// waits for its 20%.
async fn gated_rollout(c: &reqwest::Client, s: &Server, canary: &Backend) -> String {
    let body = json!({"stageVariableOverrides": {"backend": canary.addr.to_string()}, "deploymentConfig": "Gates"});
    let r = ok(c, s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    let id = r["id"].as_str().unwrap().to_string();
    at_weight(c, s, &id, 20.0).await;
    id
}

async fn at_weight(c: &reqwest::Client, s: &Server, id: &str, weight: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = ok(c, s, "GET", "/v1/apis/orders/stages/prod", None).await;
        if st["canarySettings"]["percentTraffic"] == weight {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "rollout {id} never reached {weight}%: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn stop(c: &reqwest::Client, s: &Server, id: &str) {
    ok(c, s, "POST", &format!("/v1/rollouts/{id}/stop"), Some(json!({}))).await;
    wait_rollout(c, s, id, std::time::Duration::from_secs(30)).await;
}

/// Each rollout salts the sticky hash with its own salt: two rollouts put different sets of 1,000 keys
/// on the canary (they share about the weight's square of them), within one rollout no key leaves
/// the canary as the weight grows, and a pinned `canaryRouting.salt` gives the same set every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rollout_salts_the_sticky_keys_and_a_pinned_salt_repeats_them() {
    let Fixture {
        s,
        prod: _prod,
        canary,
        c,
        dir: _dir,
        ..
    } = fixture(0.0, json!({"stickiness": "header:x-user"})).await;
    ok(
        &c,
        &s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "remove", "path": "/canarySettings"}]})),
    )
    .await;
    let plan = json!({"type": "Steps", "steps": [{"percentage": 20, "approval": true}, {"percentage": 50, "approval": true}]});
    ok(&c, &s, "PUT", "/v1/deployment-configs/Gates", Some(plan)).await;
    let url = format!("{}/orders/prod/x", s.gateway);
    let n = 1000;

    let first = gated_rollout(&c, &s, &canary).await;
    let a1 = canary_keys(&c, &url, n).await;
    within_4_sigma(a1.len(), n, 20.0);
    ok(&c, &s, "POST", &format!("/v1/rollouts/{first}/approve"), None).await;
    at_weight(&c, &s, &first, 50.0).await;
    let b1 = canary_keys(&c, &url, n).await;
    within_4_sigma(b1.len(), n, 50.0);
    assert!(
        a1.is_subset(&b1),
        "keys left the canary as the weight grew: {:?}",
        a1.difference(&b1).collect::<Vec<_>>()
    );
    stop(&c, &s, &first).await;

    let second = gated_rollout(&c, &s, &canary).await;
    let a2 = canary_keys(&c, &url, n).await;
    within_4_sigma(a2.len(), n, 20.0);
    let both = a1.intersection(&a2).count();
    eprintln!(
        "rollouts {first} and {second}: {} and {} keys on the canary, {both} on both",
        a1.len(),
        a2.len()
    );
    // Independent salts: about 20% of 20% (40 of 1,000), far from the 200 one salt would give.
    within_4_sigma(both, n, 4.0);
    // The stage keeps the last rollout's salt after it ends.
    stop(&c, &s, &second).await;
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["stickySalt"], second.as_str(), "{st}");

    // A pinned salt: the same keys, rollout after rollout.
    let pin = json!({"patchOperations": [{"op": "replace", "path": "/canaryRouting/salt", "value": "team-cohort"}]});
    ok(&c, &s, "PATCH", "/v1/apis/orders/stages/prod", Some(pin)).await;
    let mut sets = Vec::new();
    for _ in 0..2 {
        let id = gated_rollout(&c, &s, &canary).await;
        sets.push(canary_keys(&c, &url, n).await);
        stop(&c, &s, &id).await;
    }
    assert_eq!(sets[0], sets[1], "a pinned salt gave two different sets");
    within_4_sigma(sets[0].len(), n, 20.0);
}

/// Cohorts go to their variant before the weighted draw, even at 0%; everyone else splits by weight;
/// a source-address rule; the variant header from an address the stage does not trust is ignored, and
/// honoured with the stage's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohorts_win_over_the_weight_and_untrusted_clients_cannot_force_the_canary() {
    let routing = json!({"trustedSources": ["10.0.0.0/8"], "headerToken": "qa-token-0123456789",
        "cohorts": [{"header": "x-tenant", "in": ["a", "b", "c"]}, {"query": "beta", "equals": "1"}]});
    let Fixture {
        s,
        prod: _prod,
        canary: _canary,
        c,
        dir: _dir,
        ..
    } = fixture(0.0, routing).await;
    let url = format!("{}/orders/prod/items", s.gateway);
    let side = |r: reqwest::Response| r.headers()["x-canarygate-variant"].to_str().unwrap().to_string();
    for tenant in ["a", "b", "c"] {
        for _ in 0..20 {
            let r = c.get(&url).header("x-tenant", tenant).send().await.unwrap();
            assert_eq!(side(r), "canary", "tenant {tenant} at 0%");
        }
    }
    let r = c.get(&url).header("x-tenant", "d").send().await.unwrap();
    assert_eq!(side(r), "production");
    let r = c.get(format!("{url}?x=2&beta=1")).send().await.unwrap();
    assert_eq!(side(r), "canary", "the query cohort");
    // From 127.0.0.1, which is not in trustedSources: the header is ignored; with the token it is honoured.
    for _ in 0..50 {
        let r = c.get(&url).header("x-canarygate-variant", "canary").send().await.unwrap();
        assert_eq!(side(r), "production", "an untrusted client forced the canary");
    }
    let r = c
        .get(&url)
        .header("x-canarygate-variant", "canary; token=qa-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(side(r), "canary");
    let r = c
        .get(&url)
        .header("x-canarygate-variant", "canary; token=wrong-token-0123456")
        .send()
        .await
        .unwrap();
    assert_eq!(side(r), "production");

    // At 30%: the cohort still always, the rest within 4 sigma.
    set_percent(&c, &s, 30.0).await;
    within_4_sigma(count_canary(&c, &url, 1000, 8).await, 1000, 30.0);
    for _ in 0..50 {
        let r = c.get(&url).header("x-tenant", "a").send().await.unwrap();
        assert_eq!(side(r), "canary");
    }

    // A source-address rule, listed first: everything from loopback goes to production, tenant a of the
    // canary cohort after it too (the first matching cohort decides).
    let routing = json!({"cohorts": [{"sourceCidr": "127.0.0.1/32", "variant": "production"}, {"header": "x-tenant", "in": ["a"]}]});
    let patch = json!({"patchOperations": [{"op": "replace", "path": "/canaryRouting", "value": routing.to_string()}]});
    ok(&c, &s, "PATCH", "/v1/apis/orders/stages/prod", Some(patch)).await;
    assert_eq!(count_canary(&c, &url, 300, 8).await, 0);
    let r = c.get(&url).header("x-tenant", "a").send().await.unwrap();
    assert_eq!(side(r), "production", "the first matching cohort decides");

    // Bad cohorts: 400 naming the field, nothing changed.
    let bad = json!({"cohorts": [{"header": "x-tenant"}]});
    let patch = json!({"patchOperations": [{"op": "replace", "path": "/canaryRouting", "value": bad.to_string()}]});
    let (status, e) = admin(&c, &s, "PATCH", "/v1/apis/orders/stages/prod", Some(patch)).await;
    assert_eq!(status, 400, "{e}");
    assert!(e.to_string().contains("canaryRouting.cohorts[0]"), "{e}");
    let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(st["canaryRouting"]["cohorts"][0]["sourceCidr"], "127.0.0.1/32", "{st}");
}

//! Cost follows traffic, not configuration (issue 14): a 1,000-API config seeded at start and a 1,000-API
//! `apply -f` each build and swap in the routing table once (counted in `/metrics`), stages that never
//! served a request hold no metric slots (the registry's accounting, in `/metrics`), and an `apply -f`
//! with one bad resource changes nothing.

use crate::common::*;
use serde_json::Value;

/// A config of `n` APIs named `{prefix}-{i}`, each with 10 routes and one stage `prod` on the backend
/// `backend` (10% of them with a canary at 10%).
fn many_apis(prefix: &str, n: usize, backend: &str) -> String {
    let mut y = String::from("apis:\n");
    for i in 0..n {
        y.push_str(&format!("  - name: {prefix}-{i}\n    routes:\n"));
        for r in 0..10 {
            y.push_str(&format!(
                "      - {{method: GET, path: \"/r{r}/{{id}}\", integration: {{type: http, uri: \"http://${{stageVariables.backend}}/r{r}/{{id}}\"}}}}\n"
            ));
        }
        y.push_str(&format!(
            "    stages:\n      - name: prod\n        variables: {{backend: \"{backend}\"}}\n"
        ));
        if i % 10 == 0 {
            y.push_str(&format!(
                "        canarySettings: {{percentTraffic: 10, stageVariableOverrides: {{backend: \"{backend}\"}}}}\n"
            ));
        }
    }
    y
}

async fn gauge(c: &reqwest::Client, s: &Server, name: &str) -> f64 {
    let text = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_apis_are_published_once_and_idle_stages_hold_no_slots() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("backend", Behaviour::Echo).await;
    let cfg = dir.path().join("seed.yaml");
    std::fs::write(&cfg, many_apis("seed", 1000, &backend.addr.to_string())).unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();

    // Opening the (empty) store publishes once; the whole seed is one more.
    assert_eq!(gauge(&c, &s, "canarygate_routing_publishes_total").await, 2.0);
    let apis = ok(&c, &s, "GET", "/v1/apis", None).await;
    assert_eq!(apis["items"].as_array().unwrap().len(), 1000);
    // 1,100 series (1,000 production, 100 canary), none of which has served: no slots at all.
    assert_eq!(gauge(&c, &s, "canarygate_metric_slot_bytes").await, 0.0);

    // One stage serves: its production series gets one chunk (the ticker may add the next one).
    let r = c.get(format!("{}/seed-7/prod/r3/42", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/r3/42");
    let bytes = gauge(&c, &s, "canarygate_metric_slot_bytes").await;
    let chunk = canarygate_metrics::CHUNK_BYTES as f64;
    assert!(bytes == chunk || bytes == 2.0 * chunk, "{bytes} bytes, chunks of {chunk}");

    // 1,000 more APIs through apply -f: one change, one publish.
    let more = dir.path().join("more.yaml");
    std::fs::write(&more, many_apis("more", 1000, &backend.addr.to_string())).unwrap();
    let (applied, out, err) = cli(&s, &["apply", "-f", more.to_str().unwrap()]);
    assert!(applied, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("create stage")).count(), 1000);
    assert_eq!(gauge(&c, &s, "canarygate_routing_publishes_total").await, 3.0);
    let r = c.get(format!("{}/more-999/prod/r9/1", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // 1,000 APIs and one bad stage: nothing changes, nothing is published.
    let mut bad = many_apis("bad", 1000, &backend.addr.to_string());
    bad.push_str("  - name: bad-last\n    routes: []\n    stages: [{name: prod, cache: {ttlSeconds: 99999}}]\n");
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(&bad_file, bad).unwrap();
    let (applied, _, err) = cli(&s, &["apply", "-f", bad_file.to_str().unwrap()]);
    assert!(!applied);
    assert!(err.contains("cache.ttlSeconds") && err.contains("99999"), "{err}");
    assert_eq!(gauge(&c, &s, "canarygate_routing_publishes_total").await, 3.0);
    let apis = ok(&c, &s, "GET", "/v1/apis", None).await;
    assert_eq!(apis["items"].as_array().unwrap().len(), 2000, "not one API of the bad file");
}

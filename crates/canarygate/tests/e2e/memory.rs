//! Deleted stages give their memory back: the metric series of a stage (a 64-second chunk of one-second
//! slots, 28 KiB, for each window that had requests, plus its routes) are freed with the stage, so
//! creating and deleting stages does not grow the process.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_500_stages_with_traffic_gives_their_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let pid = s.child.id();
    let backend = Backend::start("production", Behaviour::Echo).await;
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/shop",
        Some(json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": format!("http://{}/{{proxy}}", backend.addr)}}]})),
    )
    .await;
    ok(&c, &s, "POST", "/v1/apis/shop/deployments", Some(json!({}))).await;
    let serve_all = |stages: std::ops::Range<usize>| {
        let c = c.clone();
        let gw = s.gateway.clone();
        async move {
            for i in stages {
                let r = c.get(format!("{gw}/shop/s{i}/x")).send().await.unwrap();
                assert_eq!(r.status(), 200, "stage s{i}");
            }
        }
    };
    // The baseline: the server warmed up with one stage that served traffic.
    ok(&c, &s, "PUT", "/v1/apis/shop/stages/s0", Some(json!({}))).await;
    serve_all(0..1).await;
    let start = rss_kib(pid);

    // One round: 500 stages created, each serving traffic, then deleted; the resident set at the peak.
    let round = || async {
        for i in 1..=500 {
            ok(&c, &s, "PUT", &format!("/v1/apis/shop/stages/s{i}"), Some(json!({}))).await;
        }
        serve_all(1..501).await;
        let peak = rss_kib(pid);
        // At least one 28 KiB chunk of slots per stage that served traffic.
        assert!(
            peak > start + 500 * 28,
            "500 stages with traffic hold their series ({start} -> {peak} KiB)"
        );
        for i in 1..=500 {
            assert_eq!(admin(&c, &s, "DELETE", &format!("/v1/apis/shop/stages/s{i}"), None).await.0, 204);
        }
        // The remaining stage still serves and keeps its metrics; the deleted ones' are gone.
        serve_all(0..1).await;
        let prom = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
        assert!(prom.contains("stage=\"s0\""), "s0's series stays");
        assert!(!prom.contains("stage=\"s1\""), "s1's series is gone");
        peak
    };
    // The first round may leave what a process keeps once it has held more state: SQLite's page cache
    // (2 MiB per connection) and the allocator's per-thread caches. At most 8 MiB.
    let peak = round().await;
    let first = falls_to(pid, start + 8 * 1024).await;
    eprintln!("resident set: start {start} KiB, 501 stages {peak} KiB, after deleting 500: {first} KiB");
    assert!(first <= start + 8 * 1024, "after the first round: {first} KiB, start {start} KiB");
    // Later rounds leave nothing: within 10% of where the first ended.
    let peak = round().await;
    let second = falls_to(pid, first + first / 10).await;
    eprintln!("second round: 501 stages {peak} KiB, after deleting 500: {second} KiB");
    assert!(
        second <= first + first / 10,
        "after the second round: {second} KiB, after the first {first} KiB"
    );
}

/// Waits until the resident set is at most `bound` KiB (the allocator returns freed memory in the
/// background, about 10 s after a burst), for at most 60 s; the resident set then.
async fn falls_to(pid: u32, bound: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = rss_kib(pid);
        if now <= bound || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! `canarygate demo --exit-when-done` runs its whole story; the outcome is then read through the admin
//! API of a server started on the demo's data dir.

use std::process::Command;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_story_ends_as_told() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let exe = env!("CARGO_BIN_EXE_canarygate");
    let out = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            Command::new(exe)
                .args([
                    "demo",
                    "--exit-when-done",
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--data-dir",
                ])
                .arg(&data)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("/ui/"), "prints the dashboard URL: {stdout}");
    // The analysis rejects v2 within seconds; the alarm's 10-second periods would take about 20 s.
    assert!(
        stdout.contains("story done: v2 was rolled back by the canary analysis, v3 was promoted."),
        "{stdout}"
    );
    assert!(
        stdout.contains("evidence: errors: canary") && stdout.contains("REJECTED"),
        "{stdout}"
    );
    // The second plan has an approval step, which the demo approves itself, saying what a person would type.
    assert!(
        stdout.contains("a person would type: canarygate rollout approve r-demo"),
        "{stdout}"
    );

    let s = Server::start(&data, &[], &[]);
    let c = client();
    let rollouts = ok(&c, &s, "GET", "/v1/rollouts?api=shop&stage=prod", None).await;
    let items = rollouts["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{rollouts}");
    // Newest first: the second rollout (to v3) succeeded; the first (to v2) was rolled back by the analysis.
    assert_eq!(items[0]["status"], "Succeeded");
    assert_eq!(items[0]["stageVariableOverrides"]["version"], "v3");
    assert!(
        items[0]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "step approved by demo"),
        "{}",
        items[0]
    );
    assert_eq!(items[1]["status"], "RolledBack");
    assert_eq!(items[1]["stageVariableOverrides"]["version"], "v2");
    let last = items[1]["events"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["reason"].as_str().unwrap().starts_with("analysis rejected the canary"),
        "{last}"
    );
    assert!(last["observed"]["errorRate"]["eValue"].as_f64().unwrap() > 0.0, "{last}");
    assert_eq!(items[1]["analysis"]["name"], "errors-and-latency");
    let stage = ok(&c, &s, "GET", "/v1/apis/shop/stages/prod", None).await;
    assert_eq!(stage["variables"]["version"], "v3");
    assert!(stage["canarySettings"].is_null());
}

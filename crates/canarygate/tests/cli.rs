//! The CLI against a running server: exit codes, text and `--output json`, and `apply -f` that changes
//! nothing the second time.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stages_and_deployments_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let backend = Backend::start("v1", Behaviour::Echo).await;
    let file = dir.path().join("api.yaml");
    let write = |version: &str| {
        std::fs::write(
            &file,
            format!(
                "apis:\n  - name: orders\n    routes:\n      - path: /{{proxy+}}\n        integration: {{type: http, uri: 'http://${{stageVariables.backend}}/{{proxy}}'}}\n    stages:\n      - name: prod\n        variables: {{backend: '{}', version: '{version}'}}\n",
                backend.addr
            ),
        )
        .unwrap()
    };
    write("1");
    let f = file.to_str().unwrap();
    let (ok1, out, err) = cli(&s, &["apply", "-f", f, "--dry-run"]);
    assert!(ok1, "{err}");
    assert!(out.contains("would create api orders"), "{out}");
    assert_eq!(cli(&s, &["apis", "list"]).1.lines().count(), 1, "dry run changed nothing");
    let (ok2, out, err) = cli(&s, &["apply", "-f", f]);
    assert!(ok2, "{err}");
    assert!(out.contains("create stage orders/prod"), "{out}");
    let (ok3, out, _) = cli(&s, &["apply", "-f", f]);
    assert!(ok3);
    assert_eq!(out.trim(), "no changes");
    write("2");
    let (_, out, _) = cli(&s, &["--output", "json", "apply", "-f", f]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["changes"][0].as_str().unwrap().contains("/variables/version"));

    let r = reqwest::get(format!("{}/orders/prod/hello", s.gateway)).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["backend"], "v1");

    // Deployments and stages.
    let (ok4, out, _) = cli(&s, &["-o", "json", "deployments", "create", "orders", "-d", "second"]);
    assert!(ok4);
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let (_, out, _) = cli(&s, &["deployments", "list", "orders"]);
    assert!(out.lines().nth(1).unwrap().starts_with(&id), "newest first: {out}");
    let (ok5, out, err) = cli(
        &s,
        &[
            "stages",
            "update",
            "orders",
            "prod",
            "--percent",
            "25",
            "--set",
            &format!("/canarySettings/deploymentId={id}"),
        ],
    );
    assert!(ok5, "{err}");
    assert!(out.contains("canary: 25"), "{out}");
    let (_, out, _) = cli(&s, &["-o", "json", "stages", "get", "orders", "prod"]);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["canarySettings"]["percentTraffic"], 25.0);
    // A refused change: exit 1, the error names the field and value.
    let (ok6, _, err) = cli(&s, &["stages", "update", "orders", "prod", "--percent", "abc"]);
    assert!(!ok6);
    assert!(
        err.contains("percentTraffic") && err.contains("abc") && err.contains("400"),
        "{err}"
    );
    let (ok7, out, _) = cli(&s, &["stages", "promote", "orders", "prod"]);
    assert!(ok7);
    assert!(out.contains(&id) && out.contains("canary: none"), "{out}");
    let (ok8, _, err) = cli(&s, &["stages", "remove-canary", "orders", "prod"]);
    assert!(!ok8);
    assert!(err.contains("409"), "{err}");
    let (ok9, out, _) = cli(&s, &["-o", "json", "apis", "get", "orders"]);
    assert!(ok9);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["latestDeploymentId"], id.as_str());
    // No server: a clear error and exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["--server", &format!("http://{}", closed_port()), "apis", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_one_change_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let file = dir.path().join("many.yaml");
    // Twenty APIs, then an alarm the model refuses (datapointsToAlarm above evaluationPeriods).
    let mut yaml = String::from("apis:\n");
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - name: api-{i}\n    routes: [{{path: /h, integration: {{type: mock, body: ok}}}}]\n    stages: [{{name: prod}}]\n"
        ));
    }
    let bad_alarm = "alarms:\n  - {name: broken, api: api-0, stage: prod, variant: canary, metric: 5XXError, statistic: Average,\n     periodSeconds: 1, evaluationPeriods: 2, datapointsToAlarm: 3, comparison: GreaterThanThreshold, threshold: 1}\n";
    std::fs::write(&file, format!("{yaml}{bad_alarm}")).unwrap();
    let f = file.to_str().unwrap();
    let (ok, _, err) = cli(&s, &["apply", "-f", f]);
    assert!(!ok);
    assert!(
        err.contains("datapointsToAlarm") && err.contains("put alarm broken") && err.contains("nothing was changed"),
        "{err}"
    );
    // Nothing of the file was applied: not even the APIs before the bad alarm.
    let (_, out, _) = cli(&s, &["-o", "json", "apis", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
    // Fixed: all twenty APIs, their deployments and stages in one go, each serving.
    std::fs::write(&file, &yaml).unwrap();
    let (ok, out, err) = cli(&s, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("create stage")).count(), 20, "{out}");
    let r = reqwest::get(format!("{}/api-19/prod/h", s.gateway)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cli(&s, &["apply", "-f", f]).1.trim(), "no changes");
}

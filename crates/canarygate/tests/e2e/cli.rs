//! The CLI against a running server: exit codes, text and `--output json`, and `apply -f` that changes
//! nothing the second time.

use std::process::Command;

use crate::common::*;
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

/// `canarygate check -f` (and `serve --check`) takes a config file as `serve` and `apply` would,
/// without starting anything: the examples pass; five broken files are refused with exit 1, each
/// problem named by field (and line where the YAML parser knows it); no data dir or store is created.
#[test]
fn check_validates_a_config_file_without_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    // The quickstart (examples/production.yaml names certificate files of a production machine; the
    // docs test parses it with the real parser).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for path in [examples.join("quickstart.yaml")] {
        {
            let (code, text) = run(&["check", "-f", path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "{}: {text}", path.display());
            let (code, text) = run(&["serve", "--check", "--config", path.to_str().unwrap()]);
            assert_eq!(code, Some(0), "serve --check {}: {text}", path.display());
        }
    }
    let broken: [(&str, &str, &[&str]); 5] = [
        ("bad-yaml.yaml", "apis:\n  - name: a\n    routes: [\n", &["line 4", "apis[0].routes"]),
        (
            "unknown-field.yaml",
            "apis:\n  - name: a\n    routes:\n      - path: /x\n        integration: {type: mock, stauts: 200}\n",
            &["stauts", "line 4", "apis[0].routes[0]"],
        ),
        (
            "bad-value.yaml",
            "server:\n  http2:\n    maxConcurrentStreams: 0\napis:\n  - name: a\n    stages:\n      - name: prod\n        canarySettings: {percentTraffic: 150}\n",
            &["server.http2.maxConcurrentStreams", "percentTraffic", "150"],
        ),
        ("duplicate-api.yaml", "apis:\n  - name: a\n  - name: a\n", &["apis[1].name", "second time"]),
        (
            "bad-alarm.yaml",
            "alarms:\n  - {name: .., api: orders, stage: prod, variant: canary, metric: 5XXError, statistic: Average, periodSeconds: 1, evaluationPeriods: 3, datapointsToAlarm: 2, comparison: GreaterThanThreshold, threshold: 0.05}\n",
            &["name", "\"..\""],
        ),
    ];
    for (name, text, expect) in broken {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (code, out) = run(&["check", "-f", file.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{name}: {out}");
        for e in expect {
            assert!(out.contains(e), "{name}: {e:?} not in {out}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 5, "check created something: {left:?}");
}

/// The Debian package, built by scripts/package-deb from this build's binary: its files, its control
/// data (the config a conffile), a unit `systemd-analyze verify` accepts, a man page `man -l` renders,
/// completions, and the packaged binary started with the packaged config serves and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_a_service_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/package-deb"))
        .args(["--binary", env!("CARGO_BIN_EXE_canarygate"), "--compression", "none", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");
    let fs = dir.path().join("fs");
    let ctl = dir.path().join("control");
    for args in [vec!["-x", &deb, fs.to_str().unwrap()], vec!["-e", &deb, ctl.to_str().unwrap()]] {
        let st = Command::new("dpkg-deb").args(&args).status().unwrap();
        assert!(st.success(), "dpkg-deb {args:?}");
    }
    for f in [
        "usr/bin/canarygate",
        "lib/systemd/system/canarygate.service",
        "etc/canarygate/canarygate.yaml",
        "usr/share/man/man1/canarygate.1.gz",
        "usr/share/bash-completion/completions/canarygate",
        "usr/share/zsh/vendor-completions/_canarygate",
        "usr/share/fish/vendor_completions.d/canarygate.fish",
        "usr/share/doc/canarygate/copyright",
        "usr/share/doc/canarygate/production.md",
    ] {
        assert!(fs.join(f).is_file(), "{f} is not in the package");
    }
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/canarygate/canarygate.yaml");
    let control = std::fs::read_to_string(ctl.join("control")).unwrap();
    assert!(
        control.contains("Package: canarygate") && control.contains("Version: "),
        "{control}"
    );
    let completion = std::fs::read_to_string(fs.join("usr/share/bash-completion/completions/canarygate")).unwrap();
    assert!(completion.contains("rollout") && completion.contains("--output"), "bash completion");

    // The unit, as systemd reads it (its ExecStart found in the extracted tree).
    let unit = fs.join("lib/systemd/system/canarygate.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for key in [
        "DynamicUser=yes",
        "StateDirectory=canarygate",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(key), "the unit has no {key}");
    }
    // Verified as installed, but with ExecStart on the extracted binary (systemd checks it exists).
    let check_dir = dir.path().join("unit");
    std::fs::create_dir_all(&check_dir).unwrap();
    let copy = check_dir.join("canarygate.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/canarygate", fs.join("usr/bin/canarygate").to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string() + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && !said.contains("canarygate.service:"),
        "systemd-analyze verify: {said}"
    );

    // The man page renders.
    let man = Command::new("man")
        .arg("-l")
        .arg(fs.join("usr/share/man/man1/canarygate.1.gz"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success() && page.contains("canarygate") && page.contains("serve"),
        "man -l: {page}"
    );

    // The packaged binary with the packaged config (its listeners and data dir moved to the test's).
    let bin = fs.join("usr/bin/canarygate");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(version.starts_with("canarygate ") && version.contains("commit"), "{version}");
    let config = fs.join("etc/canarygate/canarygate.yaml");
    let s = Server::launch(&bin, &dir.path().join("data"), &["--config", config.to_str().unwrap()], &[], None);
    assert_eq!(s.ready().await.status(), 200);
}

/// `canarygate backup` takes a consistent copy of the SQLite state while the server serves traffic and
/// runs a rollout; a server started on the copy has every API, deployment, stage, rollout and event the
/// original had at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_the_state_of_its_moment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[], &[]);
    let c = client();
    let (prod, canary) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, serde_json::json!({})).await;
    ok(&c, &s, "DELETE", "/v1/apis/orders/stages/prod/canary", None).await;
    let body = serde_json::json!({"deploymentConfig": "Linear10PercentEvery1Minute",
        "stageVariableOverrides": {"backend": canary.addr.to_string(), "version": "2"}});
    let rollout = ok(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await;
    let id = rollout["id"].as_str().unwrap().to_string();
    // Two load tasks: about 200 requests/s.
    let load = Load::start(&c, &format!("{}/orders/prod/items/1", s.gateway), 2);
    while load.sent.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events = |r: &Value| r["events"].as_array().cloned().unwrap_or_default();
    let before = ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    let copy = dir.path().join("backup.db");
    let (done, out, err) = cli(
        &s,
        &["backup", "--data-dir", data.to_str().unwrap(), "--to", copy.to_str().unwrap()],
    );
    assert!(done, "{out}{err}");
    let after = ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    let apis = ok(&c, &s, "GET", "/v1/apis", None).await;
    let deployments = ok(&c, &s, "GET", "/v1/apis/orders/deployments", None).await;
    let stages = ok(&c, &s, "GET", "/v1/apis/orders/stages", None).await;
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    // A backup never overwrites.
    let (again, _, err) = cli(
        &s,
        &["backup", "--data-dir", data.to_str().unwrap(), "--to", copy.to_str().unwrap()],
    );
    assert!(!again && err.contains("exists already"), "{err}");

    let restored_dir = dir.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    std::fs::copy(&copy, restored_dir.join("state.db")).unwrap();
    let r = Server::start(&restored_dir, &[], &[]);
    let names = |v: &Value, key: &str| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[key].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names(&ok(&c, &r, "GET", "/v1/apis", None).await, "name"), names(&apis, "name"));
    assert_eq!(
        names(&ok(&c, &r, "GET", "/v1/apis/orders/deployments", None).await, "id"),
        names(&deployments, "id")
    );
    assert_eq!(
        names(&ok(&c, &r, "GET", "/v1/apis/orders/stages", None).await, "name"),
        names(&stages, "name")
    );
    let restored = ok(&c, &r, "GET", &format!("/v1/rollouts/{id}"), None).await;
    assert_eq!(restored["deploymentConfig"], after["deploymentConfig"]);
    // Every event of before the backup is there, and nothing the original did not have by its end.
    let (b, a, got) = (events(&before), events(&after), events(&restored));
    assert!(
        got.len() >= b.len() && got.len() <= a.len() + 1,
        "{} events restored; {} before, {} after",
        got.len(),
        b.len(),
        a.len()
    );
    assert_eq!(got[..b.len()], b[..], "the events before the backup");
}

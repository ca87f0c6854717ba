//! The dashboard in real headless Chromium (driven through chromedriver): live charts for both variants,
//! weight and alarm state as the admin API says; where reads need a token, the page asks for one; a
//! read-only token reads but is offered no actions; an admin token promotes, and approves a waiting step.
//! Screenshots are saved under `target/tmp/dashboard-screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use fantoccini::{ClientBuilder, Locator};
use serde_json::{json, Value};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_bin(names: &[&str]) -> String {
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let p = format!("{dir}/{n}");
            if std::path::Path::new(&p).exists() {
                return p;
            }
        }
    }
    panic!("{names:?} not found: the test command (scripts/test) installs Debian's chromium and chromium-driver");
}

async fn browser() -> (Driver, fantoccini::Client) {
    let port = closed_port().port();
    let driver = Driver(
        Command::new(find_bin(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = tempfile::tempdir().unwrap().keep();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": find_bin(&["chromium", "chromium-browser"]),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1100", format!("--user-data-dir={}", profile.display())]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a browser session: {e}"),
        }
    }
}

async fn screenshot(b: &fantoccini::Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
}

/// Evaluates `script` in the page until `ok` accepts its value; the guard only turns a hang into a failure.
async fn eventually(b: &fantoccini::Client, script: &str, ok: impl Fn(&Value) -> bool, what: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = b.execute(script, vec![]).await.unwrap_or(Value::Null);
        if ok(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: last value {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn points(v: &Value, series: &str) -> u64 {
    v.as_str()
        .unwrap_or("")
        .split(',')
        .find_map(|kv| kv.split_once(':').filter(|(k, _)| *k == series).and_then(|(_, n)| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_state_and_acts_only_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  adminTokens: [{token: reader, readOnly: true}]\n").unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
        &[("CANARYGATE_ADMIN_TOKEN", "s3cret")],
    );
    let c = client();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    // The admin API needs the token for changes: set up through it with the token.
    let t = Some("s3cret");
    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    assert_eq!(admin_with_token(&c, &s, "PUT", "/v1/apis/orders", Some(routes), t).await.0, 201);
    let d1 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d2 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stage = json!({"deploymentId": d1, "variables": {"backend": prod.addr.to_string()}});
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(stage), t)
            .await
            .0,
        201
    );
    let cfg = json!({"type": "TimeBasedCanary", "percentage": 30, "intervalSeconds": 600});
    admin_with_token(&c, &s, "PUT", "/v1/deployment-configs/Canary30Percent10Minutes", Some(cfg), t).await;
    let alarm = json!({"api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError", "statistic": "Average",
        "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05});
    admin_with_token(&c, &s, "PUT", "/v1/alarms/canary-5xx", Some(alarm), t).await;
    let load = Load::start(&c, &format!("{}/orders/prod/items", s.gateway), 4);
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": next.addr.to_string()}, "deploymentConfig": "Canary30Percent10Minutes", "alarms": ["canary-5xx"],
        "analysis": {"errorRate": {"alpha": 1e-4}, "latency": {"alpha": 1e-4}}});
    let (status, r) = admin_with_token(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body), t).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    let (_driver, b) = browser().await;
    b.goto(&format!("{}/ui/#/stage/orders/prod", s.admin)).await.unwrap();

    // Reads need a token here: the page asks for one and shows nothing else.
    eventually(
        &b,
        "const e = document.getElementById('need-token'); return e && e.textContent",
        |v| v.as_str().is_some_and(|t| t.contains("needs a token")),
        "token prompt",
    )
    .await;
    assert_eq!(
        b.execute("return document.getElementById('c-rps') === null", vec![]).await.unwrap(),
        true
    );
    screenshot(&b, "stage-token-needed").await;
    // A read-only token: the page reads.
    b.find(Locator::Id("token")).await.unwrap().send_keys("reader").await.unwrap();
    b.find(Locator::Id("token-set")).await.unwrap().click().await.unwrap();

    // Both variants' charts hold data.
    for chart in ["c-rps", "c-5xx", "c-lat"] {
        let script = format!("return document.getElementById('{chart}') && document.getElementById('{chart}').dataset.points");
        let v = eventually(
            &b,
            &script,
            |v| {
                chart == "c-lat" && points(v, "production-p50") > 0 && points(v, "canary-p50") > 0
                    || points(v, "production") > 0 && points(v, "canary") > 0
            },
            chart,
        )
        .await;
        assert!(!v.is_null(), "{chart}");
    }
    // The weight and the alarm state match the admin API.
    let api_stage = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
    assert_eq!(api_stage["canarySettings"]["percentTraffic"], 30.0);
    eventually(&b, "return document.getElementById('weight').textContent", |v| v == "30%", "weight").await;
    let api_alarm = ok(&c, &s, "GET", "/v1/alarms/canary-5xx", None).await;
    let state = api_alarm["state"].as_str().unwrap().to_string();
    let shown = eventually(
        &b,
        "const e = document.querySelector('[data-alarm=\"canary-5xx\"]'); return e && e.textContent",
        |v| v.is_string(),
        "alarm",
    )
    .await;
    assert_eq!(shown, state.as_str());

    // A read-only token is offered no action.
    assert_eq!(
        b.find(Locator::Id("auth-state")).await.unwrap().text().await.unwrap(),
        "read-only token"
    );
    let visible_buttons = b
        .execute(
            "return [...document.querySelectorAll('#actions button')].filter(b => b.offsetParent !== null).length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(visible_buttons, 0);
    assert!(!b.find(Locator::Id("actions")).await.unwrap().is_displayed().await.unwrap());
    screenshot(&b, "stage-read-only").await;

    // With the admin token: the rollout's promote is offered, and clicking it changes the stage.
    b.find(Locator::Id("token-clear")).await.unwrap().click().await.unwrap();
    b.find(Locator::Id("token")).await.unwrap().send_keys("s3cret").await.unwrap();
    b.find(Locator::Id("token-set")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('act-rollout-promote'); return !!e && e.offsetParent !== null",
        |v| v == true,
        "promote button",
    )
    .await;
    screenshot(&b, "stage-with-token").await;
    // Before promoting, let the analysis gather a few points of evidence for the rollout page's chart.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await["evidence"]["history"]
        .as_array()
        .map_or(0, Vec::len)
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "no evidence history");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.find(Locator::Id("act-rollout-promote")).await.unwrap().click().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let st = ok(&c, &s, "GET", "/v1/apis/orders/stages/prod", None).await;
        if st["deploymentId"] == d2.as_str() {
            assert_eq!(st["variables"]["backend"], next.addr.to_string());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the promote did not change the stage: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await["status"], "Succeeded");
    eventually(
        &b,
        "return document.getElementById('weight').textContent",
        |v| v == "no canary",
        "weight after promotion",
    )
    .await;

    // The rollout page shows its steps and events.
    b.goto(&format!("{}/ui/#/rollout/{id}", s.admin)).await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('rollout-status'); return e && e.textContent",
        |v| v == "Succeeded",
        "rollout page",
    )
    .await;
    let events = b
        .execute("return document.querySelectorAll('.timeline li').length", vec![])
        .await
        .unwrap();
    assert!(events.as_u64().unwrap() >= 4, "{events}");
    // The canary analysis: the evidence chart (e-values over time against the rejection line) and its numbers.
    let v = eventually(
        &b,
        "const e = document.getElementById('c-evidence'); return e && e.dataset.points",
        |v| v.as_str().is_some_and(|p| p.contains("errors:") && p.contains("reject:")),
        "evidence chart",
    )
    .await;
    assert!(
        points(&v, "errors") >= 3 && points(&v, "latency") >= 3 && points(&v, "reject") >= 3,
        "{v}"
    );
    let line = b
        .execute("return document.getElementById('evidence-line').textContent", vec![])
        .await
        .unwrap();
    assert!(line.as_str().unwrap().contains("errors: canary"), "{line}");
    // The table shows the same numbers as the line: e-value, rejection bar and anytime p.
    let cells = b
        .execute(
            "return [...document.querySelectorAll('#evidence-table tbody tr')].map(r => [...r.cells].slice(1, 4).map(c => c.textContent))",
            vec![],
        )
        .await
        .unwrap();
    for row in cells.as_array().unwrap() {
        let (e, bar, p) = (row[0].as_str().unwrap(), row[1].as_str().unwrap(), row[2].as_str().unwrap());
        let said = format!("e {e} (reject at {bar}), p {p}");
        assert!(line.as_str().unwrap().contains(&said), "{said:?} not in {line}");
    }
    let drawn = b
        .execute("return document.querySelectorAll('#c-evidence canvas').length", vec![])
        .await
        .unwrap();
    assert!(drawn.as_u64().unwrap() >= 1, "{drawn}");
    // The chart's time axis is the rollout's own time: from its creation to its last event.
    let r = ok(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None).await;
    let secs = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().timestamp() as f64;
    let (from, to) = (
        secs(&r["createdAt"]),
        secs(&r["updatedAt"]).max(r["events"].as_array().unwrap().iter().map(|e| secs(&e["time"])).fold(0.0, f64::max)),
    );
    let x = b
        .execute("const u = charts['c-evidence']; return [u.scales.x.min, u.scales.x.max]", vec![])
        .await
        .unwrap();
    let (min, max) = (x[0].as_f64().unwrap(), x[1].as_f64().unwrap());
    assert!(
        min >= from - 1.0 && max <= to + 1.0 && min < max,
        "x range {min}..{max}, rollout {from}..{to}"
    );
    // The latest judged point is drawn: the history ends at the analysis's last second.
    let last = r["evidence"]["history"].as_array().unwrap().last().unwrap()["second"]
        .as_f64()
        .unwrap();
    assert!(last >= from - 1.0 && last <= to + 1.0, "{last} outside {from}..{to}");
    screenshot(&b, "rollout").await;
    b.goto(&format!("{}/ui/", s.admin)).await.unwrap();
    eventually(
        &b,
        "const e = document.querySelector('[data-weight=\"orders/prod\"]'); return e && e.textContent",
        |v| v == "no canary",
        "overview",
    )
    .await;
    screenshot(&b, "overview").await;
    b.close().await.unwrap();
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_waits_on_the_rollout_page_and_is_approved_there_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "server:\n  adminTokens:\n    - {name: carol, token: carols-secret}\n    - {name: viewer, token: look-only, readOnly: true}\n",
    )
    .unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let t = Some("carols-secret");
    let routes =
        json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]});
    admin_with_token(&c, &s, "PUT", "/v1/apis/orders", Some(routes), t).await;
    let d1 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1;
    let d2 = admin_with_token(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({})), t)
        .await
        .1;
    let stage = json!({"deploymentId": d1["id"], "variables": {"backend": prod.addr.to_string()}});
    admin_with_token(&c, &s, "PUT", "/v1/apis/orders/stages/prod", Some(stage), t).await;
    let plan = json!({"type": "Steps", "steps": [{"percentage": 10, "approval": true}, {"percentage": 50, "intervalSeconds": 1}]});
    assert_eq!(
        admin_with_token(&c, &s, "PUT", "/v1/deployment-configs/Gated", Some(plan), t)
            .await
            .0,
        201
    );
    let body = json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": next.addr.to_string()}, "deploymentConfig": "Gated"});
    let (status, r) = admin_with_token(&c, &s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body), t).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    let (_driver, b) = browser().await;
    b.goto(&format!("{}/ui/#/rollout/{id}", s.admin)).await.unwrap();
    // A read-only token sees the wait, and no approve button.
    b.find(Locator::Id("token")).await.unwrap().send_keys("look-only").await.unwrap();
    b.find(Locator::Id("token-set")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('waiting-for'); return e && e.textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("waiting for an approval")),
        "the wait shown",
    )
    .await;
    let steps = b
        .execute("return document.getElementById('steps').textContent", vec![])
        .await
        .unwrap();
    assert!(steps.as_str().unwrap().contains("10% · approval"), "{steps}");
    assert!(!b.find(Locator::Id("act-approve")).await.unwrap().is_displayed().await.unwrap());
    screenshot(&b, "rollout-approval-read-only").await;
    // The admin token: the button appears and approves.
    b.find(Locator::Id("token-clear")).await.unwrap().click().await.unwrap();
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("carols-secret")
        .await
        .unwrap();
    b.find(Locator::Id("token-set")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('act-approve'); return !!e && e.offsetParent !== null",
        |v| v == true,
        "approve button",
    )
    .await;
    screenshot(&b, "rollout-approval").await;
    // Paused and resumed from the page: the pause names the token, and hides the approve button.
    b.find(Locator::Id("act-pause")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('paused'); return e && e.textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("paused by carol")),
        "the pause shown",
    )
    .await;
    assert!(!b.find(Locator::Id("act-approve")).await.unwrap().is_displayed().await.unwrap());
    b.find(Locator::Id("act-resume")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('act-approve'); return !document.getElementById('paused') && !!e && e.offsetParent !== null",
        |v| v == true,
        "resumed: the approve button again",
    )
    .await;
    b.find(Locator::Id("act-approve")).await.unwrap().click().await.unwrap();
    eventually(
        &b,
        "const e = document.getElementById('rollout-status'); return e && e.textContent",
        |v| v == "Succeeded",
        "rollout succeeded after the approval",
    )
    .await;
    let events = b
        .execute("return document.getElementById('events').textContent", vec![])
        .await
        .unwrap();
    let events = events.as_str().unwrap();
    assert!(events.contains("step approved by carol"), "{events}");
    assert!(
        events.contains("paused by carol") && events.contains("resumed by carol"),
        "{events}"
    );
    let r = admin_with_token(&c, &s, "GET", &format!("/v1/rollouts/{id}"), None, t).await.1;
    assert!(!r.to_string().contains("carols-secret"));
    b.close().await.unwrap();
}

/// Counts the pixels of `color` (r, g, b) that chart `id` drew above its y value `above`, and how many of
/// series `series`'s values stand alone between gaps.
fn drawn_above(id: &str, series: usize, above: f64, color: (u8, u8, u8)) -> String {
    format!(
        "const u = charts['{id}']; if (!u) return null;
         const ys = u.data[{series}];
         let alone = 0;
         for (let i = 0; i < ys.length; i++) if (ys[i] != null && ys[i] > {above} && ys[i - 1] == null && ys[i + 1] == null) alone++;
         const cv = u.ctx.canvas, line = Math.floor(u.valToPos({above}, 'y', true)) - 2;
         const px = u.ctx.getImageData(0, 0, cv.width, Math.max(1, line)).data;
         let n = 0;
         for (let i = 0; i < px.length; i += 4)
           if (Math.abs(px[i] - {}) < 40 && Math.abs(px[i + 1] - {}) < 40 && Math.abs(px[i + 2] - {}) < 60 && px[i + 3] > 128) n++;
         return {{alone, drawn: n}};",
        color.0, color.1, color.2
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_lists_active_rollouts_and_a_brief_canary_failure_is_drawn() {
    // All traffic on the canary, and only a request every 4 s: with 2 s buckets every point of the
    // canary's series stands alone between gaps, as on a quiet stage.
    let f = fixture(100.0, json!({})).await;
    let (c, s) = (&f.c, &f.s);
    // A second stage with a rollout at its first step, for the overview.
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders/stages/beta",
        Some(json!({"deploymentId": f.deployment, "variables": {"backend": f.prod.addr.to_string()}})),
    )
    .await;
    let d2 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v2"}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        c,
        s,
        "PUT",
        "/v1/deployment-configs/Canary30Percent10Minutes",
        Some(json!({"type": "TimeBasedCanary", "percentage": 30, "intervalSeconds": 600})),
    )
    .await;
    let body = json!({"deploymentId": d2, "stageVariableOverrides": {"backend": f.canary.addr.to_string()},
        "deploymentConfig": "Canary30Percent10Minutes", "analysis": {"errorRate": {"alpha": 1e-4}}});
    let (status, r) = admin(c, s, "POST", "/v1/apis/orders/stages/beta/rollouts", Some(body)).await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    // Healthy, then 5xx for 3 s, then healthy again.
    let url = format!("{}/orders/prod/items", s.gateway);
    let start = tokio::time::Instant::now();
    let mut statuses = Vec::new();
    for k in 0..5u32 {
        tokio::time::sleep_until(start + Duration::from_secs(4 * u64::from(k))).await;
        if k == 2 {
            f.canary.fail_per_10k.store(10_000, std::sync::atomic::Ordering::SeqCst);
        }
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.headers()["x-canarygate-variant"], "canary");
        statuses.push(resp.status().as_u16());
        if k == 2 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            f.canary.fail_per_10k.store(0, std::sync::atomic::Ordering::SeqCst);
        }
    }
    assert_eq!(statuses, [200, 200, 500, 200, 200]);

    let (_driver, b) = browser().await;
    b.goto(&format!("{}/ui/#/stage/orders/prod", s.admin)).await.unwrap();
    // The canary's 5xx series (series 2, #f59e0b) draws its lone 100% point above the zero line.
    let v = eventually(
        &b,
        &drawn_above("c-5xx", 2, 50.0, (0xf5, 0x9e, 0x0b)),
        |v| v["alone"].as_u64() >= Some(1) && v["drawn"].as_u64() > Some(0),
        "the canary's 5xx drawn",
    )
    .await;
    assert!(v["drawn"].as_u64().unwrap() >= 10, "{v}");
    screenshot(&b, "stage-brief-failure").await;

    // The overview: the active rollout with its stage, step, weight, time left and evidence, and its events.
    b.goto(&format!("{}/ui/", s.admin)).await.unwrap();
    let row = format!("#active-rollouts tr[data-rollout=\"{id}\"]");
    let shown = eventually(
        &b,
        &format!("const r = document.querySelector('{row}'); return r && [...r.cells].map(c => c.textContent.trim())"),
        |v| v.is_array(),
        "the active rollout on the overview",
    )
    .await;
    let cells: Vec<&str> = shown.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(cells[0].contains(&id) && cells[1] == "orders / beta", "{cells:?}");
    assert_eq!(cells[2], "step 1 of 2 (30%)");
    assert_eq!(cells[3], "30%");
    assert!(cells[4].ends_with(" s") && cells[4].contains("min"), "time left: {cells:?}");
    assert!(
        cells[5].starts_with("errors e ") && cells[5].contains("/ 1.0e4"),
        "evidence: {cells:?}"
    );
    let events = b
        .execute("return document.getElementById('last-events').textContent", vec![])
        .await
        .unwrap();
    assert!(events.as_str().unwrap().contains(&id), "{events}");
    screenshot(&b, "overview-active").await;

    // The rollout page: the target readably (deployment, then each override), not as JSON.
    b.goto(&format!("{}/ui/#/rollout/{id}", s.admin)).await.unwrap();
    let t = eventually(
        &b,
        "const e = document.getElementById('rollout-target'); return e && e.innerText",
        |v| v.is_string(),
        "the rollout's target",
    )
    .await;
    let t = t.as_str().unwrap();
    assert!(
        t.contains(&d2) && t.contains("backend") && t.contains(&f.canary.addr.to_string()),
        "{t}"
    );
    assert!(!t.contains('{') && !t.contains('"'), "{t}");
    b.close().await.unwrap();
}

/// A dry-run analysis's verdict on the rollout page: the moment it would have rolled back, though the
/// rollout succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_page_shows_when_a_dry_run_would_have_rolled_back() {
    let f = fixture(0.0, json!({})).await;
    let (c, s) = (&f.c, &f.s);
    let remove = json!({"patchOperations": [{"op": "remove", "path": "/canarySettings"}]});
    ok(c, s, "PATCH", "/v1/apis/orders/stages/prod", Some(remove)).await;
    let plan = json!({"type": "TimeBasedCanary", "percentage": 50, "intervalSeconds": 6});
    ok(c, s, "PUT", "/v1/deployment-configs/Canary50Percent6Seconds", Some(plan)).await;
    f.canary.fail(0.3);
    let load = Load::start(c, &format!("{}/orders/prod/items", s.gateway), 4);
    let body = json!({"stageVariableOverrides": {"backend": f.canary.addr.to_string()}, "deploymentConfig": "Canary50Percent6Seconds",
        "analysis": {"errorRate": {"alpha": 0.05}, "dryRun": true}});
    let id = ok(c, s, "POST", "/v1/apis/orders/stages/prod/rollouts", Some(body)).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = wait_rollout(c, s, &id, Duration::from_secs(60)).await;
    load.finish().await;
    assert_eq!(r["status"], "Succeeded", "{r}");

    let (_driver, b) = browser().await;
    b.goto(&format!("{}/ui/#/rollout/{id}", s.admin)).await.unwrap();
    let shown = eventually(
        &b,
        "const e = document.getElementById('dry-run'); return e && e.textContent",
        |v| v.is_string(),
        "the dry run's verdict",
    )
    .await;
    let text = shown.as_str().unwrap();
    assert!(
        text.contains("would have rolled back") && text.contains("analysis (errorRate)"),
        "{text}"
    );
    assert!(text.contains("errors: canary"), "the evidence line: {text}");
    b.close().await.unwrap();
}

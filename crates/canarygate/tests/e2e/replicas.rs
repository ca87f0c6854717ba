//! Several replicas on one real PostgreSQL server (PRODUCT.md §10), started by the test harness with
//! `initdb`/`postgres` on a free port: a change through one replica is served by the others, concurrent
//! changes through two replicas lose nothing, replicas started at once migrate the database once, and a
//! binary older than the database's schema refuses to start naming both versions; one leader runs the
//! controller (a killed one is replaced mid-rollout, a paused one steps down, a deposed one's late
//! write is refused, a pending hook is called again with its id); canary errors sent only through a
//! replica that is not the leader roll the rollout back (cluster-wide metrics); a database outage
//! fails no request.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn start_replica(dir: &std::path::Path, name: &str, url: &str) -> Server {
    Server::start(&dir.join(name), &["--store", url], &[])
}

/// Waits until `s` serves a request to the stage with `variant`; how long it took.
async fn wait_served(c: &reqwest::Client, s: &Server, variant: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = c.get(format!("{}/orders/prod/items", s.gateway)).send().await {
            if r.status() == 200 && r.headers().get("x-canarygate-variant").is_some_and(|v| v == variant) {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{} never served the change ({variant})",
            s.gateway
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_is_served_by_the_others() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, cc) = (
        start_replica(dir.path(), "a", &url),
        start_replica(dir.path(), "b", &url),
        start_replica(dir.path(), "c", &url),
    );
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    setup_split(&c, &a, prod.addr, canary.addr, 0.0, json!({})).await;
    for s in [&a, &b, &cc] {
        wait_served(&c, s, "production").await;
    }

    // Through A: the canary to 100%. B and C serve it within the deadline (the bench measures the delay).
    let answer = ok(
        &c,
        &a,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [{"op": "replace", "path": "/canarySettings/percentTraffic", "value": "100"}]})),
    )
    .await;
    let version = answer["version"].as_u64().expect("the answer carries the stage's version");
    let (db, dc) = (wait_served(&c, &b, "canary").await, wait_served(&c, &cc, "canary").await);
    eprintln!("served by B after {db:?}, by C after {dc:?}");
    // The admin API of every replica shows the same stage.
    for s in [&b, &cc] {
        let st = ok(&c, s, "GET", "/v1/apis/orders/stages/prod", None).await;
        assert_eq!(st["canarySettings"]["percentTraffic"], 100.0, "{st}");
        assert_eq!(st["version"].as_u64(), Some(version));
        // They applied A's logged changes; none had to load everything.
        assert!(metric_value(&c, s, "canarygate_store_catch_ups_total{how=\"applied\"}").await >= 1);
        assert_eq!(metric_value(&c, s, "canarygate_store_catch_ups_total{how=\"loaded\"}").await, 0);
    }

    // The stage cache: on, back to production, filled on B and C; a flush through A empties it on both.
    ok(
        &c,
        &a,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        Some(json!({"patchOperations": [
            {"op": "replace", "path": "/cache/enabled", "value": "true"},
            {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "0"},
        ]})),
    )
    .await;
    let cached = |s: &Server| format!("{}/orders/prod/cached?cc=max-age%3D300", s.gateway);
    for s in [&b, &cc] {
        wait_served(&c, s, "production").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.get(cached(s)).send().await.unwrap();
            if r.headers().get("x-canarygate-cache").is_some_and(|v| v == "hit") {
                break;
            }
            assert!(Instant::now() < deadline, "{} never answered from its cache", s.gateway);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let r = c
        .delete(format!("{}/v1/apis/orders/stages/prod/cache", a.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for s in [&b, &cc] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = ok(&c, s, "GET", "/v1/apis/orders/stages/prod/cache", None).await;
            if stats["entries"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the flush never reached {}: {stats}", s.gateway);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = c.get(cached(s)).send().await.unwrap();
        assert_eq!(r.headers()["x-canarygate-cache"], "miss", "flushed on {}", s.gateway);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_through_two_replicas_lose_nothing() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (start_replica(dir.path(), "a", &url), start_replica(dir.path(), "b", &url));
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    setup_split(&c, &a, prod.addr, canary.addr, 0.0, json!({})).await;

    // 2 x 50 PATCHes at once, through A and B: each adds its own k<i> and replaces the shared `last`.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (c, admin) = (c.clone(), if i % 2 == 0 { a.admin.clone() } else { b.admin.clone() });
        tasks.push(tokio::spawn(async move {
            let r = c
                .patch(format!("{admin}/v1/apis/orders/stages/prod"))
                .json(&json!({"patchOperations": [
                    {"op": "replace", "path": format!("/variables/k{i}"), "value": i.to_string()},
                    {"op": "replace", "path": "/variables/last", "value": i.to_string()},
                ]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (i, status, body)
        }));
    }
    let mut applied = Vec::new();
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        match status {
            200 => applied.push((body["version"].as_u64().expect("a version in every 2xx answer"), i)),
            409 => {}
            _ => panic!("PATCH {i}: {status} {body}"),
        }
    }
    let mut versions: Vec<u64> = applied.iter().map(|(v, _)| *v).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), applied.len(), "two answers carry the same version: {applied:?}");
    // The final state, through either replica once both have it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stage = loop {
        let sa = ok(&c, &a, "GET", "/v1/apis/orders/stages/prod", None).await;
        let sb = ok(&c, &b, "GET", "/v1/apis/orders/stages/prod", None).await;
        if sa == sb {
            break sa;
        }
        assert!(Instant::now() < deadline, "the replicas disagree: {sa} {sb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let vars = &stage["variables"];
    for (_, i) in &applied {
        assert_eq!(vars[format!("k{i}")], i.to_string(), "applied PATCH {i} lost");
    }
    for i in 0..100 {
        if !applied.iter().any(|(_, j)| *j == i) {
            assert!(vars.get(format!("k{i}")).is_none(), "refused PATCH {i} is in the state");
        }
    }
    let (_, last) = applied.iter().max().expect("some applied");
    assert_eq!(
        vars["last"],
        last.to_string(),
        "`last` is the applied PATCH with the highest version"
    );
    eprintln!("{} of 100 applied, {} answered 409", applied.len(), 100 - applied.len());
    // What the replicas built by applying each other's changes is what a replica loading everything
    // finds in the database.
    let fresh = start_replica(dir.path(), "fresh", &url);
    for path in ["/v1/apis/orders", "/v1/apis/orders/stages/prod", "/v1/apis/orders/deployments"] {
        let loaded = ok(&c, &fresh, "GET", path, None).await;
        for s in [&a, &b] {
            assert_eq!(ok(&c, s, "GET", path, None).await, loaded, "{path} through {}", s.admin);
        }
    }
    for s in [&a, &b] {
        assert_eq!(metric_value(&c, s, "canarygate_store_catch_ups_total{how=\"loaded\"}").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_at_once_migrate_once_and_an_older_binary_refuses_a_newer_schema() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let (d1, d2, u1, u2) = (dir.path().join("a"), dir.path().join("b"), url.clone(), url.clone());
    let (a, b) = (
        std::thread::spawn(move || Server::start(&d1, &["--store", &u1], &[])),
        std::thread::spawn(move || Server::start(&d2, &["--store", &u2], &[])),
    );
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let logs = [&a, &b].map(|s| std::fs::read_to_string(&s.stderr_log).unwrap_or_default());
    let migrated = logs.iter().filter(|l| l.contains("migrated the PostgreSQL schema")).count();
    assert_eq!(migrated, 1, "{migrated} replicas migrated the schema: {logs:?}");
    let version = pg.psql(&url, "SELECT version FROM canarygate_schema");
    assert!(version.parse::<u32>().unwrap() >= 1, "{version}");
    drop((a, b));

    // A database a newer canarygate migrated: this binary refuses it, naming both versions.
    pg.psql(&url, "UPDATE canarygate_schema SET version = 7");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("c"))
        .args(["--store", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 7") && err.contains(&format!("({version})")), "{err}");
    assert!(!err.contains("postgres@"), "the store URL is not printed as it is: {err}");
}

/// Starts a replica with `server.leaseSeconds` set.
fn start_leased(dir: &std::path::Path, name: &str, url: &str, lease: u64) -> Server {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, format!("server:\n  replicaName: {name}\n  leaseSeconds: {lease}\n")).unwrap();
    Server::start(&dir.join(name), &["--store", url, "--config", cfg.to_str().unwrap()], &[])
}

/// Replicas by these names, each with `leaseSeconds: lease`.
fn leased_replicas(dir: &std::path::Path, url: &str, names: &[&str], lease: u64) -> Vec<(String, Server)> {
    names.iter().map(|n| (n.to_string(), start_leased(dir, n, url, lease))).collect()
}

/// API `orders` with a greedy proxy route, stage `prod` on `prod`'s deployment `d1`, and a second
/// deployment to roll out to: its id.
async fn rollout_ready(c: &reqwest::Client, s: &Server, prod: &Backend) -> Value {
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders",
        Some(
            json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]}),
        ),
    )
    .await;
    let d1 = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await;
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders/stages/prod",
        Some(json!({"deploymentId": d1["id"], "variables": {"backend": prod.addr.to_string()}})),
    )
    .await;
    ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await
}

/// `GET /v1/cluster` through `s` once it lists `n` replicas; the document.
async fn cluster_of(c: &reqwest::Client, s: &Server, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = ok(c, s, "GET", "/v1/cluster", None).await;
        if v["replicas"].as_array().map_or(0, Vec::len) == n && v["leader"].is_string() {
            return v;
        }
        assert!(Instant::now() < deadline, "cluster: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica that leads (once `GET /v1/cluster` lists them all) and one that does not.
async fn leader_and_follower<'a>(c: &reqwest::Client, replicas: &'a [(String, Server)]) -> (&'a (String, Server), &'a (String, Server)) {
    let leader = cluster_of(c, &replicas[0].1, replicas.len()).await["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let pick = |lead: bool| replicas.iter().find(|(n, _)| (*n == leader) == lead).unwrap();
    (pick(true), pick(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_names_its_replicas_and_one_leader_and_a_killed_leader_is_replaced_mid_rollout() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = leased_replicas(dir.path(), &url, &["r1", "r2", "r3"], 3);
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let c = client();
    let a = &replicas[0].1;
    let d2 = rollout_ready(&c, a, &prod).await;
    ok(
        &c,
        a,
        "PUT",
        "/v1/deployment-configs/Canary20Percent6Seconds",
        Some(json!({"type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": 6})),
    )
    .await;

    // Every replica lists all three, the same leader, and the state version each serves.
    let mut view = cluster_of(&c, &replicas[1].1, 3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["configVersion"].as_u64() > Some(0))
    {
        assert!(Instant::now() < deadline, "{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        view = cluster_of(&c, &replicas[1].1, 3).await;
    }
    let names: Vec<&str> = view["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r1", "r2", "r3"], "{view}");
    let leader = view["leader"].as_str().unwrap().to_string();
    assert!(names.contains(&leader.as_str()));
    // The CLI says the same.
    let (okay, out, err) = cli(&replicas[2].1, &["cluster"]);
    assert!(okay, "{err}");
    assert!(["r1", "r2", "r3"].iter().all(|n| out.contains(n)), "{out}");
    let leader_line = out.lines().find(|l| l.contains("leader")).unwrap_or_default();
    assert!(leader_line.starts_with(&leader), "{out}");

    // A rollout, started through a replica that is not the leader; the leader is killed mid-step.
    let follower = replicas.iter().find(|(n, _)| *n != leader).unwrap().0.clone();
    let via = &replicas.iter().find(|(n, _)| *n == follower).unwrap().1;
    let (status, r) = admin(
        &c,
        via,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(
            json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": next.addr.to_string()},
                    "deploymentConfig": "Canary20Percent6Seconds"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    // Wait until the step is under way (20% of traffic), then SIGKILL the leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = ok(&c, via, "GET", &format!("/v1/rollouts/{id}"), None).await;
        if r["weight"].as_f64() == Some(20.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the rollout never reached its first step: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = Instant::now();
    let i = replicas.iter().position(|(n, _)| *n == leader).unwrap();
    let (_, mut dead) = replicas.remove(i);
    dead.kill();
    let survivor = &replicas[0].1;
    let new_leader = loop {
        let v = ok(&c, survivor, "GET", "/v1/cluster", None).await;
        if let Some(l) = v["leader"].as_str().filter(|l| *l != leader) {
            break l.to_string();
        }
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no replica took over: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{new_leader} took over {:?} after {leader} was killed (lease 3 s)",
        killed_at.elapsed()
    );

    // The rollout finishes, once.
    let r = wait_rollout(&c, survivor, &id, Duration::from_secs(40)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let succeeded = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "Succeeded")
        .count();
    assert_eq!(succeeded, 1, "{r}");
    // The step's wait counted only watched time: the new leader noted the gap (the lease running out),
    // and the step moved on only after the rest of its 6 s had been watched after that.
    let events = r["events"].as_array().unwrap();
    let resumed = events
        .iter()
        .position(|e| e["reason"].as_str().unwrap().contains("resumed after a gap"))
        .unwrap_or_else(|| panic!("no gap event: {r}"));
    let gap = &events[resumed];
    assert!(gap["observed"]["gapMs"].as_i64().unwrap() > 2000, "{gap}");
    let watched = gap["observed"]["watchedMs"].as_i64().unwrap();
    assert!(watched < 6000, "{gap}");
    let moved = events[resumed..]
        .iter()
        .find(|e| e["weight"] == 100.0)
        .unwrap_or_else(|| panic!("{r}"));
    let at = |e: &Value| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
    let after = (at(moved) - at(gap)).num_milliseconds();
    assert!(
        after >= 6000 - watched - 100,
        "moved on {after} ms after resuming with {watched} ms watched: {r}"
    );
    for (_, s) in &replicas {
        let st = ok(&c, s, "GET", "/v1/apis/orders/stages/prod", None).await;
        assert_eq!(st["deploymentId"], d2["id"], "{st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_process_on_sqlite_is_its_own_cluster_and_leader() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  replicaName: solo\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let v = ok(&c, &s, "GET", "/v1/cluster", None).await;
    assert_eq!(v["store"], "sqlite", "{v}");
    assert_eq!(v["leader"], "solo");
    assert_eq!(v["replicas"][0]["name"], "solo");
    // Ready once its workers run (the listeners are printed a moment before).
    let body: Value = s.ready().await.json().await.unwrap();
    assert!(body.get("staleSince").is_none(), "{body}");
    // A bad lease length is refused naming the field.
    std::fs::write(&cfg, "server:\n  leaseSeconds: 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data2"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.leaseSeconds: 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_no_request_and_replicas_catch_up_after_it() {
    let pg = OwnPostgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (start_replica(dir.path(), "a", &url), start_replica(dir.path(), "b", &url));
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    setup_split(&c, &a, prod.addr, canary.addr, 0.0, json!({})).await;
    wait_served(&c, &b, "production").await;
    let (load_a, load_b) = (
        Load::start(&c, &format!("{}/orders/prod/items", a.gateway), 2),
        Load::start(&c, &format!("{}/orders/prod/items", b.gateway), 2),
    );

    // PostgreSQL down for 10 s: both replicas stay ready and say since when they are stale.
    pg.down();
    let down_at = Instant::now();
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = c.get(format!("{}/readyz", s.admin)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{} not ready during the outage", s.admin);
            let body: Value = r.json().await.unwrap();
            if body["staleSince"].is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "{} never reported staleness: {body}", s.admin);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rest = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    tokio::time::sleep(rest).await;
    pg.up();

    // Back: staleness clears, and a change through A is served by B.
    for s in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body: Value = c.get(format!("{}/readyz", s.admin)).send().await.unwrap().json().await.unwrap();
            if body.get("staleSince").is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "{} still stale: {body}", s.admin);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = admin(
            &c,
            &a,
            "PATCH",
            "/v1/apis/orders/stages/prod",
            Some(json!({"patchOperations": [{"op": "replace", "path": "/canarySettings/percentTraffic", "value": "100"}]})),
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "changes still fail after the outage: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_served(&c, &b, "canary").await;
    wait_served(&c, &a, "canary").await;
    for (name, load) in [("a", load_a), ("b", load_b)] {
        let (sent, failures) = load.finish().await;
        assert!(sent > 0);
        assert!(
            failures.is_empty(),
            "replica {name}: {} of {sent} requests failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_past_its_lease_steps_down_and_no_step_is_taken_twice() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let replicas = leased_replicas(dir.path(), &url, &["p1", "p2"], 3);
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );
    let c = client();
    let a = &replicas[0].1;
    let d2 = rollout_ready(&c, a, &prod).await;
    ok(
        &c,
        a,
        "PUT",
        "/v1/deployment-configs/Linear3",
        Some(json!({"type": "TimeBasedLinear", "percentage": 25, "intervalSeconds": 2})),
    )
    .await;
    let view = cluster_of(&c, a, 2).await;
    let leader = view["leader"].as_str().unwrap().to_string();
    let (old, other) = if replicas[0].0 == leader {
        (&replicas[0].1, &replicas[1].1)
    } else {
        (&replicas[1].1, &replicas[0].1)
    };
    let (status, r) = admin(
        &c,
        other,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(
            json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": next.addr.to_string()},
                    "deploymentConfig": "Linear3"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();

    // Pause the leader (SIGSTOP) until the other replica holds the lease, then let it run again.
    let pid = old.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped_at = Instant::now();
    loop {
        let v = ok(&c, other, "GET", "/v1/cluster", None).await;
        if v["leader"].as_str().is_some_and(|l| l != leader) {
            break;
        }
        assert!(stopped_at.elapsed() < Duration::from_secs(30), "no takeover: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());

    let r = wait_rollout(&c, other, &id, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    // No step taken twice: each step of the plan has one event, in order.
    let steps: Vec<u64> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "InProgress")
        .filter_map(|e| e["step"].as_u64())
        .collect();
    assert_eq!(steps, [0, 1, 2, 3], "{r}");
    let succeeded = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "Succeeded")
        .count();
    assert_eq!(succeeded, 1, "{r}");
    // The paused replica says it stepped down.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&old.stderr_log).unwrap_or_default();
        if log.contains("no longer runs the controller") {
            break;
        }
        assert!(Instant::now() < deadline, "the paused leader never stepped down:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = ok(&c, old, "GET", "/v1/cluster", None).await;
    assert_ne!(v["leader"].as_str(), Some(leader.as_str()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_pending_at_a_takeover_is_called_again_with_its_execution_id() {
    use std::sync::{Arc, Mutex};
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let replicas = leased_replicas(dir.path(), &url, &["h1", "h2"], 3);
    let (prod, next) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::Echo).await,
    );

    // The hook: the first call is held (its caller is killed meanwhile); later calls succeed at once.
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body: Value = serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                        let first = {
                            let mut s = seen.lock().unwrap();
                            s.push(body["lifecycleEventHookExecutionId"].as_str().unwrap().to_string());
                            s.len() == 1
                        };
                        if first {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let c = client();
    let a = &replicas[0].1;
    let d2 = rollout_ready(&c, a, &prod).await;
    let leader = cluster_of(&c, a, 2).await["leader"].as_str().unwrap().to_string();
    let (mut old, other) = {
        let mut it = replicas.into_iter();
        let (n0, s0) = it.next().unwrap();
        let (_, s1) = it.next().unwrap();
        if n0 == leader {
            (s0, s1)
        } else {
            (s1, s0)
        }
    };
    let (status, r) = admin(
        &c,
        &other,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(
            json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": next.addr.to_string()},
                    "deploymentConfig": "AllAtOnce", "hooks": {"beforeAllowTraffic": format!("http://{hook_addr}/before")}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the hook was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The leader dies while the hook is pending; the other replica takes over and calls it again.
    old.kill();
    let r = wait_rollout(&c, &other, &id, Duration::from_secs(40)).await;
    assert_eq!(r["status"], "Succeeded", "{r}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], calls[1], "the same execution id both times");
    // The execution completed once: one success in the record, and the rollout's hook is that id.
    let events = r["events"].as_array().unwrap();
    let succeeded = events.iter().filter(|e| e["reason"] == "BeforeAllowTraffic hook succeeded").count();
    assert_eq!(succeeded, 1, "{r}");
    let called = events
        .iter()
        .filter(|e| e["reason"].as_str().unwrap().contains("hook") && e["reason"].as_str().unwrap().ends_with("called"))
        .count();
    assert_eq!(
        called, 1,
        "one execution in the record, called again by the new leader without a new id: {r}"
    );
}

/// The sum of the lines of a replica's own `/metrics` that start with `prefix` and contain every one
/// of `labels`.
async fn metric_sum(c: &reqwest::Client, s: &Server, prefix: &str, labels: &[&str]) -> u64 {
    let text = c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// `canarygate_requests_total` of a replica, summed over the series whose labels contain `labels`.
async fn requests_total(c: &reqwest::Client, s: &Server, labels: &[&str]) -> u64 {
    metric_sum(c, s, "canarygate_requests_total{", labels).await
}

/// The value of one series of a replica's `/metrics` (its name and labels exactly).
async fn metric_value(c: &reqwest::Client, s: &Server, series: &str) -> u64 {
    metric_sum(c, s, &format!("{series} "), &[]).await
}

/// `GET /v1/metrics` through `s`: the Sum of `metric` of the stage's `variant` over the last hour.
async fn cluster_sum(c: &reqwest::Client, s: &Server, variant: &str, metric: &str) -> f64 {
    let v = ok(
        c,
        s,
        "GET",
        &format!("/v1/metrics?api=orders&stage=prod&variant={variant}&metric={metric}&statistic=Sum&periodSeconds=3600"),
        None,
    )
    .await;
    v["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_errors_through_a_replica_that_is_not_the_leader_roll_it_back() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let replicas = leased_replicas(dir.path(), &url, &["r1", "r2", "r3"], 3);
    let (prod, broken) = (
        Backend::start("v1", Behaviour::Echo).await,
        Backend::start("v2", Behaviour::FailTenths(3)).await,
    );
    let c = client();
    let a = &replicas[0].1;
    let d2 = rollout_ready(&c, a, &prod).await;
    canary_plan_and_alarm(&c, a, "Canary20Percent60Seconds", 60).await;
    let ((leader, on_leader), (c_name, via)) = leader_and_follower(&c, &replicas).await;
    wait_served(&c, via, "production").await;

    // The rollout and every request go through C, a replica that does not run the controller.
    let (status, r) = admin(
        &c,
        via,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(
            json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": broken.addr.to_string()},
                    "deploymentConfig": "Canary20Percent60Seconds", "alarms": ["canary-5xx"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let load = Load::start(&c, &format!("{}/orders/prod/items", via.gateway), 4);
    let r = wait_rollout(&c, via, &id, Duration::from_secs(30)).await;
    let (sent, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap();
    assert!(last["reason"].as_str().unwrap().contains("canary-5xx"), "{last}");
    eprintln!("{sent} requests through {c_name}; rolled back by the leader {leader}");

    // The leader's own gateway saw none of the canary's requests: it judged from C's published seconds.
    let canary = "variant=\"canary\"";
    assert_eq!(requests_total(&c, on_leader, &[canary]).await, 0);
    let c_errors = requests_total(&c, via, &[canary, "status_class=\"5xx\""]).await;
    let c_count = requests_total(&c, via, &[canary]).await;
    assert!(c_errors > 0 && c_count > c_errors, "{c_errors} of {c_count}");
    // GET /v1/metrics through any replica counts the whole cluster's requests: exactly C's (its last
    // second is published within about a second).
    for (_, s) in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (e5, n) = (
                cluster_sum(&c, s, "canary", "5XXError").await,
                cluster_sum(&c, s, "canary", "Count").await,
            );
            if (e5, n) == (c_errors as f64, c_count as f64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {e5} errors of {n}, C counted {c_errors} of {c_count}",
                s.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let alarm = ok(&c, on_leader, "GET", "/v1/alarms/canary-5xx", None).await;
    assert!(alarm["history"].as_array().unwrap().iter().any(|h| h["to"] == "ALARM"), "{alarm}");
}

/// Opens the store two replicas would, on the shared database (off the async threads: it blocks).
async fn open_store(url: &str) -> std::sync::Arc<canarygate_store::Store> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let backend = canarygate_store::PostgresBackend::open(&url).unwrap();
        std::sync::Arc::new(canarygate_store::Store::open(Box::new(backend), Box::new(|_| {})).unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_write_is_refused_and_changes_nothing() {
    use canarygate_store::{Coordinator, Fence, StoreError};
    let pg = postgres();
    let url = pg.database();
    let (a, b) = (open_store(&url).await, open_store(&url).await);
    let lease = |c: &mut Coordinator, who: &str| c.acquire(who, Duration::from_secs(2)).unwrap();
    let (u1, u2) = (url.clone(), url.clone());
    let (mut ca, mut cb) = tokio::task::spawn_blocking(move || (Coordinator::new(&u1), Coordinator::new(&u2)))
        .await
        .unwrap();
    let put = |name: &'static str| move |s: &mut canarygate_model::State| s.put_api(name, Vec::new(), chrono::Utc::now());

    // Replica a leads (epoch e) and writes under its fence.
    let (epoch, _) = tokio::task::block_in_place(|| lease(&mut ca, "a")).expect("a takes the free lease");
    let fence_a = Fence { holder: "a".into(), epoch };
    a.mutate_fenced(&fence_a, put("by-a")).await.unwrap();
    assert_eq!(tokio::task::block_in_place(|| lease(&mut cb, "b")), None, "held by a");

    // a stops renewing (paused); once the lease has run out, b takes it over with a new epoch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (epoch_b, _) = loop {
        if let Some(held) = tokio::task::block_in_place(|| lease(&mut cb, "b")) {
            break held;
        }
        assert!(Instant::now() < deadline, "b never took the lease over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(epoch_b, epoch + 1);

    // a's late write, under its old fence, is refused and changes nothing; b's goes through.
    let version = {
        b.sync().await.unwrap();
        b.version().await
    };
    let late = a.mutate_fenced(&fence_a, put("late-by-a")).await;
    assert!(
        matches!(&late, Err(StoreError::Fenced { holder, epoch: e }) if holder == "a" && *e == epoch),
        "{late:?}"
    );
    b.sync().await.unwrap();
    assert_eq!(b.version().await, version, "nothing was written");
    assert!(!b.current().apis.contains_key("late-by-a"));
    let fence_b = Fence {
        holder: "b".into(),
        epoch: epoch_b,
    };
    b.mutate_fenced(&fence_b, put("by-b")).await.unwrap();
    a.sync().await.unwrap();
    assert!(a.current().apis.contains_key("by-a") && a.current().apis.contains_key("by-b"));
    assert!(!a.current().apis.contains_key("late-by-a"));
    // The Coordinators' connections are closed off the async threads (their Drop does so).
    drop((ca, cb));
}

/// `canarygate serve` on `url` that is expected to fail to start: its stderr.
fn refused_to_start(dir: &std::path::Path, url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--store",
            url,
            "--data-dir",
        ])
        .arg(dir)
        .env("CANARYGATE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on {url}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("refused: {}", err.lines().last().unwrap_or_default());
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_postgresql_over_verified_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (cert, key) = ca.issue("db", "localhost");
    let pg = OwnPostgres::start_tls(&cert, &key);
    let base = format!("postgres://postgres@localhost:{}/canarygate", pg.port);

    // This server rejects plain TCP: a URL without sslmode does not start.
    let err = refused_to_start(&dir.path().join("plain"), &base);
    assert!(err.contains("no encryption") || err.contains("pg_hba"), "{err}");
    // A CA that did not sign the server's certificate: refused, the certificate named as the reason.
    let other = tempfile::tempdir().unwrap();
    Ca::new(other.path());
    let wrong = format!("{base}?sslmode=verify-full&sslrootcert={}", other.path().join("ca.pem").display());
    let err = refused_to_start(&dir.path().join("wrong"), &wrong);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // The right CA, but a name the certificate is not for: refused too (verify-full).
    let ca_pem = dir.path().join("ca.pem");
    let by_ip = format!(
        "postgres://postgres@127.0.0.1:{}/canarygate?sslmode=verify-full&sslrootcert={}",
        pg.port,
        ca_pem.display()
    );
    let err = refused_to_start(&dir.path().join("by-ip"), &by_ip);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // The right CA and name: the replica serves, and every connection it holds to the database is TLS.
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca_pem.display());
    let s = start_replica(dir.path(), "tls", &url);
    let c = client();
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "mock", "status": 200}}]})),
    )
    .await;
    assert_eq!(ok(&c, &s, "GET", "/v1/cluster", None).await["store"], "postgres");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = pg.psql(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'canarygate'",
        );
        let (tls, plain) = counts.split_once('|').unwrap();
        assert_eq!(plain, "0", "{counts}");
        // Changes, LISTEN, lease and heartbeat, metrics publisher (and the leader's metrics reader).
        if tls.parse::<u32>().unwrap() >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{counts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.psql("SELECT count(*) FROM apis WHERE name = 'orders'"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_evaluated_without_a_silent_replica_names_it() {
    let pg = postgres();
    let url = pg.database();
    let dir = tempfile::tempdir().unwrap();
    // leaseSeconds 10: a replica stays live (in the cluster) for 10 s after its last heartbeat.
    let replicas = leased_replicas(dir.path(), &url, &["q1", "q2", "q3"], 10);
    let prod = Backend::start("v1", Behaviour::Echo).await;
    let c = client();
    let a = &replicas[0].1;
    rollout_ready(&c, a, &prod).await;
    ok(
        &c,
        a,
        "PUT",
        "/v1/alarms/prod-count",
        Some(
            json!({"api": "orders", "stage": "prod", "variant": "production", "metric": "Count", "statistic": "Sum",
                    "periodSeconds": 1, "evaluationPeriods": 1, "datapointsToAlarm": 1,
                    "comparison": "GreaterThanThreshold", "threshold": 1000}),
        ),
    )
    .await;
    let ((_, on_leader), (silent, s)) = leader_and_follower(&c, &replicas).await;
    let note = format!("Evaluated without replica {silent}");
    let alarm = ok(&c, on_leader, "GET", "/v1/alarms/prod-count", None).await;
    assert!(!alarm.to_string().contains(&note), "{alarm}");

    // The replica stops publishing (paused) but is still live: after 2 s the leader evaluates
    // without it and says so.
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let alarm = ok(&c, on_leader, "GET", "/v1/alarms/prod-count", None).await;
        if alarm.to_string().contains(&note) {
            break;
        }
        assert!(Instant::now() < deadline, "the reason never named {silent}: {alarm}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // Publishing again, it is no longer missing.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alarm = ok(&c, on_leader, "GET", "/v1/alarms/prod-count", None).await;
        if !alarm.to_string().contains(&note) {
            break;
        }
        assert!(Instant::now() < deadline, "{silent} still named after it resumed: {alarm}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The stage cache through the real binary, with real backends that count their calls: hits after
//! misses, expiry, sharing between production and canary only when safe, what is never stored,
//! coalesced misses, flush, bounds, and the cache metrics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use serde_json::{json, Value};

fn patch(ops: Value) -> Option<Value> {
    Some(json!({ "patchOperations": ops }))
}

async fn get(c: &reqwest::Client, url: &str, variant: &str) -> (String, Value) {
    get_with(c, url, &[("x-canarygate-variant", variant)]).await
}

async fn enable_cache(f: &Fixture, ttl: u32, use_stage_cache: bool) {
    ok(
        &f.c,
        &f.s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        patch(json!([
            {"op": "replace", "path": "/cache/enabled", "value": "true"},
            {"op": "replace", "path": "/cache/ttlSeconds", "value": ttl.to_string()},
            {"op": "replace", "path": "/canarySettings/useStageCache", "value": use_stage_cache.to_string()}
        ])),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_expiry_and_what_is_never_stored() {
    let f = fixture(0.0, json!({})).await;
    let url = |p: &str| format!("{}/orders/prod{p}", f.s.gateway);
    // Off by default: no cache header, every request reaches the backend.
    assert_eq!(get(&f.c, &url("/a"), "production").await.0, "none");
    enable_cache(&f, 300, true).await;

    let (c1, b1) = get(&f.c, &url("/a"), "production").await;
    let (c2, b2) = get(&f.c, &url("/a"), "production").await;
    assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"));
    assert_eq!(b1["call"], b2["call"], "the hit is the stored answer");
    let calls = f.prod.calls();
    // Another query is another key.
    assert_eq!(get(&f.c, &url("/a?x=1"), "production").await.0, "miss");
    assert_eq!(f.prod.calls(), calls + 1);

    // Never stored: no-store, private, no-cache, Set-Cookie, a past Expires.
    for q in [
        "cc=no-store",
        "cc=private",
        "cc=no-cache",
        "cookie=1",
        "cc=max-age%3D0",
        "expired=1",
        "cc=public&cookie=1",
    ] {
        let u = url(&format!("/b?{q}"));
        let before = f.prod.calls();
        assert_eq!(get(&f.c, &u, "production").await.0, "miss", "{q}");
        assert_eq!(get(&f.c, &u, "production").await.0, "miss", "{q} must not be stored");
        assert_eq!(f.prod.calls(), before + 2, "{q}");
    }
    // Not GET/HEAD: never from the cache.
    let r = f.c.post(url("/a")).send().await.unwrap();
    assert!(r.headers().get("x-canarygate-cache").is_none());

    // A max-age shorter than the stage TTL shortens the entry's life: max-age=1 has expired 1.5 s later,
    // while the stage TTL (300 s) alone would keep it.
    let u = url("/short?cc=max-age%3D1");
    assert_eq!(get(&f.c, &u, "production").await.0, "miss");
    assert_eq!(get(&f.c, &u, "production").await.0, "hit");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(get(&f.c, &u, "production").await.0, "miss", "expired after max-age");
    assert_eq!(get(&f.c, &url("/a"), "production").await.0, "hit", "the 300 s entry is still there");

    // The stage TTL itself: 1 s.
    ok(
        &f.c,
        &f.s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        patch(json!([{"op": "replace", "path": "/cache/ttlSeconds", "value": "1"}])),
    )
    .await;
    let u = url("/ttl");
    assert_eq!(get(&f.c, &u, "production").await.0, "miss");
    assert_eq!(get(&f.c, &u, "production").await.0, "hit");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(get(&f.c, &u, "production").await.0, "miss", "expired after ttlSeconds");

    // Flush empties the stage.
    let stats = ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod/cache", None).await;
    assert!(stats["entries"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(admin(&f.c, &f.s, "DELETE", "/v1/apis/orders/stages/prod/cache", None).await.0, 204);
    assert_eq!(ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod/cache", None).await["entries"], 0);
    assert_eq!(get(&f.c, &url("/a"), "production").await.0, "miss", "flushed");

    // Disabled by PATCH: the next request does not use the cache.
    ok(
        &f.c,
        &f.s,
        "PATCH",
        "/v1/apis/orders/stages/prod",
        patch(json!([{"op": "replace", "path": "/cache/enabled", "value": "false"}])),
    )
    .await;
    assert_eq!(get(&f.c, &url("/a"), "production").await.0, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_and_canary_share_entries_only_when_safe() {
    let f = fixture(0.0, json!({})).await;
    let url = format!("{}/orders/prod/shared", f.s.gateway);
    let p = "/v1/apis/orders/stages/prod";

    // useStageCache false: the canary neither reads nor writes the cache.
    enable_cache(&f, 300, false).await;
    assert_eq!(get(&f.c, &url, "production").await.0, "miss");
    let (label, body) = get(&f.c, &url, "canary").await;
    assert_eq!((label.as_str(), body["backend"].as_str()), ("none", Some("canary")));
    assert_eq!(
        get(&f.c, &url, "production").await.0,
        "hit",
        "the canary did not disturb production's entry"
    );

    // Same deployment, different backend override: separate entries (API Gateway's trap, removed).
    enable_cache(&f, 300, true).await;
    let (label, body) = get(&f.c, &url, "canary").await;
    assert_eq!(label, "miss");
    assert_eq!(body["backend"], "canary", "the canary is not answered from production's entry");
    assert_eq!(get(&f.c, &url, "canary").await.0, "hit");

    // Same deployment and same effective variables: one shared entry.
    ok(
        &f.c,
        &f.s,
        "PATCH",
        p,
        patch(json!([
            {"op": "remove", "path": "/canarySettings/stageVariableOverrides/backend"},
            {"op": "remove", "path": "/canarySettings/stageVariableOverrides/version"}
        ])),
    )
    .await;
    let (label, body) = get(&f.c, &url, "canary").await;
    assert_eq!(
        (label.as_str(), body["backend"].as_str()),
        ("hit", Some("production")),
        "shared with production"
    );

    // Another deployment (same variables): separate entries.
    let d2 = ok(&f.c, &f.s, "POST", "/v1/apis/orders/deployments", Some(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &f.c,
        &f.s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/canarySettings/deploymentId", "value": d2}])),
    )
    .await;
    assert_eq!(get(&f.c, &url, "canary").await.0, "miss");
    assert_eq!(get(&f.c, &url, "canary").await.0, "hit");
    assert_eq!(get(&f.c, &url, "production").await.0, "hit");

    // Cache metrics per variant, in both outputs, match what this test saw:
    // production: 1 miss, 2 hits; canary: 2 misses, 3 hits.
    let prom =
        f.c.get(format!("{}/metrics", f.s.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for (variant, result, n) in [
        ("production", "miss", 1),
        ("production", "hit", 2),
        ("canary", "miss", 2),
        ("canary", "hit", 3),
    ] {
        let line =
            format!("canarygate_cache_requests_total{{api=\"orders\",stage=\"prod\",variant=\"{variant}\",result=\"{result}\"}} {n}");
        assert!(prom.lines().any(|l| l == line), "missing {line}");
    }
    for (variant, metric, n) in [
        ("production", "CacheHitCount", 2.0),
        ("canary", "CacheMissCount", 2.0),
        ("canary", "CacheHitCount", 3.0),
    ] {
        let q = format!("/v1/metrics?api=orders&stage=prod&variant={variant}&metric={metric}&statistic=Sum&periodSeconds=3600");
        let v = ok(&f.c, &f.s, "GET", &q, None).await;
        let sum: f64 = v["datapoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["value"].as_f64().unwrap())
            .sum();
        assert_eq!(sum, n, "{variant} {metric}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_upstream_call() {
    let f = fixture(0.0, json!({})).await;
    enable_cache(&f, 300, true).await;
    let url = format!("{}/orders/prod/slow?delay_ms=500", f.s.gateway);
    let before = f.prod.calls();
    let (hits, misses) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url, hits, misses) = (f.c.clone(), url.clone(), hits.clone(), misses.clone());
        tasks.push(tokio::spawn(async move {
            let (label, _) = get(&c, &url, "production").await;
            match label.as_str() {
                "hit" => hits.fetch_add(1, Ordering::SeqCst),
                _ => misses.fetch_add(1, Ordering::SeqCst),
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(f.prod.calls() - before, 1, "20 concurrent misses made one upstream call");
    assert_eq!(misses.load(Ordering::SeqCst), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_with_ten_times_more_keys() {
    let f = fixture(0.0, json!({})).await;
    let p = "/v1/apis/orders/stages/prod";
    ok(
        &f.c,
        &f.s,
        "PATCH",
        p,
        patch(json!([
            {"op": "replace", "path": "/cache/enabled", "value": "true"},
            {"op": "replace", "path": "/cache/maxEntries", "value": "50"}
        ])),
    )
    .await;
    for i in 0..500 {
        get(&f.c, &format!("{}/orders/prod/k{i}", f.s.gateway), "production").await;
    }
    let stats = ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod/cache", None).await;
    let entries = stats["entries"].as_u64().unwrap();
    assert!(entries > 0 && entries <= 50, "{stats}");

    // The byte bound: 64 KiB of entries of about 2 KiB each.
    ok(
        &f.c,
        &f.s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/cache/maxBytes", "value": "65536"}])),
    )
    .await;
    for i in 0..500 {
        get(&f.c, &format!("{}/orders/prod/b{i}?pad=2000", f.s.gateway), "production").await;
    }
    let stats = ok(&f.c, &f.s, "GET", "/v1/apis/orders/stages/prod/cache", None).await;
    assert!(stats["bytes"].as_u64().unwrap() <= 65536, "{stats}");
    let entries = stats["entries"].as_u64().unwrap();
    assert!(entries > 0 && entries <= 32, "{stats}");
    // Bad bounds are refused, naming the field.
    let (status, v) = admin(
        &f.c,
        &f.s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/cache/maxBytes", "value": "10"}])),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("/cache/maxBytes"), "{v}");
}

/// Sends GET `url` with extra request fields; the cache header and the backend's echo.
async fn get_with(c: &reqwest::Client, url: &str, fields: &[(&str, &str)]) -> (String, Value) {
    let mut req = c.get(url);
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cache = r
        .headers()
        .get("x-canarygate-cache")
        .map_or("none", |v| v.to_str().unwrap())
        .to_string();
    (cache, r.json().await.unwrap())
}

const ALICE: (&str, &str) = ("authorization", "Bearer alice-token");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_is_never_served_to_another_client() {
    let f = fixture(0.0, json!({})).await;
    enable_cache(&f, 300, true).await;
    let url = |p: &str| format!("{}/orders/prod{p}", f.s.gateway);

    // Alice's answer (no cache-control) is not stored: the next client without credentials gets its
    // own from the backend, and never sees Alice's.
    let (c1, b1) = get_with(&f.c, &url("/me"), &[ALICE]).await;
    assert_eq!(c1, "miss");
    assert_eq!(b1["headers"]["authorization"], "Bearer alice-token");
    let (c2, b2) = get_with(&f.c, &url("/me"), &[]).await;
    assert_eq!(c2, "miss", "not from Alice's answer");
    assert!(b2["headers"].get("authorization").is_none(), "{b2}");
    assert_ne!(b1["call"], b2["call"]);
    // max-age alone does not make it shareable either.
    get_with(&f.c, &url("/me?cc=max-age%3D60"), &[ALICE]).await;
    let (c, b) = get_with(&f.c, &url("/me?cc=max-age%3D60"), &[]).await;
    assert_eq!(c, "miss");
    assert!(b["headers"].get("authorization").is_none(), "{b}");

    // The response says public (or s-maxage): stored and served to the next client.
    for q in ["cc=public", "cc=s-maxage%3D60"] {
        let u = url(&format!("/catalog?{q}"));
        let (c1, b1) = get_with(&f.c, &u, &[ALICE]).await;
        let (c2, b2) = get_with(&f.c, &u, &[]).await;
        assert_eq!((c1.as_str(), c2.as_str()), ("miss", "hit"), "{q}");
        assert_eq!(b1["call"], b2["call"], "{q}");
    }

    // Together (the second arrives while the first is fetching, and waits for it): a private answer
    // sends the waiter to the backend itself; a public one is shared.
    for (q, shared) in [("delay_ms=400", false), ("delay_ms=400&cc=public", true)] {
        let u = url(&format!("/together?{q}"));
        let before = f.prod.calls();
        let alice = {
            let (c, u) = (f.c.clone(), u.clone());
            tokio::spawn(async move { get_with(&c, &u, &[ALICE]).await })
        };
        // The backend has the first call before the second request is sent.
        while f.prod.calls() == before {
            tokio::task::yield_now().await;
        }
        let (c2, b2) = get_with(&f.c, &u, &[]).await;
        let (c1, b1) = alice.await.unwrap();
        assert_eq!(c1, "miss");
        assert_eq!(b1["headers"]["authorization"], "Bearer alice-token");
        if shared {
            assert_eq!((c2.as_str(), f.prod.calls()), ("hit", before + 1), "{q}");
            assert_eq!(b1["call"], b2["call"]);
        } else {
            assert_eq!((c2.as_str(), f.prod.calls()), ("miss", before + 2), "{q}");
            assert!(b2["headers"].get("authorization").is_none(), "{q}: {b2}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_freshness_and_age_follow_rfc_9111() {
    let f = fixture(0.0, json!({})).await;
    enable_cache(&f, 300, true).await;
    let url = |p: &str| format!("{}/orders/prod{p}", f.s.gateway);

    // Vary: Accept-Language keeps the languages apart, each served its own.
    let u = url("/lang?vary=Accept-Language");
    let lang = |l: &'static str| [("accept-language", l)];
    assert_eq!(get_with(&f.c, &u, &lang("de")).await.0, "miss");
    assert_eq!(get_with(&f.c, &u, &lang("fr")).await.0, "miss", "another language is another entry");
    for l in ["de", "fr", "de"] {
        let (c, b) = get_with(&f.c, &u, &lang(l)).await;
        assert_eq!(c, "hit", "{l}");
        assert_eq!(b["headers"]["accept-language"], l);
    }
    let (c, b) = get_with(&f.c, &u, &[]).await;
    assert_eq!(c, "miss", "no Accept-Language at all is a third");
    assert!(b["headers"].get("accept-language").is_none());

    // s-maxage overrides max-age in a shared cache: still a hit after max-age=1 has passed.
    let u = url("/smax?cc=max-age%3D1,s-maxage%3D60");
    assert_eq!(get_with(&f.c, &u, &[]).await.0, "miss");
    // Age reduces freshness: max-age=100 with Age: 99 is fresh for 1 s more.
    let aged = url("/aged?cc=max-age%3D100&age=99");
    assert_eq!(get_with(&f.c, &aged, &[]).await.0, "miss");
    let r = f.c.get(&aged).send().await.unwrap();
    assert_eq!(r.headers()["x-canarygate-cache"], "hit");
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 99, "the upstream's Age counts: {age}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(get_with(&f.c, &u, &[]).await.0, "hit", "s-maxage=60 wins");
    assert_eq!(get_with(&f.c, &aged, &[]).await.0, "miss", "stale after 100 - 99 s");

    // A client's own no-cache does not send the request through (documented choice, as nginx).
    let u = url("/fresh");
    let (_, first) = get_with(&f.c, &u, &[]).await;
    let (c, again) = get_with(&f.c, &u, &[("cache-control", "no-cache"), ("pragma", "no-cache")]).await;
    assert_eq!((c.as_str(), &again["call"]), ("hit", &first["call"]));
}

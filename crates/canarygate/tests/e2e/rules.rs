//! API Gateway's stage and canary rules through the real admin API: refusals are 4xx naming the field
//! and the value, and change nothing.

use crate::common::*;
use serde_json::{json, Value};

async fn stage(c: &reqwest::Client, s: &Server) -> Value {
    ok(c, s, "GET", "/v1/apis/orders/stages/prod", None).await
}

fn patch(ops: Value) -> Option<Value> {
    Some(json!({ "patchOperations": ops }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_rules() {
    let Fixture {
        s,
        prod: _prod,
        canary,
        c,
        deployment: d1,
        dir: _dir,
        ..
    } = fixture(10.0, json!({})).await;
    let d2 = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v2"}))).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = "/v1/apis/orders/stages/prod";
    ok(
        &c,
        &s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/canarySettings/deploymentId", "value": d2}])),
    )
    .await;
    let before = stage(&c, &s).await;

    // Replacing the stage's deployment while a canary is set: 409, nothing changed.
    let (status, v) = admin(
        &c,
        &s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/deploymentId", "value": d1}])),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "Conflict");
    assert_eq!(stage(&c, &s).await, before);

    // Bad percentTraffic values: 400 naming the field and the value, nothing changed.
    for bad in ["-1", "100.5", "NaN", "abc"] {
        let (status, v) = admin(
            &c,
            &s,
            "PATCH",
            p,
            patch(json!([{"op": "replace", "path": "/canarySettings/percentTraffic", "value": bad}])),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("percentTraffic") && msg.contains(bad), "{msg}");
        assert_eq!(v["error"]["code"], "BadRequest");
        assert_eq!(stage(&c, &s).await, before);
    }
    // The same through PUT bodies.
    for bad in [json!(-1), json!(100.5), json!("abc")] {
        let body = json!({"variables": {"backend": "x"}, "canarySettings": {"percentTraffic": bad}});
        let (status, v) = admin(&c, &s, "PUT", p, Some(body)).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("percentTraffic"), "{v}");
        assert_eq!(stage(&c, &s).await, before);
    }
    // An unknown path, and an unknown deployment id.
    let (status, v) = admin(&c, &s, "PATCH", p, patch(json!([{"op": "replace", "path": "/nope", "value": "1"}]))).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"), "{v}");
    let (status, v) = admin(
        &c,
        &s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/canarySettings/deploymentId", "value": "d-zzzzz"}])),
    )
    .await;
    assert_eq!(status, 400);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("deploymentId") && msg.contains("d-zzzzz"), "{msg}");
    assert_eq!(stage(&c, &s).await, before);

    // A patch list applies all or nothing: a good operation before a bad one is not applied.
    let (status, _) = admin(
        &c,
        &s,
        "PATCH",
        p,
        patch(json!([
            {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "50"},
            {"op": "replace", "path": "/variables/version", "value": "9"},
            {"op": "replace", "path": "/canarySettings/percentTraffic", "value": "abc"}
        ])),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(stage(&c, &s).await, before);
    // And the gateway still serves the old weight: forcing works, nothing errors.
    let r = c.get(format!("{}/orders/prod/x", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Promote: the canary's deployment and merged variables become the stage's; the canary goes.
    let promoted = ok(&c, &s, "POST", "/v1/apis/orders/stages/prod/canary/promote", None).await;
    assert_eq!(promoted["deploymentId"], d2.as_str());
    assert_eq!(promoted["variables"]["backend"], canary.addr.to_string());
    assert_eq!(promoted["variables"]["version"], "2");
    assert!(promoted["canarySettings"].is_null());
    assert_eq!(stage(&c, &s).await, promoted);
    for _ in 0..20 {
        let v: Value = c
            .get(format!("{}/orders/prod/x", s.gateway))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["backend"], "canary", "after promotion every request goes to the promoted backend");
    }
    // With no canary, replacing the deployment is allowed again.
    let back = ok(
        &c,
        &s,
        "PATCH",
        p,
        patch(json!([{"op": "replace", "path": "/deploymentId", "value": d1}])),
    )
    .await;
    assert_eq!(back["deploymentId"], d1.as_str());
    // Promote or remove with no canary: 409.
    assert_eq!(
        admin(&c, &s, "POST", "/v1/apis/orders/stages/prod/canary/promote", None).await.0,
        409
    );
    assert_eq!(admin(&c, &s, "DELETE", "/v1/apis/orders/stages/prod/canary", None).await.0, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_canary_and_resources() {
    let Fixture {
        s,
        prod,
        canary: _canary,
        c,
        dir: _dir,
        ..
    } = fixture(100.0, json!({})).await;
    let removed = ok(&c, &s, "DELETE", "/v1/apis/orders/stages/prod/canary", None).await;
    assert!(removed["canarySettings"].is_null());
    assert_eq!(removed["variables"]["backend"], prod.addr.to_string());
    let r = c.get(format!("{}/orders/prod/x", s.gateway)).send().await.unwrap();
    assert_eq!(r.headers()["x-canarygate-variant"], "production");

    // Unknown resources: 404 JSON errors; unknown routes in the gateway: 404/405 JSON.
    let (status, v) = admin(&c, &s, "GET", "/v1/apis/nope", None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("NotFound")));
    assert_eq!(admin(&c, &s, "GET", "/v1/apis/orders/stages/nope", None).await.0, 404);
    let r = c.get(format!("{}/nope/prod/x", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "NotFound");
    let r = c.post(format!("{}/orders/prod/anything", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200, "ANY /{{proxy+}} takes the POST");
    // As in API Gateway, the most specific path wins even when only its method differs: no fallback.
    let r = c.post(format!("{}/orders/prod/version", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // A bad route is refused with the field named.
    let (status, v) = admin(
        &c,
        &s,
        "PUT",
        "/v1/apis/bad",
        Some(json!({"routes": [{"path": "orders", "integration": {"type": "mock"}}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("routes[0].path"), "{v}");
    assert_eq!(
        admin(&c, &s, "GET", "/v1/apis/bad", None).await.0,
        404,
        "refused create changed nothing"
    );
    // Invalid JSON names the problem.
    let r = c
        .put(format!("{}/v1/apis/x", s.admin))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Every kind of named record: a body that cannot be read names the field, and changes nothing.
    for (path, body, field) in [
        ("/v1/alarms/e", json!({"threshhold": 1}), "threshhold"),
        ("/v1/deployment-configs/c", json!({"percentage": "lots"}), "percentage"),
        ("/v1/notifications/n", json!({"url": 7}), "url"),
        ("/v1/analyses/a", json!({"errorRate": {"alpha": "x"}}), "errorRate.alpha"),
        ("/v1/domains/d.example", json!({"mappings": {}}), "mappings"),
    ] {
        let (status, v) = admin(&c, &s, "PUT", path, Some(body)).await;
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{path}: {v}");
        assert!(message.starts_with(&format!("invalid request body: {field}: ")), "{path}: {v}");
        assert_eq!(admin(&c, &s, "GET", path, None).await.0, 404, "{path}: nothing stored");
    }
    // A file's key that is no kind of resource is refused by apply, naming it.
    let (status, v) = admin(&c, &s, "POST", "/v1/apply", Some(json!({"alarm": []}))).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("alarm: is no kind of resource"),
        "{v}"
    );

    // Deployments are listed newest first.
    let d2 = ok(
        &c,
        &s,
        "POST",
        "/v1/apis/orders/deployments",
        Some(json!({"description": "second"})),
    )
    .await;
    let list = ok(&c, &s, "GET", "/v1/apis/orders/deployments", None).await;
    assert_eq!(list["items"][0]["id"], d2["id"]);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Method-only mismatches are 405.
    ok(
        &c,
        &s,
        "PUT",
        "/v1/apis/shop",
        Some(json!({"routes": [{"method": "GET", "path": "/items", "integration": {"type": "mock", "body": "items"}}]})),
    )
    .await;
    ok(&c, &s, "POST", "/v1/apis/shop/deployments", Some(json!({}))).await;
    ok(&c, &s, "PUT", "/v1/apis/shop/stages/live", Some(json!({}))).await;
    assert_eq!(c.get(format!("{}/shop/live/items", s.gateway)).send().await.unwrap().status(), 200);
    assert_eq!(
        c.delete(format!("{}/shop/live/items", s.gateway)).send().await.unwrap().status(),
        405
    );
    assert_eq!(c.get(format!("{}/shop/live/other", s.gateway)).send().await.unwrap().status(), 404);

    // Custom domains: Host + base path route to the stage; longest base path wins.
    ok(
        &c,
        &s,
        "PUT",
        "/v1/domains/api.example.com",
        Some(
            json!({"mappings": [{"basePath": "", "api": "orders", "stage": "prod"}, {"basePath": "shop", "api": "shop", "stage": "live"}]}),
        ),
    )
    .await;
    let r = c
        .get(format!("{}/shop/items", s.gateway))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "items");
    let v: Value = c
        .get(format!("{}/a/b", s.gateway))
        .header("host", "api.example.com:8080")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/a/b");
    let (status, v) = admin(
        &c,
        &s,
        "PUT",
        "/v1/domains/x.example.com",
        Some(json!({"mappings": [{"basePath": "", "api": "orders", "stage": "nope"}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("mappings[0].stage"), "{v}");
}

//! The bodies of canarygate's fuzz targets. `fuzz/fuzz_targets/*.rs` (libFuzzer, `cargo fuzz`) call these
//! functions; `tests/corpus.rs` replays every input kept under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through them on stable, so what the fuzzer found stays tested. Each
//! function takes arbitrary bytes and panics only on a broken invariant.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use canarygate_model::config::{plan, PlanMode, Resources};
use canarygate_model::{PatchOperation, StageInput, State};
use chrono::{TimeZone, Utc};

pub use canarygate_gateway::fuzz::{chunked, request_head, response_head};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name its directories and `cargo fuzz` use.
pub const TARGETS: [(&str, Target); 7] = [
    ("request_head", request_head),
    ("chunked", chunked),
    ("response_head", response_head),
    ("patch", patch),
    ("config", config),
    ("sigv4", sigv4),
    ("aws_patch", aws_patch),
];

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
}

/// A state with API `shop` (two deployments) and stage `prod` on the first with a canary on the second.
fn fixture() -> State {
    let mut s = State::default();
    let routes = serde_json::from_str(
        r#"[{"path": "/{proxy+}", "integration": {"type": "http", "uri": "http://${stageVariables.backend}/{proxy}"}}]"#,
    )
    .expect("fixture routes");
    s.put_api("shop", routes, now()).expect("fixture api");
    let mut ids = ["d-aaaaa", "d-bbbbb"].into_iter().map(String::from);
    for _ in 0..2 {
        s.create_deployment("shop", || ids.next().expect("two ids"), "fixture".into(), now())
            .expect("fixture deployment");
    }
    let input: StageInput = serde_json::from_str(
        r#"{"deploymentId": "d-aaaaa", "variables": {"backend": "10.0.0.1:80"},
            "canarySettings": {"deploymentId": "d-bbbbb", "percentTraffic": 10, "stageVariableOverrides": {"backend": "10.0.0.2:80"}}}"#,
    )
    .expect("fixture stage");
    s.put_stage("shop", "prod", input, now()).expect("fixture stage");
    s
}

/// Patch operations (a JSON list, or `{"patchOperations": [...]}`) on a stage with a canary: all or
/// nothing; a refused list changes nothing; an accepted one leaves a stage that could be created as it is.
pub fn patch(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let list = v.get("patchOperations").cloned().unwrap_or(v);
    let Ok(ops) = serde_json::from_value::<Vec<PatchOperation>>(list) else {
        return;
    };
    let mut state = fixture();
    let before = state.clone();
    match state.patch_stage("shop", "prod", &ops, now()) {
        Err(e) => {
            assert_eq!(state, before, "a refused patch changed the state: {e}");
            assert!(!e.to_string().is_empty());
        }
        Ok(stage) => {
            assert_eq!(state.stage("shop", "prod").ok(), Some(&stage));
            if let Some(c) = &stage.canary_settings {
                assert!((0.0..=100.0).contains(&c.percent_traffic), "{}", c.percent_traffic);
                assert!(state.apis["shop"].deployment(&c.deployment_id).is_some());
            }
            assert!(state.apis["shop"].deployment(&stage.deployment_id).is_some());
        }
    }
}

/// A config file's resources (YAML, as `apply -f` and `serve --config` read them): parsed, checked for
/// resources declared twice (found by this target: the second declaration of an API won, and a second
/// `apply` flipped it back), planned against
/// an empty state and applied; when every action succeeds, planning again finds nothing to do (a
/// second `apply` changes nothing).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let de = serde_norway::Deserializer::from_str(text);
    let Ok(desired) = serde_path_to_error::deserialize::<_, Resources>(de) else {
        return;
    };
    // A file that declares something twice is refused, as `apply -f` and `serve --config` refuse it.
    if desired.check().is_err() {
        return;
    }
    let mut state = State::default();
    let mut ids = (0u32..).map(|i| format!("d-{i:05}"));
    let mut all_ok = true;
    for action in plan(&state, &desired, PlanMode::Converge) {
        let before = state.clone();
        let r = action.apply(&mut state, &mut || ids.next().expect("endless ids"), now());
        if r.is_err() {
            assert_eq!(state, before, "a refused action changed the state");
            all_ok = false;
        }
    }
    if all_ok {
        let again = plan(&state, &desired, PlanMode::Converge);
        assert!(again.is_empty(), "a second apply would change {again:?}");
    }
}

/// Signature Version 4 on arbitrary requests: the input is split at `\n` into method, path, query,
/// header lines (`name: value`, up to an empty line) and the body. Whatever arrives, canonicalisation
/// does not panic; the path's canonical form decodes back to the path as sent; the canonical query is
/// sorted; and a request signed with the verifier's own canonical request and signing key verifies,
/// while the same request with one byte of body more does not.
pub fn sigv4(data: &[u8]) {
    use canarygate_admin::aws::sigv4::{
        canonical_path, canonical_query, canonical_request, signing_key, verify, Credential, SignedRequest,
    };
    use canarygate_admin::Role;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let query = lines.next().filter(|q| !q.is_empty());
    let mut headers = axum::http::HeaderMap::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once(':') else { continue };
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.trim().as_bytes()),
            axum::http::HeaderValue::from_str(v.trim()),
        ) {
            headers.append(k, v);
        }
    }
    let body: String = lines.collect::<Vec<_>>().join("\n");

    let cp = canonical_path(path);
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&cp).collect();
    assert_eq!(
        decoded,
        if path.is_empty() { b"/".to_vec() } else { path.as_bytes().to_vec() },
        "{path:?} -> {cp:?}"
    );
    let cq = canonical_query(query.unwrap_or(""));
    let pairs: Vec<&str> = cq.split('&').filter(|p| !p.is_empty()).collect();
    assert!(
        pairs.windows(2).all(|w| w[0].split_once('=') <= w[1].split_once('=')),
        "{cq:?} not sorted"
    );

    // Sign it as a client would, over the headers it has (host and x-amz-date included).
    headers.insert("host", axum::http::HeaderValue::from_static("example.amazonaws.com"));
    headers.insert("x-amz-date", axum::http::HeaderValue::from_static("20261206T120000Z"));
    headers.remove("authorization");
    headers.remove("x-amz-content-sha256");
    let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
    names.sort();
    names.dedup();
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let req = SignedRequest {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    let payload = hex::encode(Sha256::digest(body.as_bytes()));
    let Some(canonical) = canonical_request(&req, &signed, &payload) else {
        return;
    };
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n20261206T120000Z\n20261206/us-east-1/apigateway/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&signing_key("secret-key-0001", "20261206", "us-east-1", "apigateway")).expect("any key");
    mac.update(to_sign.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=AKIAFUZZ0001/20261206/us-east-1/apigateway/aws4_request, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    );
    let Ok(auth) = axum::http::HeaderValue::from_str(&auth) else {
        return;
    };
    headers.insert("authorization", auth);
    let creds = [Credential {
        name: "fuzz".into(),
        access_key_id: "AKIAFUZZ0001".into(),
        secret: "secret-key-0001".into(),
        role: Role::Admin,
    }];
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
        .expect("a time")
        .with_timezone(&Utc);
    let req = SignedRequest {
        method,
        path,
        query,
        headers: &headers,
        body: body.as_bytes(),
    };
    assert!(
        verify(&req, &creds, "us-east-1", "apigateway", at).is_ok(),
        "a correctly signed request was refused: {canonical:?}"
    );
    let longer = format!("{body}x");
    let req = SignedRequest {
        method,
        path,
        query,
        headers: &headers,
        body: longer.as_bytes(),
    };
    assert!(
        verify(&req, &creds, "us-east-1", "apigateway", at).is_err(),
        "a changed body verified"
    );
}

/// API Gateway's `UpdateStage` patch operations (a JSON list, or `{"patchOperations": [...]}`),
/// translated into the model's and applied to a stage with a canary: never a panic; a refusal by
/// either step changes nothing; an accepted list leaves the stage's deployments existing.
pub fn aws_patch(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let list = v.get("patchOperations").cloned().unwrap_or(v);
    let Ok(ops) = serde_json::from_value::<Vec<canarygate_admin::aws::AwsPatch>>(list) else {
        return;
    };
    let mut state = fixture();
    let before = state.clone();
    let stage = state.stage("shop", "prod").expect("fixture stage").clone();
    let Ok(model_ops) = canarygate_admin::aws::translate_stage_patch(&ops, &stage) else {
        return;
    };
    match state.patch_stage("shop", "prod", &model_ops, now()) {
        Err(_) => assert_eq!(state, before, "a refused patch changed the state"),
        Ok(stage) => {
            assert!(state.apis["shop"].deployment(&stage.deployment_id).is_some());
            if let Some(c) = &stage.canary_settings {
                assert!(state.apis["shop"].deployment(&c.deployment_id).is_some());
            }
        }
    }
}

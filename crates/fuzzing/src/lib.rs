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
pub const TARGETS: [(&str, Target); 5] = [
    ("request_head", request_head),
    ("chunked", chunked),
    ("response_head", response_head),
    ("patch", patch),
    ("config", config),
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
    if desired.check_unique().is_err() {
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

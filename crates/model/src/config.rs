//! Declared resources (the `apis` and named records of a config file) and the plan that makes a state match
//! them. `canarygate apply -f` executes the full plan through the admin API; `serve` seeds the store with
//! the creating half only, so a restart never undoes a change made through the API.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stage::StageInput;
use crate::state::NamedPut;
use crate::{PatchOperation, Route, State};

/// A declared API with its routes and stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiSpec {
    pub name: String,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub stages: Vec<StageSpec>,
}

/// A declared stage: a stage body with its name. (Not `#[serde(flatten)]`: serde then ignores
/// `deny_unknown_fields`, and a misspelt key would pass silently.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub cache: crate::CacheSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_settings: Option<crate::stage::CanaryInput>,
    #[serde(default)]
    pub canary_routing: crate::CanaryRouting,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::stage::MirrorSettings>,
}

impl StageSpec {
    /// The stage body this declaration asks for.
    pub fn input(&self) -> StageInput {
        StageInput {
            deployment_id: self.deployment_id.clone(),
            variables: self.variables.clone(),
            cache: self.cache.clone(),
            canary_settings: self.canary_settings.clone(),
            canary_routing: self.canary_routing.clone(),
            mirror: self.mirror.clone(),
        }
    }
}

/// A declared custom domain (kept under this name: it is the domain's input, see [`crate::state::kinds`]).
pub use crate::state::DomainSpec;

/// The resource part of a config file: its APIs, and the entries of every declared kind of named record
/// (`domains`, `deploymentConfigs`, `alarms`, `notifications`, `analyses`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub apis: Vec<ApiSpec>,
    /// Every other key: a declared kind's config file key ([`DeclaredKind::field`]) and its entries,
    /// read by [`Resources::check`] (which refuses a key that is no kind).
    #[serde(flatten)]
    pub named: BTreeMap<String, serde_json::Value>,
}

impl Resources {
    /// Refuses what cannot be carried out as meant: a key that is no kind of resource, an entry that
    /// cannot be read, a resource declared twice (an API, a stage of an API, or a named record: which of
    /// the two would win is not what anyone meant, and a second `apply` would flip it back).
    pub fn check(&self) -> crate::Result<()> {
        let mut apis = std::collections::BTreeSet::new();
        for (i, a) in self.apis.iter().enumerate() {
            if !apis.insert(a.name.as_str()) {
                return Err(twice(format!("apis[{i}].name"), "API", &a.name));
            }
            let mut stages = std::collections::BTreeSet::new();
            for (j, st) in a.stages.iter().enumerate() {
                if !stages.insert(st.name.as_str()) {
                    return Err(twice(format!("apis[{i}].stages[{j}].name"), "stage", &st.name));
                }
            }
        }
        for (field, entries) in &self.named {
            let Some(kind) = crate::state::kinds::DECLARED.iter().find(|k| k.field() == *field) else {
                let known: Vec<String> = crate::state::kinds::DECLARED.iter().map(|k| k.field()).collect();
                return Err(crate::Error::Unreadable {
                    field: field.clone(),
                    reason: format!("is no kind of resource (expected apis, {})", known.join(", ")),
                });
            };
            kind.check(entries)?;
        }
        Ok(())
    }
}

fn twice(field: String, kind: &str, name: &str) -> crate::Error {
    crate::Error::invalid(field, name, format!("declares {kind} {name:?} a second time"))
}

/// One change of a plan, in the order it must be carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    PutApi {
        api: String,
        routes: Vec<Route>,
        create: bool,
    },
    CreateDeployment {
        api: String,
        description: String,
    },
    CreateStage {
        api: String,
        stage: String,
        input: Box<StageInput>,
    },
    PatchStage {
        api: String,
        stage: String,
        ops: Vec<PatchOperation>,
    },
    /// Creates or replaces a named record of a declared kind.
    Put(NamedPut),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PutApi { api, routes, create: true } => write!(f, "create api {api} ({} routes)", routes.len()),
            Action::PutApi {
                api,
                routes,
                create: false,
            } => write!(f, "update api {api} routes ({} routes)", routes.len()),
            Action::CreateDeployment { api, description } => {
                write!(f, "create deployment of api {api} ({description})")
            }
            Action::CreateStage { api, stage, .. } => {
                write!(f, "create stage {api}/{stage} on the newest deployment")
            }
            Action::PatchStage { api, stage, ops } => {
                write!(f, "update stage {api}/{stage}:")?;
                for op in ops {
                    let v = op.value.as_ref().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
                    match v {
                        Some(v) => write!(f, " {} {}={v}", op.op.as_str(), op.path)?,
                        None => write!(f, " {} {}", op.op.as_str(), op.path)?,
                    }
                }
                Ok(())
            }
            Action::Put(p) => f.write_str(&p.text),
        }
    }
}

/// Which part of a plan to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanMode {
    /// Create what is missing, change nothing that exists (seeding at start).
    CreateOnly,
    /// Create and update until the state matches (`apply -f`).
    Converge,
}

impl Action {
    /// Carries the action out on `state`; `new_id` makes a fresh deployment id. A refused action
    /// leaves `state` as it was.
    pub fn apply(self, state: &mut State, new_id: &mut dyn FnMut() -> String, now: chrono::DateTime<chrono::Utc>) -> crate::Result<()> {
        match self {
            Action::PutApi { api, routes, .. } => state.put_api(&api, routes, now).map(|_| ()),
            Action::CreateDeployment { api, description } => state.create_deployment(&api, new_id, description, now).map(|_| ()),
            Action::CreateStage { api, stage, input } => state.put_stage(&api, &stage, *input, now).map(|_| ()),
            Action::PatchStage { api, stage, ops } => state.patch_stage(&api, &stage, &ops, now).map(|_| ()),
            Action::Put(p) => {
                let kind = crate::state::declared(p.kind).ok_or_else(|| crate::Error::not_found("kind of resource", p.kind))?;
                kind.put(state, &p.name, &p.input).map(|_| ())
            }
        }
    }
}

/// Applies a whole plan, all or nothing: on the first refusal `state` is left as it was and the error
/// names the action (`while applying "<action>": ...`). Returns the actions carried out, as text.
pub fn apply_all(
    state: &mut State,
    actions: Vec<Action>,
    new_id: &mut dyn FnMut() -> String,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::Result<Vec<String>> {
    let before = state.clone();
    let mut done = Vec::with_capacity(actions.len());
    for a in actions {
        let what = a.to_string();
        if let Err(e) = a.apply(state, new_id, now) {
            *state = before;
            return Err(e.context(&what));
        }
        done.push(what);
    }
    Ok(done)
}

/// The actions that make `state` match `desired`.
pub fn plan(state: &State, desired: &Resources, mode: PlanMode) -> Vec<Action> {
    let mut out = Vec::new();
    for spec in &desired.apis {
        let existing = state.apis.get(&spec.name);
        match existing {
            None => {
                out.push(Action::PutApi {
                    api: spec.name.clone(),
                    routes: spec.routes.clone(),
                    create: true,
                });
                out.push(Action::CreateDeployment {
                    api: spec.name.clone(),
                    description: "created from config file".into(),
                });
            }
            Some(a) if mode == PlanMode::Converge => {
                if a.api.routes != spec.routes {
                    out.push(Action::PutApi {
                        api: spec.name.clone(),
                        routes: spec.routes.clone(),
                        create: false,
                    });
                }
                if a.newest_deployment().is_none_or(|d| d.routes != spec.routes) {
                    out.push(Action::CreateDeployment {
                        api: spec.name.clone(),
                        description: "routes changed by apply".into(),
                    });
                }
            }
            Some(_) => {}
        }
        for st in &spec.stages {
            match existing.and_then(|a| a.stages.get(&st.name)) {
                None => out.push(Action::CreateStage {
                    api: spec.name.clone(),
                    stage: st.name.clone(),
                    input: Box::new(st.input()),
                }),
                Some(cur) if mode == PlanMode::Converge => {
                    let ops = stage_ops(cur, &st.input());
                    if !ops.is_empty() {
                        out.push(Action::PatchStage {
                            api: spec.name.clone(),
                            stage: st.name.clone(),
                            ops,
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }
    for kind in crate::state::kinds::DECLARED {
        if let Some(entries) = desired.named.get(&kind.field()) {
            let puts = kind.plan(state, entries, mode == PlanMode::CreateOnly);
            out.extend(puts.into_iter().map(Action::Put));
        }
    }
    out
}

fn diff_map(prefix: &str, cur: &BTreeMap<String, String>, want: &BTreeMap<String, String>, ops: &mut Vec<PatchOperation>) {
    for (k, v) in want {
        if cur.get(k) != Some(v) {
            ops.push(PatchOperation::replace(format!("{prefix}/{k}"), v.clone()));
        }
    }
    for k in cur.keys().filter(|k| !want.contains_key(*k)) {
        ops.push(PatchOperation::remove(format!("{prefix}/{k}")));
    }
}

/// The patch operations that bring an existing stage to a declared one. The stage's deployment is never
/// moved; canary settings are managed only when the file declares them.
fn stage_ops(cur: &crate::Stage, want: &StageInput) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    diff_map("/variables", &cur.variables, &want.variables, &mut ops);
    if cur.cache.enabled != want.cache.enabled {
        ops.push(PatchOperation::replace("/cache/enabled", want.cache.enabled.to_string()));
    }
    if cur.cache.ttl_seconds != want.cache.ttl_seconds {
        ops.push(PatchOperation::replace("/cache/ttlSeconds", want.cache.ttl_seconds.to_string()));
    }
    if cur.cache.max_entries != want.cache.max_entries {
        ops.push(PatchOperation::replace("/cache/maxEntries", want.cache.max_entries.to_string()));
    }
    if cur.cache.max_bytes != want.cache.max_bytes {
        ops.push(PatchOperation::replace("/cache/maxBytes", want.cache.max_bytes.to_string()));
    }
    let (cr, wr) = (&cur.canary_routing, &want.canary_routing);
    for (path, c, w) in [
        ("/canaryRouting/header", &cr.header, &wr.header),
        ("/canaryRouting/cookie", &cr.cookie, &wr.cookie),
    ] {
        if c.as_deref().map(str::to_ascii_lowercase) != w.as_deref().map(str::to_ascii_lowercase) {
            ops.push(match w {
                Some(w) => PatchOperation::replace(path, w.clone()),
                None => PatchOperation::remove(path),
            });
        }
    }
    if cr.stickiness != wr.stickiness {
        ops.push(PatchOperation::replace("/canaryRouting/stickiness", wr.stickiness.to_string()));
    }
    // The rest of the routing (trust, salt, cohorts) as one object.
    if (&cr.trusted_sources, &cr.header_token, &cr.salt, &cr.cohorts) != (&wr.trusted_sources, &wr.header_token, &wr.salt, &wr.cohorts) {
        let mut whole = wr.clone();
        let _ = whole.validate();
        ops.push(PatchOperation::replace(
            "/canaryRouting",
            serde_json::to_string(&whole).expect("canary routing serializes"),
        ));
    }
    if let Some(wc) = &want.canary_settings {
        let cc = cur.canary_settings.as_ref();
        if let Some(id) = &wc.deployment_id {
            if cc.map(|c| &c.deployment_id) != Some(id) {
                ops.push(PatchOperation::replace("/canarySettings/deploymentId", id.clone()));
            }
        }
        if cc.map(|c| c.percent_traffic) != Some(wc.percent_traffic) {
            ops.push(PatchOperation::replace(
                "/canarySettings/percentTraffic",
                wc.percent_traffic.to_string(),
            ));
        }
        if cc.map(|c| c.use_stage_cache) != Some(wc.use_stage_cache) {
            ops.push(PatchOperation::replace(
                "/canarySettings/useStageCache",
                wc.use_stage_cache.to_string(),
            ));
        }
        let empty = BTreeMap::new();
        diff_map(
            "/canarySettings/stageVariableOverrides",
            cc.map_or(&empty, |c| &c.stage_variable_overrides),
            &wc.stage_variable_overrides,
            &mut ops,
        );
    }
    // Like canary settings, a mirror the file does not declare is left as it is (a rollout may own it).
    if let Some(wm) = &want.mirror {
        let mut wm = wm.clone();
        // Compared as it would be stored (method names upper-cased); a bad one is refused by the patch.
        let _ = wm.validate("mirror");
        if cur.mirror.as_ref() != Some(&wm) {
            ops.push(PatchOperation {
                op: crate::patch::PatchOp::Replace,
                path: "/mirror".into(),
                value: Some(serde_json::to_value(&wm).expect("mirror settings serialize")),
                from: None,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn a_resource_declared_twice_is_refused_naming_the_second() {
        let twice = |v: serde_json::Value| serde_json::from_value::<Resources>(v).unwrap().check();
        let api = serde_json::json!({"name": "orders", "routes": []});
        let e = twice(serde_json::json!({"apis": [api, api]})).unwrap_err().to_string();
        assert!(
            e.contains("apis[1].name") && e.contains("\"orders\"") && e.contains("second time"),
            "{e}"
        );
        let e = twice(serde_json::json!({"apis": [{"name": "a", "stages": [{"name": "p"}, {"name": "q"}, {"name": "p"}]}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apis[0].stages[2].name"), "{e}");
        let e = twice(serde_json::json!({"domains": [{"domain": "a.example"}, {"domain": "A.example"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("domains[1].domain"), "{e}");
        twice(serde_json::json!({"apis": [{"name": "a", "stages": [{"name": "Prod"}, {"name": "prod"}]}]})).unwrap();
        resources("1").check().unwrap();
    }

    fn resources(version: &str) -> Resources {
        serde_json::from_value(serde_json::json!({
            "apis": [{
                "name": "orders",
                "routes": [{"path": "/h", "integration": {"type": "mock", "body": "ok"}}],
                "stages": [{"name": "prod", "variables": {"version": version},
                            "canarySettings": {"percentTraffic": 10, "stageVariableOverrides": {"version": "2"}}}]
            }],
            "domains": [{"domain": "api.example.com", "mappings": [{"basePath": "", "api": "orders", "stage": "prod"}]}],
            "deploymentConfigs": [{"name": "Canary20Percent30Seconds", "type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": 30}],
            "alarms": [{"name": "errors", "api": "orders", "stage": "prod", "variant": "canary", "metric": "5XXError",
                        "statistic": "Average", "periodSeconds": 1, "evaluationPeriods": 3, "datapointsToAlarm": 2,
                        "comparison": "GreaterThanThreshold", "threshold": 0.05}]
        }))
        .unwrap()
    }

    /// Carries a plan out on a state, as `apply` does through the API.
    fn execute(state: &mut State, actions: &[Action]) {
        let now = DateTime::from_timestamp(0, 0).unwrap();
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::PutApi { api, routes, .. } => {
                    state.put_api(api, routes.clone(), now).unwrap();
                }
                Action::CreateDeployment { api, description } => {
                    let id = format!("d-{i}x{}", state.apis.len());
                    state.create_deployment(api, || id.clone(), description.clone(), now).unwrap();
                }
                Action::CreateStage { api, stage, input } => {
                    state.put_stage(api, stage, (**input).clone(), now).unwrap();
                }
                Action::PatchStage { api, stage, ops } => {
                    state.patch_stage(api, stage, ops, now).unwrap();
                }
                Action::Put(p) => {
                    crate::state::declared(p.kind).unwrap().put(state, &p.name, &p.input).unwrap();
                }
            }
        }
    }

    #[test]
    fn apply_twice_changes_nothing_the_second_time() {
        let mut s = State::default();
        let first = plan(&s, &resources("1"), PlanMode::Converge);
        assert_eq!(first.len(), 6, "{first:?}");
        execute(&mut s, &first);
        assert_eq!(plan(&s, &resources("1"), PlanMode::Converge), vec![]);
        let st = s.stage("orders", "prod").unwrap();
        assert_eq!(st.canary_variables().unwrap()["version"], "2");
        // A changed variable becomes one patch operation, the deployment untouched.
        let second = plan(&s, &resources("3"), PlanMode::Converge);
        assert_eq!(
            second,
            vec![Action::PatchStage {
                api: "orders".into(),
                stage: "prod".into(),
                ops: vec![PatchOperation::replace("/variables/version", "3")]
            }]
        );
    }

    #[test]
    fn seeding_never_changes_existing_state() {
        let mut s = State::default();
        let p = plan(&s, &resources("1"), PlanMode::CreateOnly);
        execute(&mut s, &p);
        assert_eq!(plan(&s, &resources("9"), PlanMode::CreateOnly), vec![]);
    }

    #[test]
    fn changed_routes_make_a_deployment() {
        let mut s = State::default();
        let p0 = plan(&s, &resources("1"), PlanMode::Converge);
        execute(&mut s, &p0);
        let mut r = resources("1");
        r.apis[0].routes[0].path = "/health".into();
        let p = plan(&s, &r, PlanMode::Converge);
        assert!(matches!(p[0], Action::PutApi { create: false, .. }));
        assert!(matches!(p[1], Action::CreateDeployment { .. }));
        assert_eq!(p.len(), 2);
    }
}

//! The whole control-plane state and the transitions the admin API offers, as pure functions.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::{validate_deployment_id, validate_routes};
use crate::stage::{validate_percent, validate_variables, CanarySettings, StageInput};
use crate::{validate_api_name, validate_stage_name, Api, Deployment, Error, PatchOperation, Result, Route, Stage};

mod codedeploy;
pub mod kinds;
mod notifications;
pub mod record;
mod rollouts;

pub use kinds::{declared, kind, kinds};
pub use record::{Declared, DeclaredKind, Kind, NamedPut, Record, RecordChange};
pub use rollouts::alarm_view;

/// One API with its deployments (oldest first) and stages.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiState {
    pub api: Api,
    pub deployments: Vec<Deployment>,
    pub stages: BTreeMap<String, Stage>,
}

impl ApiState {
    pub fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.id == id)
    }

    pub fn newest_deployment(&self) -> Option<&Deployment> {
        self.deployments.last()
    }
}

/// A base path mapping of a custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasePathMapping {
    #[serde(default)]
    pub base_path: String,
    pub api: String,
    pub stage: String,
}

/// A custom domain and its base path mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub domain: String,
    pub mappings: Vec<BasePathMapping>,
    /// The certificate served to clients that ask for this domain by SNI (on `server.tlsListen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// A custom domain as a client declares it: the admin API's `PUT /v1/domains/{domain}` body (where
/// `domain` may be left out), a config file's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSpec {
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub mappings: Vec<BasePathMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, as PEM files on the gateway's machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
}

impl TlsFiles {
    /// Both paths given; `field` prefixes the error (e.g. `tls`).
    pub fn check(&self, field: &str) -> Result<()> {
        for (name, v) in [("certFile", &self.cert_file), ("keyFile", &self.key_file)] {
            if v.trim().is_empty() || v.contains('\0') {
                return Err(Error::invalid(format!("{field}.{name}"), v, "must be a file path"));
            }
        }
        Ok(())
    }
}

/// An alarm's definition with its current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmEntry {
    pub alarm: crate::alarm::Alarm,
    pub status: crate::alarm::AlarmStatus,
}

/// Everything the control plane knows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Shared between states: a change copies only the APIs it touches (`Arc::make_mut`), so cloning
    /// the state, diffing two states and rebuilding the gateway's snapshot cost little for the rest
    /// (an unchanged API is the same `Arc` in both).
    pub apis: BTreeMap<String, Arc<ApiState>>,
    pub domains: BTreeMap<String, Domain>,
    pub rollouts: BTreeMap<String, crate::rollout::Rollout>,
    pub alarms: BTreeMap<String, AlarmEntry>,
    /// Custom deployment configurations (the predefined ones are not stored).
    pub deployment_configs: BTreeMap<String, crate::deployment_config::DeploymentConfig>,
    /// Notification targets, by name.
    pub notifications: BTreeMap<String, crate::notification::Notification>,
    /// Events on their way to notification targets, by id.
    pub deliveries: BTreeMap<String, crate::notification::Delivery>,
    /// Stored canary analyses, by name.
    pub analyses: BTreeMap<String, crate::analysis::AnalysisSpec>,
    /// CodeDeploy applications (with their deployment groups), by name: the AWS endpoints' own.
    pub applications: BTreeMap<String, crate::codedeploy::Application>,
}

impl State {
    pub fn api(&self, name: &str) -> Result<&ApiState> {
        self.apis.get(name).map(|a| &**a).ok_or_else(|| Error::not_found("api", name))
    }

    fn api_mut(&mut self, name: &str) -> Result<&mut ApiState> {
        self.apis
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| Error::not_found("api", name))
    }

    pub fn stage(&self, api: &str, stage: &str) -> Result<&Stage> {
        self.api(api)?
            .stages
            .get(stage)
            .ok_or_else(|| Error::not_found("stage", format!("{api}/{stage}")))
    }

    /// Creates an API or replaces its routes. Returns true when it was created.
    pub fn put_api(&mut self, name: &str, routes: Vec<Route>, now: DateTime<Utc>) -> Result<bool> {
        validate_api_name(name)?;
        validate_routes(&routes)?;
        match self.apis.get_mut(name) {
            Some(a) => {
                if a.api.routes != routes {
                    let a = Arc::make_mut(a);
                    a.api.routes = routes;
                    a.api.updated_at = now;
                }
                Ok(false)
            }
            None => {
                let api = Api {
                    name: name.to_string(),
                    routes,
                    created_at: now,
                    updated_at: now,
                };
                self.apis.insert(
                    name.to_string(),
                    Arc::new(ApiState {
                        api,
                        deployments: Vec::new(),
                        stages: BTreeMap::new(),
                    }),
                );
                Ok(true)
            }
        }
    }

    /// Deletes an API with its deployments and stages; refused while a stage has an active rollout.
    pub fn delete_api(&mut self, name: &str) -> Result<()> {
        let a = self.api(name)?;
        if let Some(s) = a.stages.values().find(|s| s.active_rollout.is_some()) {
            return Err(Error::Conflict(format!("api {name:?} has an active rollout on stage {:?}", s.name)));
        }
        self.apis.remove(name);
        Ok(())
    }

    /// Snapshots the API's current routes as a new deployment. `new_id` makes candidate ids; one already
    /// taken is skipped.
    pub fn create_deployment(
        &mut self,
        api: &str,
        mut new_id: impl FnMut() -> String,
        description: String,
        now: DateTime<Utc>,
    ) -> Result<Deployment> {
        if description.len() > 1024 {
            return Err(Error::invalid("description", description, "must be at most 1024 characters"));
        }
        let a = self.api_mut(api)?;
        let mut id = new_id();
        for _ in 0..100 {
            if a.deployment(&id).is_none() {
                break;
            }
            id = new_id();
        }
        validate_deployment_id("id", &id)?;
        if a.deployment(&id).is_some() {
            return Err(Error::Conflict(format!("deployment {id} already exists")));
        }
        let d = Deployment {
            id,
            description,
            created_at: now,
            routes: a.api.routes.clone(),
        };
        a.deployments.push(d.clone());
        Ok(d)
    }

    /// Creates or replaces a stage. The deployment defaults to the newest; the canary's to the stage's.
    /// A replaced stage keeps its active rollout; replacing it while a rollout is active is refused.
    pub fn put_stage(&mut self, api: &str, name: &str, input: StageInput, now: DateTime<Utc>) -> Result<Stage> {
        validate_stage_name(name)?;
        let a = self.api_mut(api)?;
        let existing = a.stages.get(name);
        if let Some(r) = existing.and_then(|s| s.active_rollout.as_ref()) {
            return Err(Error::Conflict(format!(
                "stage {api}/{name} has an active rollout {r}; stop it first"
            )));
        }
        let deployment_id = match input.deployment_id {
            Some(id) => {
                a.deployment(&id)
                    .ok_or_else(|| Error::invalid("deploymentId", &id, format!("no such deployment of api {api}")))?;
                id
            }
            None => a
                .newest_deployment()
                .ok_or_else(|| Error::invalid("deploymentId", "", format!("api {api} has no deployment yet; create one first")))?
                .id
                .clone(),
        };
        validate_variables("variables", &input.variables)?;
        input.cache.validate()?;
        let mut routing = input.canary_routing;
        routing.validate()?;
        let canary = match input.canary_settings {
            None => None,
            Some(c) => {
                let cid = c.deployment_id.unwrap_or_else(|| deployment_id.clone());
                a.deployment(&cid)
                    .ok_or_else(|| Error::invalid("canarySettings.deploymentId", &cid, format!("no such deployment of api {api}")))?;
                validate_percent("canarySettings.percentTraffic", c.percent_traffic)?;
                validate_variables("canarySettings.stageVariableOverrides", &c.stage_variable_overrides)?;
                Some(CanarySettings {
                    deployment_id: cid,
                    percent_traffic: c.percent_traffic,
                    stage_variable_overrides: c.stage_variable_overrides,
                    use_stage_cache: c.use_stage_cache,
                })
            }
        };
        let mirror = match input.mirror {
            Some(mut m) => {
                m.validate("mirror")?;
                Some(m)
            }
            None => None,
        };
        let created_at = existing.map_or(now, |s| s.created_at);
        let stage = Stage {
            api: api.to_string(),
            name: name.to_string(),
            deployment_id,
            variables: input.variables,
            cache: input.cache,
            canary_settings: canary,
            canary_routing: routing,
            sticky_salt: existing.and_then(|s| s.sticky_salt.clone()),
            mirror,
            active_rollout: None,
            created_at,
            updated_at: now,
            version: existing.map_or(1, |s| s.version + 1),
            cache_flushed_at: existing.and_then(|s| s.cache_flushed_at),
        };
        a.stages.insert(name.to_string(), stage.clone());
        Ok(stage)
    }

    /// Applies a list of patch operations to a stage, all or nothing.
    pub fn patch_stage(&mut self, api: &str, name: &str, ops: &[PatchOperation], now: DateTime<Utc>) -> Result<Stage> {
        let a = self.api(api)?;
        let current = a
            .stages
            .get(name)
            .ok_or_else(|| Error::not_found("stage", format!("{api}/{name}")))?;
        if let Some(r) = &current.active_rollout {
            // The rollout owns the canary (and, while it mirrors, the mirror): its next step would
            // overwrite such a change.
            let mirroring = self
                .rollouts
                .get(r)
                .is_some_and(|r| matches!(r.phase, crate::rollout::Phase::Mirroring { .. }));
            let owned = |p: &str| p == "/deploymentId" || p.starts_with("/canarySettings") || (mirroring && p.starts_with("/mirror"));
            if let Some(op) = ops.iter().find(|op| owned(&op.path)) {
                return Err(Error::Conflict(format!(
                    "stage {api}/{name} has an active rollout {r} that owns {}; promote or stop the rollout instead",
                    op.path
                )));
            }
        }
        let mut next = current.clone();
        for (i, op) in ops.iter().enumerate() {
            crate::patch::apply(&mut next, op, i, |id| a.deployment(id).is_some())?;
        }
        next.touch(now);
        self.api_mut(api)?.stages.insert(name.to_string(), next.clone());
        Ok(next)
    }

    /// Promotes the canary: the stage takes the canary's deployment and merged variables; the canary goes.
    pub fn promote_canary(&mut self, api: &str, name: &str, now: DateTime<Utc>) -> Result<Stage> {
        let stage = self.stage_mut(api, name)?;
        if let Some(r) = &stage.active_rollout {
            return Err(Error::Conflict(format!(
                "stage {api}/{name} has an active rollout {r}; use the rollout's promote"
            )));
        }
        let canary = stage
            .canary_settings
            .take()
            .ok_or_else(|| Error::Conflict(format!("stage {api}/{name} has no canary to promote")))?;
        stage.deployment_id = canary.deployment_id;
        stage.variables.extend(canary.stage_variable_overrides);
        stage.touch(now);
        Ok(stage.clone())
    }

    /// Removes the canary settings; all traffic returns to production.
    pub fn remove_canary(&mut self, api: &str, name: &str, now: DateTime<Utc>) -> Result<Stage> {
        let stage = self.stage_mut(api, name)?;
        if let Some(r) = &stage.active_rollout {
            return Err(Error::Conflict(format!(
                "stage {api}/{name} has an active rollout {r}; stop it instead"
            )));
        }
        if stage.canary_settings.take().is_none() {
            return Err(Error::Conflict(format!("stage {api}/{name} has no canary to remove")));
        }
        stage.touch(now);
        Ok(stage.clone())
    }

    /// Records a flush of the stage's cache (every replica's gateway empties its copy when it sees it).
    pub fn flush_stage_cache(&mut self, api: &str, name: &str, now: DateTime<Utc>) -> Result<()> {
        let stage = self.stage_mut(api, name)?;
        stage.cache_flushed_at = Some(now);
        stage.touch(now);
        Ok(())
    }

    pub fn delete_stage(&mut self, api: &str, name: &str) -> Result<()> {
        let stage = self.stage(api, name)?;
        if let Some(r) = &stage.active_rollout {
            return Err(Error::Conflict(format!("stage {api}/{name} has an active rollout {r}")));
        }
        self.api_mut(api)?.stages.remove(name);
        Ok(())
    }

    pub(crate) fn stage_mut(&mut self, api: &str, name: &str) -> Result<&mut Stage> {
        self.api_mut(api)?
            .stages
            .get_mut(name)
            .ok_or_else(|| Error::not_found("stage", format!("{api}/{name}")))
    }

    /// Creates or replaces a custom domain's mappings; every mapping must name an existing stage.
    pub fn put_domain(&mut self, domain: &str, mut mappings: Vec<BasePathMapping>, tls: Option<TlsFiles>) -> Result<Domain> {
        let valid = !domain.is_empty()
            && domain.len() <= 253
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !valid {
            return Err(Error::invalid("domain", domain, "is not a valid host name"));
        }
        let mut seen = Vec::new();
        for (i, m) in mappings.iter_mut().enumerate() {
            m.base_path = m.base_path.trim_matches('/').to_string();
            let ok = m
                .base_path
                .split('/')
                .all(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)))
                && (m.base_path.is_empty() || !m.base_path.split('/').any(str::is_empty));
            if !ok {
                return Err(Error::invalid(
                    format!("mappings[{i}].basePath"),
                    &m.base_path,
                    "must be path segments of [A-Za-z0-9-._~]",
                ));
            }
            if seen.contains(&m.base_path) {
                return Err(Error::invalid(format!("mappings[{i}].basePath"), &m.base_path, "is mapped twice"));
            }
            seen.push(m.base_path.clone());
            self.api(&m.api).map_err(|e| e.into_field_error(&format!("mappings[{i}].api")))?;
            self.stage(&m.api, &m.stage)
                .map_err(|e| e.into_field_error(&format!("mappings[{i}].stage")))?;
        }
        if let Some(t) = &tls {
            t.check("tls")?;
        }
        let d = Domain {
            domain: domain.to_ascii_lowercase(),
            mappings,
            tls,
        };
        self.domains.insert(d.domain.clone(), d.clone());
        Ok(d)
    }

    pub fn delete_domain(&mut self, domain: &str) -> Result<()> {
        self.domains
            .remove(&domain.to_ascii_lowercase())
            .map(|_| ())
            .ok_or_else(|| Error::not_found("domain", domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Integration, Method, PatchOp};

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn routes(body: &str) -> Vec<Route> {
        vec![Route {
            method: Method::Get,
            path: "/h".into(),
            integration: Integration::Mock {
                status: 200,
                headers: Default::default(),
                body: body.into(),
            },
        }]
    }

    /// An API with two deployments (d-one, d-two) and a stage on d-one with a canary on d-two.
    fn setup() -> State {
        let mut s = State::default();
        assert!(s.put_api("orders", routes("1"), now()).unwrap());
        s.create_deployment("orders", || "d-one".into(), "first".into(), now()).unwrap();
        s.put_api("orders", routes("2"), now()).unwrap();
        s.create_deployment("orders", || "d-two".into(), "second".into(), now()).unwrap();
        let input: StageInput = serde_json::from_value(serde_json::json!({
            "deploymentId": "d-one",
            "variables": {"backend": "a:1", "version": "1"},
            "canarySettings": {"deploymentId": "d-two", "percentTraffic": 10, "stageVariableOverrides": {"backend": "b:2"}}
        }))
        .unwrap();
        s.put_stage("orders", "prod", input, now()).unwrap();
        s
    }

    fn op(op: PatchOp, path: &str, value: &str) -> PatchOperation {
        PatchOperation {
            op,
            path: path.into(),
            value: Some(serde_json::Value::String(value.into())),
            from: None,
        }
    }

    #[test]
    fn deployments_snapshot_routes() {
        let s = setup();
        let a = s.api("orders").unwrap();
        assert_eq!(a.deployment("d-one").unwrap().routes, routes("1"));
        assert_eq!(a.newest_deployment().unwrap().id, "d-two");
    }

    #[test]
    fn stage_defaults_to_newest_deployment() {
        let mut s = setup();
        let st = s.put_stage("orders", "beta", StageInput::default(), now()).unwrap();
        assert_eq!(st.deployment_id, "d-two");
        let e = s.put_stage(
            "orders",
            "x",
            StageInput {
                deployment_id: Some("d-nope".into()),
                ..Default::default()
            },
            now(),
        );
        assert!(matches!(e, Err(Error::Invalid { ref field, .. }) if field == "deploymentId"));
    }

    #[test]
    fn replacing_deployment_with_canary_set_is_refused() {
        let mut s = setup();
        let before = s.clone();
        let e = s
            .patch_stage("orders", "prod", &[op(PatchOp::Replace, "/deploymentId", "d-one")], now())
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert_eq!(s, before);
        // Replacing it with the canary's deployment is allowed, as in API Gateway.
        let st = s
            .patch_stage("orders", "prod", &[op(PatchOp::Replace, "/deploymentId", "d-two")], now())
            .unwrap();
        assert_eq!(st.deployment_id, "d-two");
    }

    #[test]
    fn promote_merges_overrides_and_removes_canary() {
        let mut s = setup();
        let st = s.promote_canary("orders", "prod", now()).unwrap();
        assert_eq!(st.deployment_id, "d-two");
        assert_eq!(st.variables["backend"], "b:2");
        assert_eq!(st.variables["version"], "1");
        assert!(st.canary_settings.is_none());
        assert!(matches!(s.promote_canary("orders", "prod", now()), Err(Error::Conflict(_))));
    }

    #[test]
    fn remove_canary() {
        let mut s = setup();
        let st = s.remove_canary("orders", "prod", now()).unwrap();
        assert!(st.canary_settings.is_none());
        assert_eq!(st.deployment_id, "d-one");
        assert_eq!(st.variables["backend"], "a:1");
    }

    #[test]
    fn patch_list_is_all_or_nothing() {
        let mut s = setup();
        let before = s.clone();
        let ops = [
            op(PatchOp::Replace, "/canarySettings/percentTraffic", "50"),
            op(PatchOp::Replace, "/nope", "1"),
        ];
        let e = s.patch_stage("orders", "prod", &ops, now()).unwrap_err().to_string();
        assert!(e.contains("patchOperations[1].path") && e.contains("/nope"), "{e}");
        assert_eq!(s, before);
    }

    #[test]
    fn domains_validate_targets() {
        let mut s = setup();
        let m = |api: &str, stage: &str| BasePathMapping {
            base_path: "/v1/".into(),
            api: api.into(),
            stage: stage.into(),
        };
        let d = s.put_domain("API.example.com", vec![m("orders", "prod")], None).unwrap();
        assert_eq!(d.domain, "api.example.com");
        assert_eq!(d.mappings[0].base_path, "v1");
        let e = s.put_domain("x.com", vec![m("orders", "nope")], None).unwrap_err().to_string();
        assert!(e.contains("mappings[0].stage"), "{e}");
        assert!(s.put_domain("bad domain", vec![], None).is_err());
    }

    #[test]
    fn a_rollout_owns_its_stage_canary() {
        let mut s = setup();
        Arc::make_mut(s.apis.get_mut("orders").unwrap())
            .stages
            .get_mut("prod")
            .unwrap()
            .active_rollout = Some("r-1".into());
        for path in ["/canarySettings/percentTraffic", "/deploymentId"] {
            let e = s
                .patch_stage("orders", "prod", &[PatchOperation::replace(path, "d-one")], now())
                .unwrap_err();
            assert!(matches!(e, Error::Conflict(ref m) if m.contains(path) && m.contains("r-1")), "{e}");
        }
        // Not owned: variables, and the mirror outside a mirroring phase.
        s.patch_stage("orders", "prod", &[PatchOperation::replace("/variables/x", "1")], now())
            .unwrap();
        s.patch_stage("orders", "prod", &[PatchOperation::replace("/mirror/percentTraffic", "5")], now())
            .unwrap();
    }

    #[test]
    fn delete_refused_with_active_rollout() {
        let mut s = setup();
        Arc::make_mut(s.apis.get_mut("orders").unwrap())
            .stages
            .get_mut("prod")
            .unwrap()
            .active_rollout = Some("r-1".into());
        assert!(matches!(s.delete_api("orders"), Err(Error::Conflict(_))));
        assert!(matches!(s.delete_stage("orders", "prod"), Err(Error::Conflict(_))));
    }
}

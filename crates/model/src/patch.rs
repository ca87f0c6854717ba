//! API Gateway style patch operations on a stage (`PATCH /v1/apis/{api}/stages/{stage}`).
//!
//! Paths: `/deploymentId`, `/variables/{name}`, `/canarySettings`, `/canarySettings/percentTraffic`,
//! `/canarySettings/deploymentId`, `/canarySettings/useStageCache`,
//! `/canarySettings/stageVariableOverrides/{name}`, `/cache/enabled`, `/cache/ttlSeconds`, and beyond
//! API Gateway `/cache/maxEntries`, `/cache/maxBytes`, `/canaryRouting/header`, `/canaryRouting/cookie`,
//! `/canaryRouting/stickiness`, and mirroring: `/mirror` (an object, or remove), `/mirror/percentTraffic`,
//! `/mirror/methods` (comma-separated), `/mirror/maxBodyBytes`, `/mirror/maxInFlight`. Values are strings
//! as in AWS (JSON numbers and booleans are accepted too). Setting a canary field on a stage without a
//! canary creates one on the stage's own deployment at 0%; a mirror field on a stage without mirroring
//! creates it with the defaults at 0%.

use serde::{Deserialize, Serialize};

use crate::stage::{parse_percent, valid_token, validate_variable, CanaryRouting, CanarySettings, MirrorSettings, Stickiness};
use crate::{Error, Result, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    Add,
    Remove,
    Replace,
    Copy,
}

impl PatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOp::Add => "add",
            PatchOp::Remove => "remove",
            PatchOp::Replace => "replace",
            PatchOp::Copy => "copy",
        }
    }
}

/// One operation: `{op, path, value, from}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOperation {
    pub op: PatchOp,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl PatchOperation {
    pub fn replace(path: impl Into<String>, value: impl Into<String>) -> Self {
        PatchOperation {
            op: PatchOp::Replace,
            path: path.into(),
            value: Some(serde_json::Value::String(value.into())),
            from: None,
        }
    }

    pub fn remove(path: impl Into<String>) -> Self {
        PatchOperation {
            op: PatchOp::Remove,
            path: path.into(),
            value: None,
            from: None,
        }
    }
}

fn value_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_bool(field: &str, s: &str) -> Result<bool> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::invalid(field, s, "must be true or false")),
    }
}

fn parse_u32(field: &str, s: &str, lo: u32, hi: u32) -> Result<u32> {
    match s.trim().parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(Error::invalid(field, s, format!("must be a whole number between {lo} and {hi}"))),
    }
}

/// Reads the string value at `path` (for `copy`).
fn get(stage: &Stage, path: &str) -> Option<String> {
    let c = stage.canary_settings.as_ref();
    match path {
        "/deploymentId" => Some(stage.deployment_id.clone()),
        "/canarySettings/deploymentId" => c.map(|c| c.deployment_id.clone()),
        "/canarySettings/percentTraffic" => c.map(|c| c.percent_traffic.to_string()),
        "/canarySettings/useStageCache" => c.map(|c| c.use_stage_cache.to_string()),
        "/cache/enabled" => Some(stage.cache.enabled.to_string()),
        "/cache/ttlSeconds" => Some(stage.cache.ttl_seconds.to_string()),
        "/cache/maxEntries" => Some(stage.cache.max_entries.to_string()),
        "/cache/maxBytes" => Some(stage.cache.max_bytes.to_string()),
        "/mirror/percentTraffic" => stage.mirror.as_ref().map(|m| m.percent_traffic.to_string()),
        _ => {
            if let Some(name) = path.strip_prefix("/variables/") {
                stage.variables.get(name).cloned()
            } else if let Some(name) = path.strip_prefix("/canarySettings/stageVariableOverrides/") {
                c.and_then(|c| c.stage_variable_overrides.get(name).cloned())
            } else {
                None
            }
        }
    }
}

fn canary(stage: &mut Stage) -> &mut CanarySettings {
    let id = stage.deployment_id.clone();
    stage.canary_settings.get_or_insert_with(|| CanarySettings {
        deployment_id: id,
        percent_traffic: 0.0,
        stage_variable_overrides: Default::default(),
        use_stage_cache: false,
    })
}

fn mirror(stage: &mut Stage) -> &mut MirrorSettings {
    stage.mirror.get_or_insert_with(|| MirrorSettings::with_percent(0.0))
}

/// Applies one operation (number `index` in the list) to `stage`.
pub(crate) fn apply(stage: &mut Stage, op: &PatchOperation, index: usize, deployment_exists: impl Fn(&str) -> bool) -> Result<()> {
    let path = op.path.as_str();
    let path_field = format!("patchOperations[{index}].path");
    let value = match op.op {
        PatchOp::Remove => None,
        PatchOp::Copy => {
            let from = op
                .from
                .as_deref()
                .ok_or_else(|| Error::invalid(format!("patchOperations[{index}].from"), "", "copy needs from"))?;
            Some(get(stage, from).ok_or_else(|| Error::invalid(format!("patchOperations[{index}].from"), from, "has no value to copy"))?)
        }
        PatchOp::Add | PatchOp::Replace => {
            let field = format!("patchOperations[{index}].value");
            let v = op
                .value
                .as_ref()
                .ok_or_else(|| Error::invalid(&field, "", format!("{path} needs a value")))?;
            if path == "/canarySettings" || path == "/mirror" {
                None
            } else if path == "/canaryRouting" {
                Some(match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            } else {
                Some(value_string(v).ok_or_else(|| Error::invalid(&field, v.to_string(), "must be a string"))?)
            }
        }
    };
    let need = |v: &Option<String>| -> Result<String> {
        v.clone()
            .ok_or_else(|| Error::invalid(&path_field, path, "cannot be removed; use replace"))
    };
    match path {
        "/deploymentId" => {
            let id = need(&value)?;
            if !deployment_exists(&id) {
                return Err(Error::invalid(path, id, "no such deployment"));
            }
            if let Some(c) = &stage.canary_settings {
                if c.deployment_id != id {
                    return Err(Error::Conflict(format!(
                        "cannot set /deploymentId to {id} while stage {} has canary settings on {}; promote or remove the canary first",
                        stage.name, c.deployment_id
                    )));
                }
            }
            stage.deployment_id = id;
        }
        "/canarySettings" => match op.op {
            PatchOp::Remove => {
                stage.canary_settings = None;
            }
            PatchOp::Add | PatchOp::Replace => {
                let v = op.value.clone().expect("checked above");
                let v = match v {
                    serde_json::Value::String(s) if s.trim().is_empty() => serde_json::json!({}),
                    serde_json::Value::String(s) => serde_json::from_str(&s).map_err(|e| {
                        Error::invalid(
                            format!("patchOperations[{index}].value"),
                            s,
                            format!("must be canary settings JSON: {e}"),
                        )
                    })?,
                    other => other,
                };
                let input: crate::stage::CanaryInput = serde_json::from_value(v.clone())
                    .map_err(|e| Error::invalid(format!("patchOperations[{index}].value"), v.to_string(), e.to_string()))?;
                let id = input.deployment_id.unwrap_or_else(|| stage.deployment_id.clone());
                if !deployment_exists(&id) {
                    return Err(Error::invalid("/canarySettings/deploymentId", id, "no such deployment"));
                }
                crate::stage::validate_percent("/canarySettings/percentTraffic", input.percent_traffic)?;
                for (k, v) in &input.stage_variable_overrides {
                    validate_variable("/canarySettings/stageVariableOverrides", k, v)?;
                }
                stage.canary_settings = Some(CanarySettings {
                    deployment_id: id,
                    percent_traffic: input.percent_traffic,
                    stage_variable_overrides: input.stage_variable_overrides,
                    use_stage_cache: input.use_stage_cache,
                });
            }
            PatchOp::Copy => return Err(Error::invalid(&path_field, path, "copy to /canarySettings is not supported")),
        },
        "/canarySettings/percentTraffic" => {
            let p = parse_percent(path, &need(&value)?)?;
            canary(stage).percent_traffic = p;
        }
        "/canarySettings/deploymentId" => {
            let id = need(&value)?;
            if !deployment_exists(&id) {
                return Err(Error::invalid(path, id, "no such deployment"));
            }
            canary(stage).deployment_id = id;
        }
        "/canarySettings/useStageCache" => {
            let b = parse_bool(path, &need(&value)?)?;
            canary(stage).use_stage_cache = b;
        }
        "/mirror" => match op.op {
            PatchOp::Remove => {
                stage.mirror = None;
            }
            PatchOp::Add | PatchOp::Replace => {
                let field = format!("patchOperations[{index}].value");
                let v = match op.value.clone().expect("checked above") {
                    serde_json::Value::String(s) => {
                        serde_json::from_str(&s).map_err(|e| Error::invalid(&field, s, format!("must be mirror settings JSON: {e}")))?
                    }
                    other => other,
                };
                let mut m: MirrorSettings =
                    serde_json::from_value(v.clone()).map_err(|e| Error::invalid(&field, v.to_string(), e.to_string()))?;
                m.validate("/mirror")?;
                stage.mirror = Some(m);
            }
            PatchOp::Copy => return Err(Error::invalid(&path_field, path, "copy to /mirror is not supported")),
        },
        "/mirror/percentTraffic" => {
            let p = parse_percent(path, &need(&value)?)?;
            mirror(stage).percent_traffic = p;
        }
        "/mirror/methods" => {
            let v = need(&value)?;
            let mut m = mirror(stage).clone();
            m.methods = v.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            m.validate("/mirror")?;
            stage.mirror = Some(m);
        }
        "/mirror/maxBodyBytes" | "/mirror/maxInFlight" => {
            let v = need(&value)?;
            let n: u64 = v.trim().parse().map_err(|_| Error::invalid(path, &v, "must be a whole number"))?;
            let mut m = mirror(stage).clone();
            if path.ends_with("maxBodyBytes") {
                m.max_body_bytes = n;
            } else {
                m.max_in_flight = u32::try_from(n).unwrap_or(u32::MAX);
            }
            m.validate("/mirror")?;
            stage.mirror = Some(m);
        }
        "/cache/enabled" => stage.cache.enabled = parse_bool(path, &need(&value)?)?,
        "/cache/ttlSeconds" => stage.cache.ttl_seconds = parse_u32(path, &need(&value)?, 0, 3600)?,
        "/cache/maxEntries" => stage.cache.max_entries = parse_u32(path, &need(&value)?, 1, 1_000_000)?,
        "/cache/maxBytes" => {
            let v = need(&value)?;
            stage.cache.max_bytes = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (crate::stage::MIN_CACHE_BYTES..=crate::stage::MAX_CACHE_BYTES).contains(n))
                .ok_or_else(|| Error::invalid(path, &v, "must be a whole number between 65536 and 17179869184"))?;
        }
        "/canaryRouting/header" | "/canaryRouting/cookie" => {
            let v = match &value {
                Some(v) if !valid_token(v) => return Err(Error::invalid(path, v, "is not a valid header or cookie name")),
                v => v.clone(),
            };
            if path.ends_with("header") {
                stage.canary_routing.header = v.map(|h| h.to_ascii_lowercase());
            } else {
                stage.canary_routing.cookie = v;
            }
        }
        "/canaryRouting/salt" => {
            stage.canary_routing.salt = value.clone();
            stage.canary_routing.validate()?;
        }
        "/canaryRouting" => {
            let v = need(&value)?;
            let mut r: CanaryRouting =
                serde_json::from_str(&v).map_err(|e| Error::invalid(path, &v, format!("must be canary routing JSON: {e}")))?;
            r.validate()?;
            stage.canary_routing = r;
        }
        "/canaryRouting/stickiness" => {
            stage.canary_routing.stickiness = match &value {
                Some(v) => Stickiness::parse(path, v)?,
                None => Stickiness::None,
            }
        }
        _ => {
            if let Some(name) = path.strip_prefix("/variables/") {
                match value {
                    Some(v) => {
                        validate_variable("/variables", name, &v)?;
                        stage.variables.insert(name.to_string(), v);
                    }
                    None => {
                        stage
                            .variables
                            .remove(name)
                            .ok_or_else(|| Error::invalid(&path_field, path, "no such variable"))?;
                    }
                }
            } else if let Some(name) = path.strip_prefix("/canarySettings/stageVariableOverrides/") {
                match value {
                    Some(v) => {
                        validate_variable("/canarySettings/stageVariableOverrides", name, &v)?;
                        canary(stage).stage_variable_overrides.insert(name.to_string(), v);
                    }
                    None => {
                        let removed = stage.canary_settings.as_mut().and_then(|c| c.stage_variable_overrides.remove(name));
                        removed.ok_or_else(|| Error::invalid(&path_field, path, "no such override"))?;
                    }
                }
            } else {
                return Err(Error::invalid(&path_field, path, "is not a patchable path"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheSettings;

    fn stage() -> Stage {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap();
        Stage {
            api: "a".into(),
            name: "prod".into(),
            deployment_id: "d-one".into(),
            variables: [("backend".to_string(), "a:1".to_string())].into(),
            cache: CacheSettings::default(),
            canary_settings: None,
            canary_routing: CanaryRouting::default(),
            sticky_salt: None,
            mirror: None,
            active_rollout: None,
            created_at: t,
            updated_at: t,
            version: 1,
            cache_flushed_at: None,
        }
    }

    fn run(s: &mut Stage, op: PatchOperation) -> Result<()> {
        apply(s, &op, 0, |id| id == "d-one" || id == "d-two")
    }

    #[test]
    fn percent_creates_canary_on_stage_deployment() {
        let mut s = stage();
        run(&mut s, PatchOperation::replace("/canarySettings/percentTraffic", "0.1")).unwrap();
        let c = s.canary_settings.as_ref().unwrap();
        assert_eq!((c.deployment_id.as_str(), c.percent_traffic), ("d-one", 0.1));
    }

    #[test]
    fn bad_percent_values_name_the_field() {
        for v in ["-1", "100.5", "NaN", "abc"] {
            let mut s = stage();
            let e = run(&mut s, PatchOperation::replace("/canarySettings/percentTraffic", v))
                .unwrap_err()
                .to_string();
            assert!(e.contains("/canarySettings/percentTraffic") && e.contains(v), "{e}");
            assert_eq!(s, stage());
        }
        let mut s = stage();
        let op = PatchOperation {
            op: PatchOp::Replace,
            path: "/canarySettings/percentTraffic".into(),
            value: Some(serde_json::json!(12.5)),
            from: None,
        };
        run(&mut s, op).unwrap();
        assert_eq!(s.canary_settings.unwrap().percent_traffic, 12.5);
    }

    #[test]
    fn variables_and_overrides() {
        let mut s = stage();
        run(&mut s, PatchOperation::replace("/variables/version", "2")).unwrap();
        run(
            &mut s,
            PatchOperation::replace("/canarySettings/stageVariableOverrides/backend", "b:2"),
        )
        .unwrap();
        assert_eq!(s.canary_variables().unwrap()["backend"], "b:2");
        assert_eq!(s.variables["version"], "2");
        run(&mut s, PatchOperation::remove("/variables/version")).unwrap();
        assert!(!s.variables.contains_key("version"));
        assert!(run(&mut s, PatchOperation::remove("/variables/version")).is_err());
        run(&mut s, PatchOperation::remove("/canarySettings/stageVariableOverrides/backend")).unwrap();
        run(&mut s, PatchOperation::remove("/canarySettings")).unwrap();
        assert!(s.canary_settings.is_none());
    }

    #[test]
    fn unknown_deployment_and_path() {
        let mut s = stage();
        let e = run(&mut s, PatchOperation::replace("/canarySettings/deploymentId", "d-zzz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/canarySettings/deploymentId") && e.contains("d-zzz"), "{e}");
        let e = run(&mut s, PatchOperation::replace("/stageName", "x")).unwrap_err().to_string();
        assert!(e.contains("patchOperations[0].path") && e.contains("/stageName"), "{e}");
    }

    #[test]
    fn copy_and_cache_and_routing() {
        let mut s = stage();
        run(&mut s, PatchOperation::replace("/canarySettings/deploymentId", "d-two")).unwrap();
        let copy = PatchOperation {
            op: PatchOp::Copy,
            path: "/deploymentId".into(),
            value: None,
            from: Some("/canarySettings/deploymentId".into()),
        };
        run(&mut s, copy).unwrap();
        assert_eq!(s.deployment_id, "d-two");
        run(&mut s, PatchOperation::replace("/cache/enabled", "true")).unwrap();
        run(&mut s, PatchOperation::replace("/cache/ttlSeconds", "60")).unwrap();
        assert!(s.cache.enabled && s.cache.ttl_seconds == 60);
        assert!(run(&mut s, PatchOperation::replace("/cache/ttlSeconds", "4000")).is_err());
        assert!(run(&mut s, PatchOperation::replace("/cache/enabled", "yes")).is_err());
        run(&mut s, PatchOperation::replace("/canaryRouting/stickiness", "cookie:sid")).unwrap();
        assert_eq!(s.canary_routing.stickiness, Stickiness::Cookie("sid".into()));
        run(&mut s, PatchOperation::remove("/canaryRouting/header")).unwrap();
        assert_eq!(s.canary_routing.header, None);
    }

    #[test]
    fn mirror_paths() {
        let mut s = stage();
        run(&mut s, PatchOperation::replace("/mirror/percentTraffic", "25")).unwrap();
        let m = s.mirror.clone().unwrap();
        assert_eq!(m.percent_traffic, 25.0);
        assert_eq!(m.methods, ["GET", "HEAD", "OPTIONS"]);
        run(&mut s, PatchOperation::replace("/mirror/methods", "get, put")).unwrap();
        assert_eq!(s.mirror.as_ref().unwrap().methods, ["GET", "PUT"]);
        run(&mut s, PatchOperation::replace("/mirror/maxInFlight", "8")).unwrap();
        assert_eq!(s.mirror.as_ref().unwrap().max_in_flight, 8);
        for (path, bad, field) in [
            ("/mirror/percentTraffic", "101", "/mirror/percentTraffic"),
            ("/mirror/methods", "GET,B@D", "/mirror.methods[1]"),
            ("/mirror/maxBodyBytes", "99999999999", "/mirror.maxBodyBytes"),
            ("/mirror/maxInFlight", "0", "/mirror.maxInFlight"),
        ] {
            let before = s.clone();
            let e = run(&mut s, PatchOperation::replace(path, bad)).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
            assert_eq!(s, before);
        }
        let op = PatchOperation {
            op: PatchOp::Replace,
            path: "/mirror".into(),
            value: Some(serde_json::json!({"percentTraffic": 10, "methods": ["post"]})),
            from: None,
        };
        run(&mut s, op).unwrap();
        let m = s.mirror.clone().unwrap();
        assert_eq!(
            (m.percent_traffic, m.methods.clone(), m.max_in_flight),
            (10.0, vec!["POST".to_string()], 256)
        );
        let op = PatchOperation {
            op: PatchOp::Replace,
            path: "/mirror".into(),
            value: Some(serde_json::json!({"percentTraffic": 10, "bogus": 1})),
            from: None,
        };
        let e = run(&mut s, op).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        run(&mut s, PatchOperation::remove("/mirror")).unwrap();
        assert!(s.mirror.is_none());
    }

    #[test]
    fn canary_settings_as_json_value() {
        let mut s = stage();
        let op = PatchOperation {
            op: PatchOp::Add,
            path: "/canarySettings".into(),
            value: Some(serde_json::json!(r#"{"deploymentId":"d-two","percentTraffic":5}"#)),
            from: None,
        };
        run(&mut s, op).unwrap();
        assert_eq!(s.canary_settings.as_ref().unwrap().deployment_id, "d-two");
    }
}

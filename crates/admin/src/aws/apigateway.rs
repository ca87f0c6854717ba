//! API Gateway's REST API (v1, rest-json) over canarygate's APIs, deployments and stages. A REST API's
//! id is the API's name. Supported: `GetRestApis`, `GetRestApi`, `CreateDeployment` (with and without
//! `canarySettings`), `GetDeployments`, `GetDeployment`, `GetStages`, `GetStage` and `UpdateStage` with
//! the patch operations API Gateway accepts on a stage's deployment, variables and canary, translated
//! into the model's own patch operations (one change path with `/v1`).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use canarygate_model::state::ApiState;
use canarygate_model::{Deployment, PatchOp, PatchOperation, Stage, StageInput};
use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{bounded, AwsError};
use super::{Call, Protocol};

type Result<T> = std::result::Result<T, AwsError>;

/// API Gateway's list of the paths a stage's `replace` accepts, as its refusal names them.
const STAGE_PATHS: &str = "[/deploymentId, /description, /cacheClusterEnabled, /cacheClusterSize, /clientCertificateId, /accessLogSettings, /accessLogSettings/destinationArn, /accessLogSettings/format, /{resourcePath}/{httpMethod}/metrics/enabled, /{resourcePath}/{httpMethod}/logging/dataTrace, /{resourcePath}/{httpMethod}/logging/loglevel, /{resourcePath}/{httpMethod}/throttling/burstLimit/{resourcePath}/{httpMethod}/throttling/rateLimit/{resourcePath}/{httpMethod}/caching/ttlInSeconds, /{resourcePath}/{httpMethod}/caching/enabled, /{resourcePath}/{httpMethod}/caching/dataEncrypted, /{resourcePath}/{httpMethod}/caching/requireAuthorizationForCacheControl, /{resourcePath}/{httpMethod}/caching/unauthorizedCacheControlHeaderStrategy, /*/*/metrics/enabled, /*/*/logging/dataTrace, /*/*/logging/loglevel, /*/*/throttling/burstLimit /*/*/throttling/rateLimit /*/*/caching/ttlInSeconds, /*/*/caching/enabled, /*/*/caching/dataEncrypted, /*/*/caching/requireAuthorizationForCacheControl, /*/*/caching/unauthorizedCacheControlHeaderStrategy, /variables/{variable_name}, /tracingEnabled]";

fn epoch(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn rest_api(a: &ApiState) -> Value {
    json!({
        "id": a.api.name,
        "name": a.api.name,
        "createdDate": epoch(a.api.created_at),
        "apiKeySource": "HEADER",
        "endpointConfiguration": {"types": ["REGIONAL"]},
        "disableExecuteApiEndpoint": false,
    })
}

fn deployment(d: &Deployment) -> Value {
    let mut v = json!({"id": d.id, "createdDate": epoch(d.created_at)});
    if !d.description.is_empty() {
        v["description"] = json!(d.description);
    }
    v
}

/// A stage as API Gateway shapes it: `canarySettings` only while there is a canary, its
/// `stageVariableOverrides` and the stage's `variables` only when not empty.
pub(crate) fn stage(s: &Stage) -> Value {
    let mut v = Map::new();
    v.insert("deploymentId".into(), json!(s.deployment_id));
    v.insert("stageName".into(), json!(s.name));
    v.insert("cacheClusterEnabled".into(), json!(s.cache.enabled));
    v.insert(
        "cacheClusterStatus".into(),
        json!(if s.cache.enabled { "AVAILABLE" } else { "NOT_AVAILABLE" }),
    );
    v.insert("methodSettings".into(), json!({}));
    if !s.variables.is_empty() {
        v.insert("variables".into(), json!(s.variables));
    }
    v.insert("tracingEnabled".into(), json!(false));
    if let Some(c) = &s.canary_settings {
        let mut cs = Map::new();
        cs.insert("deploymentId".into(), json!(c.deployment_id));
        cs.insert("percentTraffic".into(), json!(c.percent_traffic));
        if !c.stage_variable_overrides.is_empty() {
            cs.insert("stageVariableOverrides".into(), json!(c.stage_variable_overrides));
        }
        cs.insert("useStageCache".into(), json!(c.use_stage_cache));
        v.insert("canarySettings".into(), Value::Object(cs));
    }
    v.insert("createdDate".into(), json!(epoch(s.created_at)));
    v.insert("lastUpdatedDate".into(), json!(epoch(s.updated_at)));
    Value::Object(v)
}

fn api_of<'s>(st: &'s canarygate_model::State, id: &str) -> Result<&'s ApiState> {
    st.api(id)
        .map_err(|_| AwsError::not_found(format!("Invalid API identifier specified 000000000000:{}", bounded(id, 200))))
}

fn stage_of<'a>(a: &'a ApiState, name: &str) -> Result<&'a Stage> {
    a.stages
        .get(name)
        .ok_or_else(|| AwsError::not_found("Invalid Stage identifier specified"))
}

fn json_body<'de, T: Deserialize<'de> + Default>(body: &'de [u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| AwsError::bad_request(format!("Invalid request body: {e}")))
}

/// Answers one REST call.
pub(crate) async fn handle(call: &Call<'_>) -> Result<Response> {
    let raw = call.parts.uri.path();
    let segments: Vec<String> = raw
        .trim_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = &call.parts.method;
    let st = call.state.store.current();
    match (method, seg.as_slice()) {
        (&Method::GET, ["restapis"]) => {
            let items: Vec<Value> = st.apis.values().map(|a| rest_api(a)).collect();
            Ok(Json(json!({ "item": items })).into_response())
        }
        (&Method::GET, ["restapis", id]) => Ok(Json(rest_api(api_of(&st, id)?)).into_response()),
        (&Method::GET, ["restapis", id, "deployments"]) => {
            let a = api_of(&st, id)?;
            let items: Vec<Value> = a.deployments.iter().rev().map(deployment).collect();
            Ok(Json(json!({ "item": items })).into_response())
        }
        (&Method::GET, ["restapis", id, "deployments", d]) => {
            let a = api_of(&st, id)?;
            let d = a
                .deployment(d)
                .ok_or_else(|| AwsError::not_found("Invalid Deployment identifier specified"))?;
            Ok(Json(deployment(d)).into_response())
        }
        (&Method::POST, ["restapis", id, "deployments"]) => {
            api_of(&st, id)?;
            let resource = format!("arn:aws:apigateway:{}::/restapis/{id}/deployments", call.config.region);
            call.need_write(Protocol::RestJson, "apigateway:POST", &resource)?;
            create_deployment(call, id.to_string()).await
        }
        (&Method::GET, ["restapis", id, "stages"]) => {
            let a = api_of(&st, id)?;
            let wanted = call
                .parts
                .uri
                .query()
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "deploymentId"))
                .map(|(_, v)| v.into_owned());
            let items: Vec<Value> = a
                .stages
                .values()
                .filter(|s| wanted.as_ref().is_none_or(|d| &s.deployment_id == d))
                .map(stage)
                .collect();
            Ok(Json(json!({ "item": items })).into_response())
        }
        (&Method::GET, ["restapis", id, "stages", name]) => Ok(Json(stage(stage_of(api_of(&st, id)?, name)?)).into_response()),
        (&Method::PATCH, ["restapis", id, "stages", name]) => {
            stage_of(api_of(&st, id)?, name)?;
            let resource = format!("arn:aws:apigateway:{}::/restapis/{id}/stages/{name}", call.config.region);
            call.need_write(Protocol::RestJson, "apigateway:PATCH", &resource)?;
            update_stage(call, id.to_string(), name.to_string()).await
        }
        _ => Err(AwsError::unknown_operation(
            Protocol::RestJson,
            &format!("{} {}", method, bounded(raw, 200)),
        )),
    }
}

/// `CreateDeployment`'s body (the fields canarygate reads; the rest are refused by name).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateDeploymentBody {
    stage_name: Option<String>,
    stage_description: Option<String>,
    #[serde(default)]
    description: String,
    cache_cluster_enabled: Option<bool>,
    cache_cluster_size: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    canary_settings: Option<DeploymentCanarySettings>,
    tracing_enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeploymentCanarySettings {
    #[serde(default)]
    percent_traffic: f64,
    #[serde(default)]
    stage_variable_overrides: BTreeMap<String, String>,
    #[serde(default)]
    use_stage_cache: bool,
}

async fn create_deployment(call: &Call<'_>, api: String) -> Result<Response> {
    let body: CreateDeploymentBody = json_body(call.body)?;
    for (field, set) in [
        ("stageDescription", body.stage_description.is_some()),
        ("cacheClusterSize", body.cache_cluster_size.is_some()),
        ("tracingEnabled", body.tracing_enabled == Some(true)),
    ] {
        if set {
            return Err(AwsError::bad_request(format!(
                "canarygate does not support {field} on CreateDeployment (see docs/aws.md)"
            )));
        }
    }
    let now = Utc::now();
    let out = call
        .state
        .store
        .mutate(move |st| {
            // AWS's refusals first, before anything changes.
            let exists = body.stage_name.as_ref().is_some_and(|s| st.api(&api).is_ok_and(|a| a.stages.contains_key(s)));
            if let Some(c) = &body.canary_settings {
                let Some(name) = body.stage_name.as_deref().filter(|s| !s.is_empty()) else {
                    return Ok(Err(AwsError::bad_request(
                        "Invalid deployment content specified.Non null and non empty stageName must be provided for canary deployment. Provided value is null",
                    )));
                };
                if !exists {
                    return Ok(Err(AwsError::bad_request(format!(
                        "Invalid deployment content specified.Stage {} must already be created before making a canary release deployment",
                        bounded(name, 200)
                    ))));
                }
                if !body.variables.is_empty() {
                    return Ok(Err(AwsError::bad_request(
                        "canarygate does not take variables with canarySettings on CreateDeployment: the canary's own values are its stageVariableOverrides (see docs/aws.md)",
                    )));
                }
                let _ = c;
            } else if let (Some(name), true) = (&body.stage_name, exists) {
                let s = st.stage(&api, name)?;
                if s.canary_settings.is_some() {
                    return Ok(Err(AwsError::bad_request(format!(
                        "Invalid deployment content specified.Stage {} has canary settings: deploy to it with canarySettings, or promote or remove its canary first",
                        bounded(name, 200)
                    ))));
                }
            }
            let d = st.create_deployment(&api, canarygate_store::new_deployment_id, body.description, now)?;
            if let Some(name) = &body.stage_name {
                if let Some(c) = &body.canary_settings {
                    let settings = json!({
                        "deploymentId": d.id,
                        "percentTraffic": c.percent_traffic,
                        "stageVariableOverrides": c.stage_variable_overrides,
                        "useStageCache": c.use_stage_cache,
                    });
                    let op = PatchOperation {
                        op: PatchOp::Replace,
                        path: "/canarySettings".into(),
                        value: Some(settings),
                        from: None,
                    };
                    st.patch_stage(&api, name, &[op], now)?;
                } else if exists {
                    let mut ops = vec![PatchOperation::replace("/deploymentId", d.id.clone())];
                    ops.extend(body.variables.iter().map(|(k, v)| PatchOperation::replace(format!("/variables/{k}"), v.clone())));
                    if let Some(on) = body.cache_cluster_enabled {
                        ops.push(PatchOperation::replace("/cache/enabled", on.to_string()));
                    }
                    st.patch_stage(&api, name, &ops, now)?;
                } else {
                    let mut input = StageInput {
                        deployment_id: Some(d.id.clone()),
                        variables: body.variables.clone(),
                        ..StageInput::default()
                    };
                    if let Some(on) = body.cache_cluster_enabled {
                        input.cache.enabled = on;
                    }
                    st.put_stage(&api, name, input, now)?;
                }
            }
            Ok(Ok(d))
        })
        .await
        .map_err(AwsError::from_store)??;
    Ok((StatusCode::CREATED, Json(deployment(&out))).into_response())
}

/// One operation of `UpdateStage`'s `patchOperations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsPatch {
    pub op: String,
    pub path: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateStageBody {
    #[serde(default)]
    patch_operations: Vec<AwsPatch>,
}

/// A path segment with JSON Pointer's escapes undone (`~1` is `/`, `~0` is `~`).
fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// Translates API Gateway's stage patch operations into the model's, on `stage` as it is now; an
/// operation API Gateway refuses is refused with its message.
pub fn translate(ops: &[AwsPatch], stage: &Stage) -> Result<Vec<PatchOperation>> {
    // The canary's overrides as the operations so far leave them (for a copy to /variables).
    let mut overrides: Option<BTreeMap<String, String>> = stage.canary_settings.as_ref().map(|c| c.stage_variable_overrides.clone());
    let mut out = Vec::with_capacity(ops.len());
    for p in ops {
        let path = p.path.as_str();
        let value = || {
            p.value
                .clone()
                .ok_or_else(|| AwsError::bad_request(format!("Invalid null value for path {}", bounded(path, 200))))
        };
        match p.op.as_str() {
            "replace" => {
                let model_path = match path {
                    "/deploymentId" | "/canarySettings/percentTraffic" | "/canarySettings/deploymentId" | "/canarySettings/useStageCache" => {
                        path.to_string()
                    }
                    "/cacheClusterEnabled" => "/cache/enabled".to_string(),
                    _ => {
                        if let Some(name) = path.strip_prefix("/canarySettings/stageVariableOverrides/") {
                            let name = unescape(name);
                            overrides.get_or_insert_with(BTreeMap::new).insert(name.clone(), value()?);
                            format!("/canarySettings/stageVariableOverrides/{name}")
                        } else if let Some(name) = path.strip_prefix("/variables/") {
                            format!("/variables/{}", unescape(name))
                        } else if matches!(
                            path,
                            "/description" | "/cacheClusterSize" | "/clientCertificateId" | "/tracingEnabled"
                        ) || path.starts_with("/accessLogSettings")
                        {
                            return Err(AwsError::bad_request(format!(
                                "canarygate does not support the stage path {path} (see docs/aws.md)"
                            )));
                        } else {
                            return Err(AwsError::bad_request(format!(
                                "Invalid method setting path: {}. Must be one of: {STAGE_PATHS}",
                                bounded(path, 200)
                            )));
                        }
                    }
                };
                if path.starts_with("/canarySettings/") && overrides.is_none() {
                    overrides = Some(BTreeMap::new());
                }
                out.push(PatchOperation::replace(model_path, value()?));
            }
            "remove" => {
                if path == "/canarySettings" {
                    overrides = None;
                    out.push(PatchOperation::remove("/canarySettings"));
                } else if let Some(name) = path.strip_prefix("/canarySettings/stageVariableOverrides/") {
                    let name = unescape(name);
                    if let Some(o) = overrides.as_mut() {
                        o.remove(&name);
                    }
                    out.push(PatchOperation::remove(format!("/canarySettings/stageVariableOverrides/{name}")));
                } else if let Some(name) = path.strip_prefix("/variables/") {
                    out.push(PatchOperation::remove(format!("/variables/{}", unescape(name))));
                } else {
                    return Err(AwsError::bad_request(format!(
                        "Cannot remove method setting {} because there is no method setting for this method ",
                        bounded(path.trim_start_matches('/'), 200)
                    )));
                }
            }
            "copy" => match (p.from.as_deref(), path) {
                (Some("/canarySettings/deploymentId"), "/deploymentId") => {
                    if overrides.is_none() {
                        return Err(no_canary_to_promote(&stage.name));
                    }
                    out.push(PatchOperation {
                        op: PatchOp::Copy,
                        path: "/deploymentId".into(),
                        value: None,
                        from: Some("/canarySettings/deploymentId".into()),
                    });
                }
                (Some("/canarySettings/stageVariableOverrides"), "/variables") => {
                    let Some(o) = &overrides else {
                        return Err(no_canary_to_promote(&stage.name));
                    };
                    out.extend(o.iter().map(|(k, v)| PatchOperation::replace(format!("/variables/{k}"), v.clone())));
                }
                _ => {
                    return Err(AwsError::bad_request(format!(
                        "Invalid copy operation with path: {} (from {}): a stage copies /canarySettings/deploymentId to /deploymentId and /canarySettings/stageVariableOverrides to /variables",
                        bounded(path, 200),
                        bounded(p.from.as_deref().unwrap_or("nothing"), 200)
                    )))
                }
            },
            "add" | "move" | "test" => {
                return Err(AwsError::bad_request(format!(
                    "Invalid {} operation with path: {}",
                    p.op,
                    bounded(path, 200)
                )))
            }
            other => {
                return Err(AwsError::bad_request(format!(
                    "Invalid patch operation specified: {}. Must be one of: [add, remove, replace, move, copy, test]",
                    bounded(other, 40)
                )))
            }
        }
    }
    Ok(out)
}

fn no_canary_to_promote(stage: &str) -> AwsError {
    AwsError::bad_request(format!(
        "Stage {} has no canarySettings: there is no canary to promote",
        bounded(stage, 200)
    ))
}

async fn update_stage(call: &Call<'_>, api: String, name: String) -> Result<Response> {
    let body: UpdateStageBody = json_body(call.body)?;
    let now = Utc::now();
    let out = call
        .state
        .store
        .mutate(move |st| {
            let ops = match translate(&body.patch_operations, st.stage(&api, &name)?) {
                Ok(ops) => ops,
                Err(e) => return Ok(Err(e)),
            };
            st.patch_stage(&api, &name, &ops, now).map(Ok)
        })
        .await
        .map_err(AwsError::from_store)??;
    Ok(Json(stage(&out)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: &str, path: &str, value: Option<&str>, from: Option<&str>) -> AwsPatch {
        AwsPatch {
            op: op.into(),
            path: path.into(),
            value: value.map(Into::into),
            from: from.map(Into::into),
        }
    }

    fn a_stage(canary: bool) -> Stage {
        let mut v = json!({
            "api": "orders", "name": "prod", "deploymentId": "d-aaaaa", "variables": {"backend": "v1"},
            "cache": {"enabled": false, "ttlSeconds": 300, "maxEntries": 1000, "maxBytes": 1000000},
            "canarySettings": null, "canaryRouting": {}, "activeRollout": null,
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
        });
        if canary {
            v["canarySettings"] = json!({"deploymentId": "d-bbbbb", "percentTraffic": 10.0, "stageVariableOverrides": {"backend": "v2", "a/b": "x"}, "useStageCache": false});
        }
        serde_json::from_value(v).expect("a stage")
    }

    #[test]
    fn promotion_copies_expand_to_the_overrides() {
        let ops = [
            op("replace", "/canarySettings/percentTraffic", Some("0.0"), None),
            op("copy", "/deploymentId", None, Some("/canarySettings/deploymentId")),
            op("copy", "/variables", None, Some("/canarySettings/stageVariableOverrides")),
        ];
        let out = translate(&ops, &a_stage(true)).unwrap();
        let paths: Vec<(PatchOp, &str)> = out.iter().map(|o| (o.op, o.path.as_str())).collect();
        assert_eq!(
            paths,
            [
                (PatchOp::Replace, "/canarySettings/percentTraffic"),
                (PatchOp::Copy, "/deploymentId"),
                (PatchOp::Replace, "/variables/a/b"),
                (PatchOp::Replace, "/variables/backend"),
            ]
        );
        assert!(translate(&ops[1..2], &a_stage(false)).is_err());
    }

    #[test]
    fn escapes_and_refusals_are_api_gateways() {
        let out = translate(
            &[op("replace", "/canarySettings/stageVariableOverrides/a~1b~0c", Some("1"), None)],
            &a_stage(false),
        )
        .unwrap();
        assert_eq!(out[0].path, "/canarySettings/stageVariableOverrides/a/b~c");
        let e = translate(&[op("add", "/canarySettings/deploymentId", Some("d"), None)], &a_stage(true)).unwrap_err();
        assert_eq!(e.message, "Invalid add operation with path: /canarySettings/deploymentId");
        let e = translate(&[op("remove", "/canarySettings/badPath", None, None)], &a_stage(true)).unwrap_err();
        assert_eq!(
            e.message,
            "Cannot remove method setting canarySettings/badPath because there is no method setting for this method "
        );
        let e = translate(&[op("replace", "/canarySettings/badPath", Some("x"), None)], &a_stage(true)).unwrap_err();
        assert!(e
            .message
            .starts_with("Invalid method setting path: /canarySettings/badPath. Must be one of: [/deploymentId, "));
        assert_eq!(e.code, "BadRequestException");
    }
}

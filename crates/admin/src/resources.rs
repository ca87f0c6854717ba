//! Handlers for APIs, deployments and stages, the stage cache, and `apply`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use canarygate_model::state::ApiState;
use canarygate_model::{Deployment, PatchOperation, Route, StageInput};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::AppState;

type Result<T> = std::result::Result<T, ApiError>;

fn items<T: serde::Serialize>(v: Vec<T>) -> Json<Value> {
    Json(json!({ "items": v }))
}

fn created_or_ok(created: bool, v: impl serde::Serialize) -> Response {
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(v)).into_response()
}

fn api_view(a: &ApiState) -> Value {
    json!({
        "name": a.api.name,
        "routes": a.api.routes,
        "createdAt": a.api.created_at,
        "updatedAt": a.api.updated_at,
        "latestDeploymentId": a.newest_deployment().map(|d| d.id.clone()),
        "deployments": a.deployments.len(),
        "stages": a.stages.keys().collect::<Vec<_>>(),
    })
}

fn deployment_summary(d: &Deployment) -> Value {
    json!({"id": d.id, "description": d.description, "createdAt": d.created_at})
}

pub async fn list_apis(State(s): State<AppState>) -> Json<Value> {
    let st = s.store.current();
    items(st.apis.values().map(|a| api_view(a)).collect())
}

pub async fn get_api(State(s): State<AppState>, Path(api): Path<String>) -> Result<Json<Value>> {
    Ok(Json(api_view(s.store.current().api(&api)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutApi {
    routes: Vec<Route>,
}

pub async fn put_api(State(s): State<AppState>, Path(api): Path<String>, JsonBody(body): JsonBody<PutApi>) -> Result<Response> {
    let name = api.clone();
    let created = s.store.mutate(move |st| st.put_api(&name, body.routes, Utc::now())).await?;
    Ok(created_or_ok(created, api_view(s.store.current().api(&api)?)))
}

pub async fn delete_api(State(s): State<AppState>, Path(api): Path<String>) -> Result<StatusCode> {
    s.store.mutate(move |st| st.delete_api(&api)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateDeployment {
    #[serde(default)]
    description: String,
}

pub async fn create_deployment(
    State(s): State<AppState>,
    Path(api): Path<String>,
    JsonBody(body): JsonBody<CreateDeployment>,
) -> Result<Response> {
    let d = s
        .store
        .mutate(move |st| st.create_deployment(&api, canarygate_store::new_deployment_id, body.description, Utc::now()))
        .await?;
    Ok((StatusCode::CREATED, Json(deployment_summary(&d))).into_response())
}

pub async fn list_deployments(State(s): State<AppState>, Path(api): Path<String>) -> Result<Json<Value>> {
    let st = s.store.current();
    Ok(items(st.api(&api)?.deployments.iter().rev().map(deployment_summary).collect()))
}

pub async fn get_deployment(State(s): State<AppState>, Path((api, id)): Path<(String, String)>) -> Result<Json<Deployment>> {
    let st = s.store.current();
    let d = st
        .api(&api)?
        .deployment(&id)
        .ok_or_else(|| ApiError::not_found(format!("deployment {id:?} of api {api:?} not found")))?;
    Ok(Json(d.clone()))
}

pub async fn list_stages(State(s): State<AppState>, Path(api): Path<String>) -> Result<Json<Value>> {
    let st = s.store.current();
    Ok(items(st.api(&api)?.stages.values().cloned().collect()))
}

pub async fn get_stage(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<Response> {
    Ok(Json(s.store.current().stage(&api, &stage)?.clone()).into_response())
}

pub async fn put_stage(
    State(s): State<AppState>,
    Path((api, stage)): Path<(String, String)>,
    JsonBody(input): JsonBody<StageInput>,
) -> Result<Response> {
    let existed = s.store.current().stage(&api, &stage).is_ok();
    let st = s.store.mutate(move |st| st.put_stage(&api, &stage, input, Utc::now())).await?;
    Ok(created_or_ok(!existed, st))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchBody {
    patch_operations: Vec<PatchOperation>,
}

pub async fn patch_stage(
    State(s): State<AppState>,
    Path((api, stage)): Path<(String, String)>,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Response> {
    let st = s
        .store
        .mutate(move |st| st.patch_stage(&api, &stage, &body.patch_operations, Utc::now()))
        .await?;
    Ok(Json(st).into_response())
}

pub async fn delete_stage(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<StatusCode> {
    s.store.mutate(move |st| st.delete_stage(&api, &stage)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn promote_canary(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<Response> {
    let st = s.store.mutate(move |st| st.promote_canary(&api, &stage, Utc::now())).await?;
    Ok(Json(st).into_response())
}

pub async fn remove_canary(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<Response> {
    let st = s.store.mutate(move |st| st.remove_canary(&api, &stage, Utc::now())).await?;
    Ok(Json(st).into_response())
}

pub async fn cache_stats(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<Json<Value>> {
    let st = s.store.current();
    let settings = st.stage(&api, &stage)?.cache.clone();
    let stats = match &s.caches {
        Some(c) => c.stats(&api, &stage).await,
        None => None,
    };
    Ok(Json(json!({
        "enabled": settings.enabled,
        "ttlSeconds": settings.ttl_seconds,
        "maxEntries": settings.max_entries,
        "maxBytes": settings.max_bytes,
        "entries": stats.map_or(0, |x| x.entries),
        "bytes": stats.map_or(0, |x| x.bytes),
    })))
}

pub async fn flush_cache(State(s): State<AppState>, Path((api, stage)): Path<(String, String)>) -> Result<StatusCode> {
    s.store.current().stage(&api, &stage)?;
    // Recorded as a change, so every replica empties its copy of the cache (this one at once).
    let (a, st) = (api.clone(), stage.clone());
    s.store
        .mutate(move |state| state.flush_stage_cache(&a, &st, chrono::Utc::now()))
        .await?;
    if let Some(c) = &s.caches {
        c.flush(&api, &stage).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct ApplyQuery {
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

/// `POST /v1/apply[?dryRun=true]` with a config file's resources (as JSON): makes the state match them
/// in one change — all or nothing, published once — or, with `dryRun`, only says what it would do.
/// Answers `{"dryRun", "changes": [...]}`.
pub async fn apply(
    State(s): State<AppState>,
    Query(q): Query<ApplyQuery>,
    JsonBody(desired): JsonBody<canarygate_model::config::Resources>,
) -> Result<Json<Value>> {
    use canarygate_model::config::{apply_all, plan, PlanMode};
    desired.check()?;
    let changes = if q.dry_run {
        plan(&s.store.current(), &desired, PlanMode::Converge)
            .iter()
            .map(ToString::to_string)
            .collect()
    } else {
        s.store
            .mutate(move |st| {
                let actions = plan(st, &desired, PlanMode::Converge);
                let mut new_id = canarygate_store::new_deployment_id;
                apply_all(st, actions, &mut new_id, Utc::now())
            })
            .await?
    };
    Ok(Json(json!({"dryRun": q.dry_run, "changes": changes})))
}

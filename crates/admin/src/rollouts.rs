//! Handlers for rollouts and hook callbacks, and a notification's deliveries.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use canarygate_model::rollout::{HookStatus, Phase, Rollout, RolloutRequest, RolloutStatus};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::AppState;

type Result<T> = std::result::Result<T, ApiError>;

fn new_rollout_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let s: String = (0..10).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    format!("r-{s}")
}

/// A rollout as the API shows it: the record plus its schedule and where it is in it.
pub fn rollout_view(r: &Rollout) -> Value {
    let schedule = r.deployment_config.schedule();
    let mut v = serde_json::to_value(r).unwrap_or_default();
    let (step, watched_ms) = match r.phase {
        Phase::Shifting { step, watched_ms } => (Some(step), watched_ms),
        _ => (None, 0),
    };
    let wait = step.and_then(|s| schedule.get(s)).map_or(0, |s| s.wait_seconds);
    // Time left: the rest of this step's wait (from the last checkpoint) plus the later steps' waits.
    let later: u64 = step.map_or(0, |s| schedule.iter().skip(s + 1).map(|x| x.wait_seconds).sum());
    // Unknown (null) while an approval lies ahead: it waits for a person, not a clock.
    let approval_ahead = schedule.iter().skip(step.unwrap_or(0)).any(|s| s.approval);
    // In the mirroring phase: the rest of it, then every step.
    let mirror_left = match (r.phase.clone(), r.mirror) {
        (Phase::Mirroring { watched_ms }, Some(m)) => {
            Some(m.seconds.saturating_sub(watched_ms / 1000) + schedule.iter().map(|x| x.wait_seconds).sum::<u64>())
        }
        _ => None,
    };
    let time_left =
        (r.status.is_active() && !approval_ahead).then(|| mirror_left.unwrap_or_else(|| wait.saturating_sub(watched_ms / 1000) + later));
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "steps".into(),
            json!(schedule
                .iter()
                .map(|s| json!({"weight": s.weight, "waitSeconds": s.wait_seconds, "approval": s.approval}))
                .collect::<Vec<_>>()),
        );
        // The analysis's working state is internal; the API shows its evidence and its history.
        o.remove("analysisState");
        if let Some(a) = &r.analysis_state {
            let mut e = serde_json::to_value(a.evidence(canarygate_metrics::bucket_bounds_us())).unwrap_or_default();
            if let Some(eo) = e.as_object_mut() {
                eo.insert("line".into(), json!(a.evidence(canarygate_metrics::bucket_bounds_us()).line()));
                eo.insert("history".into(), json!(a.history));
            }
            o.insert("evidence".into(), e);
        }
        o.insert("currentStep".into(), json!(step));
        o.insert("timeLeftSeconds".into(), json!(time_left));
    }
    v
}

pub async fn start(
    State(s): State<AppState>,
    Path((api, stage)): Path<(String, String)>,
    JsonBody(req): JsonBody<RolloutRequest>,
) -> Result<Response> {
    let r = s
        .store
        .mutate(move |st| st.create_rollout(&api, &stage, req, new_rollout_id(), Utc::now()))
        .await?;
    Ok((StatusCode::CREATED, Json(rollout_view(&r))).into_response())
}

pub async fn list(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>> {
    let status = match q.get("status") {
        None => None,
        Some(v) => Some(RolloutStatus::ALL.into_iter().find(|st| st.as_str() == v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid value {} for status: must be one of Created, InProgress, Succeeded, Failed, Stopped, RolledBack",
                crate::error::quote_value(v)
            ))
        })?),
    };
    let limit = match q.get("limit") {
        None => usize::MAX,
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid value {} for limit: must be a whole number from 1 to 1000",
                crate::error::quote_value(v)
            ))
        })?,
    };
    let st = s.store.current();
    let mut items: Vec<&Rollout> = st
        .rollouts
        .values()
        .filter(|r| q.get("api").is_none_or(|a| &r.api == a))
        .filter(|r| q.get("stage").is_none_or(|x| &r.stage == x))
        .filter(|r| status.is_none_or(|x| r.status == x))
        .collect();
    items.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok(Json(
        json!({"items": items.into_iter().take(limit).map(rollout_view).collect::<Vec<_>>()}),
    ))
}

pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(rollout_view(s.store.current().rollout(&id)?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    #[serde(default = "yes")]
    rollback: bool,
}

fn yes() -> bool {
    true
}

pub async fn stop(State(s): State<AppState>, Path(id): Path<String>, JsonBody(body): JsonBody<StopBody>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.request_stop(&id, body.rollback, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

/// `POST /v1/rollouts/{id}/approve`: approves the approval step the rollout waits at; the event names
/// the caller's token name.
pub async fn approve(State(s): State<AppState>, Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.approve_rollout(&id, &caller.name, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

/// `POST /v1/rollouts/{id}/pause`: holds the rollout at its step; the event names the caller.
pub async fn pause(State(s): State<AppState>, Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.pause_rollout(&id, &caller.name, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

/// `POST /v1/rollouts/{id}/resume`: the paused step's wait goes on.
pub async fn resume(State(s): State<AppState>, Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.resume_rollout(&id, &caller.name, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

/// `POST /v1/rollouts/{id}/continue`: ends the current step's wait now.
pub async fn continue_now(State(s): State<AppState>, Path(id): Path<String>, Extension(caller): Extension<Caller>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.continue_rollout(&id, &caller.name, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

pub async fn promote(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>> {
    let r = s.store.mutate(move |st| st.request_promote(&id, Utc::now())).await?;
    Ok(Json(rollout_view(&r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookReport {
    status: String,
}

pub async fn hook_callback(
    State(s): State<AppState>,
    Path((id, execution)): Path<(String, String)>,
    JsonBody(body): JsonBody<HookReport>,
) -> Result<Json<Value>> {
    let status = match body.status.as_str() {
        "Succeeded" => HookStatus::Succeeded,
        "Failed" => HookStatus::Failed,
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid value {other:?} for status: must be Succeeded or Failed"
            )))
        }
    };
    let msg = Some(format!("callback reported {}", body.status));
    let r = s.store.mutate(move |st| st.record_hook(&id, &execution, status, msg)).await?;
    Ok(Json(rollout_view(&r)))
}

/// The notification's deliveries, oldest first: each event's id, type, attempts, next attempt, when it
/// was delivered and the last error.
pub async fn list_deliveries(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    let st = s.store.current();
    if !st.notifications.contains_key(&name) {
        return Err(ApiError::not_found(format!("notification {name:?} not found")));
    }
    let mut items: Vec<_> = st.deliveries.values().filter(|d| d.notification == name).collect();
    items.sort_by_key(|d| (d.created_at, d.seq, d.sub));
    Ok(Json(json!({"items": items})))
}

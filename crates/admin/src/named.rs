//! The handlers of every declared kind of named record — `/v1/domains`, `/v1/deployment-configs`,
//! `/v1/alarms`, `/v1/notifications`, `/v1/analyses` — written once over the model's registry
//! ([`canarygate_model::state::kinds`]): `GET` the list (`{"items": [...]}`) or one, `PUT` one by name
//! (201 when created, 200 when replaced; the body is the kind's input, its name taken from the path),
//! `DELETE` one (204).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use canarygate_model::state::kinds::DECLARED;
use canarygate_model::state::DeclaredKind;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

type Kind = &'static dyn DeclaredKind;

/// The routes of every declared kind.
pub(crate) fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for &kind in DECLARED {
        let one = get(move |s, name| find(s, name, kind))
            .put(move |s, name, body| put(s, name, body, kind))
            .delete(move |s, name| delete(s, name, kind));
        r = r
            .route(&format!("/{}", kind.path()), get(move |s| list(s, kind)))
            .route(&format!("/{}/{{name}}", kind.path()), one);
    }
    r
}

async fn list(State(s): State<AppState>, kind: Kind) -> Json<Value> {
    Json(json!({ "items": kind.list(&s.store.current()) }))
}

async fn find(State(s): State<AppState>, Path(name): Path<String>, kind: Kind) -> Result<Json<Value>, ApiError> {
    kind.find(&s.store.current(), &name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("{} {name:?} not found", kind.noun())))
}

async fn put(State(s): State<AppState>, Path(name): Path<String>, body: Bytes, kind: Kind) -> Result<Response, ApiError> {
    let input: Value = crate::body::parse(&body)?;
    let (view, created) = s.store.mutate(move |st| kind.put(st, &name, &input)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

async fn delete(State(s): State<AppState>, Path(name): Path<String>, kind: Kind) -> Result<StatusCode, ApiError> {
    s.store.mutate(move |st| kind.delete(st, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

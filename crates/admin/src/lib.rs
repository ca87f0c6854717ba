//! The admin API of canarygate, on its own listener (never reachable through the gateway): APIs,
//! deployments, stages with patch/promote/remove, custom domains, rollouts, alarms, metric queries,
//! the dashboard (`/ui/`), Prometheus `/metrics`,
//! `/healthz` and `/readyz`, behind bearer-token auth. Handlers translate HTTP into model transitions run
//! by the [`Store`], which persists each change before the call returns. Beside it, on a listener of
//! their own, the AWS-compatible endpoints ([`aws`]) over the same store and model.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod aws;
mod body;
pub mod error;
pub mod listener;
mod metrics;
mod named;
mod resources;
pub mod rollouts;
pub mod ui;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;
use canarygate_metrics::Registry;
use canarygate_store::Store;

pub use auth::{Auth, Caller, Role, Token};
pub use error::ApiError;

/// Writes extra Prometheus lines (gauges owned by other parts of the process).
pub type PrometheusHook = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Entry count and weighted bytes of a stage cache.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheStats {
    pub entries: u64,
    pub bytes: u64,
}

/// The data plane's stage caches, as the admin API sees them (implemented by the binary over the
/// gateway, so this crate does not depend on the data plane).
pub trait StageCaches: Send + Sync {
    /// Drops every entry of the stage's cache; false when the stage has no cache enabled.
    fn flush<'a>(&'a self, api: &'a str, stage: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
    /// Current size of the stage's cache, when it has one.
    fn stats<'a>(&'a self, api: &'a str, stage: &'a str) -> Pin<Box<dyn Future<Output = Option<CacheStats>> + Send + 'a>>;
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
    pub prometheus_extra: Option<PrometheusHook>,
    pub caches: Option<Arc<dyn StageCaches>>,
    /// `GET /v1/cluster`: the replicas and the controller lease (the serving process knows how to ask).
    pub cluster: Option<ClusterHook>,
    /// Since when this replica has been unable to read the shared store (it serves its last state).
    pub stale_since: Arc<std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>>,
    /// With several replicas: `GET /v1/metrics` reads every replica's published seconds from here
    /// (its own connection) rather than this process's `metrics`.
    pub cluster_metrics: Option<Arc<std::sync::Mutex<canarygate_store::MetricsDb>>>,
}

/// Answers `GET /v1/cluster` (a JSON document) or says why it cannot.
pub type ClusterHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send>> + Send + Sync>;

/// The admin router.
pub fn router(state: AppState, auth: Auth) -> Router {
    let v1 = Router::new()
        .route("/cluster", get(metrics::cluster))
        .route("/apis", get(resources::list_apis))
        .route(
            "/apis/{api}",
            get(resources::get_api).put(resources::put_api).delete(resources::delete_api),
        )
        .route(
            "/apis/{api}/deployments",
            get(resources::list_deployments).post(resources::create_deployment),
        )
        .route("/apis/{api}/deployments/{id}", get(resources::get_deployment))
        .route("/apis/{api}/stages", get(resources::list_stages))
        .route(
            "/apis/{api}/stages/{stage}",
            get(resources::get_stage)
                .put(resources::put_stage)
                .patch(resources::patch_stage)
                .delete(resources::delete_stage),
        )
        .route("/apis/{api}/stages/{stage}/canary", axum::routing::delete(resources::remove_canary))
        .route(
            "/apis/{api}/stages/{stage}/cache",
            get(resources::cache_stats).delete(resources::flush_cache),
        )
        .route("/apis/{api}/stages/{stage}/canary/promote", post(resources::promote_canary))
        .route("/apis/{api}/stages/{stage}/rollouts", post(rollouts::start))
        .route("/rollouts", get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::get))
        .route("/rollouts/{id}/stop", post(rollouts::stop))
        .route("/rollouts/{id}/promote", post(rollouts::promote))
        .route("/rollouts/{id}/approve", post(rollouts::approve))
        .route("/rollouts/{id}/pause", post(rollouts::pause))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route("/rollouts/{id}/continue", post(rollouts::continue_now))
        .route("/rollouts/{id}/hooks/{execution}", put(rollouts::hook_callback))
        .route("/apply", post(resources::apply))
        .route("/notifications/{name}/deliveries", get(rollouts::list_deliveries))
        .route("/metrics", get(metrics::query))
        .merge(named::routes())
        .route("/auth", get(auth::whoami).with_state(auth.clone()))
        .fallback(|| async { ApiError::not_found("no such admin API resource") })
        .layer(axum::middleware::from_fn_with_state(auth.clone(), auth::middleware));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(metrics::prometheus))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(metrics::readyz))
        .merge(ui::router())
        .fallback(|| async { ApiError::not_found("no such admin resource") })
        .layer(axum::middleware::from_fn_with_state(auth, auth::host_middleware))
        .with_state(state)
}

//! `GET /v1/metrics` (CloudWatch-style datapoints), `/metrics` (Prometheus text) and `/readyz`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use canarygate_metrics::{ClusterSeconds, Family, Metric, MetricsView, SeriesKey, Statistic, Variant};
use canarygate_model::alarm::AlarmState;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::AppState;

fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    q.get(name)
        .map(String::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {name} is required")))
}

fn time(q: &HashMap<String, String>, name: &str, default: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {name}: must be an RFC 3339 time"))),
    }
}

pub async fn query(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let api = param(&q, "api")?;
    let stage = param(&q, "stage")?;
    let variant = q.get("variant").map_or(Ok(Variant::Production), |v| {
        Variant::parse(v)
            .ok_or_else(|| ApiError::bad_request(format!("invalid value {v:?} for variant: must be production, canary or mirror")))
    })?;
    let metric = Metric::parse("metric", param(&q, "metric")?)?;
    let statistic = Statistic::parse("statistic", q.get("statistic").map_or("Sum", String::as_str))?;
    let period: u64 = match q.get("periodSeconds") {
        None => 60,
        Some(v) => v
            .parse()
            .ok()
            .filter(|p| (1..=86_400).contains(p))
            .ok_or_else(|| ApiError::bad_request(format!("invalid value {v:?} for periodSeconds: must be 1 to 86400")))?,
    };
    let now = Utc::now();
    let end = time(&q, "end", now)?;
    let start = time(&q, "start", end - chrono::Duration::hours(1))?;
    if start >= end {
        return Err(ApiError::bad_request(format!(
            "invalid value {:?} for start: must be before end",
            q.get("start").cloned().unwrap_or_default()
        )));
    }
    let (start_s, end_s) = (start.timestamp().max(0) as u64, end.timestamp().max(0) as u64);
    // A datapoint ends at `end` inclusive of its last second.
    let end_s = end_s + u64::from(end.timestamp_subsec_nanos() > 0);
    if (end_s - start_s) / period > 10_000 {
        return Err(ApiError::bad_request(format!(
            "invalid value {period:?} for periodSeconds: the range would need more than 10000 datapoints"
        )));
    }
    let key = SeriesKey {
        api: api.to_string(),
        stage: stage.to_string(),
        variant,
    };
    let points = datapoints(&s, key, metric, statistic, period, start_s, end_s)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the cluster's metrics: {e}")))?;
    let datapoints: Vec<Value> = points
        .iter()
        .map(|p| {
            let ts = DateTime::<Utc>::from_timestamp(p.timestamp as i64, 0).unwrap_or_default();
            json!({"timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "value": p.value})
        })
        .collect();
    Ok(Json(json!({
        "metric": metric.as_str(),
        "statistic": statistic.to_string(),
        "unit": metric.unit(),
        "datapoints": datapoints,
    })))
}

/// The datapoints of one series over `[start_s, end_s)`: this process's own seconds, or with several
/// replicas the sum of what every replica published (this one's too). An error says why the shared
/// store could not be read.
pub(crate) async fn datapoints(
    s: &AppState,
    key: SeriesKey,
    metric: Metric,
    statistic: Statistic,
    period: u64,
    start_s: u64,
    end_s: u64,
) -> Result<Vec<canarygate_metrics::Datapoint>, String> {
    match &s.cluster_metrics {
        None => Ok(s.metrics.query(&key, metric, statistic, period, start_s, end_s)),
        Some(db) => {
            let (db, k) = (db.clone(), key.clone());
            let histograms = canarygate_metrics::needs_histograms(metric);
            let rows =
                tokio::task::spawn_blocking(move || db.lock().unwrap_or_else(|e| e.into_inner()).range(&k, start_s, end_s, histograms))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))?;
            let mut cluster = ClusterSeconds::new();
            for r in rows {
                cluster.put(&r.replica, r.key, r.second, r.counts);
            }
            Ok(cluster.query(&key, metric, statistic, period, start_s, end_s))
        }
    }
}

const CANARY_PERCENT: Family = Family::gauge("canarygate_canary_percent", "Share of a stage's requests sent to its canary.");
const ROLLOUTS: Family = Family::gauge("canarygate_rollouts", "Rollouts by status.");
const ALARM_STATE: Family = Family::gauge("canarygate_alarm_state", "1 for an alarm's current state, 0 for the others.");

pub async fn prometheus(State(s): State<AppState>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    s.metrics.render_prometheus(&mut out);
    CANARY_PERCENT.header(&mut out);
    let st = s.store.current();
    for a in st.apis.values() {
        for stage in a.stages.values() {
            let p = stage.canary_settings.as_ref().map_or(0.0, |c| c.percent_traffic);
            CANARY_PERCENT.sample(&mut out, &[("api", &a.api.name), ("stage", &stage.name)], p);
        }
    }
    ROLLOUTS.header(&mut out);
    for status in canarygate_model::rollout::RolloutStatus::ALL {
        let n = st.rollouts.values().filter(|r| r.status == status).count();
        ROLLOUTS.sample(&mut out, &[("status", status.as_str())], n);
    }
    ALARM_STATE.header(&mut out);
    for (name, a) in &st.alarms {
        for state in [AlarmState::Ok, AlarmState::Alarm, AlarmState::InsufficientData] {
            let v = u8::from(a.status.state == state);
            ALARM_STATE.sample(&mut out, &[("alarm", name), ("state", state.as_str())], v);
        }
    }
    if let Some(extra) = &s.prometheus_extra {
        extra(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

pub async fn cluster(State(s): State<AppState>) -> Response {
    let Some(hook) = &s.cluster else {
        return ApiError::new(StatusCode::NOT_FOUND, "no cluster view in this process").into_response();
    };
    match hook().await {
        Ok(mut v) => {
            let stale = *s.stale_since.lock().unwrap_or_else(|e| e.into_inner());
            v["staleSince"] = json!(stale);
            Json(v).into_response()
        }
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the cluster: {e}")).into_response(),
    }
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        // A replica cut off from the shared store stays ready (it serves its last state): emptying the
        // load balancer in a database outage would take the whole gateway down. It says so.
        let stale = *s.stale_since.lock().unwrap_or_else(|e| e.into_inner());
        match stale {
            Some(since) => {
                Json(json!({"status": "ready", "staleSince": since, "stale": "cannot read the shared store; serving the last state"}))
                    .into_response()
            }
            None => Json(json!({"status": "ready"})).into_response(),
        }
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not ready: the gateway listener is not up yet").into_response()
    }
}

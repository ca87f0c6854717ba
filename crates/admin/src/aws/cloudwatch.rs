//! CloudWatch's alarm operations over canarygate's alarms (`PutMetricAlarm`, `DescribeAlarms`,
//! `DeleteAlarms`) and its metric reads over the gateway's per-second series (`GetMetricStatistics`,
//! `GetMetricData`). An alarm made here is a canarygate alarm (same evaluation, same rollback) and one
//! made through `/v1` is described here. Metrics are API Gateway's: namespace `AWS/ApiGateway`,
//! dimensions `ApiName` and `Stage`, the canary's series under `Stage` = `{stage}/Canary` (as API
//! Gateway publishes a canary's metrics).

use axum::http::StatusCode;
use canarygate_metrics::SeriesKey;
use canarygate_model::alarm::Alarm;
use canarygate_model::state::AlarmEntry;
use canarygate_model::{Metric, Statistic, Variant};
use serde_json::{json, Map, Value};

use super::error::{bounded, AwsError};
use super::rpc::timestamp;
use super::{Call, Protocol};

type Result<T> = std::result::Result<T, AwsError>;

pub const NAMESPACE: &str = "AWS/ApiGateway";
const CANARY_SUFFIX: &str = "/Canary";

fn invalid(message: impl Into<String>) -> AwsError {
    AwsError::new(StatusCode::BAD_REQUEST, "InvalidParameterValue", message)
}

fn missing(field: &str) -> AwsError {
    AwsError::new(
        StatusCode::BAD_REQUEST,
        "MissingParameter",
        format!("The parameter {field} is required."),
    )
}

fn string<'a>(input: &'a Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(Value::as_str)
}

/// A number given as a number (JSON, CBOR) or a string (query).
fn number(input: &Value, field: &str) -> Result<Option<f64>> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| invalid(format!("The parameter {field} must be a number, not {}.", bounded(s, 40)))),
        Some(other) => Err(invalid(format!("The parameter {field} must be a number, not {other}."))),
    }
}

fn whole(input: &Value, field: &str) -> Result<Option<u64>> {
    match number(input, field)? {
        None => Ok(None),
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= 1e12 => Ok(Some(n as u64)),
        Some(n) => Err(invalid(format!("The parameter {field} must be a whole number, not {n}."))),
    }
}

fn strings(input: &Value, field: &str) -> Vec<String> {
    input
        .get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Answers one CloudWatch operation.
pub(crate) async fn handle(call: &Call<'_>, protocol: Protocol, operation: &str, input: Value) -> Result<Value> {
    match operation {
        "PutMetricAlarm" => {
            call.need_write(
                protocol,
                "cloudwatch:PutMetricAlarm",
                &alarm_arn(call, string(&input, "AlarmName").unwrap_or("")),
            )?;
            put_metric_alarm(call, &input).await
        }
        "DescribeAlarms" => describe_alarms(call, &input),
        "DeleteAlarms" => {
            call.need_write(protocol, "cloudwatch:DeleteAlarms", &alarm_arn(call, "*"))?;
            delete_alarms(call, &input).await
        }
        "SetAlarmState" => {
            call.need_write(
                protocol,
                "cloudwatch:SetAlarmState",
                &alarm_arn(call, string(&input, "AlarmName").unwrap_or("")),
            )?;
            set_alarm_state(call, &input).await
        }
        "GetMetricStatistics" => get_metric_statistics(call, &input).await,
        "GetMetricData" => get_metric_data(call, &input).await,
        other => Err(AwsError::unknown_operation(protocol, other)),
    }
}

fn alarm_arn(call: &Call<'_>, name: &str) -> String {
    format!("arn:aws:cloudwatch:{}:000000000000:alarm:{name}", call.config.region)
}

/// CloudWatch's `PutMetricAlarm` input as a canarygate alarm.
pub(crate) fn alarm_from(input: &Value) -> Result<Alarm> {
    let name = string(input, "AlarmName").ok_or_else(|| missing("AlarmName"))?;
    if input.get("Metrics").is_some_and(|m| !m.is_null()) {
        return Err(invalid(
            "canarygate does not support metric math alarms (Metrics); give MetricName, Namespace and Dimensions",
        ));
    }
    let (key, metric) = series(input)?;
    let statistic = match (string(input, "Statistic"), string(input, "ExtendedStatistic")) {
        (Some(s), None) | (None, Some(s)) => s.to_string(),
        (Some(_), Some(_)) => return Err(invalid("give Statistic or ExtendedStatistic, not both")),
        (None, None) => return Err(missing("Statistic")),
    };
    let evaluation_periods = whole(input, "EvaluationPeriods")?.ok_or_else(|| missing("EvaluationPeriods"))?;
    let alarm = json!({
        "name": name,
        "api": key.api,
        "stage": key.stage,
        "variant": key.variant,
        "metric": metric.as_str(),
        "statistic": statistic,
        "periodSeconds": whole(input, "Period")?.ok_or_else(|| missing("Period"))?,
        "evaluationPeriods": evaluation_periods,
        "datapointsToAlarm": whole(input, "DatapointsToAlarm")?.unwrap_or(evaluation_periods),
        "comparison": string(input, "ComparisonOperator").ok_or_else(|| missing("ComparisonOperator"))?,
        "threshold": number(input, "Threshold")?.ok_or_else(|| missing("Threshold"))?,
        "treatMissingData": string(input, "TreatMissingData").unwrap_or("missing"),
    });
    serde_json::from_value(alarm).map_err(|e| invalid(format!("{e}")))
}

async fn put_metric_alarm(call: &Call<'_>, input: &Value) -> Result<Value> {
    let alarm = alarm_from(input)?;
    let name = alarm.name.clone();
    call.state
        .store
        .mutate(move |st| st.put_alarm(&name, alarm))
        .await
        .map_err(|e| match AwsError::from_store(e) {
            e if e.status == StatusCode::BAD_REQUEST => invalid(e.message),
            e => e,
        })?;
    Ok(json!({}))
}

/// An alarm as CloudWatch describes it.
pub(crate) fn describe(entry: &AlarmEntry, region: &str) -> Value {
    let a = &entry.alarm;
    let mut v = Map::new();
    v.insert("AlarmName".into(), json!(a.name));
    v.insert(
        "AlarmArn".into(),
        json!(format!("arn:aws:cloudwatch:{region}:000000000000:alarm:{}", a.name)),
    );
    v.insert("ActionsEnabled".into(), json!(true));
    for k in ["OKActions", "AlarmActions", "InsufficientDataActions"] {
        v.insert(k.into(), json!([]));
    }
    let state = serde_json::to_value(entry.status.state).unwrap_or(Value::Null);
    v.insert("StateValue".into(), state);
    v.insert("StateReason".into(), json!(entry.status.reason));
    if let Some(t) = entry.status.updated_at {
        v.insert("StateUpdatedTimestamp".into(), timestamp(t));
        v.insert("StateTransitionedTimestamp".into(), timestamp(t));
    }
    if let (Some(m), Some(s)) = (a.metric, a.statistic) {
        v.insert("MetricName".into(), json!(m.as_str()));
        v.insert("Namespace".into(), json!(NAMESPACE));
        let stat = s.to_string();
        if stat.starts_with('p') {
            v.insert("ExtendedStatistic".into(), json!(stat));
        } else {
            v.insert("Statistic".into(), json!(stat));
        }
        let stage = match a.variant {
            Variant::Canary => format!("{}{CANARY_SUFFIX}", a.stage),
            _ => a.stage.clone(),
        };
        v.insert(
            "Dimensions".into(),
            json!([{"Name": "ApiName", "Value": a.api}, {"Name": "Stage", "Value": stage}]),
        );
    }
    v.insert("Period".into(), json!(a.period_seconds));
    v.insert("EvaluationPeriods".into(), json!(a.evaluation_periods));
    v.insert("DatapointsToAlarm".into(), json!(a.datapoints_to_alarm));
    v.insert("Threshold".into(), json!(a.threshold));
    v.insert(
        "ComparisonOperator".into(),
        serde_json::to_value(a.comparison).unwrap_or(Value::Null),
    );
    v.insert(
        "TreatMissingData".into(),
        serde_json::to_value(a.treat_missing_data).unwrap_or(Value::Null),
    );
    Value::Object(v)
}

fn describe_alarms(call: &Call<'_>, input: &Value) -> Result<Value> {
    let names = strings(input, "AlarmNames");
    let prefix = string(input, "AlarmNamePrefix");
    let state = string(input, "StateValue");
    if let Some(s) = state {
        if !matches!(s, "OK" | "ALARM" | "INSUFFICIENT_DATA") {
            return Err(invalid(format!(
                "The parameter StateValue must be OK, ALARM or INSUFFICIENT_DATA, not {}.",
                bounded(s, 40)
            )));
        }
    }
    let max = whole(input, "MaxRecords")?.unwrap_or(50);
    if !(1..=100).contains(&max) {
        return Err(invalid(format!("The parameter MaxRecords must be from 1 to 100, not {max}.")));
    }
    let after = string(input, "NextToken");
    let st = call.state.store.current();
    let mut alarms = Vec::new();
    let mut next = None;
    for (name, entry) in st.alarms.iter() {
        if after.is_some_and(|t| name.as_str() <= t)
            || (!names.is_empty() && !names.contains(name))
            || prefix.is_some_and(|p| !name.starts_with(p))
        {
            continue;
        }
        let d = describe(entry, &call.config.region);
        if state.is_some_and(|s| d["StateValue"] != s) {
            continue;
        }
        if alarms.len() as u64 == max {
            next = alarms.last().and_then(|a: &Value| a["AlarmName"].as_str().map(str::to_string));
            break;
        }
        alarms.push(d);
    }
    let mut out = json!({"MetricAlarms": alarms, "CompositeAlarms": []});
    if let Some(n) = next {
        out["NextToken"] = json!(n);
    }
    Ok(out)
}

async fn delete_alarms(call: &Call<'_>, input: &Value) -> Result<Value> {
    let names = strings(input, "AlarmNames");
    if names.is_empty() {
        return Err(missing("AlarmNames"));
    }
    let outcome = call
        .state
        .store
        .mutate(move |st| {
            if let Some(missing) = names.iter().find(|n| !st.alarms.contains_key(*n)) {
                return Ok(Err(missing.clone()));
            }
            for n in &names {
                st.delete_alarm(n)?;
            }
            Ok(Ok(()))
        })
        .await
        .map_err(AwsError::from_store)?;
    if let Err(name) = outcome {
        return Err(AwsError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("{} does not exist", bounded(&name, 255)),
        ));
    }
    Ok(json!({}))
}

async fn set_alarm_state(call: &Call<'_>, input: &Value) -> Result<Value> {
    let name = string(input, "AlarmName").ok_or_else(|| missing("AlarmName"))?.to_string();
    let state = match string(input, "StateValue").ok_or_else(|| missing("StateValue"))? {
        "OK" => canarygate_model::alarm::AlarmState::Ok,
        "ALARM" => canarygate_model::alarm::AlarmState::Alarm,
        "INSUFFICIENT_DATA" => canarygate_model::alarm::AlarmState::InsufficientData,
        other => {
            return Err(invalid(format!(
                "The parameter StateValue must be OK, ALARM or INSUFFICIENT_DATA, not {}.",
                bounded(other, 40)
            )))
        }
    };
    let reason = string(input, "StateReason").ok_or_else(|| missing("StateReason"))?.to_string();
    let now = chrono::Utc::now();
    let n = name.clone();
    call.state
        .store
        .mutate(move |st| st.set_alarm_state(&n, state, reason, now))
        .await
        .map_err(|e| match AwsError::from_store(e) {
            e if e.status == StatusCode::NOT_FOUND => AwsError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("Alarm {} does not exist", bounded(&name, 255)),
            ),
            e if e.status == StatusCode::BAD_REQUEST => invalid(e.message),
            e => e,
        })?;
    Ok(json!({}))
}

/// The series a metric and its dimensions name (the canary's as `Stage` = `{stage}/Canary`).
fn series(input: &Value) -> Result<(SeriesKey, Metric)> {
    let namespace = string(input, "Namespace").ok_or_else(|| missing("Namespace"))?;
    if namespace != NAMESPACE {
        return Err(invalid(format!(
            "canarygate serves the {NAMESPACE} namespace only, not {}",
            bounded(namespace, 100)
        )));
    }
    let metric = string(input, "MetricName").ok_or_else(|| missing("MetricName"))?;
    let metric = Metric::parse("MetricName", metric).map_err(|e| invalid(e.to_string()))?;
    let (mut api, mut stage) = (None, None);
    for d in input.get("Dimensions").and_then(Value::as_array).into_iter().flatten() {
        match (string(d, "Name"), string(d, "Value")) {
            (Some("ApiName"), Some(v)) => api = Some(v.to_string()),
            (Some("Stage"), Some(v)) => stage = Some(v.to_string()),
            (Some(other), _) => {
                return Err(invalid(format!(
                    "canarygate's {NAMESPACE} metrics have the dimensions ApiName and Stage, not {}",
                    bounded(other, 100)
                )))
            }
            _ => return Err(invalid("every dimension needs a Name and a Value")),
        }
    }
    let api = api.ok_or_else(|| invalid("the metric needs the dimension ApiName (the API)"))?;
    let stage = stage.ok_or_else(|| invalid("the metric needs the dimension Stage (the stage, or {stage}/Canary for its canary)"))?;
    let (stage, variant) = match stage.strip_suffix(CANARY_SUFFIX) {
        Some(s) => (s.to_string(), Variant::Canary),
        None => (stage, Variant::Production),
    };
    Ok((SeriesKey { api, stage, variant }, metric))
}

/// A time as the protocols send it: epoch seconds (JSON, CBOR) or ISO 8601 (query).
fn time(input: &Value, field: &str) -> Result<u64> {
    let t = match input.get(field) {
        Some(Value::Number(n)) => n.as_f64().map(|f| f.max(0.0) as u64),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp().max(0) as u64)
            .or_else(|| s.parse::<f64>().ok().map(|f| f.max(0.0) as u64)),
        None | Some(Value::Null) => return Err(missing(field)),
        _ => None,
    };
    t.ok_or_else(|| invalid(format!("The parameter {field} must be a time.")))
}

/// The range and period of a metric query, checked as CloudWatch does (at most 100,800 datapoints).
fn range(input: &Value, period: Option<u64>) -> Result<(u64, u64, u64)> {
    let (start, end) = (time(input, "StartTime")?, time(input, "EndTime")?);
    if start >= end {
        return Err(invalid("The parameter StartTime must be before EndTime."));
    }
    let period = period.ok_or_else(|| missing("Period"))?;
    if period == 0 || period > 86_400 {
        return Err(invalid(format!("The parameter Period must be from 1 to 86400, not {period}.")));
    }
    if (end - start) / period > 100_800 {
        return Err(invalid("The query would return more than 100,800 datapoints; use a longer Period."));
    }
    Ok((start, end, period))
}

async fn fetch(
    call: &Call<'_>,
    key: SeriesKey,
    metric: Metric,
    stat: Statistic,
    period: u64,
    start: u64,
    end: u64,
) -> Result<Vec<canarygate_metrics::Datapoint>> {
    crate::metrics::datapoints(call.state, key, metric, stat, period, start, end)
        .await
        .map_err(|e| {
            AwsError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("cannot read the cluster's metrics: {e}"),
            )
        })
}

async fn get_metric_statistics(call: &Call<'_>, input: &Value) -> Result<Value> {
    let (key, metric) = series(input)?;
    let (start, end, period) = range(input, whole(input, "Period")?)?;
    let stats = strings(input, "Statistics");
    let extended = strings(input, "ExtendedStatistics");
    if stats.is_empty() && extended.is_empty() {
        return Err(missing("Statistics"));
    }
    let mut by_time: std::collections::BTreeMap<u64, Map<String, Value>> = std::collections::BTreeMap::new();
    for name in stats.iter().chain(&extended) {
        let stat = Statistic::parse("Statistics", name).map_err(|e| invalid(e.to_string()))?;
        let is_extended = extended.contains(name);
        for p in fetch(call, key.clone(), metric, stat, period, start, end).await? {
            let point = by_time.entry(p.timestamp).or_default();
            if is_extended {
                point
                    .entry("ExtendedStatistics")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("an object")
                    .insert(name.clone(), json!(p.value));
            } else {
                point.insert(name.clone(), json!(p.value));
            }
        }
    }
    let unit = metric.unit();
    let datapoints: Vec<Value> = by_time
        .into_iter()
        .map(|(t, mut p)| {
            p.insert(
                "Timestamp".into(),
                timestamp(chrono::DateTime::from_timestamp(t as i64, 0).unwrap_or_default()),
            );
            p.insert("Unit".into(), json!(unit));
            Value::Object(p)
        })
        .collect();
    Ok(json!({"Label": metric.as_str(), "Datapoints": datapoints}))
}

async fn get_metric_data(call: &Call<'_>, input: &Value) -> Result<Value> {
    let queries = input
        .get("MetricDataQueries")
        .and_then(Value::as_array)
        .filter(|q| !q.is_empty())
        .ok_or_else(|| missing("MetricDataQueries"))?;
    if queries.len() > 500 {
        return Err(invalid("At most 500 MetricDataQueries are allowed."));
    }
    let descending = string(input, "ScanBy") != Some("TimestampAscending");
    let mut results = Vec::new();
    for q in queries {
        let id = string(q, "Id").ok_or_else(|| missing("MetricDataQueries.member.Id"))?;
        if q.get("Expression").is_some_and(|e| !e.is_null()) {
            return Err(invalid(format!(
                "canarygate does not evaluate metric math (query {})",
                bounded(id, 100)
            )));
        }
        let stat_spec = q.get("MetricStat").ok_or_else(|| missing("MetricDataQueries.member.MetricStat"))?;
        let metric_spec = stat_spec.get("Metric").ok_or_else(|| missing("MetricStat.Metric"))?;
        let (key, metric) = series(metric_spec)?;
        let (start, end, period) = range(input, whole(stat_spec, "Period")?)?;
        let stat_name = string(stat_spec, "Stat").ok_or_else(|| missing("MetricStat.Stat"))?;
        let stat = Statistic::parse("Stat", stat_name).map_err(|e| invalid(e.to_string()))?;
        let mut points = fetch(call, key, metric, stat, period, start, end).await?;
        if descending {
            points.reverse();
        }
        if q.get("ReturnData").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        results.push(json!({
            "Id": id,
            "Label": string(q, "Label").unwrap_or(metric.as_str()),
            "Timestamps": points.iter().map(|p| timestamp(chrono::DateTime::from_timestamp(p.timestamp as i64, 0).unwrap_or_default())).collect::<Vec<_>>(),
            "Values": points.iter().map(|p| p.value).collect::<Vec<_>>(),
            "StatusCode": "Complete",
        }));
    }
    Ok(json!({"MetricDataResults": results, "Messages": []}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_gateway_alarm_becomes_a_canarygate_alarm() {
        let input = json!({"AlarmName": "canary-5xx", "Namespace": "AWS/ApiGateway", "MetricName": "5XXError", "Statistic": "Average",
            "Dimensions": [{"Name": "ApiName", "Value": "orders"}, {"Name": "Stage", "Value": "prod/Canary"}],
            "Period": "10", "EvaluationPeriods": 3, "DatapointsToAlarm": "2", "Threshold": 0.05, "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching"});
        let a = alarm_from(&input).unwrap();
        assert_eq!((a.api.as_str(), a.stage.as_str(), a.variant), ("orders", "prod", Variant::Canary));
        assert_eq!((a.period_seconds, a.evaluation_periods, a.datapoints_to_alarm), (10, 3, 2));
        let mut other = input.clone();
        other["Namespace"] = json!("AWS/EC2");
        assert!(alarm_from(&other).unwrap_err().message.contains("AWS/ApiGateway"));
        let mut no_dim = input.clone();
        no_dim["Dimensions"] = json!([{"Name": "ApiName", "Value": "orders"}]);
        assert!(alarm_from(&no_dim).unwrap_err().message.contains("Stage"));
        let mut p99 = input;
        p99.as_object_mut().unwrap().remove("Statistic");
        p99["ExtendedStatistic"] = json!("p99");
        assert!(alarm_from(&p99).is_ok());
    }
}

//! Alarms: threshold rules over a stage's per-variant metrics — or over a PromQL query's value
//! ([`PrometheusQuery`]) — evaluated as CloudWatch evaluates metric alarms (the last `evaluationPeriods`
//! periods, ALARM when `datapointsToAlarm` of them breach, `treatMissingData` for periods without data).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Metric, Result, Statistic, Variant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    GreaterThanThreshold,
    GreaterThanOrEqualToThreshold,
    LessThanThreshold,
    LessThanOrEqualToThreshold,
}

impl Comparison {
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThanThreshold => value > threshold,
            Comparison::GreaterThanOrEqualToThreshold => value >= threshold,
            Comparison::LessThanThreshold => value < threshold,
            Comparison::LessThanOrEqualToThreshold => value <= threshold,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => "greater than",
            Comparison::GreaterThanOrEqualToThreshold => "greater than or equal to",
            Comparison::LessThanThreshold => "less than",
            Comparison::LessThanOrEqualToThreshold => "less than or equal to",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum TreatMissingData {
    /// Missing periods are left out; all missing is INSUFFICIENT_DATA.
    #[default]
    Missing,
    /// Missing periods count as within the threshold.
    NotBreaching,
    /// Missing periods count as breaching.
    Breaching,
    /// Missing periods are left out; all missing keeps the current state.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AlarmState {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "ALARM")]
    Alarm,
    #[default]
    #[serde(rename = "INSUFFICIENT_DATA")]
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// An alarm's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alarm {
    #[serde(default)]
    pub name: String,
    pub api: String,
    pub stage: String,
    pub variant: Variant,
    /// The gateway's own metric (with `statistic`), or none for a `prometheus` alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Statistic>,
    /// A PromQL instant query evaluated each period instead of the gateway's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
    pub period_seconds: u64,
    pub evaluation_periods: u32,
    pub datapoints_to_alarm: u32,
    pub comparison: Comparison,
    pub threshold: f64,
    #[serde(default)]
    pub treat_missing_data: TreatMissingData,
    /// Evaluated and recorded, never acted on: a rollout watching it notes when it would have rolled
    /// back, and goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Alarm {
    pub fn validate(&self) -> Result<()> {
        crate::check_dotted_name("name", &self.name, 255)?;
        crate::validate_api_name(&self.api).map_err(|_| Error::invalid("api", &self.api, "must match [a-z0-9-]{1,64}"))?;
        crate::validate_stage_name(&self.stage).map_err(|_| Error::invalid("stage", &self.stage, "must match [A-Za-z0-9_-]{1,128}"))?;
        match (&self.prometheus, self.metric, self.statistic) {
            (Some(q), None, None) => q.validate()?,
            (Some(_), _, _) => {
                return Err(Error::invalid(
                    if self.metric.is_some() { "metric" } else { "statistic" },
                    self.metric.map_or_else(
                        || self.statistic.map(|s| s.to_string()).unwrap_or_default(),
                        |m| m.as_str().to_string(),
                    ),
                    "a prometheus alarm takes its value from its query: leave metric and statistic out",
                ))
            }
            (None, None, _) => return Err(Error::invalid("metric", "", "name a metric (or give a prometheus query)")),
            (None, _, None) => return Err(Error::invalid("statistic", "", "name a statistic (or give a prometheus query)")),
            (None, Some(_), Some(_)) => {}
        }
        if !(1..=86_400).contains(&self.period_seconds) {
            return Err(Error::invalid(
                "periodSeconds",
                self.period_seconds.to_string(),
                "must be 1 to 86400",
            ));
        }
        if !(1..=100).contains(&self.evaluation_periods) {
            return Err(Error::invalid(
                "evaluationPeriods",
                self.evaluation_periods.to_string(),
                "must be 1 to 100",
            ));
        }
        if self.datapoints_to_alarm < 1 || self.datapoints_to_alarm > self.evaluation_periods {
            return Err(Error::invalid(
                "datapointsToAlarm",
                self.datapoints_to_alarm.to_string(),
                "must be 1 to evaluationPeriods",
            ));
        }
        if !self.threshold.is_finite() {
            return Err(Error::invalid("threshold", self.threshold.to_string(), "must be a finite number"));
        }
        if self.period_seconds * u64::from(self.evaluation_periods) > 3 * 3600 {
            return Err(Error::invalid(
                "evaluationPeriods",
                self.evaluation_periods.to_string(),
                "periodSeconds x evaluationPeriods must be at most 3 hours (the metrics kept)",
            ));
        }
        Ok(())
    }

    /// The start of the newest complete period at `now` (unix seconds), and the first period evaluated.
    pub fn window(&self, now: u64) -> (u64, u64) {
        let p = self.period_seconds;
        let newest = (now / p) * p - p;
        let first = newest.saturating_sub(p * u64::from(self.evaluation_periods - 1));
        (first, newest)
    }
}

/// `prometheus: {url, query}` on an alarm: a PromQL instant query whose single value is the datapoint
/// of each period. `${api}`, `${stage}`, `${variant}` and `${stageVariables.NAME}` (the variant's
/// variables, with the canary's overrides for the canary) are replaced, escaped as a PromQL string's
/// content, so one definition serves every stage and rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusQuery {
    /// The Prometheus server's base URL (`http://host:9090`); `/api/v1/query` is appended.
    pub url: String,
    pub query: String,
}

impl PrometheusQuery {
    pub fn validate(&self) -> Result<()> {
        let url = self.url.trim_end_matches('/');
        let scheme_ok = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if !scheme_ok.is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)) || url.len() > 2048 {
            return Err(Error::invalid("prometheus.url", &self.url, "must be an http:// or https:// URL"));
        }
        if self.query.trim().is_empty() || self.query.len() > 8192 {
            return Err(Error::invalid(
                "prometheus.query",
                &self.query,
                "must be a PromQL expression of 1 to 8192 bytes",
            ));
        }
        let mut rest = self.query.as_str();
        while let Some(i) = rest.find("${") {
            let Some(end) = rest[i..].find('}') else {
                return Err(Error::invalid("prometheus.query", &self.query, "an unclosed ${"));
            };
            let name = &rest[i + 2..i + end];
            let known = matches!(name, "api" | "stage" | "variant") || name.strip_prefix("stageVariables.").is_some_and(|v| !v.is_empty());
            if !known {
                return Err(Error::invalid(
                    "prometheus.query",
                    format!("${{{name}}}"),
                    "unknown placeholder: ${api}, ${stage}, ${variant} or ${stageVariables.NAME}",
                ));
            }
            rest = &rest[i + end + 1..];
        }
        Ok(())
    }

    /// The query with its placeholders replaced; each value escaped as the content of a PromQL
    /// double-quoted string. A stage variable that is not set is an error naming it.
    pub fn render(
        &self,
        api: &str,
        stage: &str,
        variant: Variant,
        variables: &std::collections::BTreeMap<String, String>,
    ) -> std::result::Result<String, String> {
        let mut out = String::with_capacity(self.query.len());
        let mut rest = self.query.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').ok_or("an unclosed ${")?;
            let name = &rest[i + 2..i + end];
            let value = match name {
                "api" => api,
                "stage" => stage,
                "variant" => variant.as_str(),
                _ => match name.strip_prefix("stageVariables.") {
                    Some(v) => variables
                        .get(v)
                        .map(String::as_str)
                        .ok_or_else(|| format!("stage variable {v:?} is not set"))?,
                    None => return Err(format!("unknown placeholder ${{{name}}}")),
                },
            };
            out.push_str(&escape_promql(value));
            rest = &rest[i + end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Escapes a value for the inside of a PromQL double-quoted string (Go's escaping: backslash, quote,
/// newline, carriage return, tab).
pub fn escape_promql(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// One datapoint of an evaluation: the period's start and its value, or none when it had no samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvaluatedPoint {
    pub timestamp: u64,
    pub value: Option<f64>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub state: AlarmState,
    pub reason: String,
    pub datapoints: Vec<EvaluatedPoint>,
    pub breaching: u32,
}

fn time(ts: u64) -> String {
    DateTime::<Utc>::from_timestamp(ts as i64, 0).map_or_else(|| ts.to_string(), |t| t.format("%H:%M:%S").to_string())
}

/// Evaluates `points` (the last `evaluationPeriods` periods, oldest first) from `current`.
pub fn evaluate(alarm: &Alarm, points: &[EvaluatedPoint], current: AlarmState) -> Evaluation {
    let m = alarm.datapoints_to_alarm;
    let mut breaching = 0u32;
    let mut counted = 0u32;
    let mut shown = Vec::new();
    for p in points {
        let b = match (p.value, alarm.treat_missing_data) {
            (Some(v), _) => Some(alarm.comparison.breaches(v, alarm.threshold)),
            (None, TreatMissingData::Breaching) => Some(true),
            (None, TreatMissingData::NotBreaching) => Some(false),
            (None, _) => None,
        };
        if let Some(b) = b {
            counted += 1;
            breaching += u32::from(b);
        }
        if let Some(v) = p.value {
            shown.push(format!("{v} ({})", time(p.timestamp)));
        }
    }
    let list = format!("[{}]", shown.join(", "));
    let (state, reason) = if breaching >= m {
        (
            AlarmState::Alarm,
            format!(
                "Threshold Crossed: {breaching} out of the last {} datapoints {list} were {} the threshold ({}) (minimum {m} datapoints for OK -> ALARM transition).",
                points.len(),
                alarm.comparison.words(),
                alarm.threshold
            ),
        )
    } else if counted == 0 {
        match alarm.treat_missing_data {
            TreatMissingData::Ignore => (
                current,
                "No datapoints in the evaluation periods; state kept (treatMissingData: ignore).".to_string(),
            ),
            _ => (
                AlarmState::InsufficientData,
                format!("Insufficient Data: no datapoints in the last {} periods.", points.len()),
            ),
        }
    } else {
        (
            AlarmState::Ok,
            format!(
                "Threshold Crossed: {breaching} out of the last {} datapoints {list} were {} the threshold ({}) (minimum {m} datapoints for ALARM); OK.",
                points.len(),
                alarm.comparison.words(),
                alarm.threshold
            ),
        )
    };
    Evaluation {
        state,
        reason,
        datapoints: points.to_vec(),
        breaching,
    }
}

/// A state change, kept in an alarm's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    pub time: DateTime<Utc>,
    pub from: AlarmState,
    pub to: AlarmState,
    pub reason: String,
}

/// An alarm's current state, reason and history (newest last, at most [`HISTORY`] kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AlarmStatus {
    pub state: AlarmState,
    pub reason: String,
    pub datapoints: Vec<EvaluatedPoint>,
    pub updated_at: Option<DateTime<Utc>>,
    pub history: Vec<StateChange>,
    /// A state set by hand (CloudWatch's `SetAlarmState`) is held until then: evaluations do not
    /// replace it, and rollouts watching the alarm see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_until: Option<DateTime<Utc>>,
}

pub const HISTORY: usize = 100;

impl AlarmStatus {
    /// Records an evaluation; returns true when the state changed.
    pub fn record(&mut self, e: Evaluation, now: DateTime<Utc>) -> bool {
        let changed = e.state != self.state;
        if changed {
            self.history.push(StateChange {
                time: now,
                from: self.state,
                to: e.state,
                reason: e.reason.clone(),
            });
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
            self.updated_at = Some(now);
        }
        self.state = e.state;
        self.reason = e.reason;
        self.datapoints = e.datapoints;
        self.set_until = None;
        changed
    }

    /// Whether a state set by hand still holds at `now`.
    pub fn held(&self, now: DateTime<Utc>) -> bool {
        self.set_until.is_some_and(|t| now < t)
    }

    /// The held state as an evaluation (what a rollout watching the alarm sees while it holds).
    pub fn as_evaluation(&self) -> Evaluation {
        Evaluation {
            state: self.state,
            reason: self.reason.clone(),
            datapoints: self.datapoints.clone(),
            breaching: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_queries_are_validated_and_rendered_escaped() {
        let q = PrometheusQuery {
            url: "http://127.0.0.1:9091".into(),
            query: r#"sum(rate(app_errors_total{job="${api}",stage="${stage}",v="${variant}",backend="${stageVariables.backend}"}[1m]))"#
                .into(),
        };
        q.validate().unwrap();
        let vars = [("backend".to_string(), "a\"b\\c\nd".to_string())].into();
        let r = q.render("orders", "prod", Variant::Canary, &vars).unwrap();
        assert_eq!(
            r,
            r#"sum(rate(app_errors_total{job="orders",stage="prod",v="canary",backend="a\"b\\c\nd"}[1m]))"#
        );
        // A value cannot close the string and add a matcher of its own.
        let evil = [("backend".to_string(), r#"x"} or vector(1) #"#.to_string())].into();
        let r = q.render("orders", "prod", Variant::Canary, &evil).unwrap();
        assert!(r.contains(r#"backend="x\"} or vector(1) #""#), "{r}");
        assert!(q
            .render("orders", "prod", Variant::Canary, &Default::default())
            .unwrap_err()
            .contains("backend"));
        for (query, bad) in [("up{x=\"${nope}\"}", "${nope}"), ("up{x=\"${stage", "unclosed"), ("  ", "PromQL")] {
            let q = PrometheusQuery {
                url: "http://p:9090".into(),
                query: query.into(),
            };
            let e = q.validate().unwrap_err().to_string();
            assert!(e.contains("prometheus.query") && e.contains(bad), "{e}");
        }
        let e = PrometheusQuery {
            url: "ftp://p".into(),
            query: "up".into(),
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("prometheus.url"), "{e}");
    }

    fn alarm(n: u32, m: u32, cmp: Comparison, missing: TreatMissingData) -> Alarm {
        Alarm {
            name: "a".into(),
            api: "orders".into(),
            stage: "prod".into(),
            variant: Variant::Canary,
            metric: Some(Metric::Error5xx),
            statistic: Some(Statistic::Average),
            prometheus: None,
            period_seconds: 1,
            evaluation_periods: n,
            datapoints_to_alarm: m,
            comparison: cmp,
            threshold: 0.05,
            treat_missing_data: missing,
            dry_run: false,
        }
    }

    fn pts(v: &[Option<f64>]) -> Vec<EvaluatedPoint> {
        v.iter()
            .enumerate()
            .map(|(i, v)| EvaluatedPoint {
                timestamp: 1_800_000_000 + i as u64,
                value: *v,
            })
            .collect()
    }

    use AlarmState::{Alarm as Alarming, InsufficientData, Ok};
    use TreatMissingData as T;

    #[test]
    fn m_of_n() {
        let a = alarm(3, 2, Comparison::GreaterThanThreshold, T::Missing);
        assert_eq!(evaluate(&a, &pts(&[Some(0.3), Some(0.0), Some(0.2)]), Ok).state, Alarming);
        assert_eq!(evaluate(&a, &pts(&[Some(0.3), Some(0.0), Some(0.0)]), Ok).state, Ok);
        let e = evaluate(&a, &pts(&[Some(0.3), Some(0.2), Some(0.0)]), Ok);
        assert_eq!(e.breaching, 2);
        assert!(
            e.reason.contains("0.3") && e.reason.contains("0.05") && e.reason.contains("greater than"),
            "{}",
            e.reason
        );
        // Exactly at the threshold: only the OrEqual comparisons breach.
        let eq = pts(&[Some(0.05), Some(0.05), Some(0.05)]);
        assert_eq!(evaluate(&a, &eq, Ok).state, Ok);
        assert_eq!(
            evaluate(&alarm(3, 2, Comparison::GreaterThanOrEqualToThreshold, T::Missing), &eq, Ok).state,
            Alarming
        );
        assert_eq!(evaluate(&alarm(3, 2, Comparison::LessThanThreshold, T::Missing), &eq, Ok).state, Ok);
        assert_eq!(
            evaluate(&alarm(3, 2, Comparison::LessThanOrEqualToThreshold, T::Missing), &eq, Ok).state,
            Alarming
        );
        assert_eq!(
            evaluate(
                &alarm(3, 3, Comparison::LessThanThreshold, T::Missing),
                &pts(&[Some(0.0), Some(0.01), Some(0.04)]),
                Ok
            )
            .state,
            Alarming
        );
    }

    #[test]
    fn missing_data_modes() {
        let all_missing = pts(&[None, None, None]);
        let one = pts(&[None, Some(0.5), None]);
        let cmp = Comparison::GreaterThanThreshold;
        // missing: all missing -> INSUFFICIENT_DATA; present points alone decide otherwise.
        assert_eq!(
            evaluate(&alarm(3, 2, cmp, T::Missing), &all_missing, Alarming).state,
            InsufficientData
        );
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::Missing), &one, Alarming).state, Ok);
        assert_eq!(evaluate(&alarm(3, 1, cmp, T::Missing), &one, Ok).state, Alarming);
        // ignore: all missing keeps the state.
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::Ignore), &all_missing, Alarming).state, Alarming);
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::Ignore), &all_missing, Ok).state, Ok);
        // breaching: missing counts against.
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::Breaching), &all_missing, Ok).state, Alarming);
        assert_eq!(evaluate(&alarm(3, 3, cmp, T::Breaching), &one, Ok).state, Alarming);
        // notBreaching: missing counts for.
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::NotBreaching), &all_missing, Alarming).state, Ok);
        assert_eq!(evaluate(&alarm(3, 2, cmp, T::NotBreaching), &one, Alarming).state, Ok);
    }

    #[test]
    fn windows_are_complete_periods() {
        let mut a = alarm(3, 2, Comparison::GreaterThanThreshold, T::Missing);
        assert_eq!(a.window(100), (97, 99));
        a.period_seconds = 10;
        assert_eq!(a.window(105), (70, 90));
        assert_eq!(a.window(110), (80, 100));
    }

    #[test]
    fn history_records_changes_only() {
        let a = alarm(1, 1, Comparison::GreaterThanThreshold, T::Missing);
        let mut st = AlarmStatus::default();
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(st.record(evaluate(&a, &pts(&[Some(0.0)]), st.state), t));
        assert!(!st.record(evaluate(&a, &pts(&[Some(0.0)]), st.state), t));
        assert!(st.record(evaluate(&a, &pts(&[Some(1.0)]), st.state), t));
        assert_eq!(st.history.iter().map(|h| h.to).collect::<Vec<_>>(), vec![Ok, Alarming]);
    }

    #[test]
    fn validation_names_fields() {
        let mut a = alarm(3, 4, Comparison::GreaterThanThreshold, T::Missing);
        assert!(a.validate().unwrap_err().to_string().contains("datapointsToAlarm"));
        a.datapoints_to_alarm = 2;
        a.validate().unwrap();
        a.period_seconds = 0;
        assert!(a.validate().unwrap_err().to_string().contains("periodSeconds"));
    }

    #[test]
    fn yaml_shape_deserializes() {
        let a: Alarm = serde_json::from_value(serde_json::json!({
            "name": "orders-prod-canary-5xx", "api": "orders", "stage": "prod", "variant": "canary",
            "metric": "5XXError", "statistic": "p99.9", "periodSeconds": 10, "evaluationPeriods": 3,
            "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05,
            "treatMissingData": "notBreaching"
        }))
        .unwrap();
        assert_eq!(a.statistic, Some(Statistic::Percentile(99.9)));
        assert_eq!(a.treat_missing_data, T::NotBreaching);
        assert_eq!(serde_json::to_value(&a).unwrap()["statistic"], "p99.9");
    }
}

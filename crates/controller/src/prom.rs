//! Alarms over Prometheus: each period of a `prometheus` alarm is one PromQL instant query, made at the
//! period's end (`/api/v1/query?time=`), in the background; its single value is the period's datapoint.
//! A query that fails, times out, or returns no sample (or more than one) is a missing datapoint with
//! that reason. Datapoints are kept per (alarm, rendered query), so one templated alarm watched by
//! several rollouts keeps a series for each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canarygate_model::alarm::{Alarm, EvaluatedPoint, PrometheusQuery};
use serde_json::Value;

/// Series unused for this long are forgotten.
const FORGET_AFTER_SECS: u64 = 600;
/// The longest a query may take (less for shorter periods).
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Series {
    /// Period start -> the value or why there is none.
    points: BTreeMap<u64, Result<f64, String>>,
    in_flight: BTreeSet<u64>,
    last_used: u64,
}

type Key = (String, String);

#[derive(Clone)]
pub(crate) struct PromSource {
    http: reqwest::Client,
    series: Arc<Mutex<HashMap<Key, Series>>>,
}

impl PromSource {
    pub(crate) fn new(http: reqwest::Client) -> PromSource {
        PromSource {
            http,
            series: Arc::default(),
        }
    }

    /// The datapoints of the alarm's last `evaluationPeriods` complete periods for this rendered query
    /// (periods before `since` count as missing), and why the newest missing one is missing. Starts the
    /// queries of complete periods not asked yet.
    pub(crate) fn datapoints(
        &self,
        alarm: &Alarm,
        q: &PrometheusQuery,
        rendered: &Result<String, String>,
        now_sec: u64,
        since: Option<u64>,
    ) -> (Vec<EvaluatedPoint>, Option<String>) {
        let (first, newest) = alarm.window(now_sec);
        let p = alarm.period_seconds;
        let query = match rendered {
            Ok(q) => q.clone(),
            Err(why) => {
                let points = (0..alarm.evaluation_periods)
                    .map(|i| EvaluatedPoint {
                        timestamp: first + u64::from(i) * p,
                        value: None,
                    })
                    .collect();
                return (points, Some(format!("the query cannot be made: {why}")));
            }
        };
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, s| s.last_used + FORGET_AFTER_SECS >= now_sec);
        let s = all.entry((alarm.name.clone(), query.clone())).or_default();
        s.last_used = now_sec;
        s.points.retain(|ts, _| *ts >= first);
        let mut out = Vec::with_capacity(alarm.evaluation_periods as usize);
        let mut why = None;
        let mut ts = first;
        while ts <= newest {
            let value = if since.is_some_and(|x| ts < x) {
                None
            } else {
                match s.points.get(&ts) {
                    Some(Ok(v)) => Some(*v),
                    Some(Err(e)) => {
                        why = Some(e.clone());
                        None
                    }
                    None => {
                        if s.in_flight.insert(ts) {
                            self.ask(alarm.name.clone(), q.url.clone(), query.clone(), ts, p);
                        }
                        None
                    }
                }
            };
            out.push(EvaluatedPoint { timestamp: ts, value });
            ts += p;
        }
        (out, why)
    }

    /// Queries the value at the end of period `ts` in the background and stores it.
    fn ask(&self, alarm: String, url: String, query: String, ts: u64, period: u64) {
        let (http, series) = (self.http.clone(), self.series.clone());
        let timeout = MAX_TIMEOUT.min(Duration::from_secs(period.max(1)));
        tokio::spawn(async move {
            let value = instant_query(&http, &url, &query, ts + period, timeout).await;
            if let Err(e) = &value {
                tracing::debug!(%alarm, %query, error = %e, "prometheus query gave no value");
            }
            let mut all = series.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = all.get_mut(&(alarm, query)) {
                s.in_flight.remove(&ts);
                s.points.insert(ts, value);
            }
        });
    }
}

/// One instant query: the single sample's value, or why there is none.
pub(crate) async fn instant_query(http: &reqwest::Client, url: &str, query: &str, time: u64, timeout: Duration) -> Result<f64, String> {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let reply = http
        .get(&endpoint)
        .query(&[("query", query), ("time", &time.to_string())])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("{endpoint} did not answer within {} ms", timeout.as_millis())
            } else {
                format!("{endpoint} cannot be reached: {e}")
            }
        })?;
    let status = reply.status();
    let body: Value = reply
        .json()
        .await
        .map_err(|e| format!("{endpoint} answered {status} without a JSON body: {e}"))?;
    parse(&body).map_err(|e| {
        if status.is_success() {
            e
        } else {
            format!("HTTP {}: {e}", status.as_u16())
        }
    })
}

/// The value of an instant query's answer (`{"status","data":{"resultType","result"}}`).
pub(crate) fn parse(body: &Value) -> Result<f64, String> {
    if body["status"] != "success" {
        return Err(format!(
            "query failed: {} {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let result = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            match result {
                [] => return Err("the query returned no sample".into()),
                [one] => &one["value"],
                many => {
                    return Err(format!(
                        "the query returned {} series; it must return one value (aggregate it, e.g. with sum)",
                        many.len()
                    ))
                }
            }
        }
        other => return Err(format!("the query returned a {}, not a single value", other.unwrap_or("nothing"))),
    };
    let text = sample[1].as_str().ok_or("a sample without a value")?;
    let v: f64 = text.parse().map_err(|_| format!("the sample's value {text:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("the sample's value is {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_one_value_or_a_reason() {
        let vector = |result: Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        assert_eq!(parse(&vector(json!([{"metric": {}, "value": [1, "0.25"]}]))), Ok(0.25));
        assert_eq!(
            parse(&json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}})),
            Ok(3.0)
        );
        assert!(parse(&vector(json!([]))).unwrap_err().contains("no sample"));
        assert!(parse(&vector(json!([{"value": [1, "1"]}, {"value": [1, "2"]}])))
            .unwrap_err()
            .contains("2 series"));
        assert!(parse(&vector(json!([{"value": [1, "NaN"]}]))).unwrap_err().contains("NaN"));
        let bad = json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        assert!(parse(&bad).unwrap_err().contains("bad_data parse error"));
        assert!(parse(&json!({"status": "success", "data": {"resultType": "matrix", "result": []}}))
            .unwrap_err()
            .contains("matrix"));
    }
}

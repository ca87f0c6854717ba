//! Evaluating alarms over the gateway's own per-variant metrics.

use canarygate_metrics::{Registry, SeriesKey};
use canarygate_model::alarm::{evaluate, Alarm, AlarmState, EvaluatedPoint, Evaluation};

/// The datapoints of the alarm's last `evaluationPeriods` complete periods at `now_sec`; periods that
/// start before `since` (unix seconds) count as missing.
pub fn datapoints(alarm: &Alarm, metrics: &Registry, now_sec: u64, since: Option<u64>) -> Vec<EvaluatedPoint> {
    let (first, newest) = alarm.window(now_sec);
    let key = SeriesKey {
        api: alarm.api.clone(),
        stage: alarm.stage.clone(),
        variant: alarm.variant,
    };
    let series = metrics.get(&key);
    let p = alarm.period_seconds;
    let mut out = Vec::with_capacity(alarm.evaluation_periods as usize);
    let mut ts = first;
    while ts <= newest {
        let value = if since.is_some_and(|s| ts < s) {
            None
        } else {
            series.as_ref().and_then(|s| s.reduce(alarm.metric, alarm.statistic, ts, ts + p))
        };
        out.push(EvaluatedPoint { timestamp: ts, value });
        ts += p;
    }
    out
}

/// Evaluates an alarm at `now_sec`, from its `current` state.
pub fn evaluate_alarm(alarm: &Alarm, metrics: &Registry, now_sec: u64, since: Option<u64>, current: AlarmState) -> Evaluation {
    evaluate(alarm, &datapoints(alarm, metrics, now_sec, since), current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canarygate_metrics::{Observation, Variant};
    use canarygate_model::alarm::{Comparison, TreatMissingData};
    use canarygate_model::{Metric, Statistic};

    #[test]
    fn evaluates_over_recorded_metrics() {
        let reg = Registry::new();
        let s = reg.series("orders", "prod", Variant::Canary);
        let t0 = 1_800_000_000u64;
        // 30% errors in seconds t0 and t0+1, none in t0+2.
        for sec in [t0, t0 + 1, t0 + 2] {
            for i in 0..10 {
                let status = if sec < t0 + 2 && i < 3 { 500 } else { 200 };
                s.record(
                    sec,
                    &Observation {
                        status,
                        latency_us: 1000,
                        integration_us: None,
                        cache: None,
                    },
                );
            }
        }
        let alarm = Alarm {
            name: "a".into(),
            api: "orders".into(),
            stage: "prod".into(),
            variant: Variant::Canary,
            metric: Metric::Error5xx,
            statistic: Statistic::Average,
            period_seconds: 1,
            evaluation_periods: 3,
            datapoints_to_alarm: 2,
            comparison: Comparison::GreaterThanThreshold,
            threshold: 0.05,
            treat_missing_data: TreatMissingData::Missing,
        };
        let e = evaluate_alarm(&alarm, &reg, t0 + 3, None, AlarmState::InsufficientData);
        assert_eq!(e.state, AlarmState::Alarm, "{}", e.reason);
        assert_eq!(
            e.datapoints.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![Some(0.3), Some(0.3), Some(0.0)]
        );
        // Periods before the rollout's watch start do not count.
        let e = evaluate_alarm(&alarm, &reg, t0 + 3, Some(t0 + 1), AlarmState::Ok);
        assert_eq!(e.state, AlarmState::Ok, "{}", e.reason);
        // No requests at all: INSUFFICIENT_DATA.
        let e = evaluate_alarm(&alarm, &reg, t0 + 100, None, AlarmState::Ok);
        assert_eq!(e.state, AlarmState::InsufficientData);
    }
}

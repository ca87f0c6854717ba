//! Evaluating alarms over the gateway's per-variant metrics: this process's, or the cluster's.

use canarygate_metrics::{MetricsView, SeriesKey};
use canarygate_model::alarm::{evaluate, Alarm, AlarmState, EvaluatedPoint, Evaluation};

/// The datapoints of the alarm's last `evaluationPeriods` complete periods at `now_sec`; periods that
/// start before `since` (unix seconds) count as missing.
pub fn datapoints(alarm: &Alarm, metrics: &dyn MetricsView, now_sec: u64, since: Option<u64>) -> Vec<EvaluatedPoint> {
    let (first, newest) = alarm.window(now_sec);
    let key = SeriesKey {
        api: alarm.api.clone(),
        stage: alarm.stage.clone(),
        variant: alarm.variant,
    };
    let p = alarm.period_seconds;
    let mut out = Vec::with_capacity(alarm.evaluation_periods as usize);
    let mut ts = first;
    while ts <= newest {
        let value = if since.is_some_and(|s| ts < s) {
            None
        } else {
            match (alarm.metric, alarm.statistic) {
                (Some(m), Some(st)) => metrics.reduce(&key, m, st, ts, ts + p),
                _ => None,
            }
        };
        out.push(EvaluatedPoint { timestamp: ts, value });
        ts += p;
    }
    out
}

/// Evaluates an alarm at `now_sec`, from its `current` state.
pub fn evaluate_alarm(alarm: &Alarm, metrics: &dyn MetricsView, now_sec: u64, since: Option<u64>, current: AlarmState) -> Evaluation {
    evaluate(alarm, &datapoints(alarm, metrics, now_sec, since), current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canarygate_metrics::Registry;
    use canarygate_metrics::{Observation, Variant};
    use canarygate_model::alarm::{Comparison, TreatMissingData};
    use canarygate_model::{Metric, Statistic};

    #[test]
    fn every_statistic_over_latency() {
        let reg = Registry::new();
        let s = reg.series("orders", "prod", Variant::Production);
        let t0 = 1_800_000_000u64;
        // One period: latencies 10, 20, ..., 100 ms, one of them a 500.
        for i in 1..=10u64 {
            let status = if i == 10 { 500 } else { 200 };
            s.record(
                t0,
                &Observation {
                    status,
                    latency_us: i * 10_000,
                    integration_us: Some(i * 9_000),
                    cache: None,
                    routed: Default::default(),
                },
            );
        }
        let base = Alarm {
            name: "lat".into(),
            api: "orders".into(),
            stage: "prod".into(),
            variant: Variant::Production,
            metric: Some(Metric::Latency),
            statistic: Some(Statistic::Sum),
            prometheus: None,
            period_seconds: 1,
            evaluation_periods: 1,
            datapoints_to_alarm: 1,
            comparison: Comparison::GreaterThanThreshold,
            threshold: 0.0,
            treat_missing_data: TreatMissingData::Missing,
            dry_run: false,
        };
        let value = |metric: Metric, statistic: Statistic| {
            let a = Alarm {
                metric: Some(metric),
                statistic: Some(statistic),
                ..base.clone()
            };
            datapoints(&a, &reg, t0 + 1, None)[0].value.unwrap()
        };
        assert_eq!(value(Metric::Latency, Statistic::Sum), 550.0);
        assert_eq!(value(Metric::Latency, Statistic::Average), 55.0);
        assert_eq!(value(Metric::Latency, Statistic::SampleCount), 10.0);
        assert_eq!(value(Metric::Latency, Statistic::Minimum), 10.0);
        assert_eq!(value(Metric::Latency, Statistic::Maximum), 100.0);
        assert_eq!(value(Metric::IntegrationLatency, Statistic::Maximum), 90.0);
        let p50 = value(Metric::Latency, Statistic::Percentile(50.0));
        assert!((40.0..=60.0).contains(&p50), "p50 {p50}");
        let p99 = value(Metric::Latency, Statistic::Percentile(99.0));
        assert!((85.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(value(Metric::Count, Statistic::Sum), 10.0);
        assert_eq!(value(Metric::Error5xx, Statistic::Average), 0.1);
        assert_eq!(value(Metric::Error5xx, Statistic::Sum), 1.0);
        assert_eq!(value(Metric::Error4xx, Statistic::Maximum), 0.0);
        // And the rule on top: p99 latency > 80 ms is ALARM, > 120 ms is OK.
        let rule = |threshold: f64| {
            let a = Alarm {
                statistic: Some(Statistic::Percentile(99.0)),
                threshold,
                ..base.clone()
            };
            evaluate_alarm(&a, &reg, t0 + 1, None, AlarmState::Ok).state
        };
        assert_eq!(rule(80.0), AlarmState::Alarm);
        assert_eq!(rule(120.0), AlarmState::Ok);
    }

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
                        routed: Default::default(),
                    },
                );
            }
        }
        let alarm = Alarm {
            name: "a".into(),
            api: "orders".into(),
            stage: "prod".into(),
            variant: Variant::Canary,
            metric: Some(Metric::Error5xx),
            statistic: Some(Statistic::Average),
            prometheus: None,
            period_seconds: 1,
            evaluation_periods: 3,
            datapoints_to_alarm: 2,
            comparison: Comparison::GreaterThanThreshold,
            threshold: 0.05,
            treat_missing_data: TreatMissingData::Missing,
            dry_run: false,
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

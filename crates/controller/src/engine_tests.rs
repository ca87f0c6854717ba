//! The rollout state machine in simulated time.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use canarygate_model::alarm::{Alarm, AlarmState, Comparison, EvaluatedPoint, Evaluation, TreatMissingData};
use canarygate_model::rollout::{HookStatus, Phase, RolloutRequest, RolloutStatus};
use canarygate_model::{Metric, StageInput, State, Statistic, Variant};

use crate::engine::{step, Effect, Input};
use canarygate_model::analysis::{Batch, Pairs, Side};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A state with api `orders` (deployments d-one, d-two), stage `prod` on d-one, and alarm `errors`.
fn state() -> State {
    let mut s = State::default();
    let routes = serde_json::from_value(json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap();
    s.put_api("orders", routes, t0()).unwrap();
    s.create_deployment("orders", || "d-one".into(), String::new(), t0()).unwrap();
    s.create_deployment("orders", || "d-two".into(), String::new(), t0()).unwrap();
    let input = StageInput {
        deployment_id: Some("d-one".into()),
        variables: [("backend".into(), "a:1".into())].into(),
        ..Default::default()
    };
    s.put_stage("orders", "prod", input, t0()).unwrap();
    let alarm = Alarm {
        name: String::new(),
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
    s.put_alarm("errors", alarm).unwrap();
    s
}

fn alarm_eval(state: AlarmState) -> Evaluation {
    let v = if state == AlarmState::Alarm { Some(0.3) } else { Some(0.0) };
    Evaluation {
        state,
        reason: format!("test {}", state.as_str()),
        datapoints: vec![EvaluatedPoint { timestamp: 1, value: v }, EvaluatedPoint { timestamp: 2, value: v }],
        breaching: 2,
    }
}

/// Runs a rollout the way the driver does: a tick advances the clock and the watched time.
struct Sim {
    s: State,
    id: String,
    now: DateTime<Utc>,
    base: (u8, Option<usize>, u64),
    extra_ms: u64,
    effects: Vec<Effect>,
    hooks: u32,
    /// Batches for the next tick's analysis.
    batches: Vec<Batch>,
    /// Mirrored pairs for the next tick's analysis.
    pairs: Vec<Pairs>,
}

impl Sim {
    fn start(config: &str, req: serde_json::Value) -> Sim {
        Sim::start_in(state(), config, req)
    }

    fn start_in(mut s: State, config: &str, req: serde_json::Value) -> Sim {
        let mut body = json!({"deploymentId": "d-two", "stageVariableOverrides": {"backend": "b:2"}, "deploymentConfig": config, "alarms": ["errors"]});
        body.as_object_mut().unwrap().extend(req.as_object().unwrap().clone());
        let req: RolloutRequest = serde_json::from_value(body).unwrap();
        s.create_rollout("orders", "prod", req, "r-1".into(), t0()).unwrap();
        Sim {
            s,
            id: "r-1".into(),
            now: t0(),
            base: (0, None, 0),
            extra_ms: 0,
            effects: Vec::new(),
            hooks: 0,
            batches: Vec::new(),
            pairs: Vec::new(),
        }
    }

    fn rollout(&self) -> &canarygate_model::rollout::Rollout {
        &self.s.rollouts[&self.id]
    }

    fn stage(&self) -> &canarygate_model::Stage {
        self.s.stage("orders", "prod").unwrap()
    }

    /// Advances `ms` of watched time and takes a step with the given alarm state.
    fn tick_with(&mut self, ms: u64, alarm: AlarmState, resumed: bool) {
        self.now += Duration::milliseconds(ms as i64);
        let base = match self.rollout().phase {
            Phase::Shifting { step, watched_ms } => (2, Some(step), watched_ms),
            Phase::Mirroring { watched_ms } => (1, None, watched_ms),
            _ => (0, None, 0),
        };
        if base != self.base {
            self.base = base;
            self.extra_ms = 0;
        }
        if self.rollout().paused.is_none() {
            self.extra_ms += ms;
        }
        let alarms = vec![("errors".to_string(), alarm_eval(alarm))];
        let hooks = &mut self.hooks;
        let mut new_id = || {
            *hooks += 1;
            format!("h-{hooks}")
        };
        let mut input = Input {
            now: self.now,
            watched_ms: base.2 + self.extra_ms,
            alarms: &alarms,
            batches: &std::mem::take(&mut self.batches),
            pairs: &std::mem::take(&mut self.pairs),
            resumed,
            new_id: &mut new_id,
        };
        let e = step(&mut self.s, &self.id, &mut input);
        self.effects.extend(e);
    }

    fn tick(&mut self, ms: u64) {
        self.tick_with(ms, AlarmState::Ok, false);
    }

    /// Runs to the end in 1 s ticks; returns (seconds since start, weight) at every weight change.
    fn run_to_end(&mut self) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        let mut last = -1.0;
        self.tick(0);
        for _ in 0..20_000 {
            let w = self
                .stage()
                .canary_settings
                .as_ref()
                .map_or(if self.rollout().promoted { 100.0 } else { 0.0 }, |c| c.percent_traffic);
            if w != last && !(w == 0.0 && last < 0.0) {
                out.push(((self.now - t0()).num_seconds(), w));
                last = w;
            }
            if !self.rollout().status.is_active() {
                return out;
            }
            self.tick(1000);
        }
        panic!("rollout never ended: {:?}", self.rollout().phase);
    }
}

#[test]
fn every_predefined_schedule_in_simulated_time() {
    let canary = |m: i64| vec![(0, 10.0), (m * 60, 100.0)];
    let linear = |m: i64| {
        let mut v: Vec<(i64, f64)> = (0..9).map(|i| (i * m * 60, 10.0 * (i + 1) as f64)).collect();
        v.push((9 * m * 60, 100.0));
        v
    };
    let cases: Vec<(&str, Vec<(i64, f64)>)> = vec![
        ("Canary10Percent5Minutes", canary(5)),
        ("CodeDeployDefault.LambdaCanary10Percent10Minutes", canary(10)),
        ("Canary10Percent15Minutes", canary(15)),
        ("Canary10Percent30Minutes", canary(30)),
        ("Linear10PercentEvery1Minute", linear(1)),
        ("Linear10PercentEvery2Minutes", linear(2)),
        ("CodeDeployDefault.LambdaLinear10PercentEvery3Minutes", linear(3)),
        ("Linear10PercentEvery10Minutes", linear(10)),
        ("AllAtOnce", vec![(0, 100.0)]),
    ];
    for (config, want) in cases {
        let mut sim = Sim::start(config, json!({}));
        let got = sim.run_to_end();
        assert_eq!(got, want, "{config}");
        assert_eq!(sim.rollout().status, RolloutStatus::Succeeded, "{config}");
        let last = sim.rollout().events.last().unwrap();
        assert_eq!(last.step, Some(want.len() - 1), "{config}: the final event names the last step");
        let st = sim.stage();
        assert_eq!(st.deployment_id, "d-two");
        assert_eq!(st.variables["backend"], "b:2");
        assert!(st.canary_settings.is_none() && st.active_rollout.is_none());
    }
}

#[test]
fn alarm_rolls_back_before_promotion_and_restores_the_stage() {
    let mut sim = Sim::start("Canary10Percent5Minutes", json!({}));
    let before = sim.stage().clone();
    sim.tick(0);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    sim.tick(1000);
    // INSUFFICIENT_DATA never fails a rollout.
    sim.tick_with(1000, AlarmState::InsufficientData, false);
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick_with(1000, AlarmState::Alarm, false);
    let r = sim.rollout();
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert_eq!(r.weight, 0.0);
    let last = r.events.last().unwrap();
    assert!(last.reason.contains("errors") && last.reason.contains("ALARM"), "{}", last.reason);
    let observed = last.observed.as_ref().unwrap();
    assert_eq!(observed["alarm"], "errors");
    assert_eq!(observed["threshold"], 0.05);
    assert_eq!(observed["datapoints"][0]["value"], 0.3);
    let st = sim.stage();
    assert_eq!(
        (&st.deployment_id, &st.variables, &st.canary_settings),
        (&before.deployment_id, &before.variables, &None)
    );
    assert!(st.active_rollout.is_none());
}

#[test]
fn alarm_after_promotion_restores_the_previous_deployment_and_variables() {
    let mut sim = Sim::start("AllAtOnce", json!({"hooks": {"afterAllowTraffic": "http://hook/after"}}));
    sim.tick(0);
    assert!(sim.rollout().promoted);
    assert_eq!(sim.stage().deployment_id, "d-two");
    assert!(matches!(sim.rollout().phase, Phase::AfterAllowTraffic { .. }));
    sim.tick_with(1000, AlarmState::Alarm, false);
    let st = sim.stage();
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert_eq!(st.deployment_id, "d-one");
    assert_eq!(st.variables["backend"], "a:1");
    assert!(st.canary_settings.is_none());
}

#[test]
fn alarm_without_auto_rollback_stops_and_leaves_traffic() {
    let mut sim = Sim::start("Canary10Percent5Minutes", json!({"autoRollback": ["DEPLOYMENT_FAILURE"]}));
    sim.tick(0);
    sim.tick_with(1000, AlarmState::Alarm, false);
    assert_eq!(sim.rollout().status, RolloutStatus::Stopped);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    assert!(sim.stage().active_rollout.is_none());
}

fn hook_id(sim: &Sim) -> String {
    match &sim.rollout().phase {
        Phase::BeforeAllowTraffic { execution } | Phase::AfterAllowTraffic { execution } => execution.id.clone(),
        p => panic!("no hook phase: {p:?}"),
    }
}

#[test]
fn hooks_succeed_fail_call_back_and_time_out() {
    // Success: the canary waits at 0% (reachable with the variant header) until the hook succeeds.
    let mut sim = Sim::start(
        "Canary10Percent5Minutes",
        json!({"hooks": {"beforeAllowTraffic": "http://hook/before"}}),
    );
    sim.tick(0);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 0.0);
    assert!(matches!(&sim.effects[..], [Effect::CallHook { .. }]));
    sim.tick_with(1000, AlarmState::Alarm, false);
    assert_eq!(
        sim.rollout().status,
        RolloutStatus::InProgress,
        "alarms are not watched before traffic moves"
    );
    let id = hook_id(&sim);
    sim.s.record_hook("r-1", &id, HookStatus::Succeeded, None).unwrap();
    sim.tick(1000);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);

    // Failure: rolled back (DEPLOYMENT_FAILURE), or Failed without it.
    for (auto, want) in [(json!(null), RolloutStatus::RolledBack), (json!([]), RolloutStatus::Failed)] {
        let mut sim = Sim::start(
            "AllAtOnce",
            json!({"hooks": {"beforeAllowTraffic": "http://hook/before"}, "autoRollback": auto}),
        );
        sim.tick(0);
        let id = hook_id(&sim);
        sim.s.record_hook("r-1", &id, HookStatus::Failed, Some("HTTP 500".into())).unwrap();
        sim.tick(1000);
        assert_eq!(sim.rollout().status, want);
        assert!(sim.rollout().events.last().unwrap().reason.contains("HTTP 500"));
        if want == RolloutStatus::RolledBack {
            assert!(sim.stage().canary_settings.is_none());
        }
    }

    // Callback: 202 (Waiting), then the callback reports success.
    let mut sim = Sim::start("AllAtOnce", json!({"hooks": {"beforeAllowTraffic": "http://hook/before"}}));
    sim.tick(0);
    let id = hook_id(&sim);
    sim.s.record_hook("r-1", &id, HookStatus::Waiting, None).unwrap();
    sim.tick(60_000);
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.s.record_hook("r-1", &id, HookStatus::Succeeded, None).unwrap();
    sim.tick(1000);
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert!(
        sim.s.record_hook("r-1", &id, HookStatus::Failed, None).is_err(),
        "an ended rollout takes no hook reports"
    );

    // Timeout: past the deadline (default one hour; here 30 s) the hook fails.
    let mut sim = Sim::start(
        "AllAtOnce",
        json!({"hooks": {"afterAllowTraffic": "http://hook/after", "timeoutSeconds": 30}}),
    );
    sim.tick(0);
    sim.tick(29_000);
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick(2_000);
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert!(sim.rollout().events.last().unwrap().reason.contains("timed out"));
    assert_eq!(sim.stage().deployment_id, "d-one", "rolled back after promotion");
}

#[test]
fn stop_and_promote_requests() {
    for (rollback, want) in [(true, RolloutStatus::RolledBack), (false, RolloutStatus::Stopped)] {
        let mut sim = Sim::start("Linear10PercentEvery1Minute", json!({}));
        sim.tick(0);
        sim.tick(60_000);
        assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 20.0);
        sim.s.request_stop("r-1", rollback, sim.now).unwrap();
        sim.tick(100);
        assert_eq!(sim.rollout().status, want);
        let canary = sim.stage().canary_settings.as_ref().map(|c| c.percent_traffic);
        assert_eq!(canary, if rollback { None } else { Some(20.0) });
        assert!(
            sim.s.request_stop("r-1", true, sim.now).is_err(),
            "an ended rollout cannot be stopped"
        );
    }
    let mut sim = Sim::start("Canary10Percent30Minutes", json!({}));
    sim.tick(0);
    sim.s.request_promote("r-1", sim.now).unwrap();
    sim.tick(100);
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert_eq!(sim.stage().deployment_id, "d-two");
}

#[test]
fn one_active_rollout_per_stage_and_none_over_a_canary() {
    let mut sim = Sim::start("AllAtOnce", json!({}));
    let req: RolloutRequest = serde_json::from_value(json!({"deploymentConfig": "AllAtOnce"})).unwrap();
    let e = sim.s.create_rollout("orders", "prod", req.clone(), "r-2".into(), t0()).unwrap_err();
    assert!(matches!(e, canarygate_model::Error::Conflict(_)));
    sim.run_to_end();
    sim.s.create_rollout("orders", "prod", req.clone(), "r-2".into(), t0()).unwrap();
    // Bad requests name the field.
    let mut s = state();
    for (body, field) in [
        (json!({"deploymentConfig": "Nope"}), "deploymentConfig"),
        (json!({"deploymentConfig": "AllAtOnce", "deploymentId": "d-zzz"}), "deploymentId"),
        (json!({"deploymentConfig": "AllAtOnce", "alarms": ["missing"]}), "alarms[0]"),
        (
            json!({"deploymentConfig": "AllAtOnce", "hooks": {"beforeAllowTraffic": "ftp://x"}}),
            "hooks.beforeAllowTraffic",
        ),
    ] {
        let req: RolloutRequest = serde_json::from_value(body).unwrap();
        let e = s.create_rollout("orders", "prod", req, "r-x".into(), t0()).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
        assert!(s.rollouts.is_empty());
    }
}

#[test]
fn a_restart_gap_is_not_counted_and_shows_in_the_events() {
    let mut sim = Sim::start("Canary10Percent5Minutes", json!({}));
    sim.tick(0);
    for _ in 0..12 {
        sim.tick(1000);
    }
    // 12 s watched; a checkpoint was written at 10 s (every 5 s).
    assert_eq!(
        sim.rollout().phase,
        Phase::Shifting {
            step: 0,
            watched_ms: 10_000
        }
    );
    // The process is down for 100 s: a new driver starts from the record (extra time lost, gap not counted).
    sim.now += Duration::seconds(100);
    sim.extra_ms = 0;
    sim.base = (0, None, 0);
    sim.tick_with(0, AlarmState::Ok, true);
    let gap_event = sim.rollout().events.last().unwrap();
    assert!(gap_event.reason.contains("resumed after a gap"), "{}", gap_event.reason);
    assert!(gap_event.observed.as_ref().unwrap()["gapMs"].as_i64().unwrap() >= 100_000);
    // The step still needs 290 s of watched time.
    for _ in 0..289 {
        sim.tick(1000);
    }
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick(1000);
    sim.tick(1000);
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
}

/// One second of traffic at the stage's current weight: `n` requests, error rates per variant.
fn second_of(sim: &Sim, n: u64, canary_rate: f64, production_rate: f64) -> Batch {
    let w = sim.stage().canary_settings.as_ref().map_or(0.0, |c| c.percent_traffic) / 100.0;
    let nc = (n as f64 * w).round() as u64;
    let np = n - nc;
    Batch {
        second: sim.now.timestamp() as u64,
        rho: w,
        canary: Side {
            requests: nc,
            errors: (nc as f64 * canary_rate).round() as u64,
            latency: Vec::new(),
        },
        production: Side {
            requests: np,
            errors: (np as f64 * production_rate).round() as u64,
            latency: Vec::new(),
        },
    }
}

#[test]
fn the_analysis_rolls_back_a_worse_canary_with_its_evidence() {
    let mut sim = Sim::start(
        "Canary10Percent30Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}}}),
    );
    sim.tick(0);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    let mut seconds = 0;
    while sim.rollout().status.is_active() {
        sim.batches = vec![second_of(&sim, 1000, 0.03, 0.01)];
        sim.tick(1000);
        seconds += 1;
        assert!(seconds < 300, "never rejected");
    }
    let r = sim.rollout();
    assert_eq!(r.status, RolloutStatus::RolledBack);
    assert!(sim.stage().canary_settings.is_none());
    let last = r.events.last().unwrap();
    assert!(last.reason.contains("analysis rejected the canary (errorRate)"), "{}", last.reason);
    let ev = last.observed.as_ref().unwrap();
    assert!(ev["errorRate"]["eValue"].as_f64().unwrap() >= 100.0, "{ev}");
    assert!(ev["errorRate"]["ratio"].as_f64().unwrap() > 2.0);
    // The change's own second and the next are left out.
    assert_eq!(ev["excludedBatches"], 2);
}

#[test]
fn a_healthy_canary_under_a_shared_incident_is_promoted() {
    let mut sim = Sim::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 500}}),
    );
    sim.tick(0);
    for s in 0..400 {
        if !sim.rollout().status.is_active() {
            break;
        }
        // Both fail 20% for a minute.
        let rate = if (60..120).contains(&s) { 0.2 } else { 0.01 };
        sim.batches = vec![second_of(&sim, 1000, rate, rate)];
        sim.tick(1000);
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded, "{:?}", sim.rollout().events);
    assert_eq!(sim.stage().deployment_id, "d-two");
}

#[test]
fn min_canary_requests_holds_the_step_until_traffic_comes() {
    let mut sim = Sim::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 1000}}),
    );
    sim.tick(0);
    // Five quiet minutes and more: 10 requests a second, 1 to the canary.
    for _ in 0..400 {
        sim.batches = vec![second_of(&sim, 10, 0.0, 0.0)];
        sim.tick(1000);
    }
    let r = sim.rollout();
    assert_eq!(r.weight, 10.0);
    assert!(
        r.waiting_for.as_deref().unwrap().contains("waiting for traffic"),
        "{:?}",
        r.waiting_for
    );
    assert_eq!(r.events.iter().filter(|e| e.reason.contains("waiting for traffic")).count(), 1);
    // Traffic comes: the step ends once the canary has served 1000.
    for _ in 0..10 {
        sim.batches = vec![second_of(&sim, 1000, 0.0, 0.0)];
        sim.tick(1000);
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert!(sim.rollout().waiting_for.is_none());
}

#[test]
fn an_approval_step_waits_without_limit_keeps_watching_and_continues_when_approved() {
    let gated = || {
        let mut s = state();
        let c = serde_json::from_value(json!({"type": "Steps", "steps": [
            {"percentage": 5, "intervalSeconds": 60}, {"percentage": 5, "approval": true}, {"percentage": 50, "intervalSeconds": 60}]}))
        .unwrap();
        s.put_deployment_config("Gated", c).unwrap();
        s
    };
    let mut sim = Sim::start_in(gated(), "Gated", json!({}));
    sim.tick(0);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 5.0);
    // An approval before the approval step is refused.
    assert!(sim.s.approve_rollout("r-1", "alice", sim.now).is_err());
    for _ in 0..61 {
        sim.tick(1000);
    }
    // At the approval step: a day passes, nothing moves; the rollout says why, once.
    for _ in 0..(24 * 60) {
        sim.tick(60_000);
    }
    let r = sim.rollout();
    assert_eq!((r.status, r.weight, r.step_index()), (RolloutStatus::InProgress, 5.0, Some(1)));
    assert!(r.waiting_for.as_deref().unwrap().contains("waiting for an approval"));
    assert_eq!(r.events.iter().filter(|e| e.reason.contains("waiting for an approval")).count(), 1);
    // A resume after a restart while waiting shows no gap.
    sim.tick_with(1000, AlarmState::Ok, true);
    assert!(!sim.rollout().events.iter().any(|e| e.reason.contains("gap")));
    // Approved: on to 50%, the approver named in the event.
    sim.s.approve_rollout("r-1", "alice", sim.now).unwrap();
    assert!(
        sim.s.approve_rollout("r-1", "bob", sim.now).is_err(),
        "a second approval of the same step"
    );
    sim.tick(1000);
    let r = sim.rollout();
    assert_eq!(r.weight, 50.0);
    assert!(r.waiting_for.is_none());
    let approved = r.events.iter().find(|e| e.reason == "step approved by alice").unwrap();
    assert_eq!(approved.observed.as_ref().unwrap()["approvedBy"], "alice");
    for _ in 0..61 {
        sim.tick(1000);
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);

    // While it waits, an alarm still rolls it back.
    let mut sim = Sim::start_in(gated(), "Gated", json!({}));
    sim.tick(0);
    for _ in 0..100 {
        sim.tick(1000);
    }
    assert_eq!(sim.rollout().step_index(), Some(1));
    sim.tick_with(1000, AlarmState::Alarm, false);
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert!(sim.stage().canary_settings.is_none());
}

#[test]
fn a_mirroring_phase_comes_before_the_first_shift_and_gives_the_stage_its_own_mirror_back() {
    let mut s = state();
    // The stage mirrors 5% of its GETs and PUTs already: the phase keeps its methods at its own share.
    let ops = [
        canarygate_model::PatchOperation::replace("/mirror/percentTraffic", "5"),
        canarygate_model::PatchOperation::replace("/mirror/methods", "GET,PUT"),
    ];
    s.patch_stage("orders", "prod", &ops, t0()).unwrap();
    let own = s.stage("orders", "prod").unwrap().mirror.clone();
    let mut sim = Sim::start_in(s, "Canary10Percent5Minutes", json!({"mirrorSeconds": 30, "mirrorPercent": 50}));
    sim.tick(0);
    assert_eq!(sim.rollout().phase, Phase::Mirroring { watched_ms: 0 });
    let st = sim.stage();
    assert_eq!(st.canary_settings.as_ref().unwrap().percent_traffic, 0.0);
    let m = st.mirror.as_ref().unwrap();
    assert_eq!(
        (m.percent_traffic, m.methods.clone()),
        (50.0, vec!["GET".to_string(), "PUT".to_string()])
    );
    for _ in 0..29 {
        sim.tick(1000);
    }
    assert!(matches!(sim.rollout().phase, Phase::Mirroring { .. }));
    sim.tick(1000);
    assert_eq!(sim.rollout().step_index(), Some(0));
    let st = sim.stage();
    assert_eq!(st.canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    assert_eq!(st.mirror, own, "the stage's own mirroring is back");
    let reasons: Vec<_> = sim.rollout().events.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("mirroring 50% of production requests (GET, PUT) to the canary for 30 s")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("mirroring ended after 30 s")), "{reasons:?}");
}

#[test]
fn an_alarm_or_the_paired_judgement_during_mirroring_rolls_back_before_any_client_is_served() {
    for by_analysis in [false, true] {
        let req = if by_analysis {
            json!({"alarms": [], "mirrorSeconds": 600, "analysis": {"errorRate": {"alpha": 0.01}}})
        } else {
            json!({"mirrorSeconds": 600})
        };
        let mut sim = Sim::start("Canary10Percent5Minutes", req);
        sim.tick(0);
        assert_eq!(sim.stage().mirror.as_ref().unwrap().percent_traffic, 100.0);
        let mut n = 0;
        while sim.rollout().status.is_active() {
            n += 1;
            assert!(n < 120, "never rolled back");
            if by_analysis {
                sim.pairs = vec![Pairs {
                    second: t0().timestamp() as u64 + n,
                    copies: 100,
                    copy_failed: 4,
                    original_failed: 1,
                }];
                sim.tick(1000);
            } else {
                let alarm = if n > 3 { AlarmState::Alarm } else { AlarmState::Ok };
                sim.tick_with(1000, alarm, false);
            }
        }
        let r = sim.rollout();
        assert_eq!(r.status, RolloutStatus::RolledBack, "by analysis: {by_analysis}");
        assert!(r.events.iter().all(|e| e.weight == 0.0), "no client was ever served by the canary");
        let st = sim.stage();
        assert!(st.canary_settings.is_none() && st.mirror.is_none(), "{st:?}");
        let last = &r.events.last().unwrap().reason;
        if by_analysis {
            assert!(last.contains("mirror errorRate (paired)"), "{last}");
        } else {
            assert!(last.contains("alarm errors entered ALARM"), "{last}");
        }
    }
}

#[test]
fn a_mirroring_phase_is_validated() {
    let s = state();
    for (body, field) in [
        (json!({"mirrorPercent": 50}), "mirrorPercent"),
        (json!({"mirrorSeconds": 100000}), "mirrorSeconds"),
        (json!({"mirrorSeconds": 10, "mirrorPercent": 0}), "mirrorPercent"),
        (json!({"mirrorSeconds": 10, "mirrorPercent": 101}), "mirrorPercent"),
    ] {
        let mut s = s.clone();
        let mut req = json!({"deploymentId": "d-two", "deploymentConfig": "Canary10Percent5Minutes"});
        req.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let req: RolloutRequest = serde_json::from_value(req).unwrap();
        let e = s.create_rollout("orders", "prod", req, "r-1".into(), t0()).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
        assert!(s.rollouts.is_empty());
    }
}

fn weight(sim: &Sim) -> Option<f64> {
    sim.stage().canary_settings.as_ref().map(|c| c.percent_traffic)
}

#[test]
fn a_paused_rollout_holds_its_weight_and_resumes_with_the_rest_of_its_wait() {
    let mut sim = Sim::start("Linear10PercentEvery1Minute", json!({}));
    sim.tick(0);
    for _ in 0..20 {
        sim.tick(1000);
    }
    sim.s.pause_rollout("r-1", "alice", sim.now).unwrap();
    assert!(sim.s.pause_rollout("r-1", "bob", sim.now).is_err(), "paused twice");
    assert!(sim.s.continue_rollout("r-1", "bob", sim.now).is_err(), "continue while paused");
    // Ten minutes paused: ten times the step's interval, and the weight holds.
    for _ in 0..600 {
        sim.tick(1000);
    }
    assert_eq!(weight(&sim), Some(10.0));
    assert!(matches!(sim.rollout().phase, Phase::Shifting { step: 0, watched_ms } if (20_000..22_000).contains(&watched_ms)));
    assert!(sim.rollout().events.iter().any(|e| e.reason.starts_with("paused by alice")));
    sim.s.resume_rollout("r-1", "bob", sim.now).unwrap();
    assert!(sim.s.resume_rollout("r-1", "bob", sim.now).is_err(), "not paused");
    // The rest of the minute: 39 more seconds hold the step, the 40th ends it.
    for _ in 0..38 {
        sim.tick(1000);
    }
    assert_eq!(weight(&sim), Some(10.0));
    sim.tick(1000);
    sim.tick(1000);
    assert_eq!(weight(&sim), Some(20.0));
    let resumed = sim
        .rollout()
        .events
        .iter()
        .find(|e| e.reason.starts_with("resumed by bob"))
        .unwrap();
    assert_eq!(resumed.observed.as_ref().unwrap()["resumedBy"], "bob");
}

#[test]
fn an_alarm_while_paused_rolls_back() {
    let mut sim = Sim::start("Canary10Percent30Minutes", json!({}));
    sim.tick(0);
    sim.s.pause_rollout("r-1", "alice", sim.now).unwrap();
    sim.tick(1000);
    sim.tick_with(1000, AlarmState::Alarm, false);
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert_eq!(weight(&sim), None);
    assert!(sim.s.resume_rollout("r-1", "alice", sim.now).is_err(), "an ended rollout");
}

#[test]
fn a_paused_rollout_survives_a_restart_without_a_gap() {
    let mut sim = Sim::start("Canary10Percent5Minutes", json!({}));
    sim.tick(0);
    sim.tick(30_000);
    sim.s.pause_rollout("r-1", "alice", sim.now).unwrap();
    for _ in 0..60 {
        sim.tick(1000);
    }
    // The record as stored, read by a new controller.
    let stored: canarygate_model::rollout::Rollout = serde_json::from_value(serde_json::to_value(sim.rollout()).unwrap()).unwrap();
    assert!(stored.paused.is_some());
    // The controller was down for 30 s (its last checkpoint is older still).
    sim.now += Duration::seconds(30);
    sim.tick_with(1000, AlarmState::Ok, true);
    assert!(sim.rollout().paused.is_some());
    assert!(
        !sim.rollout().events.iter().any(|e| e.reason.contains("gap")),
        "no gap while paused"
    );
    assert_eq!(weight(&sim), Some(10.0));
    // Resumed before a restarted controller first saw it: still no gap.
    sim.now += Duration::seconds(30);
    sim.s.resume_rollout("r-1", "alice", sim.now).unwrap();
    sim.tick_with(100, AlarmState::Ok, true);
    assert!(
        !sim.rollout().events.iter().any(|e| e.reason.contains("gap")),
        "no gap after the resume"
    );
}

#[test]
fn continue_ends_a_long_wait_at_once() {
    let mut sim = Sim::start("Linear10PercentEvery10Minutes", json!({}));
    sim.tick(0);
    sim.tick(1000);
    assert_eq!(weight(&sim), Some(10.0));
    sim.s.continue_rollout("r-1", "carol", sim.now).unwrap();
    sim.tick(100);
    assert_eq!(weight(&sim), Some(20.0));
    let e = sim.rollout().events.iter().find(|e| e.reason.contains("ended early")).unwrap();
    assert_eq!(e.reason, "step ended early on request by carol");
    assert_eq!(e.step, Some(0));
    // The next step's wait is whole.
    sim.tick(599_000);
    assert_eq!(weight(&sim), Some(20.0));
    // Not at an approval step, not before traffic.
    let mut sim = Sim::start("Canary10Percent5Minutes", json!({"hooks": {"beforeAllowTraffic": "http://hook/b"}}));
    sim.tick(0);
    let err = sim.s.continue_rollout("r-1", "carol", sim.now).unwrap_err().to_string();
    assert!(err.contains("BeforeAllowTraffic"), "{err}");
    let err = sim.s.pause_rollout("r-1", "carol", sim.now).unwrap_err().to_string();
    assert!(err.contains("only a step's wait"), "{err}");
}

#[test]
fn a_dry_run_analysis_records_when_it_would_have_rolled_back_and_the_rollout_goes_on() {
    let mut sim = Sim::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 1000000, "dryRun": true}}),
    );
    sim.tick(0);
    while sim.rollout().status.is_active() {
        sim.batches = vec![second_of(&sim, 1000, 0.03, 0.01)];
        sim.tick(1000);
    }
    let r = sim.rollout();
    // Neither the rejection nor minCanaryRequests held or ended it.
    assert_eq!(r.status, RolloutStatus::Succeeded);
    assert_eq!((sim.now - t0()).num_seconds(), 300);
    assert_eq!(r.would_have_rolled_back.len(), 1, "noted once: {:?}", r.would_have_rolled_back);
    let w = &r.would_have_rolled_back[0];
    assert_eq!((w.by.as_str(), w.step, w.weight), ("analysis (errorRate)", Some(0), 10.0));
    assert!(w.reason.starts_with("errors: canary"), "{}", w.reason);
    assert!(w.at < t0() + Duration::seconds(120), "rejected early, at {}", w.at);
    let e = r
        .events
        .iter()
        .find(|e| e.reason.starts_with("dry run: analysis (errorRate) would have rolled back here"))
        .unwrap();
    assert!(e.observed.as_ref().unwrap()["errorRate"]["rejected"].as_bool().unwrap());
}

#[test]
fn a_dry_run_alarm_is_noted_each_time_it_enters_alarm_and_never_acts() {
    let mut s = state();
    s.alarms.get_mut("errors").unwrap().alarm.dry_run = true;
    let mut sim = Sim::start_in(s, "Canary10Percent5Minutes", json!({}));
    sim.tick(0);
    sim.tick_with(1000, AlarmState::Alarm, false);
    sim.tick_with(1000, AlarmState::Alarm, false);
    sim.tick_with(1000, AlarmState::Ok, false);
    sim.tick_with(1000, AlarmState::Alarm, false);
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    assert_eq!(sim.rollout().would_have_rolled_back.len(), 2);
    assert!(sim
        .rollout()
        .events
        .iter()
        .any(|e| e.reason == "dry run: alarm errors left ALARM (OK)"));
    sim.run_to_end();
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert_eq!(sim.rollout().would_have_rolled_back[0].by, "alarm errors");
}

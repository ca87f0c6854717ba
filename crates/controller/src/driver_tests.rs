//! The controller in simulated time: the real driver over a temporary SQLite store, stepped by a fake
//! clock (see [`crate::testing`]), so plans of hours and days, restarts and takeovers run in
//! milliseconds. Alarms and the analysis read real metrics the tests record.

use chrono::Duration;
use serde_json::json;

use canarygate_model::alarm::AlarmState;
use canarygate_model::rollout::{HookStatus, Phase, RolloutRequest, RolloutStatus};

use crate::testing::{state, t0, Rig};

#[tokio::test]
async fn every_predefined_schedule_in_simulated_time() {
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
        let mut sim = Rig::start(config, json!({})).await;
        let got = sim.run_to_end().await;
        assert_eq!(got, want, "{config}");
        assert_eq!(sim.rollout().status, RolloutStatus::Succeeded, "{config}");
        let last = sim.rollout().events.last().unwrap().clone();
        assert_eq!(last.step, Some(want.len() - 1), "{config}: the final event names the last step");
        let st = sim.stage();
        assert_eq!(st.deployment_id, "d-two");
        assert_eq!(st.variables["backend"], "b:2");
        assert!(st.canary_settings.is_none() && st.active_rollout.is_none());
    }
}

#[tokio::test]
async fn alarm_rolls_back_before_promotion_and_restores_the_stage() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({})).await;
    let before = sim.stage().clone();
    sim.tick(0).await;
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    sim.tick(1000).await;
    // INSUFFICIENT_DATA never fails a rollout.
    sim.tick_with(1000, AlarmState::InsufficientData).await;
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick_with(1000, AlarmState::Alarm).await;
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

#[tokio::test]
async fn alarm_after_promotion_restores_the_previous_deployment_and_variables() {
    let mut sim = Rig::start("AllAtOnce", json!({"hooks": {"afterAllowTraffic": "HOOK/after"}})).await;
    sim.tick(0).await;
    assert!(sim.rollout().promoted);
    assert_eq!(sim.stage().deployment_id, "d-two");
    assert!(matches!(sim.rollout().phase, Phase::AfterAllowTraffic { .. }));
    // An alarm needs two breaching periods since traffic moved.
    sim.tick(1000).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    let st = sim.stage();
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert_eq!(st.deployment_id, "d-one");
    assert_eq!(st.variables["backend"], "a:1");
    assert!(st.canary_settings.is_none());
}

#[tokio::test]
async fn alarm_without_auto_rollback_stops_and_leaves_traffic() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({"autoRollback": ["DEPLOYMENT_FAILURE"]})).await;
    sim.tick(0).await;
    // An alarm needs two breaching periods since traffic moved.
    sim.tick(1000).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Stopped);
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    assert!(sim.stage().active_rollout.is_none());
}

#[tokio::test]
async fn hooks_succeed_fail_call_back_and_time_out() {
    // Success: the canary waits at 0% (reachable with the variant header) until the hook succeeds.
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({"hooks": {"beforeAllowTraffic": "HOOK/before"}})).await;
    sim.tick(0).await;
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 0.0);
    assert_eq!(sim.hooks.calls(), 1, "the hook was called");
    sim.tick_with(1000, AlarmState::Alarm).await;
    assert_eq!(
        sim.rollout().status,
        RolloutStatus::InProgress,
        "alarms are not watched before traffic moves"
    );
    let id = sim.hook_id();
    sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Succeeded, None))
        .await
        .unwrap();
    sim.tick(1000).await;
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);

    // Failure: rolled back (DEPLOYMENT_FAILURE), or Failed without it.
    for (auto, want) in [(json!(null), RolloutStatus::RolledBack), (json!([]), RolloutStatus::Failed)] {
        let mut sim = Rig::start(
            "AllAtOnce",
            json!({"hooks": {"beforeAllowTraffic": "HOOK/before"}, "autoRollback": auto}),
        )
        .await;
        sim.tick(0).await;
        let id = sim.hook_id();
        sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Failed, Some("HTTP 500".into())))
            .await
            .unwrap();
        sim.tick(1000).await;
        assert_eq!(sim.rollout().status, want);
        assert!(sim.rollout().events.last().unwrap().reason.contains("HTTP 500"));
        if want == RolloutStatus::RolledBack {
            assert!(sim.stage().canary_settings.is_none());
        }
    }

    // Callback: 202 (Waiting), then the callback reports success.
    let mut sim = Rig::start("AllAtOnce", json!({"hooks": {"beforeAllowTraffic": "HOOK/before"}})).await;
    sim.tick(0).await;
    let id = sim.hook_id();
    sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Waiting, None)).await.unwrap();
    sim.tick(60_000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Succeeded, None))
        .await
        .unwrap();
    sim.tick(1000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert!(
        sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Failed, None)).await.is_err(),
        "an ended rollout takes no hook reports"
    );

    // Timeout: past the deadline (default one hour; here 30 s) the hook fails.
    let mut sim = Rig::start(
        "AllAtOnce",
        json!({"hooks": {"afterAllowTraffic": "HOOK/after", "timeoutSeconds": 30}}),
    )
    .await;
    sim.tick(0).await;
    sim.tick(29_000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick(2_000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert!(sim.rollout().events.last().unwrap().reason.contains("timed out"));
    assert_eq!(sim.stage().deployment_id, "d-one", "rolled back after promotion");
}

#[tokio::test]
async fn stop_and_promote_requests() {
    for (rollback, want) in [(true, RolloutStatus::RolledBack), (false, RolloutStatus::Stopped)] {
        let mut sim = Rig::start("Linear10PercentEvery1Minute", json!({})).await;
        sim.tick(0).await;
        sim.run_for(60_000).await;
        assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 20.0);
        sim.mutate(|s| s.request_stop("r-1", rollback, sim.now())).await.unwrap();
        sim.tick(100).await;
        assert_eq!(sim.rollout().status, want);
        let canary = sim.stage().canary_settings.as_ref().map(|c| c.percent_traffic);
        assert_eq!(canary, if rollback { None } else { Some(20.0) });
        assert!(
            sim.mutate(|s| s.request_stop("r-1", true, sim.now())).await.is_err(),
            "an ended rollout cannot be stopped"
        );
    }
    let mut sim = Rig::start("Canary10Percent30Minutes", json!({})).await;
    sim.tick(0).await;
    sim.mutate(|s| s.request_promote("r-1", sim.now())).await.unwrap();
    sim.tick(100).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert_eq!(sim.stage().deployment_id, "d-two");
}

#[tokio::test]
async fn one_active_rollout_per_stage_and_none_over_a_canary() {
    let mut sim = Rig::start("AllAtOnce", json!({})).await;
    let req: RolloutRequest = serde_json::from_value(json!({"deploymentConfig": "AllAtOnce"})).unwrap();
    let e = sim
        .mutate(|s| s.create_rollout("orders", "prod", req.clone(), "r-2".into(), t0()))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        canarygate_store::StoreError::Model(canarygate_model::Error::Conflict(_))
    ));
    sim.run_to_end().await;
    sim.mutate(|s| s.create_rollout("orders", "prod", req.clone(), "r-2".into(), t0()))
        .await
        .unwrap();
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

#[tokio::test]
async fn a_restart_gap_is_not_counted_and_shows_in_the_events() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({})).await;
    sim.tick(0).await;
    for _ in 0..12 {
        sim.tick(1000).await;
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
    sim.restart();
    sim.clock.advance(100_000);
    sim.tick_with(0, AlarmState::Ok).await;
    let gap_event = sim.rollout().events.last().unwrap().clone();
    assert!(gap_event.reason.contains("resumed after a gap"), "{}", gap_event.reason);
    assert!(gap_event.observed.as_ref().unwrap()["gapMs"].as_i64().unwrap() >= 100_000);
    // The step still needs 290 s of watched time.
    for _ in 0..289 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    sim.tick(1000).await;
    sim.tick(1000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
}

#[tokio::test]
async fn the_analysis_rolls_back_a_worse_canary_with_its_evidence() {
    let mut sim = Rig::start(
        "Canary10Percent30Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}}}),
    )
    .await;
    sim.tick(0).await;
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    let mut seconds = 0;
    while sim.rollout().status.is_active() {
        sim.traffic(1000, 0.03, 0.01);
        sim.tick(1000).await;
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
    // The change's own second and the next are left out (their weight was mixed: the feed does not
    // read them; a batch the analysis leaves out itself counts as excluded).
    let judged = ev["batches"].as_u64().unwrap() + ev["excludedBatches"].as_u64().unwrap();
    assert_eq!(judged, seconds - 2, "{ev}");
}

#[tokio::test]
async fn a_healthy_canary_under_a_shared_incident_is_promoted() {
    let mut sim = Rig::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 500}}),
    )
    .await;
    sim.tick(0).await;
    for s in 0..400 {
        if !sim.rollout().status.is_active() {
            break;
        }
        // Both fail 20% for a minute.
        let rate = if (60..120).contains(&s) { 0.2 } else { 0.01 };
        sim.traffic(1000, rate, rate);
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded, "{:?}", sim.rollout().events);
    assert_eq!(sim.stage().deployment_id, "d-two");
}

#[tokio::test]
async fn min_canary_requests_holds_the_step_until_traffic_comes() {
    let mut sim = Rig::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 1000}}),
    )
    .await;
    sim.tick(0).await;
    // Five quiet minutes and more: 10 requests a second, 1 to the canary.
    for _ in 0..400 {
        sim.traffic(10, 0.0, 0.0);
        sim.tick(1000).await;
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
        sim.traffic(1000, 0.0, 0.0);
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert!(sim.rollout().waiting_for.is_none());
}

#[tokio::test]
async fn an_approval_step_waits_without_limit_keeps_watching_and_continues_when_approved() {
    let gated = || {
        let mut s = state();
        let c = serde_json::from_value(json!({"type": "Steps", "steps": [
            {"percentage": 5, "intervalSeconds": 60}, {"percentage": 5, "approval": true}, {"percentage": 50, "intervalSeconds": 60}]}))
        .unwrap();
        s.put_deployment_config("Gated", c).unwrap();
        s
    };
    let mut sim = Rig::start_in(gated(), "Gated", json!({})).await;
    sim.tick(0).await;
    assert_eq!(sim.stage().canary_settings.as_ref().unwrap().percent_traffic, 5.0);
    // An approval before the approval step is refused.
    assert!(sim.mutate(|s| s.approve_rollout("r-1", "alice", sim.now())).await.is_err());
    for _ in 0..61 {
        sim.tick(1000).await;
    }
    // At the approval step: a day passes, nothing moves; the rollout says why, once.
    for _ in 0..(24 * 60) {
        sim.tick(60_000).await;
    }
    let r = sim.rollout();
    assert_eq!((r.status, r.weight, r.step_index()), (RolloutStatus::InProgress, 5.0, Some(1)));
    assert!(r.waiting_for.as_deref().unwrap().contains("waiting for an approval"));
    assert_eq!(r.events.iter().filter(|e| e.reason.contains("waiting for an approval")).count(), 1);
    // A resume after a restart while waiting shows no gap.
    sim.restart();
    sim.tick_with(1000, AlarmState::Ok).await;
    assert!(!sim.rollout().events.iter().any(|e| e.reason.contains("gap")));
    // Approved: on to 50%, the approver named in the event.
    sim.mutate(|s| s.approve_rollout("r-1", "alice", sim.now())).await.unwrap();
    assert!(
        sim.mutate(|s| s.approve_rollout("r-1", "bob", sim.now())).await.is_err(),
        "a second approval of the same step"
    );
    sim.tick(1000).await;
    let r = sim.rollout();
    assert_eq!(r.weight, 50.0);
    assert!(r.waiting_for.is_none());
    let approved = r.events.iter().find(|e| e.reason == "step approved by alice").unwrap();
    assert_eq!(approved.observed.as_ref().unwrap()["approvedBy"], "alice");
    for _ in 0..61 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);

    // While it waits, an alarm still rolls it back.
    let mut sim = Rig::start_in(gated(), "Gated", json!({})).await;
    sim.tick(0).await;
    for _ in 0..100 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().step_index(), Some(1));
    sim.tick_with(1000, AlarmState::Alarm).await;
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert!(sim.stage().canary_settings.is_none());
}

#[tokio::test]
async fn a_mirroring_phase_comes_before_the_first_shift_and_gives_the_stage_its_own_mirror_back() {
    let mut s = state();
    // The stage mirrors 5% of its GETs and PUTs already: the phase keeps its methods at its own share.
    let ops = [
        canarygate_model::PatchOperation::replace("/mirror/percentTraffic", "5"),
        canarygate_model::PatchOperation::replace("/mirror/methods", "GET,PUT"),
    ];
    s.patch_stage("orders", "prod", &ops, t0()).unwrap();
    let own = s.stage("orders", "prod").unwrap().mirror.clone();
    let mut sim = Rig::start_in(s, "Canary10Percent5Minutes", json!({"mirrorSeconds": 30, "mirrorPercent": 50})).await;
    sim.tick(0).await;
    assert_eq!(sim.rollout().phase, Phase::Mirroring { watched_ms: 0 });
    let st = sim.stage();
    assert_eq!(st.canary_settings.as_ref().unwrap().percent_traffic, 0.0);
    let m = st.mirror.as_ref().unwrap();
    assert_eq!(
        (m.percent_traffic, m.methods.clone()),
        (50.0, vec!["GET".to_string(), "PUT".to_string()])
    );
    for _ in 0..29 {
        sim.tick(1000).await;
    }
    assert!(matches!(sim.rollout().phase, Phase::Mirroring { .. }));
    sim.tick(1000).await;
    assert_eq!(sim.rollout().step_index(), Some(0));
    let st = sim.stage();
    assert_eq!(st.canary_settings.as_ref().unwrap().percent_traffic, 10.0);
    assert_eq!(st.mirror, own, "the stage's own mirroring is back");
    let reasons: Vec<_> = sim.rollout().events.iter().map(|e| e.reason.clone()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("mirroring 50% of production requests (GET, PUT) to the canary for 30 s")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("mirroring ended after 30 s")), "{reasons:?}");
}

#[tokio::test]
async fn an_alarm_or_the_paired_judgement_during_mirroring_rolls_back_before_any_client_is_served() {
    for by_analysis in [false, true] {
        let req = if by_analysis {
            json!({"alarms": [], "mirrorSeconds": 600, "analysis": {"errorRate": {"alpha": 0.01}}})
        } else {
            json!({"mirrorSeconds": 600})
        };
        let mut sim = Rig::start("Canary10Percent5Minutes", req).await;
        sim.tick(0).await;
        assert_eq!(sim.stage().mirror.as_ref().unwrap().percent_traffic, 100.0);
        let mut n = 0;
        while sim.rollout().status.is_active() {
            n += 1;
            assert!(n < 120, "never rolled back");
            if by_analysis {
                sim.mirrored(100, 4, 1);
                sim.tick(1000).await;
            } else {
                let alarm = if n > 3 { AlarmState::Alarm } else { AlarmState::Ok };
                sim.tick_with(1000, alarm).await;
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

#[tokio::test]
async fn a_mirroring_phase_is_validated() {
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

#[tokio::test]
async fn a_paused_rollout_holds_its_weight_and_resumes_with_the_rest_of_its_wait() {
    let mut sim = Rig::start("Linear10PercentEvery1Minute", json!({})).await;
    sim.tick(0).await;
    for _ in 0..20 {
        sim.tick(1000).await;
    }
    sim.mutate(|s| s.pause_rollout("r-1", "alice", sim.now())).await.unwrap();
    assert!(
        sim.mutate(|s| s.pause_rollout("r-1", "bob", sim.now())).await.is_err(),
        "paused twice"
    );
    assert!(
        sim.mutate(|s| s.continue_rollout("r-1", "bob", sim.now())).await.is_err(),
        "continue while paused"
    );
    // Ten minutes paused: ten times the step's interval, and the weight holds.
    for _ in 0..600 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.weight(), Some(10.0));
    assert!(matches!(sim.rollout().phase, Phase::Shifting { step: 0, watched_ms } if (20_000..22_000).contains(&watched_ms)));
    assert!(sim.rollout().events.iter().any(|e| e.reason.starts_with("paused by alice")));
    sim.mutate(|s| s.resume_rollout("r-1", "bob", sim.now())).await.unwrap();
    assert!(
        sim.mutate(|s| s.resume_rollout("r-1", "bob", sim.now())).await.is_err(),
        "not paused"
    );
    // The rest of the minute: 39 more seconds hold the step, the 40th ends it.
    for _ in 0..38 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.weight(), Some(10.0));
    sim.tick(1000).await;
    sim.tick(1000).await;
    assert_eq!(sim.weight(), Some(20.0));
    let resumed = sim
        .rollout()
        .events
        .iter()
        .find(|e| e.reason.starts_with("resumed by bob"))
        .unwrap()
        .clone();
    assert_eq!(resumed.observed.as_ref().unwrap()["resumedBy"], "bob");
}

#[tokio::test]
async fn an_alarm_while_paused_rolls_back() {
    let mut sim = Rig::start("Canary10Percent30Minutes", json!({})).await;
    sim.tick(0).await;
    sim.mutate(|s| s.pause_rollout("r-1", "alice", sim.now())).await.unwrap();
    sim.tick(1000).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    assert_eq!(sim.rollout().status, RolloutStatus::RolledBack);
    assert_eq!(sim.weight(), None);
    assert!(
        sim.mutate(|s| s.resume_rollout("r-1", "alice", sim.now())).await.is_err(),
        "an ended rollout"
    );
}

#[tokio::test]
async fn a_paused_rollout_survives_a_restart_without_a_gap() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({})).await;
    sim.tick(0).await;
    sim.run_for(30_000).await;
    sim.mutate(|s| s.pause_rollout("r-1", "alice", sim.now())).await.unwrap();
    for _ in 0..60 {
        sim.tick(1000).await;
    }
    // The record as stored, read by a new controller.
    let stored: canarygate_model::rollout::Rollout = serde_json::from_value(serde_json::to_value(sim.rollout()).unwrap()).unwrap();
    assert!(stored.paused.is_some());
    // The controller was down for 30 s (its last checkpoint is older still).
    sim.restart();
    sim.clock.advance(30_000);
    sim.tick_with(1000, AlarmState::Ok).await;
    assert!(sim.rollout().paused.is_some());
    assert!(
        !sim.rollout().events.iter().any(|e| e.reason.contains("gap")),
        "no gap while paused"
    );
    assert_eq!(sim.weight(), Some(10.0));
    // Resumed before a restarted controller first saw it: still no gap.
    sim.clock.advance(30_000);
    sim.restart();
    sim.mutate(|s| s.resume_rollout("r-1", "alice", sim.now())).await.unwrap();
    sim.tick_with(100, AlarmState::Ok).await;
    assert!(
        !sim.rollout().events.iter().any(|e| e.reason.contains("gap")),
        "no gap after the resume"
    );
}

#[tokio::test]
async fn continue_ends_a_long_wait_at_once() {
    let mut sim = Rig::start("Linear10PercentEvery10Minutes", json!({})).await;
    sim.tick(0).await;
    sim.tick(1000).await;
    assert_eq!(sim.weight(), Some(10.0));
    sim.mutate(|s| s.continue_rollout("r-1", "carol", sim.now())).await.unwrap();
    sim.tick(100).await;
    assert_eq!(sim.weight(), Some(20.0));
    let e = sim
        .rollout()
        .events
        .iter()
        .find(|e| e.reason.contains("ended early"))
        .unwrap()
        .clone();
    assert_eq!(e.reason, "step ended early on request by carol");
    assert_eq!(e.step, Some(0));
    // The next step's wait is whole.
    sim.run_for(599_000).await;
    assert_eq!(sim.weight(), Some(20.0));
    // Not at an approval step, not before traffic.
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({"hooks": {"beforeAllowTraffic": "HOOK/b"}})).await;
    sim.tick(0).await;
    let err = sim
        .mutate(|s| s.continue_rollout("r-1", "carol", sim.now()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("BeforeAllowTraffic"), "{err}");
    let err = sim
        .mutate(|s| s.pause_rollout("r-1", "carol", sim.now()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only a step's wait"), "{err}");
}

#[tokio::test]
async fn a_dry_run_analysis_records_when_it_would_have_rolled_back_and_the_rollout_goes_on() {
    let mut sim = Rig::start(
        "Canary10Percent5Minutes",
        json!({"alarms": [], "analysis": {"errorRate": {"alpha": 0.01}, "minCanaryRequests": 1000000, "dryRun": true}}),
    )
    .await;
    sim.tick(0).await;
    while sim.rollout().status.is_active() {
        sim.traffic(1000, 0.03, 0.01);
        sim.tick(1000).await;
    }
    let r = sim.rollout();
    // Neither the rejection nor minCanaryRequests held or ended it.
    assert_eq!(r.status, RolloutStatus::Succeeded);
    assert_eq!((sim.now() - t0()).num_seconds(), 300);
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

#[tokio::test]
async fn a_dry_run_alarm_is_noted_each_time_it_enters_alarm_and_never_acts() {
    let mut s = state();
    s.alarms.get_mut("errors").unwrap().alarm.dry_run = true;
    let mut sim = Rig::start_in(s, "Canary10Percent5Minutes", json!({})).await;
    sim.tick(0).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    sim.tick_with(1000, AlarmState::Ok).await;
    sim.tick_with(1000, AlarmState::Alarm).await;
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    assert_eq!(sim.rollout().would_have_rolled_back.len(), 2);
    assert!(sim
        .rollout()
        .events
        .iter()
        .any(|e| e.reason == "dry run: alarm errors left ALARM (OK)"));
    sim.run_to_end().await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert_eq!(sim.rollout().would_have_rolled_back[0].by, "alarm errors");
}

#[tokio::test]
async fn watched_time_carries_over_to_the_replica_that_takes_over() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({})).await;
    let a = sim.replica("a");
    sim.tick(0).await;
    for _ in 0..12 {
        sim.lease("a", 1, 10);
        sim.tick(1000).await;
    }
    // 12 s watched by replica a; its checkpoint at 10 s is in the record.
    assert_eq!(
        sim.rollout().phase,
        Phase::Shifting {
            step: 0,
            watched_ms: 10_000
        }
    );
    // a loses the lease (another replica took it): it stops acting at once.
    sim.lease("a", 1, 0);
    let before = sim.rollout();
    for _ in 0..5 {
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout(), before, "a replica without the lease changes nothing");
    // Replica b takes over 5 s later: from the record's 10 s, the gap reported, not counted.
    sim.replica("b");
    sim.lease("b", 2, 10);
    sim.tick(0).await;
    let gap = sim.rollout().events.last().unwrap().clone();
    assert!(gap.reason.contains("resumed after a gap"), "{}", gap.reason);
    assert!(gap.observed.as_ref().unwrap()["gapMs"].as_i64().unwrap() >= 7_000, "{gap:?}");
    // The old controller, ticking on, still does nothing.
    a.tick(&mut crate::driver::Ticks::default()).await;
    for _ in 0..289 {
        sim.lease("b", 2, 10);
        sim.tick(1000).await;
    }
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress, "290 s of the step's 300 were left");
    sim.lease("b", 2, 10);
    sim.tick(1000).await;
    sim.tick(1000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
}

#[tokio::test]
async fn a_hook_call_cut_short_by_a_restart_is_made_again() {
    let mut sim = Rig::start("AllAtOnce", json!({"hooks": {"beforeAllowTraffic": "HOOK/hang"}})).await;
    sim.tick_unsettled(0).await;
    sim.hooks.wait_calls(1).await;
    assert_eq!(sim.controller.tasks_in_flight(), 1, "the call is the controller's task");
    let id = sim.hook_id();
    // The process restarts while the call is unanswered: the new controller calls the same execution.
    sim.restart();
    sim.tick_unsettled(1000).await;
    sim.hooks.wait_calls(2).await;
    assert_eq!(sim.hook_id(), id);
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress);
    // Once answered (by the callback), it is not called a third time by the next restart.
    sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Waiting, None)).await.unwrap();
    sim.restart();
    sim.tick(1000).await;
    sim.mutate(|s| s.record_hook("r-1", &id, HookStatus::Succeeded, None))
        .await
        .unwrap();
    sim.tick(1000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
    assert_eq!(sim.hooks.calls(), 2);
}

#[tokio::test]
async fn hook_replies_are_recorded_as_the_engine_maps_them() {
    for (path, status, message) in [
        ("ok", RolloutStatus::Succeeded, "HTTP 200"),
        ("fail", RolloutStatus::RolledBack, "HTTP 500: boom"),
    ] {
        let mut sim = Rig::start("AllAtOnce", json!({"hooks": {"afterAllowTraffic": format!("HOOK/{path}")}})).await;
        sim.tick(0).await;
        sim.tick(100).await;
        let r = sim.rollout();
        assert_eq!(r.status, status, "{path}");
        if status == RolloutStatus::RolledBack {
            let last = &r.events.last().unwrap().reason;
            assert!(last.contains(message), "{last}");
        }
    }
}

#[tokio::test]
async fn a_day_long_plan_runs_in_simulated_time() {
    let mut s = state();
    let steps: Vec<_> = [1, 2, 5, 10, 25, 50]
        .iter()
        .map(|p| json!({"percentage": p, "intervalSeconds": 4 * 3600}))
        .collect();
    let c = serde_json::from_value(json!({"type": "Steps", "steps": steps})).unwrap();
    s.put_deployment_config("Day", c).unwrap();
    let mut sim = Rig::start_in(s, "Day", json!({})).await;
    sim.tick(0).await;
    let mut seen = vec![(0, sim.weight().unwrap())];
    while sim.rollout().status.is_active() {
        sim.tick(2000).await;
        let w = sim.weight().unwrap_or(100.0);
        if w != seen.last().unwrap().1 {
            seen.push(((sim.now() - t0()).num_seconds(), w));
        }
        assert!(sim.now() - t0() < Duration::hours(25), "never ended: {:?}", sim.rollout().phase);
    }
    let h = 4 * 3600;
    assert_eq!(
        seen,
        vec![
            (0, 1.0),
            (h, 2.0),
            (2 * h, 5.0),
            (3 * h, 10.0),
            (4 * h, 25.0),
            (5 * h, 50.0),
            (6 * h, 100.0)
        ]
    );
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
}

#[tokio::test]
async fn a_stalled_controller_does_not_count_the_stall_as_watched_time() {
    let mut sim = Rig::start("Canary10Percent5Minutes", json!({})).await;
    sim.tick(0).await;
    sim.run_for(100_000).await;
    // The process stalls for a minute (a host suspended, a lost lease's wait): nobody watched.
    sim.tick(60_000).await;
    sim.run_for(198_000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::InProgress, "200 s of the step's 300 were left");
    sim.run_for(3_000).await;
    assert_eq!(sim.rollout().status, RolloutStatus::Succeeded);
}

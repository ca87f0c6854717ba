//! The canary analysis benchmark's small seeded run, as a test: a few hundred healthy and a few hundred
//! bad simulated rollouts through the real judgement code. The full run is `bash bench/analysis`.

use canarygate_bench::analysis::{replicate, summarize, Scenario, Shift};

const ALPHA: f64 = 0.05;

/// Share of false alarms at most alpha plus three standard errors.
fn assert_false_alarms(s: &Scenario, runs: usize) {
    let sum = summarize(&replicate(s, runs, ALPHA, 2)[0]);
    let bound = ALPHA + 3.0 * (ALPHA * (1.0 - ALPHA) / runs as f64).sqrt();
    assert!(
        sum.rate <= bound,
        "{}: {:.1}% false alarms over {runs} runs (bound {:.1}%)",
        s.name,
        sum.rate * 100.0,
        bound * 100.0
    );
}

#[test]
fn healthy_canaries_raise_false_alarms_below_alpha() {
    assert_false_alarms(&Scenario::errors("stationary", 1.0), 300);
    assert_false_alarms(
        &Scenario {
            incident: true,
            ..Scenario::errors("shared incident", 1.0)
        },
        300,
    );
    assert_false_alarms(
        &Scenario {
            ramp: true,
            drift: true,
            ..Scenario::errors("ramp", 1.0)
        },
        300,
    );
    assert_false_alarms(&Scenario::latency("latency", Shift::None), 200);
}

#[test]
fn a_canary_with_three_times_the_errors_is_caught_fast_and_before_the_other_judges() {
    let per_judge = replicate(&Scenario::errors("rr3", 3.0), 300, ALPHA, 2);
    let (ours, threshold, kayenta) = (summarize(&per_judge[0]), summarize(&per_judge[1]), summarize(&per_judge[2]));
    // The reference simulation (ANALYSIS.md §4) has a median of 30 s.
    assert!(ours.median_s <= 60, "median {} s", ours.median_s);
    assert!(ours.rate >= 0.99, "detected in {:.1}%", ours.rate * 100.0);
    assert!(
        ours.median_s < threshold.median_s,
        "{} s against the threshold alarm's {} s",
        ours.median_s,
        threshold.median_s
    );
    assert!(
        ours.median_s < kayenta.median_s,
        "{} s against the Kayenta-style judge's {} s",
        ours.median_s,
        kayenta.median_s
    );
}

#[test]
fn a_ten_percent_slower_canary_is_caught_within_a_minute() {
    let sum = summarize(&replicate(&Scenario::latency("x1.10", Shift::Scale(1.10)), 100, ALPHA, 2)[0]);
    assert!(sum.median_s <= 60, "median {} s", sum.median_s);
}

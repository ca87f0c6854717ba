//! The canary analysis benchmark (`ANALYSIS.md` §4): every scenario, three judges on common random
//! numbers, a JSON file of the results and a Markdown section for `docs/BENCHMARKS.md`.
//!
//!   analysis-bench [--healthy N] [--bad N] [--alpha A] [--threads T] --json FILE --markdown FILE

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use canarygate_bench::analysis::{replicate, summarize, Scenario, Shift, Summary, HORIZON, JUDGES};
use serde_json::json;

struct Row {
    scenario: Scenario,
    group: &'static str,
    label: String,
    summaries: Vec<Summary>,
}

fn scenarios() -> Vec<(&'static str, String, Scenario)> {
    let mut v = Vec::new();
    let e = |name: &str, rr: f64| Scenario::errors(name, rr);
    // Healthy error-rate scenarios.
    v.push(("errors-healthy", "stationary".to_string(), e("stationary", 1.0)));
    v.push((
        "errors-healthy",
        "shared incident (both ×6 errors for 3 min)".into(),
        Scenario {
            incident: true,
            ..e("incident", 1.0)
        },
    ));
    v.push((
        "errors-healthy",
        "drifting baseline (±50%)".into(),
        Scenario {
            drift: true,
            ..e("drift", 1.0)
        },
    ));
    v.push((
        "errors-healthy",
        "weight ramp 1→5→10→25→50% with drifting baseline".into(),
        Scenario {
            ramp: true,
            drift: true,
            ..e("ramp", 1.0)
        },
    ));
    v.push((
        "errors-healthy",
        "sticky clients, errors in bursts of 3".into(),
        Scenario {
            sticky_bursts: true,
            ..e("sticky", 1.0)
        },
    ));
    for rr in [1.25, 1.5, 2.0, 3.0, 5.0] {
        v.push(("errors-bad", format!("RR {rr}"), e(&format!("rr{rr}"), rr)));
    }
    // RR 2 under other rates, shares and baselines.
    for (label, s) in [
        (
            "20 req/s",
            Scenario {
                rate: 20.0,
                ..e("rate20", 2.0)
            },
        ),
        (
            "2,000 req/s",
            Scenario {
                rate: 2000.0,
                ..e("rate2000", 2.0)
            },
        ),
        (
            "1% canary",
            Scenario {
                weight: 0.01,
                ..e("w1", 2.0)
            },
        ),
        (
            "25% canary",
            Scenario {
                weight: 0.25,
                ..e("w25", 2.0)
            },
        ),
        (
            "0.1% baseline",
            Scenario {
                baseline: 0.001,
                ..e("b01", 2.0)
            },
        ),
        (
            "2% baseline",
            Scenario {
                baseline: 0.02,
                ..e("b2", 2.0)
            },
        ),
    ] {
        v.push((
            "variations-healthy",
            label.to_string(),
            Scenario {
                rr: 1.0,
                healthy: true,
                ..s.clone()
            },
        ));
        v.push(("variations-bad", label.to_string(), s));
    }
    let l = |name: &str, shift: Shift| Scenario::latency(name, shift);
    v.push(("latency-healthy", "stationary".into(), l("lat-stationary", Shift::None)));
    v.push((
        "latency-healthy",
        "shared incident (both ×2 latency for 3 min)".into(),
        Scenario {
            incident: true,
            ..l("lat-incident", Shift::None)
        },
    ));
    for (label, shift) in [
        ("×1.05", Shift::Scale(1.05)),
        ("×1.10", Shift::Scale(1.10)),
        ("×1.25", Shift::Scale(1.25)),
        ("1% +500 ms", Shift::Tail(0.01, 500.0)),
        ("5% +200 ms", Shift::Tail(0.05, 200.0)),
    ] {
        v.push(("latency-bad", label.to_string(), l(label, shift)));
    }
    v
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: usize| -> Result<usize> {
        arg(&args, name).map_or(Ok(default), |v| v.parse().with_context(|| format!("{name} {v:?}")))
    };
    let healthy_runs = num("--healthy", 2000)?;
    let bad_runs = num("--bad", 2000)?;
    let threads = num("--threads", std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let alpha: f64 = arg(&args, "--alpha").map_or(Ok(0.05), |v| v.parse().context("--alpha"))?;
    let (Some(json_path), Some(md_path)) = (arg(&args, "--json"), arg(&args, "--markdown")) else {
        bail!("usage: analysis-bench [--healthy N] [--bad N] [--alpha A] [--threads T] --json FILE --markdown FILE");
    };
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for (group, label, s) in scenarios() {
        let runs = match (s.healthy, group) {
            (true, "variations-healthy") => (healthy_runs / 4).max(1),
            (true, _) => healthy_runs,
            (false, _) => bad_runs,
        };
        let t = std::time::Instant::now();
        let per_judge = replicate(&s, runs, alpha, threads);
        let summaries: Vec<Summary> = per_judge.iter().map(|o| summarize(o)).collect();
        eprintln!(
            "analysis-bench: {group} / {label}: {runs} runs in {:.1} s; canarygate {:.1}% median {} s",
            t.elapsed().as_secs_f64(),
            summaries[0].rate * 100.0,
            summaries[0].median_s
        );
        rows.push(Row {
            scenario: s,
            group,
            label,
            summaries,
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    let raw = json!({
        "alpha": alpha, "horizonSeconds": HORIZON, "healthyRuns": healthy_runs, "badRuns": bad_runs,
        "seconds": elapsed, "judges": JUDGES,
        "rows": rows.iter().map(|r| json!({
            "group": r.group, "label": r.label, "healthy": r.scenario.healthy,
            "rr": r.scenario.rr, "rate": r.scenario.rate, "weight": r.scenario.weight, "baseline": r.scenario.baseline,
            "judges": r.summaries.iter().zip(JUDGES).map(|(s, j)| json!({
                "judge": j, "runs": s.runs, "rate": s.rate, "rateUpper95": s.rate_upper,
                "medianSeconds": s.median_s, "p90Seconds": s.p90_s,
                "medianCanaryRequests": s.median_canary_requests, "medianBadRequests": s.median_bad_requests,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&raw)?).with_context(|| json_path.clone())?;
    std::fs::write(&md_path, markdown(&rows, alpha, healthy_runs, bad_runs, elapsed, &args)).with_context(|| md_path.clone())?;
    eprintln!("analysis-bench: done in {elapsed:.0} s; {json_path}, {md_path}");
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// "median / p90 s (detected%)".
fn detect(s: &Summary) -> String {
    let med = if s.median_s >= HORIZON {
        "never".to_string()
    } else {
        s.median_s.to_string()
    };
    let p90 = if s.p90_s >= HORIZON {
        "never".to_string()
    } else {
        s.p90_s.to_string()
    };
    format!("{med} / {p90} ({})", pct(s.rate))
}

fn markdown(rows: &[Row], alpha: f64, healthy: usize, bad: usize, elapsed: f64, args: &[String]) -> String {
    let mut m = String::new();
    let by = |g: &'static str| rows.iter().filter(move |r| r.group == g);
    let cmd = format!(
        "bash bench/analysis{}",
        if args.iter().any(|a| a == "--quick-run") { " --quick" } else { "" }
    );
    let _ = writeln!(m, "## Canary analysis: time to detect and false alarms\n");
    let _ = writeln!(
        m,
        "Written by `{cmd}` ({elapsed:.0} s on this machine). A simulation in simulated time (ANALYSIS.md §4) that drives the \
         real judgement code (`canarygate_model::analysis`), the product's own threshold-alarm rule \
         (`canarygate_model::alarm::evaluate`) and a Kayenta-style judge on the same random numbers: per second, \
         Poisson arrivals, each routed to the canary with the weight, errors and lognormal latencies (median \
         100 ms, σ 0.6) drawn per variant and binned into the gateway's histogram buckets. {healthy} runs per \
         healthy scenario, {bad} per regression, 30-minute horizon, α = {alpha} per judgement; unless a row says \
         otherwise 200 req/s, 10% canary, 0.5% baseline 5xx rate. A run that never detects counts as the horizon \
         in medians (\"never\"). Judges:\n"
    );
    let _ = writeln!(
        m,
        "- **canarygate**: the analysis of PRODUCT.md §12 (GridRR on errors; rank and exceedance bets on latency), \
         rejecting at e ≥ 1/α.\n\
         - **threshold**: canary 5XXError Average > 2× the baseline (static), or canary p99 > 1.25× production's \
         p99, in 3 of 5 one-minute periods (CloudWatch-style M of N).\n\
         - **kayenta**: Kayenta's NetflixACAJudge defaults for one metric, every 5 minutes over that window's \
         datapoints, one per variant every 10 s as a metrics store's query step gives them (error rate; mean \
         latency): a one-sided Mann–Whitney test at confidence 0.98 and the canary's mean more than 25% (the \
         tolerance) above production's, with no correction for judging again.\n"
    );
    let _ = writeln!(
        m,
        "### Error rate: false alarms (healthy canary) — share of runs rejected, upper 95% bound\n"
    );
    let _ = writeln!(
        m,
        "| scenario | canarygate | canarygate, raw counts | threshold | kayenta |\n|---|---|---|---|---|"
    );
    for r in by("errors-healthy") {
        let s = &r.summaries;
        let _ = writeln!(
            m,
            "| {} | {} (≤ {}) | {} | {} | {} |",
            r.label,
            pct(s[0].rate),
            pct(s[0].rate_upper),
            pct(s[3].rate),
            pct(s[1].rate),
            pct(s[2].rate)
        );
    }
    let _ = writeln!(
        m,
        "\n\"raw counts\" is the same judgement fed every error instead of distinct erroring sticky keys: \
         it differs from canarygate only in the sticky-bursts row, which is why the gateway counts distinct keys \
         when stickiness is on.\n"
    );
    let _ = writeln!(
        m,
        "### Error rate: time to detect a worse canary — median / p90 seconds (detected within 30 min)\n"
    );
    let _ = writeln!(m, "| regression | canarygate | threshold | kayenta | canarygate: canary requests / bad requests served (median) |\n|---|---|---|---|---|");
    for r in by("errors-bad") {
        let s = &r.summaries;
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} / {} |",
            r.label,
            detect(&s[0]),
            detect(&s[1]),
            detect(&s[2]),
            s[0].median_canary_requests,
            s[0].median_bad_requests
        );
    }
    let _ = writeln!(
        m,
        "\n### Error rate under other conditions: RR 2 detected, and false alarms of the same judges on a healthy canary\n"
    );
    let _ = writeln!(
        m,
        "| conditions | canarygate: RR 2 / healthy | threshold: RR 2 / healthy | kayenta: RR 2 / healthy |\n|---|---|---|---|"
    );
    for r in by("variations-bad") {
        let Some(h) = rows.iter().find(|x| x.group == "variations-healthy" && x.label == r.label) else {
            continue;
        };
        let cell = |j: usize| format!("{} / {} false alarms", detect(&r.summaries[j]), pct(h.summaries[j].rate));
        let _ = writeln!(m, "| {} | {} | {} | {} |", r.label, cell(0), cell(1), cell(2));
    }
    let _ = writeln!(
        m,
        "\nWith few canary requests a minute (20 req/s, 1% canary, 0.1% baseline) the static threshold fires on noise \
         as often on a healthy canary as on a bad one; the sequential judgement waits for evidence instead.\n"
    );
    let _ = writeln!(
        m,
        "\n### Latency: false alarms and time to detect — median / p90 seconds (detected within 30 min)\n"
    );
    let _ = writeln!(m, "| scenario | canarygate | threshold | kayenta |\n|---|---|---|---|");
    for r in by("latency-healthy") {
        let s = &r.summaries;
        let _ = writeln!(
            m,
            "| healthy: {} (false alarms) | {} (≤ {}) | {} | {} |",
            r.label,
            pct(s[0].rate),
            pct(s[0].rate_upper),
            pct(s[1].rate),
            pct(s[2].rate)
        );
    }
    for r in by("latency-bad") {
        let s = &r.summaries;
        let _ = writeln!(m, "| {} | {} | {} | {} |", r.label, detect(&s[0]), detect(&s[1]), detect(&s[2]));
    }
    let _ = writeln!(m, "\n![time to detect against relative risk](analysis.png)\n");
    // The goals of ANALYSIS.md §4, checked.
    let _ = writeln!(m, "### Goals (ANALYSIS.md §4)\n");
    let find = |g: &str, label: &str| rows.iter().find(|r| r.group == g && r.label == label);
    let worst_fa = rows
        .iter()
        .filter(|r| r.group == "errors-healthy" || r.group == "latency-healthy")
        .map(|r| (r.summaries[0].rate_upper, r.label.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    let mut goal = |ok: bool, text: String| {
        let _ = writeln!(m, "- {} {text}", if ok { "met:" } else { "MISSED:" });
    };
    goal(
        worst_fa.0 <= 0.05,
        format!(
            "false alarms ≤ 5% (upper 95% bound) in every healthy scenario — worst {} ({})",
            pct(worst_fa.0),
            worst_fa.1
        ),
    );
    if let Some(r) = find("errors-bad", "RR 2") {
        goal(
            r.summaries[0].median_s <= 100,
            format!("RR 2 detected in ≤ 100 s median — {} s", r.summaries[0].median_s),
        );
    }
    if let Some(r) = find("latency-bad", "×1.10") {
        goal(
            r.summaries[0].median_s <= 30,
            format!("latency ×1.10 in ≤ 30 s median — {} s", r.summaries[0].median_s),
        );
    }
    for label in ["1% +500 ms", "5% +200 ms"] {
        if let Some(r) = find("latency-bad", label) {
            goal(
                r.summaries[0].rate >= 0.9,
                format!(
                    "tail-only regression {label} detected within 30 min in ≥ 90% of runs — {}",
                    pct(r.summaries[0].rate)
                ),
            );
        }
    }
    let slower: Vec<String> = rows
        .iter()
        .filter(|r| r.group == "errors-bad" || r.group == "latency-bad")
        .filter(|r| r.summaries[0].median_s > r.summaries[1].median_s.min(r.summaries[2].median_s))
        .map(|r| {
            format!(
                "{} ({} s against threshold {} s, kayenta {} s)",
                r.label, r.summaries[0].median_s, r.summaries[1].median_s, r.summaries[2].median_s
            )
        })
        .collect();
    goal(
        slower.is_empty(),
        if slower.is_empty() {
            "at least as fast (median) as the threshold alarm and the Kayenta-style judge in every regression".into()
        } else {
            format!("slower (median) than another judge in: {}", slower.join("; "))
        },
    );
    m
}

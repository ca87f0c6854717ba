//! The canary analysis benchmark of `ANALYSIS.md` §4: simulated rollouts in simulated time, seeded,
//! judged by three judges on the *same* random numbers (common random numbers):
//!
//! - canarygate's analysis: the real judgement code of `canarygate_model::analysis` (`ErrorJudge`,
//!   `LatencyJudge`), fed one batch per second;
//! - the product's own threshold alarm (`canarygate_model::alarm::evaluate`, a CloudWatch-style M-of-N
//!   rule): canary 5XXError Average above 2× the baseline, or the canary's p99 above 1.25× production's,
//!   in 3 of 5 one-minute periods;
//! - a Kayenta-style judge with NetflixACAJudge's defaults: every 5 minutes, over that window's
//!   10-second datapoints of each variant (error rate; mean latency), a one-sided Mann–Whitney test at
//!   confidence 0.98 and an effect beyond the tolerance of 25%, with no correction for judging again.
//!
//! Requests arrive as a Poisson stream, each routed to the canary with the weight; errors and latencies
//! are drawn per variant. A judge's time to detect is the first second it rejects; a run that never
//! rejects within the horizon counts as the horizon in medians (and as not detected).

use canarygate_model::alarm::{evaluate, Alarm, AlarmState, Comparison, EvaluatedPoint, TreatMissingData};
use canarygate_model::analysis::{percentile_ms, Batch, ErrorJudge, LatencyJudge, Side};
use canarygate_model::{Metric, Statistic, Variant};

/// The horizon of a simulated rollout, seconds.
pub const HORIZON: u64 = 1800;
const BUCKETS: usize = canarygate_metrics::BUCKETS;

/// What changes with the canary, or around both variants.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// A healthy canary (any rejection is a false alarm).
    pub healthy: bool,
    /// Requests per second (Poisson).
    pub rate: f64,
    /// Canary weight (0..1); with `ramp`, the weight schedule 1% → 5% → 10% → 25% → 50%.
    pub weight: f64,
    pub ramp: bool,
    /// Production's 5xx rate.
    pub baseline: f64,
    /// The canary's relative risk of a 5xx.
    pub rr: f64,
    /// The baseline drifts ±50% over the horizon.
    pub drift: bool,
    /// Minutes 10 to 13: both variants ×6 errors (×2 latency).
    pub incident: bool,
    /// Errors come in bursts of 3 requests from one sticky client.
    pub sticky_bursts: bool,
    /// A latency scenario (else an error-rate one).
    pub latency: Option<Shift>,
}

/// How the canary's latency differs from production's (lognormal, median 100 ms, σ 0.6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shift {
    None,
    /// Every canary request slower by this factor.
    Scale(f64),
    /// This share of canary requests slower by this many milliseconds.
    Tail(f64, f64),
}

impl Scenario {
    pub fn errors(name: &str, rr: f64) -> Scenario {
        Scenario {
            name: name.into(),
            healthy: rr <= 1.0,
            rate: 200.0,
            weight: 0.1,
            ramp: false,
            baseline: 0.005,
            rr,
            drift: false,
            incident: false,
            sticky_bursts: false,
            latency: None,
        }
    }

    pub fn latency(name: &str, shift: Shift) -> Scenario {
        Scenario {
            healthy: shift == Shift::None,
            latency: Some(shift),
            ..Scenario::errors(name, 1.0)
        }
    }

    fn weight_at(&self, t: u64) -> f64 {
        if self.ramp {
            [0.01, 0.05, 0.10, 0.25, 0.50][((t * 5) / HORIZON).min(4) as usize]
        } else {
            self.weight
        }
    }

    fn incident_at(&self, t: u64) -> bool {
        self.incident && (600..780).contains(&t)
    }
}

/// The judges.
pub const JUDGES: [&str; 4] = ["canarygate", "threshold", "kayenta", "canarygate (raw error counts)"];

/// One judge's outcome in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    /// The second of the first rejection.
    pub detected: Option<u64>,
    /// Canary requests and canary errors served until then (or until the horizon).
    pub canary_requests: u64,
    pub bad_requests: u64,
}

// === Random numbers ===

/// A seeded generator (wyrand, via fastrand) with the draws the simulation needs.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }

    fn uniform(&mut self) -> f64 {
        // In (0, 1): never 0, so its log is finite.
        (self.0.u64(..(1 << 53)) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            let limit = (-mean).exp();
            let (mut k, mut p) = (0u64, 1.0);
            loop {
                p *= self.uniform();
                if p <= limit {
                    return k;
                }
                k += 1;
            }
        }
        (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64
    }

    /// Binomial(n, p): exact by geometric waiting times while n·p is small, else normal.
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mean = n as f64 * p;
        if mean < 25.0 {
            let lq = (1.0 - p).ln();
            let (mut k, mut pos) = (0u64, 0u64);
            loop {
                let gap = (self.uniform().ln() / lq).floor() as u64;
                pos = pos.saturating_add(gap).saturating_add(1);
                if pos > n {
                    return k;
                }
                k += 1;
            }
        }
        let sd = (mean * (1.0 - p)).sqrt();
        (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64
    }
}

// === Latency ===

fn bounds_us() -> &'static [u64; BUCKETS - 1] {
    canarygate_metrics::bucket_bounds_us()
}

fn bucket(us: f64) -> usize {
    bounds_us().partition_point(|&b| (b as f64) <= us)
}

fn latency_us(rng: &mut Rng, canary: bool, shift: Shift, incident: bool) -> f64 {
    let mut ms = 100.0 * (0.6 * rng.normal()).exp();
    if incident {
        ms *= 2.0;
    }
    if canary {
        match shift {
            Shift::None => {}
            Shift::Scale(k) => ms *= k,
            Shift::Tail(share, add) => {
                if rng.uniform() < share {
                    ms += add;
                }
            }
        }
    }
    ms * 1000.0
}

// === The other judges ===

/// Φ(x), the standard normal distribution function (erfc by a Chebyshev fit, relative error < 1.2e-7).
fn phi(x: f64) -> f64 {
    let z = (x / std::f64::consts::SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r / 2.0
    } else {
        r / 2.0
    }
}

/// One-sided Mann–Whitney p-value that `canary` tends to be larger, from counts per ordered class
/// (ties within a class), by the normal approximation with tie and continuity corrections.
fn mann_whitney(canary: &[u64], production: &[u64]) -> f64 {
    let (nc, np): (u64, u64) = (canary.iter().sum(), production.iter().sum());
    if nc == 0 || np == 0 {
        return 1.0;
    }
    let n = (nc + np) as f64;
    let (mut below, mut rank_sum, mut ties) = (0u64, 0.0, 0.0);
    for (c, p) in canary.iter().zip(production) {
        let t = c + p;
        if t == 0 {
            continue;
        }
        let mid = below as f64 + (t as f64 + 1.0) / 2.0;
        rank_sum += *c as f64 * mid;
        ties += (t as f64).powi(3) - t as f64;
        below += t;
    }
    let (nc, np) = (nc as f64, np as f64);
    let u = rank_sum - nc * (nc + 1.0) / 2.0;
    let var = nc * np / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = (u - nc * np / 2.0 - 0.5) / var.sqrt();
    1.0 - phi(z)
}

/// Seconds per Kayenta datapoint (a metrics store's query step).
const KAYENTA_STEP: u64 = 10;

/// Kayenta's NetflixACAJudge defaults for one metric, over the window's datapoints of each variant:
/// "High" (the canary fails) when a one-sided Mann–Whitney test says the canary's values are larger at
/// confidence 0.98 (two-sided, so p < 0.01 one-sided) and the effect is beyond the tolerance of 0.25 (the
/// canary's mean at least 25% above the baseline's).
fn kayenta_high(canary: &[f64], production: &[f64]) -> bool {
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let (Some(mc), Some(mp)) = (mean(canary), mean(production)) else {
        return false;
    };
    // Ties share a class: the distinct values in order.
    let mut all: Vec<f64> = canary.iter().chain(production).copied().collect();
    all.sort_by(f64::total_cmp);
    all.dedup();
    let classes = |v: &[f64]| {
        let mut out = vec![0u64; all.len()];
        for x in v {
            out[all.partition_point(|y| y < x)] += 1;
        }
        out
    };
    mann_whitney(&classes(canary), &classes(production)) < 0.01 && mc > 1.25 * mp
}

/// The middle of each latency bucket, microseconds (geometric; the last bucket at its lower bound).
fn bucket_values() -> Vec<f64> {
    let b = bounds_us();
    (0..BUCKETS)
        .map(|j| match j {
            0 => b[0] as f64 / 2.0,
            j if j < BUCKETS - 1 => (b[j - 1] as f64 * b[j] as f64).sqrt(),
            _ => b[BUCKETS - 2] as f64,
        })
        .collect()
}

fn threshold_alarm(threshold: f64) -> Alarm {
    Alarm {
        name: "bench".into(),
        api: "a".into(),
        stage: "s".into(),
        variant: Variant::Canary,
        metric: Some(Metric::Error5xx),
        statistic: Some(Statistic::Average),
        prometheus: None,
        period_seconds: 60,
        evaluation_periods: 5,
        datapoints_to_alarm: 3,
        comparison: Comparison::GreaterThanThreshold,
        threshold,
        treat_missing_data: TreatMissingData::Missing,
        dry_run: false,
    }
}

// === One run ===

/// Simulates one rollout of `s` with `seed`; returns each judge's outcome (in the order of [`JUDGES`]).
pub fn run(s: &Scenario, seed: u64, alpha: f64) -> [Outcome; 4] {
    let mut rng = Rng::new(seed);
    let mut out = [Outcome::default(); 4];
    let mut errors = ErrorJudge::new(alpha);
    let mut raw = ErrorJudge::new(alpha);
    let mut latency = LatencyJudge::new(alpha);
    let alarm = threshold_alarm(if s.latency.is_some() { 1.25 } else { 2.0 * s.baseline });
    let mut alarm_state = AlarmState::InsufficientData;
    let mut minutes: Vec<EvaluatedPoint> = Vec::new();
    // The current minute (threshold alarm) and 5-minute window (Kayenta).
    let (mut min_c, mut min_p) = ((0u64, 0u64), (0u64, 0u64));
    let (mut min_hc, mut min_hp) = (vec![0u64; BUCKETS], vec![0u64; BUCKETS]);
    // Kayenta: one datapoint per variant every KAYENTA_STEP seconds (error rate, or mean latency).
    let (mut step_c, mut step_p) = ((0u64, 0u64), (0u64, 0u64));
    let (mut step_hc, mut step_hp) = (vec![0u64; BUCKETS], vec![0u64; BUCKETS]);
    let (mut win_c, mut win_p): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let values = bucket_values();
    let (mut canary_requests, mut canary_errors) = (0u64, 0u64);
    for t in 0..HORIZON {
        let w = s.weight_at(t);
        let n = rng.poisson(s.rate);
        let nc = rng.binomial(n, w);
        let np = n - nc;
        let incident = s.incident_at(t);
        let mut batch = Batch {
            second: t,
            rho: w,
            canary: Side {
                requests: nc,
                ..Side::default()
            },
            production: Side {
                requests: np,
                ..Side::default()
            },
        };
        let (ec, ep);
        match s.latency {
            None => {
                let mut p = s.baseline;
                if s.drift {
                    p *= 1.0 + 0.5 * (std::f64::consts::TAU * t as f64 / HORIZON as f64).sin();
                }
                if incident {
                    p *= 6.0;
                }
                let pc = (p * s.rr).min(1.0);
                if s.sticky_bursts {
                    // Bursts of 3 errors, each burst from one client: one distinct erroring key.
                    let (bc, bp) = (rng.binomial(nc / 3, pc), rng.binomial(np / 3, p));
                    (ec, ep) = (3 * bc, 3 * bp);
                    batch.canary.errors = bc;
                    batch.production.errors = bp;
                } else {
                    (ec, ep) = (rng.binomial(nc, pc), rng.binomial(np, p));
                    batch.canary.errors = ec;
                    batch.production.errors = ep;
                }
            }
            Some(shift) => {
                (ec, ep) = (0, 0);
                let (mut hc, mut hp) = (vec![0u64; BUCKETS], vec![0u64; BUCKETS]);
                for _ in 0..nc {
                    hc[bucket(latency_us(&mut rng, true, shift, incident))] += 1;
                }
                for _ in 0..np {
                    hp[bucket(latency_us(&mut rng, false, shift, incident))] += 1;
                }
                batch.canary.latency = hc;
                batch.production.latency = hp;
            }
        }
        canary_requests += nc;
        canary_errors += ec;
        // canarygate's analysis (and, for errors, the same judge on raw counts).
        let bad = if s.latency.is_some() { 0 } else { canary_errors };
        let mark = |o: &mut Outcome, hit: bool| {
            if o.detected.is_none() && hit {
                *o = Outcome {
                    detected: Some(t + 1),
                    canary_requests,
                    bad_requests: bad,
                };
            }
        };
        if out[0].detected.is_none() {
            let hit = if s.latency.is_some() {
                latency.feed(&batch);
                latency.rejected()
            } else {
                errors.feed(&batch);
                errors.rejected()
            };
            mark(&mut out[0], hit);
        }
        if s.latency.is_none() && out[3].detected.is_none() {
            let mut raw_batch = batch.clone();
            raw_batch.canary.errors = ec;
            raw_batch.production.errors = ep;
            raw.feed(&raw_batch);
            mark(&mut out[3], raw.rejected());
        }
        // Threshold alarm, evaluated at the end of every minute.
        min_c = (min_c.0 + ec, min_c.1 + nc);
        min_p = (min_p.0 + ep, min_p.1 + np);
        step_c = (step_c.0 + ec, step_c.1 + nc);
        step_p = (step_p.0 + ep, step_p.1 + np);
        for j in 0..BUCKETS {
            if let (Some(c), Some(p)) = (batch.canary.latency.get(j), batch.production.latency.get(j)) {
                min_hc[j] += c;
                min_hp[j] += p;
                step_hc[j] += c;
                step_hp[j] += p;
            }
        }
        if (t + 1) % KAYENTA_STEP == 0 {
            let point = |(e, n): (u64, u64), h: &[u64]| -> Option<f64> {
                if s.latency.is_some() {
                    let k: u64 = h.iter().sum();
                    (k > 0).then(|| h.iter().zip(&values).map(|(c, v)| *c as f64 * v).sum::<f64>() / k as f64)
                } else {
                    (n > 0).then(|| e as f64 / n as f64)
                }
            };
            win_c.extend(point(step_c, &step_hc));
            win_p.extend(point(step_p, &step_hp));
            step_c = (0, 0);
            step_p = (0, 0);
            step_hc.iter_mut().for_each(|x| *x = 0);
            step_hp.iter_mut().for_each(|x| *x = 0);
        }
        if (t + 1) % 60 == 0 {
            let value = if s.latency.is_some() {
                match (percentile_ms(&min_hc, 0.99, bounds_us()), percentile_ms(&min_hp, 0.99, bounds_us())) {
                    (Some(c), Some(p)) if p > 0.0 => Some(c / p),
                    _ => None,
                }
            } else {
                (min_c.1 > 0).then(|| min_c.0 as f64 / min_c.1 as f64)
            };
            minutes.push(EvaluatedPoint { timestamp: t + 1, value });
            let first = minutes.len().saturating_sub(5);
            let e = evaluate(&alarm, &minutes[first..], alarm_state);
            alarm_state = e.state;
            mark(&mut out[1], alarm_state == AlarmState::Alarm);
            min_c = (0, 0);
            min_p = (0, 0);
            min_hc.iter_mut().for_each(|x| *x = 0);
            min_hp.iter_mut().for_each(|x| *x = 0);
        }
        // Kayenta-style: a fixed 5-minute window, judged at its end.
        if (t + 1) % 300 == 0 {
            mark(&mut out[2], kayenta_high(&win_c, &win_p));
            win_c.clear();
            win_p.clear();
        }
        let done = out[0].detected.is_some()
            && out[1].detected.is_some()
            && out[2].detected.is_some()
            && (s.latency.is_some() || out[3].detected.is_some());
        if done {
            break;
        }
    }
    for o in out.iter_mut().filter(|o| o.detected.is_none()) {
        o.canary_requests = canary_requests;
        o.bad_requests = if s.latency.is_some() { 0 } else { canary_errors };
    }
    out
}

/// The seed of replicate `i` of a scenario: the same for every judge (common random numbers) and for
/// every scenario (so scenarios that differ in one parameter share their noise).
pub fn seed(i: u64) -> u64 {
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1) ^ 0x243f_6a88_85a3_08d3
}

/// A scenario's summary for one judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub runs: usize,
    /// Share of runs that rejected within the horizon (the false-alarm rate for a healthy scenario).
    pub rate: f64,
    /// Upper end of its 95% (Wilson) interval.
    pub rate_upper: f64,
    /// Seconds to detect, median and p90 (runs that never detect count as the horizon).
    pub median_s: u64,
    pub p90_s: u64,
    pub median_canary_requests: u64,
    pub median_bad_requests: u64,
}

fn quantile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

pub fn summarize(outcomes: &[Outcome]) -> Summary {
    let runs = outcomes.len();
    let hits = outcomes.iter().filter(|o| o.detected.is_some()).count();
    let p = hits as f64 / runs as f64;
    let z = 1.96f64;
    let n = runs as f64;
    let upper = (p + z * z / (2.0 * n) + z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt()) / (1.0 + z * z / n);
    let mut secs: Vec<u64> = outcomes.iter().map(|o| o.detected.unwrap_or(HORIZON)).collect();
    let mut reqs: Vec<u64> = outcomes.iter().map(|o| o.canary_requests).collect();
    let mut bad: Vec<u64> = outcomes.iter().map(|o| o.bad_requests).collect();
    Summary {
        runs,
        rate: p,
        rate_upper: upper,
        median_s: quantile(&mut secs, 0.5),
        p90_s: quantile(&mut secs, 0.9),
        median_canary_requests: quantile(&mut reqs, 0.5),
        median_bad_requests: quantile(&mut bad, 0.5),
    }
}

/// Runs `runs` replicates of a scenario on `threads` threads; per judge, the outcomes in replicate order.
pub fn replicate(s: &Scenario, runs: usize, alpha: f64, threads: usize) -> Vec<Vec<Outcome>> {
    let threads = threads.max(1);
    let mut all: Vec<(usize, [Outcome; 4])> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || {
                    (k..runs)
                        .step_by(threads)
                        .map(|i| (i, run(s, seed(i as u64), alpha)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation thread")).collect()
    });
    all.sort_by_key(|(i, _)| *i);
    (0..JUDGES.len()).map(|j| all.iter().map(|(_, o)| o[j]).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_have_the_right_means() {
        let mut r = Rng::new(7);
        let k = 20_000;
        let mean = |f: &mut dyn FnMut() -> u64| (0..k).map(|_| f() as f64).sum::<f64>() / k as f64;
        assert!((mean(&mut || r.poisson(3.0)) - 3.0).abs() < 0.1);
        let mut r = Rng::new(8);
        assert!((mean(&mut || r.poisson(200.0)) - 200.0).abs() < 1.0);
        let mut r = Rng::new(9);
        assert!((mean(&mut || r.binomial(200, 0.005)) - 1.0).abs() < 0.05);
        let mut r = Rng::new(10);
        assert!((mean(&mut || r.binomial(2000, 0.3)) - 600.0).abs() < 2.0);
    }

    #[test]
    fn mann_whitney_sees_a_shift_and_not_its_absence() {
        let same = mann_whitney(&[10, 20, 10], &[100, 200, 100]);
        assert!((0.3..0.7).contains(&same), "{same}");
        let shifted = mann_whitney(&[0, 10, 30], &[100, 200, 100]);
        assert!(shifted < 0.001, "{shifted}");
        assert!((phi(1.96) - 0.975).abs() < 1e-4);
    }
}

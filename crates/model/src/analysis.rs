//! Canary analysis: anytime-valid sequential judgements of the canary against production
//! (`PRODUCT.md` §12, method in `ANALYSIS.md` §3).
//!
//! Each judgement is an e-process: a product of fair bets on the *label* (canary or production) of each
//! observed outcome. The gateway routes every request to the canary with a known probability ρ (the
//! weight), so if the canary is no worse, an error (or a slow request) carries the canary label with
//! probability ρ whatever the load, the time of day or a shared incident. Bets made at fixed odds
//! before each batch multiply into a test martingale; by Ville's inequality a healthy canary makes it
//! reach 1/α with probability at most α, however often it is looked at and however the weight moves.
//!
//! - [`GridRR`]: the error-rate bet, a mixture over relative risks {1.1, ..., 10}.
//! - [`LatencyJudge`]: the average of a rank bet (shifts of the bulk) and exceedance bets at bucket
//!   bounds fixed from earlier data (shifts of the tail).
//! - [`AnalysisState`]: both judgements of one rollout, fed one [`Batch`] per second, with the
//!   evidence a user sees (e-values, anytime p-values, counts, the ratio and its confidence interval).
//!
//! Pure and deterministic: no clock, no I/O, constant state per rollout.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The relative risks of the error-rate mixture, equally weighted.
pub const RR_GRID: [f64; 7] = [1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
/// The tilts of the rank bet.
pub const BETAS: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];
/// Quantiles of the pooled latency distribution at which exceedance bets are placed.
pub const EXCEEDANCE_QUANTILES: [f64; 6] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.999];
/// Pooled requests (both variants, earlier batches) needed before the exceedance bounds are fixed.
pub const EXCEEDANCE_MIN_POOLED: u64 = 200;
/// Candidate ratios of the confidence interval: 2^(k/2) for k in -8..=12 (1/16 to 64).
const CI_STEPS: std::ops::RangeInclusive<i32> = -8..=12;
/// Points kept of the evidence history (older ones are thinned out two to one).
pub const HISTORY_POINTS: usize = 240;

// === The request ===

/// One judgement's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JudgementSpec {
    /// The largest probability, over the whole rollout, of rejecting a canary that is no worse.
    pub alpha: f64,
}

/// `analysis` on a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// The name of a stored analysis (`PUT /v1/analyses/{name}`, `analyses` in a config file); on a
    /// rollout, the stored analysis it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Judges 5XXError (gateway failures of the variant's upstream included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<JudgementSpec>,
    /// Judges the distribution of IntegrationLatency (bulk and tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<JudgementSpec>,
    /// Seconds left out of the judgement after each weight increase (beyond the change's own second
    /// and the one after it, which are always left out).
    #[serde(default)]
    pub warmup_seconds: u64,
    /// A step does not end before the canary has served this many requests in it.
    #[serde(default)]
    pub min_canary_requests: u64,
    /// Judged and recorded, never acted on: a rejection is noted as the moment the rollout would have
    /// rolled back, and neither a rejection nor `minCanaryRequests` holds or ends the rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl AnalysisSpec {
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.error_rate.is_none() && self.latency.is_none() {
            return Err(Error::invalid(field, "{}", "name at least one judgement: errorRate or latency"));
        }
        for (name, j) in [("errorRate", &self.error_rate), ("latency", &self.latency)] {
            if let Some(j) = j {
                if !(j.alpha.is_finite() && j.alpha >= 1e-9 && j.alpha <= 0.2) {
                    return Err(Error::invalid(
                        format!("{field}.{name}.alpha"),
                        j.alpha.to_string(),
                        "must be between 1e-9 and 0.2",
                    ));
                }
            }
        }
        if self.warmup_seconds > 3600 {
            return Err(Error::invalid(
                format!("{field}.warmupSeconds"),
                self.warmup_seconds.to_string(),
                "must be 0 to 3600",
            ));
        }
        if self.min_canary_requests > 1_000_000_000 {
            return Err(Error::invalid(
                format!("{field}.minCanaryRequests"),
                self.min_canary_requests.to_string(),
                "must be 0 to 1000000000",
            ));
        }
        Ok(())
    }
}

/// `analysis` on a rollout request: a stored analysis by name, or one written out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnalysisRef {
    Named(String),
    Inline(AnalysisSpec),
}

impl<'de> Deserialize<'de> for AnalysisRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(AnalysisRef::Named(s)),
            other => serde_json::from_value(other)
                .map(AnalysisRef::Inline)
                .map_err(serde::de::Error::custom),
        }
    }
}

// === The observations ===

/// What one variant served in one batch, as the judgement counts it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Side {
    /// Requests.
    pub requests: u64,
    /// Errors (with sticky routing: distinct erroring sticky keys).
    pub errors: u64,
    /// Latency histogram (shared bucket bounds), or empty when latency is left out of this batch.
    pub latency: Vec<u64>,
}

/// One batch: both variants over the same second, routed with weight `rho` (0 < rho < 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Unix second the batch belongs to (a later batch may carry late arrivals of the same second).
    pub second: u64,
    pub rho: f64,
    pub canary: Side,
    pub production: Side,
}

// === GridRR ===

/// A mixture of label bets over a grid of relative risks, equally weighted.
///
/// Testing "relative risk ≤ r0" is the same mixture at the effective weight ρ·r0/(ρ·r0 + 1 − ρ); testing
/// "≥ r0" uses the inverted grid. Both are used to invert the test into a confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRR {
    /// ln W_g per grid point.
    pub log_w: [f64; 7],
}

impl Default for GridRR {
    fn default() -> Self {
        GridRR { log_w: [0.0; 7] }
    }
}

impl GridRR {
    /// Bets on one batch: `canary` and `production` outcomes, routed with weight `rho`. With `lower`
    /// the alternatives are 1/RR_g (the canary *better*).
    pub fn update(&mut self, canary: f64, production: f64, rho: f64, lower: bool) {
        if canary == 0.0 && production == 0.0 {
            return;
        }
        for (w, rr) in self.log_w.iter_mut().zip(RR_GRID) {
            let rr = if lower { 1.0 / rr } else { rr };
            let d = (rho * rr + 1.0 - rho).ln();
            *w += canary * (rr.ln() - d) - production * d;
        }
    }

    /// ln E: the log of the mixture's e-value.
    pub fn log_e(&self) -> f64 {
        log_mean_exp(&self.log_w)
    }
}

/// ln of the mean of exp(x) over `xs`, without overflow.
pub fn log_mean_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    let s: f64 = xs.iter().map(|x| (x - m).exp()).sum();
    m + (s / xs.len() as f64).ln()
}

// === The error-rate judgement ===

/// One candidate ratio of the confidence interval, with its two one-sided tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub ratio: f64,
    pub rejected: bool,
    /// Tests "the ratio is ≤ this" (rejected when the canary is worse) and "≥ this".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Box<(GridRR, GridRR)>>,
}

/// The error-rate judgement of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorJudge {
    pub alpha: f64,
    pub grid: GridRR,
    /// Largest ln E seen (the anytime p-value is its inverse).
    pub max_log_e: f64,
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub production_requests: u64,
    pub production_errors: u64,
    pub interval: Vec<Candidate>,
}

impl ErrorJudge {
    pub fn new(alpha: f64) -> Self {
        ErrorJudge {
            alpha,
            grid: GridRR::default(),
            max_log_e: 0.0,
            canary_requests: 0,
            canary_errors: 0,
            production_requests: 0,
            production_errors: 0,
            interval: CI_STEPS
                .map(|k| Candidate {
                    ratio: 2f64.powf(k as f64 / 2.0),
                    rejected: false,
                    tests: Some(Box::default()),
                })
                .collect(),
        }
    }

    pub fn feed(&mut self, b: &Batch) {
        let (eb, ea) = (b.canary.errors as f64, b.production.errors as f64);
        self.canary_requests += b.canary.requests;
        self.production_requests += b.production.requests;
        self.canary_errors += b.canary.errors;
        self.production_errors += b.production.errors;
        self.grid.update(eb, ea, b.rho, false);
        self.max_log_e = self.max_log_e.max(self.grid.log_e());
        // Each side of the interval is held at alpha/2.
        let bar = (2.0 / self.alpha).ln();
        for c in &mut self.interval {
            let Some(t) = c.tests.as_mut() else { continue };
            let rho0 = b.rho * c.ratio / (b.rho * c.ratio + 1.0 - b.rho);
            t.0.update(eb, ea, rho0, false);
            t.1.update(eb, ea, rho0, true);
            if t.0.log_e() >= bar || t.1.log_e() >= bar {
                c.rejected = true;
                c.tests = None;
            }
        }
    }

    pub fn log_e(&self) -> f64 {
        self.grid.log_e()
    }

    pub fn rejected(&self) -> bool {
        self.max_log_e >= (1.0 / self.alpha).ln()
    }

    pub fn evidence(&self) -> ErrorEvidence {
        let rate = |e: u64, n: u64| (n > 0).then(|| e as f64 / n as f64);
        let (cr, pr) = (
            rate(self.canary_errors, self.canary_requests),
            rate(self.production_errors, self.production_requests),
        );
        // The interval reaches out to the nearest rejected grid ratio on each side of those still open
        // (a ratio between two grid points was not tested itself).
        let first_open = self.interval.iter().position(|c| !c.rejected);
        let last_open = self.interval.iter().rposition(|c| !c.rejected);
        let ratio_low = first_open.and_then(|i| i.checked_sub(1)).map(|i| self.interval[i].ratio);
        let ratio_high = last_open.and_then(|i| self.interval.get(i + 1)).map(|c| c.ratio);
        ErrorEvidence {
            alpha: self.alpha,
            e_value: clamp_exp(self.log_e()),
            p_value: (-self.max_log_e).exp().min(1.0),
            rejected: self.rejected(),
            canary_requests: self.canary_requests,
            canary_errors: self.canary_errors,
            production_requests: self.production_requests,
            production_errors: self.production_errors,
            ratio: match (cr, pr) {
                (Some(c), Some(p)) if p > 0.0 => Some(c / p),
                _ => None,
            },
            ratio_low,
            ratio_high,
        }
    }
}

fn clamp_exp(log_e: f64) -> f64 {
    log_e.min(700.0).exp()
}

/// What the error-rate judgement says so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEvidence {
    pub alpha: f64,
    pub e_value: f64,
    /// Anytime-valid p-value: 1 over the largest e-value seen.
    pub p_value: f64,
    pub rejected: bool,
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub production_requests: u64,
    pub production_errors: u64,
    /// Canary error rate over production's.
    pub ratio: Option<f64>,
    /// Anytime-valid 1 − alpha confidence interval of the relative risk (ratios not yet rejected, on a
    /// grid of factors of √2); `None`: no bound on that side yet.
    pub ratio_low: Option<f64>,
    pub ratio_high: Option<f64>,
}

// === The latency judgement ===

/// The latency judgement of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyJudge {
    pub alpha: f64,
    /// Pooled histogram of all earlier batches, both variants.
    pub pooled: Vec<u64>,
    pub canary: Vec<u64>,
    pub production: Vec<u64>,
    /// ln W per tilt of the rank bet.
    pub rank: [f64; 5],
    /// Exceedance bets: "slower than bucket `bucket`" (fixed once enough data is pooled).
    pub exceedance: Vec<Exceedance>,
    pub max_log_e: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exceedance {
    /// Requests in buckets above this one exceed.
    pub bucket: usize,
    pub grid: GridRR,
}

impl LatencyJudge {
    pub fn new(alpha: f64) -> Self {
        LatencyJudge {
            alpha,
            pooled: Vec::new(),
            canary: Vec::new(),
            production: Vec::new(),
            rank: [0.0; 5],
            exceedance: Vec::new(),
            max_log_e: 0.0,
        }
    }

    pub fn feed(&mut self, b: &Batch) {
        let (cb, pa) = (&b.canary.latency, &b.production.latency);
        if cb.is_empty() || pa.is_empty() || cb.len() != pa.len() {
            return;
        }
        let k = cb.len();
        if self.pooled.len() != k {
            self.pooled = vec![0; k];
            self.canary = vec![0; k];
            self.production = vec![0; k];
        }
        let n: u64 = self.pooled.iter().sum();
        // Fix the exceedance bounds from earlier data only, once there is enough of it.
        if self.exceedance.is_empty() && n >= EXCEEDANCE_MIN_POOLED {
            let mut cum = 0u64;
            let mut chosen: Vec<usize> = Vec::new();
            let mut qs = EXCEEDANCE_QUANTILES.iter().peekable();
            for (j, &c) in self.pooled.iter().enumerate() {
                cum += c;
                while let Some(&&q) = qs.peek() {
                    if cum as f64 >= q * n as f64 {
                        if j + 1 < k && chosen.last() != Some(&j) {
                            chosen.push(j);
                        }
                        qs.next();
                    } else {
                        break;
                    }
                }
            }
            self.exceedance = chosen
                .into_iter()
                .map(|bucket| Exceedance {
                    bucket,
                    grid: GridRR::default(),
                })
                .collect();
        }
        // Rank bet with scores from the pooled mid-rank distribution of earlier batches.
        if n > 0 {
            let mut cum = 0u64;
            for j in 0..k {
                cum += self.pooled[j];
                let (bj, aj) = (cb[j] as f64, pa[j] as f64);
                if bj == 0.0 && aj == 0.0 {
                    continue;
                }
                let f = (cum as f64 - self.pooled[j] as f64 / 2.0 + 0.5) / (n as f64 + 1.0);
                let s = 2.0 * f - 1.0;
                for (w, beta) in self.rank.iter_mut().zip(BETAS) {
                    let t = (beta * s).exp();
                    let d = (b.rho * t + 1.0 - b.rho).ln();
                    *w += bj * (beta * s - d) - aj * d;
                }
            }
        }
        for e in &mut self.exceedance {
            let above = |h: &[u64]| h[e.bucket + 1..].iter().sum::<u64>() as f64;
            e.grid.update(above(cb), above(pa), b.rho, false);
        }
        for j in 0..k {
            self.pooled[j] += cb[j] + pa[j];
            self.canary[j] += cb[j];
            self.production[j] += pa[j];
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
    }

    pub fn log_e_rank(&self) -> f64 {
        log_mean_exp(&self.rank)
    }

    pub fn log_e_exceedance(&self) -> f64 {
        if self.exceedance.is_empty() {
            return 0.0;
        }
        let v: Vec<f64> = self.exceedance.iter().map(|e| e.grid.log_e()).collect();
        log_mean_exp(&v)
    }

    pub fn log_e(&self) -> f64 {
        log_mean_exp(&[self.log_e_rank(), self.log_e_exceedance()])
    }

    pub fn rejected(&self) -> bool {
        self.max_log_e >= (1.0 / self.alpha).ln()
    }

    /// The evidence; `bounds_us` are the histogram's bucket upper bounds (for the reported medians).
    pub fn evidence(&self, bounds_us: &[u64]) -> LatencyEvidence {
        let ms = |h: &[u64], p: f64| percentile_ms(h, p, bounds_us);
        LatencyEvidence {
            alpha: self.alpha,
            e_value: clamp_exp(self.log_e()),
            e_rank: clamp_exp(self.log_e_rank()),
            e_exceedance: clamp_exp(self.log_e_exceedance()),
            p_value: (-self.max_log_e).exp().min(1.0),
            rejected: self.rejected(),
            canary_requests: self.canary.iter().sum(),
            production_requests: self.production.iter().sum(),
            canary_p50_ms: ms(&self.canary, 0.5),
            production_p50_ms: ms(&self.production, 0.5),
            canary_p99_ms: ms(&self.canary, 0.99),
            production_p99_ms: ms(&self.production, 0.99),
            exceedance_ms: self
                .exceedance
                .iter()
                .filter_map(|e| bounds_us.get(e.bucket).map(|b| *b as f64 / 1000.0))
                .collect(),
        }
    }
}

/// A percentile read from a histogram, interpolated inside its bucket.
pub fn percentile_ms(h: &[u64], p: f64, bounds_us: &[u64]) -> Option<f64> {
    let n: u64 = h.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = (p * n as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &c) in h.iter().enumerate() {
        if c > 0 && (seen + c) as f64 >= rank {
            let lo = if i == 0 {
                0.0
            } else {
                bounds_us.get(i - 1).copied().unwrap_or(0) as f64
            };
            let hi = bounds_us.get(i).copied().map_or(lo * 1.5, |b| b as f64);
            let v = lo + (hi - lo) * (rank - seen as f64) / c as f64;
            return Some((v / 10.0).round() / 100.0);
        }
        seen += c;
    }
    None
}

/// What the latency judgement says so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyEvidence {
    pub alpha: f64,
    pub e_value: f64,
    pub e_rank: f64,
    pub e_exceedance: f64,
    pub p_value: f64,
    pub rejected: bool,
    pub canary_requests: u64,
    pub production_requests: u64,
    pub canary_p50_ms: Option<f64>,
    pub production_p50_ms: Option<f64>,
    pub canary_p99_ms: Option<f64>,
    pub production_p99_ms: Option<f64>,
    /// The latencies at which the exceedance bets are placed.
    pub exceedance_ms: Vec<f64>,
}

// === One rollout's analysis ===

/// A point of the evidence history (for the dashboard's chart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidencePoint {
    pub second: u64,
    /// log10 of each judgement's e-value (the rejection line is log10(1/alpha)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<f64>,
}

/// One second of mirrored copies, as the paired judgement reads it: copies that ended, and the
/// discordant pairs among them by which side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairs {
    pub second: u64,
    pub copies: u64,
    pub copy_failed: u64,
    pub original_failed: u64,
}

/// The analysis of one rollout: its judgements and what they have seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorJudge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyJudge>,
    /// The paired judgement of mirrored copies (with `errorRate`): over discordant pairs — a production
    /// request and its copy of which exactly one failed — the copy is the failing one with probability
    /// at most 1/2 if the canary is no worse; the same test as `errorRate` with ρ = ½.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<ErrorJudge>,
    /// Batches judged and left out (weight change, warm-up).
    pub batches: u64,
    pub excluded_batches: u64,
    /// Seconds up to and including this one are left out (the last weight change and its warm-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_through: Option<u64>,
    /// Canary requests judged in the current step (for `minCanaryRequests`).
    pub step_canary_requests: u64,
    /// The latest second fed (after a restart, earlier seconds are not read again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_second: Option<u64>,
    pub history: Vec<EvidencePoint>,
    /// Seconds between history points (doubles when the history is thinned).
    pub history_every: u64,
    /// The last history point is the latest judged second, off the history's grid: the next batch
    /// replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history_tail: bool,
}

/// The two judgements' evidence, as the API and events show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorEvidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyEvidence>,
    /// The paired judgement of mirrored copies: `canaryErrors` counts pairs where only the copy failed,
    /// `productionErrors` pairs where only the original did; requests are copies judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<ErrorEvidence>,
    pub batches: u64,
    pub excluded_batches: u64,
    pub step_canary_requests: u64,
}

impl AnalysisState {
    pub fn new(spec: &AnalysisSpec) -> Self {
        AnalysisState {
            errors: spec.error_rate.map(|j| ErrorJudge::new(j.alpha)),
            latency: spec.latency.map(|j| LatencyJudge::new(j.alpha)),
            mirror: None,
            batches: 0,
            excluded_batches: 0,
            exclude_through: None,
            step_canary_requests: 0,
            last_second: None,
            history: Vec::new(),
            history_every: 5,
            history_tail: false,
        }
    }

    /// The weight changed during `second`: that second, the next and `warmup` more are left out.
    pub fn weight_changed(&mut self, second: u64, warmup: u64) {
        let through = second + 1 + warmup;
        self.exclude_through = Some(self.exclude_through.map_or(through, |t| t.max(through)));
        self.step_canary_requests = 0;
    }

    /// Folds one batch in. Returns false when the batch is left out.
    pub fn feed(&mut self, b: &Batch) -> bool {
        self.last_second = Some(self.last_second.map_or(b.second, |s| s.max(b.second)));
        if !(b.rho > 0.0 && b.rho < 1.0) || self.exclude_through.is_some_and(|t| b.second <= t) {
            self.excluded_batches += 1;
            return false;
        }
        self.batches += 1;
        self.step_canary_requests += b.canary.requests;
        if let Some(j) = &mut self.errors {
            j.feed(b);
        }
        if let Some(j) = &mut self.latency {
            j.feed(b);
        }
        self.record_history(b.second);
        true
    }

    /// Keeps the evidence history: a point every `history_every` seconds, and always the latest judged
    /// point (the one that decided, when one did) as a tail that the next batch replaces.
    fn record_history(&mut self, second: u64) {
        let log10 = |l: f64| (l / std::f64::consts::LN_10 * 1000.0).round() / 1000.0;
        let point = EvidencePoint {
            second,
            errors: self.errors.as_ref().map(|j| log10(j.log_e())),
            latency: self.latency.as_ref().map(|j| log10(j.log_e())),
        };
        if self.history_tail {
            self.history.pop();
        }
        let due = self.history.last().is_none_or(|p| second >= p.second + self.history_every);
        self.history.push(point);
        self.history_tail = !due;
        if self.history.len() > HISTORY_POINTS {
            // Thinning keeps every other point of the grid, and the latest point.
            let latest = self.history.pop().expect("a point was just pushed");
            let mut kept: Vec<_> = self.history.iter().step_by(2).cloned().collect();
            self.history_every *= 2;
            let due = kept.last().is_none_or(|p| latest.second >= p.second + self.history_every);
            kept.push(latest);
            self.history_tail = !due;
            self.history = kept;
        }
    }

    /// Folds in one second of mirrored pairs. Judged only when the analysis has `errorRate` (at its
    /// alpha).
    pub fn feed_pairs(&mut self, p: &Pairs) {
        let Some(alpha) = self.errors.as_ref().map(|e| e.alpha) else {
            return;
        };
        self.last_second = Some(self.last_second.map_or(p.second, |s| s.max(p.second)));
        let j = self.mirror.get_or_insert_with(|| ErrorJudge::new(alpha));
        j.feed(&Batch {
            second: p.second,
            rho: 0.5,
            canary: Side {
                requests: p.copies,
                errors: p.copy_failed,
                latency: Vec::new(),
            },
            production: Side {
                requests: p.copies,
                errors: p.original_failed,
                latency: Vec::new(),
            },
        });
    }

    /// The judgement that rejects the canary, if one does.
    pub fn rejection(&self) -> Option<&'static str> {
        if self.mirror.as_ref().is_some_and(ErrorJudge::rejected) {
            Some("mirror errorRate (paired)")
        } else if self.errors.as_ref().is_some_and(ErrorJudge::rejected) {
            Some("errorRate")
        } else if self.latency.as_ref().is_some_and(LatencyJudge::rejected) {
            Some("latency")
        } else {
            None
        }
    }

    pub fn evidence(&self, bounds_us: &[u64]) -> Evidence {
        Evidence {
            error_rate: self.errors.as_ref().map(ErrorJudge::evidence),
            latency: self.latency.as_ref().map(|j| j.evidence(bounds_us)),
            mirror: self.mirror.as_ref().map(ErrorJudge::evidence),
            batches: self.batches,
            excluded_batches: self.excluded_batches,
            step_canary_requests: self.step_canary_requests,
        }
    }
}

impl Evidence {
    /// One readable line, as the CLI and the demo print it.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        let num = |x: f64| {
            if x >= 1e4 || (x > 0.0 && x < 1e-3) {
                format!("{x:.1e}")
            } else if x >= 10.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        };
        if let Some(e) = &self.error_rate {
            let ratio = e.ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
            let ci = format!(
                "[{}, {}]",
                e.ratio_low.map_or("-".into(), |r| format!("{r:.2}")),
                e.ratio_high.map_or("-".into(), |r| format!("{r:.2}"))
            );
            parts.push(format!(
                "errors: canary {}/{} vs production {}/{}, ratio {ratio} {ci}, e {} (reject at {}), p {}{}",
                e.canary_errors,
                e.canary_requests,
                e.production_errors,
                e.production_requests,
                num(e.e_value),
                num(1.0 / e.alpha),
                num(e.p_value),
                if e.rejected { " REJECTED" } else { "" }
            ));
        }
        if let Some(l) = &self.latency {
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            parts.push(format!(
                "latency: p50 {} vs {} ms, p99 {} vs {} ms, e {} (reject at {}), p {}{}",
                ms(l.canary_p50_ms),
                ms(l.production_p50_ms),
                ms(l.canary_p99_ms),
                ms(l.production_p99_ms),
                num(l.e_value),
                num(1.0 / l.alpha),
                num(l.p_value),
                if l.rejected { " REJECTED" } else { "" }
            ));
        }
        if let Some(m) = &self.mirror {
            parts.push(format!(
                "mirror pairs: only the copy failed {} vs only the original {} of {} copies, e {} (reject at {}), p {}{}",
                m.canary_errors,
                m.production_errors,
                m.canary_requests,
                num(m.e_value),
                num(1.0 / m.alpha),
                num(m.p_value),
                if m.rejected { " REJECTED" } else { "" }
            ));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rho: f64, eb: u64, ea: u64) -> Batch {
        Batch {
            second: 0,
            rho,
            canary: Side {
                requests: 1000,
                errors: eb,
                latency: Vec::new(),
            },
            production: Side {
                requests: 9000,
                errors: ea,
                latency: Vec::new(),
            },
        }
    }

    #[test]
    fn grid_rr_reproduces_the_fixed_values() {
        let mut g = GridRR::default();
        g.update(10.0, 30.0, 0.1, false);
        assert!((g.log_e() - 2.5563791730874144).abs() < 1e-9, "{}", g.log_e());
        let mut g = GridRR::default();
        g.update(2.0, 0.0, 0.1, false);
        assert!((g.log_e().exp() - 7.81798610429688).abs() < 1e-9, "{}", g.log_e().exp());
        // No alarm at alpha 0.05 (bar 20).
        let mut j = ErrorJudge::new(0.05);
        j.feed(&batch(0.1, 2, 0));
        assert!(!j.rejected());
    }

    #[test]
    fn batches_compose_and_empty_batches_change_nothing() {
        let mut one = GridRR::default();
        one.update(10.0, 30.0, 0.1, false);
        let mut two = GridRR::default();
        two.update(4.0, 10.0, 0.1, false);
        two.update(6.0, 20.0, 0.1, false);
        assert!((one.log_e() - two.log_e()).abs() < 1e-12);
        two.update(0.0, 0.0, 0.1, false);
        assert!((one.log_e() - two.log_e()).abs() < 1e-12);
    }

    #[test]
    fn a_worse_canary_is_rejected_and_its_interval_covers_the_truth() {
        let mut j = ErrorJudge::new(0.01);
        // Canary 3% errors, production 1%, at 10%: 100 canary and 900 production requests a second.
        let mut seconds = 0;
        while !j.rejected() {
            j.feed(&batch(0.1, 3, 9));
            seconds += 1;
            assert!(seconds < 100, "not rejected");
        }
        let e = j.evidence();
        assert!(e.e_value >= 100.0 && e.p_value <= 0.01);
        assert!((e.ratio.unwrap() - 3.0).abs() < 1e-9);
        for _ in 0..200 {
            j.feed(&batch(0.1, 3, 9));
        }
        let e = j.evidence();
        let (lo, hi) = (e.ratio_low.unwrap(), e.ratio_high.unwrap());
        assert!(lo <= 3.0 && 3.0 <= hi && lo > 1.0 && hi < 8.0, "[{lo}, {hi}]");
    }

    #[test]
    fn a_better_canary_is_not_rejected() {
        let mut j = ErrorJudge::new(0.05);
        for _ in 0..1000 {
            j.feed(&batch(0.1, 1, 20));
        }
        assert!(!j.rejected());
        assert!(j.log_e() < 0.0);
        assert!(j.evidence().ratio_high.unwrap() < 1.0);
    }

    fn hist(spec: &[(usize, u64)]) -> Vec<u64> {
        let mut h = vec![0; 42];
        for &(j, c) in spec {
            h[j] += c;
        }
        h
    }

    fn lat_batch(rho: f64, canary: Vec<u64>, production: Vec<u64>) -> Batch {
        Batch {
            second: 0,
            rho,
            canary: Side {
                requests: canary.iter().sum(),
                errors: 0,
                latency: canary,
            },
            production: Side {
                requests: production.iter().sum(),
                errors: 0,
                latency: production,
            },
        }
    }

    #[test]
    fn a_slower_canary_is_rejected_by_the_rank_bet_and_the_same_one_is_not() {
        let mut slow = LatencyJudge::new(0.01);
        let mut same = LatencyJudge::new(0.01);
        for _ in 0..60 {
            // Production: buckets 20..=22 evenly; canary one bucket higher.
            slow.feed(&lat_batch(
                0.1,
                hist(&[(21, 3), (22, 3), (23, 3)]),
                hist(&[(20, 30), (21, 30), (22, 30)]),
            ));
            same.feed(&lat_batch(
                0.1,
                hist(&[(20, 3), (21, 3), (22, 3)]),
                hist(&[(20, 30), (21, 30), (22, 30)]),
            ));
        }
        assert!(slow.rejected(), "e {}", slow.log_e().exp());
        assert!(!same.rejected(), "e {}", same.log_e().exp());
        assert!(!slow.exceedance.is_empty());
        let bounds: Vec<u64> = (0..41).map(|i| (64.0 * 2f64.powf(i as f64 / 2.0)).round() as u64).collect();
        let ev = slow.evidence(&bounds);
        assert!(ev.canary_p50_ms.unwrap() > ev.production_p50_ms.unwrap());
    }

    #[test]
    fn a_tail_only_regression_is_caught_by_the_exceedance_bets() {
        let mut j = LatencyJudge::new(0.01);
        let mut rejected_at = None;
        for s in 0..600 {
            // 10% of canary requests land far in the tail.
            let canary = if s % 2 == 0 { hist(&[(20, 9), (30, 1)]) } else { hist(&[(20, 10)]) };
            j.feed(&lat_batch(0.1, canary, hist(&[(20, 90)])));
            if j.rejected() {
                rejected_at = Some(s);
                break;
            }
        }
        assert!(rejected_at.is_some());
        assert!(j.log_e_exceedance() > 2.0, "{}", j.log_e_exceedance());
    }

    #[test]
    fn warmup_and_weight_changes_leave_batches_out() {
        let spec = AnalysisSpec {
            name: None,
            error_rate: Some(JudgementSpec { alpha: 0.01 }),
            latency: None,
            warmup_seconds: 3,
            min_canary_requests: 0,
            dry_run: false,
        };
        let mut a = AnalysisState::new(&spec);
        a.weight_changed(100, spec.warmup_seconds);
        let mut b = batch(0.1, 1, 1);
        for s in 100..=104 {
            b.second = s;
            assert!(!a.feed(&b), "second {s}");
        }
        b.second = 105;
        assert!(a.feed(&b));
        b.rho = 0.0;
        assert!(!a.feed(&b));
        assert_eq!((a.batches, a.excluded_batches, a.step_canary_requests), (1, 6, 1000));
    }

    fn errors_only(alpha: f64) -> AnalysisSpec {
        AnalysisSpec {
            name: None,
            error_rate: Some(JudgementSpec { alpha }),
            latency: None,
            warmup_seconds: 0,
            min_canary_requests: 0,
            dry_run: false,
        }
    }

    #[test]
    fn history_stays_bounded() {
        let mut a = AnalysisState::new(&errors_only(0.01));
        let mut b = batch(0.1, 1, 9);
        for s in 0..100_000 {
            b.second = s;
            a.feed(&b);
        }
        assert!(a.history.len() <= HISTORY_POINTS);
        assert!(a.history.windows(2).all(|w| w[0].second < w[1].second));
        assert!(a.history_every > 5);
        assert_eq!(a.history.last().unwrap().second, 99_999, "the latest second is kept");
    }

    #[test]
    fn history_keeps_the_deciding_point() {
        // A canary failing from the start: rejected within seconds, between two grid points.
        let mut a = AnalysisState::new(&errors_only(0.01));
        let mut healthy = batch(0.1, 0, 0);
        healthy.second = 1_000;
        a.feed(&healthy);
        let mut b = batch(0.1, 20, 0);
        b.second = 1_001;
        let mut decided = None;
        while decided.is_none() {
            assert!(a.feed(&b));
            decided = a.rejection().map(|_| b.second);
            b.second += 1;
        }
        let decided = decided.unwrap();
        assert_ne!((decided - 1_000) % 5, 0, "the test needs a decision off the 5 s grid: {decided}");
        let last = a.history.last().unwrap();
        assert_eq!(last.second, decided);
        assert!(last.errors.unwrap() >= 2.0, "{last:?}");
        // Grid points stay 5 s apart; only the tail is closer.
        let n = a.history.len();
        assert!(a.history[..n - 1].windows(2).all(|w| w[1].second - w[0].second >= 5));
        // The tail moves with the next second instead of piling up.
        let mut b2 = batch(0.1, 20, 0);
        b2.second = decided + 1;
        a.feed(&b2);
        assert_eq!(a.history.len(), n + usize::from(decided + 1 >= a.history[n - 2].second + 5));
        assert_eq!(a.history.last().unwrap().second, decided + 1);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = AnalysisSpec {
            name: None,
            error_rate: Some(JudgementSpec { alpha: 0.5 }),
            latency: None,
            warmup_seconds: 0,
            min_canary_requests: 0,
            dry_run: false,
        };
        let e = bad.validate("analysis").unwrap_err().to_string();
        assert!(e.contains("analysis.errorRate.alpha") && e.contains("0.5"), "{e}");
        let none = AnalysisSpec {
            name: None,
            error_rate: None,
            latency: None,
            warmup_seconds: 0,
            min_canary_requests: 0,
            dry_run: false,
        };
        assert!(none.validate("analysis").is_err());
    }

    #[test]
    fn the_paired_judgement_rejects_a_canary_whose_copies_fail_and_not_a_fair_one() {
        let spec = AnalysisSpec {
            name: None,
            error_rate: Some(JudgementSpec { alpha: 0.01 }),
            latency: None,
            warmup_seconds: 0,
            min_canary_requests: 0,
            dry_run: false,
        };
        // Fair: discordant pairs split evenly between the copy and the original.
        let mut fair = AnalysisState::new(&spec);
        for sec in 0..600 {
            fair.feed_pairs(&Pairs {
                second: sec,
                copies: 100,
                copy_failed: 2,
                original_failed: 2,
            });
        }
        assert_eq!(fair.rejection(), None);
        // Copies fail 3 times as often as their originals: rejected, within a minute.
        let mut bad = AnalysisState::new(&spec);
        let mut at = None;
        for sec in 0..600 {
            bad.feed_pairs(&Pairs {
                second: sec,
                copies: 100,
                copy_failed: 3,
                original_failed: 1,
            });
            if bad.rejection().is_some() {
                at = Some(sec);
                break;
            }
        }
        assert!(at.is_some_and(|s| s < 60), "{at:?}");
        assert_eq!(bad.rejection(), Some("mirror errorRate (paired)"));
        let e = bad.evidence(&[]);
        assert!(e.line().contains("mirror pairs: only the copy failed"), "{}", e.line());
        // Without errorRate, pairs are not judged.
        let mut latency_only = AnalysisState::new(&AnalysisSpec { error_rate: None, ..spec });
        latency_only.feed_pairs(&Pairs {
            second: 0,
            copies: 10,
            copy_failed: 10,
            original_failed: 0,
        });
        assert!(latency_only.mirror.is_none());
    }
}

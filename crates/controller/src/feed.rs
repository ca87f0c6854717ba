//! Reading the canary analysis's batches from the gateway's metrics: once a second, for each rollout
//! with an analysis, both variants' counts of each recent second whose weight held still, less what
//! was read of that second before (requests finish late: a second is read again for about a minute,
//! and its late arrivals form a batch of their own with the same weight).
//!
//! What is judged of a second: requests routed at random or by a sticky key (those forced by the
//! variant header or cookie are subtracted); errors, with sticky routing counting each erroring key
//! once; the IntegrationLatency histogram, unless forced requests were timed in that second (their
//! latencies cannot be taken out of it, so its latency is left out).

use std::collections::{BTreeMap, BTreeSet};

use canarygate_metrics::{MetricsView, SecondCounts, SeriesKey, Variant, JUDGE_SECS};
use canarygate_model::analysis::{Batch, Pairs, Side};

/// Seconds read again for late arrivals (kept inside the metrics' judge ring).
pub(crate) const REREAD_SECS: u64 = JUDGE_SECS - 8;

#[derive(Default, Clone)]
struct Read {
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

/// One rollout's reading state (in memory; after a restart, seconds already judged are not read again).
pub(crate) struct Feed {
    /// The weights seen in each second (min, max), from the controller's ticks.
    weights: BTreeMap<u64, (f64, f64)>,
    last_weight: Option<(u64, f64)>,
    read: BTreeMap<u64, [Read; 2]>,
    latency_off: BTreeSet<u64>,
    /// Seconds before this one are not read (judged before a restart, or before the rollout started).
    floor: u64,
    /// Mirrored pairs read of each recent second: (copies, copy failed, original failed).
    pairs_read: BTreeMap<u64, (u64, u64, u64)>,
}

impl Feed {
    pub(crate) fn new(floor: u64) -> Feed {
        Feed {
            weights: BTreeMap::new(),
            last_weight: None,
            read: BTreeMap::new(),
            latency_off: BTreeSet::new(),
            floor,
            pairs_read: BTreeMap::new(),
        }
    }

    /// Notes the stage's canary weight (percent) at a tick. A change between two ticks marks both
    /// ticks' seconds as mixed.
    pub(crate) fn note_weight(&mut self, sec: u64, weight: f64) {
        let mut mark = |sec: u64, w: f64| {
            let e = self.weights.entry(sec).or_insert((w, w));
            e.0 = e.0.min(w);
            e.1 = e.1.max(w);
        };
        mark(sec, weight);
        if let Some((prev_sec, prev)) = self.last_weight {
            if prev != weight {
                mark(prev_sec, weight);
                mark(sec, prev);
            }
        }
        self.last_weight = Some((sec, weight));
    }

    /// The mirror series' new pairs up to (not including) `now_sec`: each recent second less what was
    /// read of it before (a pair is counted when both sides have ended, often a second or more later).
    pub(crate) fn pairs(&mut self, metrics: &dyn MetricsView, api: &str, stage: &str, now_sec: u64) -> Vec<Pairs> {
        let oldest = now_sec.saturating_sub(REREAD_SECS).max(self.floor);
        self.pairs_read.retain(|s, _| *s >= oldest);
        let key = SeriesKey {
            api: api.to_string(),
            stage: stage.to_string(),
            variant: Variant::Mirror,
        };
        let mut out = Vec::new();
        for sec in oldest..now_sec {
            let Some(j) = metrics.second(&key, sec) else { continue };
            let now = (j.count, j.pairs_copy_failed, j.pairs_original_failed);
            let before = self.pairs_read.entry(sec).or_default();
            let p = Pairs {
                second: sec,
                copies: now.0.saturating_sub(before.0),
                copy_failed: now.1.saturating_sub(before.1),
                original_failed: now.2.saturating_sub(before.2),
            };
            *before = (before.0.max(now.0), before.1.max(now.1), before.2.max(now.2));
            if p.copies > 0 || p.copy_failed > 0 || p.original_failed > 0 {
                out.push(p);
            }
        }
        out
    }

    /// The new batches up to (not including) `now_sec`.
    pub(crate) fn batches(&mut self, metrics: &dyn MetricsView, api: &str, stage: &str, now_sec: u64) -> Vec<Batch> {
        let oldest = now_sec.saturating_sub(REREAD_SECS).max(self.floor);
        self.weights.retain(|s, _| *s + REREAD_SECS + 2 >= now_sec);
        self.read.retain(|s, _| *s >= oldest);
        self.latency_off.retain(|s| *s >= oldest);
        let key = |variant| SeriesKey {
            api: api.to_string(),
            stage: stage.to_string(),
            variant,
        };
        let (canary, production) = (key(Variant::Canary), key(Variant::Production));
        let mut out = Vec::new();
        for sec in oldest..now_sec {
            let Some(&(lo, hi)) = self.weights.get(&sec) else { continue };
            if lo != hi || !(lo > 0.0 && lo < 100.0) {
                continue;
            }
            let (c, p) = (metrics.second(&canary, sec), metrics.second(&production, sec));
            if c.is_none() && p.is_none() {
                continue;
            }
            let (c, p) = (c.unwrap_or_default(), p.unwrap_or_default());
            if c.forced_timed > 0 || p.forced_timed > 0 {
                self.latency_off.insert(sec);
            }
            let latency_on = !self.latency_off.contains(&sec);
            let before = self.read.entry(sec).or_default();
            // Of a second: its requests and 5xx, and the IntegrationLatency histogram.
            let side = |j: &SecondCounts, before: &mut Read| -> Side {
                let requests = j.count.saturating_sub(j.forced);
                let errors = j.e5.saturating_sub(j.forced_e5).saturating_sub(j.sticky_e5) + j.sticky_keys_e5;
                let latency = if latency_on {
                    let delta: Vec<u64> = if before.latency.is_empty() {
                        j.integration.buckets.to_vec()
                    } else {
                        j.integration
                            .buckets
                            .iter()
                            .zip(&before.latency)
                            .map(|(a, b)| a.saturating_sub(*b))
                            .collect()
                    };
                    before.latency = j.integration.buckets.to_vec();
                    delta
                } else {
                    Vec::new()
                };
                let s = Side {
                    requests: requests.saturating_sub(before.requests),
                    errors: errors.saturating_sub(before.errors),
                    latency,
                };
                before.requests = before.requests.max(requests);
                before.errors = before.errors.max(errors);
                s
            };
            let (bc, bp) = before.split_at_mut(1);
            let cs = side(&c, &mut bc[0]);
            let ps = side(&p, &mut bp[0]);
            let moved = |s: &Side| s.requests > 0 || s.errors > 0 || s.latency.iter().any(|&x| x > 0);
            if moved(&cs) || moved(&ps) {
                out.push(Batch {
                    second: sec,
                    rho: lo / 100.0,
                    canary: cs,
                    production: ps,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canarygate_metrics::{Observation, Registry, Routed};

    fn obs(status: u16, routed: Routed) -> Observation {
        Observation {
            status,
            latency_us: 10_000,
            integration_us: Some(9_000),
            cache: None,
            routed,
        }
    }

    #[test]
    fn reads_each_request_once_and_late_arrivals_as_their_own_batch() {
        let reg = Registry::new();
        let (c, p) = (reg.series("a", "s", Variant::Canary), reg.series("a", "s", Variant::Production));
        let t = 1_800_000_000u64;
        let mut f = Feed::new(0);
        for s in t..t + 3 {
            f.note_weight(s, 10.0);
        }
        c.record(t, &obs(500, Routed::Random));
        p.record(t, &obs(200, Routed::Random));
        p.record(t, &obs(200, Routed::Random));
        let b = f.batches(&reg, "a", "s", t + 1);
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].rho, b[0].canary.errors, b[0].canary.requests, b[0].production.requests),
            (0.1, 1, 1, 2)
        );
        assert_eq!(b[0].production.latency.iter().sum::<u64>(), 2);
        // Nothing new: no batch. A late arrival in second t: a batch of just that.
        assert!(f.batches(&reg, "a", "s", t + 2).is_empty());
        p.record(t, &obs(502, Routed::Random));
        let b = f.batches(&reg, "a", "s", t + 2);
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].second, b[0].production.errors, b[0].production.requests, b[0].canary.requests),
            (t, 1, 1, 0)
        );
        assert_eq!(b[0].production.latency.iter().sum::<u64>(), 1);
    }

    #[test]
    fn weight_changes_forced_and_sticky_requests() {
        let reg = Registry::new();
        let (c, p) = (reg.series("a", "s", Variant::Canary), reg.series("a", "s", Variant::Production));
        let t = 1_800_000_000u64;
        let mut f = Feed::new(0);
        f.note_weight(t, 10.0);
        f.note_weight(t + 1, 10.0);
        f.note_weight(t + 2, 20.0); // changed between the ticks of t+1 and t+2: both are mixed
        f.note_weight(t + 3, 20.0);
        for s in t..t + 4 {
            c.record(s, &obs(200, Routed::Random));
            p.record(s, &obs(200, Routed::Random));
        }
        // In t+3: a forced canary error, and one sticky client failing three times.
        c.record(t + 3, &obs(500, Routed::Forced));
        for _ in 0..3 {
            c.record(t + 3, &obs(500, Routed::Sticky(42)));
        }
        let b = f.batches(&reg, "a", "s", t + 4);
        assert_eq!(b.iter().map(|b| b.second).collect::<Vec<_>>(), vec![t, t + 3]);
        let last = &b[1];
        assert_eq!(last.rho, 0.2);
        assert_eq!((last.canary.requests, last.canary.errors), (4, 1));
        // A forced request was timed in t+3: its latency is left out.
        assert!(last.canary.latency.is_empty() && last.production.latency.is_empty());
    }

    #[test]
    fn seconds_below_the_floor_are_not_read() {
        let reg = Registry::new();
        let c = reg.series("a", "s", Variant::Canary);
        reg.series("a", "s", Variant::Production);
        let t = 1_800_000_000u64;
        let mut f = Feed::new(t + 1);
        f.note_weight(t, 10.0);
        f.note_weight(t + 1, 10.0);
        c.record(t, &obs(500, Routed::Random));
        c.record(t + 1, &obs(500, Routed::Random));
        let b = f.batches(&reg, "a", "s", t + 2);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].second, t + 1);
    }
}

//! One (api, stage, variant) series: a ring of one-second slots and cumulative totals.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::Release};

use canarygate_model::{Metric, Statistic};

use crate::histogram::{Hist, HistSum, BUCKETS};
use crate::Datapoint;

/// How long one-second slots are kept: 3 hours, plus a minute of slack for the ticker.
pub const RETENTION_SECS: u64 = 3 * 3600 + 60;
const SLOTS: usize = RETENTION_SECS as usize + 8;
const NO_SECOND: u64 = u64::MAX;

/// Whether a request was answered from the stage cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
}

/// What the gateway observed about one request.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub status: u16,
    /// Whole request, microseconds.
    pub latency_us: u64,
    /// Time spent in the integration, when one was called.
    pub integration_us: Option<u64>,
    /// Cache outcome, when the stage cache was consulted.
    pub cache: Option<CacheResult>,
}

struct Slot {
    second: AtomicU64,
    count: AtomicU64,
    e4: AtomicU64,
    e5: AtomicU64,
    hit: AtomicU64,
    miss: AtomicU64,
    latency: Hist,
    integration: Hist,
}

impl Slot {
    fn new() -> Self {
        Slot {
            second: AtomicU64::new(NO_SECOND),
            count: AtomicU64::new(0),
            e4: AtomicU64::new(0),
            e5: AtomicU64::new(0),
            hit: AtomicU64::new(0),
            miss: AtomicU64::new(0),
            latency: Hist::default(),
            integration: Hist::default(),
        }
    }

    fn clear(&self) {
        for c in [&self.count, &self.e4, &self.e5, &self.hit, &self.miss] {
            c.store(0, Relaxed);
        }
        self.latency.clear();
        self.integration.clear();
    }
}

/// Cumulative totals since start, for Prometheus.
pub(crate) struct Totals {
    /// Requests by status class 1xx..5xx (index 0..5).
    pub by_class: [AtomicU64; 5],
    pub hit: AtomicU64,
    pub miss: AtomicU64,
    pub latency: [AtomicU64; BUCKETS],
    pub latency_sum_us: AtomicU64,
    pub integration: [AtomicU64; BUCKETS],
    pub integration_sum_us: AtomicU64,
    pub integration_n: AtomicU64,
}

/// The metrics of one (api, stage, variant).
pub struct Series {
    slots: Box<[Slot]>,
    pub(crate) totals: Totals,
}

impl Default for Series {
    fn default() -> Self {
        Self::new()
    }
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

impl Series {
    pub fn new() -> Self {
        Series {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            totals: Totals {
                by_class: zeros(),
                hit: AtomicU64::new(0),
                miss: AtomicU64::new(0),
                latency: zeros(),
                latency_sum_us: AtomicU64::new(0),
                integration: zeros(),
                integration_sum_us: AtomicU64::new(0),
                integration_n: AtomicU64::new(0),
            },
        }
    }

    fn slot(&self, sec: u64) -> &Slot {
        &self.slots[(sec % SLOTS as u64) as usize]
    }

    /// Makes the slot for `sec` belong to `sec`, clearing it if it held an older second.
    fn claim(&self, sec: u64) -> &Slot {
        let slot = self.slot(sec);
        let cur = slot.second.load(Relaxed);
        if (cur == NO_SECOND || cur < sec) && slot.second.compare_exchange(cur, sec, Release, Relaxed).is_ok() {
            slot.clear();
        }
        slot
    }

    /// Prepares the slots of the next two seconds (called by the ticker).
    pub(crate) fn prepare(&self, now_sec: u64) {
        for s in now_sec + 1..=now_sec + 2 {
            if self.slot(s).second.load(Relaxed) != s {
                self.claim(s);
            }
        }
    }

    /// Records one request that happened at unix second `sec`. Lock-free.
    #[inline]
    pub fn record(&self, sec: u64, o: &Observation) {
        let slot = self.slot(sec);
        let slot = if slot.second.load(Relaxed) == sec { slot } else { self.claim(sec) };
        slot.count.fetch_add(1, Relaxed);
        let class = (o.status / 100).clamp(1, 5) as usize - 1;
        self.totals.by_class[class].fetch_add(1, Relaxed);
        if class == 3 {
            slot.e4.fetch_add(1, Relaxed);
        } else if class == 4 {
            slot.e5.fetch_add(1, Relaxed);
        }
        match o.cache {
            Some(CacheResult::Hit) => {
                slot.hit.fetch_add(1, Relaxed);
                self.totals.hit.fetch_add(1, Relaxed);
            }
            Some(CacheResult::Miss) => {
                slot.miss.fetch_add(1, Relaxed);
                self.totals.miss.fetch_add(1, Relaxed);
            }
            None => {}
        }
        slot.latency.record(o.latency_us);
        let b = crate::histogram::bucket_of(o.latency_us);
        self.totals.latency[b].fetch_add(1, Relaxed);
        self.totals.latency_sum_us.fetch_add(o.latency_us, Relaxed);
        if let Some(us) = o.integration_us {
            slot.integration.record(us);
            let b = crate::histogram::bucket_of(us);
            self.totals.integration[b].fetch_add(1, Relaxed);
            self.totals.integration_sum_us.fetch_add(us, Relaxed);
            self.totals.integration_n.fetch_add(1, Relaxed);
        }
    }

    /// Datapoints over `[start, end)`, one per `period`-aligned period with samples, oldest first.
    pub fn query(&self, metric: Metric, stat: Statistic, period: u64, start: u64, end: u64) -> Vec<Datapoint> {
        let period = period.max(1);
        let mut out = Vec::new();
        let mut p = start - start % period;
        while p < end {
            let from = p.max(start);
            let to = (p + period).min(end);
            if let Some(v) = self.reduce(metric, stat, from, to) {
                out.push(Datapoint { timestamp: p, value: v });
            }
            p += period;
        }
        out
    }

    /// The statistic of a metric over `[from, to)`, or None when there are no samples.
    pub fn reduce(&self, metric: Metric, stat: Statistic, from: u64, to: u64) -> Option<f64> {
        let (mut n, mut e4, mut e5, mut hit, mut miss) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut lat = HistSum::default();
        let mut integ = HistSum::default();
        let needs_hist = matches!(metric, Metric::Latency | Metric::IntegrationLatency);
        for sec in from..to {
            let slot = self.slot(sec);
            if slot.second.load(Relaxed) != sec {
                continue;
            }
            n += slot.count.load(Relaxed);
            e4 += slot.e4.load(Relaxed);
            e5 += slot.e5.load(Relaxed);
            hit += slot.hit.load(Relaxed);
            miss += slot.miss.load(Relaxed);
            if needs_hist {
                lat.add(&slot.latency);
                integ.add(&slot.integration);
            }
        }
        let counted = |c: u64, samples: u64| -> Option<f64> {
            if samples == 0 {
                return None;
            }
            let (c, s) = (c as f64, samples as f64);
            Some(match stat {
                Statistic::Sum => c,
                Statistic::SampleCount => s,
                Statistic::Average => c / s,
                Statistic::Minimum => f64::from(u8::from(c >= s)),
                Statistic::Maximum => f64::from(u8::from(c > 0.0)),
                Statistic::Percentile(p) => f64::from(u8::from((s - c) / s < p / 100.0)),
            })
        };
        let timed = |h: &HistSum| -> Option<f64> {
            if h.n == 0 {
                return None;
            }
            let ms = |us: f64| us / 1000.0;
            Some(match stat {
                Statistic::Sum => ms(h.sum_us as f64),
                Statistic::SampleCount => h.n as f64,
                Statistic::Average => ms(h.sum_us as f64 / h.n as f64),
                Statistic::Minimum => ms(h.min_us as f64),
                Statistic::Maximum => ms(h.max_us as f64),
                Statistic::Percentile(p) => ms(h.percentile_us(p)),
            })
        };
        match metric {
            Metric::Count => counted(n, n),
            Metric::Error4xx => counted(e4, n),
            Metric::Error5xx => counted(e5, n),
            Metric::CacheHitCount => counted(hit, hit + miss),
            Metric::CacheMissCount => counted(miss, hit + miss),
            Metric::Latency => timed(&lat),
            Metric::IntegrationLatency => timed(&integ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, ms: u64) -> Observation {
        Observation {
            status,
            latency_us: ms * 1000,
            integration_us: Some(ms * 900),
            cache: None,
        }
    }

    #[test]
    fn counts_and_rates_per_period() {
        let s = Series::new();
        let t0 = 1_800_000_000u64;
        for i in 0..10 {
            s.record(t0 + i % 2, &obs(if i < 3 { 500 } else { 200 }, 10));
        }
        s.record(t0 + 1, &obs(404, 20));
        let sum = s.query(Metric::Count, Statistic::Sum, 60, t0 - 30, t0 + 30);
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].value, 11.0);
        let per_sec = s.query(Metric::Error5xx, Statistic::Sum, 1, t0, t0 + 10);
        assert_eq!(
            per_sec,
            vec![
                Datapoint { timestamp: t0, value: 2.0 },
                Datapoint {
                    timestamp: t0 + 1,
                    value: 1.0
                }
            ]
        );
        let avg = s.reduce(Metric::Error5xx, Statistic::Average, t0, t0 + 2).unwrap();
        assert!((avg - 3.0 / 11.0).abs() < 1e-12);
        assert_eq!(s.reduce(Metric::Error4xx, Statistic::Sum, t0, t0 + 2), Some(1.0));
        assert_eq!(s.reduce(Metric::Latency, Statistic::Maximum, t0, t0 + 2), Some(20.0));
        assert_eq!(s.reduce(Metric::IntegrationLatency, Statistic::Minimum, t0, t0 + 2), Some(9.0));
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0 + 5, t0 + 9), None);
    }

    #[test]
    fn old_slots_are_not_read_after_wrapping() {
        let s = Series::new();
        let t0 = 1_800_000_000u64;
        s.record(t0, &obs(200, 1));
        let later = t0 + SLOTS as u64;
        s.record(later, &obs(500, 1));
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0, t0 + 1), None);
        assert_eq!(s.reduce(Metric::Error5xx, Statistic::Sum, later, later + 1), Some(1.0));
        s.prepare(later);
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, later, later + 1), Some(1.0));
    }

    #[test]
    fn cache_metrics() {
        let s = Series::new();
        let t = 1_800_000_000u64;
        let mut o = obs(200, 1);
        o.cache = Some(CacheResult::Hit);
        s.record(t, &o);
        o.cache = Some(CacheResult::Miss);
        s.record(t, &o);
        s.record(t, &o);
        assert_eq!(s.reduce(Metric::CacheHitCount, Statistic::Sum, t, t + 1), Some(1.0));
        assert_eq!(s.reduce(Metric::CacheMissCount, Statistic::SampleCount, t, t + 1), Some(3.0));
    }
}

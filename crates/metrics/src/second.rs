//! What one series holds of one second (or of several added up): the counters, both latency
//! histograms and the canary analysis's per-second facts, as plain numbers. A replica publishes these
//! to the cluster ([`SecondCounts::encode`]), and window queries and alarms reduce sums of them to a
//! statistic ([`statistic`]).

use canarygate_model::{Metric, Statistic};

use crate::histogram::{HistSum, BUCKETS};
use crate::Datapoint;

/// The numbers of one second of one series, or a sum of several.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecondCounts {
    pub count: u64,
    pub e4: u64,
    pub e5: u64,
    pub hit: u64,
    pub miss: u64,
    /// Latency of whole requests.
    pub latency: HistSum,
    /// Time spent in the integration.
    pub integration: HistSum,
    /// The canary analysis's facts of the second (kept for about a minute): requests routed by the
    /// variant header or cookie (included in the counts above), their 5xx and how many of them were
    /// timed in `integration`; 5xx of sticky-routed requests and how many distinct sticky keys they came
    /// from; for a mirror series, discordant pairs (exactly one of a production request and its copy
    /// failed), by which one failed.
    pub forced: u64,
    pub forced_e5: u64,
    pub forced_timed: u64,
    pub sticky_e5: u64,
    pub sticky_keys_e5: u64,
    pub pairs_copy_failed: u64,
    pub pairs_original_failed: u64,
}

/// How many numbers come before the histograms in [`SecondCounts::encode`]'s layout: readers that
/// need no latency fetch only these.
pub const SCALARS: usize = 12;
/// The length of an encoded second.
pub const ENCODED_LEN: usize = SCALARS + 2 * (4 + BUCKETS);

impl SecondCounts {
    /// Adds another second (or sum) to this one. Sticky keys are added up too: a key erroring on two
    /// replicas in the same second counts twice.
    pub fn merge(&mut self, o: &SecondCounts) {
        self.count += o.count;
        self.e4 += o.e4;
        self.e5 += o.e5;
        self.hit += o.hit;
        self.miss += o.miss;
        self.latency.merge(&o.latency);
        self.integration.merge(&o.integration);
        self.forced += o.forced;
        self.forced_e5 += o.forced_e5;
        self.forced_timed += o.forced_timed;
        self.sticky_e5 += o.sticky_e5;
        self.sticky_keys_e5 += o.sticky_keys_e5;
        self.pairs_copy_failed += o.pairs_copy_failed;
        self.pairs_original_failed += o.pairs_original_failed;
    }

    /// A fixed layout of [`ENCODED_LEN`] numbers (as PostgreSQL's `bigint[]` holds them): the
    /// [`SCALARS`] counters first, then each histogram as n, sum, min, max and its buckets. Values
    /// are stored bit for bit (an empty histogram's minimum, `u64::MAX`, is -1).
    pub fn encode(&self) -> Vec<i64> {
        let mut v = Vec::with_capacity(ENCODED_LEN);
        v.extend(
            [
                self.count,
                self.e4,
                self.e5,
                self.hit,
                self.miss,
                self.forced,
                self.forced_e5,
                self.forced_timed,
                self.sticky_e5,
                self.sticky_keys_e5,
                self.pairs_copy_failed,
                self.pairs_original_failed,
            ]
            .map(|n| n as i64),
        );
        for h in [&self.latency, &self.integration] {
            v.extend([h.n, h.sum_us, h.min_us, h.max_us].map(|n| n as i64));
            v.extend(h.buckets.iter().map(|&n| n as i64));
        }
        v
    }

    /// Reads [`encode`](Self::encode)'s layout back: the whole of it, or only its first [`SCALARS`]
    /// numbers (the histograms are then empty). `None` for any other length.
    pub fn decode(v: &[i64]) -> Option<SecondCounts> {
        if v.len() != SCALARS && v.len() != ENCODED_LEN {
            return None;
        }
        let u = |i: usize| v[i] as u64;
        let mut c = SecondCounts {
            count: u(0),
            e4: u(1),
            e5: u(2),
            hit: u(3),
            miss: u(4),
            forced: u(5),
            forced_e5: u(6),
            forced_timed: u(7),
            sticky_e5: u(8),
            sticky_keys_e5: u(9),
            pairs_copy_failed: u(10),
            pairs_original_failed: u(11),
            ..SecondCounts::default()
        };
        if v.len() == ENCODED_LEN {
            for (k, h) in [&mut c.latency, &mut c.integration].into_iter().enumerate() {
                let at = SCALARS + k * (4 + BUCKETS);
                (h.n, h.sum_us, h.min_us, h.max_us) = (u(at), u(at + 1), u(at + 2), u(at + 3));
                for (b, x) in h.buckets.iter_mut().zip(&v[at + 4..at + 4 + BUCKETS]) {
                    *b = *x as u64;
                }
            }
        }
        Some(c)
    }
}

/// Whether a metric is read from the latency histograms.
pub fn needs_histograms(metric: Metric) -> bool {
    matches!(metric, Metric::Latency | Metric::IntegrationLatency)
}

/// The statistic of a metric over a sum of seconds, or `None` when it has no samples.
pub fn statistic(metric: Metric, stat: Statistic, c: &SecondCounts) -> Option<f64> {
    let counted = |n: u64, samples: u64| -> Option<f64> {
        if samples == 0 {
            return None;
        }
        let (n, s) = (n as f64, samples as f64);
        Some(match stat {
            Statistic::Sum => n,
            Statistic::SampleCount => s,
            Statistic::Average => n / s,
            Statistic::Minimum => f64::from(u8::from(n >= s)),
            Statistic::Maximum => f64::from(u8::from(n > 0.0)),
            Statistic::Percentile(p) => f64::from(u8::from((s - n) / s < p / 100.0)),
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
        Metric::Count => counted(c.count, c.count),
        Metric::Error4xx => counted(c.e4, c.count),
        Metric::Error5xx => counted(c.e5, c.count),
        Metric::CacheHitCount => counted(c.hit, c.hit + c.miss),
        Metric::CacheMissCount => counted(c.miss, c.hit + c.miss),
        Metric::Latency => timed(&c.latency),
        Metric::IntegrationLatency => timed(&c.integration),
    }
}

/// One datapoint per `period`-aligned period of `[start, end)` that `value` has a value for.
pub(crate) fn periods(period: u64, start: u64, end: u64, mut value: impl FnMut(u64, u64) -> Option<f64>) -> Vec<Datapoint> {
    let period = period.max(1);
    let mut out = Vec::new();
    let mut p = start - start % period;
    while p < end {
        if let Some(v) = value(p.max(start), (p + period).min(end)) {
            out.push(Datapoint { timestamp: p, value: v });
        }
        p += period;
    }
    out
}

//! Fixed-bucket latency histograms: bucket bounds grow by a factor of sqrt(2) from 64 µs to about
//! 60 s, so a percentile read from them is within ±19% before interpolation.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Number of buckets (the last one is unbounded).
pub const BUCKETS: usize = 42;

/// Upper bounds (exclusive) of the first `BUCKETS - 1` buckets, in microseconds.
pub fn bucket_bounds_us() -> &'static [u64; BUCKETS - 1] {
    static BOUNDS: OnceLock<[u64; BUCKETS - 1]> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut b = [0u64; BUCKETS - 1];
        for (i, v) in b.iter_mut().enumerate() {
            *v = (64.0 * 2f64.powf(i as f64 / 2.0)).round() as u64;
        }
        b
    })
}

pub fn bucket_of(us: u64) -> usize {
    bucket_bounds_us().partition_point(|&b| b <= us)
}

/// One slot's histogram: per-bucket counts, sum, min and max.
pub struct Hist {
    pub buckets: [AtomicU32; BUCKETS],
    pub n: AtomicU64,
    pub sum_us: AtomicU64,
    pub min_us: AtomicU64,
    pub max_us: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            n: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Hist {
    #[inline]
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.n.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.min_us.fetch_min(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.n.store(0, Relaxed);
        self.sum_us.store(0, Relaxed);
        self.min_us.store(u64::MAX, Relaxed);
        self.max_us.store(0, Relaxed);
    }
}

/// A histogram summed over several slots, for queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistSum {
    pub buckets: [u64; BUCKETS],
    pub n: u64,
    pub sum_us: u64,
    pub min_us: u64,
    pub max_us: u64,
}

impl Default for HistSum {
    fn default() -> Self {
        HistSum {
            buckets: [0; BUCKETS],
            n: 0,
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }
}

impl HistSum {
    pub fn add(&mut self, h: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *a += u64::from(b.load(Relaxed));
        }
        self.n += h.n.load(Relaxed);
        self.sum_us += h.sum_us.load(Relaxed);
        self.min_us = self.min_us.min(h.min_us.load(Relaxed));
        self.max_us = self.max_us.max(h.max_us.load(Relaxed));
    }

    /// Adds another sum to this one.
    pub fn merge(&mut self, o: &HistSum) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.n += o.n;
        self.sum_us += o.sum_us;
        self.min_us = self.min_us.min(o.min_us);
        self.max_us = self.max_us.max(o.max_us);
    }

    /// The p-th percentile in microseconds, interpolated linearly inside its bucket and clamped to the
    /// observed minimum and maximum.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = (p / 100.0 * self.n as f64).max(1.0);
        let bounds = bucket_bounds_us();
        let mut seen = 0u64;
        for (i, &c) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { bounds[i - 1] as f64 };
                let hi = if i < bounds.len() { bounds[i] as f64 } else { self.max_us as f64 };
                let frac = (rank - seen as f64) / c as f64;
                let v = lo + (hi - lo) * frac;
                return v.clamp(self.min_us as f64, self.max_us as f64);
            }
            seen += c;
        }
        self.max_us as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let b = bucket_bounds_us();
        assert_eq!(b[0], 64);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert!(*b.last().unwrap() > 60_000_000);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(63), 0);
        assert_eq!(bucket_of(64), 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_close() {
        let h = Hist::default();
        for ms in 1..=1000u64 {
            h.record(ms * 1000);
        }
        let mut s = HistSum::default();
        s.add(&h);
        for (p, want) in [(50.0, 500_000.0), (99.0, 990_000.0), (99.9, 999_000.0)] {
            let got = s.percentile_us(p);
            assert!((got - want).abs() / want < 0.2, "p{p}: {got} vs {want}");
        }
        assert_eq!(s.min_us, 1000);
        assert_eq!(s.max_us, 1_000_000);
        let mut one = HistSum::default();
        let h1 = Hist::default();
        h1.record(5000);
        one.add(&h1);
        assert_eq!(one.percentile_us(99.0), 5000.0);
    }
}

//! Reading metrics without caring where they were recorded: this process's own [`Registry`], or the
//! sum of every replica's published seconds ([`ClusterSeconds`](crate::ClusterSeconds)). Alarms, the
//! canary analysis and `GET /v1/metrics` read through [`MetricsView`].

use canarygate_model::{Metric, Statistic};

use crate::second::{needs_histograms, periods, statistic, SecondCounts};
use crate::{Datapoint, Registry, SeriesKey};

/// Per-second metrics of series, wherever they come from.
pub trait MetricsView {
    /// The counters (and, with `histograms`, the latency histograms) of `[from, to)` added up.
    fn sum(&self, key: &SeriesKey, from: u64, to: u64, histograms: bool) -> SecondCounts;

    /// Everything of one second (with the analysis's facts); `None` when it had no requests.
    fn second(&self, key: &SeriesKey, sec: u64) -> Option<SecondCounts>;

    /// The statistic of a metric over `[from, to)`, or None when there are no samples.
    fn reduce(&self, key: &SeriesKey, metric: Metric, stat: Statistic, from: u64, to: u64) -> Option<f64> {
        statistic(metric, stat, &self.sum(key, from, to, needs_histograms(metric)))
    }

    /// CloudWatch-style datapoints over `[start, end)` (unix seconds), one per period that has samples,
    /// oldest first. Periods are aligned to multiples of `period` since the epoch.
    fn query(&self, key: &SeriesKey, metric: Metric, stat: Statistic, period: u64, start: u64, end: u64) -> Vec<Datapoint> {
        periods(period, start, end, |from, to| self.reduce(key, metric, stat, from, to))
    }
}

impl MetricsView for Registry {
    fn sum(&self, key: &SeriesKey, from: u64, to: u64, histograms: bool) -> SecondCounts {
        self.get(key).map(|s| s.sum(from, to, histograms)).unwrap_or_default()
    }

    fn second(&self, key: &SeriesKey, sec: u64) -> Option<SecondCounts> {
        self.get(key)?.second(sec)
    }
}

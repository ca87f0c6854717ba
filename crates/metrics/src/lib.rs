//! Per-variant request metrics of canarygate.
//!
//! Each (api, stage, variant) has a [`Series`]: a ring of one-second slots (kept [`RETENTION_SECS`]) of
//! atomic counters and fixed-bucket latency histograms, plus cumulative totals for Prometheus. Recording a
//! request is a handful of relaxed atomic adds: no lock, no allocation. Slots ahead of the clock are
//! cleared by [`Registry::tick`], which the binary calls every second, so writers never reset a slot on
//! the request path (they do so only if the ticker is late). Window queries reduce slots into CloudWatch
//! style datapoints ([`Registry::query`]); [`Registry::render_prometheus`] writes the text exposition.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod histogram;
mod prometheus;
#[cfg(test)]
mod tests;
pub use prometheus::escape as escape_label;
mod series;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
pub use canarygate_model::{Metric, Statistic, Variant};

pub use histogram::{bucket_bounds_us, BUCKETS};
pub use series::{CacheResult, JudgedSecond, Observation, Routed, Series, CHUNK_BYTES, JUDGE_SECS, RETENTION_SECS};

/// Identifies a series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub api: String,
    pub stage: String,
    pub variant: Variant,
}

/// One datapoint of a window query.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Datapoint {
    /// Start of the period, unix seconds.
    pub timestamp: u64,
    pub value: f64,
}

/// All series, behind a copy-on-write map: lookups never lock; creating a series (control plane) swaps
/// in a new map.
#[derive(Default)]
pub struct Registry {
    series: ArcSwap<BTreeMap<SeriesKey, Arc<Series>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The series for a key, created on first use. Called when a routing snapshot is built, so the
    /// request path holds an `Arc<Series>` and never looks anything up.
    pub fn series(&self, api: &str, stage: &str, variant: Variant) -> Arc<Series> {
        let key = SeriesKey {
            api: api.to_string(),
            stage: stage.to_string(),
            variant,
        };
        if let Some(s) = self.series.load().get(&key) {
            return s.clone();
        }
        let mut created = None;
        self.series.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            let s = map.entry(key.clone()).or_insert_with(|| Arc::new(Series::new())).clone();
            created = Some(s);
            map
        });
        created.expect("rcu ran at least once")
    }

    /// Drops the series whose key `keep` refuses (those of deleted stages and APIs). Their memory is
    /// freed once the last request recording into one has finished. Swaps the map only when
    /// something goes.
    pub fn retain(&self, keep: impl Fn(&SeriesKey) -> bool) {
        if self.series.load().keys().all(&keep) {
            return;
        }
        self.series.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.retain(|k, _| keep(k));
            map
        });
    }

    pub fn get(&self, key: &SeriesKey) -> Option<Arc<Series>> {
        self.series.load().get(key).cloned()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        self.series.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory accounting: how many 64-second chunks of one-second slots all series hold now (each
    /// [`CHUNK_BYTES`]). A series that has never served a request holds none.
    pub fn slot_chunks(&self) -> usize {
        self.series.load().values().map(|s| s.chunks_in_use()).sum()
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<SeriesKey> {
        self.series.load().keys().cloned().collect()
    }

    /// Clears the slots of the next seconds so that writers find them ready. Call once a second.
    pub fn tick(&self, now_sec: u64) {
        for s in self.series.load().values() {
            s.prepare(now_sec);
        }
    }

    /// CloudWatch-style datapoints over `[start, end)` (unix seconds), one per period that has samples,
    /// oldest first. Periods are aligned to multiples of `period` since the epoch.
    pub fn query(&self, key: &SeriesKey, metric: Metric, stat: Statistic, period: u64, start: u64, end: u64) -> Vec<Datapoint> {
        match self.get(key) {
            Some(s) => s.query(metric, stat, period, start, end),
            None => Vec::new(),
        }
    }

    /// Writes every series in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        prometheus::render(&self.series.load(), out);
    }
}

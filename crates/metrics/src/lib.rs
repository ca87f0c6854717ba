//! Per-variant request metrics of canarygate.
//!
//! Each (api, stage, variant) has a [`Series`]: a ring of one-second slots (kept [`RETENTION_SECS`]) of
//! atomic counters and fixed-bucket latency histograms, plus cumulative totals for Prometheus. Recording a
//! request is a handful of relaxed atomic adds: no lock, no allocation. Slots ahead of the clock are
//! cleared by [`Registry::tick`], which the binary calls every second, so writers never reset a slot on
//! the request path (they do so only if the ticker is late). Window queries reduce slots into CloudWatch
//! style datapoints ([`MetricsView::query`], also over the sum of every replica's published seconds,
//! [`ClusterSeconds`]); [`Registry::render_prometheus`] writes the text exposition.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod cluster;
mod histogram;
mod prometheus;
mod second;
#[cfg(test)]
mod tests;
mod view;
pub use prometheus::{escape as escape_label, Family};
mod series;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use canarygate_model::{Metric, Statistic, Variant};
use std::sync::RwLock;

pub use cluster::ClusterSeconds;
pub use histogram::{bucket_bounds_us, HistSum, BUCKETS};
pub use second::{needs_histograms, statistic, SecondCounts, ENCODED_LEN, SCALARS};
pub use series::{CacheResult, Observation, OpenConnection, OpenKind, Routed, Series, CHUNK_BYTES, JUDGE_SECS, RETENTION_SECS};
pub use view::MetricsView;

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

/// All series by key. The request path never looks a series up (a routing snapshot holds its
/// `Arc<Series>`), so the map is behind a plain read-write lock that only the control plane takes
/// (snapshot builds, the controller, `/metrics`). Creating a series inserts one entry: building a
/// snapshot of N stages costs N inserts, not N copies of the map.
#[derive(Default)]
pub struct Registry {
    series: RwLock<BTreeMap<SeriesKey, Arc<Series>>>,
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
        if let Some(s) = self.read().get(&key) {
            return s.clone();
        }
        self.write().entry(key).or_insert_with(|| Arc::new(Series::new())).clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<SeriesKey, Arc<Series>>> {
        // A panic while holding the lock cannot leave the map half-changed (single inserts and
        // removals): use it as it is.
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<SeriesKey, Arc<Series>>> {
        self.series.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the series whose key `keep` refuses (those of deleted stages and APIs). Their memory is
    /// freed once the last request recording into one has finished. Swaps the map only when
    /// something goes.
    pub fn retain(&self, keep: impl Fn(&SeriesKey) -> bool) {
        if self.read().keys().all(&keep) {
            return;
        }
        self.write().retain(|k, _| keep(k));
    }

    pub fn get(&self, key: &SeriesKey) -> Option<Arc<Series>> {
        self.read().get(key).cloned()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory accounting: how many 64-second chunks of one-second slots all series hold now (each
    /// [`CHUNK_BYTES`]). A series that has never served a request holds none.
    pub fn slot_chunks(&self) -> usize {
        self.read().values().map(|s| s.chunks_in_use()).sum()
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<SeriesKey> {
        self.read().keys().cloned().collect()
    }

    /// Clears the slots of the next seconds so that writers find them ready. Call once a second.
    pub fn tick(&self, now_sec: u64) {
        // Taken out of the lock first: preparing allocates chunks.
        let all: Vec<Arc<Series>> = self.read().values().cloned().collect();
        for s in all {
            s.prepare(now_sec);
        }
    }

    /// Writes every series in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        prometheus::render(&self.read(), out);
    }
}

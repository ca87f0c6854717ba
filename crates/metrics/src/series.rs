//! One (api, stage, variant) series: a ring of one-second slots and cumulative totals.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use canarygate_model::{Metric, Statistic};

use crate::histogram::Hist;
use crate::histogram::BUCKETS;
use crate::second::{needs_histograms, periods, statistic, SecondCounts};
use crate::Datapoint;

/// How long one-second slots are kept: 3 hours, plus a minute of slack for the ticker.
pub const RETENTION_SECS: u64 = 3 * 3600 + 60;
/// Slots come in chunks of this many seconds, allocated only for windows that had requests.
const CHUNK_SECS: u64 = 64;
/// The ring of chunk cells: the retention, plus two chunks of slack.
const CHUNKS: usize = (RETENTION_SECS / CHUNK_SECS + 3) as usize;
const NO_SECOND: u64 = u64::MAX;

/// The memory of one chunk of slots.
pub const CHUNK_BYTES: usize = std::mem::size_of::<Chunk>();

/// The slots of one 64-second window (`id` = unix second / 64).
struct Chunk {
    id: u64,
    slots: [Slot; CHUNK_SECS as usize],
}

impl Chunk {
    fn new(id: u64) -> Chunk {
        Chunk {
            id,
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }
}

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
    /// How the variant was chosen (the canary analysis needs to know).
    pub routed: Routed,
}

/// How a request's variant was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routed {
    /// At random with the stage's weight.
    #[default]
    Random,
    /// By the variant header or cookie: not a random choice, left out of the canary analysis.
    Forced,
    /// By a sticky key's hash (the key's 64-bit hash): errors count once per key and second.
    Sticky(u64),
}

/// How many recent seconds the judge ring keeps: the controller reads a second again for late
/// arrivals for about a minute.
pub const JUDGE_SECS: u64 = 72;
const STICKY_WORDS: usize = 16;

/// Per-second facts the canary analysis needs beyond the counters, kept only for recent seconds and
/// allocated only for a series that sees forced or sticky requests.
struct JudgeSlot {
    second: AtomicU64,
    forced: AtomicU64,
    forced_e5: AtomicU64,
    /// Forced requests whose latency went into the integration histogram.
    forced_timed: AtomicU64,
    sticky_e5: AtomicU64,
    /// Distinct erroring sticky keys (counted as their hash bits are first set).
    sticky_keys_e5: AtomicU64,
    sticky_bits: [AtomicU64; STICKY_WORDS],
    /// Mirror series only: pairs of a production request and its copy where exactly one failed (5xx),
    /// by which one.
    pairs_copy_failed: AtomicU64,
    pairs_original_failed: AtomicU64,
}

impl JudgeSlot {
    fn new() -> Self {
        JudgeSlot {
            second: AtomicU64::new(NO_SECOND),
            forced: AtomicU64::new(0),
            forced_e5: AtomicU64::new(0),
            forced_timed: AtomicU64::new(0),
            sticky_e5: AtomicU64::new(0),
            sticky_keys_e5: AtomicU64::new(0),
            sticky_bits: std::array::from_fn(|_| AtomicU64::new(0)),
            pairs_copy_failed: AtomicU64::new(0),
            pairs_original_failed: AtomicU64::new(0),
        }
    }

    fn clear(&self) {
        for c in [
            &self.forced,
            &self.forced_e5,
            &self.forced_timed,
            &self.sticky_e5,
            &self.sticky_keys_e5,
            &self.pairs_copy_failed,
            &self.pairs_original_failed,
        ] {
            c.store(0, Relaxed);
        }
        for w in &self.sticky_bits {
            w.store(0, Relaxed);
        }
    }
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
    /// Mirror series: copies not sent because the canary had too many on their way (dropped) or the
    /// request's body could not be copied (skipped), and discordant pairs.
    pub mirror_dropped: AtomicU64,
    pub mirror_skipped: AtomicU64,
    pub pairs_copy_failed: AtomicU64,
    pub pairs_original_failed: AtomicU64,
    /// Connections switched to another protocol (after a 101) and still open, by [`OpenKind`].
    pub open: [AtomicU64; 2],
}

/// What kind of long-lived connection a variant holds open after a 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// `Upgrade: websocket`.
    WebSocket,
    /// Any other protocol a client and upstream switched to.
    Upgrade,
}

impl OpenKind {
    pub const ALL: [OpenKind; 2] = [OpenKind::WebSocket, OpenKind::Upgrade];

    pub fn as_str(self) -> &'static str {
        match self {
            OpenKind::WebSocket => "websocket",
            OpenKind::Upgrade => "upgrade",
        }
    }
}

/// Counts one open connection of its series until dropped.
pub struct OpenConnection {
    series: Arc<Series>,
    kind: OpenKind,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.series.totals.open[self.kind as usize].fetch_sub(1, Relaxed);
    }
}

/// The metrics of one (api, stage, variant). The one-second slots live in 64-second chunks, allocated
/// when a window has its first request (or just before, by the ticker, for a series with traffic) and
/// dropped once older than the retention, so an idle series costs a ring of empty pointers (~1.4 KiB)
/// and its cumulative totals.
pub struct Series {
    chunks: Box<[ArcSwapOption<Chunk>]>,
    /// The window the ticker last dropped old chunks in.
    swept: AtomicU64,
    judge: std::sync::OnceLock<Box<[JudgeSlot]>>,
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
            chunks: (0..CHUNKS).map(|_| ArcSwapOption::empty()).collect(),
            swept: AtomicU64::new(0),
            judge: std::sync::OnceLock::new(),
            totals: Totals {
                by_class: zeros(),
                open: zeros(),
                hit: AtomicU64::new(0),
                miss: AtomicU64::new(0),
                latency: zeros(),
                latency_sum_us: AtomicU64::new(0),
                integration: zeros(),
                integration_sum_us: AtomicU64::new(0),
                integration_n: AtomicU64::new(0),
                mirror_dropped: AtomicU64::new(0),
                mirror_skipped: AtomicU64::new(0),
                pairs_copy_failed: AtomicU64::new(0),
                pairs_original_failed: AtomicU64::new(0),
            },
        }
    }

    fn cell(&self, id: u64) -> &ArcSwapOption<Chunk> {
        &self.chunks[(id % CHUNKS as u64) as usize]
    }

    /// The chunk of window `id`, if it exists (for readers).
    fn chunk(&self, id: u64) -> Option<Arc<Chunk>> {
        self.cell(id).load_full().filter(|c| c.id == id)
    }

    /// Installs a fresh chunk for window `id` (unless one is there already) and returns it. An older
    /// chunk in its cell goes (it is past the retention).
    fn install(&self, id: u64) -> Arc<Chunk> {
        let fresh = Arc::new(Chunk::new(id));
        let before = self.cell(id).rcu(|cur| match cur {
            Some(c) if c.id >= id => Some(c.clone()),
            _ => Some(fresh.clone()),
        });
        match before {
            Some(c) if c.id == id => c,
            _ => self.chunk(id).unwrap_or(fresh),
        }
    }

    /// Makes `slot` belong to `sec` (slots start empty in a fresh chunk).
    fn claim(slot: &Slot, sec: u64) {
        let cur = slot.second.load(Relaxed);
        if (cur == NO_SECOND || cur < sec) && slot.second.compare_exchange(cur, sec, Release, Relaxed).is_ok() {
            slot.clear();
        }
    }

    /// Called by the ticker every second: allocates the next window's chunk ahead of time for a series
    /// that has traffic now (so requests do not), and once a window drops the chunks past the
    /// retention (an idle series gives its memory back).
    pub(crate) fn prepare(&self, now_sec: u64) {
        let (now_id, next_id) = (now_sec / CHUNK_SECS, (now_sec + 2) / CHUNK_SECS);
        if next_id != now_id && self.chunk(now_id).is_some() && self.chunk(next_id).is_none() {
            self.install(next_id);
        }
        // Once a window (even if a tick was missed).
        if self.swept.fetch_max(now_id, Relaxed) < now_id {
            let oldest = now_sec.saturating_sub(RETENTION_SECS) / CHUNK_SECS;
            for cell in self.chunks.iter() {
                if cell.load().as_ref().is_some_and(|c| c.id < oldest) {
                    cell.rcu(|cur| cur.as_ref().filter(|c| c.id >= oldest).cloned());
                }
            }
        }
    }

    /// How many chunks hold slots now (memory: each [`CHUNK_BYTES`]).
    pub(crate) fn chunks_in_use(&self) -> usize {
        self.chunks.iter().filter(|c| c.load().is_some()).count()
    }

    /// Records one request that happened at unix second `sec`. Lock-free; allocates only for the first
    /// request of a 64-second window the ticker did not prepare.
    #[inline]
    /// Counts a connection of this series switched to another protocol as open, until the returned
    /// guard is dropped (`canarygate_open_connections`).
    pub fn open_connection(self: &Arc<Self>, kind: OpenKind) -> OpenConnection {
        self.totals.open[kind as usize].fetch_add(1, Relaxed);
        OpenConnection {
            series: self.clone(),
            kind,
        }
    }

    /// Connections of this kind open now.
    pub fn open_connections(&self, kind: OpenKind) -> u64 {
        self.totals.open[kind as usize].load(Relaxed)
    }

    pub fn record(&self, sec: u64, o: &Observation) {
        let id = sec / CHUNK_SECS;
        let guard = self.cell(id).load();
        match guard.as_deref() {
            Some(c) if c.id == id => self.record_in(c, sec, o),
            _ => {
                drop(guard);
                let c = self.install(id);
                self.record_in(&c, sec, o);
            }
        }
    }

    #[inline]
    fn record_in(&self, chunk: &Chunk, sec: u64, o: &Observation) {
        let slot = &chunk.slots[(sec % CHUNK_SECS) as usize];
        if slot.second.load(Relaxed) != sec {
            Self::claim(slot, sec);
        }
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
        if o.routed != Routed::Random {
            self.record_routing(sec, o, class == 4);
        }
        if let Some(us) = o.integration_us {
            slot.integration.record(us);
            let b = crate::histogram::bucket_of(us);
            self.totals.integration[b].fetch_add(1, Relaxed);
            self.totals.integration_sum_us.fetch_add(us, Relaxed);
            self.totals.integration_n.fetch_add(1, Relaxed);
        }
    }

    /// The judge slot of `sec`, claimed for it; `None` if the slot has moved on to a later second.
    fn judge_slot(&self, sec: u64) -> Option<&JudgeSlot> {
        let ring = self.judge.get_or_init(|| (0..JUDGE_SECS).map(|_| JudgeSlot::new()).collect());
        let j = &ring[(sec % JUDGE_SECS) as usize];
        let cur = j.second.load(Relaxed);
        if cur != sec {
            if cur != NO_SECOND && cur > sec {
                return None;
            }
            if j.second.compare_exchange(cur, sec, Release, Relaxed).is_ok() {
                j.clear();
            }
        }
        Some(j)
    }

    /// A mirrored copy not sent: too many copies on their way to a slow canary.
    pub fn mirror_dropped(&self) {
        self.totals.mirror_dropped.fetch_add(1, Relaxed);
    }

    /// A mirrored copy not sent: the request's body was too large to copy, or never arrived whole.
    pub fn mirror_skipped(&self) {
        self.totals.mirror_skipped.fetch_add(1, Relaxed);
    }

    /// A number that grows whenever a request or a mirrored pair is recorded (the cumulative totals
    /// added up): a reader that saw it unchanged knows no second changed in between.
    pub fn activity(&self) -> u64 {
        let t = &self.totals;
        t.by_class.iter().map(|c| c.load(Relaxed)).sum::<u64>() + t.pairs_copy_failed.load(Relaxed) + t.pairs_original_failed.load(Relaxed)
    }

    /// (dropped, skipped) copies so far.
    pub fn mirror_counts(&self) -> (u64, u64) {
        (self.totals.mirror_dropped.load(Relaxed), self.totals.mirror_skipped.load(Relaxed))
    }

    /// Records, in a mirror series, a pair of a production request (of second `sec`) and its copy of
    /// which exactly one failed.
    #[cold]
    pub fn record_discordant_pair(&self, sec: u64, copy_failed: bool) {
        if copy_failed {
            self.totals.pairs_copy_failed.fetch_add(1, Relaxed);
        } else {
            self.totals.pairs_original_failed.fetch_add(1, Relaxed);
        }
        if let Some(j) = self.judge_slot(sec) {
            if copy_failed {
                j.pairs_copy_failed.fetch_add(1, Relaxed);
            } else {
                j.pairs_original_failed.fetch_add(1, Relaxed);
            }
        }
    }

    /// Records what the analysis needs of a forced or sticky request (off the usual path: the ring is
    /// allocated once, at the series' first such request).
    #[cold]
    fn record_routing(&self, sec: u64, o: &Observation, e5: bool) {
        let Some(j) = self.judge_slot(sec) else { return };
        match o.routed {
            Routed::Random => {}
            Routed::Forced => {
                j.forced.fetch_add(1, Relaxed);
                if e5 {
                    j.forced_e5.fetch_add(1, Relaxed);
                }
                if o.integration_us.is_some() {
                    j.forced_timed.fetch_add(1, Relaxed);
                }
            }
            Routed::Sticky(hash) if e5 => {
                j.sticky_e5.fetch_add(1, Relaxed);
                let bit = hash % (STICKY_WORDS as u64 * 64);
                let mask = 1u64 << (bit % 64);
                if j.sticky_bits[(bit / 64) as usize].fetch_or(mask, Relaxed) & mask == 0 {
                    j.sticky_keys_e5.fetch_add(1, Relaxed);
                }
            }
            Routed::Sticky(_) => {}
        }
    }

    /// Everything this series holds of second `sec`; `None` when it had no requests (or is no longer
    /// kept). A replica publishes these to the cluster.
    pub fn second(&self, sec: u64) -> Option<SecondCounts> {
        let chunk = self.chunk(sec / CHUNK_SECS)?;
        let slot = &chunk.slots[(sec % CHUNK_SECS) as usize];
        if slot.second.load(Relaxed) != sec {
            return None;
        }
        let mut out = SecondCounts::default();
        add_slot(&mut out, slot, true);
        if let Some(ring) = self.judge.get() {
            let j = &ring[(sec % JUDGE_SECS) as usize];
            if j.second.load(Relaxed) == sec {
                out.forced = j.forced.load(Relaxed);
                out.forced_e5 = j.forced_e5.load(Relaxed);
                out.forced_timed = j.forced_timed.load(Relaxed);
                out.sticky_e5 = j.sticky_e5.load(Relaxed);
                out.sticky_keys_e5 = j.sticky_keys_e5.load(Relaxed);
                out.pairs_copy_failed = j.pairs_copy_failed.load(Relaxed);
                out.pairs_original_failed = j.pairs_original_failed.load(Relaxed);
            }
        }
        Some(out)
    }

    /// Datapoints over `[start, end)`, one per `period`-aligned period with samples, oldest first.
    pub fn query(&self, metric: Metric, stat: Statistic, period: u64, start: u64, end: u64) -> Vec<Datapoint> {
        periods(period, start, end, |from, to| self.reduce(metric, stat, from, to))
    }

    /// The counters (and, with `histograms`, the latency histograms) of `[from, to)` added up; the
    /// analysis's per-second facts are left at zero.
    pub fn sum(&self, from: u64, to: u64, histograms: bool) -> SecondCounts {
        let mut out = SecondCounts::default();
        let mut sec = from;
        while sec < to {
            let id = sec / CHUNK_SECS;
            let end = ((id + 1) * CHUNK_SECS).min(to);
            let Some(chunk) = self.chunk(id) else {
                sec = end;
                continue;
            };
            for s in sec..end {
                let slot = &chunk.slots[(s % CHUNK_SECS) as usize];
                if slot.second.load(Relaxed) == s {
                    add_slot(&mut out, slot, histograms);
                }
            }
            sec = end;
        }
        out
    }

    /// The statistic of a metric over `[from, to)`, or None when there are no samples.
    pub fn reduce(&self, metric: Metric, stat: Statistic, from: u64, to: u64) -> Option<f64> {
        statistic(metric, stat, &self.sum(from, to, needs_histograms(metric)))
    }
}

fn add_slot(out: &mut SecondCounts, slot: &Slot, histograms: bool) {
    out.count += slot.count.load(Relaxed);
    out.e4 += slot.e4.load(Relaxed);
    out.e5 += slot.e5.load(Relaxed);
    out.hit += slot.hit.load(Relaxed);
    out.miss += slot.miss.load(Relaxed);
    if histograms {
        out.latency.add(&slot.latency);
        out.integration.add(&slot.integration);
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
            routed: Routed::Random,
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
        let later = t0 + CHUNKS as u64 * CHUNK_SECS;
        s.record(later, &obs(500, 1));
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0, t0 + 1), None);
        assert_eq!(s.reduce(Metric::Error5xx, Statistic::Sum, later, later + 1), Some(1.0));
        s.prepare(later);
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, later, later + 1), Some(1.0));
    }

    #[test]
    fn memory_follows_traffic() {
        let s = Series::new();
        assert_eq!(s.chunks_in_use(), 0, "an idle series holds no slots");
        let t0 = 1_800_000_000u64 / CHUNK_SECS * CHUNK_SECS;
        // Ten minutes of traffic: about ten chunks, and the ticker prepares the next window ahead.
        for sec in t0..t0 + 600 {
            s.prepare(sec);
            s.record(sec, &obs(200, 1));
        }
        assert!((10..=11).contains(&s.chunks_in_use()), "{}", s.chunks_in_use());
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0, t0 + 600), Some(600.0));
        // Idle: three hours later every chunk is dropped; the totals stay.
        for sec in (t0 + 600..t0 + 600 + RETENTION_SECS + 2 * CHUNK_SECS).step_by(CHUNK_SECS as usize) {
            s.prepare(sec);
        }
        assert_eq!(s.chunks_in_use(), 0);
        assert_eq!(s.totals.by_class[1].load(Relaxed), 600);
    }

    #[test]
    fn three_hour_windows_with_gaps_answer_from_the_seconds_that_had_requests() {
        let s = Series::new();
        let t0 = 1_800_000_000u64 / 60 * 60;
        // Bursts at the start, after an hour, and just before three hours; nothing in between.
        let bursts = [(t0, 10u64, 2u64), (t0 + 3600, 5, 0), (t0 + 3 * 3600 - 60, 20, 5)];
        let mut sec = t0;
        for &(at, n, errors) in &bursts {
            while sec <= at {
                s.prepare(sec);
                sec += 30;
            }
            for i in 0..n {
                s.record(at + i % 3, &obs(if i < errors { 503 } else { 200 }, 5));
            }
        }
        s.prepare(t0 + 3 * 3600);
        let end = t0 + 3 * 3600;
        let per_minute = s.query(Metric::Count, Statistic::Sum, 60, t0, end);
        assert_eq!(
            per_minute,
            vec![
                Datapoint {
                    timestamp: t0,
                    value: 10.0
                },
                Datapoint {
                    timestamp: t0 + 3600,
                    value: 5.0
                },
                Datapoint {
                    timestamp: t0 + 3 * 3600 - 60,
                    value: 20.0
                },
            ],
            "a datapoint only for periods with requests"
        );
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0, end), Some(35.0));
        let avg = s.reduce(Metric::Error5xx, Statistic::Average, t0, end).unwrap();
        assert!((avg - 7.0 / 35.0).abs() < 1e-12);
        assert_eq!(s.reduce(Metric::Count, Statistic::Sum, t0 + 60, t0 + 3600), None, "the gap");
        // Slots were allocated only around the bursts: a chunk (or two) each, not three hours' worth.
        assert!(s.chunks_in_use() <= 6, "{}", s.chunks_in_use());
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

    #[test]
    fn judged_seconds_separate_forced_and_sticky_requests() {
        let s = Series::new();
        let t = 1_800_000_000u64;
        assert_eq!(s.second(t), None);
        s.record(t, &obs(200, 10));
        s.record(t, &obs(500, 10));
        let forced = Observation {
            routed: Routed::Forced,
            ..obs(500, 10)
        };
        s.record(t, &forced);
        // One sticky client erroring five times, another once, a third without errors.
        for _ in 0..5 {
            s.record(
                t,
                &Observation {
                    routed: Routed::Sticky(0xdead_beef),
                    ..obs(503, 10)
                },
            );
        }
        s.record(
            t,
            &Observation {
                routed: Routed::Sticky(7),
                ..obs(500, 10)
            },
        );
        s.record(
            t,
            &Observation {
                routed: Routed::Sticky(9),
                ..obs(200, 10)
            },
        );
        let j = s.second(t).unwrap();
        assert_eq!((j.count, j.e5), (10, 8));
        assert_eq!((j.forced, j.forced_e5, j.forced_timed), (1, 1, 1));
        assert_eq!((j.sticky_e5, j.sticky_keys_e5), (6, 2));
        assert_eq!(j.integration.buckets.iter().sum::<u64>(), 10);
        // The ring is reused a little over a minute later; the old second is not read from it.
        let later = t + JUDGE_SECS;
        s.record(later, &forced);
        assert_eq!(s.second(later).unwrap().forced, 1);
        assert_eq!(s.second(t).unwrap().forced, 0);
    }
}

//! The whole cluster's per-second metrics: what each replica published of each second of each series,
//! kept per replica (a replica publishes a second again as late requests finish, replacing what it
//! said before) and added up when read.

use std::collections::{BTreeMap, HashMap};

use crate::second::SecondCounts;
use crate::view::MetricsView;
use crate::SeriesKey;

/// Replicas' published seconds, read as their sum.
#[derive(Default)]
pub struct ClusterSeconds {
    /// Replica names, interned: seconds refer to them by index.
    replicas: Vec<String>,
    seconds: HashMap<SeriesKey, BTreeMap<u64, Vec<(u32, SecondCounts)>>>,
}

impl ClusterSeconds {
    pub fn new() -> Self {
        Self::default()
    }

    /// What `replica` says of second `sec` of a series, replacing what it said before.
    pub fn put(&mut self, replica: &str, key: SeriesKey, sec: u64, counts: SecondCounts) {
        let r = match self.replicas.iter().position(|n| n == replica) {
            Some(i) => i as u32,
            None => {
                self.replicas.push(replica.to_string());
                (self.replicas.len() - 1) as u32
            }
        };
        let by_replica = self.seconds.entry(key).or_default().entry(sec).or_default();
        match by_replica.iter_mut().find(|(i, _)| *i == r) {
            Some((_, c)) => *c = counts,
            None => by_replica.push((r, counts)),
        }
    }

    /// Forgets the seconds before `sec`.
    pub fn forget_before(&mut self, sec: u64) {
        for by_sec in self.seconds.values_mut() {
            *by_sec = by_sec.split_off(&sec);
        }
        self.seconds.retain(|_, by_sec| !by_sec.is_empty());
    }

    /// The earliest second held, if any.
    pub fn first_second(&self) -> Option<u64> {
        self.seconds.values().filter_map(|s| s.keys().next().copied()).min()
    }
}

impl MetricsView for ClusterSeconds {
    fn sum(&self, key: &SeriesKey, from: u64, to: u64, histograms: bool) -> SecondCounts {
        let mut out = SecondCounts::default();
        let Some(by_sec) = self.seconds.get(key) else { return out };
        for by_replica in by_sec.range(from..to).map(|(_, v)| v) {
            for (_, c) in by_replica {
                out.count += c.count;
                out.e4 += c.e4;
                out.e5 += c.e5;
                out.hit += c.hit;
                out.miss += c.miss;
                if histograms {
                    out.latency.merge(&c.latency);
                    out.integration.merge(&c.integration);
                }
            }
        }
        out
    }

    fn second(&self, key: &SeriesKey, sec: u64) -> Option<SecondCounts> {
        let by_replica = self.seconds.get(key)?.get(&sec)?;
        let mut out = SecondCounts::default();
        for (_, c) in by_replica {
            out.merge(c);
        }
        (out.count > 0).then_some(out)
    }
}

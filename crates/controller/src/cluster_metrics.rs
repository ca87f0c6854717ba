//! The whole cluster's metrics, as the controller reads them with several replicas: every replica's
//! published seconds of the recent past (the alarms' windows and the analysis's re-read window), kept
//! in memory and brought up to date with the rows written since the last look; and how far they are
//! complete. [`complete_through`] is the pure rule: a second is read once every live replica has
//! published it, or [`GRACE_SECS`] after it ended with what arrived (naming who is missing).

use std::sync::Mutex;
use std::time::Duration;

use canarygate_metrics::{ClusterSeconds, MetricsView, RETENTION_SECS};
use canarygate_store::{MetricsDb, Reported, StoreError};
use chrono::{DateTime, Utc};

/// How long after a second ended it is read without the replicas that have not published it.
pub const GRACE_SECS: u64 = 2;
/// Rows written this long before the latest one seen are read again (a transaction that wrote them
/// may have committed after a later one).
const OVERLAP: chrono::Duration = chrono::Duration::seconds(5);
/// Old rows are pruned this often (by the leader).
const PRUNE_EVERY_SECS: u64 = 60;

/// How far the cluster's metrics can be read at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completeness {
    /// The current second (what is read from elsewhere, such as Prometheus, is read as of it).
    pub now: u64,
    /// Seconds before this one are read (it is at most the current second).
    pub through: u64,
    /// Live replicas that have not published every second before `through`, by name.
    pub missing: Vec<String>,
}

/// The rule: at `now_sec`, seconds are read up to the oldest mark of the live replicas, but never
/// more than [`GRACE_SECS`] behind now; replicas behind the mark used are named.
pub fn complete_through(now_sec: u64, live: &[Reported]) -> Completeness {
    let floor = now_sec.saturating_sub(GRACE_SECS);
    let oldest = live.iter().map(|r| r.through).min().unwrap_or(floor);
    let through = oldest.max(floor).min(now_sec);
    Completeness {
        now: now_sec,
        through,
        missing: live.iter().filter(|r| r.through < through).map(|r| r.name.clone()).collect(),
    }
}

struct Inner {
    db: MetricsDb,
    seconds: ClusterSeconds,
    /// Seconds from this one on are held.
    covered_from: Option<u64>,
    /// The latest write time read (by the database's clock).
    written: Option<DateTime<Utc>>,
    live: Vec<Reported>,
    pruned_at: u64,
}

/// The cluster's recent metrics for the controller (the leader), read from PostgreSQL.
pub struct ClusterMetrics {
    inner: Mutex<Inner>,
    /// A replica is live while its heartbeat is younger than this.
    live_for: Duration,
}

impl ClusterMetrics {
    pub fn new(url: &str, live_for: Duration) -> ClusterMetrics {
        ClusterMetrics {
            inner: Mutex::new(Inner {
                db: MetricsDb::new(url),
                seconds: ClusterSeconds::new(),
                covered_from: None,
                written: None,
                live: Vec::new(),
                pruned_at: 0,
            }),
            live_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the held seconds (from `from_sec` on) up to date and reads who is live; prunes old rows
    /// now and then. Blocks: call it off the async threads.
    pub fn refresh(&self, now_sec: u64, from_sec: u64) -> Result<(), StoreError> {
        let mut i = self.lock();
        let whole = i.covered_from.is_none_or(|c| from_sec < c);
        let after = if whole { None } else { i.written.map(|w| w - OVERLAP) };
        let (rows, latest) = i.db.written_since(from_sec, after)?;
        if whole {
            i.seconds = ClusterSeconds::new();
            i.covered_from = Some(from_sec);
        }
        for r in rows {
            i.seconds.put(&r.replica, r.key, r.second, r.counts);
        }
        i.written = i.written.max(latest);
        if i.covered_from.is_some_and(|c| c < from_sec) {
            i.seconds.forget_before(from_sec);
            i.covered_from = Some(from_sec);
        }
        i.live = i.db.reported(self.live_for)?;
        if now_sec >= i.pruned_at + PRUNE_EVERY_SECS {
            i.pruned_at = now_sec;
            let gone = i.db.prune(now_sec.saturating_sub(RETENTION_SECS))?;
            if gone > 0 {
                tracing::debug!(rows = gone, "pruned old metric rows");
            }
        }
        Ok(())
    }

    /// How far the held seconds are complete at `now_sec`.
    pub fn completeness(&self, now_sec: u64) -> Completeness {
        complete_through(now_sec, &self.lock().live)
    }

    /// Reads the held seconds.
    pub fn read<T>(&self, f: impl FnOnce(&dyn MetricsView) -> T) -> T {
        f(&self.lock().seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, through: u64) -> Reported {
        Reported {
            name: name.into(),
            through,
        }
    }

    #[test]
    fn a_second_waits_for_every_live_replica_or_the_grace_time() {
        let now = 1_000;
        // Everyone has published up to now: read up to now, nobody missing.
        let all = [r("a", 1_000), r("b", 1_000), r("c", 1_000)];
        assert_eq!(
            complete_through(now, &all),
            Completeness {
                now,
                through: 1_000,
                missing: vec![]
            }
        );
        // One replica a second behind: wait for it.
        let late = [r("a", 1_000), r("b", 999), r("c", 1_000)];
        assert_eq!(
            complete_through(now, &late),
            Completeness {
                now,
                through: 999,
                missing: vec![]
            }
        );
        // Silent for longer than the grace time: read without it, naming it.
        let silent = [r("a", 1_000), r("b", 990), r("c", 1_000)];
        assert_eq!(
            complete_through(now, &silent),
            Completeness {
                now,
                through: 998,
                missing: vec!["b".into()]
            }
        );
        // Nobody live (the database's replica table is empty): the grace rule alone.
        assert_eq!(complete_through(now, &[]).through, 998);
        // A mark ahead of this clock never reads the future.
        assert_eq!(complete_through(now, &[r("a", 1_005)]).through, 1_000);
    }
}

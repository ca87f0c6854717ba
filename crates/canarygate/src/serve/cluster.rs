//! What a replica does beside its peers on one PostgreSQL store: takes and renews the controller lease
//! with its heartbeat, follows other replicas' changes, publishes its metrics each second, and answers
//! `GET /v1/cluster`. Each runs on a thread of its own with its own connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use canarygate_controller::Controller;
use canarygate_metrics::{Registry, SecondCounts, SeriesKey};
use canarygate_store::{Listener, Store};
use chrono::Utc;

/// Since when this replica has failed to follow the store (shown by `GET /v1/cluster`).
pub(super) type StaleSince = Arc<std::sync::Mutex<Option<chrono::DateTime<Utc>>>>;

/// Makes `controller` one replica's: it publishes this replica's metrics, reads the whole cluster's,
/// and acts only while this replica holds the controller lease (taken and renewed here).
#[allow(clippy::too_many_arguments)]
pub(super) fn join(
    controller: Controller,
    coordinator: Arc<std::sync::Mutex<canarygate_store::Coordinator>>,
    me: Replica,
    url: &str,
    metrics: &Arc<Registry>,
    store: &Arc<Store>,
    stale_since: &StaleSince,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Controller {
    publish_metrics(metrics.clone(), url, me.name.clone(), shutdown.clone());
    // A replica is live while its heartbeats are younger than the lease.
    let live = me.ttl.max(Duration::from_secs(3));
    let cluster = Arc::new(canarygate_controller::cluster_metrics::ClusterMetrics::new(url, live));
    let leadership = hold_lease(coordinator, me, store.clone(), stale_since.clone(), shutdown.clone());
    controller.with_cluster_metrics(cluster).with_leadership(leadership)
}

/// This replica, as it takes the lease and sends its heartbeat.
pub(super) struct Replica {
    pub name: String,
    pub addresses: String,
    pub ttl: Duration,
}

/// How often a replica renews a lease of `ttl` (a third of it, at most every 2 s), and how long before
/// it would expire the replica stops acting on it (a fifth, at most 1 s).
fn lease_timing(ttl: Duration) -> (Duration, Duration) {
    ((ttl / 3).min(Duration::from_secs(2)), (ttl / 5).min(Duration::from_secs(1)))
}

/// Since when the replica has been stale, after a round that was (or was not) stale at `now`: the
/// first stale round's time is kept until a round succeeds.
fn stale_mark(since: Option<chrono::DateTime<Utc>>, stale: bool, now: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
    match (stale, since) {
        (true, None) => Some(now),
        (true, kept) => kept,
        (false, _) => None,
    }
}

/// Takes and renews the controller lease (every third of its length) and sends this replica's
/// heartbeat, on a thread of its own; gives the lease up at shutdown. The receiver says while this
/// replica holds it.
fn hold_lease(
    coordinator: Arc<std::sync::Mutex<canarygate_store::Coordinator>>,
    me: Replica,
    store: Arc<Store>,
    stale_since: StaleSince,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::watch::Receiver<Option<canarygate_controller::lease::Leadership>> {
    use canarygate_controller::lease::{Attempt, LeaseView};
    let (tx, rx) = tokio::sync::watch::channel(None);
    let rt = tokio::runtime::Handle::current();
    let (every, margin) = lease_timing(me.ttl);
    let spawned = std::thread::Builder::new().name("canarygate-lease".into()).spawn(move || {
        let mut view = LeaseView::new(&me.name, margin);
        let mut was_leader = false;
        loop {
            if *shutdown.borrow() {
                if was_leader {
                    let _ = coordinator.lock().unwrap_or_else(|e| e.into_inner()).release(&me.name);
                }
                tx.send_replace(None);
                return;
            }
            let started = std::time::Instant::now();
            let attempt = match coordinator.lock().unwrap_or_else(|e| e.into_inner()).acquire(&me.name, me.ttl) {
                Ok(Some((epoch, runs_for))) => Attempt::Held { epoch, runs_for },
                Ok(None) => Attempt::Taken,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the controller lease");
                    Attempt::Failed
                }
            };
            view.observe(attempt, started);
            let leadership = view.leadership(std::time::Instant::now()).cloned();
            let leader = leadership.is_some();
            if leader != was_leader {
                match &leadership {
                    Some(l) => tracing::info!(replica = %me.name, epoch = l.fence.epoch, "this replica runs the controller"),
                    None => tracing::info!(replica = %me.name, "this replica no longer runs the controller"),
                }
                was_leader = leader;
            }
            tx.send_replace(leadership);
            let info = canarygate_store::ReplicaInfo {
                name: me.name.clone(),
                addresses: me.addresses.clone(),
                binary_version: env!("CARGO_PKG_VERSION").to_string(),
                config_version: rt.block_on(store.version()),
                stale_since: *stale_since.lock().unwrap_or_else(|e| e.into_inner()),
            };
            if let Err(e) = coordinator.lock().unwrap_or_else(|e| e.into_inner()).heartbeat(&info) {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
            std::thread::sleep(every.saturating_sub(started.elapsed()));
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the lease thread");
    }
    rx
}

/// `GET /v1/cluster`: from the shared database's replica and lease tables; a lone process reports
/// itself as the only replica and the controller.
pub(super) fn cluster_hook(
    coordinator: Option<Arc<std::sync::Mutex<canarygate_store::Coordinator>>>,
    name: String,
    store: Arc<Store>,
    lease_seconds: u64,
) -> canarygate_admin::ClusterHook {
    Arc::new(move || {
        let (coordinator, name, store) = (coordinator.clone(), name.clone(), store.clone());
        Box::pin(async move {
            let Some(c) = coordinator else {
                return Ok(serde_json::json!({
                    "store": "sqlite",
                    "replicas": [{"name": name, "configVersion": store.version().await, "binaryVersion": env!("CARGO_PKG_VERSION")}],
                    "leader": name,
                }));
            };
            // A replica is live while its heartbeats are younger than the lease.
            let live = Duration::from_secs(lease_seconds.max(3));
            let view = tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(|e| e.into_inner()).cluster(live))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let mut v = serde_json::to_value(&view).map_err(|e| e.to_string())?;
            v["store"] = serde_json::json!("postgres");
            v["self"] = serde_json::json!(name);
            Ok(v)
        })
    })
}

/// With a shared database: loads what other replicas change, when PostgreSQL notifies it and at least
/// once a second (a notification can be missed), on a thread of its own holding the `LISTEN`
/// connection. A replica cut off from the database keeps serving its last state and retries.
pub(super) fn follow_changes(store: Arc<Store>, url: String, stale_since: StaleSince) {
    let rt = tokio::runtime::Handle::current();
    let set_stale = move |stale: bool| {
        let mut s = stale_since.lock().unwrap_or_else(|e| e.into_inner());
        *s = stale_mark(*s, stale, Utc::now());
    };
    let spawned = std::thread::Builder::new().name("canarygate-listen".into()).spawn(move || {
        let mut listener = Listener::new(&url);
        let mut failing = false;
        loop {
            match listener.wait(Duration::from_secs(1)) {
                Ok(_) => {
                    if failing {
                        tracing::info!("the PostgreSQL store is reachable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot listen for changes on the PostgreSQL store; serving the last state, retrying");
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            // Notified or not: compare versions (cheap), load when another replica moved on.
            match rt.block_on(store.sync()) {
                Ok(_) => set_stale(failing),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot load changes from the PostgreSQL store; serving the last state");
                    }
                    set_stale(true);
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the change listener");
    }
}

/// Seconds a replica publishes again when their numbers changed (requests are recorded in the second
/// they arrived, and finish later): the analysis's re-read window.
const REPUBLISH_SECS: u64 = canarygate_metrics::JUDGE_SECS - 8;

/// With a shared database: publishes this replica's metrics once a second, just after the second
/// ends: every recent second of every series whose numbers changed since it was last published, and
/// that seconds before the current one are complete. On a thread of its own with its own connection;
/// the request path is not involved (it records into the same lock-free slots as a lone process).
fn publish_metrics(metrics: Arc<Registry>, url: &str, replica: String, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut db = canarygate_store::MetricsDb::new(url);
    let spawned = std::thread::Builder::new().name("canarygate-metrics".into()).spawn(move || {
        let mut publisher = Publisher::default();
        let mut failing = false;
        loop {
            let last = *shutdown.borrow();
            if !last {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                std::thread::sleep(until_next_round(since_epoch));
            }
            let now_sec = Utc::now().timestamp().max(0) as u64;
            let changed = publisher.round(&metrics, now_sec);
            match db.publish(&replica, &changed, now_sec) {
                Ok(()) => {
                    if failing {
                        tracing::info!("publishing metrics to PostgreSQL again");
                        failing = false;
                    }
                    publisher.published(changed, now_sec);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot publish metrics to PostgreSQL; retrying every second");
                        failing = true;
                    }
                    publisher.failed(now_sec);
                }
            }
            if last {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics publisher");
    }
}

/// How long to wait for the next publishing round: 50 ms into the next second, when the requests of
/// the second that ended have been recorded.
fn until_next_round(since_epoch: Duration) -> Duration {
    Duration::from_millis(1_050).saturating_sub(Duration::from_nanos(u64::from(since_epoch.subsec_nanos())))
}

/// What a replica has published of its metrics, and what it publishes next.
#[derive(Default)]
struct Publisher {
    /// Each recent second of each series as last published.
    sent: HashMap<(SeriesKey, u64), SecondCounts>,
    /// Per series: its activity when last looked at, and how many more rounds to look at its seconds
    /// (two after any change: a request being recorded while its slot was read is picked up by the
    /// next round). An idle series costs one read.
    seen: HashMap<SeriesKey, (u64, u8)>,
}

impl Publisher {
    /// The seconds to publish at `now_sec`: every recent second (the re-read window) of every series
    /// that changed lately whose numbers differ from what was published.
    fn round(&mut self, metrics: &Registry, now_sec: u64) -> Vec<(SeriesKey, u64, SecondCounts)> {
        let from = now_sec.saturating_sub(REPUBLISH_SECS);
        let mut changed = Vec::new();
        let keys = metrics.keys();
        self.seen.retain(|k, _| keys.binary_search(k).is_ok());
        for key in keys {
            let Some(series) = metrics.get(&key) else { continue };
            let activity = series.activity();
            let (last, rounds) = self.seen.entry(key.clone()).or_insert((u64::MAX, 0));
            if *last != activity {
                (*last, *rounds) = (activity, 2);
            }
            if *rounds == 0 {
                continue;
            }
            *rounds -= 1;
            for sec in from..now_sec {
                let Some(c) = series.second(sec) else { continue };
                if self.sent.get(&(key.clone(), sec)) != Some(&c) {
                    changed.push((key.clone(), sec, c));
                }
            }
        }
        changed
    }

    /// The round's seconds were stored.
    fn published(&mut self, changed: Vec<(SeriesKey, u64, SecondCounts)>, now_sec: u64) {
        self.sent.extend(changed.into_iter().map(|(k, s, c)| ((k, s), c)));
        self.forget_before(now_sec);
    }

    /// The round failed: every series is looked at again next round.
    fn failed(&mut self, now_sec: u64) {
        self.seen.clear();
        self.forget_before(now_sec);
    }

    fn forget_before(&mut self, now_sec: u64) {
        let from = now_sec.saturating_sub(REPUBLISH_SECS);
        self.sent.retain(|(_, s), _| *s >= from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canarygate_metrics::{Observation, Variant};

    #[test]
    fn lease_renewals_and_margin() {
        let s = Duration::from_secs;
        assert_eq!(lease_timing(s(3)), (s(1), Duration::from_millis(600)));
        assert_eq!(lease_timing(s(30)), (s(2), s(1)));
    }

    #[test]
    fn staleness_keeps_its_first_moment_until_a_round_succeeds() {
        let t = |n: i64| chrono::DateTime::from_timestamp(1_800_000_000 + n, 0).unwrap();
        let first = stale_mark(None, true, t(0));
        assert_eq!(first, Some(t(0)));
        assert_eq!(stale_mark(first, true, t(5)), Some(t(0)));
        assert_eq!(stale_mark(first, false, t(6)), None);
        assert_eq!(stale_mark(None, false, t(7)), None);
    }

    #[test]
    fn rounds_start_just_after_the_second() {
        assert_eq!(
            until_next_round(Duration::from_millis(1_700_000_000_000)),
            Duration::from_millis(1_050)
        );
        assert_eq!(
            until_next_round(Duration::from_millis(1_700_000_000_900)),
            Duration::from_millis(150)
        );
    }

    #[test]
    fn a_second_is_published_when_it_changes_and_an_idle_series_is_left_alone() {
        let reg = Registry::new();
        let series = reg.series("orders", "prod", Variant::Canary);
        let o = Observation {
            status: 200,
            latency_us: 1_000,
            integration_us: None,
            cache: None,
            routed: Default::default(),
        };
        let t = 1_800_000_000;
        series.record(t, &o);
        let mut p = Publisher::default();
        let first = p.round(&reg, t + 1);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].1, first[0].2.count), (t, 1));
        p.published(first, t + 1);
        // Nothing changed: nothing to publish (one more look, then the idle series is skipped).
        assert!(p.round(&reg, t + 2).is_empty());
        assert!(p.round(&reg, t + 3).is_empty());
        assert_eq!(p.seen[&series_key()].1, 0, "idle: not looked at again");
        // A late request of the same second: published again, whole.
        series.record(t, &o);
        let again = p.round(&reg, t + 4);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].2.count, 2);
        // A failed round: the next one looks at every series again and sends it all.
        p.failed(t + 4);
        assert_eq!(p.round(&reg, t + 5).len(), 1);
    }

    fn series_key() -> SeriesKey {
        SeriesKey {
            api: "orders".into(),
            stage: "prod".into(),
            variant: Variant::Canary,
        }
    }
}

//! Durable state of canarygate.
//!
//! [`Backend`] is the small persistence trait (load everything; a change is a transaction that takes the
//! state's write lock, then writes a batch of rows and bumps the state's version); [`SqliteBackend`]
//! implements it over an embedded SQLite file, [`PostgresBackend`] over a PostgreSQL database that
//! several replicas share. Both run versioned migrations. [`Store`] is the state service on top: it
//! serialises changes, brings its copy up to the stored version when another replica moved it, applies a
//! pure model transition to a copy of the state, writes the difference durably, and only then publishes
//! the new state (through the `on_change` hook, which swaps the gateway's routing snapshot before the API
//! call returns). [`Store::sync`] loads what other replicas wrote (the caller runs it on PostgreSQL's
//! notifications and on a timer).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod apply;
mod pg_metrics;
mod pg_tls;
mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use canarygate_model::rollout::Rollout;
use canarygate_model::state::{kind, kinds, ApiState};
use canarygate_model::{Api, Deployment, Stage, State};
use tokio::sync::{watch, Mutex};

pub use apply::apply;
pub use pg_metrics::{MetricRow, MetricsDb, Reported};
pub use postgres::{ClusterView, Coordinator, Listener, PostgresBackend, ReplicaInfo, ReplicaRow};
pub use sqlite::{backup as backup_sqlite, SqliteBackend};

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The change itself was refused by the model (the client's fault).
    #[error(transparent)]
    Model(#[from] canarygate_model::Error),
    /// The storage failed (the server's fault); nothing was changed.
    #[error("storage error: {0}")]
    Backend(String),
    /// The stored state moved past the version a change was made against (another writer).
    #[error("the stored state changed under this change; nothing was written")]
    Conflict,
    /// A controller write by a replica that no longer holds the controller lease at this epoch
    /// (another replica took over): refused, nothing written.
    #[error("replica {holder} no longer holds the controller lease at epoch {epoch}; nothing was written")]
    Fenced { holder: String, epoch: u64 },
}

/// The controller lease a write is made under: its holder and epoch. A fenced write is refused unless
/// the lease is still the holder's at that epoch and unexpired (by the database's clock), checked in the
/// write's own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: u64,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Backend(format!("corrupt record: {e}"))
    }
}

/// One row-level change, as the backend persists it (and, with a shared database, logs it for the
/// other replicas to apply).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    PutApi(Api),
    /// Deletes the API with its deployments and stages.
    DeleteApi(String),
    PutDeployment {
        api: String,
        seq: usize,
        deployment: Deployment,
    },
    PutStage(Box<Stage>),
    DeleteStage {
        api: String,
        stage: String,
    },
    PutRollout(Box<Rollout>),
    /// A named record of a kind in the model's registry ([`canarygate_model::state::kinds`]) put: its
    /// kind (`alarms`), key and JSON document.
    Put {
        kind: String,
        key: String,
        doc: String,
    },
    /// A named record deleted.
    Delete {
        kind: String,
        key: String,
    },
}

/// Persistence: everything at start, then changes, each a transaction: [`Backend::begin`] takes the
/// state's write lock (across replicas, for a shared database) and says the stored version;
/// [`Backend::commit`] writes a batch of rows, bumps the version and commits; [`Backend::rollback`]
/// gives the lock up with nothing written.
pub trait Backend: Send + 'static {
    /// Everything, and the version it is at (inside a transaction: what it sees).
    fn load(&mut self) -> Result<(State, u64), StoreError>;
    /// Starts a change: the stored version, locked until commit or rollback. With a fence, the change
    /// is refused ([`StoreError::Fenced`]) unless the lease is still held so.
    fn begin(&mut self, fence: Option<&Fence>) -> Result<u64, StoreError>;
    /// Writes `changes` in the transaction [`Backend::begin`] started, and commits; the new version.
    fn commit(&mut self, changes: &[Change]) -> Result<u64, StoreError>;
    fn rollback(&mut self);
    /// The stored version now, when others may change it (a shared database); `None` when only this
    /// process writes the store.
    fn stored_version(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// The changes that took the stored state from `version` to the version returned (inside a
    /// change's transaction: to the version it locked), when the backend still has all of them;
    /// `None` otherwise (the caller loads everything).
    fn changes_since(&mut self, _version: u64) -> Result<Option<(Vec<Change>, u64)>, StoreError> {
        Ok(None)
    }
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &State, new: &State) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    for name in old.apis.keys().filter(|k| !new.apis.contains_key(*k)) {
        out.push(Change::DeleteApi(name.clone()));
    }
    for (name, a) in &new.apis {
        let o = old.apis.get(name);
        // The same `Arc`: untouched by this change (a change copies only the APIs it touches).
        if o.is_some_and(|o| std::sync::Arc::ptr_eq(o, a)) {
            continue;
        }
        let mut o: Option<&ApiState> = o.map(|o| &**o);
        if o.is_some_and(|o| o.deployments.len() > a.deployments.len()) {
            // Deleted and created again in one change (deployments are only ever added otherwise):
            // all of it anew, so that no row of the old one is left behind.
            out.push(Change::DeleteApi(name.clone()));
            o = None;
        }
        if o.map(|o| &o.api) != Some(&a.api) {
            out.push(Change::PutApi(a.api.clone()));
        }
        for (seq, d) in a.deployments.iter().enumerate() {
            if o.and_then(|o| o.deployments.get(seq)) != Some(d) {
                out.push(Change::PutDeployment {
                    api: name.clone(),
                    seq,
                    deployment: d.clone(),
                });
            }
        }
        if let Some(o) = o {
            for s in o.stages.keys().filter(|k| !a.stages.contains_key(*k)) {
                out.push(Change::DeleteStage {
                    api: name.clone(),
                    stage: s.clone(),
                });
            }
        }
        for (sname, s) in &a.stages {
            if o.and_then(|o| o.stages.get(sname)) != Some(s) {
                out.push(Change::PutStage(Box::new(s.clone())));
            }
        }
    }
    // Rollouts are never deleted.
    for (id, r) in &new.rollouts {
        if old.rollouts.get(id) != Some(r) {
            out.push(Change::PutRollout(Box::new(r.clone())));
        }
    }
    for kind in kinds() {
        for c in kind.diff(old, new)? {
            let (kind, key) = (kind.name().to_string(), c.key);
            out.push(match c.doc {
                Some(doc) => Change::Put { kind, key, doc },
                None => Change::Delete { kind, key },
            });
        }
    }
    Ok(out)
}

/// A fresh deployment id: `d-` and five random base-36 characters, as API Gateway's are ten.
pub fn new_deployment_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let suffix: String = (0..5).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    format!("d-{suffix}")
}

type OnChange = Box<dyn Fn(&Arc<State>) + Send + Sync>;

/// The state a change starts from, and the stored version it is.
struct Head {
    state: Arc<State>,
    version: u64,
}

/// The state service: serialised, durable, published changes.
pub struct Store {
    backend: Arc<std::sync::Mutex<Box<dyn Backend>>>,
    /// Serialises changes; holds the state they start from.
    write: Mutex<Head>,
    current: watch::Sender<Arc<State>>,
    on_change: OnChange,
    /// How often this process caught up with another replica's writes: by applying the logged
    /// changes, and by loading everything.
    caught_up: [std::sync::atomic::AtomicU64; 2],
}

/// How a replica caught up with what others wrote (see [`Store::catch_ups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUps {
    pub applied: u64,
    pub loaded: u64,
}

/// Runs `f` on the backend on a blocking thread (both backends' clients block).
async fn blocking<T: Send + 'static>(
    backend: &Arc<std::sync::Mutex<Box<dyn Backend>>>,
    f: impl FnOnce(&mut dyn Backend) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || {
        let mut b = backend
            .lock()
            .map_err(|_| StoreError::Backend("storage poisoned by an earlier panic".into()))?;
        f(&mut **b)
    })
    .await
    .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
}

/// Whether a batch touches routing: APIs, deployments, stages and the kinds of named record the gateway
/// routes by (domains), not rollouts and the rest, which the controller checkpoints every second and
/// which do not rebuild the gateway's snapshot.
fn routes(changes: &[Change]) -> bool {
    changes.iter().any(|c| match c {
        Change::PutRollout(_) => false,
        Change::Put { kind: k, .. } | Change::Delete { kind: k, .. } => kind(k).is_none_or(|k| k.routing()),
        _ => true,
    })
}

impl Store {
    /// Loads the state from the backend. `on_change` runs after every durable change that touches
    /// routing (anything but rollout and alarm records), before the call that made it returns, and
    /// after every state loaded from what other replicas wrote.
    pub fn open(mut backend: Box<dyn Backend>, on_change: OnChange) -> Result<Store, StoreError> {
        let (state, version) = backend.load()?;
        let state = Arc::new(state);
        on_change(&state);
        let (current, _) = watch::channel(state.clone());
        Ok(Store {
            backend: Arc::new(std::sync::Mutex::new(backend)),
            write: Mutex::new(Head { state, version }),
            current,
            on_change,
            caught_up: Default::default(),
        })
    }

    /// How often this process caught up with other replicas' writes, by applying their changes or by
    /// loading everything.
    pub fn catch_ups(&self) -> CatchUps {
        use std::sync::atomic::Ordering::Relaxed;
        CatchUps {
            applied: self.caught_up[0].load(Relaxed),
            loaded: self.caught_up[1].load(Relaxed),
        }
    }

    /// The current state (cheap: an `Arc`).
    pub fn current(&self) -> Arc<State> {
        self.current.borrow().clone()
    }

    /// Subscribes to state changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.current.subscribe()
    }

    /// The stored version this process's state is at.
    pub async fn version(&self) -> u64 {
        self.write.lock().await.version
    }

    /// Ends a change's transaction with nothing written.
    async fn rollback(&self) -> Result<(), StoreError> {
        blocking(&self.backend, |b| {
            b.rollback();
            Ok(())
        })
        .await
    }

    fn publish(&self, head: &mut Head, state: Arc<State>, version: u64, routing: bool) {
        head.state = state.clone();
        head.version = version;
        if routing {
            (self.on_change)(&state);
        }
        self.current.send_replace(state);
    }

    /// Applies `f` to a copy of the state; if it succeeds, persists the difference in one transaction,
    /// then publishes. With a shared database the transaction holds the state's write lock, and a state
    /// another replica moved on is loaded first, so `f` always sees the latest state and no change is
    /// lost. A refused or failed change changes nothing.
    pub async fn mutate<T: Send + 'static>(&self, f: impl FnOnce(&mut State) -> canarygate_model::Result<T>) -> Result<T, StoreError> {
        self.change(None, f).await
    }

    /// [`Store::mutate`] for the controller: refused unless `fence` still holds the controller lease.
    pub async fn mutate_fenced<T: Send + 'static>(
        &self,
        fence: &Fence,
        f: impl FnOnce(&mut State) -> canarygate_model::Result<T>,
    ) -> Result<T, StoreError> {
        self.change(Some(fence.clone()), f).await
    }

    async fn change<T: Send + 'static>(
        &self,
        fence: Option<Fence>,
        f: impl FnOnce(&mut State) -> canarygate_model::Result<T>,
    ) -> Result<T, StoreError> {
        let mut head = self.write.lock().await;
        let stored = blocking(&self.backend, move |b| b.begin(fence.as_ref())).await?;
        if stored != head.version {
            if let Err(e) = self.catch_up(&mut head).await {
                let _ = self.rollback().await;
                return Err(e);
            }
        }
        let mut next = State::clone(&head.state);
        let out = match f(&mut next) {
            Ok(out) => out,
            Err(e) => {
                self.rollback().await?;
                return Err(e.into());
            }
        };
        let changes = match diff(&head.state, &next) {
            Ok(c) => c,
            Err(e) => {
                self.rollback().await?;
                return Err(e);
            }
        };
        if changes.is_empty() {
            self.rollback().await?;
            return Ok(out);
        }
        let routing = routes(&changes);
        let version = blocking(&self.backend, move |b| {
            let r = b.commit(&changes);
            if r.is_err() {
                b.rollback();
            }
            r
        })
        .await?;
        self.publish(&mut head, Arc::new(next), version, routing);
        Ok(out)
    }

    /// Loads and publishes the stored state if another replica moved it past this process's version
    /// (run on every change notification and periodically). Whether it did.
    pub async fn sync(&self) -> Result<bool, StoreError> {
        let mut head = self.write.lock().await;
        let Some(stored) = blocking(&self.backend, |b| b.stored_version()).await? else {
            return Ok(false);
        };
        if stored == head.version {
            return Ok(false);
        }
        self.catch_up(&mut head).await?;
        Ok(true)
    }

    /// Brings `head` up to the stored state and publishes it: by applying the changes logged since
    /// its version when the backend has them all (cheap, and the gateway rebuilds only what they
    /// touch), else by loading everything.
    async fn catch_up(&self, head: &mut Head) -> Result<(), StoreError> {
        let from = head.version;
        if let Some((changes, version)) = blocking(&self.backend, move |b| b.changes_since(from)).await? {
            let mut next = State::clone(&head.state);
            match apply(&mut next, &changes) {
                Ok(()) => {
                    let routing = routes(&changes);
                    self.publish(head, Arc::new(next), version, routing);
                    self.caught_up[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = %e, "logged changes do not fit this replica's state; loading everything"),
            }
        }
        let (state, version) = blocking(&self.backend, |b| b.load()).await?;
        self.publish(head, Arc::new(state), version, true);
        self.caught_up[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canarygate_model::StageInput;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn sample() -> State {
        let mut s = State::default();
        let routes = serde_json::from_value(serde_json::json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap();
        s.put_api("orders", routes, now()).unwrap();
        s.create_deployment("orders", || "d-one".into(), "x".into(), now()).unwrap();
        s.put_stage("orders", "prod", StageInput::default(), now()).unwrap();
        s
    }

    #[test]
    fn applying_a_diff_gives_the_new_state_and_keeps_untouched_apis() {
        fn routes() -> Vec<canarygate_model::Route> {
            serde_json::from_value(serde_json::json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap()
        }
        let steps: Vec<fn(&mut State)> = vec![
            |s| {
                s.put_api("billing", routes(), now()).unwrap();
            },
            |s| {
                s.create_deployment("billing", || "d-two".into(), "y".into(), now()).unwrap();
                s.create_deployment("billing", || "d-three".into(), "z".into(), now()).unwrap();
            },
            |s| {
                s.put_stage("billing", "prod", StageInput::default(), now()).unwrap();
                s.put_stage("billing", "beta", StageInput::default(), now()).unwrap();
            },
            |s| {
                let op: canarygate_model::PatchOperation =
                    serde_json::from_value(serde_json::json!({"op": "replace", "path": "/variables/x", "value": "1"})).unwrap();
                s.patch_stage("billing", "prod", &[op], now()).unwrap();
                s.delete_stage("billing", "beta").unwrap();
            },
            |s| {
                s.put_domain("api.example.com", Vec::new(), None).unwrap();
            },
            |s| {
                s.delete_api("billing").unwrap();
                s.put_api("billing", routes(), now()).unwrap();
            },
            |s| {
                let alarm = serde_json::json!({"name": "errors", "api": "billing", "stage": "prod", "variant": "canary",
                    "metric": "5XXError", "statistic": "Average", "periodSeconds": 1, "evaluationPeriods": 3,
                    "datapointsToAlarm": 2, "comparison": "GreaterThanThreshold", "threshold": 0.05});
                let config = serde_json::json!({"name": "Fast", "type": "TimeBasedCanary", "percentage": 20, "intervalSeconds": 30});
                let notification = serde_json::json!({"name": "chat", "url": "http://127.0.0.1:9/hook", "events": ["RolloutStarted"]});
                for (kind, name, input) in [
                    ("alarms", "errors", alarm),
                    ("deployment_configs", "Fast", config),
                    ("notifications", "chat", notification),
                ] {
                    canarygate_model::state::declared(kind).unwrap().put(s, name, &input).unwrap();
                }
            },
            |s| {
                s.delete_alarm("errors").unwrap();
                s.delete_domain("api.example.com").unwrap();
            },
            |s| {
                s.delete_api("orders").unwrap();
            },
        ];
        let mut old = sample();
        for (i, step) in steps.into_iter().enumerate() {
            let mut new = old.clone();
            step(&mut new);
            let changes = diff(&old, &new).unwrap();
            assert!(!changes.is_empty(), "step {i}");
            // As another replica gets them: through the log's JSON.
            let logged: Vec<Change> = serde_json::from_str(&serde_json::to_string(&changes).unwrap()).unwrap();
            let mut applied = old.clone();
            apply(&mut applied, &logged).unwrap();
            assert_eq!(applied, new, "step {i}: {changes:?}");
            for (name, a) in &applied.apis {
                if old.apis.get(name).is_some_and(|o| Arc::ptr_eq(o, &new.apis[name])) {
                    assert!(Arc::ptr_eq(a, &old.apis[name]), "step {i}: {name} untouched, yet copied");
                }
            }
            old = new;
        }
        // A change that does not fit is refused.
        let mut s = State::default();
        let e = apply(
            &mut s,
            &[
                Change::DeleteApi("x".into()),
                Change::PutStage(Box::new(sample().apis["orders"].stages["prod"].clone())),
            ],
        );
        assert!(e.unwrap_err().contains("unknown API"));
        // So is a record of a kind this build does not know (written by a newer one).
        let unknown = Change::Put {
            kind: "hook_targets".into(),
            key: "x".into(),
            doc: "{}".into(),
        };
        assert!(apply(&mut State::default(), &[unknown]).unwrap_err().contains("unknown kind"));
    }

    #[test]
    fn a_named_record_is_a_row_of_its_kinds_table() {
        let mut old = sample();
        old.put_domain("api.example.com", Vec::new(), None).unwrap();
        let mut new = old.clone();
        new.delete_domain("api.example.com").unwrap();
        canarygate_model::state::declared("analyses")
            .unwrap()
            .put(&mut new, "quick", &serde_json::json!({"errorRate": {"alpha": 0.05}}))
            .unwrap();
        let changes = diff(&old, &new).unwrap();
        let sql: Vec<String> = changes
            .iter()
            .flat_map(|c| rows::row_ops(c).unwrap())
            .map(|op| op.sql(rows::Dialect::Postgres))
            .collect();
        assert_eq!(
            sql,
            [
                "DELETE FROM domains WHERE domain = $1",
                "INSERT INTO analyses (name, doc) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc"
            ]
        );
        // Domains are routing; analyses are not.
        assert!(routes(&changes[..1]) && !routes(&changes[1..]));
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let s = sample();
        assert!(diff(&s, &s).unwrap().is_empty());
        assert_eq!(diff(&State::default(), &s).unwrap().len(), 3);
        let mut t = s.clone();
        t.delete_api("orders").unwrap();
        assert_eq!(diff(&s, &t).unwrap(), vec![Change::DeleteApi("orders".into())]);
    }

    #[tokio::test]
    async fn changes_survive_reopen_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = published.clone();
        let store = Store::open(
            Box::new(SqliteBackend::open(&path).unwrap()),
            Box::new(move |_| {
                p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        )
        .unwrap();
        let want = sample();
        let w = want.clone();
        store
            .mutate(move |s| {
                *s = w;
                Ok(())
            })
            .await
            .unwrap();
        let err = store.mutate(|s| s.delete_stage("orders", "nope")).await.unwrap_err();
        assert!(matches!(err, StoreError::Model(_)));
        assert_eq!(published.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(store);
        let again = Store::open(Box::new(SqliteBackend::open(&path).unwrap()), Box::new(|_| {})).unwrap();
        assert_eq!(*again.current(), want);
    }
}

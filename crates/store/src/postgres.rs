//! The PostgreSQL backend, for several replicas on one database: the same tables as SQLite, plus the
//! state's version in a one-row table. A change is one transaction that first locks that row
//! (`SELECT ... FOR UPDATE`, so changes through different replicas queue rather than overwrite each
//! other), writes its rows, bumps the version and sends `NOTIFY canarygate_changes` with it (delivered
//! when it commits). Each replica also holds a [`Listener`]: its own connection that `LISTEN`s, so it
//! loads a change as soon as it is committed (and polls the version besides: a notification can be
//! missed).
//!
//! Migrations are versioned in `canarygate_schema` and run in one transaction under a transaction-level
//! advisory lock, so replicas started at once migrate the database once; a binary whose schema is older
//! than the database's refuses to start, naming both versions.

use std::time::Duration;

use canarygate_model::State;
use postgres::fallible_iterator::FallibleIterator as _;
use postgres::Client;

use crate::pg_tls::connect;
use crate::rows::{create_record_tables, reads, row_ops, Dialect, Rows, Value};
use crate::{Backend, Change, Fence, StoreError};

/// The controller lease's row.
const LEASE: &str = "controller";
/// The channel replicas are told of changes on.
const CHANNEL: &str = "canarygate_changes";
/// The advisory lock migrations run under (held by their transaction only).
const MIGRATION_LOCK: i64 = 0x6361_6e61_7279_6761; // "canaryga"

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apis (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deployments (api TEXT NOT NULL, id TEXT NOT NULL, seq BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (api, id));
CREATE TABLE stages (api TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (api, name));
CREATE TABLE domains (domain TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE rollouts (id TEXT PRIMARY KEY, api TEXT NOT NULL, stage TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE alarms (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deployment_configs (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE analyses (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE notifications (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deliveries (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE canarygate_state (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
INSERT INTO canarygate_state (id, version) VALUES (1, 0);
"#,
    r#"
CREATE TABLE canarygate_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
INSERT INTO canarygate_lease (name, holder, epoch, expires_at) VALUES ('controller', '', 0, 'epoch');
CREATE TABLE canarygate_replicas (name TEXT PRIMARY KEY, addresses TEXT NOT NULL, binary_version TEXT NOT NULL,
    config_version BIGINT NOT NULL, started_at TIMESTAMPTZ NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL, stale_since TIMESTAMPTZ);
"#,
    r#"
CREATE TABLE canarygate_metrics (api TEXT NOT NULL, stage TEXT NOT NULL, variant TEXT NOT NULL, second BIGINT NOT NULL,
    replica TEXT NOT NULL, counts BIGINT[] NOT NULL, written_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (api, stage, variant, second, replica));
CREATE INDEX canarygate_metrics_written ON canarygate_metrics (written_at);
CREATE INDEX canarygate_metrics_second ON canarygate_metrics (second);
ALTER TABLE canarygate_replicas ADD COLUMN metrics_through BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE canarygate_changelog (version BIGINT PRIMARY KEY, changes TEXT NOT NULL);
"#,
    r#"
CREATE TABLE codedeploy_applications (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
    // The log's named records became `Put`/`Delete` of a kind: entries in the format before are
    // dropped (a replica behind them loads everything), and a replica still on the build before
    // cannot read the new ones (its catch-ups fail until it is upgraded, as after any migration).
    r#"
DELETE FROM canarygate_changelog;
"#,
];

/// How many versions of changes the log keeps: a replica further behind loads everything.
const CHANGELOG_KEEP: i64 = 1_000;

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

impl From<postgres::Error> for StoreError {
    /// With the server's message (a bare `db error` says nothing) or the causes (a TLS handshake's
    /// certificate problem).
    fn from(e: postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return StoreError::Backend(format!("PostgreSQL: {} ({})", db.message(), db.code().code()));
        }
        let mut msg = format!("PostgreSQL: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        StoreError::Backend(msg)
    }
}

/// Brings the database's schema to this build's version, once, whoever else is starting.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS canarygate_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")?;
    let stored: i32 = tx
        .query_opt("SELECT version FROM canarygate_schema WHERE id = 1", &[])?
        .map_or(0, |r| r.get(0));
    let stored = stored.max(0) as usize;
    if stored > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database's schema is version {stored}, newer than this canarygate's ({SCHEMA_VERSION}): upgrade canarygate"
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(stored) {
        tx.batch_execute(m)?;
        tracing::info!(version = i + 1, "migrated the PostgreSQL schema");
    }
    tx.batch_execute(&create_record_tables())?;
    tx.execute(
        "INSERT INTO canarygate_schema (id, version) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&(SCHEMA_VERSION.max(stored) as i32)],
    )?;
    tx.commit()?;
    Ok(())
}

pub struct PostgresBackend {
    /// Made again on the next call after it was lost.
    conn: Conn,
    /// A change's transaction is open (on the connection: lost with it).
    in_change: bool,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and migrates the schema.
    pub fn open(url: &str) -> Result<PostgresBackend, StoreError> {
        let mut conn = Conn::new(url);
        migrate(conn.client()?)?;
        Ok(PostgresBackend { conn, in_change: false })
    }

    /// Runs `f` on the connection; a change's transaction does not survive a lost one.
    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        if !self.conn.connected() {
            self.in_change = false;
        }
        let r = self.conn.with(f);
        if !self.conn.connected() {
            self.in_change = false;
        }
        r
    }
}

fn read_rows(client: &mut Client) -> Result<(Rows, u64), postgres::Error> {
    let version: i64 = client.query_one("SELECT version FROM canarygate_state WHERE id = 1", &[])?.get(0);
    let mut rows = Rows::default();
    for (table, query) in reads() {
        let result = client.query(&query, &[])?;
        match table {
            "deployments" => rows.deployments = result.iter().map(|r| (r.get(0), r.get(1))).collect(),
            _ => {
                rows.docs.insert(table, result.iter().map(|r| r.get(0)).collect());
            }
        }
    }
    Ok((rows, version.max(0) as u64))
}

impl PostgresBackend {
    /// Runs `read` as of one moment: inside the change's transaction when one is open, else in a
    /// read-only repeatable-read transaction of its own.
    fn snapshot<T>(&mut self, read: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        let in_change = self.in_change;
        self.with(|c| {
            if in_change {
                return read(c);
            }
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
            let r = read(c);
            c.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
            r
        })
    }
}

impl Backend for PostgresBackend {
    fn load(&mut self) -> Result<(State, u64), StoreError> {
        // One snapshot for every table and the version.
        let (rows, version) = self.snapshot(read_rows)?;
        Ok((rows.into_state()?, version))
    }

    fn begin(&mut self, fence: Option<&Fence>) -> Result<u64, StoreError> {
        if self.in_change {
            self.rollback();
        }
        let (version, fenced): (i64, bool) = self.with(|c| {
            c.batch_execute("BEGIN")?;
            let version = c.query_one("SELECT version FROM canarygate_state WHERE id = 1 FOR UPDATE", &[])?.get(0);
            let Some(f) = fence else { return Ok((version, false)) };
            // FOR SHARE: a takeover (which updates the row) waits until this change has committed.
            let held = c.query_opt(
                "SELECT 1 FROM canarygate_lease WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp() FOR SHARE",
                &[&LEASE, &f.holder, &(f.epoch as i64)],
            )?;
            Ok((version, held.is_none()))
        })?;
        self.in_change = true;
        if let (true, Some(f)) = (fenced, fence) {
            self.rollback();
            return Err(StoreError::Fenced {
                holder: f.holder.clone(),
                epoch: f.epoch,
            });
        }
        Ok(version.max(0) as u64)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<u64, StoreError> {
        if !self.in_change {
            return Err(StoreError::Backend("a change was committed without its transaction".into()));
        }
        let mut ops = Vec::new();
        for c in changes {
            ops.extend(row_ops(c)?);
        }
        let logged = serde_json::to_string(changes)?;
        let version: i64 = self.with(|c| {
            for op in &ops {
                let values: Vec<&(dyn postgres::types::ToSql + Sync)> = op
                    .values()
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => t as &(dyn postgres::types::ToSql + Sync),
                        Value::Int(i) => i as &(dyn postgres::types::ToSql + Sync),
                    })
                    .collect();
                c.execute(op.sql(Dialect::Postgres).as_str(), &values)?;
            }
            let v: i64 = c
                .query_one(
                    "UPDATE canarygate_state SET version = version + 1 WHERE id = 1 RETURNING version",
                    &[],
                )?
                .get(0);
            // The change, for the other replicas to apply rather than load everything.
            c.execute(
                "INSERT INTO canarygate_changelog (version, changes) VALUES ($1, $2)",
                &[&v, &logged],
            )?;
            if v % 100 == 0 {
                c.execute("DELETE FROM canarygate_changelog WHERE version <= $1", &[&(v - CHANGELOG_KEEP)])?;
            }
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &v.to_string()])?;
            c.batch_execute("COMMIT")?;
            Ok(v)
        })?;
        self.in_change = false;
        Ok(version.max(0) as u64)
    }

    fn rollback(&mut self) {
        if self.in_change {
            self.in_change = false;
            if self.conn.connected() && self.conn.with(|c| c.batch_execute("ROLLBACK")).is_err() {
                self.conn.forget();
            }
        }
    }

    fn changes_since(&mut self, version: u64) -> Result<Option<(Vec<Change>, u64)>, StoreError> {
        let read = |c: &mut Client| -> Result<(i64, Vec<(i64, String)>), postgres::Error> {
            let stored: i64 = c.query_one("SELECT version FROM canarygate_state WHERE id = 1", &[])?.get(0);
            let rows = c.query(
                "SELECT version, changes FROM canarygate_changelog WHERE version > $1 AND version <= $2 ORDER BY version",
                &[&(version as i64), &stored],
            )?;
            Ok((stored, rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
        };
        // The version and the log as of one moment.
        let (stored, logged) = self.snapshot(read)?;
        // Every version in between, or nothing (pruned, or written before the log existed).
        let complete = logged.len() as i64 == stored - version as i64
            && logged.iter().enumerate().all(|(i, (v, _))| *v == version as i64 + 1 + i as i64);
        if !complete {
            return Ok(None);
        }
        let mut changes = Vec::new();
        for (v, text) in logged {
            match serde_json::from_str::<Vec<Change>>(&text) {
                Ok(c) => changes.extend(c),
                // Written by another build (a changed log format): load everything instead.
                Err(e) => {
                    tracing::warn!(version = v, error = %e, "a logged change this build cannot read; loading everything");
                    return Ok(None);
                }
            }
        }
        Ok(Some((changes, stored.max(0) as u64)))
    }

    fn stored_version(&mut self) -> Result<Option<u64>, StoreError> {
        let v: i64 = self.with(|c| Ok(c.query_one("SELECT version FROM canarygate_state WHERE id = 1", &[])?.get(0)))?;
        Ok(Some(v.max(0) as u64))
    }
}

/// A replica's own connection that `LISTEN`s for committed changes.
pub struct Listener {
    url: String,
    client: Option<Client>,
}

impl Listener {
    pub fn new(url: &str) -> Listener {
        Listener {
            url: url.to_string(),
            client: None,
        }
    }

    /// Waits up to `timeout` for a change notification. `Ok(true)` when one came — or when the
    /// connection was (re)made, since notifications sent while it was down are lost: the caller loads
    /// the state either way. `Err` when the database cannot be reached (the caller retries later).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut c = connect(&self.url)?;
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            self.client = Some(c);
            return Ok(true);
        }
        let client = self.client.as_mut().expect("connected above");
        let got = {
            let mut notifications = client.notifications();
            let first = notifications.timeout_iter(timeout).next();
            if matches!(first, Ok(Some(_))) {
                // Several changes at once: one load covers them all.
                while let Ok(Some(_)) = notifications.iter().next() {}
            }
            first.map(|n| n.is_some())
        };
        if got.is_err() {
            self.client = None;
        }
        Ok(got?)
    }
}

/// What a replica says of itself in its heartbeat.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub name: String,
    /// Its listeners, as `gateway=http://...,admin=http://...`.
    pub addresses: String,
    pub binary_version: String,
    /// The state version it serves.
    pub config_version: u64,
    /// Since when it has been unable to read the database (sent once it can again).
    pub stale_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// One replica as the cluster table has it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    pub name: String,
    pub addresses: String,
    pub binary_version: String,
    pub config_version: u64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_seconds: f64,
    pub stale_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// The cluster: replicas, and who holds the controller lease.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub replicas: Vec<ReplicaRow>,
    /// The lease holder while the lease runs.
    pub leader: Option<String>,
    pub epoch: u64,
    pub lease_expires_at: chrono::DateTime<chrono::Utc>,
}

/// A replica's own connection for the controller lease, its heartbeat and the cluster view (never the
/// connection a change's transaction is open on).
pub struct Coordinator {
    conn: Conn,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// A connection of its own, made on first use and made again after it was lost.
pub(crate) struct Conn {
    url: String,
    client: Option<Client>,
}

impl Conn {
    pub(crate) fn new(url: &str) -> Conn {
        Conn {
            url: url.to_string(),
            client: None,
        }
    }

    /// The connection, made now if there is none (or it was closed).
    pub(crate) fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.url)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Whether a connection is held (and not known to be closed).
    pub(crate) fn connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Drops the connection (closed off this thread): the next call connects again.
    pub(crate) fn forget(&mut self) {
        if let Some(c) = self.client.take() {
            close_elsewhere(c);
        }
    }

    /// Runs `f` on the connection; a failure forgets the connection if it was lost.
    pub(crate) fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        let client = self.client()?;
        let r = f(client);
        if r.is_err() && client.is_closed() {
            self.client = None;
        }
        Ok(r?)
    }
}

/// Closing a client blocks: never on an async thread (a store may be dropped on one).
fn close_elsewhere(c: Client) {
    let _ = std::thread::Builder::new()
        .name("canarygate-pg-close".into())
        .spawn(move || drop(c));
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.forget();
    }
}

impl Coordinator {
    pub fn new(url: &str) -> Coordinator {
        Coordinator {
            conn: Conn::new(url),
            started_at: chrono::Utc::now(),
        }
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        self.conn.with(f)
    }

    /// Takes the controller lease for `holder` (when it is free or expired) or renews it (when
    /// `holder` has it), for `ttl` by the database's clock. The epoch held and how long the lease
    /// runs from now; `None` while another replica holds it. A takeover starts a new epoch; a renewal
    /// keeps it.
    pub fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Option<(u64, Duration)>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "UPDATE canarygate_lease
                    SET epoch = CASE WHEN holder = $2 AND expires_at > clock_timestamp() THEN epoch ELSE epoch + 1 END,
                        holder = $2,
                        expires_at = clock_timestamp() + make_interval(secs => $3)
                  WHERE name = $1 AND (holder = $2 OR expires_at <= clock_timestamp())
              RETURNING epoch, EXTRACT(EPOCH FROM (expires_at - clock_timestamp()))::float8",
                &[&LEASE, &holder, &ttl.as_secs_f64()],
            )
        })?;
        Ok(row.map(|r| {
            let epoch: i64 = r.get(0);
            let left: f64 = r.get(1);
            (epoch.max(0) as u64, Duration::from_secs_f64(left.max(0.0)))
        }))
    }

    /// Gives the lease up (at shutdown), so another replica takes over at once.
    pub fn release(&mut self, holder: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE canarygate_lease SET expires_at = clock_timestamp() WHERE name = $1 AND holder = $2",
                &[&LEASE, &holder],
            )
        })?;
        Ok(())
    }

    /// Records this replica's heartbeat.
    pub fn heartbeat(&mut self, me: &ReplicaInfo) -> Result<(), StoreError> {
        let started = self.started_at;
        self.with(|c| {
            c.execute(
                "INSERT INTO canarygate_replicas (name, addresses, binary_version, config_version, started_at, heartbeat_at, stale_since)
                      VALUES ($1, $2, $3, $4, $5, clock_timestamp(), $6)
                 ON CONFLICT (name) DO UPDATE SET addresses = excluded.addresses, binary_version = excluded.binary_version,
                      config_version = excluded.config_version, started_at = excluded.started_at,
                      heartbeat_at = excluded.heartbeat_at, stale_since = excluded.stale_since",
                &[
                    &me.name,
                    &me.addresses,
                    &me.binary_version,
                    &(me.config_version as i64),
                    &started,
                    &me.stale_since,
                ],
            )
        })?;
        Ok(())
    }

    /// The replicas that sent a heartbeat within `live` (by the database's clock), and the lease.
    pub fn cluster(&mut self, live: Duration) -> Result<ClusterView, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT name, addresses, binary_version, config_version, started_at, heartbeat_at,
                        EXTRACT(EPOCH FROM (clock_timestamp() - heartbeat_at))::float8, stale_since
                   FROM canarygate_replicas
                  WHERE heartbeat_at > clock_timestamp() - make_interval(secs => $1)
                  ORDER BY name",
                &[&live.as_secs_f64()],
            )?;
            let lease = c.query_one(
                "SELECT holder, epoch, expires_at, expires_at > clock_timestamp() FROM canarygate_lease WHERE name = $1",
                &[&LEASE],
            )?;
            let held: bool = lease.get(3);
            let holder: String = lease.get(0);
            let epoch: i64 = lease.get(1);
            Ok(ClusterView {
                replicas: rows
                    .iter()
                    .map(|r| ReplicaRow {
                        name: r.get(0),
                        addresses: r.get(1),
                        binary_version: r.get(2),
                        config_version: r.get::<_, i64>(3).max(0) as u64,
                        started_at: r.get(4),
                        heartbeat_at: r.get(5),
                        heartbeat_age_seconds: r.get(6),
                        stale_since: r.get(7),
                    })
                    .collect(),
                leader: held.then_some(holder),
                epoch: epoch.max(0) as u64,
                lease_expires_at: lease.get(2),
            })
        })
    }
}

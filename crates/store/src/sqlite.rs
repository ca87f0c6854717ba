//! The embedded SQLite backend: one file, WAL journal, `synchronous=FULL` so a change is on disk when
//! its transaction commits; schema versions in `PRAGMA user_version`, migrated forward at open.

use std::path::Path;

use canarygate_model::deployment_config::DeploymentConfig;
use canarygate_model::notification::{Delivery, Notification};
use canarygate_model::rollout::Rollout;
use canarygate_model::state::{AlarmEntry, ApiState};
use canarygate_model::{Api, Deployment, Domain, Stage, State};
use rusqlite::{params, Connection};

use crate::{Backend, Change, StoreError};

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE apis (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deployments (api TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, doc TEXT NOT NULL,
                          PRIMARY KEY (api, id));
CREATE TABLE stages (api TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (api, name));
CREATE TABLE domains (domain TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
    r#"
CREATE TABLE rollouts (id TEXT PRIMARY KEY, api TEXT NOT NULL, stage TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE alarms (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deployment_configs (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
    r#"
CREATE TABLE analyses (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
    r#"
CREATE TABLE notifications (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE deliveries (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
];

pub struct SqliteBackend {
    conn: Connection,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).map_err(|_| StoreError::Backend(format!("bad schema version {version}")))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this canarygate understands ({}); upgrade canarygate",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "migrated state database");
        }
        Ok(SqliteBackend { conn })
    }
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> Result<State, StoreError> {
        let mut state = State::default();
        let mut stmt = self.conn.prepare("SELECT doc FROM apis")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let api: Api = serde_json::from_str(&doc?)?;
            state.apis.insert(
                api.name.clone(),
                std::sync::Arc::new(ApiState {
                    api,
                    deployments: Vec::new(),
                    stages: Default::default(),
                }),
            );
        }
        let mut stmt = self.conn.prepare("SELECT api, doc FROM deployments ORDER BY api, seq")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (api, doc) = row?;
            let d: Deployment = serde_json::from_str(&doc)?;
            if let Some(a) = state.apis.get_mut(&api).map(std::sync::Arc::make_mut) {
                a.deployments.push(d);
            }
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM stages")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let s: Stage = serde_json::from_str(&doc?)?;
            if let Some(a) = state.apis.get_mut(&s.api).map(std::sync::Arc::make_mut) {
                a.stages.insert(s.name.clone(), s);
            }
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM domains")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let d: Domain = serde_json::from_str(&doc?)?;
            state.domains.insert(d.domain.clone(), d);
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM rollouts")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let r: Rollout = serde_json::from_str(&doc?)?;
            state.rollouts.insert(r.id.clone(), r);
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM alarms")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let a: AlarmEntry = serde_json::from_str(&doc?)?;
            state.alarms.insert(a.alarm.name.clone(), a);
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM notifications")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let n: Notification = serde_json::from_str(&doc?)?;
            state.notifications.insert(n.name.clone(), n);
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM deliveries")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let d: Delivery = serde_json::from_str(&doc?)?;
            state.deliveries.insert(d.id.clone(), d);
        }
        let mut stmt = self.conn.prepare("SELECT name, doc FROM analyses")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (name, doc) = row?;
            state.analyses.insert(name, serde_json::from_str(&doc)?);
        }
        let mut stmt = self.conn.prepare("SELECT doc FROM deployment_configs")?;
        for doc in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let c: DeploymentConfig = serde_json::from_str(&doc?)?;
            state.deployment_configs.insert(c.name.clone(), c);
        }
        Ok(state)
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for c in changes {
            match c {
                Change::PutApi(a) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO apis (name, doc) VALUES (?1, ?2)",
                        params![a.name, serde_json::to_string(a)?],
                    )?;
                }
                Change::DeleteApi(name) => {
                    tx.execute("DELETE FROM apis WHERE name = ?1", params![name])?;
                    tx.execute("DELETE FROM deployments WHERE api = ?1", params![name])?;
                    tx.execute("DELETE FROM stages WHERE api = ?1", params![name])?;
                }
                Change::PutDeployment { api, seq, deployment } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO deployments (api, id, seq, doc) VALUES (?1, ?2, ?3, ?4)",
                        params![api, deployment.id, *seq as i64, serde_json::to_string(deployment)?],
                    )?;
                }
                Change::PutStage(s) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO stages (api, name, doc) VALUES (?1, ?2, ?3)",
                        params![s.api, s.name, serde_json::to_string(s)?],
                    )?;
                }
                Change::DeleteStage { api, stage } => {
                    tx.execute("DELETE FROM stages WHERE api = ?1 AND name = ?2", params![api, stage])?;
                }
                Change::PutDomain(d) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO domains (domain, doc) VALUES (?1, ?2)",
                        params![d.domain, serde_json::to_string(d)?],
                    )?;
                }
                Change::DeleteDomain(d) => {
                    tx.execute("DELETE FROM domains WHERE domain = ?1", params![d])?;
                }
                Change::PutRollout(r) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO rollouts (id, api, stage, doc) VALUES (?1, ?2, ?3, ?4)",
                        params![r.id, r.api, r.stage, serde_json::to_string(r)?],
                    )?;
                }
                Change::PutAlarm(a) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO alarms (name, doc) VALUES (?1, ?2)",
                        params![a.alarm.name, serde_json::to_string(a)?],
                    )?;
                }
                Change::DeleteAlarm(name) => {
                    tx.execute("DELETE FROM alarms WHERE name = ?1", params![name])?;
                }
                Change::PutDeploymentConfig(c) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO deployment_configs (name, doc) VALUES (?1, ?2)",
                        params![c.name, serde_json::to_string(c)?],
                    )?;
                }
                Change::DeleteDeploymentConfig(name) => {
                    tx.execute("DELETE FROM deployment_configs WHERE name = ?1", params![name])?;
                }
                Change::PutAnalysis(a) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO analyses (name, doc) VALUES (?1, ?2)",
                        params![a.name.as_deref().unwrap_or_default(), serde_json::to_string(a)?],
                    )?;
                }
                Change::DeleteAnalysis(name) => {
                    tx.execute("DELETE FROM analyses WHERE name = ?1", params![name])?;
                }
                Change::PutNotification(n) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO notifications (name, doc) VALUES (?1, ?2)",
                        params![n.name, serde_json::to_string(n)?],
                    )?;
                }
                Change::DeleteNotification(name) => {
                    tx.execute("DELETE FROM notifications WHERE name = ?1", params![name])?;
                }
                Change::PutDelivery(d) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO deliveries (id, doc) VALUES (?1, ?2)",
                        params![d.id, serde_json::to_string(d)?],
                    )?;
                }
                Change::DeleteDelivery(id) => {
                    tx.execute("DELETE FROM deliveries WHERE id = ?1", params![id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

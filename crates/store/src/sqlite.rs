//! The embedded SQLite backend: one file, WAL journal, `synchronous=FULL` so a change is on disk when
//! its transaction commits; schema versions in `PRAGMA user_version`, migrated forward at open.

use std::path::Path;

use canarygate_model::State;
use rusqlite::Connection;

use crate::rows::{create_record_tables, reads, row_ops, Dialect, Rows, Value};
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
    r#"
CREATE TABLE codedeploy_applications (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
"#,
];

pub struct SqliteBackend {
    conn: Connection,
    /// Changes written since it was opened.
    version: u64,
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
        conn.execute_batch(&create_record_tables())?;
        Ok(SqliteBackend { conn, version: 0 })
    }
}

/// Copies the database at `from` to a new file `to` with SQLite's online backup, while other connections
/// (a serving canarygate) keep reading and writing it: the copy is consistent, as of one moment. `to`
/// must not exist yet. Returns the copy's schema version.
pub fn backup(from: &Path, to: &Path) -> Result<u32, StoreError> {
    if to.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists already; the backup is written to a new file",
            to.display()
        )));
    }
    let copied = copy_online(from, to);
    if copied.is_err() && to.is_file() {
        // Nothing half-written is left behind.
        let _ = std::fs::remove_file(to);
    }
    copied
}

fn copy_online(from: &Path, to: &Path) -> Result<u32, StoreError> {
    if !from.is_file() {
        return Err(StoreError::Backend(format!("no state database at {}", from.display())));
    }
    if to.exists() {
        return Err(StoreError::Backend(format!(
            "{} exists already; the backup is written to a new file",
            to.display()
        )));
    }
    let src = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut dst = Connection::open(to)?;
    {
        let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // Every page in one step, inside one read transaction: a consistent snapshot, which WAL mode
        // takes without blocking the server's writes (a copy in several steps would start again after
        // each of them).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match b.step(-1)? {
                rusqlite::backup::StepResult::Done => break,
                // Busy or locked (a checkpoint in progress): try again shortly.
                _ if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
                _ => {
                    return Err(StoreError::Backend(
                        "the state database stayed busy for 30 s; no backup taken".into(),
                    ))
                }
            }
        }
    }
    // The copy needs no WAL of its own: one file to move around.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    let version: i64 = dst.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(u32::try_from(version).unwrap_or(0))
}

impl Backend for SqliteBackend {
    fn load(&mut self) -> Result<(State, u64), StoreError> {
        let mut rows = Rows::default();
        for (table, query) in reads() {
            let mut stmt = self.conn.prepare(&query)?;
            match table {
                "deployments" => {
                    rows.deployments = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                        .collect::<Result<Vec<_>, _>>()?;
                }
                _ => {
                    let docs = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
                    rows.docs.insert(table, docs);
                }
            }
        }
        // One process owns the file: the version only counts this process's changes.
        Ok((rows.into_state()?, self.version))
    }

    fn begin(&mut self, _fence: Option<&crate::Fence>) -> Result<u64, StoreError> {
        // One process owns the file and the store serialises its changes: nothing to lock, and its
        // controller is the only one.
        Ok(self.version)
    }

    fn rollback(&mut self) {}

    fn commit(&mut self, changes: &[Change]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        for c in changes {
            for op in row_ops(c)? {
                let values: Vec<&dyn rusqlite::ToSql> = op
                    .values()
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => t as &dyn rusqlite::ToSql,
                        Value::Int(i) => i as &dyn rusqlite::ToSql,
                    })
                    .collect();
                tx.execute(&op.sql(Dialect::Sqlite), values.as_slice())?;
            }
        }
        tx.commit()?;
        self.version += 1;
        Ok(self.version)
    }
}

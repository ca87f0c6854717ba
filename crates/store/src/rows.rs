//! The relational shape of the state, shared by the SQLite and PostgreSQL backends: which rows a
//! [`Change`] writes or deletes, the SQL for them (the two dialects differ only in placeholders), and the
//! state assembled from the rows read back. Every record is a JSON document in a `doc` column, keyed by
//! its natural key.

use std::sync::Arc;

use canarygate_model::rollout::Rollout;
use canarygate_model::state::{kind, kinds, ApiState, Kind};
use canarygate_model::{Api, Deployment, Stage, State};

use crate::{Change, StoreError};

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
}

/// One row written or deleted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowOp {
    /// Insert or replace: `columns` (the key columns are the first `keys`), with `values` in order.
    Upsert {
        table: &'static str,
        columns: Vec<&'static str>,
        keys: usize,
        values: Vec<Value>,
    },
    /// Delete the rows whose `columns` equal `values`.
    Delete {
        table: &'static str,
        columns: Vec<&'static str>,
        values: Vec<Value>,
    },
}

/// How a dialect writes its `n`th placeholder (1-based).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    /// `?1`
    Sqlite,
    /// `$1`
    Postgres,
}

impl Dialect {
    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

impl RowOp {
    /// The statement, in `dialect`, with a placeholder per value (see [`RowOp::values`]).
    pub(crate) fn sql(&self, dialect: Dialect) -> String {
        match self {
            RowOp::Upsert { table, columns, keys, .. } => {
                let marks: Vec<String> = (1..=columns.len()).map(|n| dialect.placeholder(n)).collect();
                let set: Vec<String> = columns[*keys..].iter().map(|c| format!("{c} = excluded.{c}")).collect();
                format!(
                    "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
                    columns.join(", "),
                    marks.join(", "),
                    columns[..*keys].join(", "),
                    set.join(", ")
                )
            }
            RowOp::Delete { table, columns, .. } => {
                let cond: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = {}", dialect.placeholder(i + 1)))
                    .collect();
                format!("DELETE FROM {table} WHERE {}", cond.join(" AND "))
            }
        }
    }

    pub(crate) fn values(&self) -> &[Value] {
        match self {
            RowOp::Upsert { values, .. } | RowOp::Delete { values, .. } => values,
        }
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn doc<T: serde::Serialize>(v: &T) -> Result<Value, StoreError> {
    Ok(Value::Text(serde_json::to_string(v)?))
}

fn upsert(table: &'static str, columns: &[&'static str], keys: usize, values: Vec<Value>) -> RowOp {
    RowOp::Upsert {
        table,
        columns: columns.to_vec(),
        keys,
        values,
    }
}

fn delete(table: &'static str, columns: &[&'static str], values: Vec<Value>) -> RowOp {
    RowOp::Delete {
        table,
        columns: columns.to_vec(),
        values,
    }
}

/// The rows a change writes or deletes.
pub(crate) fn row_ops(c: &Change) -> Result<Vec<RowOp>, StoreError> {
    Ok(match c {
        Change::PutApi(a) => vec![upsert("apis", &["name", "doc"], 1, vec![text(&a.name), doc(a)?])],
        Change::DeleteApi(name) => vec![
            delete("apis", &["name"], vec![text(name)]),
            delete("deployments", &["api"], vec![text(name)]),
            delete("stages", &["api"], vec![text(name)]),
        ],
        Change::PutDeployment { api, seq, deployment } => vec![upsert(
            "deployments",
            &["api", "id", "seq", "doc"],
            2,
            vec![text(api), text(&deployment.id), Value::Int(*seq as i64), doc(deployment)?],
        )],
        Change::PutStage(s) => vec![upsert(
            "stages",
            &["api", "name", "doc"],
            2,
            vec![text(&s.api), text(&s.name), doc(s)?],
        )],
        Change::DeleteStage { api, stage } => vec![delete("stages", &["api", "name"], vec![text(api), text(stage)])],
        Change::PutRollout(r) => vec![upsert(
            "rollouts",
            &["id", "api", "stage", "doc"],
            1,
            vec![text(&r.id), text(&r.api), text(&r.stage), doc(r)?],
        )],
        Change::Put { kind: k, key, doc } => {
            let k = known(k)?;
            vec![upsert(k.table(), &[k.key_column(), "doc"], 1, vec![text(key), text(doc)])]
        }
        Change::Delete { kind: k, key } => {
            let k = known(k)?;
            vec![delete(k.table(), &[k.key_column()], vec![text(key)])]
        }
    })
}

fn known(name: &str) -> Result<&'static dyn Kind, StoreError> {
    kind(name).ok_or_else(|| StoreError::Backend(format!("a record of unknown kind {name:?}")))
}

/// What a backend reads back: each table's rows, as the queries of [`reads`] return them.
#[derive(Default)]
pub(crate) struct Rows {
    /// (api, doc), ordered by api then seq.
    pub(crate) deployments: Vec<(String, String)>,
    /// The doc of every other table.
    pub(crate) docs: std::collections::HashMap<&'static str, Vec<String>>,
}

/// The queries that read the state back: (table, SELECT), each returning its `doc` only, except
/// `deployments` (api, doc).
pub(crate) fn reads() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = [
        ("apis", "SELECT doc FROM apis"),
        ("deployments", "SELECT api, doc FROM deployments ORDER BY api, seq"),
        ("stages", "SELECT doc FROM stages"),
        ("rollouts", "SELECT doc FROM rollouts"),
    ]
    .into_iter()
    .map(|(t, q)| (t, q.to_string()))
    .collect();
    out.extend(kinds().map(|k| (k.table(), format!("SELECT doc FROM {}", k.table()))));
    out
}

/// The tables of the kinds of named record, each `(key TEXT PRIMARY KEY, doc TEXT NOT NULL)`, created
/// when missing (a kind added since the database was made): in both dialects.
pub(crate) fn create_record_tables() -> String {
    kinds()
        .map(|k| {
            format!(
                "CREATE TABLE IF NOT EXISTS {} ({} TEXT PRIMARY KEY, doc TEXT NOT NULL);\n",
                k.table(),
                k.key_column()
            )
        })
        .collect()
}

impl Rows {
    fn docs(&self, table: &str) -> &[String] {
        self.docs.get(table).map_or(&[], Vec::as_slice)
    }

    /// The state these rows hold.
    pub(crate) fn into_state(self) -> Result<State, StoreError> {
        let mut state = State::default();
        for d in self.docs("apis") {
            let api: Api = serde_json::from_str(d)?;
            state.apis.insert(
                api.name.clone(),
                Arc::new(ApiState {
                    api,
                    deployments: Vec::new(),
                    stages: Default::default(),
                }),
            );
        }
        for (api, d) in &self.deployments {
            let d: Deployment = serde_json::from_str(d)?;
            if let Some(a) = state.apis.get_mut(api).map(Arc::make_mut) {
                a.deployments.push(d);
            }
        }
        for d in self.docs("stages") {
            let s: Stage = serde_json::from_str(d)?;
            if let Some(a) = state.apis.get_mut(&s.api).map(Arc::make_mut) {
                a.stages.insert(s.name.clone(), s);
            }
        }
        for d in self.docs("rollouts") {
            let r: Rollout = serde_json::from_str(d)?;
            state.rollouts.insert(r.id.clone(), r);
        }
        for k in kinds() {
            for d in self.docs(k.table()) {
                k.load(&mut state, d)?;
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_in_both_dialects() {
        let op = upsert("stages", &["api", "name", "doc"], 2, vec![text("a"), text("s"), text("{}")]);
        assert_eq!(
            op.sql(Dialect::Sqlite),
            "INSERT INTO stages (api, name, doc) VALUES (?1, ?2, ?3) ON CONFLICT (api, name) DO UPDATE SET doc = excluded.doc"
        );
        assert_eq!(
            op.sql(Dialect::Postgres),
            "INSERT INTO stages (api, name, doc) VALUES ($1, $2, $3) ON CONFLICT (api, name) DO UPDATE SET doc = excluded.doc"
        );
        let op = delete("stages", &["api", "name"], vec![text("a"), text("s")]);
        assert_eq!(op.sql(Dialect::Postgres), "DELETE FROM stages WHERE api = $1 AND name = $2");
    }
}

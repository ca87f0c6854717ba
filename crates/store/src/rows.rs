//! The relational shape of the state, shared by the SQLite and PostgreSQL backends: which rows a
//! [`Change`] writes or deletes, the SQL for them (the two dialects differ only in placeholders), and the
//! state assembled from the rows read back. Every record is a JSON document in a `doc` column, keyed by
//! its natural key.

use std::sync::Arc;

use canarygate_model::deployment_config::DeploymentConfig;
use canarygate_model::notification::{Delivery, Notification};
use canarygate_model::rollout::Rollout;
use canarygate_model::state::{AlarmEntry, ApiState};
use canarygate_model::{Api, Deployment, Domain, Stage, State};

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
        columns: &'static [&'static str],
        keys: usize,
        values: Vec<Value>,
    },
    /// Delete the rows whose `columns` equal `values`.
    Delete {
        table: &'static str,
        columns: &'static [&'static str],
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

fn upsert(table: &'static str, columns: &'static [&'static str], keys: usize, values: Vec<Value>) -> RowOp {
    RowOp::Upsert {
        table,
        columns,
        keys,
        values,
    }
}

fn delete(table: &'static str, columns: &'static [&'static str], values: Vec<Value>) -> RowOp {
    RowOp::Delete { table, columns, values }
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
        Change::PutDomain(d) => vec![upsert("domains", &["domain", "doc"], 1, vec![text(&d.domain), doc(d)?])],
        Change::DeleteDomain(d) => vec![delete("domains", &["domain"], vec![text(d)])],
        Change::PutRollout(r) => vec![upsert(
            "rollouts",
            &["id", "api", "stage", "doc"],
            1,
            vec![text(&r.id), text(&r.api), text(&r.stage), doc(r)?],
        )],
        Change::PutAlarm(a) => vec![upsert("alarms", &["name", "doc"], 1, vec![text(&a.alarm.name), doc(a)?])],
        Change::DeleteAlarm(name) => vec![delete("alarms", &["name"], vec![text(name)])],
        Change::PutDeploymentConfig(c) => vec![upsert("deployment_configs", &["name", "doc"], 1, vec![text(&c.name), doc(c)?])],
        Change::DeleteDeploymentConfig(name) => vec![delete("deployment_configs", &["name"], vec![text(name)])],
        Change::PutAnalysis(a) => vec![upsert(
            "analyses",
            &["name", "doc"],
            1,
            vec![text(a.name.as_deref().unwrap_or_default()), doc(a)?],
        )],
        Change::DeleteAnalysis(name) => vec![delete("analyses", &["name"], vec![text(name)])],
        Change::PutNotification(n) => vec![upsert("notifications", &["name", "doc"], 1, vec![text(&n.name), doc(n)?])],
        Change::DeleteNotification(name) => vec![delete("notifications", &["name"], vec![text(name)])],
        Change::PutDelivery(d) => vec![upsert("deliveries", &["id", "doc"], 1, vec![text(&d.id), doc(d)?])],
        Change::DeleteDelivery(id) => vec![delete("deliveries", &["id"], vec![text(id)])],
        Change::PutApplication(a) => vec![upsert("codedeploy_applications", &["name", "doc"], 1, vec![text(&a.name), doc(a)?])],
        Change::DeleteApplication(name) => vec![delete("codedeploy_applications", &["name"], vec![text(name)])],
    })
}

/// What a backend reads back: each table's rows, as the queries of [`READS`] return them.
#[derive(Default)]
pub(crate) struct Rows {
    /// (api, doc), ordered by api then seq.
    pub(crate) deployments: Vec<(String, String)>,
    /// (name, doc) of analyses; the doc of every other table.
    pub(crate) analyses: Vec<(String, String)>,
    pub(crate) docs: std::collections::HashMap<&'static str, Vec<String>>,
}

/// The queries that read the state back: (table, SELECT), each returning its `doc` only, except
/// `deployments` (api, doc) and `analyses` (name, doc).
pub(crate) const READS: &[(&str, &str)] = &[
    ("apis", "SELECT doc FROM apis"),
    ("deployments", "SELECT api, doc FROM deployments ORDER BY api, seq"),
    ("stages", "SELECT doc FROM stages"),
    ("domains", "SELECT doc FROM domains"),
    ("rollouts", "SELECT doc FROM rollouts"),
    ("alarms", "SELECT doc FROM alarms"),
    ("notifications", "SELECT doc FROM notifications"),
    ("deliveries", "SELECT doc FROM deliveries"),
    ("analyses", "SELECT name, doc FROM analyses"),
    ("deployment_configs", "SELECT doc FROM deployment_configs"),
    ("codedeploy_applications", "SELECT doc FROM codedeploy_applications"),
];

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
        for d in self.docs("domains") {
            let d: Domain = serde_json::from_str(d)?;
            state.domains.insert(d.domain.clone(), d);
        }
        for d in self.docs("rollouts") {
            let r: Rollout = serde_json::from_str(d)?;
            state.rollouts.insert(r.id.clone(), r);
        }
        for d in self.docs("alarms") {
            let a: AlarmEntry = serde_json::from_str(d)?;
            state.alarms.insert(a.alarm.name.clone(), a);
        }
        for d in self.docs("notifications") {
            let n: Notification = serde_json::from_str(d)?;
            state.notifications.insert(n.name.clone(), n);
        }
        for d in self.docs("deliveries") {
            let d: Delivery = serde_json::from_str(d)?;
            state.deliveries.insert(d.id.clone(), d);
        }
        for (name, d) in &self.analyses {
            state.analyses.insert(name.clone(), serde_json::from_str(d)?);
        }
        for d in self.docs("deployment_configs") {
            let c: DeploymentConfig = serde_json::from_str(d)?;
            state.deployment_configs.insert(c.name.clone(), c);
        }
        for d in self.docs("codedeploy_applications") {
            let a: canarygate_model::codedeploy::Application = serde_json::from_str(d)?;
            state.applications.insert(a.name.clone(), a);
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

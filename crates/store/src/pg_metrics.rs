//! The cluster's metrics in PostgreSQL: each replica publishes, once a second, what it recorded of the
//! recent seconds that changed (one row per series, second and replica: an upsert, so publishing a
//! second again replaces it), and how far its publishing is complete (`metrics_through` in its replica
//! row: every second before it has been published). The controller reads the rows written since it
//! last looked; `GET /v1/metrics` reads a range; old rows are pruned.

use std::time::Duration;

use canarygate_metrics::{SecondCounts, SeriesKey, Variant, SCALARS};
use chrono::{DateTime, Utc};

use crate::postgres::Conn;
use crate::StoreError;

/// Rows per statement when publishing (6 parameters each, far below PostgreSQL's 65,535).
const BATCH: usize = 500;

/// What one replica published of one second of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub replica: String,
    pub key: SeriesKey,
    pub second: u64,
    pub counts: SecondCounts,
}

/// A live replica, and the second its published metrics are complete up to (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub name: String,
    pub through: u64,
}

/// A connection of its own for publishing and reading metric rows.
pub struct MetricsDb {
    conn: Conn,
}

fn row(r: &postgres::Row) -> Option<MetricRow> {
    let variant: String = r.get(2);
    let counts: Vec<i64> = r.get(5);
    Some(MetricRow {
        key: SeriesKey {
            api: r.get(0),
            stage: r.get(1),
            variant: Variant::parse(&variant)?,
        },
        second: r.get::<_, i64>(3).max(0) as u64,
        replica: r.get(4),
        counts: SecondCounts::decode(&counts)?,
    })
}

impl MetricsDb {
    pub fn new(url: &str) -> MetricsDb {
        MetricsDb { conn: Conn::new(url) }
    }

    /// Publishes `replica`'s seconds (replacing what it published of them before) and that its
    /// seconds before `through` are complete, in one transaction.
    pub fn publish(&mut self, replica: &str, seconds: &[(SeriesKey, u64, SecondCounts)], through: u64) -> Result<(), StoreError> {
        self.conn.with(|c| {
            let mut tx = c.transaction()?;
            for batch in seconds.chunks(BATCH) {
                let mut sql = String::from("INSERT INTO canarygate_metrics (api, stage, variant, second, replica, counts, written_at) VALUES ");
                let encoded: Vec<(&str, i64, Vec<i64>)> = batch
                    .iter()
                    .map(|(k, s, c)| (k.variant.as_str(), *s as i64, c.encode()))
                    .collect();
                let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::with_capacity(batch.len() * 6);
                for (i, ((key, _, _), (variant, sec, counts))) in batch.iter().zip(&encoded).enumerate() {
                    let b = i * 6;
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(${},${},${},${},${},${},clock_timestamp())",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6
                    ));
                    params.extend([
                        &key.api as &(dyn postgres::types::ToSql + Sync),
                        &key.stage,
                        variant,
                        sec,
                        &replica,
                        counts,
                    ]);
                }
                sql.push_str(
                    " ON CONFLICT (api, stage, variant, second, replica) DO UPDATE SET counts = excluded.counts, written_at = excluded.written_at",
                );
                tx.execute(sql.as_str(), &params)?;
            }
            tx.execute(
                "UPDATE canarygate_replicas SET metrics_through = GREATEST(metrics_through, $2) WHERE name = $1",
                &[&replica, &(through as i64)],
            )?;
            tx.commit()
        })
    }

    /// The rows of seconds from `from_second` on written after `written_after` (all of them when
    /// `None`), and the latest write time among them (by the database's clock).
    pub fn written_since(
        &mut self,
        from_second: u64,
        written_after: Option<DateTime<Utc>>,
    ) -> Result<(Vec<MetricRow>, Option<DateTime<Utc>>), StoreError> {
        let after = written_after.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        self.conn.with(|c| {
            let rows = c.query(
                "SELECT api, stage, variant, second, replica, counts, written_at FROM canarygate_metrics
                  WHERE second >= $1 AND written_at > $2",
                &[&(from_second as i64), &after],
            )?;
            let latest = rows.iter().map(|r| r.get::<_, DateTime<Utc>>(6)).max();
            Ok((rows.iter().filter_map(row).collect(), latest))
        })
    }

    /// Every replica's rows of one series over `[from, to)`; without `histograms`, only the counters.
    pub fn range(&mut self, key: &SeriesKey, from: u64, to: u64, histograms: bool) -> Result<Vec<MetricRow>, StoreError> {
        let sql = format!(
            "SELECT api, stage, variant, second, replica, {} FROM canarygate_metrics
              WHERE api = $1 AND stage = $2 AND variant = $3 AND second >= $4 AND second < $5",
            if histograms {
                "counts".to_string()
            } else {
                format!("counts[1:{SCALARS}]")
            }
        );
        self.conn.with(|c| {
            let rows = c.query(
                sql.as_str(),
                &[&key.api, &key.stage, &key.variant.as_str(), &(from as i64), &(to as i64)],
            )?;
            Ok(rows.iter().filter_map(row).collect())
        })
    }

    /// The replicas whose heartbeat is younger than `live` (by the database's clock), with how far
    /// their metrics are published.
    pub fn reported(&mut self, live: Duration) -> Result<Vec<Reported>, StoreError> {
        self.conn.with(|c| {
            let rows = c.query(
                "SELECT name, metrics_through FROM canarygate_replicas
                  WHERE heartbeat_at > clock_timestamp() - make_interval(secs => $1) ORDER BY name",
                &[&live.as_secs_f64()],
            )?;
            Ok(rows
                .iter()
                .map(|r| Reported {
                    name: r.get(0),
                    through: r.get::<_, i64>(1).max(0) as u64,
                })
                .collect())
        })
    }

    /// Deletes the rows of seconds before `before`; how many went.
    pub fn prune(&mut self, before: u64) -> Result<u64, StoreError> {
        self.conn
            .with(|c| c.execute("DELETE FROM canarygate_metrics WHERE second < $1", &[&(before as i64)]))
    }
}

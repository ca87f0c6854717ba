//! The state's notifications and their deliveries: queueing a rollout's events for the notifications
//! subscribed to them, and recording delivery outcomes.

use chrono::{DateTime, Utc};

use crate::notification::*;
use crate::rollout::{Rollout, RolloutEvent};
use crate::state::State;
use crate::{Error, Result};

impl State {
    pub fn put_notification(&mut self, name: &str, mut n: Notification) -> Result<Notification> {
        n.name = name.to_string();
        n.events.sort();
        n.events.dedup();
        n.validate()?;
        self.notifications.insert(name.to_string(), n.clone());
        Ok(n)
    }

    /// Deletes a notification and drops its pending deliveries.
    pub fn delete_notification(&mut self, name: &str) -> Result<()> {
        self.notifications
            .remove(name)
            .ok_or_else(|| Error::not_found("notification", name))?;
        self.deliveries.retain(|_, d| d.notification != name);
        Ok(())
    }

    /// Queues the rollout's event for every notification subscribed to `kind`.
    /// `evidence` is the analysis's evidence line, if the rollout has an analysis.
    pub fn notify(&mut self, r: &Rollout, kind: EventKind, seq: usize, sub: u8, e: &RolloutEvent, evidence: Option<String>) {
        let subscribed: Vec<String> = self
            .notifications
            .values()
            .filter(|n| n.events.contains(&kind))
            .map(|n| n.name.clone())
            .collect();
        for name in subscribed {
            let id = format!("{}-{seq}-{sub}-{name}", r.id);
            let event = serde_json::json!({
                "specversion": "1.0",
                "id": id,
                "source": format!("/canarygate/rollouts/{}", r.id),
                "type": kind.cloud_type(),
                "subject": format!("{}/{}", r.api, r.stage),
                "time": e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "datacontenttype": "application/json",
                "data": {
                    "rolloutId": r.id, "api": r.api, "stage": r.stage, "deploymentId": r.deployment_id,
                    "status": e.status, "step": e.step, "weight": e.weight, "reason": e.reason, "observed": e.observed,
                    "evidence": evidence,
                },
            });
            self.deliveries.insert(
                id.clone(),
                Delivery {
                    id,
                    notification: name,
                    rollout: r.id.clone(),
                    seq: seq as u64,
                    sub,
                    kind,
                    event,
                    created_at: e.time,
                    attempts: 0,
                    next_attempt_at: e.time,
                    delivered_at: None,
                    last_error: None,
                },
            );
        }
    }

    /// Records an attempt: delivered, or failed with the reason and the next try after a backoff.
    /// Delivered ones older than a day are dropped.
    pub fn record_delivery(&mut self, id: &str, outcome: std::result::Result<(), String>, now: DateTime<Utc>) {
        if let Some(d) = self.deliveries.get_mut(id) {
            d.attempts += 1;
            match outcome {
                Ok(()) => {
                    d.delivered_at = Some(now);
                    d.last_error = None;
                }
                Err(e) => {
                    d.last_error = Some(e);
                    d.next_attempt_at = now + chrono::Duration::seconds(backoff_seconds(d.attempts));
                }
            }
        }
        let cutoff = now - chrono::Duration::hours(KEEP_DELIVERED_HOURS);
        self.deliveries.retain(|_, d| d.delivered_at.is_none_or(|t| t > cutoff));
    }
}

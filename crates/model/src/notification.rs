//! Notifications (`PRODUCT.md` §13): each rollout event a notification subscribes to becomes a
//! [`Delivery`] of a CloudEvents 1.0 JSON document, created in the same change as the event, so it is in
//! the store before anyone could have seen the event. The controller POSTs deliveries at least once, in
//! order per rollout and notification, with retries and backoff; the pure parts (which deliveries are
//! due, what a failure does to the schedule) are here.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The events a notification may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    RolloutStarted,
    StepChanged,
    AlarmFired,
    RolledBack,
    Succeeded,
    Failed,
    Stopped,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::RolloutStarted,
        EventKind::StepChanged,
        EventKind::AlarmFired,
        EventKind::RolledBack,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Stopped,
    ];

    /// The CloudEvents `type`: `dev.canarygate.<name in lower case>`.
    pub fn cloud_type(self) -> String {
        format!("dev.canarygate.{}", format!("{self:?}").to_ascii_lowercase())
    }
}

/// `PUT /v1/notifications/{name}`, or an entry of `notifications` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notification {
    #[serde(default)]
    pub name: String,
    pub url: String,
    /// Default: every event.
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
    /// A Standard Webhooks secret (`whsec_` and the base64 of 24 to 64 random bytes): each delivery is
    /// signed with it. Never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// What is POSTed: the CloudEvent (default), a Slack incoming-webhook message, or a Teams
    /// Workflows adaptive card.
    #[serde(default)]
    pub format: Format,
}

/// The shape of a notification's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Cloudevents,
    Slack,
    Teams,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Cloudevents => "application/cloudevents+json",
            Format::Slack | Format::Teams => "application/json",
        }
    }
}

/// The body to POST for a delivery's CloudEvent in `format`; `public_url` (the admin API's address as
/// users reach it, `server.publicUrl`) adds a link to the rollout's dashboard page.
pub fn render(format: Format, event: &serde_json::Value, public_url: Option<&str>) -> serde_json::Value {
    if format == Format::Cloudevents {
        return event.clone();
    }
    let d = &event["data"];
    let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    let (id, api, stage) = (text("rolloutId"), text("api"), text("stage"));
    let kind = event["type"].as_str().unwrap_or_default().trim_start_matches("dev.canarygate.");
    let what = match kind {
        "rolloutstarted" => "started",
        "stepchanged" => "changed step",
        "alarmfired" => "alarm fired",
        "rolledback" => "rolled back",
        "succeeded" => "succeeded",
        "failed" => "failed",
        "stopped" => "stopped",
        other => other,
    };
    let title = clip(&format!("Rollout {id} on {api}/{stage}: {what}"), 150);
    let step = d["step"].as_u64().map_or("–".to_string(), |s| s.to_string());
    let weight = d["weight"].as_f64().map_or("–".to_string(), |w| format!("{w}%"));
    let reason = clip(&text("reason"), 2000);
    let evidence = d["evidence"].as_str().map(|e| clip(e, 2000));
    let link = public_url.map(|u| format!("{}/ui/#/rollout/{id}", u.trim_end_matches('/')));
    let facts = [
        ("Stage", format!("{api}/{stage}")),
        ("Status", text("status")),
        ("Step", step),
        ("Weight", weight),
        ("Deployment", text("deploymentId")),
    ];
    match format {
        Format::Slack => {
            let mut blocks = vec![
                serde_json::json!({"type": "header", "text": {"type": "plain_text", "text": title, "emoji": false}}),
                serde_json::json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&reason)}}),
                serde_json::json!({"type": "section", "fields": facts.iter().map(|(k, v)| serde_json::json!({
                    "type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(v))})).collect::<Vec<_>>()}),
            ];
            if let Some(e) = &evidence {
                blocks.push(serde_json::json!({"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(e)}]}));
            }
            if let Some(l) = &link {
                blocks.push(serde_json::json!({"type": "actions", "elements": [{"type": "button",
                    "text": {"type": "plain_text", "text": "Open in canarygate"}, "url": l}]}));
            }
            serde_json::json!({"text": format!("{title}: {reason}"), "blocks": blocks})
        }
        Format::Teams => {
            let mut body = vec![
                serde_json::json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}),
                serde_json::json!({"type": "TextBlock", "text": reason, "wrap": true}),
                serde_json::json!({"type": "FactSet", "facts": facts.iter().map(|(k, v)| serde_json::json!({"title": k, "value": v})).collect::<Vec<_>>()}),
            ];
            if let Some(e) = &evidence {
                body.push(serde_json::json!({"type": "TextBlock", "text": e, "wrap": true, "isSubtle": true, "fontType": "Monospace"}));
            }
            let mut card = serde_json::json!({
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard", "version": "1.4", "body": body,
            });
            if let Some(l) = &link {
                card["actions"] = serde_json::json!([{"type": "Action.OpenUrl", "title": "Open in canarygate", "url": l}]);
            }
            serde_json::json!({"type": "message", "attachments": [
                {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card}]})
        }
        Format::Cloudevents => unreachable!("returned above"),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn all_events() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

/// The HMAC key of a Standard Webhooks secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

impl Notification {
    pub fn validate(&self) -> Result<()> {
        crate::check_dotted_name("name", &self.name, 100)?;
        let url_ok = (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && self.url.len() <= 2048
            && !self.url.contains(char::is_whitespace)
            && self.url.len() > "https://".len();
        if !url_ok {
            return Err(Error::invalid("url", &self.url, "must be an http:// or https:// URL"));
        }
        if self.events.is_empty() {
            return Err(Error::invalid(
                "events",
                "[]",
                "subscribe to at least one event (or leave events out: all)",
            ));
        }
        if let Some(s) = &self.secret {
            if secret_key(s).is_none() {
                return Err(Error::invalid(
                    "secret",
                    "(hidden)",
                    "must be a Standard Webhooks secret: whsec_ followed by the base64 of 24 to 64 random bytes",
                ));
            }
        }
        Ok(())
    }

    /// As the API shows it: the secret is only said to be set.
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("secret");
            o.insert("signed".into(), serde_json::json!(self.secret.is_some()));
        }
        v
    }
}

/// One event on its way to one notification's URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The CloudEvent's `id`, the same for every attempt (and the Standard Webhooks `webhook-id`).
    pub id: String,
    pub notification: String,
    pub rollout: String,
    /// Order within the rollout: the index of the rollout event (an alarm's firing comes just before
    /// the rollback it causes, with the same index and a lower `sub`).
    pub seq: u64,
    #[serde(default)]
    pub sub: u8,
    pub kind: EventKind,
    /// The CloudEvents 1.0 JSON document.
    pub event: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Backoff after the `attempts`-th failed attempt: 1, 2, 4, ... seconds, at most a minute.
pub fn backoff_seconds(attempts: u32) -> i64 {
    1i64 << attempts.saturating_sub(1).min(6)
}

/// Delivered deliveries are kept this long for the API, then dropped.
pub const KEEP_DELIVERED_HOURS: i64 = 24;

/// The deliveries to attempt now: per (notification, rollout), only the oldest undelivered one, and
/// only once its retry time has come — so a rollout's events arrive in order.
pub fn due(deliveries: &BTreeMap<String, Delivery>, now: DateTime<Utc>) -> Vec<&Delivery> {
    let mut first: BTreeMap<(&str, &str), &Delivery> = BTreeMap::new();
    for d in deliveries.values().filter(|d| d.delivered_at.is_none()) {
        let key = (d.notification.as_str(), d.rollout.as_str());
        match first.get(&key) {
            Some(f) if (f.seq, f.sub) <= (d.seq, d.sub) => {}
            _ => {
                first.insert(key, d);
            }
        }
    }
    first.into_values().filter(|d| d.next_attempt_at <= now).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn delivery(id: &str, rollout: &str, seq: u64, sub: u8) -> Delivery {
        Delivery {
            id: id.into(),
            notification: "chat".into(),
            rollout: rollout.into(),
            seq,
            sub,
            kind: EventKind::StepChanged,
            event: serde_json::json!({}),
            created_at: t(0),
            attempts: 0,
            next_attempt_at: t(0),
            delivered_at: None,
            last_error: None,
        }
    }

    #[test]
    fn deliveries_go_in_order_per_rollout_with_backoff() {
        let mut s = State::default();
        for d in [
            delivery("a2", "r-a", 2, 0),
            delivery("a1", "r-a", 1, 0),
            delivery("a1x", "r-a", 1, 1),
            delivery("b5", "r-b", 5, 0),
        ] {
            s.deliveries.insert(d.id.clone(), d);
        }
        let ids = |s: &State, now| due(&s.deliveries, now).iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&s, t(0)), vec!["a1", "b5"]);
        // a1 fails: it is retried after 1 s, then 2 s; nothing after it goes first.
        s.record_delivery("a1", Err("503".into()), t(0));
        assert_eq!(ids(&s, t(0)), vec!["b5"]);
        assert_eq!(ids(&s, t(1)), vec!["a1", "b5"]);
        s.record_delivery("a1", Err("503".into()), t(1));
        assert_eq!(s.deliveries["a1"].next_attempt_at, t(3));
        s.record_delivery("a1", Ok(()), t(3));
        assert_eq!(ids(&s, t(3)), vec!["a1x", "b5"]);
        assert_eq!(s.deliveries["a1"].attempts, 3);
        assert_eq!(backoff_seconds(20), 64);
        // Delivered ones are dropped a day later.
        s.record_delivery("b5", Ok(()), t(3));
        s.record_delivery("a1x", Ok(()), t(24 * 3600 + 10));
        assert!(!s.deliveries.contains_key("a1") && s.deliveries.contains_key("a1x"));
    }

    #[test]
    fn notifications_are_validated() {
        let n = |url: &str, secret: Option<&str>| Notification {
            name: "chat".into(),
            url: url.into(),
            events: all_events(),
            secret: secret.map(str::to_string),
            format: Format::Cloudevents,
        };
        n("http://hooks.local/x", None).validate().unwrap();
        n("https://h/x", Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).validate().unwrap();
        assert!(n("ftp://h", None).validate().unwrap_err().to_string().contains("url"));
        let e = n("http://h/x", Some("s3cret")).validate().unwrap_err().to_string();
        assert!(e.contains("secret") && !e.contains("s3cret"), "{e}");
        assert_eq!(EventKind::RolledBack.cloud_type(), "dev.canarygate.rolledback");
        assert!(!n("http://h/x", Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .view()
            .to_string()
            .contains("whsec"));
    }
}

//! The registry of named records: every kind the state keeps by key beside its APIs and rollouts, each
//! with what makes it a [`Record`] (and, if users declare it, a [`Declared`]). The store, the admin
//! API and config files find the kinds here; see [`super::record`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::record::{Declared, DeclaredKind, Kind, Of, Record};
use super::{AlarmEntry, Domain, DomainSpec, State};
use crate::alarm::Alarm;
use crate::analysis::AnalysisSpec;
use crate::codedeploy::Application;
use crate::deployment_config::DeploymentConfig;
use crate::notification::{Delivery, Notification};
use crate::Result;

/// The kinds users declare, in the order `apply -f` puts them (domains first: nothing refers to them
/// but routing).
pub static DECLARED: &[&dyn DeclaredKind] = &[
    &Of::<Domain>::KIND,
    &Of::<DeploymentConfig>::KIND,
    &Of::<AlarmEntry>::KIND,
    &Of::<Notification>::KIND,
    &Of::<AnalysisSpec>::KIND,
];

/// The kinds canarygate keeps for itself.
pub static INTERNAL: &[&dyn Kind] = &[&Of::<Delivery>::KIND, &Of::<Application>::KIND];

/// Every kind of named record.
pub fn kinds() -> impl Iterator<Item = &'static dyn Kind> {
    DECLARED.iter().map(|k| *k as &dyn Kind).chain(INTERNAL.iter().copied())
}

/// The kind named `name` ([`Record::KIND`]).
pub fn kind(name: &str) -> Option<&'static dyn Kind> {
    kinds().find(|k| k.name() == name)
}

/// The declared kind named `name` ([`Record::KIND`]).
pub fn declared(name: &str) -> Option<&'static dyn DeclaredKind> {
    DECLARED.iter().copied().find(|k| k.name() == name)
}

impl Record for Domain {
    const KIND: &'static str = "domains";
    const KEY_COLUMN: &'static str = "domain";
    const ROUTING: bool = true;

    fn key(&self) -> String {
        self.domain.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.domains
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.domains
    }
}

impl Declared for Domain {
    type Input = DomainSpec;
    const NOUN: &'static str = "domain";
    const NAME_FIELD: &'static str = "domain";

    fn input_name(input: &DomainSpec) -> Option<&str> {
        Some(&input.domain)
    }

    fn key_for(name: &str) -> String {
        name.to_ascii_lowercase()
    }

    fn put(state: &mut State, name: &str, input: DomainSpec) -> Result<Self> {
        state.put_domain(name, input.mappings, input.tls)
    }

    fn describe(d: &DomainSpec) -> String {
        format!("put domain {} ({} mappings)", d.domain, d.mappings.len())
    }
}

impl Record for DeploymentConfig {
    const KIND: &'static str = "deployment_configs";

    fn key(&self) -> String {
        self.name.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.deployment_configs
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.deployment_configs
    }
}

impl Declared for DeploymentConfig {
    type Input = DeploymentConfig;
    const NOUN: &'static str = "deployment config";

    fn input_name(input: &Self) -> Option<&str> {
        Some(&input.name)
    }

    fn put(state: &mut State, name: &str, input: Self) -> Result<Self> {
        state.put_deployment_config(name, input)
    }

    fn delete(state: &mut State, name: &str) -> Result<()> {
        state.delete_deployment_config(name)
    }

    fn describe(c: &Self) -> String {
        format!(
            "put deployment config {} ({:?} {}% every {} s)",
            c.name, c.kind, c.percentage, c.interval_seconds
        )
    }

    /// The predefined configurations too.
    fn find(state: &State, name: &str) -> Option<Value> {
        state.deployment_config(name).map(|c| serde_json::to_value(c).unwrap_or_default())
    }

    /// The predefined configurations first.
    fn list(state: &State) -> Vec<Value> {
        let stored = state.deployment_configs.values().cloned();
        DeploymentConfig::predefined()
            .into_iter()
            .chain(stored)
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect()
    }
}

impl Record for AlarmEntry {
    const KIND: &'static str = "alarms";

    fn key(&self) -> String {
        self.alarm.name.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.alarms
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.alarms
    }
}

impl Declared for AlarmEntry {
    type Input = Alarm;
    const NOUN: &'static str = "alarm";

    fn input_name(input: &Alarm) -> Option<&str> {
        Some(&input.name)
    }

    fn put(state: &mut State, name: &str, input: Alarm) -> Result<Self> {
        state.put_alarm(name, input)
    }

    fn delete(state: &mut State, name: &str) -> Result<()> {
        state.delete_alarm(name)
    }

    fn describe(a: &Alarm) -> String {
        let what = match (&a.prometheus, a.metric, a.statistic) {
            (Some(q), _, _) => format!("PromQL {:?} for {}", q.query, a.variant),
            (None, Some(m), Some(s)) => format!("{s} of {} {}", a.variant, m.as_str()),
            _ => String::new(),
        };
        format!(
            "put alarm {} ({what} on {}/{}, {} s periods, {:?} {})",
            a.name, a.api, a.stage, a.period_seconds, a.comparison, a.threshold
        )
    }

    fn view(&self, _state: &State) -> Value {
        super::alarm_view(self)
    }
}

impl Record for Notification {
    const KIND: &'static str = "notifications";

    fn key(&self) -> String {
        self.name.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.notifications
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.notifications
    }
}

impl Declared for Notification {
    type Input = Notification;
    const NOUN: &'static str = "notification";

    fn input_name(input: &Self) -> Option<&str> {
        Some(&input.name)
    }

    fn put(state: &mut State, name: &str, input: Self) -> Result<Self> {
        state.put_notification(name, input)
    }

    fn delete(state: &mut State, name: &str) -> Result<()> {
        state.delete_notification(name)
    }

    fn describe(n: &Self) -> String {
        format!("put notification {} ({} events to {})", n.name, n.events.len(), n.url)
    }

    /// The definition (secret hidden) and its deliveries: how many wait, how many arrived, the last
    /// error.
    fn view(&self, state: &State) -> Value {
        let mine: Vec<_> = state.deliveries.values().filter(|d| d.notification == self.name).collect();
        let pending = mine.iter().filter(|d| d.delivered_at.is_none()).count();
        let last_error = mine
            .iter()
            .filter(|d| d.delivered_at.is_none())
            .filter_map(|d| d.last_error.as_ref().map(|e| (d.next_attempt_at, e)))
            .max_by_key(|(t, _)| *t)
            .map(|(_, e)| e.clone());
        let mut v = Notification::view(self);
        if let Some(o) = v.as_object_mut() {
            o.insert("pending".into(), serde_json::json!(pending));
            o.insert("delivered".into(), serde_json::json!(mine.len() - pending));
            o.insert("lastError".into(), serde_json::json!(last_error));
        }
        v
    }
}

impl Record for AnalysisSpec {
    const KIND: &'static str = "analyses";

    fn key(&self) -> String {
        self.name.clone().unwrap_or_default()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.analyses
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.analyses
    }
}

impl Declared for AnalysisSpec {
    type Input = AnalysisSpec;
    const NOUN: &'static str = "analysis";

    fn input_name(input: &Self) -> Option<&str> {
        input.name.as_deref()
    }

    fn put(state: &mut State, name: &str, input: Self) -> Result<Self> {
        state.put_analysis(name, input)
    }

    fn delete(state: &mut State, name: &str) -> Result<()> {
        state.delete_analysis(name)
    }

    fn describe(a: &Self) -> String {
        let judged: Vec<String> = [
            a.error_rate.map(|j| format!("errorRate alpha {}", j.alpha)),
            a.latency.map(|j| format!("latency alpha {}", j.alpha)),
        ]
        .into_iter()
        .flatten()
        .collect();
        format!("put analysis {} ({})", a.name.as_deref().unwrap_or(""), judged.join(", "))
    }
}

impl Record for Delivery {
    const KIND: &'static str = "deliveries";
    const KEY_COLUMN: &'static str = "id";

    fn key(&self) -> String {
        self.id.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.deliveries
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.deliveries
    }
}

impl Record for Application {
    const KIND: &'static str = "applications";
    const TABLE: &'static str = "codedeploy_applications";

    fn key(&self) -> String {
        self.name.clone()
    }

    fn all(state: &State) -> &BTreeMap<String, Self> {
        &state.applications
    }

    fn all_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
        &mut state.applications
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_names_tables_paths_and_fields() {
        let names: std::collections::BTreeSet<_> = kinds().map(|k| k.name()).collect();
        let tables: std::collections::BTreeSet<_> = kinds().map(|k| k.table()).collect();
        assert_eq!(names.len(), DECLARED.len() + INTERNAL.len());
        assert_eq!(tables.len(), names.len());
        let fields: std::collections::BTreeSet<String> = DECLARED.iter().map(|k| k.field()).collect();
        assert_eq!(fields.len(), DECLARED.len());
        let configs = declared("deployment_configs").unwrap();
        assert_eq!(
            (configs.field().as_str(), configs.path().as_str()),
            ("deploymentConfigs", "deployment-configs")
        );
        assert!(kind("deliveries").is_some() && declared("deliveries").is_none());
        // Every table name is a plain SQL identifier (the store writes them into statements).
        for t in tables.iter().chain(kinds().map(|k| k.key_column()).collect::<Vec<_>>().iter()) {
            assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{t}");
        }
    }
}

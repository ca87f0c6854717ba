//! Stages, their cache settings, canary settings and canary routing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Stage cache settings (the cache itself is the gateway's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u32,
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
    /// Bound on the bytes the stage's cache holds (bodies and headers).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_ttl() -> u32 {
    300
}
fn default_max_entries() -> u32 {
    10_000
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            ttl_seconds: default_ttl(),
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
        }
    }
}

/// Bounds of `cache.maxBytes`: 64 KiB to 16 GiB.
pub const MIN_CACHE_BYTES: u64 = 64 * 1024;
pub const MAX_CACHE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

impl CacheSettings {
    pub fn validate(&self) -> Result<()> {
        if self.ttl_seconds > 3600 {
            return Err(Error::invalid(
                "cache.ttlSeconds",
                self.ttl_seconds.to_string(),
                "must be between 0 and 3600",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_entries) {
            return Err(Error::invalid(
                "cache.maxEntries",
                self.max_entries.to_string(),
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
}

/// The canary of a stage: a deployment and/or variable overrides that get `percentTraffic` of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanarySettings {
    pub deployment_id: String,
    pub percent_traffic: f64,
    #[serde(default)]
    pub stage_variable_overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub use_stage_cache: bool,
}

/// Mirroring: copies of a share of production requests sent to the canary's integration (the canary's
/// deployment and variables), their answers discarded and recorded as variant `mirror`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSettings {
    /// Share of production requests copied, 0–100.
    pub percent_traffic: f64,
    /// Methods that are copied; by default only the safe ones, since a copied POST, PUT or DELETE
    /// reaches the canary's side effects.
    #[serde(default = "default_mirror_methods")]
    pub methods: Vec<String>,
    /// Requests with a larger body are not copied (counted as skipped).
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: u64,
    /// Copies on their way at once; more are dropped (and counted) instead of queued, so a slow
    /// canary costs production nothing.
    #[serde(default = "default_mirror_in_flight")]
    pub max_in_flight: u32,
}

fn default_mirror_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "OPTIONS".into()]
}
fn default_mirror_body() -> u64 {
    64 * 1024
}
fn default_mirror_in_flight() -> u32 {
    256
}

/// Bound of `mirror.maxBodyBytes`: 10 MiB (the default request body limit).
pub const MAX_MIRROR_BODY: u64 = 10 * 1024 * 1024;

impl MirrorSettings {
    /// Mirroring of `percent` with the defaults.
    pub fn with_percent(percent: f64) -> MirrorSettings {
        MirrorSettings {
            percent_traffic: percent,
            methods: default_mirror_methods(),
            max_body_bytes: default_mirror_body(),
            max_in_flight: default_mirror_in_flight(),
        }
    }

    /// Validates every field (`prefix` is e.g. `mirror` or `/mirror`); method names are upper-cased.
    pub fn validate(&mut self, prefix: &str) -> Result<()> {
        validate_percent(&format!("{prefix}.percentTraffic"), self.percent_traffic)?;
        if self.methods.len() > 16 {
            return Err(Error::invalid(
                format!("{prefix}.methods"),
                self.methods.join(","),
                "at most 16 methods",
            ));
        }
        for (i, m) in self.methods.iter_mut().enumerate() {
            if !valid_token(m) || m.len() > 32 {
                return Err(Error::invalid(format!("{prefix}.methods[{i}]"), m.as_str(), "is not a method name"));
            }
            *m = m.to_ascii_uppercase();
        }
        if self.max_body_bytes > MAX_MIRROR_BODY {
            return Err(Error::invalid(
                format!("{prefix}.maxBodyBytes"),
                self.max_body_bytes.to_string(),
                format!("must be between 0 and {MAX_MIRROR_BODY}"),
            ));
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            return Err(Error::invalid(
                format!("{prefix}.maxInFlight"),
                self.max_in_flight.to_string(),
                "must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}

/// Validates `percentTraffic`: a finite double in [0, 100].
pub fn validate_percent(field: &str, p: f64) -> Result<()> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(Error::invalid(field, format_percent(p), "must be a number between 0 and 100"));
    }
    Ok(())
}

fn format_percent(p: f64) -> String {
    if p.is_nan() {
        "NaN".into()
    } else {
        p.to_string()
    }
}

/// Parses `percentTraffic` from the string form patch operations use.
pub fn parse_percent(field: &str, s: &str) -> Result<f64> {
    let p: f64 = s
        .trim()
        .parse()
        .map_err(|_| Error::invalid(field, s, "must be a number between 0 and 100"))?;
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(Error::invalid(field, s, "must be a number between 0 and 100"));
    }
    Ok(p)
}

/// How a client is kept on one side while the weight moves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Stickiness {
    /// Random per request.
    #[default]
    None,
    /// Hash of this request header's value.
    Header(String),
    /// Hash of this cookie's value.
    Cookie(String),
}

impl Stickiness {
    pub fn parse(field: &str, s: &str) -> Result<Stickiness> {
        if s == "none" || s.is_empty() {
            return Ok(Stickiness::None);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| Error::invalid(field, s, "must be none, header:<name> or cookie:<name>"))?;
        if !valid_token(name) {
            return Err(Error::invalid(field, s, "the name after : must be a header or cookie name"));
        }
        match kind {
            "header" => Ok(Stickiness::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(Stickiness::Cookie(name.to_string())),
            _ => Err(Error::invalid(field, s, "must be none, header:<name> or cookie:<name>")),
        }
    }
}

impl std::fmt::Display for Stickiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stickiness::None => f.write_str("none"),
            Stickiness::Header(h) => write!(f, "header:{h}"),
            Stickiness::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

impl Serialize for Stickiness {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Stickiness {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Stickiness::parse("canaryRouting.stickiness", &s).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// How a request may choose its variant explicitly, and how clients stick to one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryRouting {
    /// Header forcing a variant (`canary` or `production`); `null` switches it off.
    #[serde(default = "default_variant_header")]
    pub header: Option<String>,
    /// Cookie forcing a variant; off by default.
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub stickiness: Stickiness,
}

fn default_variant_header() -> Option<String> {
    Some("x-canarygate-variant".into())
}

impl Default for CanaryRouting {
    fn default() -> Self {
        CanaryRouting {
            header: default_variant_header(),
            cookie: None,
            stickiness: Stickiness::None,
        }
    }
}

impl CanaryRouting {
    pub fn validate(&mut self) -> Result<()> {
        if let Some(h) = &mut self.header {
            if !valid_token(h) {
                return Err(Error::invalid("canaryRouting.header", h.as_str(), "is not a valid header name"));
            }
            *h = h.to_ascii_lowercase();
        }
        if let Some(c) = &self.cookie {
            if !valid_token(c) {
                return Err(Error::invalid("canaryRouting.cookie", c.as_str(), "is not a valid cookie name"));
            }
        }
        Ok(())
    }
}

/// A stage: serves one deployment, with variables, cache and canary settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub api: String,
    pub name: String,
    pub deployment_id: String,
    pub variables: BTreeMap<String, String>,
    pub cache: CacheSettings,
    pub canary_settings: Option<CanarySettings>,
    pub canary_routing: CanaryRouting,
    /// Copies of production requests to the canary; they go only while the stage has a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
    pub active_rollout: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Counts the stage's changes: 1 when created, one more with each change (through any replica), so
    /// an answer says which state of the stage it made.
    #[serde(default)]
    pub version: u64,
    /// When the stage cache was last flushed (`DELETE .../cache`): every replica empties its copy of the
    /// cache when it sees a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_flushed_at: Option<DateTime<Utc>>,
}

impl Stage {
    /// Marks a change of the stage: its time and its next version.
    pub fn touch(&mut self, now: DateTime<Utc>) {
        self.updated_at = now;
        self.version += 1;
    }

    /// The canary's effective variables: the stage's overlaid with the overrides.
    pub fn canary_variables(&self) -> Option<BTreeMap<String, String>> {
        self.canary_settings.as_ref().map(|c| {
            let mut v = self.variables.clone();
            v.extend(c.stage_variable_overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
            v
        })
    }
}

/// The body of `PUT /v1/apis/{api}/stages/{stage}` (and a stage in a config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_settings: Option<CanaryInput>,
    #[serde(default)]
    pub canary_routing: CanaryRouting,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
}

/// Canary settings as a client sends them: the deployment defaults to the stage's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub percent_traffic: f64,
    #[serde(default)]
    pub stage_variable_overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub use_stage_cache: bool,
}

/// Validates a stage variable name and value (field is e.g. `variables.backend`).
pub fn validate_variable(prefix: &str, name: &str, value: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::invalid(prefix, name, "variable names must be [A-Za-z0-9_]{1,64}"));
    }
    if value.len() > 2048 || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            format!("{prefix}.{name}"),
            value,
            "must be at most 2048 characters without control characters",
        ));
    }
    Ok(())
}

pub(crate) fn validate_variables(prefix: &str, vars: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in vars {
        validate_variable(prefix, k, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stickiness_round_trips() {
        for s in ["none", "header:x-user", "cookie:session"] {
            let st = Stickiness::parse("f", s).unwrap();
            assert_eq!(st.to_string(), s);
        }
        assert_eq!(
            Stickiness::parse("f", "header:X-User").unwrap(),
            Stickiness::Header("x-user".into())
        );
        let e = Stickiness::parse("canaryRouting.stickiness", "ip").unwrap_err().to_string();
        assert!(e.contains("canaryRouting.stickiness") && e.contains("\"ip\""), "{e}");
    }

    #[test]
    fn percent_parsing() {
        assert_eq!(parse_percent("p", "10.5").unwrap(), 10.5);
        assert_eq!(parse_percent("p", "0.1").unwrap(), 0.1);
        for bad in ["-1", "100.5", "NaN", "abc", "inf", ""] {
            let e = parse_percent("/canarySettings/percentTraffic", bad).unwrap_err().to_string();
            assert!(
                e.contains("/canarySettings/percentTraffic") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
        assert!(validate_percent("p", f64::NAN).unwrap_err().to_string().contains("NaN"));
    }

    #[test]
    fn canary_routing_defaults() {
        let r: CanaryRouting = serde_json::from_str("{}").unwrap();
        assert_eq!(r, CanaryRouting::default());
        let r: CanaryRouting = serde_json::from_str(r#"{"header":null,"stickiness":"cookie:sid"}"#).unwrap();
        assert_eq!(r.header, None);
        assert_eq!(r.stickiness, Stickiness::Cookie("sid".into()));
    }
}

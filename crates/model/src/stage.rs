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
    /// The addresses (CIDRs) whose requests may force a variant with the header; unset: any client.
    /// Set it (or `headerToken`) on a stage public clients reach, so they cannot opt into a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_sources: Option<Vec<String>>,
    /// When set, a request from any address may force a variant with the header if its value carries
    /// this token: `canary; token=<headerToken>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_token: Option<String>,
    /// Pins the sticky hash's salt: the same keys land on the canary in every rollout. Default: each
    /// rollout draws its own (the stage keeps the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Requests matching one of these go to its variant before the weighted draw (counted as forced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<Cohort>,
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
            trusted_sources: None,
            header_token: None,
            salt: None,
            cohorts: Vec::new(),
        }
    }
}

/// The most cohorts a stage may have, and the most values one may list.
pub const MAX_COHORTS: usize = 64;
pub const MAX_COHORT_VALUES: usize = 1000;

/// A cohort rule: requests whose header, cookie or query parameter matches (equal to a value, one of a
/// list, or starting with a prefix), or whose source address is in one of the CIDRs, go to `variant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cohort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// One CIDR or a list of them: the connection's source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cidr: Option<Cidrs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `canary` (default) or `production`.
    #[serde(default = "canary_variant")]
    pub variant: crate::Variant,
}

/// One CIDR (`10.0.0.0/8`) or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cidrs {
    One(String),
    Many(Vec<String>),
}

impl Cidrs {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Cidrs::One(c) => std::slice::from_ref(c),
            Cidrs::Many(v) => v,
        }
    }
}

fn canary_variant() -> crate::Variant {
    crate::Variant::Canary
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`, or one address): the network and its prefix length.
pub fn parse_cidr(field: &str, s: &str) -> Result<(std::net::IpAddr, u8)> {
    let bad = || Error::invalid(field, s, "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32, or an address");
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok((addr, len))
}

impl Cohort {
    fn validate(&self, field: &str) -> Result<()> {
        let sources = [
            self.header.is_some(),
            self.cookie.is_some(),
            self.query.is_some(),
            self.source_cidr.is_some(),
        ];
        if sources.iter().filter(|x| **x).count() != 1 {
            return Err(Error::invalid(
                field,
                serde_json::to_string(self).unwrap_or_default(),
                "needs exactly one of header, cookie, query or sourceCidr",
            ));
        }
        if self.variant == crate::Variant::Mirror {
            return Err(Error::invalid(format!("{field}.variant"), "mirror", "must be canary or production"));
        }
        let matches = [self.equals.is_some(), self.one_of.is_some(), self.prefix.is_some()];
        let n = matches.iter().filter(|x| **x).count();
        if let Some(cidrs) = &self.source_cidr {
            if n != 0 {
                return Err(Error::invalid(field, "sourceCidr", "takes no equals, in or prefix"));
            }
            match cidrs {
                Cidrs::One(c) => {
                    parse_cidr(&format!("{field}.sourceCidr"), c)?;
                }
                Cidrs::Many(list) => {
                    if list.is_empty() || list.len() > MAX_COHORT_VALUES {
                        return Err(Error::invalid(
                            format!("{field}.sourceCidr"),
                            list.len().to_string(),
                            "must list 1 to 1000 CIDRs",
                        ));
                    }
                    for (i, c) in list.iter().enumerate() {
                        parse_cidr(&format!("{field}.sourceCidr[{i}]"), c)?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(h) = &self.header {
            if !valid_token(h) {
                return Err(Error::invalid(format!("{field}.header"), h, "is not a valid header name"));
            }
        }
        for (name, v) in [("cookie", &self.cookie), ("query", &self.query)] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 256 {
                    return Err(Error::invalid(format!("{field}.{name}"), v, "must be 1 to 256 characters"));
                }
            }
        }
        if n != 1 {
            return Err(Error::invalid(
                field,
                serde_json::to_string(self).unwrap_or_default(),
                "needs exactly one of equals, in or prefix",
            ));
        }
        if let Some(list) = &self.one_of {
            if list.is_empty() || list.len() > MAX_COHORT_VALUES {
                return Err(Error::invalid(
                    format!("{field}.in"),
                    list.len().to_string(),
                    "must list 1 to 1000 values",
                ));
            }
        }
        if self.prefix.as_deref() == Some("") {
            return Err(Error::invalid(format!("{field}.prefix"), "", "must not be empty"));
        }
        Ok(())
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
        if let Some(list) = &self.trusted_sources {
            if list.len() > MAX_COHORT_VALUES {
                return Err(Error::invalid(
                    "canaryRouting.trustedSources",
                    list.len().to_string(),
                    "must list at most 1000 CIDRs",
                ));
            }
            for (i, c) in list.iter().enumerate() {
                parse_cidr(&format!("canaryRouting.trustedSources[{i}]"), c)?;
            }
        }
        if let Some(t) = &self.header_token {
            if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(Error::invalid(
                    "canaryRouting.headerToken",
                    "(hidden)",
                    "must be 16 to 256 visible characters without ;",
                ));
            }
        }
        if let Some(salt) = &self.salt {
            if salt.is_empty() || salt.len() > 256 {
                return Err(Error::invalid("canaryRouting.salt", salt, "must be 1 to 256 characters"));
            }
        }
        if self.cohorts.len() > MAX_COHORTS {
            return Err(Error::invalid(
                "canaryRouting.cohorts",
                self.cohorts.len().to_string(),
                "must list at most 64 cohorts",
            ));
        }
        for (i, c) in self.cohorts.iter().enumerate() {
            c.validate(&format!("canaryRouting.cohorts[{i}]"))?;
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
    /// The sticky hash's salt the last rollout drew (kept between rollouts); `canaryRouting.salt`
    /// pins one instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_salt: Option<String>,
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

    /// The salt of the sticky hash: the pinned one, else the last rollout's, else the stage's name (so
    /// two stages never share one).
    pub fn sticky_salt(&self) -> String {
        match (&self.canary_routing.salt, &self.sticky_salt) {
            (Some(s), _) | (None, Some(s)) => s.clone(),
            (None, None) => format!("{}/{}", self.api, self.name),
        }
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

//! The pure resource model of canarygate.
//!
//! This crate owns what an API, a route, an integration, a deployment, a stage, canary settings and a
//! custom domain are; how they are validated (every error names the field and the value at fault); the
//! API Gateway patch operations on a stage; and the state transitions the admin API offers (create a
//! deployment, promote a canary, ...), as plain functions over [`State`]; rollouts, alarms, the canary
//! analysis's judgements, notifications, and the W3C trace context rules ([`trace`]). It does no I/O, no
//! async and reads no clock: callers pass `now` and fresh ids in, so every rule is unit-testable.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod alarm;
pub mod analysis;
mod api;
pub mod codedeploy;
pub mod config;
pub mod deployment_config;
mod error;
pub mod grpc;
pub mod metric;
pub mod notification;
mod patch;
pub mod rollout;
mod stage;
pub mod state;
pub mod template;
pub mod trace;

pub use api::{Api, Deployment, Integration, Method, Route};
pub use error::{Error, Result};
pub use metric::{Metric, Statistic};
pub use patch::{PatchOp, PatchOperation};
pub use stage::{
    parse_cidr, CacheSettings, CanaryInput, CanaryRouting, CanarySettings, Cidrs, Cohort, MirrorSettings, Stage, StageInput, Stickiness,
};
pub use state::{BasePathMapping, Domain, State};

/// Which side of a stage served a request; `Mirror` is a copy of a production request sent to the
/// canary, whose answer nobody saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Production,
    Canary,
    Mirror,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Production, Variant::Canary, Variant::Mirror];

    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Production => "production",
            Variant::Canary => "canary",
            Variant::Mirror => "mirror",
        }
    }

    pub fn parse(s: &str) -> Option<Variant> {
        match s {
            "production" => Some(Variant::Production),
            "canary" => Some(Variant::Canary),
            "mirror" => Some(Variant::Mirror),
            _ => None,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a resource name against `[a-z0-9-]{1,64}` (APIs) style rules.
pub(crate) fn check_name(field: &str, value: &str, max: usize, allow: fn(char) -> bool, pattern: &str) -> Result<()> {
    if value.is_empty() || value.chars().count() > max || !value.chars().all(allow) {
        return Err(Error::invalid(field, value, format!("must match {pattern}")));
    }
    Ok(())
}

/// Validates the name of a named resource (alarm, deployment config, notification, analysis):
/// `[A-Za-z0-9-_.]{1,max}`, and neither `.` nor `..` (a name is a path segment of the admin API).
pub(crate) fn check_dotted_name(field: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value != "."
        && value != ".."
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(Error::invalid(
            field,
            value,
            format!("must be [A-Za-z0-9-_.]{{1,{max}}}, and not . or .."),
        ));
    }
    Ok(())
}

/// Validates an API name: `[a-z0-9-]{1,64}`.
pub fn validate_api_name(name: &str) -> Result<()> {
    check_name(
        "api",
        name,
        64,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "[a-z0-9-]{1,64}",
    )
}

/// Validates a stage name: `[A-Za-z0-9_-]{1,128}`.
pub fn validate_stage_name(name: &str) -> Result<()> {
    check_name(
        "stage",
        name,
        128,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        "[A-Za-z0-9_-]{1,128}",
    )
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn resource_names_are_path_segments_and_errors_quote_them_in_part() {
        for ok in ["a", "high-5xx", "v1.2_x", "...", ".a", "a.."] {
            assert!(check_dotted_name("name", ok, 100).is_ok(), "{ok}");
        }
        for bad in [".", "..", "", "a/b", "a b", &"a".repeat(101)] {
            let e = check_dotted_name("name", bad, 100).unwrap_err().to_string();
            assert!(e.contains("name") && e.contains("not . or .."), "{e}");
        }
        let e = check_dotted_name("name", &"é/".repeat(800_000), 100).unwrap_err().to_string();
        assert!(e.len() < 400 && e.contains("(2400000 bytes)"), "{}", &e[..e.len().min(500)]);
    }
}

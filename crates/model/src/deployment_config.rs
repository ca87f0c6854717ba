//! Deployment configurations: the step plan of a rollout, as CodeDeploy's Lambda configurations.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The kind of plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigType {
    /// `percentage` for `intervalSeconds`, then everything.
    TimeBasedCanary,
    /// `percentage` more every `intervalSeconds` until everything.
    TimeBasedLinear,
    /// Everything at once.
    AllAtOnce,
    /// A list of steps, each waiting an interval or for an approval (Argo Rollouts' and Flagger's
    /// shape); after the last step the canary is promoted.
    Steps,
}

/// One step of a `Steps` plan: set `percentage`, then wait `intervalSeconds`, or for an approval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    pub percentage: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
}

/// A named deployment configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentConfig {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ConfigType,
    #[serde(default)]
    pub percentage: f64,
    #[serde(default)]
    pub interval_seconds: u64,
    /// The steps of a `Steps` plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSpec>,
    /// True for CodeDeploy's predefined configurations (ignored in a PUT body).
    #[serde(default)]
    pub predefined: bool,
}

/// One step of a schedule: set the canary weight, then wait (watched by alarms) before the next step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub weight: f64,
    pub wait_seconds: u64,
    /// The step ends on an approval (`POST /v1/rollouts/{id}/approve`), not after a time.
    pub approval: bool,
}

const PREDEFINED: &[(&str, ConfigType, f64, u64)] = &[
    ("Canary10Percent5Minutes", ConfigType::TimeBasedCanary, 10.0, 300),
    ("Canary10Percent10Minutes", ConfigType::TimeBasedCanary, 10.0, 600),
    ("Canary10Percent15Minutes", ConfigType::TimeBasedCanary, 10.0, 900),
    ("Canary10Percent30Minutes", ConfigType::TimeBasedCanary, 10.0, 1800),
    ("Linear10PercentEvery1Minute", ConfigType::TimeBasedLinear, 10.0, 60),
    ("Linear10PercentEvery2Minutes", ConfigType::TimeBasedLinear, 10.0, 120),
    ("Linear10PercentEvery3Minutes", ConfigType::TimeBasedLinear, 10.0, 180),
    ("Linear10PercentEvery10Minutes", ConfigType::TimeBasedLinear, 10.0, 600),
    ("AllAtOnce", ConfigType::AllAtOnce, 0.0, 0),
];

impl DeploymentConfig {
    /// CodeDeploy's predefined Lambda configurations, by short name.
    pub fn predefined() -> Vec<DeploymentConfig> {
        PREDEFINED
            .iter()
            .map(|(name, kind, percentage, interval_seconds)| DeploymentConfig {
                name: (*name).to_string(),
                kind: *kind,
                percentage: *percentage,
                interval_seconds: *interval_seconds,
                steps: Vec::new(),
                predefined: true,
            })
            .collect()
    }

    /// A predefined configuration by its short (`Canary10Percent5Minutes`) or full
    /// (`CodeDeployDefault.LambdaCanary10Percent5Minutes`) name.
    pub fn find_predefined(name: &str) -> Option<DeploymentConfig> {
        let short = name.strip_prefix("CodeDeployDefault.Lambda").unwrap_or(name);
        Self::predefined().into_iter().find(|c| c.name == short)
    }

    /// Validates a custom configuration; `field` prefixes error fields.
    pub fn validate(&self) -> Result<()> {
        crate::check_dotted_name("name", &self.name, 100)?;
        if Self::find_predefined(&self.name).is_some() || self.name.starts_with("CodeDeployDefault.") {
            return Err(Error::invalid("name", &self.name, "is a predefined configuration name"));
        }
        if self.kind == ConfigType::Steps {
            return self.validate_steps();
        }
        if !self.steps.is_empty() {
            return Err(Error::invalid(
                "steps",
                format!("{} steps", self.steps.len()),
                "only a Steps plan has steps",
            ));
        }
        if self.kind != ConfigType::AllAtOnce {
            if !self.percentage.is_finite() || self.percentage <= 0.0 || self.percentage >= 100.0 {
                return Err(Error::invalid(
                    "percentage",
                    self.percentage.to_string(),
                    "must be greater than 0 and less than 100",
                ));
            }
            if !(1..=172_800).contains(&self.interval_seconds) {
                return Err(Error::invalid(
                    "intervalSeconds",
                    self.interval_seconds.to_string(),
                    "must be 1 to 172800 (two days)",
                ));
            }
            if self.kind == ConfigType::TimeBasedLinear && 100.0 / self.percentage > 1000.0 {
                return Err(Error::invalid(
                    "percentage",
                    self.percentage.to_string(),
                    "a linear plan may have at most 1000 steps",
                ));
            }
        }
        Ok(())
    }

    fn validate_steps(&self) -> Result<()> {
        if self.percentage != 0.0 || self.interval_seconds != 0 {
            return Err(Error::invalid(
                if self.percentage != 0.0 { "percentage" } else { "intervalSeconds" },
                if self.percentage != 0.0 {
                    self.percentage.to_string()
                } else {
                    self.interval_seconds.to_string()
                },
                "a Steps plan sets them per step, in steps",
            ));
        }
        if self.steps.is_empty() || self.steps.len() > 100 {
            return Err(Error::invalid(
                "steps",
                format!("{} steps", self.steps.len()),
                "must list 1 to 100 steps",
            ));
        }
        let mut previous = 0.0;
        for (i, st) in self.steps.iter().enumerate() {
            let field = |f: &str| format!("steps[{i}].{f}");
            if !st.percentage.is_finite() || st.percentage <= 0.0 || st.percentage >= 100.0 {
                return Err(Error::invalid(
                    field("percentage"),
                    st.percentage.to_string(),
                    "must be greater than 0 and less than 100 (after the last step the canary is promoted)",
                ));
            }
            if st.percentage < previous {
                return Err(Error::invalid(
                    field("percentage"),
                    st.percentage.to_string(),
                    format!("must not be less than the step before ({previous})"),
                ));
            }
            previous = st.percentage;
            match (st.interval_seconds, st.approval) {
                (Some(_), true) => {
                    return Err(Error::invalid(
                        field("approval"),
                        "true",
                        "a step waits either intervalSeconds or for an approval, not both",
                    ))
                }
                (None, false) => {
                    return Err(Error::invalid(
                        field("intervalSeconds"),
                        "none",
                        "a step needs intervalSeconds or approval: true",
                    ))
                }
                (Some(s), false) if !(1..=172_800).contains(&s) => {
                    return Err(Error::invalid(
                        field("intervalSeconds"),
                        s.to_string(),
                        "must be 1 to 172800 (two days)",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The weights and waits, first step first; the last step is always weight 100 with no wait.
    pub fn schedule(&self) -> Vec<Step> {
        let step = |weight: f64, wait_seconds: u64| Step {
            weight,
            wait_seconds,
            approval: false,
        };
        match self.kind {
            ConfigType::AllAtOnce => vec![step(100.0, 0)],
            ConfigType::TimeBasedCanary => vec![step(self.percentage, self.interval_seconds), step(100.0, 0)],
            ConfigType::Steps => {
                let mut steps: Vec<Step> = self
                    .steps
                    .iter()
                    .map(|s| Step {
                        weight: s.percentage,
                        wait_seconds: s.interval_seconds.unwrap_or(0),
                        approval: s.approval,
                    })
                    .collect();
                steps.push(step(100.0, 0));
                steps
            }
            ConfigType::TimeBasedLinear => {
                let mut steps = Vec::new();
                let mut k = 1u32;
                loop {
                    // Multiply rather than add, so 10 steps of 10% land on exactly 100.
                    let w = self.percentage * f64::from(k);
                    if w >= 100.0 - 1e-9 {
                        break;
                    }
                    steps.push(step(w, self.interval_seconds));
                    k += 1;
                }
                steps.push(step(100.0, 0));
                steps
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (time the weight is set, weight) for a whole schedule.
    fn timeline(c: &DeploymentConfig) -> Vec<(u64, f64)> {
        let mut t = 0;
        c.schedule()
            .iter()
            .map(|s| {
                let at = t;
                t += s.wait_seconds;
                (at, s.weight)
            })
            .collect()
    }

    #[test]
    fn every_predefined_schedule() {
        let canary = |mins: u64| vec![(0, 10.0), (mins * 60, 100.0)];
        let linear = |mins: u64| {
            let mut v: Vec<(u64, f64)> = (0..9).map(|i| (i * mins * 60, 10.0 * (i + 1) as f64)).collect();
            v.push((9 * mins * 60, 100.0));
            v
        };
        let want: Vec<(&str, Vec<(u64, f64)>)> = vec![
            ("Canary10Percent5Minutes", canary(5)),
            ("Canary10Percent10Minutes", canary(10)),
            ("Canary10Percent15Minutes", canary(15)),
            ("Canary10Percent30Minutes", canary(30)),
            ("Linear10PercentEvery1Minute", linear(1)),
            ("Linear10PercentEvery2Minutes", linear(2)),
            ("Linear10PercentEvery3Minutes", linear(3)),
            ("Linear10PercentEvery10Minutes", linear(10)),
            ("AllAtOnce", vec![(0, 100.0)]),
        ];
        assert_eq!(DeploymentConfig::predefined().len(), 9);
        for (name, expected) in want {
            let short = DeploymentConfig::find_predefined(name).unwrap();
            let full = DeploymentConfig::find_predefined(&format!("CodeDeployDefault.Lambda{name}")).unwrap();
            assert_eq!(short, full);
            assert_eq!(timeline(&short), expected, "{name}");
        }
        assert!(DeploymentConfig::find_predefined("Canary10Percent6Minutes").is_none());
    }

    #[test]
    fn configs_round_trip_through_json() {
        // Regression: a stored rollout carries its config with `predefined`; reading it back must work.
        for c in DeploymentConfig::predefined() {
            let back: DeploymentConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn custom_configs() {
        let c = DeploymentConfig {
            name: "c".into(),
            kind: ConfigType::TimeBasedLinear,
            percentage: 33.3,
            interval_seconds: 7,
            steps: Vec::new(),
            predefined: false,
        };
        c.validate().unwrap();
        assert_eq!(timeline(&c), vec![(0, 33.3), (7, 66.6), (14, 99.89999999999999), (21, 100.0)]);
        let c = DeploymentConfig {
            name: "c".into(),
            kind: ConfigType::TimeBasedCanary,
            percentage: 0.5,
            interval_seconds: 30,
            steps: Vec::new(),
            predefined: false,
        };
        assert_eq!(timeline(&c), vec![(0, 0.5), (30, 100.0)]);
        let bad = DeploymentConfig {
            percentage: 0.0,
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("percentage"));
        let bad = DeploymentConfig {
            interval_seconds: 0,
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("intervalSeconds"));
        let bad = DeploymentConfig {
            name: "AllAtOnce".into(),
            ..c
        };
        assert!(bad.validate().unwrap_err().to_string().contains("predefined"));
    }

    #[test]
    fn steps_plans_and_their_errors() {
        let c: DeploymentConfig = serde_json::from_value(serde_json::json!({
            "name": "gated", "type": "Steps",
            "steps": [{"percentage": 5, "intervalSeconds": 60}, {"percentage": 5, "approval": true}, {"percentage": 50, "intervalSeconds": 120}]
        }))
        .unwrap();
        c.validate().unwrap();
        let s = c.schedule();
        assert_eq!(
            s.iter().map(|s| (s.weight, s.wait_seconds, s.approval)).collect::<Vec<_>>(),
            vec![(5.0, 60, false), (5.0, 0, true), (50.0, 120, false), (100.0, 0, false)]
        );
        let bad = |steps: serde_json::Value| {
            let c: DeploymentConfig = serde_json::from_value(serde_json::json!({"name": "g", "type": "Steps", "steps": steps})).unwrap();
            c.validate().unwrap_err().to_string()
        };
        let e = bad(serde_json::json!([{"percentage": 50, "intervalSeconds": 1}, {"percentage": 20, "intervalSeconds": 1}]));
        assert!(e.contains("steps[1].percentage") && e.contains("20"), "{e}");
        let e = bad(serde_json::json!([{"percentage": 100, "intervalSeconds": 1}]));
        assert!(e.contains("steps[0].percentage") && e.contains("100"), "{e}");
        let e = bad(serde_json::json!([{"percentage": 10}]));
        assert!(e.contains("steps[0].intervalSeconds"), "{e}");
        let e = bad(serde_json::json!([{"percentage": 10, "intervalSeconds": 5, "approval": true}]));
        assert!(e.contains("steps[0].approval"), "{e}");
        let e = bad(serde_json::json!([{"percentage": 10, "intervalSeconds": 0}]));
        assert!(e.contains("steps[0].intervalSeconds") && e.contains("0"), "{e}");
        assert!(bad(serde_json::json!([])).contains("steps"));
        let e: DeploymentConfig = serde_json::from_value(
            serde_json::json!({"name": "g", "type": "TimeBasedCanary", "percentage": 10, "intervalSeconds": 5,
                "steps": [{"percentage": 10, "intervalSeconds": 5}]}),
        )
        .unwrap();
        assert!(e.validate().unwrap_err().to_string().contains("only a Steps plan"));
    }
}

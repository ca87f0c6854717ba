//! CodeDeploy's applications and deployment groups, as canarygate keeps them for the AWS endpoints: a
//! deployment group says how a deployment of it rolls out (its deployment configuration, the alarms
//! that stop it, its automatic rollback) and where its lifecycle hooks' function names are called
//! (`hooks`: function name to URL). A CodeDeploy deployment is a rollout that records its application
//! and group ([`crate::rollout::Rollout::codedeploy`]); what it deploys (the API, stage and deployment
//! ids) comes from its AppSpec.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::rollout::AutoRollback;
use crate::{Error, Result};

/// An application: a name and its deployment groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub name: String,
    pub id: String,
    pub compute_platform: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub groups: BTreeMap<String, DeploymentGroup>,
}

/// A deployment group: how its deployments roll out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentGroup {
    pub name: String,
    pub id: String,
    pub deployment_config_name: String,
    #[serde(default)]
    pub service_role_arn: Option<String>,
    /// The alarms that stop a deployment, when `alarms_enabled`.
    #[serde(default)]
    pub alarms: Vec<String>,
    #[serde(default)]
    pub alarms_enabled: bool,
    #[serde(default)]
    pub ignore_poll_alarm_failure: bool,
    /// The events that roll a deployment back, when `auto_rollback_enabled`.
    #[serde(default)]
    pub auto_rollback_enabled: bool,
    #[serde(default)]
    pub auto_rollback_events: Vec<AutoRollback>,
    /// Lifecycle hook function names (as an AppSpec's `Hooks` name them) and the URL each is called at.
    #[serde(default)]
    pub hooks: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
}

pub use crate::rollout::Origin;

/// An application or group name as CodeDeploy allows them (1 to 100 characters, no control ones).
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            name,
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::State;

    fn app() -> Application {
        Application {
            name: "orders".into(),
            id: "a-1".into(),
            compute_platform: "Lambda".into(),
            created_at: DateTime::UNIX_EPOCH,
            groups: BTreeMap::new(),
        }
    }

    fn group(config: &str) -> DeploymentGroup {
        DeploymentGroup {
            name: "prod".into(),
            id: "g-1".into(),
            deployment_config_name: config.into(),
            service_role_arn: None,
            alarms: Vec::new(),
            alarms_enabled: false,
            ignore_poll_alarm_failure: false,
            auto_rollback_enabled: true,
            auto_rollback_events: vec![AutoRollback::DeploymentFailure],
            hooks: BTreeMap::new(),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn groups_refer_to_what_exists() {
        let mut st = State::default();
        assert!(st.put_deployment_group("orders", group("AllAtOnce")).is_err());
        st.create_application(app()).unwrap();
        assert!(matches!(st.create_application(app()), Err(Error::Conflict(_))));
        st.put_deployment_group("orders", group("CodeDeployDefault.LambdaCanary10Percent5Minutes"))
            .unwrap();
        let e = st.put_deployment_group("orders", group("Nope")).unwrap_err();
        assert!(e.to_string().contains("deploymentConfigName"), "{e}");
        let mut g = group("AllAtOnce");
        g.alarms = vec!["missing".into()];
        assert!(st.put_deployment_group("orders", g).unwrap_err().to_string().contains("missing"));
        let mut g = group("AllAtOnce");
        g.hooks.insert("Check".into(), "ftp://x".into());
        assert!(st.put_deployment_group("orders", g).is_err());
        assert_eq!(st.application("orders").unwrap().groups.len(), 1);
    }
}

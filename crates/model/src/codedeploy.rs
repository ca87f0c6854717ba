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
use crate::{Error, Result, State};

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

/// Where a CodeDeploy deployment came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    pub application: String,
    pub deployment_group: String,
    /// How it was created: `user`, or `autoscaling`/`codeDeployRollback` as CodeDeploy says.
    #[serde(default = "user")]
    pub creator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn user() -> String {
    "user".into()
}

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

impl State {
    /// The application `name`.
    pub fn application(&self, name: &str) -> Result<&Application> {
        self.applications.get(name).ok_or_else(|| Error::not_found("application", name))
    }

    /// Creates an application; a name taken is a conflict.
    pub fn create_application(&mut self, app: Application) -> Result<()> {
        validate_name("applicationName", &app.name)?;
        if self.applications.contains_key(&app.name) {
            return Err(Error::Conflict(format!("application {} already exists", app.name)));
        }
        self.applications.insert(app.name.clone(), app);
        Ok(())
    }

    /// Creates or replaces a deployment group, checking that its configuration and alarms exist.
    pub fn put_deployment_group(&mut self, application: &str, group: DeploymentGroup) -> Result<()> {
        validate_name("deploymentGroupName", &group.name)?;
        if crate::deployment_config::DeploymentConfig::find_predefined(&group.deployment_config_name).is_none()
            && !self.deployment_configs.contains_key(&group.deployment_config_name)
        {
            return Err(Error::invalid(
                "deploymentConfigName",
                &group.deployment_config_name,
                "no such deployment configuration",
            ));
        }
        if let Some(a) = group.alarms.iter().find(|a| !self.alarms.contains_key(*a)) {
            return Err(Error::invalid("alarmConfiguration.alarms", a, "no such alarm"));
        }
        for (name, url) in &group.hooks {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::invalid(format!("hooks.{name}"), url, "must be an http:// or https:// URL"));
            }
        }
        let app = self
            .applications
            .get_mut(application)
            .ok_or_else(|| Error::not_found("application", application))?;
        app.groups.insert(group.name.clone(), group);
        Ok(())
    }

    /// Deletes an application and its groups (its deployments' rollouts stay).
    pub fn delete_application(&mut self, name: &str) -> Result<()> {
        self.applications
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::not_found("application", name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The state's CodeDeploy applications and deployment groups.

use crate::codedeploy::*;
use crate::state::State;
use crate::{Error, Result};

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

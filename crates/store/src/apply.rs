//! Applying changes to a state: the inverse of [`diff`](crate::diff), so that a replica can bring its
//! state up to date with what another replica wrote (the changes it logged) instead of loading
//! everything. `apply(old, diff(old, new))` is `new`; untouched APIs keep their `Arc` (the gateway's
//! routing snapshot reuses what it built for them). A change that does not fit the state (a stage of
//! an API it does not have, a deployment out of order) is refused: the caller loads everything.

use std::sync::Arc;

use canarygate_model::state::ApiState;
use canarygate_model::State;

use crate::Change;

/// Applies `changes`, in order, to `state`; on `Err` the state may be half changed (throw it away).
pub fn apply(state: &mut State, changes: &[Change]) -> Result<(), String> {
    for c in changes {
        match c {
            Change::PutApi(api) => match state.apis.get_mut(&api.name) {
                Some(a) => Arc::make_mut(a).api = api.clone(),
                None => {
                    state.apis.insert(
                        api.name.clone(),
                        Arc::new(ApiState {
                            api: api.clone(),
                            deployments: Vec::new(),
                            stages: Default::default(),
                        }),
                    );
                }
            },
            Change::DeleteApi(name) => {
                state.apis.remove(name);
            }
            Change::PutDeployment { api, seq, deployment } => {
                let a = state
                    .apis
                    .get_mut(api)
                    .ok_or_else(|| format!("deployment of unknown API {api:?}"))?;
                let a = Arc::make_mut(a);
                match (*seq).cmp(&a.deployments.len()) {
                    std::cmp::Ordering::Less => a.deployments[*seq] = deployment.clone(),
                    std::cmp::Ordering::Equal => a.deployments.push(deployment.clone()),
                    std::cmp::Ordering::Greater => {
                        return Err(format!("deployment {seq} of API {api:?} after {} of them", a.deployments.len()))
                    }
                }
            }
            Change::PutStage(s) => {
                let a = state
                    .apis
                    .get_mut(&s.api)
                    .ok_or_else(|| format!("stage of unknown API {:?}", s.api))?;
                Arc::make_mut(a).stages.insert(s.name.clone(), (**s).clone());
            }
            Change::DeleteStage { api, stage } => {
                if let Some(a) = state.apis.get_mut(api) {
                    Arc::make_mut(a).stages.remove(stage);
                }
            }
            Change::PutDomain(d) => {
                state.domains.insert(d.domain.clone(), d.clone());
            }
            Change::DeleteDomain(d) => {
                state.domains.remove(d);
            }
            Change::PutRollout(r) => {
                state.rollouts.insert(r.id.clone(), (**r).clone());
            }
            Change::PutAlarm(a) => {
                state.alarms.insert(a.alarm.name.clone(), (**a).clone());
            }
            Change::DeleteAlarm(name) => {
                state.alarms.remove(name);
            }
            Change::PutDeploymentConfig(c) => {
                state.deployment_configs.insert(c.name.clone(), c.clone());
            }
            Change::DeleteDeploymentConfig(name) => {
                state.deployment_configs.remove(name);
            }
            Change::PutAnalysis(a) => {
                state.analyses.insert(a.name.clone().unwrap_or_default(), a.clone());
            }
            Change::DeleteAnalysis(name) => {
                state.analyses.remove(name);
            }
            Change::PutNotification(n) => {
                state.notifications.insert(n.name.clone(), n.clone());
            }
            Change::DeleteNotification(name) => {
                state.notifications.remove(name);
            }
            Change::PutDelivery(d) => {
                state.deliveries.insert(d.id.clone(), (**d).clone());
            }
            Change::DeleteDelivery(id) => {
                state.deliveries.remove(id);
            }
            Change::PutApplication(a) => {
                state.applications.insert(a.name.clone(), (**a).clone());
            }
            Change::DeleteApplication(name) => {
                state.applications.remove(name);
            }
        }
    }
    Ok(())
}

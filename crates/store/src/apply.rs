//! Applying changes to a state: the inverse of [`diff`](crate::diff), so that a replica can bring its
//! state up to date with what another replica wrote (the changes it logged) instead of loading
//! everything. `apply(old, diff(old, new))` is `new`; untouched APIs keep their `Arc` (the gateway's
//! routing snapshot reuses what it built for them). A change that does not fit the state (a stage of
//! an API it does not have, a deployment out of order) is refused (and a record of a kind this build does not know): the caller loads everything.

use std::sync::Arc;

use canarygate_model::state::{kind, ApiState};
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
            Change::PutRollout(r) => {
                state.rollouts.insert(r.id.clone(), (**r).clone());
            }
            Change::Put { kind: k, key, doc } => {
                let k = kind(k).ok_or_else(|| format!("a record of unknown kind {k:?}"))?;
                k.load(state, doc).map_err(|e| format!("{} {key:?}: {e}", k.name()))?;
            }
            Change::Delete { kind: k, key } => {
                kind(k).ok_or_else(|| format!("a record of unknown kind {k:?}"))?.remove(state, key);
            }
        }
    }
    Ok(())
}

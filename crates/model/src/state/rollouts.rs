//! The state's rollouts, alarms and deployment configurations: creating and validating rollouts, the
//! requests a running rollout takes (stop, promote, approve, pause, resume, continue, hook outcomes),
//! alarms and their recorded states.

use chrono::{DateTime, Utc};

use crate::alarm::{Alarm, AlarmStatus};
use crate::analysis::{AnalysisRef, AnalysisSpec, AnalysisState};
use crate::deployment_config::DeploymentConfig;
use crate::rollout::*;
use crate::state::{AlarmEntry, State};
use crate::{Error, Result};

fn valid_hook_url(field: &str, url: &str) -> Result<()> {
    let ok = url.starts_with("http://") && url.len() > 7 && url.len() <= 2048;
    if !ok {
        return Err(Error::invalid(field, url, "must be an http:// URL"));
    }
    Ok(())
}

impl State {
    /// A deployment configuration by name: predefined (short or full name) or custom.
    pub fn deployment_config(&self, name: &str) -> Option<DeploymentConfig> {
        DeploymentConfig::find_predefined(name).or_else(|| self.deployment_configs.get(name).cloned())
    }

    pub fn put_deployment_config(&mut self, name: &str, mut config: DeploymentConfig) -> Result<DeploymentConfig> {
        config.name = name.to_string();
        config.predefined = false;
        config.validate()?;
        self.deployment_configs.insert(name.to_string(), config.clone());
        Ok(config)
    }

    /// Creates or replaces a stored analysis (rollouts already started keep their copy).
    pub fn put_analysis(&mut self, name: &str, mut analysis: AnalysisSpec) -> Result<AnalysisSpec> {
        crate::check_dotted_name("name", name, 100)?;
        analysis.name = Some(name.to_string());
        analysis.validate("analysis")?;
        self.analyses.insert(name.to_string(), analysis.clone());
        Ok(analysis)
    }

    pub fn delete_analysis(&mut self, name: &str) -> Result<()> {
        self.analyses
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::not_found("analysis", name))
    }

    pub fn delete_deployment_config(&mut self, name: &str) -> Result<()> {
        if DeploymentConfig::find_predefined(name).is_some() {
            return Err(Error::Conflict(format!(
                "{name} is a predefined deployment configuration and cannot be deleted"
            )));
        }
        self.deployment_configs
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::not_found("deployment config", name))
    }

    /// Creates or replaces an alarm; a replaced alarm keeps its state and history.
    pub fn put_alarm(&mut self, name: &str, mut alarm: Alarm) -> Result<AlarmEntry> {
        alarm.name = name.to_string();
        alarm.validate()?;
        let status = self.alarms.get(name).map(|e| e.status.clone()).unwrap_or_default();
        let entry = AlarmEntry { alarm, status };
        self.alarms.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    pub fn delete_alarm(&mut self, name: &str) -> Result<()> {
        if let Some(r) = self
            .rollouts
            .values()
            .find(|r| r.status.is_active() && r.alarms.iter().any(|a| a == name))
        {
            return Err(Error::Conflict(format!("alarm {name} is watched by the active rollout {}", r.id)));
        }
        self.alarms.remove(name).map(|_| ()).ok_or_else(|| Error::not_found("alarm", name))
    }

    /// Sets an alarm's state by hand (CloudWatch's `SetAlarmState`, for testing what watches it): held
    /// for one period of the alarm, at least 10 seconds, then evaluated again as usual.
    pub fn set_alarm_state(&mut self, name: &str, state: crate::alarm::AlarmState, reason: String, now: DateTime<Utc>) -> Result<()> {
        if reason.len() > 1023 {
            return Err(Error::invalid("stateReason", reason, "must be at most 1023 characters"));
        }
        let entry = self.alarms.get_mut(name).ok_or_else(|| Error::not_found("alarm", name))?;
        let hold = chrono::Duration::seconds(entry.alarm.period_seconds.max(10) as i64);
        entry.status.record(
            crate::alarm::Evaluation {
                state,
                reason,
                datapoints: Vec::new(),
                breaching: 0,
            },
            now,
        );
        entry.status.set_until = Some(now + hold);
        Ok(())
    }

    /// Records an alarm evaluation; true when its state changed.
    pub fn record_alarm(&mut self, name: &str, e: crate::alarm::Evaluation, now: DateTime<Utc>) -> bool {
        match self.alarms.get_mut(name) {
            Some(entry) => entry.status.record(e, now),
            None => false,
        }
    }

    /// Creates a rollout (status `Created`) and marks the stage as having it; traffic moves only when
    /// the controller takes the first step.
    pub fn create_rollout(&mut self, api: &str, stage: &str, req: RolloutRequest, id: String, now: DateTime<Utc>) -> Result<Rollout> {
        let st = self.stage(api, stage)?.clone();
        if let Some(r) = &st.active_rollout {
            return Err(Error::Conflict(format!("stage {api}/{stage} already has an active rollout {r}")));
        }
        if st.canary_settings.is_some() {
            return Err(Error::Conflict(format!(
                "stage {api}/{stage} already has a canary; promote or remove it before starting a rollout"
            )));
        }
        let deployment_id = req.deployment_id.clone().unwrap_or_else(|| st.deployment_id.clone());
        if self.api(api)?.deployment(&deployment_id).is_none() {
            return Err(Error::invalid(
                "deploymentId",
                deployment_id,
                format!("no such deployment of api {api}"),
            ));
        }
        crate::stage::validate_variables("stageVariableOverrides", &req.stage_variable_overrides)?;
        let config = self
            .deployment_config(&req.deployment_config)
            .ok_or_else(|| Error::invalid("deploymentConfig", &req.deployment_config, "no such deployment configuration"))?;
        for (i, a) in req.alarms.iter().enumerate() {
            if !self.alarms.contains_key(a) {
                return Err(Error::invalid(format!("alarms[{i}]"), a, "no such alarm"));
            }
        }
        if let Some(u) = &req.hooks.before_allow_traffic {
            valid_hook_url("hooks.beforeAllowTraffic", u)?;
        }
        if let Some(u) = &req.hooks.after_allow_traffic {
            valid_hook_url("hooks.afterAllowTraffic", u)?;
        }
        if !(1..=172_800).contains(&req.hooks.timeout_seconds) {
            return Err(Error::invalid(
                "hooks.timeoutSeconds",
                req.hooks.timeout_seconds.to_string(),
                "must be 1 to 172800",
            ));
        }
        // A stored analysis is copied into the rollout: changing it later does not change this one.
        let analysis = match req.analysis.clone() {
            None => None,
            Some(AnalysisRef::Named(name)) => Some(
                self.analyses
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::invalid("analysis", &name, "no such analysis"))?,
            ),
            Some(AnalysisRef::Inline(mut a)) => {
                a.name = None;
                a.validate("analysis")?;
                Some(a)
            }
        };
        let mirror = match (req.mirror_seconds, req.mirror_percent) {
            (None | Some(0), None) => None,
            (None | Some(0), Some(p)) => {
                return Err(Error::invalid(
                    "mirrorPercent",
                    p.to_string(),
                    "needs mirrorSeconds (the length of the mirroring phase)",
                ))
            }
            (Some(seconds), percent) => {
                if seconds > 86_400 {
                    return Err(Error::invalid("mirrorSeconds", seconds.to_string(), "must be 0 to 86400"));
                }
                let percent = percent.unwrap_or(100.0);
                crate::stage::validate_percent("mirrorPercent", percent)?;
                if percent <= 0.0 {
                    return Err(Error::invalid("mirrorPercent", percent.to_string(), "must be above 0"));
                }
                Some(MirrorPhase { seconds, percent })
            }
        };
        let auto_rollback = req.auto_rollback.clone().unwrap_or_else(|| {
            vec![
                AutoRollback::DeploymentFailure,
                AutoRollback::DeploymentStopOnAlarm,
                AutoRollback::DeploymentStopOnRequest,
            ]
        });
        let rollout = Rollout {
            id: id.clone(),
            api: api.to_string(),
            stage: stage.to_string(),
            deployment_id,
            stage_variable_overrides: req.stage_variable_overrides,
            deployment_config: config,
            alarms: req.alarms,
            hooks: req.hooks,
            auto_rollback,
            salt: st.canary_routing.salt.clone().unwrap_or_else(|| id.clone()),
            codedeploy: None,
            analysis_state: analysis.as_ref().map(AnalysisState::new),
            analysis,
            mirror,
            waiting_for: None,
            status: RolloutStatus::Created,
            phase: Phase::Created,
            weight: 0.0,
            previous: PreviousStage {
                deployment_id: st.deployment_id.clone(),
                variables: st.variables.clone(),
                canary_settings: None,
                mirror: st.mirror.clone(),
            },
            promoted: false,
            watch_start: None,
            checkpoint_at: now,
            stop_requested: None,
            promote_requested: false,
            approved_by: None,
            paused: None,
            would_have_rolled_back: Vec::new(),
            dry_run_firing: Vec::new(),
            continue_requested_by: None,
            events: vec![RolloutEvent {
                time: now,
                status: RolloutStatus::Created,
                step: None,
                weight: 0.0,
                reason: "rollout created".into(),
                observed: None,
            }],
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        let st = self
            .apis
            .get_mut(api)
            .and_then(|a| std::sync::Arc::make_mut(a).stages.get_mut(stage))
            .expect("checked above");
        st.active_rollout = Some(id.clone());
        st.touch(now);
        self.rollouts.insert(id, rollout.clone());
        Ok(rollout)
    }

    pub fn rollout(&self, id: &str) -> Result<&Rollout> {
        self.rollouts.get(id).ok_or_else(|| Error::not_found("rollout", id))
    }

    fn active_rollout_mut(&mut self, id: &str) -> Result<&mut Rollout> {
        let r = self.rollouts.get_mut(id).ok_or_else(|| Error::not_found("rollout", id))?;
        if !r.status.is_active() {
            return Err(Error::Conflict(format!("rollout {id} has ended ({})", r.status.as_str())));
        }
        Ok(r)
    }

    /// Asks an active rollout to stop (and roll back unless `rollback` is false).
    pub fn request_stop(&mut self, id: &str, rollback: bool, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        r.stop_requested = Some(rollback);
        r.updated_at = now;
        Ok(r.clone())
    }

    /// Asks an active rollout to skip to 100% now.
    pub fn request_promote(&mut self, id: &str, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        r.promote_requested = true;
        r.updated_at = now;
        Ok(r.clone())
    }

    /// Approves the approval step the rollout waits at; `by` names the caller (a token's name).
    pub fn approve_rollout(&mut self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        let waiting = match r.phase {
            Phase::Shifting { step, .. } => r.deployment_config.schedule().get(step).is_some_and(|s| s.approval),
            _ => false,
        };
        if !waiting {
            return Err(Error::Conflict(format!("rollout {id} is not waiting for an approval")));
        }
        if let Some(other) = &r.approved_by {
            return Err(Error::Conflict(format!("rollout {id}'s step is already approved by {other}")));
        }
        r.approved_by = Some(by.to_string());
        r.updated_at = now;
        Ok(r.clone())
    }

    /// Pauses a rollout at a timed or approval step, or in its mirroring phase; `by` names the caller.
    pub fn pause_rollout(&mut self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        if let Some(p) = &r.paused {
            return Err(Error::Conflict(format!("rollout {id} is already paused (by {})", p.by)));
        }
        if !matches!(r.phase, Phase::Shifting { .. } | Phase::Mirroring { .. }) || r.promoted {
            return Err(Error::Conflict(format!(
                "rollout {id} is not at a step (it is {}); only a step's wait can be paused",
                phase_name(&r.phase)
            )));
        }
        r.paused = Some(Pause {
            by: by.to_string(),
            at: now,
        });
        let reason = format!("paused by {by}: the weight holds and the step's wait stops; alarms and the analysis keep watching");
        push_event(r, now, reason, serde_json::json!({"pausedBy": by}));
        Ok(r.clone())
    }

    /// Resumes a paused rollout: its step's wait goes on with what was left of it.
    pub fn resume_rollout(&mut self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        let Some(p) = r.paused.take() else {
            return Err(Error::Conflict(format!("rollout {id} is not paused")));
        };
        let held = (now - p.at).num_milliseconds().max(0) as f64 / 1000.0;
        // No watched time ran while paused: a controller that was down meanwhile missed none of it.
        r.checkpoint_at = now;
        let reason = format!("resumed by {by} after {held:.1} s paused");
        push_event(r, now, reason, serde_json::json!({"resumedBy": by, "pausedSeconds": held}));
        Ok(r.clone())
    }

    /// Ends the current step's wait (or the mirroring phase) now: the next step comes on the
    /// controller's next tick, without waiting for the rest of the wait or `minCanaryRequests`.
    pub fn continue_rollout(&mut self, id: &str, by: &str, now: DateTime<Utc>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        if r.paused.is_some() {
            return Err(Error::Conflict(format!("rollout {id} is paused; resume it first")));
        }
        let at_wait = match r.phase {
            Phase::Shifting { step, .. } => !r.promoted && r.deployment_config.schedule().get(step).is_some_and(|s| !s.approval),
            Phase::Mirroring { .. } => true,
            _ => false,
        };
        if !at_wait {
            return Err(Error::Conflict(format!(
                "rollout {id} is not waiting at a timed step (it is {}); an approval step is approved instead",
                phase_name(&r.phase)
            )));
        }
        r.continue_requested_by = Some(by.to_string());
        r.updated_at = now;
        Ok(r.clone())
    }

    /// Records a hook's outcome (its callback, or its HTTP reply).
    pub fn record_hook(&mut self, id: &str, execution_id: &str, status: HookStatus, message: Option<String>) -> Result<Rollout> {
        let r = self.active_rollout_mut(id)?;
        let exec = match &mut r.phase {
            Phase::BeforeAllowTraffic { execution } | Phase::AfterAllowTraffic { execution } if execution.id == execution_id => execution,
            _ => return Err(Error::not_found("hook execution", execution_id)),
        };
        if matches!(exec.status, HookStatus::Succeeded | HookStatus::Failed) {
            return Err(Error::Conflict(format!(
                "hook execution {execution_id} already ended ({:?})",
                exec.status
            )));
        }
        exec.status = status;
        exec.message = message;
        Ok(r.clone())
    }
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Created => "not started",
        Phase::BeforeAllowTraffic { .. } => "waiting for its BeforeAllowTraffic hook",
        Phase::Mirroring { .. } => "mirroring",
        Phase::Shifting { .. } => "at a step",
        Phase::AfterAllowTraffic { .. } => "waiting for its AfterAllowTraffic hook",
        Phase::Done => "done",
    }
}

fn push_event(r: &mut Rollout, now: DateTime<Utc>, reason: String, observed: serde_json::Value) {
    r.events.push(RolloutEvent {
        time: now,
        status: r.status,
        step: r.step_index(),
        weight: r.weight,
        reason,
        observed: Some(observed),
    });
    r.updated_at = now;
}

/// The status of an alarm as the API shows it.
pub fn alarm_view(entry: &AlarmEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(&entry.alarm).unwrap_or_default();
    let status: &AlarmStatus = &entry.status;
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), serde_json::json!(status.state));
        o.insert("stateReason".into(), serde_json::json!(status.reason));
        o.insert("datapoints".into(), serde_json::json!(status.datapoints));
        o.insert("stateUpdatedAt".into(), serde_json::json!(status.updated_at));
        o.insert("history".into(), serde_json::json!(status.history));
    }
    v
}

//! The rollout state machine: `step(state, rollout, input) -> effects`, pure.
//!
//! It reads the rollout and its stage from the model `State`, decides, and writes the new rollout and
//! the stage change into the same `State`, so the store persists both in one transaction before traffic
//! sees the change. The only effects it returns are hook calls to make (a new one, or one a restarted
//! controller makes again). Time comes in through [`Input`]: the wall clock (for hook deadlines and
//! events) and the *watched* time of the current step (counted by [`crate::watched`]), which is what a
//! step's wait counts.

use chrono::{DateTime, Utc};
use serde_json::json;

use canarygate_metrics::bucket_bounds_us;
use canarygate_model::alarm::{AlarmState, Evaluation};
use canarygate_model::analysis::{Batch, Pairs};
use canarygate_model::notification::EventKind;
use canarygate_model::rollout::{
    AutoRollback, HookExecution, HookStatus, LifecycleEvent, MirrorPhase, Phase, Rollout, RolloutEvent, RolloutStatus,
};
use canarygate_model::{CanarySettings, MirrorSettings, State};

/// Watched time is written to the record at least this often, so a restart loses at most this much.
pub const CHECKPOINT_MS: u64 = 5_000;

/// What the controller observed for one rollout.
pub struct Input<'a> {
    pub now: DateTime<Utc>,
    /// Watched time of the current step so far (the record's checkpoint plus what the driver counted
    /// since).
    pub watched_ms: u64,
    /// The rollout's alarms, evaluated over periods since traffic first moved.
    pub alarms: &'a [(String, Evaluation)],
    /// New batches for the rollout's canary analysis (both variants over the same seconds).
    pub batches: &'a [Batch],
    /// New seconds of mirrored pairs for the paired judgement.
    pub pairs: &'a [Pairs],
    /// The controller has just (re)started or taken over and sees this rollout for the first time: a
    /// gap since the record's checkpoint is reported, and a pending hook is called again.
    pub resumed: bool,
    /// Makes a fresh hook execution id.
    pub new_id: &'a mut dyn FnMut() -> String,
}

/// Something the driver must do after the new state is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    CallHook { rollout_id: String, execution: HookExecution },
}

/// What a hook's endpoint answered: an HTTP status and the start of its body, or why it could not be
/// called.
pub type HookReply = Result<(u16, String), String>;

/// Maps a hook's reply to the execution's status: 202 waits for the callback, another 2xx succeeds,
/// anything else fails (with the status and up to 200 characters of the body).
pub fn hook_status(reply: &HookReply) -> (HookStatus, String) {
    match reply {
        Ok((202, _)) => (HookStatus::Waiting, "202 Accepted: waiting for the callback".into()),
        Ok((code, _)) if (200..300).contains(code) => (HookStatus::Succeeded, format!("HTTP {code}")),
        Ok((code, body)) => {
            let body: String = body.chars().take(200).collect();
            (HookStatus::Failed, format!("HTTP {code}: {body}"))
        }
        Err(e) => (HookStatus::Failed, format!("call failed: {e}")),
    }
}

/// Takes one step of rollout `id`. Does nothing for an ended or unknown rollout.
pub fn step(state: &mut State, id: &str, input: &mut Input<'_>) -> Vec<Effect> {
    let Some(r) = state.rollouts.get(id).cloned() else {
        return Vec::new();
    };
    if !r.status.is_active() {
        return Vec::new();
    }
    let mut m = Machine {
        state,
        r,
        now: input.now,
        effects: Vec::new(),
        alarm_fired: false,
    };
    m.run(input);
    let Machine { state, r, effects, .. } = m;
    if state.rollouts.get(id) != Some(&r) {
        let mut r = r;
        r.updated_at = input.now;
        state.rollouts.insert(id.to_string(), r);
    }
    effects
}

struct Machine<'s> {
    state: &'s mut State,
    r: Rollout,
    now: DateTime<Utc>,
    effects: Vec<Effect>,
    /// The rollout ends because an alarm fired (notified as AlarmFired before the ending).
    alarm_fired: bool,
}

// === impl Machine ===

impl Machine<'_> {
    fn run(&mut self, input: &mut Input<'_>) {
        if input.resumed {
            self.note_resume();
        }
        if let Some(rollback) = self.r.stop_requested.take() {
            let status = if rollback {
                RolloutStatus::RolledBack
            } else {
                RolloutStatus::Stopped
            };
            let reason = if rollback {
                "stopped on request; rolled back"
            } else {
                "stopped on request; traffic left as it is"
            };
            return self.end(status, rollback, reason.into(), None);
        }
        if self.watching() {
            self.note_dry_run_alarms(input.alarms);
            let acting = |name: &String| !self.state.alarms.get(name).is_some_and(|a| a.alarm.dry_run);
            if let Some((name, e)) = input.alarms.iter().find(|(n, e)| e.state == AlarmState::Alarm && acting(n)) {
                let threshold = self.state.alarms.get(name).map(|a| a.alarm.threshold);
                let observed = json!({"alarm": name, "datapoints": e.datapoints, "threshold": threshold, "reason": e.reason});
                let rollback = self.r.rolls_back_on(AutoRollback::DeploymentStopOnAlarm);
                let (status, what) = if rollback {
                    (RolloutStatus::RolledBack, "rolled back")
                } else {
                    (RolloutStatus::Stopped, "stopped")
                };
                self.alarm_fired = true;
                return self.end(
                    status,
                    rollback,
                    format!("alarm {name} entered ALARM: {what}. {}", e.reason),
                    Some(observed),
                );
            }
        }
        if self.watching() && self.judge(input.batches, input.pairs) {
            return;
        }
        match self.r.phase.clone() {
            Phase::Created => self.start(input),
            Phase::BeforeAllowTraffic { execution } => match self.hook_outcome(&execution) {
                Some(Ok(())) => {
                    self.event(None, "BeforeAllowTraffic hook succeeded".into(), None);
                    self.first_traffic(input);
                }
                Some(Err(why)) => self.fail(format!("BeforeAllowTraffic hook {}: {why}", execution.id)),
                None => {}
            },
            Phase::Mirroring { watched_ms } => {
                let m = self.r.mirror.unwrap_or(MirrorPhase { seconds: 0, percent: 0.0 });
                if self.r.promote_requested {
                    self.r.promote_requested = false;
                    self.end_mirroring("promote requested: mirroring ended, skipping to 100%".into());
                    let last = self.r.deployment_config.schedule().len() - 1;
                    return self.enter_step(last, input);
                }
                if self.r.paused.is_some() {
                    return self.hold(Phase::Mirroring {
                        watched_ms: input.watched_ms,
                    });
                }
                if let Some(by) = self.r.continue_requested_by.take() {
                    self.end_mirroring(format!("mirroring ended on request by {by}"));
                    return self.enter_step(0, input);
                }
                if input.watched_ms >= m.seconds * 1000 {
                    self.end_mirroring(format!("mirroring ended after {} s without an alarm or a rejection", m.seconds));
                    self.enter_step(0, input);
                } else if input.watched_ms >= watched_ms + CHECKPOINT_MS {
                    self.r.phase = Phase::Mirroring {
                        watched_ms: input.watched_ms,
                    };
                    self.r.checkpoint_at = self.now;
                }
            }
            Phase::Shifting { step, watched_ms } => {
                let schedule = self.r.deployment_config.schedule();
                if self.r.promote_requested {
                    self.r.promote_requested = false;
                    self.event(Some(step), "promote requested: skipping to 100%".into(), None);
                    return self.enter_step(schedule.len() - 1, input);
                }
                if self.r.paused.is_some() {
                    return self.hold(Phase::Shifting {
                        step,
                        watched_ms: input.watched_ms,
                    });
                }
                if let Some(by) = self.r.continue_requested_by.take() {
                    let observed = json!({"continuedBy": by, "watchedMs": input.watched_ms});
                    self.event(Some(step), format!("step ended early on request by {by}"), Some(observed));
                    return self.enter_step(step + 1, input);
                }
                let wait_ms = schedule.get(step).map_or(0, |s| s.wait_seconds * 1000);
                if schedule.get(step).is_some_and(|s| s.approval) {
                    // An approval step ends on an approval only, however long that takes; alarms and
                    // the analysis keep watching meanwhile.
                    match self.r.approved_by.take() {
                        Some(by) => {
                            self.event(Some(step), format!("step approved by {by}"), Some(json!({"approvedBy": by})));
                            self.enter_step(step + 1, input);
                        }
                        None if self.r.waiting_for.is_none() => {
                            let why = format!(
                                "waiting for an approval: POST /v1/rollouts/{}/approve (canarygate rollout approve {})",
                                self.r.id, self.r.id
                            );
                            self.event(Some(step), why.clone(), None);
                            self.r.waiting_for = Some(why);
                        }
                        None => {
                            // Still running: a restart later sees no gap.
                            if (self.now - self.r.checkpoint_at).num_milliseconds() >= CHECKPOINT_MS as i64 {
                                self.r.checkpoint_at = self.now;
                            }
                        }
                    }
                } else if input.watched_ms >= wait_ms {
                    if self.enough_canary_traffic(step) {
                        self.enter_step(step + 1, input);
                    }
                } else if input.watched_ms >= watched_ms + CHECKPOINT_MS {
                    self.r.phase = Phase::Shifting {
                        step,
                        watched_ms: input.watched_ms,
                    };
                    self.r.checkpoint_at = self.now;
                }
            }
            Phase::AfterAllowTraffic { execution } => match self.hook_outcome(&execution) {
                Some(Ok(())) => {
                    self.event(None, "AfterAllowTraffic hook succeeded".into(), None);
                    self.end(RolloutStatus::Succeeded, false, "rollout succeeded".into(), None);
                }
                Some(Err(why)) => self.fail(format!("AfterAllowTraffic hook {}: {why}", execution.id)),
                None => {}
            },
            Phase::Done => {}
        }
    }

    /// A paused rollout holds its step: the watched time reached when the pause began is recorded
    /// (the driver counts no more while paused), and the checkpoint keeps moving so a restart sees no
    /// gap.
    fn hold(&mut self, at: Phase) {
        if self.r.phase != at {
            self.r.phase = at;
            self.r.checkpoint_at = self.now;
        } else if (self.now - self.r.checkpoint_at).num_milliseconds() >= CHECKPOINT_MS as i64 {
            self.r.checkpoint_at = self.now;
        }
    }

    /// Feeds the analysis; true when it rejected the canary (the rollout has ended).
    fn judge(&mut self, batches: &[Batch], pairs: &[Pairs]) -> bool {
        let Some(a) = self.r.analysis_state.as_mut() else { return false };
        for b in batches {
            a.feed(b);
        }
        for p in pairs {
            a.feed_pairs(p);
        }
        let Some(which) = a.rejection() else { return false };
        let evidence = a.evidence(bucket_bounds_us());
        let line = evidence.line();
        let observed = serde_json::to_value(&evidence).ok();
        if self.r.analysis.as_ref().is_some_and(|a| a.dry_run) {
            let by = format!("analysis ({which})");
            if !self.r.would_have_rolled_back.iter().any(|w| w.by == by) {
                self.would_have(by, line, observed);
            }
            return false;
        }
        let rollback = self.r.rolls_back_on(AutoRollback::DeploymentStopOnAlarm);
        let (status, what) = if rollback {
            (RolloutStatus::RolledBack, "rolled back")
        } else {
            (RolloutStatus::Stopped, "stopped")
        };
        self.end(
            status,
            rollback,
            format!("analysis rejected the canary ({which}): {what}. {line}"),
            observed,
        );
        true
    }

    /// Dry-run alarms: entering ALARM is noted as a moment the rollout would have rolled back (and
    /// leaving it as an event); nothing else happens.
    fn note_dry_run_alarms(&mut self, alarms: &[(String, Evaluation)]) {
        for (name, e) in alarms {
            if !self.state.alarms.get(name).is_some_and(|a| a.alarm.dry_run) {
                continue;
            }
            let firing = e.state == AlarmState::Alarm;
            let was = self.r.dry_run_firing.contains(name);
            if firing && !was {
                self.r.dry_run_firing.push(name.clone());
                let threshold = self.state.alarms.get(name).map(|a| a.alarm.threshold);
                let observed =
                    json!({"alarm": name, "datapoints": e.datapoints, "threshold": threshold, "reason": e.reason, "dryRun": true});
                self.would_have(format!("alarm {name}"), e.reason.clone(), Some(observed));
            } else if !firing && was {
                self.r.dry_run_firing.retain(|n| n != name);
                let step = self.r.step_index();
                self.event(step, format!("dry run: alarm {name} left ALARM ({})", e.state.as_str()), None);
            }
        }
    }

    /// Notes a moment a dry-run judgement would have rolled the rollout back, as an event too.
    fn would_have(&mut self, by: String, reason: String, observed: Option<serde_json::Value>) {
        let step = self.r.step_index();
        self.event(step, format!("dry run: {by} would have rolled back here. {reason}"), observed);
        self.r.would_have_rolled_back.push(canarygate_model::rollout::WouldHave {
            at: self.now,
            by,
            reason,
            step,
            weight: self.r.weight,
        });
    }

    /// `minCanaryRequests`: a step ends only once the canary has served that many judged requests in
    /// it (not for a dry-run analysis). Says so (once) while it waits.
    fn enough_canary_traffic(&mut self, step: usize) -> bool {
        let need = self.r.analysis.as_ref().filter(|a| !a.dry_run).map_or(0, |a| a.min_canary_requests);
        let have = self.r.analysis_state.as_ref().map_or(0, |a| a.step_canary_requests);
        if have >= need {
            return true;
        }
        let why = format!("waiting for traffic: the canary has served {have} of the {need} requests the step needs");
        if self.r.waiting_for.is_none() {
            self.event(
                Some(step),
                why.clone(),
                Some(json!({"canaryRequests": have, "minCanaryRequests": need})),
            );
        }
        self.r.waiting_for = Some(why);
        false
    }

    /// Alarms are watched from the first mirrored or shifted request until the rollout ends.
    fn watching(&self) -> bool {
        self.r.watch_start.is_some()
            && matches!(
                self.r.phase,
                Phase::Mirroring { .. } | Phase::Shifting { .. } | Phase::AfterAllowTraffic { .. }
            )
    }

    /// The canary is ready: mirroring first, if the rollout has a mirroring phase, else the first step.
    fn first_traffic(&mut self, input: &mut Input<'_>) {
        let Some(m) = self.r.mirror.filter(|m| m.seconds > 0) else {
            return self.enter_step(0, input);
        };
        // The stage's own mirroring settings (methods, limits), if it has any, at the phase's share.
        let mut settings = self
            .r
            .previous
            .mirror
            .clone()
            .unwrap_or_else(|| MirrorSettings::with_percent(m.percent));
        settings.percent_traffic = m.percent;
        let methods = settings.methods.join(", ");
        self.with_stage(|st| st.mirror = Some(settings));
        self.r.watch_start = Some(self.now);
        self.r.checkpoint_at = self.now;
        self.r.waiting_for = None;
        self.r.phase = Phase::Mirroring { watched_ms: 0 };
        self.event(
            None,
            format!(
                "mirroring {}% of production requests ({methods}) to the canary for {} s; no client is served by it",
                m.percent, m.seconds
            ),
            None,
        );
        self.notify(EventKind::StepChanged, 0);
    }

    /// Ends the mirroring phase: the stage's own mirroring comes back.
    fn end_mirroring(&mut self, reason: String) {
        let previous = self.r.previous.mirror.clone();
        self.with_stage(|st| st.mirror = previous);
        self.event(None, reason, None);
    }

    fn note_resume(&mut self) {
        let gap = (self.now - self.r.checkpoint_at).num_milliseconds();
        if let Phase::Shifting { step, watched_ms } = self.r.phase {
            // A paused rollout's wait does not run: a controller down meanwhile cost it nothing.
            if gap > 2_000 && self.r.paused.is_none() {
                let reason = format!(
                    "controller resumed after a gap: not running for about {:.1} s since {}; the step's wait counts only watched time ({:.1} s done)",
                    gap as f64 / 1000.0,
                    self.r.checkpoint_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    watched_ms as f64 / 1000.0
                );
                self.event(Some(step), reason, Some(json!({"gapMs": gap, "watchedMs": watched_ms})));
            }
        }
        self.r.checkpoint_at = self.now;
        // A hook call the last controller made may never have been answered: it is made again.
        if let Phase::BeforeAllowTraffic { execution } | Phase::AfterAllowTraffic { execution } = &self.r.phase {
            if execution.status == HookStatus::Pending {
                self.effects.push(Effect::CallHook {
                    rollout_id: self.r.id.clone(),
                    execution: execution.clone(),
                });
            }
        }
    }

    fn start(&mut self, input: &mut Input<'_>) {
        self.r.status = RolloutStatus::InProgress;
        let canary = CanarySettings {
            deployment_id: self.r.deployment_id.clone(),
            percent_traffic: 0.0,
            stage_variable_overrides: self.r.stage_variable_overrides.clone(),
            use_stage_cache: false,
        };
        let salt = (!self.r.salt.is_empty()).then(|| self.r.salt.clone());
        self.with_stage(|s| {
            s.canary_settings = Some(canary);
            // The stage keeps the rollout's salt afterwards (a pinned one stays in its routing).
            if salt.is_some() && s.canary_routing.salt.is_none() {
                s.sticky_salt = salt;
            }
        });
        self.event(
            None,
            format!("rollout started with {}: canary ready at 0%", self.r.deployment_config.name),
            None,
        );
        self.notify(EventKind::RolloutStarted, 0);
        match self.r.hooks.before_allow_traffic.clone() {
            Some(url) => {
                let execution = self.new_hook(LifecycleEvent::BeforeAllowTraffic, url, input);
                self.r.phase = Phase::BeforeAllowTraffic { execution };
            }
            None => self.first_traffic(input),
        }
    }

    fn new_hook(&mut self, event: LifecycleEvent, url: String, input: &mut Input<'_>) -> HookExecution {
        let execution = HookExecution {
            id: (input.new_id)(),
            lifecycle_event: event,
            url,
            status: HookStatus::Pending,
            started_at: self.now,
            deadline: self.now + chrono::Duration::seconds(self.r.hooks.timeout_seconds as i64),
            message: None,
        };
        self.event(None, format!("{event:?} hook {} called", execution.id), None);
        self.effects.push(Effect::CallHook {
            rollout_id: self.r.id.clone(),
            execution: execution.clone(),
        });
        execution
    }

    fn hook_outcome(&self, e: &HookExecution) -> Option<Result<(), String>> {
        match e.status {
            HookStatus::Succeeded => Some(Ok(())),
            HookStatus::Failed => Some(Err(format!("failed: {}", e.message.clone().unwrap_or_default()))),
            HookStatus::Pending | HookStatus::Waiting if self.now > e.deadline => {
                Some(Err(format!("timed out after {} s", self.r.hooks.timeout_seconds)))
            }
            _ => None,
        }
    }

    fn enter_step(&mut self, step: usize, input: &mut Input<'_>) {
        let schedule = self.r.deployment_config.schedule();
        let Some(s) = schedule.get(step).copied() else { return };
        if self.r.watch_start.is_none() {
            self.r.watch_start = Some(self.now);
        }
        self.r.checkpoint_at = self.now;
        self.r.waiting_for = None;
        let warmup = self.r.analysis.as_ref().map_or(0, |a| a.warmup_seconds);
        let now_sec = self.now.timestamp().max(0) as u64;
        if let Some(a) = self.r.analysis_state.as_mut() {
            a.weight_changed(now_sec, warmup);
        }
        if s.weight >= 100.0 {
            // The promotion is a step of its own: events from here on carry its index.
            self.r.phase = Phase::Shifting { step, watched_ms: 0 };
            let (deployment, overrides) = (self.r.deployment_id.clone(), self.r.stage_variable_overrides.clone());
            self.with_stage(|st| {
                st.deployment_id = deployment;
                st.variables.extend(overrides);
                st.canary_settings = None;
            });
            self.r.weight = 100.0;
            self.r.promoted = true;
            self.event(Some(step), "canary at 100%: promoted".into(), None);
            self.notify(EventKind::StepChanged, 0);
            match self.r.hooks.after_allow_traffic.clone() {
                Some(url) => {
                    let execution = self.new_hook(LifecycleEvent::AfterAllowTraffic, url, input);
                    self.r.phase = Phase::AfterAllowTraffic { execution };
                }
                None => self.end(RolloutStatus::Succeeded, false, "rollout succeeded".into(), None),
            }
        } else {
            self.with_stage(|st| {
                if let Some(c) = &mut st.canary_settings {
                    c.percent_traffic = s.weight;
                }
            });
            self.r.weight = s.weight;
            self.r.phase = Phase::Shifting { step, watched_ms: 0 };
            let until = if s.approval {
                "until approved".to_string()
            } else {
                format!("for {} s", s.wait_seconds)
            };
            self.event(Some(step), format!("canary at {}% {until}", s.weight), None);
            self.notify(EventKind::StepChanged, 0);
        }
    }

    fn fail(&mut self, reason: String) {
        let rollback = self.r.rolls_back_on(AutoRollback::DeploymentFailure);
        let status = if rollback {
            RolloutStatus::RolledBack
        } else {
            RolloutStatus::Failed
        };
        let reason = if rollback { format!("{reason}; rolled back") } else { reason };
        self.end(status, rollback, reason, None);
    }

    /// Ends the rollout, rolling back first when asked: before promotion the canary goes; after it the
    /// previous deployment and variables come back.
    fn end(&mut self, status: RolloutStatus, rollback: bool, reason: String, observed: Option<serde_json::Value>) {
        if matches!(self.r.phase, Phase::Mirroring { .. }) {
            let previous = self.r.previous.mirror.clone();
            self.with_stage(|st| st.mirror = previous);
        }
        if rollback {
            let (promoted, previous) = (self.r.promoted, self.r.previous.clone());
            self.with_stage(|st| {
                if promoted {
                    st.deployment_id = previous.deployment_id;
                    st.variables = previous.variables;
                }
                st.canary_settings = previous.canary_settings;
            });
            self.r.weight = 0.0;
        }
        let step = self.r.step_index();
        let observed = observed.or_else(|| {
            let a = self.r.analysis_state.as_ref()?;
            serde_json::to_value(a.evidence(bucket_bounds_us())).ok()
        });
        self.r.waiting_for = None;
        self.r.status = status;
        self.r.phase = Phase::Done;
        self.r.completed_at = Some(self.now);
        self.with_stage(|st| st.active_rollout = None);
        self.event(step, reason, observed);
        if self.alarm_fired {
            self.notify(EventKind::AlarmFired, 0);
        }
        let kind = match status {
            RolloutStatus::RolledBack => EventKind::RolledBack,
            RolloutStatus::Succeeded => EventKind::Succeeded,
            RolloutStatus::Stopped => EventKind::Stopped,
            _ => EventKind::Failed,
        };
        self.notify(kind, 1);
    }

    /// Queues the newest event for the notifications subscribed to `kind` (in the same change).
    fn notify(&mut self, kind: EventKind, sub: u8) {
        let seq = self.r.events.len().saturating_sub(1);
        let evidence = self.r.analysis_state.as_ref().map(|a| a.evidence(bucket_bounds_us()).line());
        if let Some(e) = self.r.events.last() {
            self.state.notify(&self.r, kind, seq, sub, e, evidence);
        }
    }

    fn with_stage(&mut self, f: impl FnOnce(&mut canarygate_model::Stage)) {
        let now = self.now;
        if let Some(st) = self
            .state
            .apis
            .get_mut(&self.r.api)
            .and_then(|a| std::sync::Arc::make_mut(a).stages.get_mut(&self.r.stage))
        {
            f(st);
            st.touch(now);
        }
    }

    fn event(&mut self, step: Option<usize>, reason: String, observed: Option<serde_json::Value>) {
        self.r.events.push(RolloutEvent {
            time: self.now,
            status: self.r.status,
            step,
            weight: self.r.weight,
            reason,
            observed,
        });
    }
}

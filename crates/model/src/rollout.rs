//! Rollouts: a controlled move of a stage to a new deployment and/or variables, step by step, watched
//! by alarms, with lifecycle hooks (CodeDeploy's model). These are the records; the state machine that
//! moves them is the controller's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisRef, AnalysisSpec, AnalysisState};
use crate::deployment_config::DeploymentConfig;
use crate::CanarySettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutStatus {
    Created,
    InProgress,
    Succeeded,
    Failed,
    Stopped,
    RolledBack,
}

impl RolloutStatus {
    pub fn is_active(self) -> bool {
        matches!(self, RolloutStatus::Created | RolloutStatus::InProgress)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStatus::Created => "Created",
            RolloutStatus::InProgress => "InProgress",
            RolloutStatus::Succeeded => "Succeeded",
            RolloutStatus::Failed => "Failed",
            RolloutStatus::Stopped => "Stopped",
            RolloutStatus::RolledBack => "RolledBack",
        }
    }

    pub const ALL: [RolloutStatus; 6] = [
        RolloutStatus::Created,
        RolloutStatus::InProgress,
        RolloutStatus::Succeeded,
        RolloutStatus::Failed,
        RolloutStatus::Stopped,
        RolloutStatus::RolledBack,
    ];
}

/// When a rollout rolls back by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AutoRollback {
    DeploymentFailure,
    DeploymentStopOnAlarm,
    DeploymentStopOnRequest,
}

/// Lifecycle hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_allow_traffic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_allow_traffic: Option<String>,
    /// How long a hook may take, including a 202's callback (default one hour).
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
}

pub fn default_hook_timeout() -> u64 {
    3600
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            before_allow_traffic: None,
            after_allow_traffic: None,
            timeout_seconds: default_hook_timeout(),
        }
    }
}

/// `POST /v1/apis/{api}/stages/{stage}/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutRequest {
    /// The deployment to move to; default: the stage's own (a variables-only rollout).
    #[serde(default)]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub stage_variable_overrides: BTreeMap<String, String>,
    pub deployment_config: String,
    #[serde(default)]
    pub alarms: Vec<String>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Default: all three.
    #[serde(default)]
    pub auto_rollback: Option<Vec<AutoRollback>>,
    /// Canary analysis (§12): judgements of the canary against production, written out or by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRef>,
    /// A mirroring phase before the first shift: copies of `mirrorPercent` of production requests go
    /// to the canary for this long (watched time), judged by the alarms and the paired analysis, before
    /// any client is served by it. 0 or absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_seconds: Option<u64>,
    /// Share of production requests mirrored in the mirroring phase; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<f64>,
}

/// A rollout's mirroring phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPhase {
    pub seconds: u64,
    pub percent: f64,
}

/// The lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleEvent {
    BeforeAllowTraffic,
    AfterAllowTraffic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookStatus {
    /// To be called (again, after a restart).
    Pending,
    /// Answered 202: waiting for the callback.
    Waiting,
    Succeeded,
    Failed,
}

/// One execution of a hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookExecution {
    pub id: String,
    pub lifecycle_event: LifecycleEvent,
    pub url: String,
    pub status: HookStatus,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// Not started yet.
    Created,
    /// Waiting for the BeforeAllowTraffic hook (canary at 0%, reachable with the variant header).
    BeforeAllowTraffic { execution: HookExecution },
    /// Mirroring production requests to the canary (at 0%), `watchedMs` of the phase done.
    #[serde(rename_all = "camelCase")]
    Mirroring { watched_ms: u64 },
    /// At step `step` of the schedule, `watchedMs` of its wait done.
    #[serde(rename_all = "camelCase")]
    Shifting { step: usize, watched_ms: u64 },
    /// Promoted; waiting for the AfterAllowTraffic hook.
    AfterAllowTraffic { execution: HookExecution },
    /// Finished (see the status).
    Done,
}

/// The stage as it was before the rollout, to restore on rollback after promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousStage {
    pub deployment_id: String,
    pub variables: BTreeMap<String, String>,
    pub canary_settings: Option<CanarySettings>,
    /// The stage's own mirroring, put back when the mirroring phase ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<crate::stage::MirrorSettings>,
}

/// A moment a dry-run judgement would have rolled the rollout back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WouldHave {
    pub at: DateTime<Utc>,
    /// `alarm <name>` or `analysis (<judgement>)`.
    pub by: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub weight: f64,
}

/// Who paused a rollout, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// One entry of a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvent {
    pub time: DateTime<Utc>,
    pub status: RolloutStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    pub weight: f64,
    pub reason: String,
    /// Observed values behind the decision (alarm datapoints and threshold, hook reply, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<serde_json::Value>,
}

/// A rollout record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub id: String,
    pub api: String,
    pub stage: String,
    pub deployment_id: String,
    pub stage_variable_overrides: BTreeMap<String, String>,
    pub deployment_config: DeploymentConfig,
    pub alarms: Vec<String>,
    pub hooks: Hooks,
    pub auto_rollback: Vec<AutoRollback>,
    /// The sticky hash's salt while this rollout runs: its own (its id), or the stage's pinned
    /// `canaryRouting.salt`. Within the rollout a key on the canary stays on it as the weight grows.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// The CodeDeploy application and deployment group, for a rollout made by CodeDeploy's
    /// `CreateDeployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codedeploy: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorPhase>,
    /// The analysis's judgements so far (they survive a restart with the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_state: Option<AnalysisState>,
    /// Why the current step has not ended yet, when it waits for something other than time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub status: RolloutStatus,
    pub phase: Phase,
    /// The canary weight now (100 once promoted, 0 after a rollback).
    pub weight: f64,
    pub previous: PreviousStage,
    pub promoted: bool,
    /// When traffic first moved: alarms count periods from here on.
    pub watch_start: Option<DateTime<Utc>>,
    /// The last time the controller recorded progress (a gap after it shows a restart).
    pub checkpoint_at: DateTime<Utc>,
    /// A stop asked for through the API, carried out by the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested: Option<bool>,
    #[serde(default)]
    pub promote_requested: bool,
    /// An approval of the current approval step, by this caller, carried out by the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Paused by an operator: the weight holds and the step's watched time stops; alarms and the
    /// analysis keep watching and still roll back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    /// When dry-run alarms and a dry-run analysis would have rolled this rollout back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_have_rolled_back: Vec<WouldHave>,
    /// The dry-run alarms in ALARM now (a moment is noted when one enters it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run_firing: Vec<String>,
    /// "End the current wait now", by this caller, carried out by the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_requested_by: Option<String>,
    pub events: Vec<RolloutEvent>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

impl Rollout {
    pub fn step_index(&self) -> Option<usize> {
        match self.phase {
            Phase::Shifting { step, .. } => Some(step),
            _ => None,
        }
    }

    pub fn rolls_back_on(&self, why: AutoRollback) -> bool {
        self.auto_rollback.contains(&why)
    }
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

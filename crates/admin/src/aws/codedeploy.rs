//! CodeDeploy's operations over canarygate's rollouts: a CodeDeploy deployment is a rollout of the stage
//! its AppSpec names (`Properties.Name` the API, `Alias` the stage, `CurrentVersion` and
//! `TargetVersion` deployment ids), rolled out by its deployment group's configuration, stopped by the
//! group's alarms, rolled back as the group says; its deployment id is the rollout's id. Applications
//! and deployment groups are kept in the store beside the rest. A hook function's name (an AppSpec's
//! `Hooks`) is called at the URL its deployment group maps it to (a tag `canarygate:hook:{name}`).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use canarygate_model::codedeploy::{Application, DeploymentGroup, Origin};
use canarygate_model::deployment_config::{ConfigType, DeploymentConfig};
use canarygate_model::rollout::{AutoRollback, HookStatus, Hooks, Phase, Rollout, RolloutRequest, RolloutStatus};
use chrono::Utc;
use serde_json::{json, Value};

use super::error::{bounded, AwsError};
use super::rpc::timestamp;
use super::{Call, Protocol};

type Result<T> = std::result::Result<T, AwsError>;

/// The tag prefix that maps a hook function name to a URL on a deployment group.
pub const HOOK_TAG: &str = "canarygate:hook:";
const PREDEFINED_PREFIX: &str = "CodeDeployDefault.Lambda";

fn err(code: &'static str, message: impl Into<String>) -> AwsError {
    AwsError::new(StatusCode::BAD_REQUEST, code, message)
}

fn s<'a>(input: &'a Value, field: &str) -> Option<&'a str> {
    input.get(field).and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn need<'a>(input: &'a Value, field: &str, code: &'static str) -> Result<&'a str> {
    s(input, field).ok_or_else(|| err(code, format!("{field} is required")))
}

fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let tail: String = (0..12).map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char).collect();
    format!("{prefix}{tail}")
}

fn store_error(e: canarygate_store::StoreError) -> AwsError {
    let e = AwsError::from_store(e);
    match e.code {
        "ConflictException" => err("DeploymentLimitExceededException", e.message),
        "BadRequestException" => err("InvalidInputException", e.message),
        _ => e,
    }
}

/// Answers one CodeDeploy operation.
pub(crate) async fn handle(call: &Call<'_>, protocol: Protocol, operation: &str, input: Value) -> Result<Value> {
    let write = |action: &str| call.need_write(protocol, &format!("codedeploy:{action}"), "arn:aws:codedeploy:*");
    match operation {
        "ListApplications" => Ok(json!({"applications": call.state.store.current().applications.keys().collect::<Vec<_>>()})),
        "GetApplication" => {
            let st = call.state.store.current();
            let a = application(&st, need(&input, "applicationName", "ApplicationNameRequiredException")?)?;
            Ok(
                json!({"application": {"applicationId": a.id, "applicationName": a.name, "createTime": timestamp(a.created_at),
                "linkedToGitHub": false, "computePlatform": a.compute_platform}}),
            )
        }
        "CreateApplication" => {
            write("CreateApplication")?;
            create_application(call, &input).await
        }
        "ListDeploymentConfigs" => {
            let st = call.state.store.current();
            let mut names: Vec<String> = DeploymentConfig::predefined()
                .iter()
                .map(|c| format!("{PREDEFINED_PREFIX}{}", c.name))
                .collect();
            names.extend(st.deployment_configs.keys().cloned());
            Ok(json!({ "deploymentConfigsList": names }))
        }
        "GetDeploymentConfig" => {
            let name = need(&input, "deploymentConfigName", "DeploymentConfigNameRequiredException")?;
            let c = call.state.store.current().deployment_config(name).ok_or_else(|| {
                err(
                    "DeploymentConfigDoesNotExistException",
                    format!("No deployment configuration found for name: {}", bounded(name, 100)),
                )
            })?;
            Ok(json!({ "deploymentConfigInfo": config_info(name, &c) }))
        }
        "CreateDeploymentConfig" => {
            write("CreateDeploymentConfig")?;
            create_deployment_config(call, &input).await
        }
        "ListDeploymentGroups" => {
            let st = call.state.store.current();
            let a = application(&st, need(&input, "applicationName", "ApplicationNameRequiredException")?)?;
            Ok(json!({"applicationName": a.name, "deploymentGroups": a.groups.keys().collect::<Vec<_>>()}))
        }
        "GetDeploymentGroup" => {
            let st = call.state.store.current();
            let a = application(&st, need(&input, "applicationName", "ApplicationNameRequiredException")?)?;
            let g = group(a, need(&input, "deploymentGroupName", "DeploymentGroupNameRequiredException")?)?;
            Ok(json!({ "deploymentGroupInfo": group_info(a, g) }))
        }
        "CreateDeploymentGroup" | "UpdateDeploymentGroup" => {
            write(operation)?;
            put_deployment_group(call, operation == "CreateDeploymentGroup", &input).await
        }
        "CreateDeployment" => {
            write("CreateDeployment")?;
            create_deployment(call, &input).await
        }
        "GetDeployment" => {
            let st = call.state.store.current();
            let id = need(&input, "deploymentId", "DeploymentIdRequiredException")?;
            Ok(json!({ "deploymentInfo": deployment_info(deployment(&st, id)?) }))
        }
        "BatchGetDeployments" => {
            let st = call.state.store.current();
            let ids: Vec<&str> = input
                .get("deploymentIds")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if ids.len() > 25 {
                return Err(err(
                    "BatchLimitExceededException",
                    "The maximum number of deployment IDs (25) was exceeded.",
                ));
            }
            let infos: Vec<Value> = ids.iter().filter_map(|id| deployment(&st, id).ok()).map(deployment_info).collect();
            Ok(json!({ "deploymentsInfo": infos }))
        }
        "ListDeployments" => list_deployments(call, &input),
        "StopDeployment" => {
            write("StopDeployment")?;
            let id = need(&input, "deploymentId", "DeploymentIdRequiredException")?.to_string();
            deployment(&call.state.store.current(), &id)?;
            let rollback = input.get("autoRollbackEnabled").and_then(Value::as_bool).unwrap_or(true);
            call.state
                .store
                .mutate(move |st| st.request_stop(&id, rollback, Utc::now()))
                .await
                .map_err(|e| match store_error(e) {
                    e if e.code == "DeploymentLimitExceededException" => err("DeploymentAlreadyCompletedException", e.message),
                    e => e,
                })?;
            Ok(json!({"status": "Pending", "statusMessage": "Stopping the deployment"}))
        }
        "ContinueDeployment" => {
            write("ContinueDeployment")?;
            let id = need(&input, "deploymentId", "DeploymentIdRequiredException")?.to_string();
            deployment(&call.state.store.current(), &id)?;
            let by = call.caller.name.clone();
            call.state
                .store
                .mutate(move |st| st.approve_rollout(&id, &by, Utc::now()))
                .await
                .map_err(|e| err("DeploymentIsNotInReadyStateException", AwsError::from_store(e).message))?;
            Ok(json!({}))
        }
        "PutLifecycleEventHookExecutionStatus" => {
            write("PutLifecycleEventHookExecutionStatus")?;
            let id = need(&input, "deploymentId", "DeploymentIdRequiredException")?.to_string();
            let exec = need(&input, "lifecycleEventHookExecutionId", "LifecycleEventAlreadyCompletedException")?.to_string();
            let status = match s(&input, "status") {
                Some("Succeeded") => HookStatus::Succeeded,
                Some("Failed") => HookStatus::Failed,
                other => {
                    return Err(err(
                        "InvalidLifecycleEventHookExecutionStatusException",
                        format!(
                            "status must be Succeeded or Failed, not {}",
                            bounded(other.unwrap_or("nothing"), 40)
                        ),
                    ))
                }
            };
            deployment(&call.state.store.current(), &id)?;
            let (exec2, by) = (exec.clone(), call.caller.name.clone());
            call.state
                .store
                .mutate(move |st| st.record_hook(&id, &exec2, status, Some(format!("reported by {by} through CodeDeploy"))))
                .await
                .map_err(|e| err("LifecycleEventAlreadyCompletedException", AwsError::from_store(e).message))?;
            Ok(json!({ "lifecycleEventHookExecutionId": exec }))
        }
        other => Err(AwsError::unknown_operation(protocol, other)),
    }
}

fn application<'a>(st: &'a canarygate_model::State, name: &str) -> Result<&'a Application> {
    st.applications.get(name).ok_or_else(|| {
        err(
            "ApplicationDoesNotExistException",
            format!("No application found for name: {}", bounded(name, 100)),
        )
    })
}

fn group<'a>(a: &'a Application, name: &str) -> Result<&'a DeploymentGroup> {
    a.groups.get(name).ok_or_else(|| {
        err(
            "DeploymentGroupDoesNotExistException",
            format!("No Deployment Group found for name: {}", bounded(name, 100)),
        )
    })
}

fn deployment<'a>(st: &'a canarygate_model::State, id: &str) -> Result<&'a Rollout> {
    st.rollouts.get(id).filter(|r| r.codedeploy.is_some()).ok_or_else(|| {
        err(
            "DeploymentDoesNotExistException",
            format!("Deployment {} does not exist", bounded(id, 100)),
        )
    })
}

async fn create_application(call: &Call<'_>, input: &Value) -> Result<Value> {
    let name = need(input, "applicationName", "ApplicationNameRequiredException")?.to_string();
    let platform = s(input, "computePlatform").unwrap_or("Lambda").to_string();
    if platform != "Lambda" {
        return Err(err(
            "InvalidComputePlatformException",
            format!(
                "canarygate deploys the Lambda compute platform's way (traffic shifting), not {}",
                bounded(&platform, 40)
            ),
        ));
    }
    let app = Application {
        name: name.clone(),
        id: new_id("app-"),
        compute_platform: platform,
        created_at: Utc::now(),
        groups: BTreeMap::new(),
    };
    let id = app.id.clone();
    call.state
        .store
        .mutate(move |st| st.create_application(app))
        .await
        .map_err(|e| match AwsError::from_store(e) {
            e if e.status == StatusCode::CONFLICT => err(
                "ApplicationAlreadyExistsException",
                format!("Application {} already exists", bounded(&name, 100)),
            ),
            e => err("InvalidApplicationNameException", e.message),
        })?;
    Ok(json!({ "applicationId": id }))
}

/// A configuration as CodeDeploy describes it.
fn config_info(asked: &str, c: &DeploymentConfig) -> Value {
    let minutes = (c.interval_seconds / 60).max(1);
    let routing = match c.kind {
        ConfigType::TimeBasedCanary => {
            json!({"type": "TimeBasedCanary", "timeBasedCanary": {"canaryPercentage": c.percentage as i64, "canaryInterval": minutes}})
        }
        ConfigType::TimeBasedLinear => {
            json!({"type": "TimeBasedLinear", "timeBasedLinear": {"linearPercentage": c.percentage as i64, "linearInterval": minutes}})
        }
        _ => json!({"type": "AllAtOnce"}),
    };
    let name = if c.predefined {
        format!("{PREDEFINED_PREFIX}{}", c.name)
    } else {
        asked.to_string()
    };
    json!({"deploymentConfigId": format!("cfg-{}", c.name), "deploymentConfigName": name, "computePlatform": "Lambda",
        "createTime": timestamp(chrono::DateTime::UNIX_EPOCH), "trafficRoutingConfig": routing})
}

fn whole(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn create_deployment_config(call: &Call<'_>, input: &Value) -> Result<Value> {
    let name = need(input, "deploymentConfigName", "DeploymentConfigNameRequiredException")?.to_string();
    if s(input, "computePlatform").is_some_and(|p| p != "Lambda") {
        return Err(err(
            "InvalidComputePlatformException",
            "canarygate's deployment configurations are Lambda's (traffic shifting)",
        ));
    }
    let routing = input
        .get("trafficRoutingConfig")
        .ok_or_else(|| err("InvalidDeploymentConfigNameException", "trafficRoutingConfig is required"))?;
    let (kind, percentage, minutes) = match s(routing, "type") {
        Some("TimeBasedCanary") => {
            let c = routing.get("timeBasedCanary").unwrap_or(&Value::Null);
            (
                ConfigType::TimeBasedCanary,
                whole(c.get("canaryPercentage")),
                whole(c.get("canaryInterval")),
            )
        }
        Some("TimeBasedLinear") => {
            let c = routing.get("timeBasedLinear").unwrap_or(&Value::Null);
            (
                ConfigType::TimeBasedLinear,
                whole(c.get("linearPercentage")),
                whole(c.get("linearInterval")),
            )
        }
        Some("AllAtOnce") => (ConfigType::AllAtOnce, Some(0), Some(0)),
        other => {
            return Err(err(
                "InvalidTrafficRoutingConfigurationException",
                format!(
                    "trafficRoutingConfig.type must be TimeBasedCanary, TimeBasedLinear or AllAtOnce, not {}",
                    bounded(other.unwrap_or("nothing"), 40)
                ),
            ))
        }
    };
    let (Some(percentage), Some(minutes)) = (percentage, minutes) else {
        return Err(err(
            "InvalidTrafficRoutingConfigurationException",
            "the percentage and the interval (minutes) are required",
        ));
    };
    let config = DeploymentConfig {
        name: name.clone(),
        kind,
        percentage: percentage as f64,
        interval_seconds: minutes * 60,
        steps: Vec::new(),
        predefined: false,
    };
    let taken = name.clone();
    call.state
        .store
        .mutate(move |st| {
            if st.deployment_config(&name).is_some() {
                return Ok(Err(err(
                    "DeploymentConfigAlreadyExistsException",
                    format!("A deployment configuration named {} already exists", bounded(&taken, 100)),
                )));
            }
            st.put_deployment_config(&name, config).map(|_| Ok(()))
        })
        .await
        .map_err(|e| err("InvalidTrafficRoutingConfigurationException", AwsError::from_store(e).message))??;
    Ok(json!({ "deploymentConfigId": format!("cfg-{}", s(input, "deploymentConfigName").unwrap_or_default()) }))
}

fn rollback_events(v: &Value) -> Result<Vec<AutoRollback>> {
    let mut out = Vec::new();
    for e in v.get("events").and_then(Value::as_array).into_iter().flatten() {
        out.push(match e.as_str() {
            Some("DEPLOYMENT_FAILURE") => AutoRollback::DeploymentFailure,
            Some("DEPLOYMENT_STOP_ON_ALARM") => AutoRollback::DeploymentStopOnAlarm,
            Some("DEPLOYMENT_STOP_ON_REQUEST") => AutoRollback::DeploymentStopOnRequest,
            _ => {
                return Err(err(
                    "InvalidAutoRollbackConfigException",
                    format!("unknown auto rollback event {e}"),
                ))
            }
        });
    }
    Ok(out)
}

fn event_name(e: AutoRollback) -> &'static str {
    match e {
        AutoRollback::DeploymentFailure => "DEPLOYMENT_FAILURE",
        AutoRollback::DeploymentStopOnAlarm => "DEPLOYMENT_STOP_ON_ALARM",
        AutoRollback::DeploymentStopOnRequest => "DEPLOYMENT_STOP_ON_REQUEST",
    }
}

fn group_info(a: &Application, g: &DeploymentGroup) -> Value {
    json!({
        "applicationName": a.name,
        "deploymentGroupId": g.id,
        "deploymentGroupName": g.name,
        "deploymentConfigName": g.deployment_config_name,
        "serviceRoleArn": g.service_role_arn,
        "alarmConfiguration": {"enabled": g.alarms_enabled, "ignorePollAlarmFailure": g.ignore_poll_alarm_failure,
            "alarms": g.alarms.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()},
        "autoRollbackConfiguration": {"enabled": g.auto_rollback_enabled,
            "events": g.auto_rollback_events.iter().map(|e| event_name(*e)).collect::<Vec<_>>()},
        "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        "computePlatform": a.compute_platform,
    })
}

async fn put_deployment_group(call: &Call<'_>, create: bool, input: &Value) -> Result<Value> {
    let app = need(input, "applicationName", "ApplicationNameRequiredException")?.to_string();
    let name_field = if create {
        "deploymentGroupName"
    } else {
        "currentDeploymentGroupName"
    };
    let name = need(input, name_field, "DeploymentGroupNameRequiredException")?.to_string();
    let st = call.state.store.current();
    let a = application(&st, &app)?;
    let mut g = match (a.groups.get(&name), create) {
        (Some(_), true) => {
            return Err(err(
                "DeploymentGroupAlreadyExistsException",
                format!(
                    "Deployment Group {} already exists for application {}",
                    bounded(&name, 100),
                    bounded(&app, 100)
                ),
            ))
        }
        (None, false) => return Err(group(a, &name).unwrap_err()),
        (Some(g), false) => g.clone(),
        (None, true) => DeploymentGroup {
            name: name.clone(),
            id: new_id("dg-"),
            deployment_config_name: format!("{PREDEFINED_PREFIX}AllAtOnce"),
            service_role_arn: None,
            alarms: Vec::new(),
            alarms_enabled: false,
            ignore_poll_alarm_failure: false,
            auto_rollback_enabled: false,
            auto_rollback_events: Vec::new(),
            hooks: BTreeMap::new(),
            created_at: Utc::now(),
        },
    };
    drop(st);
    if let Some(c) = s(input, "deploymentConfigName") {
        g.deployment_config_name = c.to_string();
    }
    if let Some(r) = s(input, "serviceRoleArn") {
        g.service_role_arn = Some(r.to_string());
    }
    if let Some(ac) = input.get("alarmConfiguration").filter(|v| !v.is_null()) {
        g.alarms_enabled = ac.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        g.ignore_poll_alarm_failure = ac.get("ignorePollAlarmFailure").and_then(Value::as_bool).unwrap_or(false);
        g.alarms = ac
            .get("alarms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
    }
    if let Some(rc) = input.get("autoRollbackConfiguration").filter(|v| !v.is_null()) {
        g.auto_rollback_enabled = rc.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        g.auto_rollback_events = rollback_events(rc)?;
    }
    for tag in input.get("tags").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(v)) = (s(tag, "Key"), s(tag, "Value")) {
            if let Some(function) = k.strip_prefix(HOOK_TAG) {
                g.hooks.insert(function.to_string(), v.to_string());
            }
        }
    }
    if !create {
        if let Some(new) = s(input, "newDeploymentGroupName") {
            if new != name {
                return Err(err(
                    "InvalidDeploymentGroupNameException",
                    "canarygate does not rename deployment groups",
                ));
            }
        }
    }
    let id = g.id.clone();
    call.state
        .store
        .mutate(move |st| st.put_deployment_group(&app, g))
        .await
        .map_err(|e| {
            let e = AwsError::from_store(e);
            if e.message.contains("alarm") {
                err("InvalidAlarmConfigException", e.message)
            } else if e.message.contains("deploymentConfigName") {
                err("DeploymentConfigDoesNotExistException", e.message)
            } else {
                err("InvalidInputException", e.message)
            }
        })?;
    Ok(if create {
        json!({ "deploymentGroupId": id })
    } else {
        json!({ "hooksNotCleanedUp": [] })
    })
}

/// The one resource of a Lambda-style AppSpec, and its hooks' function names.
#[derive(Debug, PartialEq)]
pub struct AppSpec {
    pub api: String,
    pub stage: String,
    pub current: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// Reads an AppSpec (YAML or JSON).
pub fn parse_appspec(content: &str) -> Result<AppSpec> {
    let invalid = |m: String| err("InvalidRevisionException", format!("The AppSpec is not valid: {m}"));
    if content.len() > 64 * 1024 {
        return Err(invalid("it is longer than 64 KiB".into()));
    }
    let doc: Value = serde_norway::from_str(content).map_err(|e| invalid(e.to_string()))?;
    let resources = doc
        .get("Resources")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("Resources must be a list with one resource".into()))?;
    let [resource] = resources.as_slice() else {
        return Err(invalid(format!(
            "Resources must hold one resource (the stage), not {}",
            resources.len()
        )));
    };
    let props = resource
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|r| r.get("Properties"))
        .ok_or_else(|| invalid("the resource needs Properties".into()))?;
    let field = |k: &str| -> Result<String> {
        match props.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(invalid(format!("Properties.{k} is required"))),
        }
    };
    let mut hooks = BTreeMap::new();
    for h in doc.get("Hooks").and_then(Value::as_array).into_iter().flatten() {
        for (k, v) in h.as_object().into_iter().flatten() {
            let f = v.as_str().ok_or_else(|| invalid(format!("Hooks.{k} must name a function")))?;
            match k.as_str() {
                "BeforeAllowTraffic" | "AfterAllowTraffic" => hooks.insert(k.clone(), f.to_string()),
                other => {
                    return Err(invalid(format!(
                        "{other} is not a hook of this compute platform (BeforeAllowTraffic, AfterAllowTraffic)"
                    )))
                }
            };
        }
    }
    Ok(AppSpec {
        api: field("Name")?,
        stage: field("Alias")?,
        current: field("CurrentVersion")?,
        target: field("TargetVersion")?,
        before: hooks.remove("BeforeAllowTraffic"),
        after: hooks.remove("AfterAllowTraffic"),
    })
}

async fn create_deployment(call: &Call<'_>, input: &Value) -> Result<Value> {
    let app_name = need(input, "applicationName", "ApplicationNameRequiredException")?.to_string();
    let group_name = need(input, "deploymentGroupName", "DeploymentGroupNameRequiredException")?.to_string();
    let revision = input
        .get("revision")
        .ok_or_else(|| err("RevisionRequiredException", "revision is required"))?;
    let content = match s(revision, "revisionType") {
        Some("AppSpecContent") => revision.get("appSpecContent").and_then(|c| s(c, "content")),
        Some("String") => revision.get("string").and_then(|c| s(c, "content")),
        other => {
            return Err(err(
                "InvalidRevisionException",
                format!(
                    "revisionType must be AppSpecContent or String, not {}",
                    bounded(other.unwrap_or("nothing"), 40)
                ),
            ))
        }
    }
    .ok_or_else(|| err("InvalidRevisionException", "the revision has no content"))?;
    let spec = parse_appspec(content)?;
    let st = call.state.store.current();
    let g = group(application(&st, &app_name)?, &group_name)?.clone();
    let stage = st.stage(&spec.api, &spec.stage).map_err(|_| {
        err(
            "InvalidRevisionException",
            format!(
                "The AppSpec names {}/{}: no such API stage",
                bounded(&spec.api, 64),
                bounded(&spec.stage, 128)
            ),
        )
    })?;
    if stage.deployment_id != spec.current {
        return Err(err(
            "InvalidRevisionException",
            format!(
                "The AppSpec's CurrentVersion {} is not the stage's deployment {}",
                bounded(&spec.current, 64),
                stage.deployment_id
            ),
        ));
    }
    drop(st);
    let hook_url = |function: &Option<String>| -> Result<Option<String>> {
        match function {
            None => Ok(None),
            Some(f) => g.hooks.get(f).cloned().map(Some).ok_or_else(|| {
                err(
                    "InvalidRevisionException",
                    format!(
                        "The hook function {} has no URL on deployment group {}: tag the group {HOOK_TAG}{} = URL",
                        bounded(f, 64),
                        g.name,
                        bounded(f, 64)
                    ),
                )
            }),
        }
    };
    let hooks = Hooks {
        before_allow_traffic: hook_url(&spec.before)?,
        after_allow_traffic: hook_url(&spec.after)?,
        ..Hooks::default()
    };
    let mut rollback_enabled = g.auto_rollback_enabled;
    let mut events = g.auto_rollback_events.clone();
    if let Some(rc) = input.get("autoRollbackConfiguration").filter(|v| !v.is_null()) {
        rollback_enabled = rc.get("enabled").and_then(Value::as_bool).unwrap_or(false);
        events = rollback_events(rc)?;
    }
    let config = s(input, "deploymentConfigName").unwrap_or(&g.deployment_config_name).to_string();
    let req = RolloutRequest {
        deployment_id: Some(spec.target.clone()),
        stage_variable_overrides: BTreeMap::new(),
        deployment_config: config,
        alarms: if g.alarms_enabled { g.alarms.clone() } else { Vec::new() },
        hooks,
        auto_rollback: Some(if rollback_enabled { events } else { Vec::new() }),
        analysis: None,
        mirror_seconds: None,
        mirror_percent: None,
    };
    let origin = Origin {
        application: app_name,
        deployment_group: group_name.clone(),
        creator: "user".into(),
        description: s(input, "description").map(str::to_string),
    };
    let id = new_id("d-");
    let r = call
        .state
        .store
        .mutate(move |st| {
            let r = st.create_rollout(&spec.api, &spec.stage, req, id, Utc::now())?;
            if let Some(stored) = st.rollouts.get_mut(&r.id) {
                stored.codedeploy = Some(origin);
            }
            Ok(r)
        })
        .await
        .map_err(|e| match AwsError::from_store(e) {
            e if e.status == StatusCode::CONFLICT => err(
                "DeploymentLimitExceededException",
                format!(
                    "The Deployment Group '{}' already has an active Deployment: {}",
                    bounded(&group_name, 100),
                    e.message
                ),
            ),
            e => err("InvalidInputException", e.message),
        })?;
    Ok(json!({ "deploymentId": r.id }))
}

/// CodeDeploy's status of a rollout, and its error when it did not succeed.
fn status(r: &Rollout) -> (&'static str, Option<(&'static str, String)>) {
    let reason = r.events.last().map_or(String::new(), |e| e.reason.clone());
    match r.status {
        RolloutStatus::Created => ("Created", None),
        RolloutStatus::InProgress if r.phase == Phase::Created => ("Queued", None),
        RolloutStatus::InProgress if r.waiting_for.as_deref().is_some_and(|w| w.starts_with("waiting for an approval")) => ("Ready", None),
        RolloutStatus::InProgress => ("InProgress", None),
        RolloutStatus::Succeeded => ("Succeeded", None),
        RolloutStatus::Stopped => ("Stopped", Some(("MANUAL_STOP", reason))),
        RolloutStatus::RolledBack | RolloutStatus::Failed => {
            let lower = reason.to_ascii_lowercase();
            let stopped = if lower.contains("stop") && !lower.contains("alarm") {
                Some("MANUAL_STOP")
            } else {
                None
            };
            let code = if lower.contains("alarm") {
                "ALARM_ACTIVE"
            } else if lower.contains("hook") {
                "HOOK_EXECUTION_FAILURE"
            } else if lower.contains("analysis") {
                "HEALTH_CONSTRAINTS"
            } else {
                stopped.unwrap_or("INTERNAL_ERROR")
            };
            let state = if matches!(code, "ALARM_ACTIVE" | "MANUAL_STOP") {
                "Stopped"
            } else {
                "Failed"
            };
            (state, Some((code, reason)))
        }
    }
}

/// A rollout as CodeDeploy's `deploymentInfo`.
fn deployment_info(r: &Rollout) -> Value {
    let origin = r.codedeploy.clone().expect("a CodeDeploy deployment");
    let (state, error) = status(r);
    let ended = !r.status.is_active();
    let count = |s: &str| i64::from(state == s);
    let mut v = json!({
        "applicationName": origin.application,
        "deploymentGroupName": origin.deployment_group,
        "deploymentConfigName": if r.deployment_config.predefined { format!("{PREDEFINED_PREFIX}{}", r.deployment_config.name) } else { r.deployment_config.name.clone() },
        "deploymentId": r.id,
        "status": state,
        "createTime": timestamp(r.created_at),
        "creator": origin.creator,
        "computePlatform": "Lambda",
        "deploymentStyle": {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
        "autoRollbackConfiguration": {"enabled": !r.auto_rollback.is_empty(),
            "events": r.auto_rollback.iter().map(|e| event_name(*e)).collect::<Vec<_>>()},
        "deploymentOverview": {"Pending": i64::from(state == "Created" || state == "Queued"), "InProgress": count("InProgress"),
            "Succeeded": count("Succeeded"), "Failed": i64::from(state == "Failed" || state == "Stopped"), "Skipped": 0, "Ready": count("Ready")},
        "deploymentStatusMessages": r.events.iter().rev().take(5).map(|e| e.reason.clone()).collect::<Vec<_>>(),
    });
    if let Some(first) = r.events.iter().find(|e| e.status == RolloutStatus::InProgress) {
        v["startTime"] = timestamp(first.time);
    }
    if ended {
        v["completeTime"] = timestamp(r.updated_at);
    }
    if let Some(d) = &origin.description {
        v["description"] = json!(d);
    }
    if let Some((code, message)) = error {
        v["errorInformation"] = json!({"code": code, "message": bounded(&message, 1000)});
    }
    if r.status == RolloutStatus::RolledBack {
        let message = r.events.last().map_or(String::new(), |e| bounded(&e.reason, 1000));
        v["rollbackInfo"] = json!({ "rollbackMessage": format!("Rolled back: the stage serves its previous deployment again. {message}") });
    }
    v
}

fn list_deployments(call: &Call<'_>, input: &Value) -> Result<Value> {
    let app = s(input, "applicationName");
    let group = s(input, "deploymentGroupName");
    if group.is_some() && app.is_none() {
        return Err(err(
            "ApplicationNameRequiredException",
            "applicationName is required with deploymentGroupName",
        ));
    }
    let statuses: Vec<&str> = input
        .get("includeOnlyStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let st = call.state.store.current();
    if let Some(a) = app {
        let a = application(&st, a)?;
        if let Some(g) = group {
            self::group(a, g)?;
        }
    }
    let mut rs: Vec<&Rollout> = st
        .rollouts
        .values()
        .filter(|r| {
            r.codedeploy
                .as_ref()
                .is_some_and(|o| app.is_none_or(|a| o.application == a) && group.is_none_or(|g| o.deployment_group == g))
                && (statuses.is_empty() || statuses.contains(&status(r).0))
        })
        .collect();
    rs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok(json!({ "deployments": rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appspecs_in_yaml_and_json() {
        let yaml = "version: 0.0\nResources:\n  - api:\n      Type: AWS::Lambda::Function\n      Properties:\n        Name: orders\n        Alias: prod\n        CurrentVersion: d-aaaaa\n        TargetVersion: d-bbbbb\nHooks:\n  - BeforeAllowTraffic: CheckBefore\n";
        let a = parse_appspec(yaml).unwrap();
        assert_eq!(
            (a.api.as_str(), a.stage.as_str(), a.current.as_str(), a.target.as_str()),
            ("orders", "prod", "d-aaaaa", "d-bbbbb")
        );
        assert_eq!(a.before.as_deref(), Some("CheckBefore"));
        let json = r#"{"version": 0.0, "Resources": [{"f": {"Type": "AWS::Lambda::Function", "Properties": {"Name": "orders", "Alias": "prod", "CurrentVersion": "1", "TargetVersion": 2}}}]}"#;
        assert_eq!(parse_appspec(json).unwrap().target, "2");
        for bad in [
            "",
            "Resources: []",
            "Resources: [{a: {}}]",
            "Resources: [{a: {Properties: {Name: x}}}]",
            "Resources: [{a: {Properties: {Name: o, Alias: p, CurrentVersion: a, TargetVersion: b}}}]\nHooks: [{BeforeInstall: x}]",
        ] {
            let e = parse_appspec(bad).unwrap_err();
            assert_eq!(e.code, "InvalidRevisionException", "{bad}");
        }
    }
}

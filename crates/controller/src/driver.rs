//! The thin async loop that runs the state machines: every tick it evaluates alarms (once per second),
//! steps every active rollout through the store (one durable transaction per change), and makes the
//! hook calls the steps ask for and the notification deliveries that are due, as tasks it owns
//! (cancelled when it stops). It decides nothing itself: watched time is [`crate::watched`]'s, every
//! step and hook reply the engine's. Time comes only from the injected [`Clock`], so tests drive the
//! loop tick by tick with a fake one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use canarygate_metrics::{MetricsView, Registry};
use canarygate_model::alarm::AlarmState;
use canarygate_model::rollout::{HookExecution, Phase};
use canarygate_store::{Fence, Store};
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::alarms::evaluate_alarm;
use crate::clock::Clock;
use crate::cluster_metrics::{ClusterMetrics, Completeness};
use crate::engine::{hook_status, step, Effect, Input};
use crate::feed::Feed;
use crate::prom::PromSource;
use crate::watched::WatchedTime;
use canarygate_model::alarm::{evaluate, Alarm, Evaluation};
use canarygate_model::rollout::Rollout;
use canarygate_model::{State, Variant};

/// What the loop keeps about one rollout between ticks: its watched time not yet in the record, and
/// the analysis's reading of the metrics.
struct Watch {
    watched: WatchedTime,
    feed: Feed,
    /// The last second the analysis's batches were read at.
    read_at: u64,
}

/// What the loop keeps between ticks. A controller that starts (or takes over) starts from nothing:
/// everything it needs is in the records.
#[derive(Default)]
pub(crate) struct Ticks {
    watches: HashMap<String, Watch>,
    last_alarm_sec: u64,
    /// When the cluster's metrics were last read: (second, at).
    refreshed: Option<(u64, Instant)>,
}

pub struct Controller {
    store: Arc<Store>,
    metrics: Arc<Registry>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    prom: PromSource,
    /// Notification deliveries being attempted now.
    delivering: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Hook calls and notification deliveries under way: aborted when the loop stops.
    tasks: std::sync::Mutex<JoinSet<()>>,
    tick: Duration,
    /// The controller lease, when several replicas share the store: the loop acts only while it holds
    /// the lease, and every write it makes is fenced by it. `None`: the only controller.
    leadership: Option<watch::Receiver<Option<crate::lease::Leadership>>>,
    /// With several replicas: alarms and the analysis read the whole cluster's metrics, not `metrics`.
    cluster: Option<Arc<ClusterMetrics>>,
    /// The admin API's address as users reach it: chat notifications link to the dashboard there.
    public_url: Option<String>,
}

/// The fence of the only controller (a store no other process writes): never checked.
fn sole() -> Fence {
    Fence {
        holder: String::new(),
        epoch: 0,
    }
}

fn hook_id() -> String {
    format!("h-{:016x}", fastrand::u64(..))
}

impl Controller {
    pub fn new(store: Arc<Store>, metrics: Arc<Registry>, clock: Arc<dyn Clock>) -> Controller {
        let http = reqwest::Client::new();
        Controller {
            store,
            metrics,
            clock,
            prom: PromSource::new(http.clone()),
            delivering: Arc::default(),
            tasks: std::sync::Mutex::new(JoinSet::new()),
            http,
            tick: Duration::from_millis(100),
            leadership: None,
            cluster: None,
            public_url: None,
        }
    }

    /// Links chat notifications to the dashboard at `url` (`server.publicUrl`).
    pub fn with_public_url(mut self, url: Option<String>) -> Controller {
        self.public_url = url;
        self
    }

    /// Reads alarms' and the analysis's metrics from the whole cluster.
    pub fn with_cluster_metrics(mut self, cluster: Arc<ClusterMetrics>) -> Controller {
        self.cluster = Some(cluster);
        self
    }

    /// Runs `f` over the metrics alarms and the analysis read.
    fn with_view<T>(&self, f: impl FnOnce(&dyn MetricsView) -> T) -> T {
        match &self.cluster {
            Some(c) => c.read(f),
            None => f(&*self.metrics),
        }
    }

    /// How far the metrics can be read at `now_sec`: this process's up to now; the cluster's as far
    /// as its replicas have published (brought up to date once a second, and every 200 ms while a
    /// replica is late).
    async fn completeness(&self, now_sec: u64, refreshed: &mut Option<(u64, Instant)>) -> Completeness {
        let Some(cluster) = &self.cluster else {
            return Completeness {
                now: now_sec,
                through: now_sec,
                missing: Vec::new(),
            };
        };
        let before = cluster.completeness(now_sec);
        let due = match *refreshed {
            None => true,
            Some((sec, at)) => {
                sec != now_sec
                    || (before.through < now_sec && self.clock.instant().saturating_duration_since(at) >= Duration::from_millis(200))
            }
        };
        if !due {
            return before;
        }
        *refreshed = Some((now_sec, self.clock.instant()));
        let from_sec = now_sec.saturating_sub(self.horizon_secs());
        let c = cluster.clone();
        match tokio::task::spawn_blocking(move || c.refresh(now_sec, from_sec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the cluster's metrics; using what was read before"),
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's metrics"),
        }
        cluster.completeness(now_sec)
    }

    /// How many recent seconds alarms and the analysis read: the longest alarm window (a period of
    /// slack), at least the analysis's re-read window.
    fn horizon_secs(&self) -> u64 {
        let state = self.store.current();
        let alarms = state
            .alarms
            .values()
            .filter(|a| a.alarm.prometheus.is_none())
            .map(|a| (u64::from(a.alarm.evaluation_periods) + 1) * a.alarm.period_seconds);
        alarms
            .max()
            .unwrap_or(0)
            .clamp(crate::feed::REREAD_SECS + 8, canarygate_metrics::RETENTION_SECS)
    }

    /// Runs only while this replica holds the controller lease `leadership` says it holds.
    pub fn with_leadership(mut self, leadership: watch::Receiver<Option<crate::lease::Leadership>>) -> Controller {
        self.leadership = Some(leadership);
        self
    }

    /// The fence to write under now, if this replica is the controller.
    fn fence(&self) -> Option<Fence> {
        match &self.leadership {
            None => Some(sole()),
            Some(rx) => rx
                .borrow()
                .as_ref()
                .filter(|l| self.clock.instant() < l.until)
                .map(|l| l.fence.clone()),
        }
    }

    /// Runs until `shutdown` turns true; then the hook calls and deliveries under way are cancelled
    /// (a hook is called again by the next controller; a delivery is retried).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = Ticks::default();
        let mut every = tokio::time::interval(self.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => break,
            }
            self.tick(&mut ticks).await;
        }
        self.lock_tasks().abort_all();
    }

    /// One tick: alarms once a second, every active rollout stepped, deliveries started.
    pub(crate) async fn tick(&self, ticks: &mut Ticks) {
        while self.lock_tasks().try_join_next().is_some() {}
        let Some(fence) = self.fence() else {
            // Not the controller (now): another replica steps the rollouts. Forget what was being
            // watched, so that taking over later starts from the records.
            ticks.watches.clear();
            return;
        };
        let now = self.clock.now();
        let now_sec = now.timestamp().max(0) as u64;
        let reading = self.completeness(now_sec, &mut ticks.refreshed).await;
        if reading.through > ticks.last_alarm_sec {
            ticks.last_alarm_sec = reading.through;
            self.evaluate_alarms(&fence, now, &reading).await;
        }
        self.step_rollouts(&fence, &mut ticks.watches, now, now_sec, &reading).await;
        self.deliver(&fence, now);
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hook calls and notification deliveries under way.
    pub fn tasks_in_flight(&self) -> usize {
        self.lock_tasks().len()
    }

    /// Waits until the hook calls and deliveries under way (and any they lead to) have ended.
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        loop {
            let mut set = std::mem::take(&mut *self.lock_tasks());
            if set.is_empty() {
                return;
            }
            while let Some(done) = set.join_next().await {
                done.expect("a controller task panicked");
            }
        }
    }

    /// Starts the notification deliveries that are due (the oldest undelivered one per notification
    /// and rollout, once its retry time has come), each in the background.
    fn deliver(&self, fence: &Fence, now: DateTime<Utc>) {
        let state = self.store.current();
        for d in canarygate_model::notification::due(&state.deliveries, now) {
            let Some(n) = state.notifications.get(&d.notification) else {
                continue;
            };
            if !self.delivering.lock().unwrap_or_else(|e| e.into_inner()).insert(d.id.clone()) {
                continue;
            }
            let (store, http, delivering, fence) = (self.store.clone(), self.http.clone(), self.delivering.clone(), fence.clone());
            let (d, url, secret, format) = (d.clone(), n.url.clone(), n.secret.clone(), n.format);
            let body = canarygate_model::notification::render(format, &d.event, self.public_url.as_deref());
            let clock = self.clock.clone();
            self.lock_tasks().spawn(async move {
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let mut req = http
                    .post(&url)
                    .header("content-type", format.content_type())
                    .timeout(Duration::from_secs(10));
                if let Some(key) = secret.as_deref().and_then(canarygate_model::notification::secret_key) {
                    let ts = clock.now().timestamp();
                    req = req
                        .header("webhook-id", &d.id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", crate::notify::signature(&key, &d.id, ts, &body));
                }
                let outcome = match req.body(body).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                    Err(e) => Err(format!("cannot deliver: {e}")),
                };
                if let Err(e) = &outcome {
                    tracing::info!(delivery = %d.id, error = %e, "notification not delivered; will retry");
                }
                let id = d.id.clone();
                let result = store
                    .mutate_fenced(&fence, move |s| {
                        s.record_delivery(&id, outcome, clock.now());
                        Ok(())
                    })
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "delivery outcome not recorded");
                }
                delivering.lock().unwrap_or_else(|e| e.into_inner()).remove(&d.id);
            });
        }
    }

    /// Evaluates every alarm over all its periods; a changed state is stored (with its history).
    async fn evaluate_alarms(&self, fence: &Fence, now: DateTime<Utc>, reading: &Completeness) {
        let state = self.store.current();
        let changes = self.with_view(|view| {
            let mut changes = Vec::new();
            for (name, entry) in &state.alarms {
                if entry.status.held(now) {
                    continue;
                }
                let e = self.evaluate(view, reading, &entry.alarm, &state, None, None, entry.status.state);
                // A change of state is stored with its history; without data, so is a new reason for it
                // (e.g. why a Prometheus query gave nothing), without a history entry.
                let new_reason = e.state == AlarmState::InsufficientData && e.reason != entry.status.reason;
                if e.state != entry.status.state || new_reason {
                    changes.push((name.clone(), e));
                }
            }
            changes
        });
        if changes.is_empty() {
            return;
        }
        let result = self
            .store
            .mutate_fenced(fence, move |s| {
                for (name, e) in changes {
                    s.record_alarm(&name, e, now);
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot store alarm states");
        }
    }

    async fn step_rollouts(
        &self,
        fence: &Fence,
        watches: &mut HashMap<String, Watch>,
        now: DateTime<Utc>,
        now_sec: u64,
        reading: &Completeness,
    ) {
        let state = self.store.current();
        let active: Vec<_> = state.rollouts.values().filter(|r| r.status.is_active()).cloned().collect();
        watches.retain(|id, _| active.iter().any(|r| &r.id == id));
        for r in active {
            let w = watches.entry(r.id.clone()).or_insert_with(|| Watch {
                watched: WatchedTime::default(),
                // After a restart, the seconds already judged are not read again.
                feed: Feed::new(r.analysis_state.as_ref().and_then(|a| a.last_second).map_or(0, |s| s + 1)),
                read_at: 0,
            });
            let observed = w.watched.observe(&r, self.clock.instant());

            let mut batches = Vec::new();
            let mut pairs = Vec::new();
            let since = r.watch_start.map(|s| s.timestamp().max(0) as u64);
            let alarms: Vec<_> = self.with_view(|view| {
                if r.analysis_state.is_some() {
                    let weight = state
                        .apis
                        .get(&r.api)
                        .and_then(|a| a.stages.get(&r.stage))
                        .and_then(|s| s.canary_settings.as_ref())
                        .map_or(0.0, |c| c.percent_traffic);
                    w.feed.note_weight(now_sec, weight);
                    // Seconds are read once complete (with several replicas: once every replica has
                    // published them, or the grace time has passed).
                    let through = reading.through;
                    if through > w.read_at && matches!(r.phase, Phase::Shifting { .. } | Phase::Mirroring { .. }) {
                        w.read_at = through;
                        batches = w.feed.batches(view, &r.api, &r.stage, through);
                        pairs = w.feed.pairs(view, &r.api, &r.stage, through);
                    }
                }
                r.alarms
                    .iter()
                    .filter_map(|name| {
                        let entry = state.alarms.get(name)?;
                        if entry.status.held(now) {
                            return Some((name.clone(), entry.status.as_evaluation()));
                        }
                        Some((
                            name.clone(),
                            self.evaluate(view, reading, &entry.alarm, &state, Some(&r), since, AlarmState::InsufficientData),
                        ))
                    })
                    .collect()
            });
            let id = r.id.clone();
            let stepped = id.clone();
            let take_step = move |s: &mut State| {
                let mut new_id = hook_id;
                let mut input = Input {
                    now,
                    watched_ms: observed.watched_ms,
                    alarms: &alarms,
                    batches: &batches,
                    pairs: &pairs,
                    resumed: observed.resumed,
                    new_id: &mut new_id,
                };
                step(s, &stepped, &mut input)
            };
            // Most ticks change nothing: the step is tried on the current state first, and stored
            // (in one transaction, on the latest stored state) only when it changes something.
            let mut trial = State::clone(&state);
            if take_step.clone()(&mut trial).is_empty() && canarygate_store::diff(&state, &trial).is_ok_and(|c| c.is_empty()) {
                continue;
            }
            let result = self.store.mutate_fenced(fence, move |s| Ok(take_step(s))).await;
            match result {
                Ok(effects) => {
                    for Effect::CallHook { rollout_id, execution } in effects {
                        self.call_hook(fence, rollout_id, execution);
                    }
                }
                Err(e) => tracing::error!(rollout = %id, error = %e, "cannot store the rollout's step"),
            }
        }
    }

    /// Evaluates an alarm: over the gateway's metrics, or over its Prometheus query's datapoints. A
    /// Prometheus alarm's placeholders take the watching rollout's api and stage (else the alarm's own),
    /// and the variant's stage variables (the canary's with the rollout's overrides).
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        view: &dyn MetricsView,
        reading: &Completeness,
        alarm: &Alarm,
        state: &State,
        rollout: Option<&Rollout>,
        since: Option<u64>,
        current: AlarmState,
    ) -> Evaluation {
        let Some(q) = &alarm.prometheus else {
            // The gateway's metrics: as far as they are complete.
            let mut e = evaluate_alarm(alarm, view, reading.through, since, current);
            if !reading.missing.is_empty() {
                e.reason = format!(
                    "{} Evaluated without replica {}: it had not published its metrics {}s after the period ended.",
                    e.reason,
                    reading.missing.join(", "),
                    crate::cluster_metrics::GRACE_SECS
                );
            }
            return e;
        };
        let (api, stage) = rollout.map_or((alarm.api.as_str(), alarm.stage.as_str()), |r| (r.api.as_str(), r.stage.as_str()));
        let st = state.apis.get(api).and_then(|a| a.stages.get(stage));
        let mut vars = st.map(|s| s.variables.clone()).unwrap_or_default();
        // A mirrored copy runs as the canary does: with its variables.
        if alarm.variant != Variant::Production {
            let overrides = match rollout {
                Some(r) => Some(&r.stage_variable_overrides),
                None => st.and_then(|s| s.canary_settings.as_ref()).map(|c| &c.stage_variable_overrides),
            };
            vars.extend(overrides.into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        }
        let rendered = q.render(api, stage, alarm.variant, &vars);
        let (points, why) = self.prom.datapoints(alarm, q, &rendered, reading.now, since);
        let mut e = evaluate(alarm, &points, current);
        if let Some(why) = why {
            e.reason = format!("{} Prometheus: {why}", e.reason);
        }
        e
    }

    /// Calls a hook in the background and records its reply as the engine maps it.
    fn call_hook(&self, fence: &Fence, rollout_id: String, execution: HookExecution) {
        let (store, http, fence) = (self.store.clone(), self.http.clone(), fence.clone());
        let timeout = (execution.deadline - self.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(1));
        self.lock_tasks().spawn(async move {
            let body = serde_json::json!({
                "rolloutId": rollout_id,
                "lifecycleEventHookExecutionId": execution.id,
                "lifecycleEvent": execution.lifecycle_event,
                // As CodeDeploy invokes a Lambda hook: the deployment (the rollout) and the execution.
                "DeploymentId": rollout_id,
                "LifecycleEventHookExecutionId": execution.id,
            });
            let reply = match http.post(&execution.url).json(&body).timeout(timeout).send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    let text = if r.status().is_success() {
                        String::new()
                    } else {
                        r.text().await.unwrap_or_default()
                    };
                    Ok((code, text))
                }
                Err(e) => Err(e.to_string()),
            };
            let (status, message) = hook_status(&reply);
            let message = Some(message);
            tracing::info!(rollout = %rollout_id, hook = %execution.id, ?status, "hook replied");
            let id = execution.id.clone();
            if let Err(e) = store
                .mutate_fenced(&fence, move |s| s.record_hook(&rollout_id, &id, status, message))
                .await
            {
                tracing::warn!(error = %e, "hook reply not recorded");
            }
        });
    }
}

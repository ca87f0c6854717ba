//! What the driver's tests run on: the real [`Controller`] over a temporary SQLite store and a real
//! metrics registry, a fake clock it is stepped with tick by tick, and a local HTTP server for hooks.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use canarygate_metrics::{Observation, Registry, Variant};
use canarygate_model::alarm::{Alarm, AlarmState, Comparison, TreatMissingData};
use canarygate_model::rollout::{Phase, Rollout, RolloutRequest};
use canarygate_model::{Metric, Stage, StageInput, State, Statistic};
use canarygate_store::{Fence, SqliteBackend, Store};

use crate::clock::{Clock, SystemClock};
use crate::driver::{Controller, Ticks};
use crate::lease::Leadership;

pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A state with api `orders` (deployments d-one, d-two), stage `prod` on d-one, and alarm `errors`
/// (the canary's 5xx rate over 5% in 2 of 3 one-second periods).
pub(crate) fn state() -> State {
    let mut s = State::default();
    let routes = serde_json::from_value(json!([{"path": "/h", "integration": {"type": "mock"}}])).unwrap();
    s.put_api("orders", routes, t0()).unwrap();
    s.create_deployment("orders", || "d-one".into(), String::new(), t0()).unwrap();
    s.create_deployment("orders", || "d-two".into(), String::new(), t0()).unwrap();
    let input = StageInput {
        deployment_id: Some("d-one".into()),
        variables: [("backend".into(), "a:1".into())].into(),
        ..Default::default()
    };
    s.put_stage("orders", "prod", input, t0()).unwrap();
    let alarm = Alarm {
        name: String::new(),
        api: "orders".into(),
        stage: "prod".into(),
        variant: Variant::Canary,
        metric: Some(Metric::Error5xx),
        statistic: Some(Statistic::Average),
        prometheus: None,
        period_seconds: 1,
        evaluation_periods: 3,
        datapoints_to_alarm: 2,
        comparison: Comparison::GreaterThanThreshold,
        threshold: 0.05,
        treat_missing_data: TreatMissingData::Missing,
        dry_run: false,
    };
    s.put_alarm("errors", alarm).unwrap();
    s
}

/// Wall and monotonic time that move only when told to.
pub(crate) struct FakeClock {
    at: Mutex<(DateTime<Utc>, Instant)>,
}

impl FakeClock {
    pub(crate) fn new(wall: DateTime<Utc>) -> FakeClock {
        FakeClock {
            at: Mutex::new((wall, SystemClock.instant())),
        }
    }

    pub(crate) fn advance(&self, ms: u64) {
        let mut at = self.at.lock().unwrap();
        at.0 += Duration::milliseconds(ms as i64);
        at.1 += std::time::Duration::from_millis(ms);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        self.at.lock().unwrap().0
    }

    fn instant(&self) -> Instant {
        self.at.lock().unwrap().1
    }
}

/// A hook endpoint on loopback: `/ok` answers 200, `/fail` 500 with a body, `/hang` never answers,
/// anything else 202 (the test then reports the outcome as the callback would). Counts the calls.
pub(crate) struct HookServer {
    pub(crate) base: String,
    calls: Arc<watch::Sender<usize>>,
}

impl HookServer {
    async fn start() -> HookServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(watch::Sender::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head and the (small JSON) body: read until the length the head names.
                    loop {
                        let Ok(n) = conn.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    counted.send_modify(|n| *n += 1);
                    let path = String::from_utf8_lossy(&buf).split_whitespace().nth(1).unwrap_or("").to_string();
                    if path == "/hang" {
                        // Holds the connection until the caller gives up.
                        let _ = conn.read(&mut chunk).await;
                        return;
                    }
                    let reply: &[u8] = match path.as_str() {
                        "/ok" => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        "/fail" => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nboom",
                        _ => b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    };
                    let _ = conn.write_all(reply).await;
                });
            }
        });
        HookServer { base, calls }
    }

    pub(crate) fn calls(&self) -> usize {
        *self.calls.borrow()
    }

    /// Waits until the server has had `n` calls.
    pub(crate) async fn wait_calls(&self, n: usize) {
        let mut rx = self.calls.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("the hook server had {} calls, not {n}", self.calls()))
            .unwrap();
    }
}

/// One rollout `r-1` on `orders/prod`, run by the real controller, stepped by the test.
pub(crate) struct Rig {
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Arc<Registry>,
    pub(crate) clock: Arc<FakeClock>,
    pub(crate) controller: Arc<Controller>,
    ticks: Ticks,
    pub(crate) hooks: HookServer,
    /// The lease this controller holds, when the test plays several replicas.
    lease: Option<watch::Sender<Option<Leadership>>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A rollout of d-two with the given deployment config; `req` adds to (or replaces) the request's
    /// fields, and `HOOK` in it names the hook server.
    pub(crate) async fn start(config: &str, req: serde_json::Value) -> Rig {
        Rig::start_in(state(), config, req).await
    }

    pub(crate) async fn start_in(s: State, config: &str, req: serde_json::Value) -> Rig {
        let mut rig = Rig::empty(s).await;
        let mut body = json!({"deploymentId": "d-two", "stageVariableOverrides": {"backend": "b:2"}, "deploymentConfig": config, "alarms": ["errors"]});
        body.as_object_mut().unwrap().extend(req.as_object().unwrap().clone());
        let body = body.to_string().replace("HOOK", &rig.hooks.base);
        let req: RolloutRequest = serde_json::from_str(&body).unwrap();
        rig.mutate(move |s| s.create_rollout("orders", "prod", req, "r-1".into(), t0()).map(|_| ()))
            .await
            .unwrap();
        rig.ticks = Ticks::default();
        rig
    }

    /// The state `s` stored, no rollout, the clock at t0.
    pub(crate) async fn empty(s: State) -> Rig {
        // In memory where the machine has a tmpfs: the store's fsyncs are what a simulated day costs.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let backend = SqliteBackend::open(&dir.path().join("state.db")).unwrap();
        let store = Arc::new(Store::open(Box::new(backend), Box::new(|_| {})).unwrap());
        store
            .mutate(move |st| {
                *st = s;
                Ok(())
            })
            .await
            .unwrap();
        let metrics = Arc::new(Registry::new());
        let clock = Arc::new(FakeClock::new(t0()));
        let controller = Arc::new(Controller::new(store.clone(), metrics.clone(), clock.clone()));
        Rig {
            store,
            metrics,
            clock,
            controller,
            ticks: Ticks::default(),
            hooks: HookServer::start().await,
            lease: None,
            _dir: dir,
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn state(&self) -> Arc<State> {
        self.store.current()
    }

    pub(crate) fn rollout(&self) -> Rollout {
        self.state().rollouts["r-1"].clone()
    }

    pub(crate) fn stage(&self) -> Stage {
        self.state().stage("orders", "prod").unwrap().clone()
    }

    pub(crate) fn weight(&self) -> Option<f64> {
        self.stage().canary_settings.as_ref().map(|c| c.percent_traffic)
    }

    /// A change made through the store, as the admin API makes it.
    pub(crate) async fn mutate<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> canarygate_model::Result<T>,
    ) -> Result<T, canarygate_store::StoreError> {
        self.store.mutate(f).await
    }

    /// Moves the clock `ms` on and runs one tick of the controller, then waits for the hook calls it
    /// made to be answered and recorded.
    pub(crate) async fn tick(&mut self, ms: u64) {
        self.tick_unsettled(ms).await;
        self.controller.settle().await;
    }

    /// [`Rig::tick`] without waiting for the hook calls it made.
    pub(crate) async fn tick_unsettled(&mut self, ms: u64) {
        self.clock.advance(ms);
        self.controller.tick(&mut self.ticks).await;
    }

    /// Runs `ms` in 1 s ticks (a tick never waits long enough to count as a gap).
    pub(crate) async fn run_for(&mut self, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let d = left.min(1000);
            self.tick(d).await;
            left -= d;
        }
    }

    /// [`Rig::tick`], with the canary's traffic in the alarm's three periods before the tick made to
    /// give `alarm`: 30% errors (ALARM), under 1% (OK), or none added (INSUFFICIENT_DATA where there
    /// was none).
    pub(crate) async fn tick_with(&mut self, ms: u64, alarm: AlarmState) {
        let now_sec = (self.now() + Duration::milliseconds(ms as i64)).timestamp() as u64;
        let series = self.metrics.series("orders", "prod", Variant::Canary);
        for sec in now_sec - 3..now_sec {
            let c = series.second(sec);
            let (req, err) = c.map_or((0, 0), |c| (c.count, c.e5));
            let (ok, errors) = match alarm {
                AlarmState::Alarm if req == 0 => (7, 3),
                // Enough errors to bring the rate to at least 30%.
                AlarmState::Alarm => (0, (3 * req).saturating_sub(10 * err).div_ceil(7)),
                // Enough good requests to bring it under 1%.
                AlarmState::Ok => ((100 * err).saturating_sub(req) + 10, 0),
                AlarmState::InsufficientData => (0, 0),
            };
            record(&series, sec, ok, 200);
            record(&series, sec, errors, 500);
        }
        self.tick(ms).await;
    }

    /// One second of traffic at the stage's current weight, at the clock's second: `n` requests split
    /// between the variants by the weight, with the given error rates.
    pub(crate) fn traffic(&self, n: u64, canary_rate: f64, production_rate: f64) {
        let w = self.weight().unwrap_or(0.0) / 100.0;
        let nc = (n as f64 * w).round() as u64;
        let np = n - nc;
        let sec = self.now().timestamp() as u64;
        for (variant, n, rate) in [(Variant::Canary, nc, canary_rate), (Variant::Production, np, production_rate)] {
            let series = self.metrics.series("orders", "prod", variant);
            let errors = (n as f64 * rate).round() as u64;
            record(&series, sec, n - errors, 200);
            record(&series, sec, errors, 500);
        }
    }

    /// Mirrored pairs at the clock's second: `copies` copies, of which the copy alone failed in
    /// `copy_failed` and the original alone in `original_failed`.
    pub(crate) fn mirrored(&self, copies: u64, copy_failed: u64, original_failed: u64) {
        let sec = self.now().timestamp() as u64;
        let series = self.metrics.series("orders", "prod", Variant::Mirror);
        record(&series, sec, copies, 200);
        for _ in 0..copy_failed {
            series.record_discordant_pair(sec, true);
        }
        for _ in 0..original_failed {
            series.record_discordant_pair(sec, false);
        }
    }

    /// The process restarts: a new controller over the same store (and the same metrics), knowing
    /// nothing but the records.
    pub(crate) fn restart(&mut self) {
        self.controller = Arc::new(Controller::new(self.store.clone(), self.metrics.clone(), self.clock.clone()));
        self.ticks = Ticks::default();
    }

    /// Plays replica `holder`: from now its controller acts only while it holds the lease, which the
    /// test hands over with [`Rig::lease`].
    pub(crate) fn replica(&mut self, holder: &str) -> Arc<Controller> {
        let (tx, rx) = watch::channel(None);
        self.lease = Some(tx);
        self.controller = Arc::new(Controller::new(self.store.clone(), self.metrics.clone(), self.clock.clone()).with_leadership(rx));
        self.ticks = Ticks::default();
        self.lease(holder, 1, 10);
        self.controller.clone()
    }

    /// This replica holds the lease at `epoch` for `secs` from now (0: it has lost it).
    pub(crate) fn lease(&self, holder: &str, epoch: u64, secs: u64) {
        let held = (secs > 0).then(|| Leadership {
            fence: Fence {
                holder: holder.into(),
                epoch,
            },
            until: self.clock.instant() + std::time::Duration::from_secs(secs),
        });
        self.lease.as_ref().expect("a replica").send_replace(held);
    }

    /// Runs to the end in 1 s ticks; returns (seconds since start, weight) at every weight change.
    pub(crate) async fn run_to_end(&mut self) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        let mut last = -1.0;
        self.tick(0).await;
        for _ in 0..20_000 {
            let w = self.weight().unwrap_or(if self.rollout().promoted { 100.0 } else { 0.0 });
            if w != last && !(w == 0.0 && last < 0.0) {
                out.push(((self.now() - t0()).num_seconds(), w));
                last = w;
            }
            if !self.rollout().status.is_active() {
                return out;
            }
            self.tick(1000).await;
        }
        panic!("rollout never ended: {:?}", self.rollout().phase);
    }

    /// The hook execution the rollout waits on.
    pub(crate) fn hook_id(&self) -> String {
        match &self.rollout().phase {
            Phase::BeforeAllowTraffic { execution } | Phase::AfterAllowTraffic { execution } => execution.id.clone(),
            p => panic!("no hook phase: {p:?}"),
        }
    }
}

fn record(series: &canarygate_metrics::Series, sec: u64, n: u64, status: u16) {
    let o = Observation {
        status,
        latency_us: 1_000,
        integration_us: Some(900),
        cache: None,
        routed: Default::default(),
    };
    for _ in 0..n {
        series.record(sec, &o);
    }
}

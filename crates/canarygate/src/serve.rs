//! `canarygate serve`: wires the store, gateway, metrics ticker and admin API into one process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::pin::Pin;

use canarygate_admin::{AppState, Auth, CacheStats, Role, StageCaches, Token};
use canarygate_controller::{Controller, SystemClock};
use canarygate_gateway::{AccessLog, AccessLogConfig, Gateway, Limits};
use canarygate_metrics::Registry;
use canarygate_model::config::{plan, Action, PlanMode};
use canarygate_store::{Listener, PostgresBackend, SqliteBackend, Store};
use chrono::Utc;
use tokio::net::TcpListener;

use crate::config::{ConfigFile, TokenSpec};

/// Flags of `serve`; each overrides the config file's `server` key.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (YAML): `server` settings and resources to seed.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Gateway listener [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TLS listener (needs `server.tls` in the config file)
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Admin listener [default: 127.0.0.1:9090]
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Data directory [default: ./canarygate-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `sqlite` or a PostgreSQL URL [default: sqlite]
    #[arg(long)]
    pub store: Option<String>,
    /// Check the config file (and these flags) as `serve` would, then exit: 0, or 1 naming each problem.
    #[arg(long)]
    pub check: bool,
}

fn tokens(cfg: &ConfigFile) -> Vec<Token> {
    let mut out: Vec<Token> = cfg
        .server
        .admin_tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            TokenSpec::Admin(t) => Token {
                token: t.clone(),
                role: Role::Admin,
                name: format!("admin-token-{}", i + 1),
            },
            TokenSpec::Detailed { name, token, read_only } => Token {
                token: token.clone(),
                role: if *read_only { Role::ReadOnly } else { Role::Admin },
                name: name.clone().unwrap_or_else(|| format!("admin-token-{}", i + 1)),
            },
        })
        .collect();
    if let Ok(t) = std::env::var("CANARYGATE_ADMIN_TOKEN") {
        out.extend(t.split(',').enumerate().map(|(i, t)| Token {
            token: t.trim().to_string(),
            role: Role::Admin,
            name: format!("env-token-{}", i + 1),
        }));
    }
    out.retain(|t| !t.token.is_empty());
    out
}

/// This machine's host name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "canarygate".into())
}

/// This replica, as it takes the lease and sends its heartbeat.
struct Replica {
    name: String,
    addresses: String,
    ttl: Duration,
}

/// Takes and renews the controller lease (every third of its length) and sends this replica's
/// heartbeat, on a thread of its own; gives the lease up at shutdown. The receiver says while this
/// replica holds it.
fn hold_lease(
    coordinator: Arc<std::sync::Mutex<canarygate_store::Coordinator>>,
    me: Replica,
    store: Arc<Store>,
    stale_since: Arc<std::sync::Mutex<Option<chrono::DateTime<Utc>>>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::sync::watch::Receiver<Option<canarygate_controller::lease::Leadership>> {
    use canarygate_controller::lease::{Attempt, LeaseView};
    let (tx, rx) = tokio::sync::watch::channel(None);
    let rt = tokio::runtime::Handle::current();
    let every = (me.ttl / 3).min(Duration::from_secs(2));
    let margin = (me.ttl / 5).min(Duration::from_secs(1));
    let spawned = std::thread::Builder::new().name("canarygate-lease".into()).spawn(move || {
        let mut view = LeaseView::new(&me.name, margin);
        let mut was_leader = false;
        loop {
            if *shutdown.borrow() {
                if was_leader {
                    let _ = coordinator.lock().unwrap_or_else(|e| e.into_inner()).release(&me.name);
                }
                tx.send_replace(None);
                return;
            }
            let started = std::time::Instant::now();
            let attempt = match coordinator.lock().unwrap_or_else(|e| e.into_inner()).acquire(&me.name, me.ttl) {
                Ok(Some((epoch, runs_for))) => Attempt::Held { epoch, runs_for },
                Ok(None) => Attempt::Taken,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the controller lease");
                    Attempt::Failed
                }
            };
            view.observe(attempt, started);
            let leadership = view.leadership(std::time::Instant::now()).cloned();
            let leader = leadership.is_some();
            if leader != was_leader {
                match &leadership {
                    Some(l) => tracing::info!(replica = %me.name, epoch = l.fence.epoch, "this replica runs the controller"),
                    None => tracing::info!(replica = %me.name, "this replica no longer runs the controller"),
                }
                was_leader = leader;
            }
            tx.send_replace(leadership);
            let info = canarygate_store::ReplicaInfo {
                name: me.name.clone(),
                addresses: me.addresses.clone(),
                binary_version: env!("CARGO_PKG_VERSION").to_string(),
                config_version: rt.block_on(store.version()),
                stale_since: *stale_since.lock().unwrap_or_else(|e| e.into_inner()),
            };
            if let Err(e) = coordinator.lock().unwrap_or_else(|e| e.into_inner()).heartbeat(&info) {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
            std::thread::sleep(every.saturating_sub(started.elapsed()));
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the lease thread");
    }
    rx
}

/// `GET /v1/cluster`: from the shared database's replica and lease tables; a lone process reports
/// itself as the only replica and the controller.
fn cluster_hook(
    coordinator: Option<Arc<std::sync::Mutex<canarygate_store::Coordinator>>>,
    name: String,
    store: Arc<Store>,
    lease_seconds: u64,
) -> canarygate_admin::ClusterHook {
    Arc::new(move || {
        let (coordinator, name, store) = (coordinator.clone(), name.clone(), store.clone());
        Box::pin(async move {
            let Some(c) = coordinator else {
                return Ok(serde_json::json!({
                    "store": "sqlite",
                    "replicas": [{"name": name, "configVersion": store.version().await, "binaryVersion": env!("CARGO_PKG_VERSION")}],
                    "leader": name,
                }));
            };
            // A replica is live while its heartbeats are younger than the lease.
            let live = Duration::from_secs(lease_seconds.max(3));
            let view = tokio::task::spawn_blocking(move || c.lock().unwrap_or_else(|e| e.into_inner()).cluster(live))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let mut v = serde_json::to_value(&view).map_err(|e| e.to_string())?;
            v["store"] = serde_json::json!("postgres");
            v["self"] = serde_json::json!(name);
            Ok(v)
        })
    })
}

/// With a shared database: loads what other replicas change, when PostgreSQL notifies it and at least
/// once a second (a notification can be missed), on a thread of its own holding the `LISTEN`
/// connection. A replica cut off from the database keeps serving its last state and retries.
fn follow_changes(store: Arc<Store>, url: String, stale_since: Arc<std::sync::Mutex<Option<chrono::DateTime<Utc>>>>) {
    let rt = tokio::runtime::Handle::current();
    let set_stale = move |stale: bool| {
        let mut s = stale_since.lock().unwrap_or_else(|e| e.into_inner());
        match (stale, s.is_some()) {
            (true, false) => *s = Some(Utc::now()),
            (false, true) => *s = None,
            _ => {}
        }
    };
    let spawned = std::thread::Builder::new().name("canarygate-listen".into()).spawn(move || {
        let mut listener = Listener::new(&url);
        let mut failing = false;
        loop {
            match listener.wait(Duration::from_secs(1)) {
                Ok(_) => {
                    if failing {
                        tracing::info!("the PostgreSQL store is reachable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot listen for changes on the PostgreSQL store; serving the last state, retrying");
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            // Notified or not: compare versions (cheap), load when another replica moved on.
            match rt.block_on(store.sync()) {
                Ok(_) => set_stale(failing),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot load changes from the PostgreSQL store; serving the last state");
                    }
                    set_stale(true);
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the change listener");
    }
}

/// Seconds a replica publishes again when their numbers changed (requests are recorded in the second
/// they arrived, and finish later): the analysis's re-read window.
const REPUBLISH_SECS: u64 = canarygate_metrics::JUDGE_SECS - 8;

/// With a shared database: publishes this replica's metrics once a second, just after the second
/// ends: every recent second of every series whose numbers changed since it was last published, and
/// that seconds before the current one are complete. On a thread of its own with its own connection;
/// the request path is not involved (it records into the same lock-free slots as a lone process).
fn publish_metrics(metrics: Arc<Registry>, url: &str, replica: String, shutdown: tokio::sync::watch::Receiver<bool>) {
    use canarygate_metrics::{SecondCounts, SeriesKey};
    let mut db = canarygate_store::MetricsDb::new(url);
    let spawned = std::thread::Builder::new().name("canarygate-metrics".into()).spawn(move || {
        let mut sent: HashMap<(SeriesKey, u64), SecondCounts> = HashMap::new();
        // Per series: its activity when last looked at, and how many more rounds to look at its
        // seconds (two after any change: a request being recorded while its slot was read is picked
        // up by the next round). An idle series costs one read.
        let mut seen: HashMap<SeriesKey, (u64, u8)> = HashMap::new();
        let mut failing = false;
        loop {
            let last = *shutdown.borrow();
            // 50 ms into the next second: requests of the second that ended have been recorded.
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if !last {
                let wait = Duration::from_millis(1_050).saturating_sub(Duration::from_nanos(u64::from(since_epoch.subsec_nanos())));
                std::thread::sleep(wait);
            }
            let now_sec = Utc::now().timestamp().max(0) as u64;
            let from = now_sec.saturating_sub(REPUBLISH_SECS);
            let mut changed = Vec::new();
            let keys = metrics.keys();
            seen.retain(|k, _| keys.binary_search(k).is_ok());
            for key in keys {
                let Some(series) = metrics.get(&key) else { continue };
                let activity = series.activity();
                let (last, rounds) = seen.entry(key.clone()).or_insert((u64::MAX, 0));
                if *last != activity {
                    (*last, *rounds) = (activity, 2);
                }
                if *rounds == 0 {
                    continue;
                }
                *rounds -= 1;
                for sec in from..now_sec {
                    let Some(c) = series.second(sec) else { continue };
                    if sent.get(&(key.clone(), sec)) != Some(&c) {
                        changed.push((key.clone(), sec, c));
                    }
                }
            }
            match db.publish(&replica, &changed, now_sec) {
                Ok(()) => {
                    if failing {
                        tracing::info!("publishing metrics to PostgreSQL again");
                        failing = false;
                    }
                    sent.extend(changed.into_iter().map(|(k, s, c)| ((k, s), c)));
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot publish metrics to PostgreSQL; retrying every second");
                        failing = true;
                    }
                    // Every series is looked at again next round.
                    seen.clear();
                }
            }
            sent.retain(|(_, s), _| *s >= from);
            if last {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the metrics publisher");
    }
}

/// Carries a seeding plan out on the store: one change, all or nothing, published once.
async fn seed(store: &Store, actions: Vec<Action>) -> Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    let done = store
        .mutate(move |s| {
            let mut new_id = canarygate_store::new_deployment_id;
            canarygate_model::config::apply_all(s, actions, &mut new_id, Utc::now())
        })
        .await
        .context("seeding from the config file")?;
    for what in done {
        tracing::info!("seeded: {what}");
    }
    Ok(())
}

/// A running server: its addresses and what it takes to stop it.
pub struct Running {
    pub gateway_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub store: Arc<Store>,
    pub metrics: Arc<Registry>,
    gateway: Arc<Gateway>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, flushes the access logs.
    pub async fn stop(self) {
        tracing::info!("shutting down: draining in-flight requests");
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.gateway.access_log().flush().await;
        if let Some(t) = self.gateway.tracer() {
            // Spans of the last requests go out, unless the collector takes too long.
            let _ = tokio::time::timeout(Duration::from_secs(5), t.flush()).await;
        }
    }
}

/// `canarygate serve`: runs until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => crate::config::load(p)?,
        None => ConfigFile::default(),
    };
    let running = start(&cfg, &args).await?;
    shutdown_signal().await;
    running.stop().await;
    Ok(())
}

/// Starts the gateway, the controller and the admin API with `cfg`, flags in `args` winning.
pub async fn start(cfg: &ConfigFile, args: &ServeArgs) -> Result<Running> {
    let Settings {
        listen,
        admin_listen,
        tls_listen,
        data_dir,
        store_kind,
        postgres,
        tokens,
        limits,
        admin_limits,
        lease_seconds,
        aws,
    } = settings(cfg, args, raise_open_files())?;
    tracing::info!(max_connections = limits.max_connections, "client connections");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;

    let metrics = Arc::new(Registry::new());
    let log = if cfg.server.access_log.enabled {
        AccessLog::start(AccessLogConfig {
            dir: data_dir.join("logs"),
            max_bytes: cfg.server.access_log.max_bytes,
            keep: cfg.server.access_log.keep,
            queue: 65_536,
        })
        .context("cannot start the access log writer")?
    } else {
        AccessLog::disabled()
    };
    let mut gateway = Gateway::new(metrics.clone(), log, limits);
    if let Some(endpoint) = &cfg.server.telemetry.otlp_endpoint {
        let t = &cfg.server.telemetry;
        let defaults = canarygate_telemetry::TracingConfig::new(endpoint.clone());
        let tracing_cfg = canarygate_telemetry::TracingConfig {
            sample_ratio: t.sample_ratio.unwrap_or(defaults.sample_ratio),
            service_name: t.service_name.clone().unwrap_or_else(|| defaults.service_name.clone()),
            ..defaults
        };
        let tracer = canarygate_telemetry::Tracer::start(&tracing_cfg)?;
        tracing::info!(endpoint = %tracing_cfg.traces_url()?, ratio = tracing_cfg.sample_ratio, "tracing on");
        gateway = gateway.with_tracer(tracer);
    }
    if let (Some(_), Some(files)) = (tls_listen, &cfg.server.tls) {
        let certs = canarygate_gateway::tls::Certificates::new(canarygate_gateway::tls::PairFiles {
            cert_file: files.cert_file.clone().into(),
            key_file: files.key_file.clone().into(),
        })
        .context("server.tls")?;
        gateway = gateway.with_tls(certs);
    }
    let gateway = Arc::new(gateway);

    let backend: Box<dyn canarygate_store::Backend> = if postgres {
        let url = store_kind.clone();
        let opened = tokio::task::spawn_blocking(move || PostgresBackend::open(&url)).await?;
        Box::new(opened.with_context(|| format!("cannot open the PostgreSQL store {}", redact(&store_kind)))?)
    } else {
        let db = data_dir.join("state.db");
        Box::new(SqliteBackend::open(&db).with_context(|| format!("cannot open state database {}", db.display()))?)
    };
    let gw = gateway.clone();
    // Off the async threads: the PostgreSQL client blocks.
    let store = Arc::new(tokio::task::spawn_blocking(move || Store::open(backend, Box::new(move |state| gw.publish(state)))).await??);
    let stale_since: Arc<std::sync::Mutex<Option<chrono::DateTime<Utc>>>> = Arc::default();
    if postgres {
        follow_changes(store.clone(), store_kind.clone(), stale_since.clone());
    }
    seed(&store, plan(&store.current(), &cfg.resources(), PlanMode::CreateOnly)).await?;

    // Bound by tokio (backlog 1024, SO_REUSEADDR), then handed to the data-plane workers.
    let gateway_listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?
        .into_std()?;
    let tls_listener = match tls_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?
                .into_std()?,
        ),
        None => None,
    };
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen}"))?;
    let (gateway_addr, admin_addr) = (gateway_listener.local_addr()?, admin_listener.local_addr()?);
    println!("canarygate: gateway listening on http://{gateway_addr}");
    if let Some(l) = &tls_listener {
        println!("canarygate: gateway (TLS) listening on https://{}", l.local_addr()?);
    }
    let aws = match aws {
        Some((addr, config)) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            println!("canarygate: AWS endpoints listening on http://{}", l.local_addr()?);
            Some((l, config))
        }
        None => None,
    };
    println!("canarygate: admin listening on http://{admin_addr}");
    println!("canarygate: data dir {}", data_dir.display());

    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    // Clears the next seconds' metric slots ahead of the request path.
    let ticker_metrics = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            ticker_metrics.tick(Utc::now().timestamp().max(0) as u64);
        }
    });

    let gw_for_prom = gateway.clone();
    let store_for_prom = store.clone();
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        prometheus_extra: Some(Arc::new(move |out: &mut String| {
            use std::fmt::Write;
            out.push_str("# HELP canarygate_access_log_dropped_total Access log records dropped because the writer fell behind.\n");
            out.push_str("# TYPE canarygate_access_log_dropped_total counter\n");
            let _ = writeln!(out, "canarygate_access_log_dropped_total {}", gw_for_prom.access_log().dropped());
            out.push_str(
                "# HELP canarygate_routing_publishes_total Routing snapshots built and swapped in (one per change that touches routing).\n",
            );
            out.push_str("# TYPE canarygate_routing_publishes_total counter\n");
            let _ = writeln!(out, "canarygate_routing_publishes_total {}", gw_for_prom.publishes());
            let chunks = gw_for_prom.metrics().slot_chunks();
            out.push_str("# HELP canarygate_metric_slot_bytes Memory held by one-second metric slots (64-second chunks, allocated only for windows with requests).\n");
            out.push_str("# TYPE canarygate_metric_slot_bytes gauge\n");
            let _ = writeln!(out, "canarygate_metric_slot_bytes {}", chunks * canarygate_metrics::CHUNK_BYTES);
            if let Some(t) = gw_for_prom.tracer() {
                t.render_prometheus(out);
            }
            let conns = gw_for_prom.connections();
            out.push_str("# HELP canarygate_client_connections Client connections open on the gateway's listeners.\n");
            out.push_str("# TYPE canarygate_client_connections gauge\n");
            let _ = writeln!(out, "canarygate_client_connections {}", conns.open());
            out.push_str("# HELP canarygate_client_connections_closed_total Client connections closed for want of room (server.maxConnections): evicted (an idle one closed for a new one) or refused (a new one closed at once).\n");
            out.push_str("# TYPE canarygate_client_connections_closed_total counter\n");
            let _ = writeln!(
                out,
                "canarygate_client_connections_closed_total{{why=\"evicted\"}} {}",
                conns.evicted()
            );
            let _ = writeln!(
                out,
                "canarygate_client_connections_closed_total{{why=\"refused\"}} {}",
                conns.refused()
            );
            let caught = store_for_prom.catch_ups();
            out.push_str("# HELP canarygate_store_catch_ups_total Times this replica brought its state up to what other replicas wrote: by applying their logged changes, or by loading everything.\n");
            out.push_str("# TYPE canarygate_store_catch_ups_total counter\n");
            let _ = writeln!(out, "canarygate_store_catch_ups_total{{how=\"applied\"}} {}", caught.applied);
            let _ = writeln!(out, "canarygate_store_catch_ups_total{{how=\"loaded\"}} {}", caught.loaded);
        })),
        caches: None,
        cluster: None,
        stale_since: stale_since.clone(),
        cluster_metrics: None,
    };
    let replica_name = cfg
        .server
        .replica_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", hostname(), gateway_addr.port()));
    let coordinator = postgres.then(|| Arc::new(std::sync::Mutex::new(canarygate_store::Coordinator::new(&store_kind))));
    let state = AppState {
        caches: Some(Arc::new(GatewayCaches(gateway.clone()))),
        cluster: Some(cluster_hook(
            coordinator.clone(),
            replica_name.clone(),
            store.clone(),
            lease_seconds,
        )),
        stale_since: stale_since.clone(),
        cluster_metrics: postgres.then(|| Arc::new(std::sync::Mutex::new(canarygate_store::MetricsDb::new(&store_kind)))),
        ..state
    };
    let auth = Auth::new(
        tokens,
        cfg.server.read_requires_token.unwrap_or(true),
        cfg.server.admin_hosts.clone(),
    )
    .with_origins(cfg.server.admin_origins.clone());
    let mut tasks = Vec::new();
    if let Some((listener, config)) = aws {
        let app = canarygate_admin::aws::router(state.clone(), Arc::new(config));
        let aws_shutdown = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            canarygate_admin::listener::serve(listener, app, admin_limits, aws_shutdown).await;
        }));
    }
    let app = canarygate_admin::router(state, auth);
    let admin_shutdown = shutdown_rx.clone();
    let admin = tokio::spawn(async move {
        canarygate_admin::listener::serve(admin_listener, app, admin_limits, admin_shutdown).await;
    });
    let mut controller =
        Controller::new(store.clone(), metrics.clone(), Arc::new(SystemClock)).with_public_url(cfg.server.public_url.clone());
    if let Some(coordinator) = &coordinator {
        let addresses = format!("gateway=http://{gateway_addr},admin=http://{admin_addr}");
        let me = Replica {
            name: replica_name.clone(),
            addresses,
            ttl: Duration::from_secs(lease_seconds),
        };
        publish_metrics(metrics.clone(), &store_kind, replica_name.clone(), shutdown_rx.clone());
        // A replica is live while its heartbeats are younger than the lease.
        let live = Duration::from_secs(lease_seconds.max(3));
        controller = controller.with_cluster_metrics(Arc::new(canarygate_controller::cluster_metrics::ClusterMetrics::new(
            &store_kind,
            live,
        )));
        controller = controller.with_leadership(hold_lease(
            coordinator.clone(),
            me,
            store.clone(),
            stale_since.clone(),
            shutdown_rx.clone(),
        ));
    }
    let controller = Arc::new(controller);
    let controller_task = tokio::spawn(controller.run(shutdown_rx.clone()));
    let workers = gateway_workers(cfg)?;
    let workers_done = gateway
        .start_workers(gateway_listener, tls_listener, workers, shutdown_rx, Duration::from_secs(30))
        .context("cannot start the gateway workers")?;
    let gateway_task = tokio::spawn(workers_done);
    if let Some(certs) = gateway.certificates().cloned() {
        // Certificate files are read again when they change (checked every 2 s) or on SIGHUP.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            #[cfg(unix)]
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = tokio::select! {
                    _ = every.tick() => false,
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                #[cfg(not(unix))]
                let forced = {
                    every.tick().await;
                    false
                };
                let c = certs.clone();
                let _ = tokio::task::spawn_blocking(move || c.reload(forced)).await;
            }
        });
    }
    ready.store(true, Ordering::Release);
    tracing::info!(%listen, %admin_listen, "canarygate is serving");

    Ok(Running {
        gateway_addr,
        admin_addr,
        store,
        metrics,
        gateway,
        shutdown: shutdown_tx,
        tasks: {
            tasks.extend([controller_task, gateway_task, admin]);
            tasks
        },
    })
}

/// Data-plane workers: `CANARYGATE_GATEWAY_WORKERS`, else `server.workers`, else one per core.
fn gateway_workers(cfg: &ConfigFile) -> Result<usize> {
    let from_env = match std::env::var("CANARYGATE_GATEWAY_WORKERS") {
        Ok(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("CANARYGATE_GATEWAY_WORKERS must be a positive integer, got {v:?}"))?,
        ),
        Err(_) => None,
    };
    match from_env.or(cfg.server.workers) {
        Some(0) => bail!("server.workers must be at least 1, got 0"),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// The admin API's view of the gateway's stage caches.
struct GatewayCaches(Arc<Gateway>);

impl StageCaches for GatewayCaches {
    fn flush<'a>(&'a self, api: &'a str, stage: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            match self.0.stage_cache(api, stage) {
                Some(c) => {
                    c.flush().await;
                    true
                }
                None => false,
            }
        })
    }

    fn stats<'a>(&'a self, api: &'a str, stage: &'a str) -> Pin<Box<dyn Future<Output = Option<CacheStats>> + Send + 'a>> {
        Box::pin(async move {
            let c = self.0.stage_cache(api, stage)?;
            let (entries, bytes) = c.stats().await;
            Some(CacheStats { entries, bytes })
        })
    }
}

fn redact(url: &str) -> String {
    // A store URL may carry a password; never print it.
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What a config file and the flags make of the process, checked: no file, socket or store is
/// touched (`serve` starts from it; `check` stops at it).
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub store_kind: String,
    pub postgres: bool,
    pub tokens: Vec<Token>,
    pub limits: Limits,
    pub admin_limits: canarygate_admin::listener::ListenerLimits,
    pub lease_seconds: u64,
    /// The AWS endpoints' listener and settings, when `server.awsListen` is set.
    pub aws: Option<(SocketAddr, canarygate_admin::aws::AwsConfig)>,
}

/// The AWS endpoints' settings, secrets read: every problem names its field.
fn aws_settings(cfg: &ConfigFile) -> Result<Option<(SocketAddr, canarygate_admin::aws::AwsConfig)>> {
    use crate::config::AwsRole;
    let Some(listen) = cfg.server.aws_listen else {
        if !cfg.server.aws_credentials.is_empty() {
            bail!("server.awsCredentials: set server.awsListen too (the AWS endpoints are off without it)");
        }
        return Ok(None);
    };
    if cfg.server.aws_credentials.is_empty() {
        bail!("server.awsListen {listen}: needs server.awsCredentials (every AWS call is signed with one of them)");
    }
    let region = cfg.server.aws_region.clone().unwrap_or_else(|| "us-east-1".into());
    if region.is_empty() || region.len() > 32 || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("server.awsRegion {region:?}: not a region name (lowercase letters, digits and -, as us-east-1)");
    }
    let mut credentials = Vec::new();
    for (i, c) in cfg.server.aws_credentials.iter().enumerate() {
        let at = format!("server.awsCredentials[{i}]");
        if c.access_key_id.len() < 4 || c.access_key_id.len() > 128 || !c.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            bail!("{at}.accessKeyId {:?}: must be 4 to 128 letters and digits", c.access_key_id);
        }
        if credentials
            .iter()
            .any(|x: &canarygate_admin::aws::Credential| x.access_key_id == c.access_key_id)
        {
            bail!("{at}.accessKeyId {:?}: declared twice", c.access_key_id);
        }
        let secret = match (&c.secret_access_key_env, &c.secret_access_key_file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| anyhow::anyhow!("{at}.secretAccessKeyEnv: the environment variable {var} is not set"))?
            }
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("{at}.secretAccessKeyFile: cannot read {}", file.display()))?
                .trim()
                .to_string(),
            _ => bail!("{at}: give exactly one of secretAccessKeyEnv and secretAccessKeyFile"),
        };
        if secret.len() < 8 {
            bail!("{at}: the secret access key is shorter than 8 characters");
        }
        credentials.push(canarygate_admin::aws::Credential {
            name: c.name.clone(),
            access_key_id: c.access_key_id.clone(),
            secret,
            role: match c.role {
                AwsRole::Admin => Role::Admin,
                AwsRole::Read => Role::ReadOnly,
            },
        });
    }
    Ok(Some((listen, canarygate_admin::aws::AwsConfig { region, credentials })))
}

/// The settings of `cfg` with `args` winning, for a process allowed `open_files` descriptors; an error
/// names the field and value at fault.
pub fn settings(cfg: &ConfigFile, args: &ServeArgs, open_files: u64) -> Result<Settings> {
    let listen = args
        .listen
        .or(cfg.server.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid"));
    let admin_listen = args
        .admin_listen
        .or(cfg.server.admin_listen)
        .unwrap_or_else(|| "127.0.0.1:9090".parse().expect("valid"));
    let data_dir = args
        .data_dir
        .clone()
        .or(cfg.server.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./canarygate-data"));
    let store_kind = args.store.clone().or(cfg.server.store.clone()).unwrap_or_else(|| "sqlite".into());
    let tokens = tokens(cfg);
    if tokens.is_empty() && !admin_listen.ip().is_loopback() {
        bail!(
            "refusing to start: the admin listener {admin_listen} is not a loopback address and no admin token is configured; \
             set CANARYGATE_ADMIN_TOKEN or server.adminTokens, or listen on 127.0.0.1"
        );
    }
    let postgres = store_kind.starts_with("postgres://") || store_kind.starts_with("postgresql://");
    if store_kind != "sqlite" && !postgres {
        bail!(
            "server.store {:?}: not a store (use sqlite, or a postgres://user:password@host:port/database URL)",
            redact(&store_kind)
        );
    }
    let max_connections = match cfg.server.max_connections {
        None => connections_for(open_files),
        Some(n) if n >= 1 => n,
        Some(n) => bail!("server.maxConnections: {n} must be at least 1"),
    };
    let defaults = Limits::default();
    let limits = Limits {
        max_connections,
        max_header_bytes: cfg.server.max_header_bytes.unwrap_or(defaults.max_header_bytes),
        max_request_line: cfg.server.max_request_line_bytes.unwrap_or(defaults.max_request_line),
        max_field_bytes: cfg.server.max_header_field_bytes.unwrap_or(defaults.max_field_bytes),
        max_body_bytes: cfg.server.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        header_read_timeout: cfg
            .server
            .header_read_timeout_seconds
            .map_or(defaults.header_read_timeout, Duration::from_secs),
        body_read_timeout: cfg
            .server
            .body_read_timeout_seconds
            .map_or(defaults.body_read_timeout, Duration::from_secs),
        http2: http2_limits(
            &cfg.server.http2,
            cfg.server
                .header_read_timeout_seconds
                .map_or(defaults.header_read_timeout, Duration::from_secs),
        )?,
        upgrade_idle_timeout: match cfg.server.upgrade_idle_timeout_seconds {
            None => defaults.upgrade_idle_timeout,
            Some(s @ 1..=86_400) => Duration::from_secs(s),
            Some(s) => bail!("server.upgradeIdleTimeoutSeconds: {s} is not a number of seconds from 1 to 86400"),
        },
    };
    if let Some(u) = &cfg.server.public_url {
        let ok = (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= 2048 && !u.contains(char::is_whitespace);
        if !ok {
            bail!("server.publicUrl {u:?}: not an http:// or https:// URL (the admin API's address as users reach it)");
        }
    }
    let lease_seconds = match cfg.server.lease_seconds {
        None => 10,
        Some(s @ 2..=300) => s,
        Some(s) => bail!("server.leaseSeconds: {s} is not a number of seconds from 2 to 300"),
    };
    let admin_limits = canarygate_admin::listener::ListenerLimits {
        head_timeout: limits.header_read_timeout,
        body_timeout: limits.body_read_timeout,
        max_connections: match cfg.server.admin_max_connections {
            None => canarygate_admin::listener::ListenerLimits::default().max_connections,
            Some(n) if n >= 1 => n,
            Some(n) => bail!("server.adminMaxConnections: {n} must be at least 1"),
        },
    };
    let tls_listen = args.tls_listen.or(cfg.server.tls_listen);
    if let Some(addr) = tls_listen {
        let Some(files) = &cfg.server.tls else {
            bail!("server.tlsListen {addr}: needs server.tls {{certFile, keyFile}}, the certificate served by default");
        };
        files.check("server.tls").map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let aws = aws_settings(cfg)?;
    Ok(Settings {
        listen,
        admin_listen,
        tls_listen,
        data_dir,
        store_kind,
        postgres,
        tokens,
        limits,
        admin_limits,
        lease_seconds,
        aws,
    })
}

/// Raises the open-file soft limit to the hard limit (at most what the kernel allows a process,
/// `fs.nr_open`), logging both; returns the limit now in force.
fn raise_open_files() -> u64 {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            return 1024;
        }
    };
    let kernel = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    match rlimit::increase_nofile_limit(hard.min(kernel)) {
        Ok(now) => {
            tracing::info!(soft_before = soft, hard, now, "open-file limit");
            now
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Descriptors kept for everything but client connections: the store, the admin API, access logs,
/// certificates, the upstream pools' idle connections.
const RESERVED_FILES: u64 = 256;

/// The default `server.maxConnections` for an open-file limit: each client connection may hold an
/// upstream connection too, so half of what is left after [`RESERVED_FILES`], at least 64.
fn connections_for(open_files: u64) -> usize {
    (open_files.saturating_sub(RESERVED_FILES) / 2).max(64) as usize
}

/// `server.http2`, checked against what HTTP/2 allows (RFC 9113 §6.5.2, §6.9.2).
fn http2_limits(h: &crate::config::Http2Section, head_timeout: Duration) -> Result<canarygate_gateway::Http2Limits> {
    let d = canarygate_gateway::Http2Limits::default();
    let seconds = |field: &str, v: Option<u64>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(n @ 1..=86_400) => Ok(Duration::from_secs(n)),
            Some(n) => bail!("server.http2.{field}: {n} is not a number of seconds from 1 to 86400"),
        }
    };
    let send_buffer = match h.send_buffer_bytes {
        None => d.send_buffer_bytes,
        Some(n @ 1024..=16_777_216) => n,
        Some(n) => bail!("server.http2.sendBufferBytes: {n} is not from 1024 to 16777216"),
    };
    let window = |field: &str, v: Option<u32>, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) if (65_535..=2_147_483_647).contains(&n) => Ok(n),
            Some(n) => bail!("server.http2.{field}: {n} is not from 65535 to 2147483647"),
        }
    };
    let streams = match h.max_concurrent_streams {
        None => d.max_concurrent_streams,
        Some(n) if n >= 1 => n,
        Some(n) => bail!("server.http2.maxConcurrentStreams: {n} must be at least 1"),
    };
    let header_list = match h.max_header_list_bytes {
        None => d.max_header_list_bytes,
        Some(n) if n >= 1024 => n,
        Some(n) => bail!("server.http2.maxHeaderListBytes: {n} must be at least 1024"),
    };
    Ok(canarygate_gateway::Http2Limits {
        max_concurrent_streams: streams,
        max_header_list_bytes: header_list,
        stream_window: window("streamWindowBytes", h.stream_window_bytes, d.stream_window)?,
        connection_window: window("connectionWindowBytes", h.connection_window_bytes, d.connection_window)?,
        send_buffer_bytes: send_buffer,
        idle_timeout: seconds("idleTimeoutSeconds", h.idle_timeout_seconds, d.idle_timeout)?,
        head_timeout: seconds("headTimeoutSeconds", h.head_timeout_seconds, head_timeout)?,
        send_timeout: seconds("sendTimeoutSeconds", h.send_timeout_seconds, d.send_timeout)?,
    })
}

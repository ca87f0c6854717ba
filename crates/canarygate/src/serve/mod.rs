//! `canarygate serve`: wires the store, gateway, metrics ticker, controller and admin API into one
//! process. [`settings`] turns the config file and flags into checked settings; [`cluster`] is what a
//! replica does beside its peers on PostgreSQL.

mod cluster;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use std::future::Future;
use std::pin::Pin;

use canarygate_admin::{AppState, Auth, CacheStats, StageCaches};
use canarygate_controller::{Controller, SystemClock};
use canarygate_gateway::{AccessLog, AccessLogConfig, Gateway};
use canarygate_metrics::Registry;
use canarygate_model::config::{plan, Action, PlanMode};
use canarygate_store::{PostgresBackend, SqliteBackend, Store};
use chrono::Utc;
use tokio::net::TcpListener;

use crate::config::ConfigFile;
use settings::{gateway_workers, hostname, raise_open_files, redact};
pub use settings::{settings, Settings};

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
    let settings = settings(cfg, args, raise_open_files())?;
    tracing::info!(max_connections = settings.limits.max_connections, "client connections");
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;

    let metrics = Arc::new(Registry::new());
    let gateway = build_gateway(cfg, &settings, metrics.clone())?;
    let store = open_store(&settings, gateway.clone()).await?;
    let stale_since: cluster::StaleSince = Arc::default();
    if settings.postgres {
        cluster::follow_changes(store.clone(), settings.store_kind.clone(), stale_since.clone());
    }
    seed(&store, plan(&store.current(), &cfg.resources(), PlanMode::CreateOnly)).await?;
    let listeners = Listeners::bind(&settings).await?;
    println!("canarygate: data dir {}", data_dir.display());

    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(tick_metrics(metrics.clone()));
    let replica_name = cfg
        .server
        .replica_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", hostname(), listeners.gateway_addr.port()));
    let coordinator = settings
        .postgres
        .then(|| Arc::new(std::sync::Mutex::new(canarygate_store::Coordinator::new(&settings.store_kind))));
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        prometheus_extra: Some(process_metrics(gateway.clone(), store.clone())),
        caches: Some(Arc::new(GatewayCaches(gateway.clone()))),
        cluster: Some(cluster::cluster_hook(
            coordinator.clone(),
            replica_name.clone(),
            store.clone(),
            settings.lease_seconds,
        )),
        stale_since: stale_since.clone(),
        cluster_metrics: settings
            .postgres
            .then(|| Arc::new(std::sync::Mutex::new(canarygate_store::MetricsDb::new(&settings.store_kind)))),
    };
    let Listeners {
        gateway: gateway_listener,
        tls: tls_listener,
        admin: admin_listener,
        aws,
        gateway_addr,
        admin_addr,
    } = listeners;
    let mut tasks = serve_admin(cfg, &settings, state, admin_listener, aws, &shutdown_rx);

    let mut controller =
        Controller::new(store.clone(), metrics.clone(), Arc::new(SystemClock)).with_public_url(cfg.server.public_url.clone());
    if let Some(coordinator) = &coordinator {
        let me = cluster::Replica {
            name: replica_name.clone(),
            addresses: format!("gateway=http://{gateway_addr},admin=http://{admin_addr}"),
            ttl: Duration::from_secs(settings.lease_seconds),
        };
        controller = cluster::join(
            controller,
            coordinator.clone(),
            me,
            &settings.store_kind,
            &metrics,
            &store,
            &stale_since,
            &shutdown_rx,
        );
    }
    tasks.push(tokio::spawn(Arc::new(controller).run(shutdown_rx.clone())));
    let workers = gateway_workers(cfg)?;
    let workers_done = gateway
        .start_workers(gateway_listener, tls_listener, workers, shutdown_rx, Duration::from_secs(30))
        .context("cannot start the gateway workers")?;
    tasks.push(tokio::spawn(workers_done));
    if let Some(certs) = gateway.certificates().cloned() {
        tokio::spawn(reload_certificates(certs));
    }
    ready.store(true, Ordering::Release);
    tracing::info!(listen = %settings.listen, admin_listen = %settings.admin_listen, "canarygate is serving");
    Ok(Running {
        gateway_addr,
        admin_addr,
        store,
        metrics,
        gateway,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// The gateway with its access log, tracer and TLS certificates, as the config asks.
fn build_gateway(cfg: &ConfigFile, settings: &Settings, metrics: Arc<Registry>) -> Result<Arc<Gateway>> {
    let log = if cfg.server.access_log.enabled {
        AccessLog::start(AccessLogConfig {
            dir: settings.data_dir.join("logs"),
            max_bytes: cfg.server.access_log.max_bytes,
            keep: cfg.server.access_log.keep,
            queue: 65_536,
        })
        .context("cannot start the access log writer")?
    } else {
        AccessLog::disabled()
    };
    let mut gateway = Gateway::new(metrics, log, settings.limits.clone());
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
    if let (Some(_), Some(files)) = (settings.tls_listen, &cfg.server.tls) {
        let certs = canarygate_gateway::tls::Certificates::new(canarygate_gateway::tls::PairFiles {
            cert_file: files.cert_file.clone().into(),
            key_file: files.key_file.clone().into(),
        })
        .context("server.tls")?;
        gateway = gateway.with_tls(certs);
    }
    Ok(Arc::new(gateway))
}

/// The store (SQLite in the data directory, or PostgreSQL), loaded; every change that touches routing
/// is published to the gateway.
async fn open_store(settings: &Settings, gateway: Arc<Gateway>) -> Result<Arc<Store>> {
    let backend: Box<dyn canarygate_store::Backend> = if settings.postgres {
        let url = settings.store_kind.clone();
        let opened = tokio::task::spawn_blocking(move || PostgresBackend::open(&url)).await?;
        Box::new(opened.with_context(|| format!("cannot open the PostgreSQL store {}", redact(&settings.store_kind)))?)
    } else {
        let db = settings.data_dir.join("state.db");
        Box::new(SqliteBackend::open(&db).with_context(|| format!("cannot open state database {}", db.display()))?)
    };
    // Off the async threads: the PostgreSQL client blocks.
    let store = tokio::task::spawn_blocking(move || Store::open(backend, Box::new(move |state| gateway.publish(state)))).await??;
    Ok(Arc::new(store))
}

/// The process's listeners, bound (and announced) before anything serves on them.
struct Listeners {
    gateway: std::net::TcpListener,
    tls: Option<std::net::TcpListener>,
    admin: TcpListener,
    aws: Option<(TcpListener, canarygate_admin::aws::AwsConfig)>,
    gateway_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Listeners {
    async fn bind(settings: &Settings) -> Result<Listeners> {
        let bind = |addr: SocketAddr| async move { TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}")) };
        // Bound by tokio (backlog 1024, SO_REUSEADDR), then handed to the data-plane workers.
        let gateway = bind(settings.listen).await?.into_std()?;
        let tls = match settings.tls_listen {
            Some(addr) => Some(bind(addr).await?.into_std()?),
            None => None,
        };
        let admin = bind(settings.admin_listen).await?;
        let (gateway_addr, admin_addr) = (gateway.local_addr()?, admin.local_addr()?);
        println!("canarygate: gateway listening on http://{gateway_addr}");
        if let Some(l) = &tls {
            println!("canarygate: gateway (TLS) listening on https://{}", l.local_addr()?);
        }
        let aws = match &settings.aws {
            Some((addr, config)) => {
                let l = bind(*addr).await?;
                println!("canarygate: AWS endpoints listening on http://{}", l.local_addr()?);
                Some((l, config.clone()))
            }
            None => None,
        };
        println!("canarygate: admin listening on http://{admin_addr}");
        Ok(Listeners {
            gateway,
            tls,
            admin,
            aws,
            gateway_addr,
            admin_addr,
        })
    }
}

/// Serves the admin API (and the AWS endpoints, when configured) until shutdown.
fn serve_admin(
    cfg: &ConfigFile,
    settings: &Settings,
    state: AppState,
    admin: TcpListener,
    aws: Option<(TcpListener, canarygate_admin::aws::AwsConfig)>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let limits = settings.admin_limits;
    if let Some((listener, config)) = aws {
        let app = canarygate_admin::aws::router(state.clone(), Arc::new(config));
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            canarygate_admin::listener::serve(listener, app, limits, shutdown).await;
        }));
    }
    let auth = Auth::new(
        settings.tokens.clone(),
        cfg.server.read_requires_token.unwrap_or(true),
        cfg.server.admin_hosts.clone(),
    )
    .with_origins(cfg.server.admin_origins.clone());
    let app = canarygate_admin::router(state, auth);
    let shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        canarygate_admin::listener::serve(admin, app, limits, shutdown).await;
    }));
    tasks
}

/// Clears the next seconds' metric slots ahead of the request path, once a second.
async fn tick_metrics(metrics: Arc<Registry>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        metrics.tick(Utc::now().timestamp().max(0) as u64);
    }
}

/// Reads the certificate files again when they change (checked every 2 s) or on SIGHUP.
async fn reload_certificates(certs: Arc<canarygate_gateway::tls::Certificates>) {
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
}

/// The process's own series on `/metrics`, beside the request metrics: the access log, routing
/// publishes, metric memory, tracing, client connections, store catch-ups.
fn process_metrics(gateway: Arc<Gateway>, store: Arc<Store>) -> canarygate_admin::PrometheusHook {
    use canarygate_metrics::Family;
    const DROPPED: Family = Family::counter(
        "canarygate_access_log_dropped_total",
        "Access log records dropped because the writer fell behind.",
    );
    const PUBLISHES: Family = Family::counter(
        "canarygate_routing_publishes_total",
        "Routing snapshots built and swapped in (one per change that touches routing).",
    );
    const SLOT_BYTES: Family = Family::gauge(
        "canarygate_metric_slot_bytes",
        "Memory held by one-second metric slots (64-second chunks, allocated only for windows with requests).",
    );
    const CONNECTIONS: Family = Family::gauge(
        "canarygate_client_connections",
        "Client connections open on the gateway's listeners.",
    );
    const CLOSED: Family = Family::counter(
        "canarygate_client_connections_closed_total",
        "Client connections closed for want of room (server.maxConnections): evicted (an idle one closed for a new one) or refused (a new one closed at once).",
    );
    const CATCH_UPS: Family = Family::counter(
        "canarygate_store_catch_ups_total",
        "Times this replica brought its state up to what other replicas wrote: by applying their logged changes, or by loading everything.",
    );
    Arc::new(move |out: &mut String| {
        DROPPED.single(out, gateway.access_log().dropped());
        PUBLISHES.single(out, gateway.publishes());
        SLOT_BYTES.single(out, gateway.metrics().slot_chunks() * canarygate_metrics::CHUNK_BYTES);
        if let Some(t) = gateway.tracer() {
            t.render_prometheus(out);
        }
        let conns = gateway.connections();
        CONNECTIONS.single(out, conns.open());
        CLOSED.header(out);
        CLOSED.sample(out, &[("why", "evicted")], conns.evicted());
        CLOSED.sample(out, &[("why", "refused")], conns.refused());
        let caught = store.catch_ups();
        CATCH_UPS.header(out);
        CATCH_UPS.sample(out, &[("how", "applied")], caught.applied);
        CATCH_UPS.sample(out, &[("how", "loaded")], caught.loaded);
    })
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

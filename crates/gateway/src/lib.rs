//! The data plane of canarygate.
//!
//! Its folders are its architecture, from the socket in:
//! - [`server`]: the client connections — the accept loop's connection registry and cap
//!   (`server::connections`), the HTTP/1.1 connection driver (keep-alive, pipelining, head and body
//!   deadlines, the protocol switch) and the HTTP/2 one (`server::h2`), each handing every request to
//!   the proxy;
//! - [`proxy`]: one request's life in named phases over one context (`proxy::ctx`): resolve the stage,
//!   choose the variant, mirror, match the route, render the integration, the upstream request, the
//!   response, and what to record at its end (`proxy::request`), the mirrored copy (`proxy::mirror`);
//! - [`routing`]: the routing snapshot ([`routing::table::RoutingTable`], swapped atomically through an
//!   `ArcSwap` on every control-plane change and loaded once per request), the variant choice
//!   (`routing::choose`), path normalisation (`routing::path`);
//! - [`upstream`]: calls to upstreams over pooled keep-alive connections (HTTP/1.1, plain or TLS), and
//!   HTTP/2 (`upstream::h2`);
//! - [`protocols`]: the wire — the HTTP/1.1 codec of both directions (`protocols::h1`), reading a body
//!   off a connection (`protocols::body_read`), TLS (`protocols::tls`), relaying an upgraded connection
//!   (`protocols::tunnel`);
//! - beside them: the stage cache ([`cache`]), the access log writer, (with tracing on) the W3C trace
//!   context and spans ([`trace`]), and the shared types (`body`, `error`, `exchange`).
//!
//! Every request is recorded in its variant's metrics series without taking a lock.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

// Dependencies point one way (the test suite checks it): `server` over `proxy` over `routing`,
// `upstream`, `cache` and `trace`; `upstream` and `server` over `protocols`; all over the shared types.
mod access_log;
mod body;
mod cache;
mod error;
mod exchange;
#[doc(hidden)]
pub mod fuzz;
mod log_every;
mod protocols;
mod proxy;
mod routing;
mod server;
mod trace;
mod upstream;

pub use protocols::tls;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use canarygate_metrics::Registry;
use canarygate_model::State;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use access_log::{AccessLog, AccessLogConfig};
pub use cache::StageCache;
pub use routing::table::RoutingTable;
pub use server::connections::ConnectionStats;
pub use server::h2::Http2Limits;

/// Request limits of the gateway listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line and headers), bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Longest request line, bytes; longer gets 414 (nginx's `large_client_header_buffers`: 8 KiB).
    pub max_request_line: usize,
    /// Longest header field line, bytes; longer gets 431 (nginx's default: 8 KiB).
    pub max_field_bytes: usize,
    /// Largest request body, bytes; larger gets 413.
    pub max_body_bytes: u64,
    /// Time a client has to send the request head; slower connections are closed.
    pub header_read_timeout: Duration,
    /// The longest a client may pause while sending a request body (nginx's `client_body_timeout`);
    /// then it gets 408, counted as the variant's 4XXError.
    pub body_read_timeout: Duration,
    /// HTTP/2 connections' limits (streams, header list, windows).
    pub http2: Http2Limits,
    /// A connection switched to another protocol (WebSocket) with nothing moving either way for this
    /// long is closed.
    pub upgrade_idle_timeout: Duration,
    /// Client connections open at once (plain and TLS, across the workers); past it a new one takes an
    /// idle one's place or is closed at once ([`connections`]).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_request_line: 8 * 1024,
            max_field_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            http2: Http2Limits::default(),
            upgrade_idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
        }
    }
}

/// The gateway: snapshot, upstream client, metrics and access log.
pub struct Gateway {
    table: ArcSwap<RoutingTable>,
    metrics: Arc<Registry>,
    log: AccessLog,
    limits: Limits,
    /// Routing snapshots built and swapped in so far.
    publishes: std::sync::atomic::AtomicU64,
    /// With tracing on: where spans go and how requests are sampled.
    tracer: Option<Arc<canarygate_telemetry::Tracer>>,
    /// With a TLS listener: the certificates it serves.
    tls: Option<Arc<tls::Certificates>>,
    connections: Arc<ConnectionStats>,
}

impl Gateway {
    pub fn new(metrics: Arc<Registry>, log: AccessLog, limits: Limits) -> Gateway {
        Gateway {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            metrics,
            log,
            limits,
            publishes: std::sync::atomic::AtomicU64::new(0),
            tracer: None,
            tls: None,
            connections: Arc::default(),
        }
    }

    /// The client connections: open, refused and evicted.
    pub fn connections(&self) -> &ConnectionStats {
        &self.connections
    }

    /// Terminates TLS on the listener given to [`Gateway::start_workers`] as `tls_listener`, with these
    /// certificates (the domains' own pairs follow the stored domains).
    pub fn with_tls(mut self, certs: Arc<tls::Certificates>) -> Gateway {
        self.tls = Some(certs);
        self
    }

    pub fn certificates(&self) -> Option<&Arc<tls::Certificates>> {
        self.tls.as_ref()
    }

    /// Turns tracing on: requests continue (or start) W3C traces, forward them upstream, and end
    /// spans into `tracer`.
    pub fn with_tracer(mut self, tracer: Arc<canarygate_telemetry::Tracer>) -> Gateway {
        self.tracer = Some(tracer);
        self
    }

    pub fn tracer(&self) -> Option<&Arc<canarygate_telemetry::Tracer>> {
        self.tracer.as_ref()
    }

    /// Builds a new snapshot from the state and swaps it in; the next request sees it. Called by the
    /// store one change at a time; only the APIs the change touched are built again.
    pub fn publish(&self, state: &Arc<State>) {
        let previous = self.table.load();
        let next = RoutingTable::build(state, &previous, &self.metrics);
        let removed = next.removed;
        self.table.store(Arc::new(next));
        if let Some(certs) = &self.tls {
            let domains = state
                .domains
                .values()
                .filter_map(|d| {
                    let t = d.tls.as_ref()?;
                    let files = tls::PairFiles {
                        cert_file: t.cert_file.clone().into(),
                        key_file: t.key_file.clone().into(),
                    };
                    Some((d.domain.clone(), files))
                })
                .collect();
            certs.set_domains(domains);
        }
        self.publishes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The series of stages and APIs that no longer exist go (a stage's canary series stays while
        // the stage does: its history outlives the canary).
        if removed {
            self.metrics
                .retain(|k| state.apis.get(&k.api).is_some_and(|a| a.stages.contains_key(&k.stage)));
        }
    }

    /// How many routing snapshots have been built and swapped in (one per stored change that touches
    /// routing; a whole config file applied or seeded is one).
    pub fn publishes(&self) -> u64 {
        self.publishes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stage's cache, when it has one enabled.
    pub fn stage_cache(&self, api: &str, stage: &str) -> Option<Arc<StageCache>> {
        self.table.load().api(api)?.stages.get(stage)?.cache.clone()
    }

    pub fn metrics(&self) -> &Arc<Registry> {
        &self.metrics
    }

    pub fn access_log(&self) -> &AccessLog {
        &self.log
    }

    /// Runs the data plane on `workers` threads, each a single-threaded runtime with its own accept
    /// loop on (a clone of) `listener` and its own upstream connection pool, so a request never leaves
    /// the thread that accepted it. Returns when every worker has stopped: after `shutdown` turns true
    /// and in-flight requests finished (up to `drain`).
    pub fn start_workers(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        tls_listener: Option<std::net::TcpListener>,
        workers: usize,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
        listener.set_nonblocking(true)?;
        if let Some(l) = &tls_listener {
            l.set_nonblocking(true)?;
        }
        let acceptor = match (&tls_listener, &self.tls) {
            (Some(_), Some(certs)) => Some(tokio_rustls::TlsAcceptor::from(certs.server_config())),
            (Some(_), None) => return Err(std::io::Error::other("a TLS listener needs certificates (Gateway::with_tls)")),
            _ => None,
        };
        let mut done = Vec::new();
        for i in 0..workers.max(1) {
            let listener = listener.try_clone()?;
            let tls = match (&tls_listener, &acceptor) {
                (Some(l), Some(a)) => Some((l.try_clone()?, a.clone())),
                _ => None,
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let gw = self.clone();
            let shutdown = shutdown.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new().name(format!("canarygate-gw-{i}")).spawn(move || {
                runtime.block_on(async move {
                    let tls = match tls.map(|(l, a)| TcpListener::from_std(l).map(|l| (l, a))).transpose() {
                        Ok(t) => t,
                        Err(e) => return tracing::error!(error = %e, "worker cannot use the TLS listener"),
                    };
                    match TcpListener::from_std(listener) {
                        Ok(l) => gw.serve(l, tls, shutdown, drain).await,
                        Err(e) => tracing::error!(error = %e, "worker cannot use the listener"),
                    }
                });
                drop(runtime);
                let _ = tx.send(());
            })?;
            done.push(rx);
        }
        Ok(async move {
            for rx in done {
                let _ = rx.await;
            }
        })
    }

    /// Serves connections on one worker thread from `listener` until `shutdown` turns true, then lets in-flight requests
    /// finish (up to `drain`).
    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let mut conns = server::connections::Conns::new(self.connections.clone());
        // This thread's upstream pool: close connections idle too long.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                upstream::sweep();
            }
        });
        let mut backoff = server::connections::Backoff::default();
        loop {
            let (accepted, over_tls) = tokio::select! {
                accepted = listener.accept() => (accepted, false),
                accepted = accept_tls(&tls) => (accepted, true),
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                // Another worker took the connection first.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    static ACCEPT_FAILED: log_every::Every = log_every::Every::second();
                    if let Some(left_out) = ACCEPT_FAILED.check() {
                        tracing::warn!(error = %e, left_out, "accept failed");
                    }
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            };
            backoff.succeeded();
            let Some(ctl) = conns.admit(self.limits.max_connections) else {
                static REFUSED: log_every::Every = log_every::Every::second();
                if let Some(left_out) = REFUSED.check() {
                    tracing::warn!(
                        %peer,
                        max_connections = self.limits.max_connections,
                        left_out,
                        "connection refused: server.maxConnections open and none idle"
                    );
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.start(stream, peer, tls.as_ref().filter(|_| over_tls).map(|(_, a)| a), ctl);
        }
        drop(listener);
        conns.close_all();
        drain_for(&conns, drain).await;
    }

    /// Serves an accepted connection in a task of its own: over TLS (HTTP/2 when ALPN chose it) when it
    /// came to the TLS listener (`acceptor`), else plain (HTTP/2 with prior knowledge, or HTTP/1.1).
    fn start(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        acceptor: Option<&tokio_rustls::TlsAcceptor>,
        ctl: Arc<server::connections::ConnCtl>,
    ) {
        match acceptor {
            Some(acceptor) => {
                let (gw, acceptor) = (self.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // The handshake has the head's time limit; a client that stalls in it is dropped.
                    match tokio::time::timeout(gw.limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            server::h2::serve(gw, tls, bytes::Bytes::new(), exchange::Peer::new_tls(peer), ctl).await
                        }
                        Ok(Ok(tls)) => server::serve_connection(gw, tls, exchange::Peer::new_tls(peer), ctl).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            None => {
                tokio::spawn(server::serve_connection(self.clone(), stream, exchange::Peer::new(peer), ctl));
            }
        }
    }
}

/// Waits for the connections in flight to finish, for at most `drain`.
async fn drain_for(conns: &server::connections::Conns, drain: Duration) {
    let deadline = tokio::time::Instant::now() + drain;
    while conns.live() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                connections = conns.live(),
                "in-flight requests did not finish within the drain time"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next connection on the TLS listener, if there is one (else never).
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

//! gRPC through the gateway (PRODUCT.md §11) with a real gRPC client and real gRPC servers (`tonic`):
//! unary, server-streaming and bidirectional calls through both variants to `http2: true` upstreams
//! (over TLS with ALPN `h2` and a test CA, and in cleartext), trailers relayed, a 3 MiB message each
//! way, each call's `grpc-status` counted as the contract says (UNAVAILABLE a 5XXError, INVALID_ARGUMENT a
//! 4XXError) and written to the access log as `grpcStatus`; the gateway's own failures answered as gRPC
//! errors; and a rollout whose alarm watches the canary's 5XXError rolls back a failing gRPC canary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{Stream, StreamExt as _};
use serde_json::json;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(uint32, tag = "3")]
    count: u32,
}

fn msg(text: &str) -> Msg {
    Msg {
        text: text.into(),
        ..Default::default()
    }
}

/// What a test gRPC server shares with its calls.
struct Shared {
    name: &'static str,
    calls: AtomicUsize,
    /// Every unary call fails with UNAVAILABLE while set.
    failing: AtomicBool,
}

type Reply<T> = Pin<Box<dyn std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send>>;
type Replies = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

/// `test.Echo/Unary`: `<name>:<text>` with the data echoed; `unavailable` and `invalid` fail so.
struct Unary(Arc<Shared>);

impl tonic::server::UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = Reply<Msg>;
    fn call(&mut self, r: tonic::Request<Msg>) -> Self::Future {
        let s = self.0.clone();
        Box::pin(async move {
            s.calls.fetch_add(1, Ordering::SeqCst);
            let m = r.into_inner();
            match m.text.as_str() {
                "unavailable" => Err(Status::unavailable("the canary is down")),
                "invalid" => Err(Status::invalid_argument("no such thing")),
                _ if s.failing.load(Ordering::SeqCst) => Err(Status::unavailable("failing on purpose")),
                t => Ok(tonic::Response::new(Msg {
                    text: format!("{}:{t}", s.name),
                    data: m.data,
                    count: 0,
                })),
            }
        })
    }
}

/// `test.Echo/Stream`: `count` messages `<name>:<i>`.
struct ServerStream(Arc<Shared>);

impl tonic::server::ServerStreamingService<Msg> for ServerStream {
    type Response = Msg;
    type ResponseStream = Replies;
    type Future = Reply<Replies>;
    fn call(&mut self, r: tonic::Request<Msg>) -> Self::Future {
        let name = self.0.name;
        Box::pin(async move {
            let n = r.into_inner().count;
            let s: Replies = Box::pin(futures_util::stream::iter((0..n).map(move |i| Ok(msg(&format!("{name}:{i}"))))));
            Ok(tonic::Response::new(s))
        })
    }
}

/// `test.Echo/Chat`: answers each message as it comes, `<name>:<text>`.
struct Chat(Arc<Shared>);

impl tonic::server::StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = Replies;
    type Future = Reply<Replies>;
    fn call(&mut self, r: tonic::Request<tonic::Streaming<Msg>>) -> Self::Future {
        let name = self.0.name;
        Box::pin(async move {
            let s: Replies = Box::pin(r.into_inner().map(move |m| m.map(|m| msg(&format!("{name}:{}", m.text)))));
            Ok(tonic::Response::new(s))
        })
    }
}

async fn serve_call(
    s: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<tonic::codegen::http::Response<tonic::body::Body>, Infallible> {
    let grpc = || {
        tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    };
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => grpc().unary(Unary(s), req).await,
        "/test.Echo/Stream" => grpc().server_streaming(ServerStream(s), req).await,
        "/test.Echo/Chat" => grpc().streaming(Chat(s), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// A gRPC server (HTTP/2: over TLS with ALPN `h2` when given a certificate, else cleartext).
struct GrpcBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcBackend {
    async fn start(name: &'static str, tls: Option<(&Path, &Path)>) -> GrpcBackend {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let acceptor = tls.map(|(pem, key)| {
            use rustls_pki_types::pem::PemObject;
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(pem)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name,
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (sh, acceptor) = (sh.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve_call(sh.clone(), req));
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        GrpcBackend { addr, shared, task }
    }

    fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gRPC client (tonic) whose calls go to `<gateway>/<prefix>/<service>/<method>`.
async fn client_for(gateway: &str, prefix: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(gateway.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::with_origin(channel, format!("{gateway}{prefix}").parse().unwrap())
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

fn request<T>(m: T, force: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Some(v) = force {
        r.metadata_mut().insert("x-canarygate-variant", v.parse().unwrap());
    }
    r
}

async fn unary(g: &mut tonic::client::Grpc<tonic::transport::Channel>, m: Msg, force: Option<&str>) -> Result<(Msg, String), Status> {
    g.ready().await.unwrap();
    let r = g
        .unary(
            request(m, force),
            PathAndQuery::from_static("/test.Echo/Unary"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await?;
    let variant = r.metadata().get("x-canarygate-variant").unwrap().to_str().unwrap().to_string();
    Ok((r.into_inner(), variant))
}

/// API `orders`, stage `prod` (with a canary at 0% when given one): gRPC calls under `/orders/prod/` go to
/// `https://localhost:<port>` (HTTP/2, verified against the test CA) of production or the canary;
/// `/orders/prod/plain/...` to a cleartext HTTP/2 server, `/orders/prod/h1/...` to an HTTP/1.1
/// integration, `/orders/prod/down/...` to a closed port.
async fn setup(c: &reqwest::Client, s: &Server, ca: &Path, prod: SocketAddr, canary: Option<SocketAddr>, plain: SocketAddr) -> String {
    let ca = ca.to_str().unwrap();
    let down = closed_port();
    ok(
        c,
        s,
        "PUT",
        "/v1/apis/orders",
        Some(json!({"routes": [
            {"method": "POST", "path": "/{proxy+}", "integration": {"type": "http", "uri": "https://${stageVariables.backend}/{proxy}", "http2": true, "caFile": ca, "timeoutMs": 5000}},
            {"method": "POST", "path": "/plain/{proxy+}", "integration": {"type": "http", "uri": format!("http://{plain}/{{proxy}}"), "http2": true}},
            {"method": "POST", "path": "/h1/{proxy+}", "integration": {"type": "http", "uri": format!("http://{plain}/{{proxy}}")}},
            {"method": "POST", "path": "/down/{proxy+}", "integration": {"type": "http", "uri": format!("http://{down}/{{proxy}}"), "http2": true}},
        ]})),
    )
    .await;
    let d = ok(c, s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v1"}))).await;
    let id = d["id"].as_str().unwrap().to_string();
    let mut stage = json!({"deploymentId": id, "variables": {"backend": format!("localhost:{}", prod.port())}});
    if let Some(canary) = canary {
        stage["canarySettings"] =
            json!({"percentTraffic": 0.0, "stageVariableOverrides": {"backend": format!("localhost:{}", canary.port())}});
    }
    ok(c, s, "PUT", "/v1/apis/orders/stages/prod", Some(stage)).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_both_variants_with_their_status_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (pem, key) = ca.issue("backend", "localhost");
    let prod = GrpcBackend::start("production", Some((&pem, &key))).await;
    let canary = GrpcBackend::start("canary", Some((&pem, &key))).await;
    let plain = GrpcBackend::start("plain", None).await;
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    setup(&c, &s, &dir.path().join("ca.pem"), prod.addr, Some(canary.addr), plain.addr).await;
    let mut g = client_for(&s.gateway, "/orders/prod").await;

    // Unary, to each variant.
    let (m, v) = unary(&mut g, msg("hi"), None).await.unwrap();
    assert_eq!((m.text.as_str(), v.as_str()), ("production:hi", "production"));
    let (m, v) = unary(&mut g, msg("hi"), Some("canary")).await.unwrap();
    assert_eq!((m.text.as_str(), v.as_str()), ("canary:hi", "canary"));

    // Server streaming: five messages, then the trailers' OK.
    for (force, name) in [(None, "production"), (Some("canary"), "canary")] {
        g.ready().await.unwrap();
        let r = g
            .server_streaming(
                request(Msg { count: 5, ..msg("") }, force),
                PathAndQuery::from_static("/test.Echo/Stream"),
                ProstCodec::<Msg, Msg>::default(),
            )
            .await
            .unwrap();
        let got: Vec<String> = r.into_inner().map(|m| m.unwrap().text).collect().await;
        let want: Vec<String> = (0..5).map(|i| format!("{name}:{i}")).collect();
        assert_eq!(got, want);
    }

    // Bidirectional: each message answered before the next is sent (interleaved both ways).
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    g.ready().await.unwrap();
    let r = g
        .streaming(
            request(outgoing, Some("canary")),
            PathAndQuery::from_static("/test.Echo/Chat"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap();
    let mut incoming = r.into_inner();
    for i in 0..10 {
        tx.send(msg(&format!("m{i}"))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), incoming.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.text, format!("canary:m{i}"));
    }
    drop(tx);
    assert!(
        incoming.message().await.unwrap().is_none(),
        "the stream ends with OK once the client's side ends"
    );

    // 3 MiB each way (flow control on both HTTP/2 hops), and over the cleartext HTTP/2 upstream too.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (m, _) = unary(
        &mut g,
        Msg {
            data: data.clone(),
            ..msg("big")
        },
        None,
    )
    .await
    .unwrap();
    assert!(m.data == data, "the 3 MiB answer differs");
    let mut gp = client_for(&s.gateway, "/orders/prod/plain").await;
    let (m, _) = unary(
        &mut gp,
        Msg {
            data: data.clone(),
            ..msg("big")
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(m.text, "plain:big");
    assert!(m.data == data);

    // The canary's errors, in its trailers (tonic sends them trailers-only): UNAVAILABLE counts as a
    // 5XXError, INVALID_ARGUMENT as a 4XXError.
    let e = unary(&mut g, msg("unavailable"), Some("canary")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unavailable, "the canary is down"));
    let e = unary(&mut g, msg("invalid"), Some("canary")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The gateway's own failures, as gRPC errors: an HTTP/1.1 integration, an upstream that is down,
    // no route.
    let mut gh1 = client_for(&s.gateway, "/orders/prod/h1").await;
    let e = unary(&mut gh1, msg("hi"), None).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("http2: true"), "{e:?}");
    let mut gd = client_for(&s.gateway, "/orders/prod/down").await;
    let e = unary(&mut gd, msg("hi"), None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let mut gn = client_for(&s.gateway, "/nowhere").await;
    let e = unary(&mut gn, msg("hi"), None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert_eq!(plain.calls(), 1, "the HTTP/1.1 integration's call never left the gateway");

    // Metrics: the canary has 1 call of 5 in 5XXError and 1 in 4XXError; production's two 5XXErrors are
    // the gateway's (HTTP/1.1 integration: 500; upstream down: 502).
    assert_eq!(v1_sum(&c, &s, "canary", "Count").await, 5.0);
    assert_eq!(v1_sum(&c, &s, "canary", "5XXError").await, 1.0);
    assert_eq!(v1_sum(&c, &s, "canary", "4XXError").await, 1.0);
    assert_eq!(v1_sum(&c, &s, "production", "Count").await, 6.0);
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 2.0);
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 0.0);

    // The access log: grpcStatus on every call.
    let log = dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 11 {
            break lines;
        }
        assert!(Instant::now() < deadline, "access log: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status_of = |variant: &str, grpc: u64| lines.iter().filter(|l| l["variant"] == variant && l["grpcStatus"] == grpc).count();
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert_eq!(status_of("canary", 0), 3, "{lines:?}");
    assert_eq!(status_of("canary", 14), 1);
    assert_eq!(status_of("canary", 3), 1);
    assert_eq!(status_of("production", 0), 4);
    assert_eq!(status_of("production", 13), 1);
    assert_eq!(status_of("production", 14), 1);
    let down = lines
        .iter()
        .find(|l| l["grpcStatus"] == 14 && l["variant"] == "production")
        .unwrap();
    assert_eq!(down["errorSource"], "upstream", "{down}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_rolls_back_a_failing_grpc_canary() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (pem, key) = ca.issue("backend", "localhost");
    let v1 = GrpcBackend::start("v1", Some((&pem, &key))).await;
    let v2 = GrpcBackend::start("v2", Some((&pem, &key))).await;
    let plain = GrpcBackend::start("plain", None).await;
    v2.shared.failing.store(true, Ordering::SeqCst);
    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    setup(&c, &s, &dir.path().join("ca.pem"), v1.addr, None, plain.addr).await;
    let d2 = ok(&c, &s, "POST", "/v1/apis/orders/deployments", Some(json!({"description": "v2"}))).await;
    canary_plan_and_alarm(&c, &s, "Canary20Percent30Seconds", 30).await;

    // Steady gRPC load: production answers; the canary fails every call with UNAVAILABLE.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gateway, stop) = (s.gateway.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut g = client_for(&gateway, "/orders/prod").await;
            let (mut ok, mut unavailable) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                match unary(&mut g, msg("hi"), None).await {
                    Ok((m, _)) => {
                        assert_eq!(m.text, "v1:hi");
                        ok += 1;
                    }
                    Err(e) => {
                        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                        unavailable += 1;
                    }
                }
            }
            (ok, unavailable)
        }));
    }
    let (status, r) = admin(
        &c,
        &s,
        "POST",
        "/v1/apis/orders/stages/prod/rollouts",
        Some(
            json!({"deploymentId": d2["id"], "stageVariableOverrides": {"backend": format!("localhost:{}", v2.addr.port())},
                    "deploymentConfig": "Canary20Percent30Seconds", "alarms": ["canary-5xx"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let r = wait_rollout(&c, &s, &id, Duration::from_secs(25)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut oks, mut failed) = (0, 0);
    for t in load {
        let (o, f) = t.await.unwrap();
        oks += o;
        failed += f;
    }
    assert_eq!(r["status"], "RolledBack", "{r}");
    let last = r["events"].as_array().unwrap().last().unwrap();
    assert!(last["reason"].as_str().unwrap().contains("canary-5xx"), "{last}");
    assert!(
        v2.calls() > 0 && failed == v2.calls(),
        "every canary call failed: {failed} of {}",
        v2.calls()
    );
    assert!(oks > 0);
    // After the rollback every call is production's again.
    let mut g = client_for(&s.gateway, "/orders/prod").await;
    for _ in 0..20 {
        let (m, v) = unary(&mut g, msg("hi"), None).await.unwrap();
        assert_eq!((m.text.as_str(), v.as_str()), ("v1:hi", "production"));
    }
}

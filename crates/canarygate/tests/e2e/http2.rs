//! HTTP/2 on the client side (PRODUCT.md §11), cleartext with prior knowledge on the plain listener: `curl
//! --http2-prior-knowledge` gets HTTP/2 answers, and 1,000 streams over one connection (a real HTTP/2
//! client, hyper's) are each a request of their own: split at 10% within 4 binomial σ, each counted in
//! the variant's metrics and written to the access log; a stream the client resets mid-answer is charged to
//! the client, not the variant. A raw HTTP/2 client (frames written by hand, as an attacker would) shows
//! that malformed requests — a `content-length` that disagrees with the DATA, `transfer-encoding`, CR, LF
//! or NUL in a field value — never reach the HTTP/1.1 backend, and that the limit on concurrent streams
//! is enforced. (HTTP/2 over TLS with ALPN: tests/tls.rs; gRPC: tests/grpc.rs.)

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_one_prior_knowledge_connection_are_split_and_counted_one_by_one() {
    let f = fixture(10.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();

    // curl, as a user would.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code} %header{x-canarygate-variant}",
        ])
        .arg(format!("http://{addr}/orders/prod/items/1"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(answer.starts_with("2 200 "), "{answer} {}", String::from_utf8_lossy(&out.stderr));
    // The curl request is one of the 1,001 too, on either side.
    let curl_canary = usize::from(answer.ends_with(" canary"));

    // 1,000 streams on one connection, 20 at a time.
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (mut send, next, addr) = (send.clone(), next.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut canary = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 1000 {
                send.ready().await.unwrap();
                let req = hyper::Request::get(format!("http://{addr}/orders/prod/items/2"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                if resp.headers()["x-canarygate-variant"] == "canary" {
                    canary += 1;
                }
                use http_body_util::BodyExt;
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(!body.is_empty());
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    // n = 1000, p = 0.1: σ = 9.5, so within 4σ of 100.
    assert!((62..=138).contains(&canary), "{canary} of 1000 streams to the canary");

    // Each stream is a request of its own in the variant's metrics and in the access log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let canary_count = v1_sum(&f.c, &f.s, "canary", "Count").await;
        let prod_count = v1_sum(&f.c, &f.s, "production", "Count").await;
        let log = std::fs::read_to_string(f.dir.path().join("data/logs/orders/prod.log")).unwrap_or_default();
        let lines = log.lines().count();
        if canary_count as usize == canary + curl_canary && (canary_count + prod_count) as usize == 1001 && lines == 1001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {canary_count} canary + {prod_count} production, {lines} log lines (want {canary} + {curl_canary} canary, 1001 in all)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_resets_is_charged_to_the_client() {
    let f = fixture(0.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A small window: the 4 MB answer cannot all be sent before the client resets the stream.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/orders/prod/big?pad=4000000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Dropping the body before its end resets the stream (RST_STREAM CANCEL).
    drop(resp);

    let log = f.dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line: serde_json::Value = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("/orders/prod/big")) {
            break serde_json::from_str(l).unwrap();
        }
        assert!(Instant::now() < deadline, "no access log line for the reset stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["errorSource"], "client", "{line}");
    assert_eq!(v1_sum(&f.c, &f.s, "production", "5XXError").await, 0.0, "not the variant's error");
    assert_eq!(v1_sum(&f.c, &f.s, "production", "Count").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_before_its_answer_is_logged_as_the_clients() {
    let f = fixture(0.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/orders/prod/late?delay_ms=1000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    // The client gives up before the answer (as a gRPC deadline does): the stream is reset (CANCEL).
    let gave_up = tokio::time::timeout(Duration::from_millis(200), send.send_request(req)).await;
    assert!(gave_up.is_err(), "answered before the client gave up");

    let log = f.dir.path().join("data/logs/orders/prod.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line: serde_json::Value = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("/orders/prod/late")) {
            break serde_json::from_str(l).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the stream reset before its answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["errorSource"], "client", "{line}");
    assert_eq!(v1_sum(&f.c, &f.s, "production", "Count").await, 1.0);
    assert_eq!(v1_sum(&f.c, &f.s, "production", "5XXError").await, 0.0, "not the variant's error");
}

/// A raw HTTP/2 client: frames written by hand (HPACK literals without indexing or Huffman), so it can
/// send what a well-behaved library refuses to.
mod raw {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// An HPACK header block of literal fields (without indexing, names and values as given).
    pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in fields {
            assert!(n.len() < 127 && v.len() < 127);
            b.push(0);
            b.push(n.len() as u8);
            b.extend_from_slice(n);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b
    }

    pub struct Conn {
        pub tcp: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        /// Connects, sends the preface and empty SETTINGS, and acknowledges the server's SETTINGS (so
        /// its limits apply).
        pub async fn open(addr: &str) -> Conn {
            Conn::open_with(addr, &[]).await
        }

        /// As [`Conn::open`], with these SETTINGS (identifier, value).
        pub async fn open_with(addr: &str, settings: &[(u16, u32)]) -> Conn {
            let mut c = Conn {
                tcp: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
            };
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            let payload: Vec<u8> = settings
                .iter()
                .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
                .collect();
            frame(&mut out, SETTINGS, 0, 0, &payload);
            c.tcp.write_all(&out).await.unwrap();
            loop {
                let (kind, flags, _, _) = c.next().await.expect("the server's SETTINGS");
                if kind == SETTINGS && flags & 1 == 0 {
                    break;
                }
            }
            let mut ack = Vec::new();
            frame(&mut ack, SETTINGS, 1, 0, &[]);
            c.tcp.write_all(&ack).await.unwrap();
            c
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.tcp.write_all(bytes).await.unwrap();
        }

        /// The next frame: (type, flags, stream, payload); `None` when the connection closed.
        pub async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
            read_frame(&mut self.tcp, &mut self.buf, std::time::Duration::from_secs(10)).await
        }

        /// The connection's two directions: frames to read, bytes to write.
        pub fn split(self) -> (Reader, tokio::net::tcp::OwnedWriteHalf) {
            let (rd, wr) = self.tcp.into_split();
            (Reader { rd, buf: self.buf }, wr)
        }
    }

    /// The read half of a split [`Conn`].
    pub struct Reader {
        rd: tokio::net::tcp::OwnedReadHalf,
        buf: Vec<u8>,
    }

    impl Reader {
        /// The next frame within `wait`; `None` when the connection closed.
        pub async fn next(&mut self, wait: std::time::Duration) -> Option<(u8, u8, u32, Vec<u8>)> {
            read_frame(&mut self.rd, &mut self.buf, wait).await
        }
    }

    async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
        rd: &mut R,
        buf: &mut Vec<u8>,
        wait: std::time::Duration,
    ) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() >= 9 + len {
                    let f: Vec<u8> = buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(wait, rd.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("a frame within {wait:?}"))
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    impl Conn {
        /// How stream `id` ended: `Err(code)` for a RST_STREAM (or GOAWAY) with that error code,
        /// `Ok(first byte of the response's header block)` for a response.
        pub async fn outcome(&mut self, id: u32) -> Result<u8, u32> {
            while let Some((kind, _, stream, payload)) = self.next().await {
                match kind {
                    RST_STREAM if stream == id => return Err(u32::from_be_bytes(payload[..4].try_into().unwrap())),
                    GOAWAY => return Err(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                    HEADERS if stream == id => return Ok(payload[0]),
                    _ => {}
                }
            }
            panic!("the connection closed before stream {id} ended");
        }
    }
}

fn request_fields<'a>(method: &'a [u8], path: &'a [u8], extra: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
    let mut f: Vec<(&[u8], &[u8])> = vec![
        (b":method", method),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"gw"),
    ];
    f.extend_from_slice(extra);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_never_reach_an_http1_backend() {
    let f = fixture(0.0, json!({})).await;
    let addr = f.s.gateway.trim_start_matches("http://").to_string();
    use raw::*;
    // Each case on its own connection, the whole request in one write.
    type Case<'a> = (&'a str, Vec<(&'a [u8], &'a [u8])>, Option<&'a [u8]>);
    let cases: Vec<Case<'_>> = vec![
        ("content-length above the DATA", vec![(b"content-length", b"10")], Some(b"short")),
        (
            "content-length below the DATA",
            vec![(b"content-length", b"2")],
            Some(b"longer body"),
        ),
        (
            "transfer-encoding",
            vec![(b"transfer-encoding", b"chunked")],
            Some(b"5\r\nhello\r\n0\r\n\r\n"),
        ),
        ("CR LF in a value", vec![(b"x-note", b"a\r\nx-injected: 1")], None),
        ("LF in a value", vec![(b"x-note", b"a\nb")], None),
        ("NUL in a value", vec![(b"x-note", b"a\0b")], None),
        ("connection field", vec![(b"connection", b"close")], None),
    ];
    for (what, extra, body) in cases {
        let mut c = Conn::open(&addr).await;
        let mut out = Vec::new();
        let fields = request_fields(b"POST", b"/orders/prod/strict", &extra);
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        frame(&mut out, HEADERS, flags, 1, &block(&fields));
        if let Some(b) = body {
            frame(&mut out, DATA, END_STREAM, 1, b);
        }
        c.send(&out).await;
        let outcome = c.outcome(1).await;
        // 0x88 is `:status: 200` (static table index 8): the one answer that must not come.
        assert_ne!(outcome, Ok(0x88), "{what}: answered 200");
        assert_eq!(f.prod.calls(), 0, "{what}: reached the backend ({outcome:?})");
    }
    // A well-formed request on the same path does reach it (the cases above were refused for their form).
    let mut c = Conn::open(&addr).await;
    let mut out = Vec::new();
    frame(
        &mut out,
        HEADERS,
        END_HEADERS,
        1,
        &block(&request_fields(b"POST", b"/orders/prod/strict", &[(b"content-length", b"5")])),
    );
    frame(&mut out, DATA, END_STREAM, 1, b"hello");
    c.send(&out).await;
    assert_eq!(c.outcome(1).await, Ok(0x88));
    assert_eq!(f.prod.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_on_concurrent_streams_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("canarygate.yaml");
    std::fs::write(&cfg, "server:\n  http2:\n    maxConcurrentStreams: 4\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    let c = client();
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, json!({})).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    use raw::*;

    // A raw client that ignores the limit: four slow streams open, the fifth is refused (REFUSED_STREAM).
    let mut c5 = Conn::open(&addr).await;
    let mut out = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        frame(
            &mut out,
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &block(&request_fields(b"GET", b"/orders/prod/slow?delay_ms=1500", &[])),
        );
    }
    c5.send(&out).await;
    assert_eq!(c5.outcome(9).await, Err(7), "the fifth stream is refused with REFUSED_STREAM");
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 4 {
        let (kind, _, stream, payload) = c5.next().await.expect("the four streams' answers");
        if kind == HEADERS {
            assert_eq!(payload[0], 0x88, "stream {stream} answered 200");
            answered.insert(stream);
        }
        assert_ne!(kind, RST_STREAM, "stream {stream} reset");
    }
    assert_eq!(answered.into_iter().collect::<Vec<_>>(), [1, 3, 5, 7]);

    // A client that keeps to it (hyper's) queues its streams: 12 slow requests, never more than 4 at once
    // at the backend.
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // One request first: by its answer the client has the server's SETTINGS (before them it may
    // assume no limit, as the protocol allows).
    let mut first = send.clone();
    let req = hyper::Request::get(format!("http://{addr}/orders/prod/first"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(first.send_request(req).await.unwrap().status(), 200);
    prod.peak.store(0, std::sync::atomic::Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (mut send, addr) = (send.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let req = hyper::Request::get(format!("http://{addr}/orders/prod/slow?delay_ms=300"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let peak = prod.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=4).contains(&peak), "{peak} requests at once at the backend");
}

/// A raw HTTP/1.1 upstream that counts the calls it has in progress (by connection, so a call the
/// gateway gives up on ends when its connection closes). By path: `/hang` never answers, `/stream`
/// answers with an endless body written as fast as the gateway takes it, `/slow` answers after 1.5 s.
struct RawUpstream {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        use std::sync::atomic::Ordering::SeqCst;
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, p) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (open, peak) = (o.clone(), p.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    peak.fetch_max(open.fetch_add(1, SeqCst) + 1, SeqCst);
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                    if line.contains("/stream") {
                        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000000\r\n\r\n").await;
                        let piece = vec![b's'; 16384];
                        while tcp.write_all(&piece).await.is_ok() {}
                    } else if line.contains("/slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow")
                            .await;
                    } else {
                        // Hang until the gateway closes the connection.
                        while matches!(tcp.read(&mut chunk).await, Ok(n) if n > 0) {}
                    }
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
        RawUpstream { addr, open, peak }
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no call is in progress (the gateway closed every connection), or fails naming how
    /// many are left.
    async fn wait_all_ended(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.open() > 0 {
            assert!(Instant::now() < deadline, "{} upstream calls still open: {what}", self.open());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A gateway with this config, the API's both variants on `up`.
async fn gateway_over(up: &RawUpstream, config: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_config(dir.path(), config);
    setup_split(&client(), &s, up.addr, up.addr, 0.0, json!({})).await;
    (dir, s)
}

/// HEADERS frames opening `n` GET streams from `first` (odd ids, two apart) on `path`.
fn open_streams(first: u32, n: u32, path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        raw::frame(
            &mut out,
            raw::HEADERS,
            raw::END_HEADERS | raw::END_STREAM,
            first + 2 * i,
            &raw::block(&request_fields(b"GET", path, &[])),
        );
    }
    out
}

const NO_ERROR: u32 = 0;
const CANCEL: u32 = 8;
const ENHANCE_YOUR_CALM: u32 = 11;

/// Reads frames until a GOAWAY (its error code) or until the connection closes (`None`).
async fn goaway(r: &mut raw::Reader, wait: Duration) -> Option<u32> {
    while let Some((kind, _, _, payload)) = r.next(wait).await {
        if kind == raw::GOAWAY {
            return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
    None
}

/// The classic rapid reset, and its slower cousin that the `h2` crate alone does not count: streams
/// opened, left at work for 0.1 s, then reset. Each reset drops its request's upstream call, so the
/// upstream never has more calls than `maxConcurrentStreams` in progress, and the connection is sent
/// GOAWAY ENHANCE_YOUR_CALM once the resets pass the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_streams_cancel_their_upstream_calls_and_a_reset_flood_gets_goaway() {
    use tokio::io::AsyncWriteExt as _;
    let up = RawUpstream::start().await;
    let (_dir, s) = gateway_over(&up, "server:\n  http2:\n    maxConcurrentStreams: 128\n").await;
    let addr = s.gateway.trim_start_matches("http://").to_string();

    let (mut reader, mut wr) = raw::Conn::open(&addr).await.split();
    let told = tokio::spawn(async move { goaway(&mut reader, Duration::from_secs(30)).await });
    let mut next = 1;
    let mut rounds = 0;
    for _ in 0..40 {
        let first = next;
        next += 2 * 120;
        if wr.write_all(&open_streams(first, 120, b"/orders/prod/hang")).await.is_err() {
            break;
        }
        // The attack's shape: the streams are at work for a moment, then reset.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut rst = Vec::new();
        for id in (first..next).step_by(2) {
            raw::frame(&mut rst, raw::RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        }
        rounds += 1;
        if wr.write_all(&rst).await.is_err() || told.is_finished() {
            break;
        }
    }
    let code = told.await.unwrap();
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "after {rounds} rounds of 120 reset streams");
    assert!(rounds < 40, "GOAWAY came only after all {rounds} rounds");
    let peak = up.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=128).contains(&peak),
        "{peak} upstream calls in progress at once (maxConcurrentStreams 128)"
    );
    drop(wr);
    up.wait_all_ended("after the reset streams and the GOAWAY").await;

    // Every other client is still served.
    let r = client().get(format!("{}/orders/prod/version", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The resets are the client's: counted as its 4XXError (499), never as the variant's 5XXError.
    let c = client();
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 0.0);
    assert!(v1_sum(&c, &s, "production", "4XXError").await >= 120.0);
}

/// Deadlines, each ending with a GOAWAY: a connection with no open stream (idle), one whose header
/// block never ends (head); a stream whose client gives it no window (send) is reset and its upstream
/// call ends. A stream at work keeps its connection from being idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unfinished_and_unread_http2_connections_meet_their_deadlines() {
    let up = RawUpstream::start().await;
    let config = "server:\n  http2:\n    idleTimeoutSeconds: 1\n    headTimeoutSeconds: 1\n    sendTimeoutSeconds: 1\n";
    let (_dir, s) = gateway_over(&up, config).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();

    // Idle: GOAWAY NO_ERROR, then closed.
    let (mut idle, _w1) = raw::Conn::open(&addr).await.split();
    assert_eq!(goaway(&mut idle, Duration::from_secs(10)).await, Some(NO_ERROR), "idle connection");
    assert_eq!(goaway(&mut idle, Duration::from_secs(10)).await, None, "closed after its GOAWAY");

    // A header block that never ends: HEADERS without END_HEADERS, no CONTINUATION.
    let mut c = raw::Conn::open(&addr).await;
    let mut out = Vec::new();
    raw::frame(
        &mut out,
        raw::HEADERS,
        raw::END_STREAM,
        1,
        &raw::block(&request_fields(b"GET", b"/orders/prod/x", &[])),
    );
    c.send(&out).await;
    let (mut head, _w2) = c.split();
    assert!(
        goaway(&mut head, Duration::from_secs(10)).await.is_some(),
        "a GOAWAY for the unfinished head"
    );
    assert_eq!(goaway(&mut head, Duration::from_secs(10)).await, None, "closed after its GOAWAY");
    assert_eq!(
        up.peak.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the unfinished request never went upstream"
    );

    // A stream at work for longer than the idle timeout is answered.
    let mut busy = raw::Conn::open(&addr).await;
    busy.send(&open_streams(1, 1, b"/orders/prod/slow")).await;
    assert_eq!(busy.outcome(1).await, Ok(0x88), "the slow stream is answered 200");

    // A client that gives no window (SETTINGS_INITIAL_WINDOW_SIZE 0): the head is sent, the body cannot
    // be; after the send timeout the stream is reset (CANCEL) and the upstream call ends.
    let mut zero = raw::Conn::open_with(&addr, &[(0x4, 0)]).await;
    zero.send(&open_streams(1, 1, b"/orders/prod/stream")).await;
    assert_eq!(zero.outcome(1).await, Ok(0x88), "the head goes out");
    let reset = loop {
        let (kind, _, stream, payload) = zero.next().await.expect("a RST_STREAM for the unread stream");
        assert_ne!(kind, raw::DATA, "DATA sent without a window");
        if kind == raw::RST_STREAM && stream == 1 {
            break u32::from_be_bytes(payload[..4].try_into().unwrap());
        }
    };
    assert_eq!(reset, CANCEL);
    up.wait_all_ended("after the zero-window stream was reset").await;
}

/// Ten connections of 100 streams, each an endless answer, to a client that opens a large window and
/// never reads: each stream at work holds at most `sendBufferBytes` (64 KiB) waiting for the client
/// plus 128 KiB (its upstream read buffer, up to 64 KiB, and the piece in hand), so the gateway grows by
/// at most 192 KiB a stream (docs/operations.md), plus a fixed allowance for the connections themselves. Before the bound: 0.54 MiB a
/// stream, 555 MiB for the same frames. (The connections stop taking new streams once the unread bytes
/// fill the buffers on the way, so fewer than 1,000 reach the upstream.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_to_a_client_that_never_reads_hold_bounded_memory() {
    let up = RawUpstream::start().await;
    let (_dir, s) = gateway_over(&up, "server:\n  http2:\n    maxConcurrentStreams: 100\n").await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    let pid = s.child.id();
    let before = rss_kib(pid);
    let mut conns = Vec::new();
    for _ in 0..10 {
        // The largest stream window there is, and the connection's window opened as far.
        let mut c = raw::Conn::open_with(&addr, &[(0x4, 0x7fff_ffff)]).await;
        let mut out = Vec::new();
        raw::frame(&mut out, raw::WINDOW_UPDATE, 0, 0, &(0x7fff_ffff - 65_535u32).to_be_bytes());
        out.extend(open_streams(1, 100, b"/orders/prod/stream"));
        c.send(&out).await;
        conns.push(c);
    }
    // The streams reach the upstream until the clients' unread bytes fill every buffer on the way:
    // then the connections stop taking frames (HTTP/2's own back-pressure). Wait for that: no new call
    // upstream for a second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut seen, mut still) = (0, 0);
    while still < 20 {
        assert!(Instant::now() < deadline, "the calls upstream never settled ({seen})");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = up.open();
        (seen, still) = if now == seen { (seen, still + 1) } else { (now, 0) };
    }
    assert!(seen >= 100, "only {seen} streams reached the upstream");
    // Every stream's answer is flowing into buffers nobody reads; look at the gateway for two seconds.
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Streams that reached the upstream while the gateway was looked at count too.
    let seen = seen.max(up.open());
    let grown_mib = most.saturating_sub(before) / 1024;
    eprintln!("RSS {before} KiB before, at most {most} KiB with {seen} unread streams at work (+{grown_mib} MiB)");
    // Per stream at work, the documented bound; beside it, a fixed 16 MiB for what is not per stream
    // (the ten connections' own buffers, the allocator's arenas for the threads at work).
    let bound_mib = seen as u64 * (64 + 128) / 1024 + 16;
    assert!(
        grown_mib < bound_mib,
        "the gateway grew by {grown_mib} MiB holding {seen} unread streams (bound {bound_mib} MiB)"
    );
    drop(conns);
    up.wait_all_ended("after the clients went away").await;
}

/// What real clients send and nginx and HAProxy serve is served: `curl --http2` on `http://` offers an
/// h2c upgrade (`Upgrade: h2c`, `HTTP2-Settings`), which is ignored — the request is answered over
/// HTTP/1.1 and the backend sees neither field; raw `"`, `<`, `>`, `|`, `\`, `^`, `` ` `` in a target
/// reach the backend percent-encoded, each request framed on its own (a pipelined one after it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_ignored_and_sloppy_targets_are_served() {
    let f = fixture(0.0, json!({})).await;
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-D", "-", "-w", "\n%{http_version}"])
        .arg(format!("{}/orders/prod/h2c", f.s.gateway))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.ends_with("\n1.1"), "{text}");
    let body: serde_json::Value = serde_json::from_str(text.lines().rev().nth(1).unwrap()).unwrap();
    assert_eq!(body["path"], "/h2c");
    assert!(body["headers"].get("upgrade").is_none(), "{body}");
    assert!(body["headers"].get("http2-settings").is_none(), "{body}");

    // A space in a target is still refused.
    let all = pipelined(
        &f.s.gateway,
        b"GET /orders/prod/s?q=\"a b\" HTTP/1.1\r\nhost: x\r\n\r\nGET /orders/prod/next HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(all.starts_with("HTTP/1.1 400") && !all.contains("HTTP/1.1 200"), "{all}");
    let all = pipelined(
        &f.s.gateway,
        b"GET /orders/prod/s?q=\"a\"&t=<x>|y HTTP/1.1\r\nhost: x\r\n\r\nGET /orders/prod/p\\q^r`s HTTP/1.1\r\nhost: x\r\n\r\nGET /orders/prod/next HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(all.matches("HTTP/1.1 200").count(), 3, "{all}");
    let bodies: Vec<serde_json::Value> = all
        .split("\r\n\r\n")
        .filter_map(|part| part.split("HTTP/1.1").next())
        .filter_map(|b| serde_json::from_str(b.trim()).ok())
        .collect();
    let seen: Vec<(String, String)> = bodies
        .iter()
        .map(|b| {
            (
                b["path"].as_str().unwrap_or("").to_string(),
                b["query"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("/s".to_string(), "q=%22a%22&t=%3Cx%3E%7Cy".to_string()),
            ("/p%5Cq%5Er%60s".to_string(), String::new()),
            ("/next".to_string(), String::new()),
        ]
    );
}

/// Writes `bytes` on a new connection to the gateway and reads everything until it closes.
async fn pipelined(gateway: &str, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(gateway.trim_start_matches("http://")).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut all = Vec::new();
    tcp.read_to_end(&mut all).await.unwrap();
    String::from_utf8_lossy(&all).to_string()
}

/// `server.maxConnections` and the open-file limit: under `ulimit -n 1024` (soft and hard), 1,100 idle
/// HTTP/2 connections held by one client do not stop service — past the cap (384 by default here) a
/// new connection takes the place of the oldest idle one — and a normal client is served; connections
/// that are all busy (unfinished heads) leave a new one refused at once. The log stays quiet about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_make_room_and_busy_ones_refuse_new_ones() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("canarygate.yaml");
    std::fs::write(&cfg, "server:\n  headerReadTimeoutSeconds: 3\n").unwrap();
    let s = Server::start_with_open_files(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[], Some(1024));
    let c = client();
    let (prod, canary) = (
        Backend::start("production", Behaviour::Echo).await,
        Backend::start("canary", Behaviour::Echo).await,
    );
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, json!({})).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    let log_lines = || std::fs::read_to_string(&s.stderr_log).unwrap_or_default().lines().count();
    let started = std::fs::read_to_string(&s.stderr_log).unwrap_or_default();
    assert!(started.contains("max_connections=384"), "{started}");

    let lines_before = log_lines();
    let mut held = Vec::new();
    for _ in 0..1100 {
        held.push(raw::Conn::open(&addr).await);
    }
    // A normal client, on a new connection, is served.
    for _ in 0..3 {
        let r = client().get(format!("{}/orders/prod/normal", s.gateway)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{series} in /metrics"))
    };
    // The evicted ones close (GOAWAY) as soon as they are told.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = prometheus_text(&c, &s).await;
        let open = value(&text, "canarygate_client_connections ");
        if open <= 386.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "{open} client connections open (cap 384)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        value(&text, "canarygate_client_connections_closed_total{why=\"evicted\"} ") >= 700.0,
        "{text}"
    );
    drop(held);

    // Connections at work (each in the middle of its head) cannot be evicted: past the cap a new one
    // is closed at once.
    let mut busy = Vec::new();
    for _ in 0..390 {
        let mut t = tokio::net::TcpStream::connect(&addr).await.unwrap();
        t.write_all(b"GET /orders/prod/x HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        busy.push(t);
    }
    let mut refused = 0;
    for t in busy.iter_mut().rev().take(20) {
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), t.read(&mut [0u8; 64])).await {
            refused += 1;
        }
    }
    assert!(refused >= 1, "no connection past the cap was closed at once");
    let text = prometheus_text(&c, &s).await;
    let refused_total: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("canarygate_client_connections_closed_total{why=\"refused\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(refused_total >= 1.0, "{text}");
    // The log said little about all this.
    let said = log_lines() - lines_before;
    assert!(said <= 10, "{said} log lines about 1,500 connections");
}

async fn prometheus_text(c: &reqwest::Client, s: &Server) -> String {
    c.get(format!("{}/metrics", s.admin)).send().await.unwrap().text().await.unwrap()
}

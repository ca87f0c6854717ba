//! HTTP/2 on the client side (PRODUCT.md §11), cleartext with prior knowledge on the plain listener: `curl
//! --http2-prior-knowledge` gets HTTP/2 answers, and 1,000 streams over one connection (a real HTTP/2
//! client, hyper's) are each a request of their own: split at 10% within 4 binomial σ, each counted in
//! the variant's metrics and written to the access log; a stream the client resets mid-answer is charged to
//! the client, not the variant. A raw HTTP/2 client (frames written by hand, as an attacker would) shows
//! that malformed requests — a `content-length` that disagrees with the DATA, `transfer-encoding`, CR, LF
//! or NUL in a field value — never reach the HTTP/1.1 backend, and that the limit on concurrent streams
//! is enforced. (HTTP/2 over TLS with ALPN: tests/tls.rs; gRPC: tests/grpc.rs.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
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
            let mut c = Conn {
                tcp: TcpStream::connect(addr).await.unwrap(),
                buf: Vec::new(),
            };
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            frame(&mut out, SETTINGS, 0, 0, &[]);
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
            loop {
                if self.buf.len() >= 9 {
                    let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                    if self.buf.len() >= 9 + len {
                        let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                        let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                        return Some((f[3], f[4], stream, f[9..].to_vec()));
                    }
                }
                let mut chunk = [0u8; 16384];
                let n = tokio::time::timeout(std::time::Duration::from_secs(10), self.tcp.read(&mut chunk))
                    .await
                    .expect("a frame within 10 s")
                    .unwrap_or(0);
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

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

//! HTTP/2 on the client side, on the `h2` crate directly: over TLS when ALPN chose `h2`, and in
//! cleartext with prior knowledge on the plain listener (a connection that opens with the HTTP/2
//! preface). Every stream is a request of its own through [`crate::proxy::request::handle`]: its own variant
//! choice, metrics, access log line and span.
//!
//! The `h2` crate keeps HTTP/2's framing rules: a `content-length` that disagrees with the DATA frames,
//! connection-specific fields (`transfer-encoding`, `connection`, ...) and malformed pseudo-headers are
//! stream or connection errors, never forwarded; field values cannot hold CR, LF or NUL.
//!
//! Bounded under abuse (what nginx and HAProxy do for the same frames):
//! - A stream's work is tied to the stream: a client's `RST_STREAM` drops its request at once, the
//!   upstream call with it (its connection is closed), and it is recorded as the client's (status 499).
//!   At most `maxConcurrentStreams` requests of a connection are at work at any moment, whatever the
//!   client resets: a stream waits for the slot of a reset one to be given back.
//! - A connection whose client resets more than [`Http2Limits::reset_budget`] streams in
//!   [`RESET_WINDOW`] is sent GOAWAY `ENHANCE_YOUR_CALM` and closed (the "rapid reset" attack, CVE-2023-44487).
//! - Deadlines, each with a GOAWAY: `idle` (no open stream), `head` (a HEADERS frame whose header block
//!   has not ended: CONTINUATION never comes), `send` (a stream that gets no flow-control window, or
//!   whose bytes the client does not take, is reset with `CANCEL` and its upstream call ends).
//! - Memory: each stream holds at most `sendBufferBytes` of response waiting for the client's window,
//!   plus the one upstream read in hand.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::exchange::{Ending, Peer};
use crate::proxy::request::{self, Finish};
use crate::server::connections::ConnCtl;
use crate::Gateway;

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The window over which a connection's client resets are counted.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Limits of an HTTP/2 connection (`server.http2`).
#[derive(Debug, Clone, Copy)]
pub struct Http2Limits {
    /// Streams a client may have open at once, and requests of a connection at work at once.
    pub max_concurrent_streams: u32,
    /// Largest header list a client may send (RFC 9113 §6.5.2, uncompressed), bytes.
    pub max_header_list_bytes: u32,
    /// Flow-control window of each stream, bytes.
    pub stream_window: u32,
    /// Flow-control window of the connection, bytes.
    pub connection_window: u32,
    /// Response bytes a stream may hold waiting for the client's window, bytes.
    pub send_buffer_bytes: u32,
    /// A connection with no open stream for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// A header block (HEADERS and its CONTINUATIONs) must end within this long.
    pub head_timeout: Duration,
    /// A stream whose client gives no window or takes no bytes for this long is reset.
    pub send_timeout: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 128,
            max_header_list_bytes: 64 * 1024,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            send_buffer_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl Http2Limits {
    /// Streams a client may reset within [`RESET_WINDOW`] before its connection is closed with
    /// `ENHANCE_YOUR_CALM`: twice the concurrent streams, at least 100 (a gRPC client cancelling calls
    /// now and then never comes near it).
    pub fn reset_budget(&self) -> u32 {
        self.max_concurrent_streams.saturating_mul(2).max(100)
    }
}

/// What a connection's streams and its reader tell the connection's task.
struct Shared {
    /// Streams accepted and not yet finished.
    open: AtomicUsize,
    /// Streams the client reset before their response ended, in the connection's life.
    resets: AtomicU32,
    /// A header block has begun and not ended (seen by [`HeadWatch`] as frames are read).
    head_open: AtomicBool,
    /// The connection's task, to wake when a stream ends or is reset.
    task: AtomicWaker,
    /// Requests at work: one permit each.
    slots: Arc<Semaphore>,
}

impl Shared {
    fn stream_ended(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.task.wake();
        }
    }

    fn client_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.task.wake();
    }
}

/// Why a connection's accept loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The client closed it, or it failed.
    Closed,
    Idle,
    Head,
    /// Too many resets: GOAWAY ENHANCE_YOUR_CALM.
    Calm,
    /// The worker is shutting down, or the connection was evicted.
    Closing,
}

/// Serves an HTTP/2 connection until it closes, times out, or the worker shuts down (then it stops
/// taking new streams and lets the open ones finish). `read` is what was already read from `io` (a
/// plain connection's preface and what followed it).
pub(crate) async fn serve<S>(gw: Arc<Gateway>, io: S, read: Bytes, peer: Peer, ctl: Arc<ConnCtl>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = gw.limits.http2;
    let shared = Arc::new(Shared {
        open: AtomicUsize::new(0),
        resets: AtomicU32::new(0),
        head_open: AtomicBool::new(false),
        task: AtomicWaker::new(),
        slots: Arc::new(Semaphore::new(limits.max_concurrent_streams as usize)),
    });
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_bytes)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_send_buffer_size(limits.send_buffer_bytes as usize);
    let io = HeadWatch::new(read, io, shared.clone());
    let mut conn = match tokio::time::timeout(limits.head_timeout, builder.handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return tracing::debug!(peer = %peer.addr, error = %e, "HTTP/2 handshake failed"),
        Err(_) => return tracing::debug!(peer = %peer.addr, "HTTP/2 handshake timed out"),
    };
    // The streams at work run in this task, not a task each (a spawned task's future was copied
    // several times on its way into the task and out of it). Each boxed: a stream's future (over a
    // KiB) is copied once, into its box, where the set would copy it three times on its way in.
    let mut streams = FuturesUnordered::new();
    let start = |req, respond| {
        shared.open.fetch_add(1, Ordering::AcqRel);
        Box::pin(stream(gw.clone(), req, respond, peer.clone(), shared.clone()))
    };
    let mut watch = Deadlines::new(limits);
    let stop = poll_fn(|cx| {
        if let Poll::Ready(ended) = run(&mut conn, &mut streams, start, cx) {
            if let Err(e) = ended {
                tracing::debug!(peer = %peer.addr, error = %e, "HTTP/2 connection ended with an error");
            }
            return Poll::Ready(Stop::Closed);
        }
        if ctl.poll_closing(cx).is_ready() {
            return Poll::Ready(Stop::Closing);
        }
        ctl.set_idle(shared.open.load(Ordering::Acquire) == 0);
        shared.task.register(cx.waker());
        watch.poll(cx, &shared)
    })
    .await;
    // The GOAWAY goes out; streams the client opened before it are still served, the open ones end.
    // A connection that closed has its streams end too (they see it as a reset), within the head
    // timeout.
    let grace = goodbye(stop, &mut conn, &shared, &ctl, &peer, limits);
    let mut conn = grace.map(|_| conn);
    let drained = poll_fn(|cx| {
        if conn.as_mut().is_some_and(|c| run(c, &mut streams, start, cx).is_ready()) {
            conn = None;
        }
        if conn.is_none() {
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        }
        match conn.is_none() && streams.is_empty() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    });
    let _ = tokio::time::timeout(grace.unwrap_or(limits.head_timeout), drained).await;
}

/// Drives the connection and its streams until neither can go on now: the streams that were woken
/// first (what they send goes out with the connection's poll that follows), then the connection,
/// whose new streams start at once. Ready when the connection has ended (`Err` when it failed).
fn run<T, F>(
    conn: &mut h2::server::Connection<T, Bytes>,
    streams: &mut FuturesUnordered<F>,
    start: impl Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Error>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    loop {
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        let mut opened = false;
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams.push(start(req, respond));
                    opened = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        if !opened {
            return Poll::Pending;
        }
    }
}

/// Says goodbye to the client as `stop` calls for (a GOAWAY, gracefully or not); how long the streams
/// left may still run, `None` when the connection is gone already.
fn goodbye<T>(
    stop: Stop,
    conn: &mut h2::server::Connection<T, Bytes>,
    shared: &Shared,
    ctl: &ConnCtl,
    peer: &Peer,
    limits: Http2Limits,
) -> Option<Duration>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let grace = match stop {
        Stop::Closed => return None,
        Stop::Calm => {
            static CALM: crate::log_every::Every = crate::log_every::Every::second();
            if let Some(left_out) = CALM.check() {
                let resets = shared.resets.load(Ordering::Relaxed);
                tracing::warn!(peer = %peer.addr, resets, left_out, "HTTP/2 client reset too many streams: GOAWAY ENHANCE_YOUR_CALM");
            }
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            limits.head_timeout
        }
        Stop::Idle | Stop::Head => {
            tracing::debug!(peer = %peer.addr, why = ?stop, "HTTP/2 connection timed out: GOAWAY");
            conn.graceful_shutdown();
            limits.head_timeout
        }
        Stop::Closing if ctl.evicted() => {
            // Closed to make room for a new connection: it had no open stream, nothing to wait for.
            conn.abrupt_shutdown(Reason::NO_ERROR);
            limits.head_timeout
        }
        Stop::Closing => {
            conn.graceful_shutdown();
            // The worker's drain time bounds this.
            Duration::MAX
        }
    };
    Some(grace)
}

/// The connection's deadlines (idle, head) and its reset budget, checked each time its task is woken.
struct Deadlines {
    limits: Http2Limits,
    timer: Pin<Box<Sleep>>,
    idle_since: Option<Instant>,
    head_since: Option<Instant>,
    window_start: Instant,
    window_base: u32,
}

impl Deadlines {
    fn new(limits: Http2Limits) -> Deadlines {
        let now = Instant::now();
        Deadlines {
            limits,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            idle_since: None,
            head_since: None,
            window_start: now,
            window_base: 0,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<Stop> {
        let resets = shared.resets.load(Ordering::Relaxed);
        if resets != self.window_base {
            let now = Instant::now();
            if now.duration_since(self.window_start) >= RESET_WINDOW {
                self.window_start = now;
                self.window_base = resets;
            } else if resets - self.window_base > self.limits.reset_budget() {
                return Poll::Ready(Stop::Calm);
            }
        }
        let head_open = shared.head_open.load(Ordering::Acquire);
        if head_open != self.head_since.is_some() {
            self.head_since = head_open.then(Instant::now);
        }
        let idle = shared.open.load(Ordering::Acquire) == 0;
        if idle != self.idle_since.is_some() {
            self.idle_since = idle.then(Instant::now);
        }
        let due = match (self.head_since, self.idle_since) {
            (Some(at), _) => (at + self.limits.head_timeout, Stop::Head),
            (None, Some(at)) => (at + self.limits.idle_timeout, Stop::Idle),
            (None, None) => return Poll::Pending,
        };
        if self.timer.deadline() != due.0 {
            self.timer.as_mut().reset(due.0);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(due.1),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One stream: the request through the handler (dropped if the client resets the stream first), then
/// its response sent as the client's window allows.
async fn stream(gw: Arc<Gateway>, mut req: Request<RecvStream>, mut respond: SendResponse<Bytes>, peer: Peer, shared: Arc<Shared>) {
    struct Open<'a>(&'a Shared);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.stream_ended();
        }
    }
    let _open = Open(&shared);
    // HTTP/2 carries the host in `:authority` (the URI); the handler and upstreams read `Host`.
    if !req.headers().contains_key(header::HOST) {
        if let Some(a) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    let head = req.method() == Method::HEAD;
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let req = req.map(|rx| Incoming {
        rx,
        length,
        data_done: false,
    });
    // Boxed: the request's future is large (several KiB), and the stream's is copied whole into the
    // connection's set of streams: boxed, the stream's own future is small and the request's is
    // copied once.
    let work = Box::pin(async {
        // A slot of the connection's, given back when this stream's work is dropped.
        let _slot = shared.slots.clone().acquire_owned().await;
        request::handle(&gw, req, None, &peer).await
    });
    let answered = until_reset(&mut respond, work).await;
    let Some((reply, marks, finish)) = answered else {
        // Reset before the answer: the request's work is dropped; the handler recorded it.
        return shared.client_reset();
    };
    // An HTTP/2 client's reply has its fields in its map already (see `proxy::serve`).
    let resp = reply
        .into_response()
        .unwrap_or_else(|e| crate::error::ProxyError::Upstream(e.to_string()).response());
    // Boxed too: the task's own future stays small (the sending's state holds the body, the
    // record and a timer).
    let sent = Box::pin(respond_with(resp, marks, finish, &mut respond, head, &gw)).await;
    if sent == Sent::Reset {
        shared.client_reset();
    }
}

/// Runs `work` unless the client resets the stream first (then `None`, and `work` is dropped).
async fn until_reset<F: Future>(respond: &mut SendResponse<Bytes>, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Done,
    /// The client reset the stream (or its connection ended) before the response's end.
    Reset,
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2); the `h2` crate refuses a response that has them.
const CONNECTION_SPECIFIC: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::HeaderName::from_static("keep-alive"),
];

/// Sends the response head (with the gateway's marks) and body, and records how it ended.
async fn respond_with(
    resp: Response<Body>,
    marks: request::Marks,
    mut finish: Finish,
    respond: &mut SendResponse<Bytes>,
    head: bool,
    gw: &Gateway,
) -> Sent {
    let (mut parts, mut body) = resp.into_parts();
    marks.insert_into(&mut parts.headers);
    // Usually none: one pass of cheap comparisons, then removals only when there is one.
    let specific = |n: &header::HeaderName| CONNECTION_SPECIFIC.contains(n) || n.as_str() == "proxy-connection";
    if parts.headers.keys().any(specific) {
        for name in &CONNECTION_SPECIFIC {
            parts.headers.remove(name);
        }
        parts.headers.remove("proxy-connection");
    }
    if !parts.headers.contains_key(header::DATE) {
        parts
            .headers
            .insert(header::DATE, crate::protocols::h1::server::response::date_value());
    }
    let end = head || body.is_end_stream();
    if !end && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = body.size_hint().exact() {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let mut tx = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response head not sent");
            finish.done(gw.access_log(), Ending::ClientGone);
            return Sent::Reset;
        }
    };
    if end {
        finish.done(gw.access_log(), Ending::Complete);
        return Sent::Done;
    }
    let ending = send_body(&mut body, &mut tx, &mut finish, gw.limits.http2.send_timeout).await;
    let sent = if matches!(ending, Ending::ClientGone) {
        Sent::Reset
    } else {
        Sent::Done
    };
    finish.done(gw.access_log(), ending);
    sent
}

/// Sends a response body as the client's window allows: each piece once the stream has capacity for it
/// (so at most `sendBufferBytes` wait per stream), the trailers, the end. A client that gives no
/// capacity for `send_timeout` gets its stream reset (CANCEL).
async fn send_body(body: &mut Body, tx: &mut SendStream<Bytes>, finish: &mut Finish, send_timeout: Duration) -> Ending {
    loop {
        let frame = poll_fn(|cx| {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(Err(()));
            }
            Pin::new(&mut *body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            Err(()) => return Ending::ClientGone,
            Ok(None) => {
                return match tx.send_data(Bytes::new(), true) {
                    Ok(()) => Ending::Complete,
                    Err(_) => Ending::ClientGone,
                }
            }
            Ok(Some(Err(e))) => {
                tx.send_reset(Reason::INTERNAL_ERROR);
                return Ending::Failed(e.to_string());
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else { continue };
                // A gRPC call's status comes in the trailers.
                finish.trailers(&trailers);
                return match tx.send_trailers(trailers) {
                    Ok(()) => Ending::Complete,
                    Err(_) => Ending::ClientGone,
                };
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() {
            if last {
                return match tx.send_data(data, true) {
                    Ok(()) => Ending::Complete,
                    Err(_) => Ending::ClientGone,
                };
            }
            continue;
        }
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            let granted = match tx.capacity() {
                0 => match wait_capacity(tx, send_timeout).await {
                    Some(n) => n,
                    None => {
                        tx.send_reset(Reason::CANCEL);
                        return Ending::ClientGone;
                    }
                },
                n => n,
            };
            let piece = data.split_to(granted.min(data.len()));
            if tx.send_data(piece, last && data.is_empty()).is_err() {
                return Ending::ClientGone;
            }
        }
        if last {
            return Ending::Complete;
        }
    }
}

/// Waits for send capacity on the stream: `None` when none came within `timeout`, or the stream was
/// reset or its connection ended.
async fn wait_capacity(tx: &mut SendStream<Bytes>, timeout: Duration) -> Option<usize> {
    let waited = tokio::time::timeout(
        timeout,
        poll_fn(|cx| loop {
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            match tx.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => continue,
                Poll::Ready(Some(Ok(n))) => return Poll::Ready(Some(n)),
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }),
    )
    .await;
    waited.ok().flatten()
}

/// A client's HTTP/2 request body, as the handler takes it: flow-control window given back as the
/// handler reads, trailers after the data.
pub(crate) struct Incoming {
    rx: RecvStream,
    /// The request's `content-length` (the `h2` crate holds the DATA frames to it).
    length: Option<u64>,
    data_done: bool,
}

fn client_stream_error(e: h2::Error) -> BoxError {
    crate::error::ClientBodyError::Io(std::io::Error::other(format!("the client's HTTP/2 stream failed: {e}"))).into()
}

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.rx.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.rx.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(client_stream_error(e)))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.rx.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(client_stream_error(e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A client connection's bytes as the `h2` crate reads them: first those already read from it (the
/// preface a plain connection opened with, and what followed), then the stream's. Watches the frames
/// for a header block that has begun and not ended (HEADERS or PUSH_PROMISE without END_HEADERS, until
/// a CONTINUATION with it), for the head deadline; reads pass through untouched, only the 9-byte frame
/// headers are looked at.
struct HeadWatch<S> {
    prefix: Bytes,
    inner: S,
    shared: Arc<Shared>,
    frames: FrameScan,
}

impl<S> HeadWatch<S> {
    fn new(prefix: Bytes, inner: S, shared: Arc<Shared>) -> HeadWatch<S> {
        HeadWatch {
            prefix,
            inner,
            shared,
            frames: FrameScan::default(),
        }
    }
}

/// Follows frame boundaries in the bytes a client sends (after the connection preface).
#[derive(Default)]
struct FrameScan {
    /// Preface bytes still to pass.
    preface_seen: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    /// The frame whose payload is arriving is part of a header block.
    in_head_frame: bool,
    head_open: bool,
}

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl FrameScan {
    /// Takes the next bytes read; whether a header block is open after them (begun and not ended, or
    /// one of its frames not all here).
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.preface_seen < PREFACE.len() {
                let n = (PREFACE.len() - self.preface_seen).min(bytes.len());
                self.preface_seen += n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let (kind, flags) = (h[3], h[4]);
                    self.in_head_frame = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
                    match kind {
                        HEADERS | PUSH_PROMISE => self.head_open = flags & END_HEADERS == 0,
                        CONTINUATION if flags & END_HEADERS != 0 => self.head_open = false,
                        _ => {}
                    }
                }
            }
        }
        // A frame header cut between reads may be a header block's too.
        self.head_open || self.header_len > 0 || (self.in_head_frame && self.payload_left > 0)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadWatch<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = r {
            let open = this.frames.scan(&buf.filled()[before..]);
            this.shared.head_open.store(open, Ordering::Release);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadWatch<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = (payload as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.extend(std::iter::repeat_n(0xAB, payload));
        f
    }

    #[test]
    fn a_header_block_is_open_from_headers_to_end_headers() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 12)); // SETTINGS
        let mut s = FrameScan::default();
        assert!(!s.scan(&wire));
        // HEADERS without END_HEADERS: open, through a PING and a CONTINUATION without it.
        assert!(s.scan(&frame(HEADERS, 0x1, 30)));
        assert!(s.scan(&frame(CONTINUATION, 0, 5)));
        assert!(!s.scan(&frame(CONTINUATION, END_HEADERS, 5)));
        // A whole block in one frame never opens; DATA whose bytes look like frame headers is skipped.
        assert!(!s.scan(&frame(HEADERS, END_HEADERS | 0x1, 3)));
        let mut data = frame(0x0, 0, 9);
        data[9..18].copy_from_slice(&[0, 0, 1, HEADERS, 0, 0, 0, 0, 3]);
        assert!(!s.scan(&data));
        // A header frame whose payload has not all come is open too, even with END_HEADERS.
        let f = frame(HEADERS, END_HEADERS, 40);
        assert!(s.scan(&f[..20]));
        assert!(!s.scan(&f[20..]));
        // Byte by byte, split anywhere.
        let mut s = FrameScan::default();
        let mut all = PREFACE.to_vec();
        all.extend(frame(HEADERS, 0, 7));
        let mut open = false;
        for b in &all {
            open = s.scan(std::slice::from_ref(b));
        }
        assert!(open);
        for b in frame(CONTINUATION, END_HEADERS, 3) {
            open = s.scan(&[b]);
        }
        assert!(!open);
    }

    #[test]
    fn the_reset_budget_is_twice_the_streams_and_at_least_100() {
        let mut l = Http2Limits::default();
        assert_eq!(l.reset_budget(), 256);
        l.max_concurrent_streams = 4;
        assert_eq!(l.reset_budget(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_idle_head_and_resets() {
        let limits = Http2Limits {
            idle_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(10),
            max_concurrent_streams: 4,
            ..Http2Limits::default()
        };
        let shared = Shared {
            open: AtomicUsize::new(0),
            resets: AtomicU32::new(0),
            head_open: AtomicBool::new(false),
            task: AtomicWaker::new(),
            slots: Arc::new(Semaphore::new(4)),
        };
        let poll = |d: &mut Deadlines| {
            let waker = futures_util::task::noop_waker();
            d.poll(&mut Context::from_waker(&waker), &shared)
        };
        // Idle: due 60 s after the last stream ended, not before.
        let mut d = Deadlines::new(limits);
        assert_eq!(poll(&mut d), Poll::Pending);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(poll(&mut d), Poll::Pending);
        shared.open.store(1, Ordering::Release);
        assert_eq!(poll(&mut d), Poll::Pending);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(poll(&mut d), Poll::Pending, "a stream is open");
        shared.open.store(0, Ordering::Release);
        assert_eq!(poll(&mut d), Poll::Pending);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(poll(&mut d), Poll::Ready(Stop::Idle));
        // Head: an unfinished header block is due after 10 s even with a stream open.
        let mut d = Deadlines::new(limits);
        shared.open.store(1, Ordering::Release);
        shared.head_open.store(true, Ordering::Release);
        assert_eq!(poll(&mut d), Poll::Pending);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(poll(&mut d), Poll::Ready(Stop::Head));
        shared.head_open.store(false, Ordering::Release);
        // Resets: 100 in a window pass, the 101st is too many; a new window starts afresh.
        let mut d = Deadlines::new(limits);
        shared.resets.store(100, Ordering::Relaxed);
        assert_eq!(poll(&mut d), Poll::Pending);
        shared.resets.store(101, Ordering::Relaxed);
        assert_eq!(poll(&mut d), Poll::Ready(Stop::Calm));
        let mut d = Deadlines::new(limits);
        shared.resets.store(100, Ordering::Relaxed);
        tokio::time::advance(RESET_WINDOW).await;
        assert_eq!(poll(&mut d), Poll::Pending);
        shared.resets.store(200, Ordering::Relaxed);
        assert_eq!(poll(&mut d), Poll::Pending, "100 in the new window");
        shared.resets.store(201, Ordering::Relaxed);
        assert_eq!(poll(&mut d), Poll::Ready(Stop::Calm));
    }
}

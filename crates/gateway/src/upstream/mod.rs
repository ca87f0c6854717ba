//! A worker's HTTP/1.1 client to upstreams: keep-alive connections pooled by authority, and the
//! requests and responses on them, written and read in the calling request's own task.
//!
//! Each data-plane worker thread owns its pool (a thread-local: the worker is a single-threaded
//! runtime, so a request and its upstream connection live on that thread). The hot path takes no lock
//! and there is no connection task: a request writes its head (and a body that is already there) in
//! one write, reads the response head into a small buffer and parses it with `httparse` (see
//! [`crate::protocols::h1`]). A response whose body came with its head — the usual small response — gives its
//! connection back at once; a longer one streams from the socket and gives it back when read to the
//! end. An idle connection holds its socket and (up to [`MAX_BUFFERED_IDLE`] idle connections of an
//! authority) its read buffer, unless it grew for a large head (a streamed body is read into a buffer of
//! its own): the next response on it is read into the same allocation once the last
//! response read into it is gone (a buffer only the connection holds is reclaimed, not reallocated),
//! so a pooled connection costs no allocation per request for its reads. (A new 4 KiB buffer per
//! request cost about 1,200 instructions per request at 32 requests in flight: the allocator's cache of
//! that size emptied and refilled from fresh slabs.)
//!
//! Idle connections are reused last-in first-out, so a light load keeps a few connections hot and the
//! rest age out after [`IDLE_TIMEOUT`]. One the upstream closed while idle is noticed when taken (its
//! socket reads end-of-file) and dropped. A request without a body and with an idempotent method that
//! finds its reused connection closed before any response byte is retried once on a new connection, as
//! nginx's `proxy_next_upstream error` does; others fail with 502.
//!
//! Time limits ([`Timeouts`]): the route's `timeoutMs` runs from connecting to the response head, less
//! the time spent waiting for the client's request body (time blocked writing to the upstream counts),
//! so a slow client never makes an upstream look slow. Once the head is in, the body may pause at most
//! `readTimeoutMs` between pieces (nginx's `proxy_read_timeout`). While the request body is still being
//! sent, the connection is watched for an early answer (a 413 or 401 to a large upload): it is relayed
//! as nginx does, the rest of the request body is not sent, and the connection is not reused.

pub(crate) mod h2;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future as _};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant as Clock;

use crate::body::{Body, BoxError};
use crate::exchange::{UpgradeRequest, Upgraded};
use crate::protocols::body_read::{BodyRead, ReadError};
use crate::protocols::h1::{self, Decoder, ProtocolError, Reply, RequestFraming, WireFields};

/// Idle connections kept per upstream authority, per worker.
pub const MAX_IDLE_PER_HOST: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A read buffer with more room than this is not kept with an idle connection (a large response
/// grew it).
const MAX_POOLED_BUF: usize = 16 * 1024;
/// Idle connections of an authority past this many go into the pool without their read buffer: a
/// burst that leaves hundreds idle holds no more than this many buffers.
pub const MAX_BUFFERED_IDLE: usize = 64;
/// The first read of a response: room for a usual head and a small body. It grows as needed.
const FIRST_READ: usize = 4096;

/// An upstream connection as the driver uses it: any byte stream (plain TCP or TLS) that can say
/// whether it is still open while idle, and go back to this worker's pool.
pub(crate) trait Connection: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Whether an idle connection is still open: nothing to read (no end-of-file, no stray bytes).
    fn is_open(&self) -> bool;
    /// Back into this worker's pool for `authority` with its read buffer and timer (or closed, when
    /// the pool is full).
    fn checkin(self, authority: &str, kit: Kit);
    /// The most recently used idle connection of this kind to `host` that is open and not too old,
    /// with its read buffer and timer.
    fn take_idle(host: &mut Host) -> Option<(Self, Kit)>;
}

impl Connection for TcpStream {
    /// Costs no system call unless the socket became readable since its last read.
    fn is_open(&self) -> bool {
        matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn checkin(self, authority: &str, kit: Kit) {
        HOSTS.with_borrow_mut(|hosts| {
            if let Some(h) = hosts.get_mut(authority) {
                Idle::push(&mut h.idle, self, kit);
            }
        });
    }

    fn take_idle(host: &mut Host) -> Option<(Self, Kit)> {
        take_idle(&mut host.idle, TcpStream::is_open)
    }
}

/// An `https://` upstream's connection.
type TlsConn = tokio_rustls::client::TlsStream<TcpStream>;

impl Connection for TlsConn {
    /// The socket under TLS has nothing to read. (A connection whose upstream sent anything while it
    /// was idle — a close_notify, a late session ticket — is not reused.)
    fn is_open(&self) -> bool {
        self.get_ref().0.is_open()
    }

    fn checkin(self, authority: &str, kit: Kit) {
        HOSTS.with_borrow_mut(|hosts| {
            if let Some(h) = hosts.get_mut(authority) {
                Idle::push(&mut h.idle_tls, Box::new(self), kit);
            }
        });
    }

    fn take_idle(host: &mut Host) -> Option<(Self, Kit)> {
        take_idle(&mut host.idle_tls, |c| c.is_open()).map(|(c, kit)| (*c, kit))
    }
}

/// What an upstream connection keeps from one exchange to the next: its read buffer, and the timer
/// of the response head's deadline — moved later for each exchange (which costs an update of the
/// timer's state, not an entry registered in the runtime's timer wheel and removed again per
/// request).
#[derive(Default)]
pub(crate) struct Kit {
    buf: BytesMut,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl From<BytesMut> for Kit {
    fn from(buf: BytesMut) -> Kit {
        Kit { buf, timer: None }
    }
}

/// A pooled connection, its read buffer and timer, and since when it is idle.
struct Idle<S> {
    stream: S,
    buf: BytesMut,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    since: Instant,
}

impl<S> Idle<S> {
    /// Into `pool` unless it is full (then the connection is dropped, which closes it).
    fn push(pool: &mut Vec<Idle<S>>, stream: S, kit: impl Into<Kit>) {
        let Kit { buf, timer } = kit.into();
        if pool.len() < MAX_IDLE_PER_HOST {
            let keep = pool.len() < MAX_BUFFERED_IDLE && buf.capacity() <= MAX_POOLED_BUF;
            let buf = if keep { buf } else { BytesMut::new() };
            pool.push(Idle {
                stream,
                buf,
                timer,
                since: Instant::now(),
            });
        }
    }
}

/// One upstream authority: its `Host` header and its idle connections, most recently used last.
#[derive(Default)]
pub(crate) struct Host {
    host_header: Option<HeaderValue>,
    idle: Vec<Idle<TcpStream>>,
    /// Idle connections to an `https://` upstream on this authority.
    idle_tls: Vec<Idle<Box<TlsConn>>>,
}

/// Upstreams by authority (as written in the integration URI).
type Hosts = HashMap<Box<str>, Host, foldhash::fast::RandomState>;

thread_local! {
    static HOSTS: RefCell<Hosts> = RefCell::new(Hosts::default());
}

/// Time limits of one upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting, writing the request and reading the response head, less the time spent waiting
    /// for the client's body (the route's `timeoutMs`).
    pub head: Duration,
    /// The longest pause between pieces of the response body (`readTimeoutMs`).
    pub body_read: Duration,
}

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the upstream did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the upstream URI has no host")]
    NoHost,
    #[error("cannot connect to the upstream")]
    Connect(#[source] io::Error),
    #[error("the upstream connection failed")]
    Io(#[source] io::Error),
    #[error("the upstream closed the connection before responding")]
    Closed,
    #[error("bad response from the upstream")]
    Protocol(#[from] ProtocolError),
    /// Reading the request body failed (the client's connection, or the body size limit).
    #[error("request body")]
    Body(#[source] BoxError),
    /// An HTTP/2 upstream's connection or stream failed (or the client's body did, for the stream).
    #[error("the HTTP/2 upstream call failed")]
    Http2(#[source] hyper::Error),
}

/// A failed exchange, and whether it failed before any of the response arrived (then a request
/// that can be sent again may be retried).
struct Failed {
    error: SendError,
    early: bool,
}

impl Failed {
    fn early(error: SendError) -> Failed {
        Failed { error, early: true }
    }
    fn late(error: SendError) -> Failed {
        Failed { error, early: false }
    }
}

/// Sends `req` (absolute URI, `http://authority/path?query` or `https://...` with `tls`), with a
/// client's fields still on the `wire` and the `extra` header fields after its map's (see
/// [`h1::client::Fields`]), to its upstream over a pooled or new connection of the
/// calling worker thread.
pub async fn send(
    req: &mut Request<Body>,
    wire: Option<&WireFields>,
    extra: &[(&HeaderName, &HeaderValue)],
    timeouts: Timeouts,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Reply<Body>, SendError> {
    match tls {
        None => send_on(req, wire, extra, timeouts, connect).await,
        Some(cfg) => {
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            Box::pin(send_on(req, wire, extra, timeouts, move |a| connect_tls(a, connector.clone()))).await
        }
    }
}

/// [`send`] over connections of type `C`, made by `connect` when no idle one is there.
async fn send_on<C, F, Fut>(
    req: &mut Request<Body>,
    wire: Option<&WireFields>,
    extra: &[(&HeaderName, &HeaderValue)],
    timeouts: Timeouts,
    connect: F,
) -> Result<Reply<Body>, SendError>
where
    C: Connection,
    F: Fn(Authority) -> Fut,
    Fut: std::future::Future<Output = Result<C, SendError>>,
{
    // The body is taken (and dropped when the call is over, as a request given whole would be); the
    // head is read where it is.
    let mut body = std::mem::replace(req.body_mut(), crate::body::empty());
    // Each part apart: a `&Request` held across an await would need its (taken) body to be `Sync`.
    let (method, uri, headers) = (req.method(), req.uri(), req.headers());
    let upgrade = req.extensions().get::<UpgradeRequest>().is_some();
    let authority = uri.authority().ok_or(SendError::NoHost)?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    // One lookup: the Host header and, when there is one, a live idle connection.
    let (host, idle) = HOSTS.with_borrow_mut(|hosts| {
        let h = match hosts.get_mut(authority.as_str()) {
            Some(h) => h,
            None => hosts.entry(authority.as_str().into()).or_default(),
        };
        let header = h
            .host_header
            .get_or_insert_with(|| HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| HeaderValue::from_static("localhost")))
            .clone();
        (header, C::take_idle(h))
    });

    let framing = if body.is_end_stream() {
        RequestFraming::Empty
    } else {
        body.size_hint().exact().map_or(RequestFraming::Chunked, RequestFraming::Length)
    };
    let mut writer = BodyWriter { framing, sent: 0 };
    let mut head = Vec::with_capacity(512);
    h1::encode_head(&mut head, method, target, &host, (headers, wire, extra), framing);
    // A body that is already here (a small request's) goes out in the same write as the head.
    let mut more = framing != RequestFraming::Empty;
    if more {
        if let Some(frame) = body.frame().now_or_never() {
            more = writer.take(frame, body.is_end_stream(), &mut head)?;
        }
    }
    let retryable = framing == RequestFraming::Empty && is_idempotent(method);

    let mut conn = idle;
    let mut deadline = Clock::now() + timeouts.head;
    loop {
        let (stream, kit, reused) = match conn.take() {
            Some((s, kit)) => (s, kit, true),
            None => match tokio::time::timeout_at(deadline, connect(authority.clone())).await {
                Ok(s) => (s?, Kit::default(), false),
                Err(_) => return Err(SendError::Timeout(timeouts.head)),
            },
        };
        let call = Call {
            method,
            timeouts,
            deadline: &mut deadline,
        };
        match exchange(stream, kit, &head, &mut body, more, &mut writer, call).await {
            Ok(x) if x.head.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                return if upgrade {
                    switched(x).map(Reply::new)
                } else {
                    Err(ProtocolError::UnaskedSwitch.into())
                };
            }
            Ok(x) => return Ok(respond(x, authority, timeouts.body_read)),
            // The upstream closed the idle connection as it was taken: once more, on a new one.
            Err(f) if f.early && reused && retryable => continue,
            Err(f) => return Err(f.error),
        }
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Frames the request body (content-length or chunked) and checks it against its declared length.
struct BodyWriter {
    framing: RequestFraming,
    sent: u64,
}

impl BodyWriter {
    /// Appends what `frame` carries to `out`; whether more of the body is to come.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>, at_end: bool, out: &mut Vec<u8>) -> Result<bool, SendError> {
        match frame {
            None => {
                self.finish(out)?;
                Ok(false)
            }
            Some(Err(e)) => Err(SendError::Body(e)),
            Some(Ok(frame)) => {
                // Trailers are not forwarded.
                if let Ok(data) = frame.into_data() {
                    self.data(out, &data)?;
                }
                if at_end {
                    self.finish(out)?;
                }
                Ok(!at_end)
            }
        }
    }

    fn data(&mut self, out: &mut Vec<u8>, data: &[u8]) -> Result<(), SendError> {
        if data.is_empty() {
            return Ok(());
        }
        self.sent += data.len() as u64;
        match self.framing {
            RequestFraming::Length(n) if self.sent > n => {
                Err(SendError::Body(format!("request body longer than its content-length {n}").into()))
            }
            RequestFraming::Chunked => {
                h1::encode_chunk(out, data);
                Ok(())
            }
            _ => {
                out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SendError> {
        match self.framing {
            RequestFraming::Chunked => out.extend_from_slice(h1::LAST_CHUNK),
            RequestFraming::Length(n) if self.sent != n => {
                return Err(SendError::Body(
                    format!("request body of {} bytes, shorter than its content-length {n}", self.sent).into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// What one exchange needs besides the request: its method (for the response's framing) and its
/// time limits, with the response head's deadline, which waiting for the client's body moves later.
struct Call<'a> {
    method: &'a Method,
    timeouts: Timeouts,
    deadline: &'a mut Clock,
}

impl Call<'_> {
    fn timed_out(&self) -> Failed {
        Failed::late(SendError::Timeout(self.timeouts.head))
    }
}

/// A response head read, with the connection it came on.
struct Exchanged<S> {
    stream: S,
    head: h1::Head,
    /// What was read after the head.
    rest: Bytes,
    /// Whether the whole request was sent (else the upstream answered early, and the connection
    /// cannot be reused).
    complete: bool,
    /// The read buffer and timer, to go back to the pool with the connection.
    kit: Kit,
}

/// What happened first while a request body was being sent.
enum Event<T> {
    Upstream(io::Result<usize>),
    Client(T),
}

/// What happened first while a write to the upstream waited.
enum Watched {
    Upstream(io::Result<usize>),
    Wrote(io::Result<usize>),
    /// The response head's deadline passed.
    TimedOut,
}

/// Why a write to the upstream stopped.
enum Stopped {
    /// The upstream answered first (an early answer, with what followed its head).
    Answered(h1::Head, Bytes),
    Failed(Failed),
    /// The write itself failed: the upstream may have answered and closed.
    Write(io::Error),
}

/// Writes `data`, watching the connection for an answer while a write has to wait. The first
/// attempt is a plain write (no read is polled when the socket takes it all, as it usually does).
async fn write_watching<S: Connection>(stream: &mut S, data: &[u8], buf: &mut BytesMut, call: &Call<'_>) -> Result<(), Stopped> {
    let mut pos = 0;
    while pos < data.len() {
        let event = match stream.write(&data[pos..]).now_or_never() {
            Some(w) => Watched::Wrote(w),
            None => {
                // A write that has not completed has written nothing: it may be given up. Reads come
                // first (an answer wins over the rest of the request), then the write, then the deadline.
                let deadline = tokio::time::sleep_until(*call.deadline);
                tokio::pin!(deadline);
                poll_fn(|cx| {
                    if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
                        return Poll::Ready(Watched::Upstream(r));
                    }
                    if let Poll::Ready(w) = Pin::new(&mut *stream).poll_write(cx, &data[pos..]) {
                        return Poll::Ready(Watched::Wrote(w));
                    }
                    deadline.as_mut().poll(cx).map(|()| Watched::TimedOut)
                })
                .await
            }
        };
        match event {
            Watched::Wrote(Ok(0)) => return Err(Stopped::Write(io::ErrorKind::WriteZero.into())),
            Watched::Wrote(Ok(n)) => pos += n,
            Watched::Wrote(Err(e)) => return Err(Stopped::Write(e)),
            Watched::TimedOut => return Err(Stopped::Failed(call.timed_out())),
            Watched::Upstream(r) => {
                if let Some((head, rest)) = early_answer(buf, r, call.method).map_err(Stopped::Failed)? {
                    return Err(Stopped::Answered(head, rest));
                }
            }
        }
    }
    Ok(())
}

/// Writes the request (the rest of its body streamed from `body`) and reads the response head.
async fn exchange<S: Connection>(
    mut stream: S,
    kit: Kit,
    head: &[u8],
    body: &mut Body,
    more: bool,
    writer: &mut BodyWriter,
    mut call: Call<'_>,
) -> Result<Exchanged<S>, Failed> {
    let Kit { mut buf, mut timer } = kit;
    // The usual request goes out in one write: the head, with a body that came with it. Anything more
    // (a head the socket did not take at once, a body still arriving) is sent watching for an early
    // answer, on a boxed path that keeps this future small.
    let written = match stream.write(head).now_or_never() {
        Some(Ok(n)) => n,
        Some(Err(e)) => return Box::pin(answer_after_failed_write(stream, buf, e, &call)).await,
        None => 0,
    };
    if written < head.len() || more {
        match Box::pin(send_rest(&mut stream, &head[written..], body, more, writer, &mut buf, &mut call)).await {
            Ok(()) => {}
            Err(Stopped::Answered(head, rest)) => {
                return Ok(Exchanged {
                    stream,
                    head,
                    rest,
                    complete: false,
                    kit: Kit::default(),
                })
            }
            Err(Stopped::Failed(f)) => return Err(f),
            Err(Stopped::Write(e)) => return Box::pin(answer_after_failed_write(stream, buf, e, &call)).await,
        }
    }
    // A buffer grown for a large head does not go back to the pool (its size is not known later:
    // `capacity` is the room left past what was read).
    let mut grown = false;
    loop {
        if !buf.is_empty() {
            if let Some((head, rest)) = h1::parse_head(&mut buf, call.method).map_err(|e| Failed::late(e.into()))? {
                return Ok(Exchanged {
                    stream,
                    head,
                    rest,
                    complete: true,
                    kit: Kit {
                        buf: if grown { BytesMut::new() } else { buf },
                        timer,
                    },
                });
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            grown |= !buf.is_empty();
            buf.reserve(buf.capacity().max(FIRST_READ));
        }
        let n = match read_by(&mut stream, &mut buf, &mut timer, *call.deadline).await {
            None => return Err(call.timed_out()),
            Some(Ok(n)) => n,
            Some(Err(e)) if buf.is_empty() => return Err(Failed::early(SendError::Io(e))),
            Some(Err(e)) => return Err(Failed::late(SendError::Io(e))),
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                Failed::early(SendError::Closed)
            } else {
                Failed::late(ProtocolError::Truncated.into())
            });
        }
    }
}

/// Reads what `stream` has into `buf`, or `None` when `deadline` passes first: on the connection's
/// `timer`, made at its first exchange and moved to each exchange's deadline.
async fn read_by<S: Connection>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Clock,
) -> Option<io::Result<usize>> {
    let timer = match timer {
        Some(t) => {
            if t.deadline() != deadline {
                t.as_mut().reset(deadline);
            }
            t
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
    };
    poll_fn(|cx| {
        if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            return Poll::Ready(Some(r));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Sends what is left of the request: `data` (the rest of its head), then the body as it arrives,
/// watching the connection for an early answer. The time spent waiting for the client's body does not
/// count against the upstream (it moves the deadline later).
async fn send_rest<S: Connection>(
    stream: &mut S,
    mut data: &[u8],
    body: &mut Body,
    mut more: bool,
    writer: &mut BodyWriter,
    buf: &mut BytesMut,
    call: &mut Call<'_>,
) -> Result<(), Stopped> {
    let mut out = Vec::new();
    loop {
        write_watching(stream, data, buf, call).await?;
        if !more {
            return Ok(());
        }
        let waiting = Clock::now();
        let event = poll_fn(|cx| {
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
                return Poll::Ready(Event::Upstream(r));
            }
            Pin::new(&mut *body).poll_frame(cx).map(Event::Client)
        })
        .await;
        *call.deadline += waiting.elapsed();
        let frame = match event {
            Event::Client(f) => f,
            Event::Upstream(r) => match early_answer(buf, r, call.method).map_err(Stopped::Failed)? {
                Some((head, rest)) => return Err(Stopped::Answered(head, rest)),
                None => {
                    data = &[];
                    continue;
                }
            },
        };
        out.clear();
        more = writer
            .take(frame, body.is_end_stream(), &mut out)
            .map_err(|e| Stopped::Failed(Failed::late(e)))?;
        data = &out;
    }
}

/// Bytes from the upstream while the request is still being sent: its answer, once a whole head
/// (past any interim 1xx) is in.
fn early_answer(buf: &mut BytesMut, read: io::Result<usize>, method: &Method) -> Result<Option<(h1::Head, Bytes)>, Failed> {
    match read {
        Err(e) => Err(Failed::late(SendError::Io(e))),
        Ok(0) => Err(Failed::late(if buf.is_empty() {
            SendError::Closed
        } else {
            ProtocolError::Truncated.into()
        })),
        Ok(_) => h1::parse_head(buf, method).map_err(|e| Failed::late(e.into())),
    }
}

/// A write of the request failed: an upstream that answered early and closed has its answer in the
/// socket; relay it if it is there, else fail with the write's error (a failure before any of the
/// response came, which a reused connection's bodyless request may retry).
async fn answer_after_failed_write<S: Connection>(
    mut stream: S,
    mut buf: BytesMut,
    error: io::Error,
    call: &Call<'_>,
) -> Result<Exchanged<S>, Failed> {
    let limit = (*call.deadline).min(Clock::now() + Duration::from_secs(1));
    loop {
        match h1::parse_head(&mut buf, call.method) {
            Ok(Some((head, rest))) => {
                return Ok(Exchanged {
                    stream,
                    head,
                    rest,
                    complete: false,
                    kit: Kit::default(),
                })
            }
            Ok(None) => {}
            Err(e) => return Err(Failed::late(e.into())),
        }
        buf.reserve(FIRST_READ);
        match tokio::time::timeout_at(limit, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ if buf.is_empty() => return Err(Failed::early(SendError::Io(error))),
            _ => return Err(Failed::late(SendError::Io(error))),
        }
    }
}

/// The response: with its whole body when that came with the head (and the connection back in the
/// pool), else streaming the body from the connection.
fn respond<S: Connection>(x: Exchanged<S>, authority: &Authority, body_read: Duration) -> Reply<Body> {
    let Exchanged {
        stream,
        mut head,
        rest,
        complete,
        kit,
    } = x;
    head.keep_alive &= complete;
    let decoder = Decoder::new(head.framing);
    let body = match decoder {
        Decoder::Done => {
            if head.keep_alive && rest.is_empty() {
                stream.checkin(authority.as_str(), kit);
            }
            h1::WireBody::Whole(None)
        }
        Decoder::Length(n) if rest.len() as u64 >= n => {
            // Bytes past the end of the body: the connection is out of step; close it.
            if head.keep_alive && rest.len() as u64 == n {
                stream.checkin(authority.as_str(), kit);
            }
            h1::WireBody::Whole(Some(rest.slice(..n as usize)))
        }
        _ => h1::WireBody::Streaming(Box::new(Streaming {
            stream: Some(stream),
            // The body read into a buffer of its own, which may grow; the connection's goes back to
            // the pool with it.
            read: BodyRead::new(BytesMut::from(rest), decoder, body_read),
            pooled: kit,
            keep_alive: head.keep_alive,
            authority: authority.clone(),
        })),
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = head.status;
    Reply {
        response,
        wire: Some(head.fields),
    }
}

/// The upstream agreed to switch protocols: a 101 without a body, carrying the connection (never
/// pooled again) and what the upstream sent past its head, for the client's driver to relay.
fn switched<S: Connection>(x: Exchanged<S>) -> Result<Response<Body>, SendError> {
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = x.head.status;
    *resp.headers_mut() = x.head.fields.into_map()?;
    resp.extensions_mut().insert(Upgraded::new(Box::new(x.stream), x.rest));
    Ok(resp)
}

/// Closes this thread's idle connections past the idle timeout or closed by their upstream (the
/// worker calls it periodically).
pub fn sweep() {
    HOSTS.with_borrow_mut(|hosts| {
        for h in hosts.values_mut() {
            h.idle.retain(|i| i.since.elapsed() <= IDLE_TIMEOUT && i.stream.is_open());
            h.idle_tls.retain(|i| i.since.elapsed() <= IDLE_TIMEOUT && i.stream.is_open());
        }
    });
}

/// Idle connections of this thread, across all upstreams.
#[cfg(test)]
pub(crate) fn idle_count() -> usize {
    HOSTS.with_borrow(|hosts| hosts.values().map(|h| h.idle.len()).sum())
}

/// The most recently used idle connection that is open and not too old; older ones found closed on
/// the way are dropped.
fn take_idle<S>(idle: &mut Vec<Idle<S>>, open: impl Fn(&S) -> bool) -> Option<(S, Kit)> {
    while let Some(i) = idle.pop() {
        if i.since.elapsed() <= IDLE_TIMEOUT && open(&i.stream) {
            return Some((
                i.stream,
                Kit {
                    buf: i.buf,
                    timer: i.timer,
                },
            ));
        }
    }
    None
}

/// A TLS connection to an `https://` upstream, its certificate verified for the URI's host.
async fn connect_tls(authority: Authority, connector: tokio_rustls::TlsConnector) -> Result<TlsConn, SendError> {
    let tcp = connect(authority.clone()).await?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| SendError::Connect(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    connector.connect(name, tcp).await.map_err(SendError::Connect)
}

pub(crate) async fn connect(authority: Authority) -> Result<TcpStream, SendError> {
    let port = authority.port_u16().unwrap_or(80);
    // An IPv6 literal is written in brackets in a URI, without them in a socket address.
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await.map_err(SendError::Connect)?;
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
    Ok(stream)
}

/// A response body still arriving (an upstream's response body is an [`h1::WireBody`] of this: `Whole`
/// when read with its head, the connection then already back in the pool); the connection goes back to the pool when it has been read to the end,
/// and is closed with the body if dropped before.
struct Streaming<S> {
    /// `None` once the body has ended.
    stream: Option<S>,
    read: BodyRead,
    /// The connection's read buffer (the head's) and timer, for the pool.
    pooled: Kit,
    keep_alive: bool,
    authority: Authority,
}

impl<S: Connection> h1::Arriving for Streaming<S> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.read(cx)
    }

    fn decoder(&self) -> Decoder {
        self.read.decoder
    }
}

impl<S: Connection> Streaming<S> {
    fn release(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Bytes past the end of the body: the connection is out of step; close it.
            if self.keep_alive && self.read.buf.is_empty() {
                stream.checkin(self.authority.as_str(), std::mem::take(&mut self.pooled));
            }
        }
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match self.read.poll_next(stream, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(data))) => {
                if self.read.decoder.is_done() {
                    self.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.stream = None;
                self.read.decoder = Decoder::Done;
                Poll::Ready(Some(Err(UpstreamBodyError(e).into())))
            }
        }
    }
}

/// A response body the upstream broke off, stalled or framed wrongly.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body failed: {0}")]
pub struct UpstreamBodyError(#[source] pub ReadError);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::error::Error as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// [`super::send`] without fields besides the request's map, its response's fields in its map.
    async fn send(
        mut req: Request<Body>,
        timeouts: Timeouts,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Response<Body>, SendError> {
        Ok(super::send(&mut req, None, &[], timeouts, tls).await?.into_response()?)
    }

    /// A raw HTTP/1.1 backend: answers every request on a connection with `body` (keep-alive), and
    /// closes the connection after `close_after` answers. Counts accepted connections.
    async fn backend(body: &'static [u8], close_after: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        backend_then(body, close_after, Then::Close).await
    }

    /// What a test backend does once it has given its answers on a connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        Close,
        /// Reads on and never answers.
        Stall,
    }

    async fn backend_then(body: &'static [u8], answers: usize, then: Then) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    let mut chunk = [0u8; 4096];
                    while answered < answers || then == Then::Stall {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if then == Then::Stall && answered >= answers {
                                continue;
                            }
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            if s.write_all(&[head.as_bytes(), body].concat()).await.is_err() {
                                return;
                            }
                            answered += 1;
                        }
                    }
                    // Closes without saying so, as an upstream's idle timeout does.
                });
            }
        });
        (addr, accepted)
    }

    const T: Timeouts = Timeouts {
        head: Duration::from_secs(30),
        body_read: Duration::from_secs(60),
    };

    fn get(addr: std::net::SocketAddr) -> Request<Body> {
        let mut r = Request::new(Body::new(http_body_util::Empty::new().map_err(|never| match never {})));
        *r.uri_mut() = format!("http://{addr}/x?y=1").parse().unwrap();
        r
    }

    async fn body_of(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = backend(b"hello", usize::MAX).await;
        for _ in 0..50 {
            let resp = send(get(addr), T, None).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(body_of(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for 50 sequential requests");
        assert_eq!(idle_count(), 1);
    }

    /// Where the read buffer of the first idle connection to `addr` points, and its room.
    fn pooled_buf(addr: std::net::SocketAddr) -> (usize, usize) {
        HOSTS.with_borrow(|hosts| {
            let b = &hosts[addr.to_string().as_str()].idle[0].buf;
            (b.as_ptr() as usize, b.capacity())
        })
    }

    #[tokio::test]
    async fn a_pooled_connection_keeps_one_timer_moved_to_each_deadline() {
        // Answers the first three requests on a connection, then reads and never answers.
        let (addr, accepted) = backend_then(b"ok", 3, Then::Stall).await;
        // The pooled connection's timer: where it is, and its deadline.
        let timer_of = |addr: std::net::SocketAddr| {
            HOSTS.with_borrow(|hosts| {
                let t = hosts[addr.to_string().as_str()].idle[0]
                    .timer
                    .as_ref()
                    .expect("the connection keeps its timer");
                (t.as_ref().get_ref() as *const tokio::time::Sleep as usize, t.deadline())
            })
        };
        body_of(send(get(addr), T, None).await.unwrap()).await;
        let (first, mut deadline) = timer_of(addr);
        body_of(send(get(addr), T, None).await.unwrap()).await;
        let (at, later) = timer_of(addr);
        assert_eq!(at, first, "the same timer, moved to the next exchange's deadline");
        assert!(later > deadline, "moved later");
        deadline = later;
        // A shorter route timeout: the same timer moved earlier.
        let short = Timeouts {
            head: Duration::from_secs(5),
            ..T
        };
        body_of(send(get(addr), short, None).await.unwrap()).await;
        let (at, earlier) = timer_of(addr);
        assert_eq!(at, first);
        assert!(earlier < deadline, "moved earlier");
        // The stalled answer on the pooled connection ends the exchange by its deadline.
        let err = send(
            get(addr),
            Timeouts {
                head: Duration::from_millis(300),
                ..T
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SendError::Timeout(_)), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "every exchange on the one pooled connection");
        assert_eq!(idle_count(), 0, "the connection that timed out is not pooled");
    }

    #[tokio::test]
    async fn a_pooled_connection_reads_every_response_into_its_one_buffer() {
        let (addr, accepted) = backend(b"hello", usize::MAX).await;
        body_of(send(get(addr), T, None).await.unwrap()).await;
        let first = pooled_buf(addr);
        body_of(send(get(addr), T, None).await.unwrap()).await;
        let (mut at, mut room) = pooled_buf(addr);
        // Each response is read where the last one ended (a new buffer would start with its whole
        // room every time) until the room runs short; then, the responses read there being gone,
        // the connection takes the whole buffer back instead of a new one.
        let n = first.1 - room;
        assert_eq!((at, n > 0), (first.0 + n, true));
        let (mut advanced, mut reclaimed) = (0, 0);
        for _ in 0..200 {
            body_of(send(get(addr), T, None).await.unwrap()).await;
            let next = pooled_buf(addr);
            if next == (at + n, room - n) {
                advanced += 1;
            } else {
                assert_eq!(next, first, "neither read in place nor the buffer taken back");
                reclaimed += 1;
            }
            (at, room) = next;
        }
        assert!(advanced > 150 && reclaimed >= 2, "{advanced} in place, {reclaimed} taken back");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_past_the_buffered_few_give_up_their_buffers() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut pool = Vec::new();
        for _ in 0..MAX_BUFFERED_IDLE + 3 {
            let s = TcpStream::connect(addr).await.unwrap();
            Idle::push(&mut pool, s, BytesMut::with_capacity(4096));
        }
        let kept = |pool: &[Idle<TcpStream>]| pool.iter().filter(|i| i.buf.capacity() > 0).count();
        assert_eq!((pool.len(), kept(&pool)), (MAX_BUFFERED_IDLE + 3, MAX_BUFFERED_IDLE));
        pool.truncate(1);
        let s = TcpStream::connect(addr).await.unwrap();
        Idle::push(&mut pool, s, BytesMut::with_capacity(MAX_POOLED_BUF + 1));
        assert_eq!((pool.len(), kept(&pool)), (2, 1), "a grown buffer is not kept");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (addr, accepted) = backend(b"ok", 1).await;
        for i in 0..20 {
            let resp = send(get(addr), T, None).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
            // Whether the close has reached the pool yet (skipped) or not (retried on a new
            // connection), the request must succeed.
            assert_eq!(body_of(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
        let (addr, accepted) = backend(big, usize::MAX).await;
        let resp = send(get(addr), T, None).await.unwrap();
        drop(resp);
        assert_eq!(idle_count(), 0, "not returned to the pool");
        let resp = send(get(addr), T, None).await.unwrap();
        assert_eq!(body_of(resp).await.len(), 1 << 20);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the second request needed a new connection");
        assert_eq!(idle_count(), 1, "read to the end: back in the pool");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = send(get(addr), T, None).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }

    /// What a scripted backend does with the n-th request (from 0) on the c-th connection (from 0).
    enum Reply {
        /// Sends these pieces, one write each, and keeps the connection open.
        Send(Vec<Vec<u8>>),
        /// Sends these pieces and closes the connection.
        SendClose(Vec<Vec<u8>>),
        /// Closes the connection without answering.
        Close,
    }

    type Seen = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

    /// Reads one whole request (head, then a content-length or chunked body) from `buf`/`s`.
    async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let body_len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|n| n.trim().parse::<usize>().unwrap());
                let chunked = head.contains("transfer-encoding: chunked");
                let total = match body_len {
                    Some(n) if buf.len() >= end + 4 + n => Some(end + 4 + n),
                    None if chunked => buf.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| p + 5),
                    None => Some(end + 4),
                    _ => None,
                };
                if let Some(total) = total {
                    return Some(buf.drain(..total).collect());
                }
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn scripted(script: fn(usize, usize) -> Reply) -> (std::net::SocketAddr, Arc<AtomicUsize>, Seen) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen: Seen = Default::default();
        let (count, log) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let c = count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for n in 0.. {
                        let Some(req) = read_request(&mut s, &mut buf).await else { return };
                        log.lock().unwrap().push(req);
                        let (pieces, close) = match script(c, n) {
                            Reply::Send(p) => (p, false),
                            Reply::SendClose(p) => (p, true),
                            Reply::Close => return,
                        };
                        for p in pieces {
                            if s.write_all(&p).await.is_err() {
                                return;
                            }
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted, seen)
    }

    fn ok(body: &str) -> Reply {
        Reply::Send(vec![
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
        ])
    }

    fn request(method: Method, addr: std::net::SocketAddr, body: Body) -> Request<Body> {
        let mut r = Request::new(body);
        *r.method_mut() = method;
        *r.uri_mut() = format!("http://{addr}/p?q=1").parse().unwrap();
        r.headers_mut().insert("x-test", HeaderValue::from_static("yes"));
        r
    }

    fn full_body(b: &'static str) -> Body {
        Body::new(http_body_util::Full::new(Bytes::from_static(b.as_bytes())).map_err(|never| match never {}))
    }

    #[tokio::test]
    async fn a_request_body_of_known_length_goes_with_its_head() {
        let (addr, _, seen) = scripted(|_, _| ok("got it")).await;
        let resp = send(request(Method::POST, addr, full_body("abc")), T, None).await.unwrap();
        assert_eq!(body_of(resp).await, "got it");
        let raw = String::from_utf8(seen.lock().unwrap()[0].clone()).unwrap();
        assert!(raw.starts_with(&format!("POST /p?q=1 HTTP/1.1\r\nhost: {addr}\r\n")), "{raw}");
        assert!(raw.contains("\r\nx-test: yes\r\n"), "{raw}");
        assert!(raw.ends_with("\r\ncontent-length: 3\r\n\r\nabc"), "{raw}");
    }

    #[tokio::test]
    async fn a_request_body_of_unknown_length_is_sent_chunked() {
        let (addr, _, seen) = scripted(|_, _| ok("")).await;
        let pieces = ["hello ", "chunked ", "world"].map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
        let body = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(pieces)));
        let resp = send(request(Method::PUT, addr, body), T, None).await.unwrap();
        assert_eq!(resp.status(), 200);
        let raw = String::from_utf8(seen.lock().unwrap()[0].clone()).unwrap();
        assert!(raw.contains("\r\ntransfer-encoding: chunked\r\n\r\n"), "{raw}");
        assert!(
            raw.ends_with("\r\n\r\n6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_a_body_error_naming_the_limit() {
        let (addr, _, _) = scripted(|_, _| ok("")).await;
        let pieces = ["0123456789"; 3].map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
        let body = http_body_util::Limited::new(http_body_util::StreamBody::new(futures_util::stream::iter(pieces)), 25);
        let err = send(request(Method::POST, addr, Body::new(body)), T, None).await.unwrap_err();
        let SendError::Body(inner) = &err else { panic!("{err}") };
        assert!(inner.is::<http_body_util::LengthLimitError>(), "{inner}");
    }

    #[tokio::test]
    async fn a_chunked_response_in_pieces_is_decoded_and_its_connection_reused() {
        let (addr, accepted, _) = scripted(|_, _| {
            Reply::Send(vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n".to_vec(),
                b"4\r\nwiki\r\n".to_vec(),
                b"5;x=y\r\npedia\r\n0\r\n".to_vec(),
                b"\r\n".to_vec(),
            ])
        })
        .await;
        for _ in 0..3 {
            let resp = send(get(addr), T, None).await.unwrap();
            assert!(resp.headers().get("content-length").is_none(), "dropped beside chunked");
            assert_eq!(body_of(resp).await, "wikipedia");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle_count(), 1);
    }

    #[tokio::test]
    async fn a_response_saying_close_or_running_to_eof_is_not_pooled() {
        let (addr, accepted, _) = scripted(|_, n| match n {
            0 => Reply::SendClose(vec![b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi".to_vec()]),
            _ => Reply::Close,
        })
        .await;
        assert_eq!(body_of(send(get(addr), T, None).await.unwrap()).await, "hi");
        assert_eq!(idle_count(), 0);
        let (addr2, _, _) = scripted(|_, _| Reply::SendClose(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil ".to_vec(), b"the end".to_vec()])).await;
        assert_eq!(body_of(send(get(addr2), T, None).await.unwrap()).await, "until the end");
        assert_eq!(idle_count(), 0);
        assert_eq!(body_of(send(get(addr), T, None).await.unwrap()).await, "hi");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection for the second request");
    }

    #[tokio::test]
    async fn responses_without_a_body_keep_their_connection() {
        let (addr, accepted, _) = scripted(|_, n| match n {
            0 => Reply::Send(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec()]),
            1 => Reply::Send(vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec()]),
            _ => ok("last"),
        })
        .await;
        let mut head = get(addr);
        *head.method_mut() = Method::HEAD;
        let resp = send(head, T, None).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "10");
        assert!(resp.body().is_end_stream());
        drop(resp);
        let resp = send(get(addr), T, None).await.unwrap();
        assert_eq!(resp.status(), 204);
        drop(resp);
        assert_eq!(body_of(send(get(addr), T, None).await.unwrap()).await, "last");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_and_truncated_responses_are_errors() {
        let (addr, _, _) = scripted(|_, _| Reply::SendClose(vec![b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n".to_vec()])).await;
        let err = send(get(addr), T, None).await.unwrap_err();
        assert!(
            matches!(err, SendError::Protocol(ProtocolError::ContentLength(ref v)) if v == "x"),
            "{err:?}"
        );
        let (addr, _, _) = scripted(|_, _| Reply::SendClose(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly5".to_vec()])).await;
        let err = send(get(addr), T, None).await.unwrap().into_body().collect().await.unwrap_err();
        assert!(err.is::<UpstreamBodyError>(), "{err}");
        assert!(err.to_string().ends_with(&ProtocolError::Truncated.to_string()), "{err}");
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test]
    async fn a_101_hands_over_the_connection_only_to_a_request_that_asked() {
        let addr = raw_backend(|mut s| async move {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nearly")
                .await
                .unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        })
        .await;
        let err = send(get(addr), T, None).await.unwrap_err();
        assert!(matches!(err, SendError::Protocol(ProtocolError::UnaskedSwitch)), "{err:?}");

        let mut req = get(addr);
        req.headers_mut()
            .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        req.extensions_mut().insert(UpgradeRequest {
            kind: canarygate_metrics::OpenKind::WebSocket,
        });
        let resp = send(req, T, None).await.unwrap();
        assert_eq!(resp.status(), 101);
        let (mut io, early) = resp.extensions().get::<Upgraded>().and_then(Upgraded::take).unwrap();
        assert_eq!(&early[..], b"early");
        io.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        io.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert_eq!(idle_count(), 0, "a switched connection is never pooled");
    }

    /// A backend that reads a request head, then does what `then` says with the connection.
    async fn raw_backend<F, Fut>(then: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let then = Arc::new(then);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let then = then.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    then(s).await;
                });
            }
        });
        addr
    }

    /// A request body whose pieces come after `gap` each, forever when `pieces` is `None`.
    fn slow_body(gap: Duration, pieces: Option<usize>) -> Body {
        let s = futures_util::stream::unfold(0usize, move |i| async move {
            if pieces.is_some_and(|n| i >= n) {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"0123456789"))), i + 1))
        });
        Body::new(http_body_util::StreamBody::new(s))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_response_body_ends_after_the_read_timeout() {
        let addr = raw_backend(|mut s| async move {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst").await.unwrap();
            // ... and nothing more, with the connection open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await;
        let timeouts = Timeouts {
            head: Duration::from_secs(1),
            body_read: Duration::from_secs(5),
        };
        let resp = send(get(addr), timeouts, None).await.unwrap();
        let t0 = Clock::now();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        let err = body.frame().await.unwrap().unwrap_err();
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "{waited:?}");
        let inner = err.downcast_ref::<UpstreamBodyError>().expect("an upstream body error");
        assert!(matches!(inner.0, ReadError::Stalled(d) if d == Duration::from_secs(5)), "{err}");
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_does_not_count_time_waiting_for_the_client_body() {
        // A slow client: 10 pieces a second apart, 10 s in all, against a 2 s route timeout. The
        // upstream answers once it has the whole body.
        let (addr, _, seen) = scripted(|_, _| ok("done")).await;
        let timeouts = Timeouts {
            head: Duration::from_secs(2),
            body_read: Duration::from_secs(60),
        };
        let resp = send(
            request(Method::POST, addr, slow_body(Duration::from_secs(1), Some(10))),
            timeouts,
            None,
        )
        .await
        .unwrap();
        assert_eq!(body_of(resp).await, "done");
        let req = String::from_utf8(seen.lock().unwrap()[0].clone()).unwrap();
        assert!(req.contains("transfer-encoding: chunked"), "{req}");
        assert_eq!(req.matches("0123456789").count(), 10);
        // An upstream that takes longer than the route timeout after the body: 504.
        let addr = raw_backend(|s| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(s);
        })
        .await;
        let t0 = Clock::now();
        let err = send(request(Method::POST, addr, full_body("abc")), timeouts, None)
            .await
            .unwrap_err();
        assert!(matches!(err, SendError::Timeout(d) if d == Duration::from_secs(2)), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_early_answer_is_relayed_while_the_body_is_still_coming() {
        // The upstream refuses the upload as soon as it has the head (as an upload limit or an auth
        // check does), and keeps the connection open without reading the body.
        let addr = raw_backend(|mut s| async move {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await;
        let timeouts = Timeouts {
            head: Duration::from_secs(5),
            body_read: Duration::from_secs(5),
        };
        // A body that never ends.
        let resp = send(
            request(Method::POST, addr, slow_body(Duration::from_millis(10), None)),
            timeouts,
            None,
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(body_of(resp).await, "too big!");
        assert_eq!(idle_count(), 0, "a connection with an unfinished request is not reused");
        // An upstream that answers and closes, while the request body is still being written.
        let addr = raw_backend(|mut s| async move {
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        let big: &'static [u8] = Box::leak(vec![b'x'; 8 << 20].into_boxed_slice());
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(big)).map_err(|never| match never {}));
        let resp = send(request(Method::POST, addr, body), timeouts, None).await.unwrap();
        assert_eq!(resp.status(), 401);
    }

    #[tokio::test]
    async fn only_bodyless_idempotent_requests_are_retried_when_a_reused_connection_closes() {
        // Every connection answers its first request and closes silently on its second.
        let (addr, accepted, _) = scripted(|_, n| if n == 0 { ok("first") } else { Reply::Close }).await;
        assert_eq!(body_of(send(get(addr), T, None).await.unwrap()).await, "first");
        assert_eq!(idle_count(), 1);
        // The GET goes out on the pooled connection, finds it closed, and is sent again on a new one.
        assert_eq!(body_of(send(get(addr), T, None).await.unwrap()).await, "first");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST is not sent twice.
        let err = send(request(Method::POST, addr, full_body("")), T, None).await.unwrap_err();
        assert!(matches!(err, SendError::Closed), "{err:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_body_that_disagrees_with_its_length_is_refused() {
        let mut out = Vec::new();
        let data = |s: &'static str| Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))));
        let mut w = BodyWriter {
            framing: RequestFraming::Length(3),
            sent: 0,
        };
        let err = w.take(data("abcd"), true, &mut out).unwrap_err();
        assert!(
            err.source().unwrap().to_string().contains("longer than its content-length 3"),
            "{err}"
        );
        let mut w = BodyWriter {
            framing: RequestFraming::Length(3),
            sent: 0,
        };
        assert!(w.take(data("ab"), false, &mut out).unwrap());
        let err = w.take(None, true, &mut out).unwrap_err();
        assert!(
            err.source()
                .unwrap()
                .to_string()
                .contains("2 bytes, shorter than its content-length 3"),
            "{err}"
        );
    }
}

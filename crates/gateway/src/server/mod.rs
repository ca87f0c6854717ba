//! The client side of the gateway: HTTP/1.1 connections from clients, read and written by each
//! connection's own task with `httparse` (as hyper does), with no dispatch channel and no per-request
//! timer or buffer.
//!
//! A connection reads into one buffer that it keeps: a request head is split off it and frozen, so the
//! request's header values and URI are slices of it rather than copies, and once the request is done
//! the space is reused in place for the next one. A body that came with its head (the usual small
//! request) is handed over as a whole; a longer one is lent the connection's read half and buffer and
//! gives them back when read to its end. The response head and a body that is already there go out in
//! one write.
//!
//! Time limits: a client has `header_read_timeout` to send a request head, counted from the
//! connection's start for its first request and from the head's first byte for later ones; a
//! keep-alive connection idle between requests is closed after [`KEEP_ALIVE_IDLE`], and one that takes
//! no response bytes for [`SEND_TIMEOUT`] is given up on. All use one timer per connection whose
//! deadline only moves forward on the usual path, which costs no timer registration per request.
//!
//! Errors in a request head get 400 (431 when it is too large) and the connection closes. A connection
//! that closes with a request body not read to its end (a 413, a route that answered without reading
//! it) shuts its sending side and reads what the client still sends for up to [`LINGER`] before it
//! closes, so the client reads the response instead of a reset (nginx's `lingering_close`).
//!
//! Graceful shutdown: the worker marks every connection as closing; an idle one closes at once, a busy
//! one answers its request with `connection: close` and closes.

pub(crate) mod connections;
pub(crate) mod h2;

use std::future::{poll_fn, Future as _};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::{json_error, ClientBodyError};
use crate::exchange::{Ending, Peer, UpgradeRequest, Upgraded};
use crate::protocols::body_read::{BodyRead, ReadError};
use crate::protocols::h1::server::request::{parse_request_head, request_line_too_long, BadHead, FieldAt, RequestHead};
use crate::protocols::h1::server::response::{encode_response_head, encode_switching_head, Marks, ResponseFraming, ResponseHead};
use crate::protocols::h1::{self, Decoded, Decoder, Reply};
use crate::proxy::request;
use crate::server::connections::ConnCtl;
use crate::{Gateway, Limits};
use canarygate_metrics::OpenKind;

/// A keep-alive connection with no request for this long is closed (AWS load balancers' default
/// idle timeout; nginx's `keepalive_timeout` is 75 s).
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// A client that takes no response bytes for this long is disconnected (nginx's `send_timeout`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection closing with request bytes still to come reads and drops them for at most this long.
pub const LINGER: Duration = Duration::from_secs(2);
/// … and at most this many bytes.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Room a read needs; the buffer is reused in place when the previous request released it.
const READ_BUF: usize = 4096;
const MIN_READ: usize = 1024;
/// A body piece up to this size is copied behind the response head (one write); a larger one is
/// written from its own buffer.
const COPY_LIMIT: usize = 8 * 1024;
/// A write buffer grown past this (by many small pieces at once) is given back afterwards.
const KEEP_WRITE_BUF: usize = 16 * 1024;

/// Why no request head came.
enum HeadError {
    /// The client closed, went idle too long, was too slow, or the worker is shutting down: close
    /// without a response.
    Gone,
    /// A malformed head: answer with this status and close.
    Bad(StatusCode, String),
    /// The connection opened with the HTTP/2 preface (prior knowledge): it is served as HTTP/2.
    Http2,
}

impl From<BadHead> for HeadError {
    fn from(BadHead(status, msg): BadHead) -> Self {
        HeadError::Bad(status, msg)
    }
}

/// A client connection's byte stream (plain TCP or TLS), split into a read half and a write half
/// that two owners can use at once: the connection keeps the write half, and lends the read half to a
/// request body that is still arriving.
pub(crate) trait Split: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split(self) -> (Self::Read, Self::Write);
    /// The stream again from its halves (a connection that turns out to speak HTTP/2).
    fn unsplit(read: Self::Read, write: Self::Write) -> Option<Self>;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Split for tokio_rustls::server::TlsStream<S> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn unsplit(read: Self::Read, write: Self::Write) -> Option<Self> {
        read.is_pair_of(&write).then(|| read.unsplit(write))
    }
}

impl Split for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;

    /// No lock between the halves (unlike `tokio::io::split`).
    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }

    fn unsplit(read: OwnedReadHalf, write: OwnedWriteHalf) -> Option<Self> {
        read.reunite(write).ok()
    }
}

struct Conn<R, W> {
    /// `None` while lent to a request body.
    rd: Option<R>,
    wr: W,
    buf: BytesMut,
    out: Vec<u8>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Scratch space for parsing heads.
    at: Vec<FieldAt>,
    /// Bytes of the current request's body may still be on their way: linger when closing.
    unread_body: bool,
}

/// Serves one client connection until it closes.
pub(crate) async fn serve_connection<S: Split>(gw: Arc<Gateway>, stream: S, peer: Peer, ctl: Arc<ConnCtl>) {
    let mut c = Conn::new(stream);
    let limits = &gw.limits;
    let mut first = true;
    loop {
        let head = match c.read_head(&ctl, limits, first).await {
            Ok(h) => h,
            Err(HeadError::Gone) => return,
            Err(HeadError::Http2) => {
                let Conn { rd, wr, buf, .. } = c;
                let Some(stream) = rd.and_then(|rd| S::unsplit(rd, wr)) else {
                    return;
                };
                return crate::server::h2::serve(gw.clone(), stream, buf.freeze(), peer, ctl).await;
            }
            Err(HeadError::Bad(status, msg)) => {
                tracing::debug!(peer = %peer.addr, %status, error = %msg, "bad request head");
                c.unread_body = true;
                let _ = c.write_response(head_error(status, &msg), &[], false, false, false, |_| {}).await;
                c.close().await;
                return;
            }
        };
        first = false;
        let is_head = head.method == Method::HEAD;
        let http10 = head.version == Version::HTTP_10;
        let mut keep_alive = head.keep_alive;
        let (body, lent) = match c.request_body(&head, limits).await {
            Ok(b) => b,
            Err(_) => return,
        };
        let upgrade = head.upgrade.then(|| UpgradeRequest {
            kind: match head.headers.get(header::UPGRADE) {
                Some(v) if h1::connection_tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"websocket")) => OpenKind::WebSocket,
                _ => OpenKind::Upgrade,
            },
        });
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        if let Some(u) = upgrade {
            req.extensions_mut().insert(u);
        }
        let (reply, marks, finish) = request::handle(&gw, req, head.wire, &peer).await;
        let marks = marks.fields();
        if let Some(u) = upgrade.filter(|_| reply.response.status() == StatusCode::SWITCHING_PROTOCOLS) {
            if let Some(switched) = reply.response.extensions().get::<Upgraded>().and_then(Upgraded::take) {
                return c.switch(reply, &marks, switched, finish, &gw, u.kind).await;
            }
        }

        keep_alive &= c.take_back(lent) && !ctl.closing();
        let log = gw.access_log();
        match c
            .write_response(reply, &marks, is_head, http10, keep_alive, |ending| finish.done(log, ending))
            .await
        {
            Ok(true) => {}
            _ => {
                c.close().await;
                return;
            }
        }
    }
}

/// What a body lent the connection's read half gives back when it is done or dropped.
struct Lent<R> {
    rd: R,
    buf: BytesMut,
    /// Whether the body was read to its end (the connection can carry another request).
    done: bool,
}

impl<R: AsyncRead + Unpin + Send + 'static, W: AsyncWrite + Unpin> Conn<R, W> {
    /// Takes back the read half and buffer a request body was lent; whether the connection can be
    /// read again (false when the body was not read to its end, or is still held somewhere).
    fn take_back(&mut self, lent: Option<oneshot::Receiver<Lent<R>>>) -> bool {
        let Some(mut back) = lent else { return true };
        match back.try_recv() {
            Ok(l) => {
                self.rd = Some(l.rd);
                self.buf = l.buf;
                if !l.done {
                    self.unread_body = true;
                }
                l.done
            }
            Err(_) => false,
        }
    }

    fn new<S: Split<Read = R, Write = W>>(stream: S) -> Conn<R, W> {
        let (rd, wr) = stream.split();
        Conn {
            rd: Some(rd),
            wr,
            buf: BytesMut::with_capacity(READ_BUF),
            out: Vec::new(),
            timer: None,
            at: Vec::new(),
            unread_body: false,
        }
    }

    /// Reads until a whole request head is in the buffer and parses it.
    async fn read_head(&mut self, ctl: &ConnCtl, limits: &Limits, first: bool) -> Result<RequestHead, HeadError> {
        let (max, head_timeout) = (limits.max_header_bytes, limits.header_read_timeout);
        // The deadline of the current wait: for a first request or a started head, the head timeout;
        // for a keep-alive connection with nothing yet, the idle timeout.
        let mut deadline: Option<(Instant, bool)> = None;
        loop {
            // A first request that starts like the HTTP/2 preface waits for all of it.
            let preface = first
                && !self.buf.is_empty()
                && crate::server::h2::PREFACE.starts_with(&self.buf[..self.buf.len().min(crate::server::h2::PREFACE.len())]);
            if preface && self.buf.len() >= crate::server::h2::PREFACE.len() {
                return Err(HeadError::Http2);
            }
            if !self.buf.is_empty() && !preface {
                if let Some(h) = parse_request_head(&mut self.buf, limits, &mut self.at)? {
                    return Ok(h);
                }
                if self.buf.len() > limits.max_request_line + 2 && !self.buf[..limits.max_request_line + 2].contains(&b'\n') {
                    return Err(request_line_too_long(limits.max_request_line).into());
                }
                if self.buf.len() >= max {
                    return Err(HeadError::Bad(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!("request head larger than {max} bytes"),
                    ));
                }
            }
            let waiting_idle = self.buf.is_empty() && !first;
            if deadline.is_some_and(|(_, idle)| idle && !waiting_idle) {
                // The head started after an idle wait: its own time limit starts now.
                deadline = None;
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_BUF);
            }
            let Some(rd) = self.rd.as_mut() else { return Err(HeadError::Gone) };
            let (buf, timer) = (&mut self.buf, &mut self.timer);
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut *rd), cx, buf) {
                    return Poll::Ready(Some(r));
                }
                if waiting_idle || (first && buf.is_empty()) {
                    ctl.register(cx);
                    ctl.set_idle(true);
                    if ctl.closing() {
                        return Poll::Ready(None);
                    }
                }
                let (at, _) = *deadline.get_or_insert_with(|| {
                    let d = if waiting_idle { KEEP_ALIVE_IDLE } else { head_timeout };
                    (Instant::now() + d, waiting_idle)
                });
                poll_deadline(timer, at, cx).map(|()| None)
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => ctl.set_idle(false),
                // Closed by the client, failed, timed out, or shutting down.
                _ => return Err(HeadError::Gone),
            }
        }
    }

    /// The request's body: whole when it is already in the buffer, else reading from the connection,
    /// which it borrows until it is done (the receiver gives it back).
    ///
    /// A chunked body's bytes that came with the head are decoded first, before anything is forwarded:
    /// a body that ends in them is handed over whole (and forwarded with a content-length), and a
    /// framing error or a chunk over the body limit in them is the body's first frame, so the request
    /// fails with nothing sent upstream.
    async fn request_body(
        &mut self,
        head: &RequestHead,
        limits: &Limits,
    ) -> io::Result<(RequestBody<R>, Option<oneshot::Receiver<Lent<R>>>)> {
        let max = limits.max_body_bytes;
        let mut decoder = Decoder::with_limit(head.framing, max);
        let mut first = None;
        match decoder {
            Decoder::Done => return Ok((h1::WireBody::Whole(None), None)),
            Decoder::Length(n) if n <= self.buf.len() as u64 => {
                return Ok((h1::WireBody::Whole(Some(self.buf.split_to(n as usize).freeze())), None));
            }
            Decoder::Chunked(..) if !self.buf.is_empty() => {
                let mut data = Vec::new();
                let ended = loop {
                    match decoder.decode(&mut self.buf) {
                        Ok(Decoded::Data(d)) => data.push(d),
                        Ok(Decoded::End) => break Ok(true),
                        Ok(Decoded::NeedMore) => break Ok(false),
                        Err(e) => break Err(e),
                    }
                };
                let data = concat(data);
                match ended {
                    Ok(true) => return Ok((h1::WireBody::Whole(data), None)),
                    Ok(false) => first = data.map(Ok),
                    Err(e) => first = Some(Err(ReadError::from(e).into())),
                }
            }
            _ => {}
        }
        let too_large = matches!(decoder, Decoder::Length(n) if n > max);
        if head.expect_continue && !too_large && !matches!(first, Some(Err(_))) {
            write_all(&mut self.wr, &mut self.timer, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let (tx, rx) = oneshot::channel();
        let rd = self.rd.take().expect("the connection holds its read half between requests");
        let reader = BodyReader {
            lent: Some((rd, tx)),
            read: BodyRead::new(std::mem::take(&mut self.buf), decoder, limits.body_read_timeout),
            first,
        };
        Ok((h1::WireBody::Streaming(Box::new(reader)), Some(rx)))
    }

    /// The upstream agreed to switch protocols: the 101 is recorded (a request of its variant) and
    /// written, then the connection is relayed to the upstream's until it ends.
    async fn switch(
        mut self,
        reply: Reply<Body>,
        marks: Marks<'_>,
        (upstream, early): crate::exchange::Switched,
        finish: request::Finish,
        gw: &Gateway,
        kind: OpenKind,
    ) {
        let open = finish.open_connection(kind);
        self.out.clear();
        let (parts, _) = reply.response.into_parts();
        encode_switching_head(&mut self.out, ResponseHead::of(&parts, reply.wire.as_ref()), marks);
        finish.done(gw.access_log(), Ending::Complete);
        if self.flush().await.is_err() {
            return;
        }
        let Conn { rd, wr, buf, .. } = self;
        let Some(rd) = rd else { return };
        let closed = crate::protocols::tunnel::relay(rd, wr, buf.freeze(), upstream, early, gw.limits.upgrade_idle_timeout).await;
        match closed {
            crate::protocols::tunnel::Closed::Both(up, down) => {
                tracing::debug!(?kind, bytes_up = up, bytes_down = down, "relayed connection closed by both sides")
            }
            crate::protocols::tunnel::Closed::Idle => tracing::debug!(?kind, "relayed connection closed after the idle timeout"),
            crate::protocols::tunnel::Closed::Failed(e) => tracing::debug!(?kind, error = %e, "relayed connection failed"),
        }
        drop(open);
    }

    /// Writes the response with the gateway's `marks`; whether the connection can carry another request. With `keep_alive`
    /// false, or when the response says so or has no length to an HTTP/1.0 client, it says
    /// `connection: close`. `done` is told how the response ended, before its last bytes are written
    /// (so what it records is there when the client has the whole response).
    async fn write_response(
        &mut self,
        reply: impl Into<Reply<Body>>,
        marks: Marks<'_>,
        is_head: bool,
        http10: bool,
        keep_alive: bool,
        done: impl FnOnce(Ending),
    ) -> Result<bool, WriteError> {
        let mut done = Some(done);
        let mut end = |ending: Ending| {
            if let Some(f) = done.take() {
                f(ending);
            }
        };
        let r = self.write_message(reply.into(), marks, is_head, http10, keep_alive, &mut end).await;
        match &r {
            Ok(_) => end(Ending::Complete),
            Err(WriteError::Body(e)) => {
                end(Ending::Failed(e.to_string()));
                // What the client was to get so far (the head, and the body up to the failure) goes
                // out before the connection closes: a truncated response, whenever the body failed.
                let _ = self.flush().await;
            }
            Err(WriteError::Client(e)) => {
                tracing::debug!(error = %e, "the client's connection failed while the response was written");
                end(Ending::ClientGone)
            }
        }
        r
    }

    async fn write_message(
        &mut self,
        reply: Reply<Body>,
        marks: Marks<'_>,
        is_head: bool,
        http10: bool,
        keep_alive: bool,
        end: &mut impl FnMut(Ending),
    ) -> Result<bool, WriteError> {
        let (parts, mut body) = reply.response.into_parts();
        self.out.clear();
        let head = ResponseHead::of(&parts, reply.wire.as_ref());
        let ResponseFraming {
            bodyless,
            chunked,
            keep_alive,
        } = encode_response_head(&mut self.out, head, marks, body.size_hint().exact(), is_head, http10, keep_alive);
        if bodyless {
            drop(body);
            end(Ending::Complete);
            self.flush().await?;
            return Ok(keep_alive);
        }
        // What the body already has goes out with the head, in one write (a large piece is written
        // from its own buffer instead of being copied).
        let mut more = !body.is_end_stream();
        while more {
            match body.frame().now_or_never() {
                None => break,
                Some(frame) => more = self.push_frame(frame, chunked).await? && !body.is_end_stream(),
            }
        }
        loop {
            if !more {
                if chunked {
                    self.out.extend_from_slice(h1::LAST_CHUNK);
                }
                end(Ending::Complete);
            }
            self.flush().await?;
            if !more {
                return Ok(keep_alive);
            }
            let frame = body.frame().await;
            more = self.push_frame(frame, chunked).await? && !body.is_end_stream();
        }
    }

    /// Queues a body frame (as a chunk when `chunked`) behind what is in the write buffer; a large one
    /// is written at once from its own buffer. Whether the body may have more.
    async fn push_frame(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>, chunked: bool) -> Result<bool, WriteError> {
        let data = match frame {
            None => return Ok(false),
            Some(Err(e)) => return Err(WriteError::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers are not forwarded; empty frames carry nothing.
                _ => return Ok(true),
            },
        };
        if data.len() <= COPY_LIMIT {
            if chunked {
                h1::encode_chunk(&mut self.out, &data);
            } else {
                self.out.extend_from_slice(&data);
            }
            return Ok(true);
        }
        if chunked {
            h1::encode_chunk_size(&mut self.out, data.len());
        }
        self.flush().await?;
        write_all(&mut self.wr, &mut self.timer, &data).await?;
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(true)
    }

    async fn flush(&mut self) -> io::Result<()> {
        write_all(&mut self.wr, &mut self.timer, &self.out).await?;
        self.out.clear();
        if self.out.capacity() > KEEP_WRITE_BUF {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Closes the connection: when request bytes may still be on their way, after sending our side's
    /// end and reading theirs (for at most [`LINGER`]).
    async fn close(self) {
        let Conn { rd, wr, unread_body, .. } = self;
        // Dropping the write half sends our FIN.
        drop(wr);
        let Some(mut rd) = rd.filter(|_| unread_body) else { return };
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = BytesMut::with_capacity(16 * 1024);
            let mut total = 0;
            while total < LINGER_BYTES {
                sink.clear();
                match tokio_util::io::read_buf(&mut rd, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// Why a response could not be written to its end.
#[derive(Debug)]
enum WriteError {
    /// The response body failed (the upstream broke it off, stalled or framed it wrongly).
    Body(BoxError),
    /// The client's connection failed or it stopped reading.
    Client(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Client(e)
    }
}

/// Polls the connection's timer for `at`, moving its deadline there first (which costs no timer
/// registration when it moves forward).
fn poll_deadline(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if t.deadline() != at {
        t.as_mut().reset(at);
    }
    t.as_mut().poll(cx)
}

/// Writes all of `buf`; a client that takes nothing for [`SEND_TIMEOUT`] while we wait to write is
/// given up on (the timer is armed only when a write has to wait).
async fn write_all<W: AsyncWrite + Unpin>(wr: &mut W, timer: &mut Option<Pin<Box<Sleep>>>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut deadline = None;
        let n = poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *wr).poll_write(cx, buf) {
                return Poll::Ready(r);
            }
            let at = *deadline.get_or_insert_with(|| Instant::now() + SEND_TIMEOUT);
            poll_deadline(timer, at, cx).map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not read the response")))
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Pieces of a body as one buffer (a copy only when there are several).
fn concat(mut pieces: Vec<Bytes>) -> Option<Bytes> {
    match pieces.len() {
        0 => None,
        1 => pieces.pop(),
        _ => Some(pieces.concat().into()),
    }
}

/// The body of a client's request.
pub(crate) type RequestBody<R> = h1::WireBody<BodyReader<R>>;

/// A request body read from the connection, which it borrows and gives back when done or dropped.
pub(crate) struct BodyReader<R> {
    /// `None` once given back.
    lent: Option<(R, oneshot::Sender<Lent<R>>)>,
    read: BodyRead,
    /// What was decoded from the bytes that came with the head, passed on first.
    first: Option<Result<Bytes, ClientBodyError>>,
}

impl<R: AsyncRead + Unpin> h1::Arriving for BodyReader<R> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.read(cx)
    }

    fn decoder(&self) -> Decoder {
        self.read.decoder
    }
}

impl<R> BodyReader<R> {
    fn give_back(&mut self) {
        if let Some((rd, tx)) = self.lent.take() {
            let done = self.read.decoder.is_done();
            let _ = tx.send(Lent {
                rd,
                buf: std::mem::take(&mut self.read.buf),
                done,
            });
        }
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.read.decoder = Decoder::Done;
        // Not read to its end: the connection closes.
        if let Some((rd, tx)) = self.lent.take() {
            let _ = tx.send(Lent {
                rd,
                buf: BytesMut::new(),
                done: false,
            });
        }
        Poll::Ready(Some(Err(e.into())))
    }
}

impl<R: AsyncRead + Unpin> BodyReader<R> {
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(Ok(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => return self.fail(e),
            None => {}
        }
        let Some((rd, _)) = self.lent.as_mut() else {
            return Poll::Ready(None);
        };
        match self.read.poll_next(rd, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.give_back();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(data))) => {
                if self.read.decoder.is_done() {
                    self.give_back();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => self.fail(e.into()),
        }
    }
}

impl<R> Drop for BodyReader<R> {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// A JSON error for a request that never reached a stage (a bad head).
/// The answer to a request head refused before routing; the connection closes after it.
fn head_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = json_error(status, message);
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::connections::Conns;
    use crate::{AccessLog, Limits};
    use canarygate_metrics::Registry;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    static PANICKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// A gateway with no stages (every request is a 404 from the gateway itself) serving connections
    /// on a loopback port in this runtime. Returns the address and the worker's connections.
    async fn gateway(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        Arc<std::sync::Mutex<Conns>>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let gw = Arc::new(Gateway::new(Arc::new(Registry::new()), AccessLog::disabled(), limits));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(std::sync::Mutex::new(Conns::new(Default::default())));
        let c = conns.clone();
        let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, peer) = listener.accept().await.unwrap();
                let ctl = c.lock().unwrap().add();
                let conn = tokio::spawn(serve_connection(gw.clone(), s, Peer::new(peer), ctl));
                // A connection task that panicked would look like a closed connection to the client.
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    if conn.await.is_err() {
                        PANICKED.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = ended_tx.send(());
                });
            }
        });
        (addr, conns, ended)
    }

    /// Reads one response (head and a content-length body) from `s`, keeping what follows in `buf`.
    async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = r.parse(buf).unwrap() {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let code = r.code.unwrap();
                let n: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while buf.len() < len + n {
                    let mut more = [0u8; 4096];
                    let k = s.read(&mut more).await.unwrap();
                    assert!(k > 0, "connection closed in the middle of a body");
                    buf.extend_from_slice(&more[..k]);
                }
                let body = buf[len..len + n].to_vec();
                buf.drain(..len + n);
                return (code, headers, body);
            }
            let mut more = [0u8; 4096];
            let k = s.read(&mut more).await.unwrap();
            assert!(
                k > 0,
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&more[..k]);
        }
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the server closed the connection (reads end-of-file, or a reset) within 5 s.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.is_ok()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (addr, _, _) = gateway(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\nx-request-id: first\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\nx-request-id: second\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        for id in ["first", "second"] {
            let (code, h, body) = response(&mut s, &mut buf).await;
            assert_eq!(code, 404);
            assert_eq!(header(&h, "x-request-id"), Some(id));
            assert!(header(&h, "date").is_some_and(|d| d.ends_with(" GMT")), "{h:?}");
            assert_eq!(header(&h, "connection"), None);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "NotFound");
        }
        // Still open: a third request on the same connection.
        s.write_all(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut s, &mut buf).await.0, 404);
        // A request head in pieces is put together.
        for piece in [&b"GET /d HT"[..], b"TP/1.1\r\nho", b"st: x\r\n", b"\r\n"] {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(response(&mut s, &mut buf).await.0, 404);
    }

    #[tokio::test]
    async fn connection_close_and_http10_end_the_connection_after_the_response() {
        let (addr, _, _) = gateway(Limits::default()).await;
        for req in [
            &b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut buf = Vec::new();
            let (code, h, _) = response(&mut s, &mut buf).await;
            assert_eq!(code, 404);
            assert_eq!(header(&h, "connection"), Some("close"));
            assert!(closed(&mut s).await);
        }
        // HTTP/1.0 with keep-alive asked for: kept, and said so.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").await.unwrap();
            let (code, h, _) = response(&mut s, &mut buf).await;
            assert_eq!(code, 404);
            assert_eq!(header(&h, "connection"), Some("keep-alive"));
        }
    }

    #[tokio::test]
    async fn bad_heads_get_400_or_431_and_the_connection_closes() {
        let limits = Limits {
            max_header_bytes: 4096,
            max_request_line: 1024,
            max_field_bytes: 1024,
            ..Limits::default()
        };
        let (addr, _, _) = gateway(limits).await;
        let long_line = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(1100));
        let long_field = format!("GET / HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n", "a".repeat(1100));
        let big: String = (0..10).map(|i| format!("x-big-{i}: {}\r\n", "a".repeat(500))).collect();
        let big = format!("GET / HTTP/1.1\r\nhost: x\r\n{big}\r\n");
        let many: String = (0..150).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"NOT A REQUEST\r\n\r\n".to_vec(), 400, "invalid request head"),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400, "0 host header fields"),
            (
                b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_vec(),
                400,
                "2 host header fields",
            ),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400, "invalid request head"),
            (big.into_bytes(), 431, "larger than 4096 bytes"),
            (many.into_bytes(), 431, "more than 100 fields"),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n".to_vec(),
                400,
                "both transfer-encoding and content-length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
                501,
                "unsupported transfer-encoding \\\"gzip\\\"",
            ),
            // Transfer-Encoding other than exactly one `chunked`: 501, as nginx.
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: ,chunked\r\n\r\n0\r\n\r\n".to_vec(),
                501,
                "unsupported transfer-encoding \\\",chunked\\\"",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
                501,
                "unsupported transfer-encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec(),
                501,
                "unsupported transfer-encoding",
            ),
            // obs-fold (RFC 9112 §5.2: a server must reject it or replace it; we reject).
            (
                b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n folded\r\n\r\n".to_vec(),
                400,
                "invalid request head",
            ),
            // One rule for line ends, as in chunk lines and trailers: CRLF.
            (b"GET / HTTP/1.1\nhost: x\n\n".to_vec(), 400, "bare LF"),
            (b"GET / HTTP/1.1\r\nhost: x\nx-a: 1\r\n\r\n".to_vec(), 400, "bare LF"),
            (b"GET / HTTP/1.1\r\nhost: x\r\n\n".to_vec(), 400, "bare LF"),
            // Per-line limits.
            (long_line.into_bytes(), 414, "request line longer than 1024 bytes"),
            (
                format!("GET /{}", "a".repeat(2000)).into_bytes(),
                414,
                "request line longer than 1024 bytes",
            ),
            (long_field.into_bytes(), 431, "header field x-long longer than 1024 bytes"),
            // Host must be an authority.
            (b"GET / HTTP/1.1\r\nhost: a, b\r\n\r\n".to_vec(), 400, "invalid host \\\"a, b\\\""),
            (b"GET / HTTP/1.1\r\nhost: a/b\r\n\r\n".to_vec(), 400, "invalid host"),
            (b"GET / HTTP/1.1\r\nhost: user@a\r\n\r\n".to_vec(), 400, "invalid host"),
            (b"GET / HTTP/1.1\r\nhost: a:80x\r\n\r\n".to_vec(), 400, "invalid host"),
            (b"GET / HTTP/1.1\r\nhost: [zz]\r\n\r\n".to_vec(), 400, "invalid host"),
            // Targets: origin-form, absolute-form with a valid authority, or * for OPTIONS.
            (
                b"GET example.com:80 HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
                400,
                "invalid request target",
            ),
            (
                b"GET http://user@a/ HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
                400,
                "invalid request target",
            ),
            (b"GET ftp://a/ HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400, "invalid request target"),
            (b"GET * HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400, "invalid request target"),
            (
                b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n".to_vec(),
                405,
                "CONNECT is not supported",
            ),
            (b"CONNECT /x HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(), 405, "CONNECT is not supported"),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5, 6\r\n\r\nhello".to_vec(),
                400,
                "invalid content-length",
            ),
            (
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n".to_vec(),
                400,
                "invalid content-length \\\"-1\\\"",
            ),
        ];
        for (req, status, says) in cases {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&req).await.unwrap();
            let mut buf = Vec::new();
            let (code, h, body) = response(&mut s, &mut buf).await;
            let body = String::from_utf8_lossy(&body);
            assert_eq!(code, status, "{body}");
            assert!(body.contains(says), "{status}: {body} should say {says}");
            assert_eq!(header(&h, "connection"), Some("close"));
            assert!(closed(&mut s).await, "{body}");
        }
    }

    #[tokio::test]
    async fn valid_targets_and_hosts_pass_the_head_checks() {
        let (addr, _, _) = gateway(Limits::default()).await;
        for req in [
            &b"GET http://api.example.com:8080/x?y HTTP/1.1\r\nhost: other\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost:\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let (code, _, body) = response(&mut s, &mut Vec::new()).await;
            // No stage is configured: each gets as far as routing.
            assert_eq!(code, 404, "{}: {}", String::from_utf8_lossy(req), String::from_utf8_lossy(&body));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_heads_and_idle_connections_are_closed_by_their_timers() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(3),
            ..Limits::default()
        };
        let (addr, _, _) = gateway(limits).await;
        // Nothing at all: closed after the head timeout.
        let mut quiet = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        assert!(closed(&mut quiet).await);
        assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
        // A head that never ends: closed after the head timeout, counted from its first byte.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut slow, &mut buf).await.0, 404);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let t0 = Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        assert!(closed(&mut slow).await);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(5), "{waited:?}");
        // Idle after a response: open past the head timeout, closed at the idle timeout.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut idle, &mut buf).await.0, 404);
        let t0 = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(120), idle.read_to_end(&mut rest)).await;
        let waited = t0.elapsed();
        assert!(
            waited >= KEEP_ALIVE_IDLE && waited < KEEP_ALIVE_IDLE + Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn shutting_down_closes_idle_connections_at_once() {
        let (addr, conns, mut ended) = gateway(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut s, &mut buf).await.0, 404);
        assert_eq!(conns.lock().unwrap().live(), 1);
        conns.lock().unwrap().close_all();
        assert!(closed(&mut s).await);
        let task_ended = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await;
        assert!(matches!(task_ended, Ok(Some(()))), "the connection's task did not end");
        assert_eq!(conns.lock().unwrap().live(), 0);
    }

    /// Writes `resp` on a fresh connection as the server would for a client of `version`; returns
    /// whether the server would keep the connection, and everything the client received.
    async fn written(resp: Response<Body>, http10: bool, is_head: bool) -> (bool, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut c = Conn::new(server);
        let keep = c.write_response(resp, &[], is_head, http10, true, |_| {}).await.unwrap();
        drop(c);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        (keep, String::from_utf8(got).unwrap())
    }

    fn streamed(pieces: &[&str]) -> Response<Body> {
        let pieces: Vec<Bytes> = pieces.iter().map(|p| Bytes::copy_from_slice(p.as_bytes())).collect();
        let frames = futures_util::stream::iter(pieces.into_iter().map(|p| Ok::<_, BoxError>(Frame::data(p))));
        // Yields between frames, so the body is not all there when the head is written.
        let slow = futures_util::StreamExt::then(frames, |f| async move {
            tokio::task::yield_now().await;
            f
        });
        Response::new(http_body_util::StreamBody::new(slow).boxed_unsync())
    }

    #[tokio::test]
    async fn responses_are_framed_for_their_client() {
        // A body of unknown length: chunked to HTTP/1.1, until close to HTTP/1.0.
        let (keep, got) = written(streamed(&["hello ", "world"]), false, false).await;
        assert!(keep);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"), "{got}");
        let (keep, got) = written(streamed(&["hello ", "world"]), true, false).await;
        assert!(!keep);
        assert!(got.contains("connection: close\r\n") && !got.contains("chunked"), "{got}");
        assert!(got.ends_with("\r\n\r\nhello world"), "{got}");
        // A whole body: its length, in one piece; the upstream's content-length is not repeated.
        let mut r = Response::new(crate::body::full("abc"));
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        r.headers_mut()
            .insert(header::DATE, HeaderValue::from_static("Sun, 22 Nov 2026 10:00:00 GMT"));
        let (keep, got) = written(r, false, false).await;
        assert!(keep);
        assert_eq!(got.matches("content-length").count(), 1, "{got}");
        assert_eq!(got.matches("date: ").count(), 1, "the upstream's date is kept: {got}");
        assert!(got.contains("content-length: 3\r\n") && got.ends_with("\r\n\r\nabc"), "{got}");
        // HEAD and 304: no body, the length as the upstream gave it.
        let mut r = Response::new(crate::body::full("abc"));
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("1234"));
        let (keep, got) = written(r, false, true).await;
        assert!(keep);
        assert!(got.contains("content-length: 1234\r\n") && got.ends_with("\r\n\r\n"), "{got}");
        let (_, got) = written(Response::new(crate::body::full("abc")), false, true).await;
        assert!(got.contains("content-length: 3\r\n") && got.ends_with("\r\n\r\n"), "{got}");
        let mut r = Response::new(crate::body::full(""));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let (_, got) = written(r, false, false).await;
        assert!(
            got.starts_with("HTTP/1.1 304 Not Modified\r\n") && !got.contains("content-length"),
            "{got}"
        );
        // Large pieces are written from their own buffers, framed the same way.
        let big: String = (0..30_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let (keep, got) = written(Response::new(crate::body::full(big.clone())), false, false).await;
        assert!(keep);
        assert!(
            got.contains("content-length: 30000\r\n") && got.ends_with(&format!("\r\n\r\n{big}")),
            "{}",
            &got[..200]
        );
        let (keep, got) = written(streamed(&[&big, "tail", &big]), false, false).await;
        assert!(keep);
        let expected = format!("\r\n\r\n7530\r\n{big}\r\n4\r\ntail\r\n7530\r\n{big}\r\n0\r\n\r\n");
        assert!(got.ends_with(&expected), "{}", &got[..200]);
        // A response that says close is the connection's last.
        let mut r = Response::new(crate::body::full("x"));
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (keep, got) = written(r, false, false).await;
        assert!(!keep);
        assert_eq!(got.matches("connection: close").count(), 1, "{got}");
    }

    #[tokio::test]
    async fn a_body_that_fails_before_the_first_write_still_sends_what_it_had() {
        // The upstream's body broke off right after its first piece, before anything was written:
        // the head and that piece go out, then the connection closes (a truncated response), and the
        // ending says the body failed.
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"0123456789"))),
            Err::<Frame<Bytes>, BoxError>("the upstream closed the connection".into()),
        ];
        let r = Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut c = Conn::new(server);
        let mut ending = None;
        let r = c.write_response(r, &[], false, false, true, |e| ending = Some(e)).await;
        assert!(matches!(r, Err(WriteError::Body(_))));
        assert!(matches!(ending, Some(Ending::Failed(ref cause)) if cause.contains("closed")));
        drop(c);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        // Chunked (no length is known), and without its last chunk.
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\na\r\n0123456789\r\n"),
            "{got}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut c = Conn::new(server);
        // Far more than the socket buffers hold, to a client that reads nothing.
        let t0 = Instant::now();
        let write = c.write_response(
            Response::new(crate::body::full(vec![b'x'; 64 << 20])),
            &[],
            false,
            false,
            true,
            |_| {},
        );
        let r = tokio::time::timeout(SEND_TIMEOUT * 3, write).await.expect("the write gave up");
        assert!(matches!(r, Err(WriteError::Client(e)) if e.kind() == io::ErrorKind::TimedOut));
        let waited = t0.elapsed();
        assert!(
            waited >= SEND_TIMEOUT && waited < SEND_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
        drop(client);
    }

    #[tokio::test]
    async fn garbled_requests_get_an_answer_or_a_close_never_a_hang_and_the_gateway_serves_on() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, _, _) = gateway(limits).await;
        let valid = b"POST /a/b?c=d HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\nconnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let mut rng = fastrand::Rng::with_seed(std::env::var("CANARYGATE_FUZZ_SEED").map_or(6, |v| v.parse().unwrap()));
        let mut tasks = Vec::new();
        for _ in 0..300 {
            // A valid request with a few bytes flipped, cut short, or with random bytes inserted.
            let mut req = valid.to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..req.len());
                match rng.u8(..3) {
                    0 => req[i] = rng.u8(..),
                    1 => req.truncate(i.max(1)),
                    _ => req.insert(i, rng.u8(..)),
                }
            }
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&req).await.unwrap();
                // Wait for a response head or the end of the connection.
                let mut got = Vec::new();
                let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut more = [0u8; 4096];
                    loop {
                        match s.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&more[..n]),
                        }
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            return;
                        }
                    }
                })
                .await;
                let req = String::from_utf8_lossy(&req).into_owned();
                assert!(outcome.is_ok(), "no answer and no close for {req:?}");
                assert!(
                    got.is_empty() || got.starts_with(b"HTTP/1.1 "),
                    "{req:?} got {:?}",
                    String::from_utf8_lossy(&got)
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(PANICKED.load(Ordering::SeqCst), 0, "a connection task panicked");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(response(&mut s, &mut Vec::new()).await.0, 404);
    }
}

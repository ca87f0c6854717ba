//! The HTTP/1.1 wire format, with no I/O. This module: the upstream side — request heads written,
//! response heads parsed (with `httparse`, as hyper does) — and bodies framed and decoded in both
//! directions (RFC 9112 §6); [`request`]: a client's request head parsed; [`response`]: the response head
//! written to a client. The connection drivers ([`crate::server`], [`crate::upstream`]) do the I/O.
//!
//! The client side of the gateway is narrow — it writes requests the gateway itself built and reads
//! responses from upstreams it was configured with — so it runs in the request's own task (see
//! [`crate::upstream`]) instead of behind a connection task and channels, and holds a read buffer only
//! while a response is in flight.

pub(crate) mod request;
pub(crate) mod response;

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// A response head larger than this is refused (hyper's default limit is about 400 KiB; nginx's
/// `proxy_buffer_size` is 4–8 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A response with more header fields than this is refused (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Chunk-size lines (with their extensions) longer than this are refused.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Trailer sections larger than this are refused.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// A chunk size is at most 16 hex digits and below 2^63 (hyper's and nginx's bound).
const MAX_CHUNK_SIZE: u64 = 1 << 63;

/// Why an upstream's response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("unsupported response version HTTP/1.{0}")]
    Version(u8),
    #[error("invalid response header {0:?}")]
    Header(String),
    #[error("invalid content-length {0:?}")]
    ContentLength(String),
    #[error("invalid chunk size line: {0}")]
    ChunkSize(&'static str),
    #[error("missing CRLF after a chunk")]
    ChunkEnd,
    #[error("invalid trailer section: {0}")]
    Trailers(&'static str),
    /// A chunk would take the body past the decoder's budget (the request body limit).
    #[error("chunked body larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upstream closed the connection in the middle of the response")]
    Truncated,
    /// A 101 to a request that did not ask to switch protocols.
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnaskedSwitch,
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
}

/// Request fields the gateway writes itself (framing, the upstream's host, hop-by-hop fields); those
/// in the given header map are skipped.
fn written_by_us(name: &HeaderName) -> bool {
    name == header::HOST
        || name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::EXPECT
}

/// Appends `METHOD target HTTP/1.1`, `host`, the header fields and the framing field to `out`.
pub fn encode_head(out: &mut Vec<u8>, method: &Method, target: &str, host: &HeaderValue, headers: &HeaderMap, framing: RequestFraming) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut upgrade = false;
    for (name, value) in headers {
        if written_by_us(name) {
            continue;
        }
        // Left in the map only by a request that asks to switch protocols (the proxy strips it from others).
        upgrade |= name == header::UPGRADE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Empty if method_implies_body(method) => out.extend_from_slice(b"content-length: 0\r\n"),
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Methods whose requests are expected to carry a body: an empty one is sent with `content-length: 0`
/// (RFC 9110 §8.6), as curl and hyper do.
fn method_implies_body(m: &Method) -> bool {
    m == Method::POST || m == Method::PUT || m == Method::PATCH
}

/// Appends one chunk of a chunked body (`size CRLF data CRLF`); the last chunk is [`LAST_CHUNK`].
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    encode_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk's size line (`size CRLF`); its data and a CRLF follow.
pub fn encode_chunk_size(out: &mut Vec<u8>, mut n: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The header fields as received less the hop-by-hop ones (see [`parse_head`]); `content-length`
    /// is dropped beside a `transfer-encoding`.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this response is read.
    pub keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a response to HEAD; 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// Parses the response head at the start of `buf`. Interim (1xx) responses are skipped. The head's
/// map holds what a client is sent: the hop-by-hop fields (RFC 9110 §7.6.1: `connection` and those it
/// names, `keep-alive`, `te`, `trailer`, `transfer-encoding`, `upgrade` but in a 101, the `proxy-`
/// ones) are read for the framing and persistence, not kept. On success
/// `buf` is left empty and the head comes with what followed it (the start of the body), sharing
/// one buffer with the header values; `Ok(None)` means more bytes are needed (`buf` keeps all of them
/// after any interim heads, which are consumed).
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<(Head, Bytes)>, ProtocolError> {
    loop {
        // Frozen, so header values and the body can be slices of it rather than copies.
        let bytes = std::mem::take(buf).freeze();
        // Uninitialized: no 3 KiB of stores per response for fields most responses do not have.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, &bytes, &mut fields) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => return Err(ProtocolError::HeadTooLarge),
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD_BYTES => return Err(ProtocolError::HeadTooLarge),
            Ok(httparse::Status::Partial) => {
                *buf = unfreeze(bytes);
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(e) => return Err(ProtocolError::Head(e)),
        };
        let version = match res.version {
            Some(1) => Version::HTTP_11,
            Some(0) => Version::HTTP_10,
            Some(v) => return Err(ProtocolError::Version(v)),
            None => return Err(ProtocolError::Head(httparse::Error::Version)),
        };
        let status = StatusCode::from_u16(res.code.unwrap_or_default()).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            *buf = unfreeze(bytes.slice(len..));
            continue;
        }
        let head = response_head(status, version, res.headers, &bytes, method)?;
        return Ok(Some((head, bytes.slice(len..))));
    }
}

/// The bytes as a buffer to read more into (a copy only if something still shares them).
fn unfreeze(b: Bytes) -> BytesMut {
    b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]))
}

/// The options of a `Connection` field value: its comma-separated tokens, trimmed, empty ones skipped
/// (RFC 9110 §7.6.1). One parser for requests, responses and the hop-by-hop fields it names.
pub(crate) fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a message's `Connection` fields say `close` and `keep-alive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    /// The message asks to switch protocols (`connection: upgrade`).
    pub upgrade: bool,
}

impl ConnectionOptions {
    pub(crate) fn add(&mut self, value: &[u8]) {
        for t in connection_tokens(value) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
        }
    }

    /// Whether the connection may carry another message after this one (RFC 9112 §9.3).
    pub(crate) fn persistent(self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// A response field the head parser acts on, known by its name (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    Upgrade,
    /// Another hop-by-hop field: `te`, `trailer`, `keep-alive`, `proxy-connection`,
    /// `proxy-authenticate`, `proxy-authorization`.
    HopByHop,
    Other,
}

impl Field {
    fn of(name: &[u8]) -> Field {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is(b"te") => Field::HopByHop,
            7 if is(b"trailer") => Field::HopByHop,
            7 if is(b"upgrade") => Field::Upgrade,
            10 if is(b"connection") => Field::Connection,
            10 if is(b"keep-alive") => Field::HopByHop,
            14 if is(b"content-length") => Field::ContentLength,
            16 if is(b"proxy-connection") => Field::HopByHop,
            17 if is(b"transfer-encoding") => Field::TransferEncoding,
            18 if is(b"proxy-authenticate") => Field::HopByHop,
            19 if is(b"proxy-authorization") => Field::HopByHop,
            _ => Field::Other,
        }
    }
}

/// Whether a field value is what `HeaderValue::to_str` takes (visible ASCII, spaces and tabs).
fn is_text(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The head of a final response from its parsed fields (`bytes` holds them): the framing (RFC 9112
/// §6.3) and persistence they give, and the header map a client is sent, built in one pass without
/// the hop-by-hop fields (those named in `Connection` too; a 101 keeps its `upgrade`), and without
/// `content-length` beside a `transfer-encoding`.
fn response_head(
    status: StatusCode,
    version: Version,
    fields: &[httparse::Header<'_>],
    bytes: &Bytes,
    method: &Method,
) -> Result<Head, ProtocolError> {
    let mut options = ConnectionOptions::default();
    // `Connection` names a field that is not hop-by-hop already, to be removed too (but not
    // `content-length`: the framing is the gateway's own either way).
    let mut names_more = false;
    // With `transfer-encoding`: whether its last coding is chunked.
    let mut chunked_last = None;
    let mut has_length = false;
    // Each field's kind, found once.
    let mut kinds = [Field::Other; MAX_HEADERS];
    for (h, kind) in fields.iter().zip(kinds.iter_mut()) {
        *kind = Field::of(h.name.as_bytes());
        match *kind {
            Field::Connection => {
                options.add(h.value);
                names_more |= connection_tokens(h.value).any(|t| Field::of(t) == Field::Other && !t.eq_ignore_ascii_case(b"close"));
            }
            Field::TransferEncoding => {
                let last = h.value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
                chunked_last = Some(is_text(h.value) && last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            }
            Field::ContentLength => has_length = true,
            _ => {}
        }
    }
    let mut keep_alive = options.persistent(version);
    let bodyless =
        *method == Method::HEAD || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match chunked_last {
        _ if bodyless => Framing::Empty,
        // RFC 9112 §6.3: transfer-encoding overrides content-length; a response whose last coding
        // is not chunked runs until the connection closes.
        Some(true) => Framing::Chunked,
        Some(false) => Framing::Eof,
        None if has_length => Framing::Length(length_of(
            fields
                .iter()
                .zip(kinds.iter().copied())
                .filter(|&(_, k)| k == Field::ContentLength)
                .map(|(h, _)| h.value),
        )?),
        None => Framing::Eof,
    };
    if framing == Framing::Eof || status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
    }
    let drop_length = chunked_last.is_some() && !bodyless;
    // Room for the marks the proxy adds, so they do not grow the map.
    let mut headers = HeaderMap::with_capacity(fields.len() + 3);
    for (h, kind) in fields.iter().zip(kinds.iter().copied()) {
        let keep = match kind {
            Field::Other => true,
            Field::ContentLength => !drop_length,
            Field::Upgrade => status == StatusCode::SWITCHING_PROTOCOLS,
            Field::Connection | Field::TransferEncoding | Field::HopByHop => false,
        };
        if !keep {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProtocolError::Header(h.name.to_string()))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).map_err(|_| ProtocolError::Header(name.to_string()))?;
        headers.append(name, value);
    }
    if names_more {
        let connection = fields.iter().zip(kinds.iter().copied()).filter(|&(_, k)| k == Field::Connection);
        for t in connection.flat_map(|(h, _)| connection_tokens(h.value)) {
            if Field::of(t) == Field::Other && !t.eq_ignore_ascii_case(b"close") {
                if let Ok(name) = HeaderName::from_bytes(t) {
                    headers.remove(name);
                }
            }
        }
    }
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// The content length, which every `content-length` field (and list element) must state alike.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<u64, ProtocolError> {
    length_of(headers.get_all(header::CONTENT_LENGTH).iter().map(HeaderValue::as_bytes))
}

/// The content length the given `content-length` field values state alike.
fn length_of<'v>(values: impl Iterator<Item = &'v [u8]>) -> Result<u64, ProtocolError> {
    let mut found: Option<u64> = None;
    for v in values {
        let bad = || ProtocolError::ContentLength(String::from_utf8_lossy(v).into_owned());
        if !is_text(v) {
            return Err(bad());
        }
        for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let n = t.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(bad());
            }
            found = Some(n);
        }
    }
    found.ok_or_else(|| ProtocolError::ContentLength(String::new()))
}

/// Decodes a body (a request's or a response's) from the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk, Budget),
    Eof,
    Done,
}

/// How many more body bytes a chunked body may declare before it is refused as too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u64,
    pub left: u64,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        limit: u64::MAX,
        left: u64::MAX,
    };
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, this many bytes of it read so far.
    Trailers(usize),
}

/// What [`Decoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size, Budget::UNLIMITED),
            Framing::Eof => Decoder::Eof,
        }
    }

    /// A decoder that refuses a chunked body whose chunk sizes add up to more than `limit` bytes as
    /// soon as the size line that crosses it arrives (before any of that chunk is passed on).
    pub fn with_limit(framing: Framing, limit: u64) -> Decoder {
        match Decoder::new(framing) {
            Decoder::Chunked(c, _) => Decoder::Chunked(c, Budget { limit, left: limit }),
            d => d,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// How much to read next.
    pub fn want(&self) -> usize {
        match *self {
            Decoder::Length(n) => n.clamp(1, 64 * 1024) as usize,
            _ => 16 * 1024,
        }
    }

    /// The next piece of the body from `buf` (what it uses is split off `buf`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let k = (*left).min(buf.len() as u64);
                    *left -= k;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(buf.split_to(k as usize).freeze()));
                }
                Decoder::Eof => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(state, budget) => match *state {
                    Chunk::Size => match parse_chunk_line(buf)? {
                        Some((used, size)) => {
                            if size > budget.left {
                                return Err(ProtocolError::TooLarge(budget.limit));
                            }
                            budget.left -= size;
                            buf.advance(used);
                            *state = if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) };
                        }
                        None => return Ok(Decoded::NeedMore),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let k = left.min(buf.len() as u64);
                        *state = if k == left { Chunk::DataEnd } else { Chunk::Data(left - k) };
                        return Ok(Decoded::Data(buf.split_to(k as usize).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(ProtocolError::ChunkEnd);
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    // Trailer fields are checked, then dropped, as nginx does by default.
                    Chunk::Trailers(seen) => match trailer_line(buf)? {
                        Some(0) => {
                            buf.advance(2);
                            *self = Decoder::Done;
                        }
                        Some(n) => {
                            let seen = seen + n + 2;
                            *state = Chunk::Trailers(seen);
                            if seen > MAX_TRAILERS {
                                return Err(ProtocolError::Trailers("larger than 16 KiB"));
                            }
                            buf.advance(n + 2);
                        }
                        None if seen + buf.len() > MAX_TRAILERS => return Err(ProtocolError::Trailers("larger than 16 KiB")),
                        None => return Ok(Decoded::NeedMore),
                    },
                },
            }
        }
    }

    /// The connection closed: the end of an until-close body, a truncated body otherwise.
    pub fn eof(&mut self) -> Result<Decoded, ProtocolError> {
        match self {
            Decoder::Eof | Decoder::Done => {
                *self = Decoder::Done;
                Ok(Decoded::End)
            }
            _ => Err(ProtocolError::Truncated),
        }
    }
}

/// Parses a chunk-size line at the start of `buf` (RFC 9112 §7.1): 1 to 16 hex digits, optional
/// extensions, CRLF. Returns the line's length with its CRLF and the size, or `None` when the line is
/// not complete yet.
///
/// Stricter than `httparse::parse_chunk_size`, which takes an empty size, bare LF and control bytes
/// inside extensions and sizes up to 2^64: each of those lets a request be framed one way here and
/// another way by the next hop. Line endings are CRLF, as in heads and trailers.
pub fn parse_chunk_line(buf: &[u8]) -> Result<Option<(usize, u64)>, ProtocolError> {
    let digits = buf.iter().take(17).take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(ProtocolError::ChunkSize("chunk size of more than 16 hex digits"));
    }
    if digits == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(ProtocolError::ChunkSize("no chunk size"));
    }
    let size = buf[..digits]
        .iter()
        .fold(0u64, |n, &b| n << 4 | u64::from((b as char).to_digit(16).unwrap_or(0)));
    if size >= MAX_CHUNK_SIZE {
        return Err(ProtocolError::ChunkSize("chunk size of 2^63 or more"));
    }
    let Some(cr) = buf[digits..].iter().position(|&b| b == b'\r' || b == b'\n').map(|i| i + digits) else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(ProtocolError::ChunkSize("chunk size line longer than 4096 bytes"));
        }
        // Control bytes are refused as soon as they arrive.
        chunk_extensions(&buf[digits..], false)?;
        return Ok(None);
    };
    if cr > MAX_CHUNK_LINE {
        return Err(ProtocolError::ChunkSize("chunk size line longer than 4096 bytes"));
    }
    if buf[cr] == b'\n' {
        return Err(ProtocolError::ChunkSize("bare LF (lines end with CRLF)"));
    }
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProtocolError::ChunkSize("bare CR")),
    }
    chunk_extensions(&buf[digits..cr], true)?;
    Ok(Some((cr + 2, size)))
}

/// Checks chunk extensions: `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
/// With `complete` false the input may stop anywhere and only its bytes are checked.
fn chunk_extensions(ext: &[u8], complete: bool) -> Result<(), ProtocolError> {
    if let Some(&b) = ext.iter().find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ProtocolError::ChunkSize(if b == b'\r' || b == b'\n' {
            "CR or LF inside a chunk extension"
        } else {
            "control byte in a chunk extension"
        }));
    }
    if !complete {
        return Ok(());
    }
    let bad = || ProtocolError::ChunkSize("malformed chunk extension");
    let ws = |i: &mut usize| {
        while ext.get(*i).is_some_and(|&b| b == b' ' || b == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while ext.get(*i).copied().is_some_and(is_tchar) {
            *i += 1;
        }
        *i > start
    };
    let mut i = 0;
    loop {
        if i == ext.len() {
            return Ok(());
        }
        ws(&mut i);
        if ext.get(i) != Some(&b';') {
            return Err(bad());
        }
        i += 1;
        ws(&mut i);
        if !token(&mut i) {
            return Err(bad());
        }
        ws(&mut i);
        if ext.get(i) == Some(&b'=') {
            i += 1;
            ws(&mut i);
            if ext.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match ext.get(i) {
                        None => return Err(bad()),
                        Some(b'"') => break,
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            } else if !token(&mut i) {
                return Err(bad());
            }
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of the trailer line at the start of `buf` without its CRLF (0 for the empty line that
/// ends the section), or `None` when it is not complete. A trailer line is a header field: a token, a
/// colon, a value without control bytes; no obs-fold, no bare CR or LF.
fn trailer_line(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return match buf.iter().position(|&b| b == b'\r') {
            Some(cr) if cr + 1 < buf.len() => Err(ProtocolError::Trailers("bare CR")),
            _ => Ok(None),
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProtocolError::Trailers("bare LF (lines end with CRLF)"));
    }
    let line = &buf[..lf - 1];
    if line.is_empty() {
        return Ok(Some(0));
    }
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    if name == 0 || line.get(name) != Some(&b':') {
        return Err(ProtocolError::Trailers(if line[0] == b' ' || line[0] == b'\t' {
            "obs-fold"
        } else {
            "malformed trailer field"
        }));
    }
    if line[name + 1..].iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ProtocolError::Trailers("control byte in a trailer field"));
    }
    Ok(Some(line.len()))
}

/// A body read off an HTTP/1.1 connection (a client's request or an upstream's response): whole when
/// it came with its head, else still arriving.
pub enum WireBody<S> {
    Whole(Option<Bytes>),
    Streaming(Box<S>),
}

/// The reading side of a body still arriving.
pub trait Arriving {
    fn poll_data(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, crate::body::BoxError>>>;
    /// Where the body's decoding is.
    fn decoder(&self) -> Decoder;
}

impl<S: Arriving> http_body::Body for WireBody<S> {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            WireBody::Whole(b) => std::task::Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b)))),
            WireBody::Streaming(s) => s.poll_data(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            WireBody::Whole(b) => b.is_none(),
            WireBody::Streaming(s) => s.decoder().is_done(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            WireBody::Whole(b) => http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            WireBody::Streaming(s) => match s.decoder() {
                Decoder::Length(n) => http_body::SizeHint::with_exact(n),
                Decoder::Done => http_body::SizeHint::with_exact(0),
                _ => http_body::SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head, and what is left: the bytes after it, or all of them when the head is incomplete.
    fn head_of(raw: &str, method: Method) -> (Result<Option<Head>, ProtocolError>, Bytes) {
        let mut buf = BytesMut::from(raw.as_bytes());
        match parse_head(&mut buf, &method) {
            Ok(Some((h, rest))) => {
                assert!(buf.is_empty());
                (Ok(Some(h)), rest)
            }
            other => (other.map(|_| None), buf.freeze()),
        }
    }

    fn decode_all(d: &mut Decoder, input: &[&str]) -> Result<Vec<u8>, ProtocolError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pieces = input.iter();
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok(out),
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p.as_bytes()),
                    None => {
                        d.eof()?;
                        return Ok(out);
                    }
                },
            }
        }
    }

    #[test]
    fn request_head_has_host_fields_and_framing() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("client.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let host = HeaderValue::from_static("10.0.0.1:8080");
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/a?b=1", &host, &h, RequestFraming::Length(12345));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\ncontent-length: 12345\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&mut out, &Method::GET, "/", &host, &HeaderMap::new(), RequestFraming::Empty);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: 10.0.0.1:8080\r\n\r\n");
        let mut out = Vec::new();
        encode_head(&mut out, &Method::PUT, "/", &host, &HeaderMap::new(), RequestFraming::Empty);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/", &host, &HeaderMap::new(), RequestFraming::Chunked);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn chunks_are_hex_sized() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[b'x'; 26]);
        encode_chunk(&mut out, b"y");
        out.extend_from_slice(LAST_CHUNK);
        let expected = format!("1a\r\n{}\r\n1\r\ny\r\n0\r\n\r\n", "x".repeat(26));
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        let mut d = Decoder::new(Framing::Chunked);
        assert_eq!(decode_all(&mut d, &[&expected]).unwrap(), [vec![b'x'; 26], vec![b'y']].concat());
    }

    #[test]
    fn response_head_with_length_leaves_the_body_in_the_buffer() {
        let (h, rest) = head_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Y: a b\r\n\r\nhello", Method::GET);
        let h = h.unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-y"], "a b");
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let (h, rest) = head_of("HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(h.unwrap().is_none());
        assert_eq!(rest.len(), 27, "nothing consumed");
    }

    #[test]
    fn interim_responses_are_skipped() {
        let (h, rest) = head_of(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            Method::POST,
        );
        let h = h.unwrap().unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.framing, Framing::Length(0));
        assert!(rest.is_empty());
        let (h, rest) = head_of("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 2", Method::GET);
        assert!(h.unwrap().is_none());
        assert_eq!(&rest[..], b"HTTP/1.1 2", "the interim head is consumed");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &str, m: Method| head_of(raw, m).0.unwrap().unwrap();
        let h = f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 10\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(
            !h.headers.contains_key(header::CONTENT_LENGTH),
            "content-length dropped beside chunked"
        );
        let h = f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = f("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = f("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", Method::HEAD);
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers[header::CONTENT_LENGTH], "10", "kept for the client");
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", Method::GET).framing, Framing::Empty);
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n", Method::GET).framing,
            Framing::Empty
        );
        let h = f("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n", Method::GET);
        assert_eq!(h.framing, Framing::Length(3));
    }

    #[test]
    fn hop_by_hop_fields_are_read_not_kept() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nte: trailers\r\n\
                   trailer: x\r\nupgrade: h2c\r\nproxy-connection: x\r\nproxy-authenticate: Basic\r\nx-end: 2\r\n\
                   content-length: 0\r\n\r\n";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        let mut names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-end"]);
        assert!(h.keep_alive);
        // A 101 keeps the protocol it switches to; `Connection: close` names no field.
        let raw = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade, close\r\nupgrade: websocket\r\nclose: x\r\n\r\n";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        assert_eq!(h.headers[header::UPGRADE], "websocket");
        assert_eq!(h.headers["close"], "x");
        assert!(!h.headers.contains_key(header::CONNECTION) && !h.keep_alive);
        // A `Connection` naming the length does not take it: the framing needs it.
        let raw = "HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 2\r\n\r\nok";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        assert_eq!((h.framing, content_length(&h.headers)), (Framing::Length(2), Ok(2)));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let f = |raw: &str| head_of(raw, Method::GET).0.unwrap().unwrap().keep_alive;
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!f("HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n"));
        assert!(!f("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(f("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"));
    }

    #[test]
    fn bad_heads_are_errors_that_say_what() {
        let e = |raw: &str| head_of(raw, Method::GET).0.unwrap_err();
        assert_eq!(
            e("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"),
            ProtocolError::ContentLength("4".into())
        );
        assert_eq!(
            e("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
            ProtocolError::ContentLength("-1".into())
        );
        assert_eq!(
            e("HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n"),
            ProtocolError::ContentLength("+1".into())
        );
        assert!(matches!(e("SSH-2.0-OpenSSH\r\n\r\n"), ProtocolError::Head(_)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(e(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")), ProtocolError::HeadTooLarge);
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(e(&huge), ProtocolError::HeadTooLarge);
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut d = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"hel")));
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::NeedMore);
        buf.extend_from_slice(b"loEXTRA");
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"lo")));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"EXTRA", "what follows is left");
        let mut d = Decoder::new(Framing::Length(5));
        assert_eq!(decode_all(&mut d, &["abc"]), Err(ProtocolError::Truncated));
    }

    #[test]
    fn chunked_bodies_across_reads_with_extensions_and_trailers() {
        let mut d = Decoder::new(Framing::Chunked);
        let body = decode_all(&mut d, &["5;ext=1\r\nhel", "lo\r", "\n0", "\r\nx-trailer: 1\r\n", "\r\n"]).unwrap();
        assert_eq!(body, b"hello");
        assert!(d.is_done());
        let mut d = Decoder::new(Framing::Chunked);
        assert_eq!(decode_all(&mut d, &["5\r\nhelloXX"]), Err(ProtocolError::ChunkEnd));
        let mut d = Decoder::new(Framing::Chunked);
        assert!(matches!(decode_all(&mut d, &["zz\r\n"]), Err(ProtocolError::ChunkSize(_))));
        let mut d = Decoder::new(Framing::Chunked);
        assert_eq!(decode_all(&mut d, &["5\r\nhel"]), Err(ProtocolError::Truncated));
    }

    /// Each way the chunked framing can be bent to smuggle a request (request-smuggling regression
    /// cases found against httparse's lenient chunk-size parser): refused, with what is wrong.
    #[test]
    fn chunked_framing_is_strict() {
        let refused = |input: &str| {
            let mut d = Decoder::new(Framing::Chunked);
            match decode_all(&mut d, &[input]) {
                Err(e) => e.to_string(),
                Ok(body) => panic!("{input:?} was decoded as {:?}", String::from_utf8_lossy(&body)),
            }
        };
        assert!(refused("\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n").contains("no chunk size"));
        assert!(refused("2;\nxx\r\n0\r\n\r\n").contains("bare LF"));
        assert!(refused("2;a\rb\r\nxx\r\n0\r\n\r\n").contains("bare CR"));
        assert!(refused("2\nxx\r\n0\r\n\r\n").contains("bare LF"));
        assert!(refused("2\rxx\r\n0\r\n\r\n").contains("bare CR"));
        assert!(refused("2;a\x01=b\r\nxx\r\n0\r\n\r\n").contains("control byte"));
        assert!(refused("2;\r\nxx\r\n0\r\n\r\n").contains("malformed chunk extension"));
        assert!(refused("2 \r\nxx\r\n0\r\n\r\n").contains("malformed chunk extension"));
        assert!(refused("-2\r\nxx\r\n0\r\n\r\n").contains("no chunk size"));
        assert!(refused("8000000000000000\r\n").contains("2^63"));
        assert!(refused("ffffffffffffffff\r\n").contains("2^63"));
        assert!(refused("10000000000000000\r\n").contains("16 hex digits"));
        assert!(refused(&format!("1;a={}\r\nx\r\n0\r\n\r\n", "b".repeat(5000))).contains("longer than 4096"));
        // A trailer section ended by a bare LF would swallow the next pipelined request.
        assert!(refused("0\r\n\nGET /next HTTP/1.1\r\nhost: x\r\n\r\n").contains("bare LF"));
        assert!(refused("0\r\nx-t: 1\n\r\n").contains("bare LF"));
        assert!(refused("0\r\n x-folded: 1\r\n\r\n").contains("obs-fold"));
        assert!(refused("0\r\nno colon\r\n\r\n").contains("malformed trailer"));
        assert!(refused(&format!("0\r\n{}\r\n", "x-t: v\r\n".repeat(3000))).contains("16 KiB"));
        // What is valid stays valid: extensions with values and quoted strings, upper-case hex,
        // leading zeros, trailers.
        let mut d = Decoder::new(Framing::Chunked);
        let ok = decode_all(
            &mut d,
            &["0A ; a=1 ;b;c=\"x;\\\"y\"\r\n0123456789\r\n0002\r\nab\r\n0\r\nx-t: 1\r\n\r\n"],
        );
        assert_eq!(ok.unwrap(), b"0123456789ab");
        assert!(d.is_done());
    }

    #[test]
    fn a_chunked_body_over_its_budget_is_refused_at_the_size_line() {
        let mut d = Decoder::with_limit(Framing::Chunked, 10);
        let mut buf = BytesMut::from(&b"6\r\nabcdef\r\n5\r\nghijk\r\n0\r\n\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::Data(Bytes::from_static(b"abcdef")));
        assert_eq!(d.decode(&mut buf), Err(ProtocolError::TooLarge(10)));
        let mut d = Decoder::with_limit(Framing::Chunked, 10);
        assert_eq!(
            decode_all(&mut d, &["4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n"]).unwrap(),
            b"abcdefghij"
        );
        assert_eq!(Decoder::with_limit(Framing::Length(99), 10), Decoder::Length(99));
    }

    #[test]
    fn until_close_bodies_end_at_eof() {
        let mut d = Decoder::new(Framing::Eof);
        assert_eq!(decode_all(&mut d, &["a", "b"]).unwrap(), b"ab");
        assert!(d.is_done());
    }
}

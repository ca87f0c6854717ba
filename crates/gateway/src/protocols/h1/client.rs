//! The upstream side of HTTP/1.1: the request head the gateway writes, and the response head it reads
//! (with `httparse`, as hyper does).

use std::mem::MaybeUninit;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::fields::WireFields;
use super::{is_text, itoa, length_of, named_by_connection, ConnectionOptions, Framing, ProtocolError, MAX_HEADERS, MAX_HEAD_BYTES};

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

/// Header fields of an upstream request: a map; a client's fields still in its HTTP/1.1 head, to
/// be written as they came (none of them one the gateway writes itself or a hop-by-hop one: the proxy
/// has taken those out); and fields written after them (the gateway's own, never in the map).
pub struct Fields<'a> {
    pub map: &'a HeaderMap,
    pub wire: Option<&'a WireFields>,
    pub extra: &'a [(&'a HeaderName, &'a HeaderValue)],
}

impl<'a> From<(&'a HeaderMap, Option<&'a WireFields>, &'a [(&'a HeaderName, &'a HeaderValue)])> for Fields<'a> {
    fn from((map, wire, extra): (&'a HeaderMap, Option<&'a WireFields>, &'a [(&'a HeaderName, &'a HeaderValue)])) -> Fields<'a> {
        Fields { map, wire, extra }
    }
}

impl<'a> From<(&'a HeaderMap, &'a [(&'a HeaderName, &'a HeaderValue)])> for Fields<'a> {
    fn from((map, extra): (&'a HeaderMap, &'a [(&'a HeaderName, &'a HeaderValue)])) -> Fields<'a> {
        Fields { map, wire: None, extra }
    }
}

/// Appends `METHOD target HTTP/1.1`, `host`, the header fields and the framing field to `out`.
pub fn encode_head<'a>(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: &HeaderValue,
    fields: impl Into<Fields<'a>>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut upgrade = false;
    let Fields { map, wire, extra } = fields.into();
    if let Some(w) = wire {
        w.write_lines(out, |name, _, _| {
            debug_assert!(super::fields::Name::of(name).passed_on(), "{name:?}");
            true
        });
    }
    for (name, value) in map.iter().chain(extra.iter().copied()) {
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

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The header fields as received less the hop-by-hop ones (see [`parse_head`]); `content-length`
    /// is dropped beside a `transfer-encoding`.
    pub fields: WireFields,
    pub framing: Framing,
    /// Whether the connection may carry another request once this response is read.
    pub keep_alive: bool,
}

/// A response to pass on, and where its header fields are: in its map, or (`wire`) still in an HTTP/1.1
/// upstream's head, its map then empty. Only an HTTP/1.1 client's driver takes the fields from the
/// wire; everything else reads the map ([`Reply::into_response`]).
#[derive(Debug)]
pub struct Reply<B> {
    pub response: http::Response<B>,
    pub wire: Option<WireFields>,
}

impl<B> From<http::Response<B>> for Reply<B> {
    fn from(response: http::Response<B>) -> Reply<B> {
        Reply::new(response)
    }
}

impl<B> Reply<B> {
    /// A response whose fields are in its map.
    pub fn new(response: http::Response<B>) -> Reply<B> {
        Reply { response, wire: None }
    }

    /// The response with its fields in its map. Fails only on a field the map cannot hold, which
    /// httparse never passes (its rules for names and values are the map's: RFC 9110 tokens, and
    /// visible bytes, spaces and tabs).
    pub fn into_response(self) -> Result<http::Response<B>, ProtocolError> {
        let Reply { mut response, wire } = self;
        if let Some(wire) = wire {
            *response.headers_mut() = wire.into_map()?;
        }
        Ok(response)
    }
}

/// Parses the response head at the start of `buf`. Interim (1xx) responses are skipped. The head's
/// map holds what a client is sent: the hop-by-hop fields (RFC 9110 §7.6.1: `connection` and those it
/// names, `keep-alive`, `te`, `trailer`, `transfer-encoding`, `upgrade` but in a 101, the `proxy-`
/// ones) are read for the framing and persistence, not kept. On success
/// `buf` is left empty, with the room it had past what was read, and the head comes with what followed
/// it (the start of the body), sharing one buffer with the header values; `Ok(None)` means more bytes
/// are needed (`buf` keeps all of them after any interim heads, which are consumed).
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<(Head, Bytes)>, ProtocolError> {
    loop {
        // Frozen, so header values and the body can be slices of it rather than copies; split off,
        // so `buf` keeps the room past it for the connection's next response.
        let bytes = buf.split().freeze();
        // Uninitialized: no 3 KiB of stores per response for fields most responses do not have.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, &bytes, &mut fields);
        let Some(len) = head_len(parsed, bytes.len())? else {
            *buf = rejoin(bytes, buf);
            return Ok(None);
        };
        let version = match res.version {
            Some(1) => Version::HTTP_11,
            Some(0) => Version::HTTP_10,
            Some(v) => return Err(ProtocolError::Version(v)),
            None => return Err(ProtocolError::Head(httparse::Error::Version)),
        };
        let status = StatusCode::from_u16(res.code.unwrap_or_default()).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let mut rest = bytes;
            rest.advance(len);
            *buf = rejoin(rest, buf);
            continue;
        }
        let head = response_head(status, version, res.headers, &bytes, method)?;
        return Ok(Some((head, bytes.slice(len..))));
    }
}

/// The length of a complete head by httparse's verdict on `read` bytes, `None` when more are needed.
fn head_len(parsed: httparse::Result<usize>, read: usize) -> Result<Option<usize>, ProtocolError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(ProtocolError::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if read >= MAX_HEAD_BYTES => Err(ProtocolError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ProtocolError::HeadTooLarge),
        Err(e) => Err(ProtocolError::Head(e)),
    }
}

/// `read`, split off `room` (the buffer's space past them), as a buffer to read more into again: the
/// room is given up first, so that the bytes are theirs alone and come back with all of it, uncopied
/// (a copy only if something else still shares them).
fn rejoin(read: Bytes, room: &mut BytesMut) -> BytesMut {
    drop(std::mem::take(room));
    read.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]))
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
        // Every name below starts with one of these: most fields are told apart by their first byte.
        if !matches!(name.first().map(u8::to_ascii_lowercase), Some(b't' | b'u' | b'c' | b'k' | b'p')) {
            return Field::Other;
        }
        let is = |s: &[u8]| super::is_name(name, s);
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

/// Whether a `Connection` value is one of the options that name no field (what nearly every
/// response says).
fn options_only(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// Whether a field is hop-by-hop (RFC 9110 §7.6.1, and the old `keep-alive`, `proxy-connection` and
/// `proxy-` authentication fields): one list for both directions and both protocols' upstream sides.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    !matches!(Field::of(name), Field::Other | Field::ContentLength)
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
                // (`content-length` is not taken out: the framing is the gateway's either way.)
                names_more |= !options_only(h.value) && named_by_connection([h.value]).any(|t| Field::of(t) == Field::Other);
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
    let fields = client_fields(
        fields,
        &kinds,
        bytes,
        status == StatusCode::SWITCHING_PROTOCOLS,
        drop_length,
        names_more,
    );
    Ok(Head {
        status,
        fields,
        framing,
        keep_alive,
    })
}

/// The fields a client is sent: those parsed (`bytes` holds them) but the hop-by-hop ones — a 101
/// (`switching`) keeps its `upgrade` — and those `Connection` names (`names_more`), and
/// `content-length` when `drop_length`.
fn client_fields(
    fields: &[httparse::Header<'_>],
    kinds: &[Field],
    bytes: &Bytes,
    switching: bool,
    drop_length: bool,
    names_more: bool,
) -> WireFields {
    let base = bytes.as_ptr() as usize;
    // Offsets fit: a head is at most `MAX_HEAD_BYTES`.
    let at_of = |p: &[u8]| (p.as_ptr() as usize - base) as u32;
    let mut at = Vec::with_capacity(fields.len());
    for (h, kind) in fields.iter().zip(kinds.iter().copied()) {
        let keep = match kind {
            Field::Other => true,
            Field::ContentLength => !drop_length,
            Field::Upgrade => switching,
            Field::Connection | Field::TransferEncoding | Field::HopByHop => false,
        };
        if keep {
            let (start, value) = (at_of(h.name.as_bytes()), at_of(h.value));
            let name = h.name.as_bytes();
            let looked_at = kind != Field::Other
                || match name.first() {
                    Some(b'x' | b'X') => name.get(1) == Some(&b'-'),
                    Some(b'd' | b'D') => super::is_name(name, b"date"),
                    _ => false,
                };
            let flags = if looked_at { super::fields::LOOKED_AT } else { 0 };
            at.push([start, start + name.len() as u32, value, value + h.value.len() as u32, flags]);
        }
    }
    let mut wire = WireFields::new(bytes.clone(), at);
    if names_more {
        let connection = fields.iter().zip(kinds).filter(|&(_, &k)| k == Field::Connection);
        let named: Vec<&[u8]> = named_by_connection(connection.map(|(h, _)| h.value))
            .filter(|t| Field::of(t) == Field::Other)
            .collect();
        wire.retain(|name, _| !named.iter().any(|t| t.eq_ignore_ascii_case(name)));
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A head's fields as a map.
    fn map(h: &Head) -> HeaderMap {
        h.fields.clone().into_map().unwrap()
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
        encode_head(
            &mut out,
            &Method::POST,
            "/a?b=1",
            &host,
            (&h, &[][..]),
            RequestFraming::Length(12345),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\ncontent-length: 12345\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::GET,
            "/",
            &host,
            (&HeaderMap::new(), &[][..]),
            RequestFraming::Empty,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: 10.0.0.1:8080\r\n\r\n");
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::PUT,
            "/",
            &host,
            (&HeaderMap::new(), &[][..]),
            RequestFraming::Empty,
        );
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::POST,
            "/",
            &host,
            (&HeaderMap::new(), &[][..]),
            RequestFraming::Chunked,
        );
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn response_head_with_length_leaves_the_body_in_the_buffer() {
        let (h, rest) = head_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Y: a b\r\n\r\nhello", Method::GET);
        let h = h.unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(map(&h)["x-y"], "a b");
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let (h, rest) = head_of("HTTP/1.1 200 OK\r\nContent-Le", Method::GET);
        assert!(h.unwrap().is_none());
        assert_eq!(rest.len(), 27, "nothing consumed");
    }

    #[test]
    fn the_buffer_keeps_its_room_and_a_partial_head_is_not_copied() {
        let mut buf = BytesMut::with_capacity(4096);
        let start = buf.as_ptr();
        buf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_head(&mut buf, &Method::GET).unwrap().is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\nContent-Le");
        // The same allocation, with all of its room: nothing was copied or reallocated.
        assert_eq!(buf.as_ptr(), start.wrapping_add(25));
        assert_eq!(buf.capacity(), 4096 - 25);
        buf.extend_from_slice(b"ngth: 2\r\n\r\nok");
        let (head, rest) = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!((head.status, &rest[..]), (StatusCode::OK, &b"ok"[..]));
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), 4096 - 25 - 40);
        // Once the response is gone, the next read gets the whole allocation back, not a new one.
        drop((head, rest));
        buf.reserve(4096);
        assert_eq!(buf.as_ptr(), start);
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
            !map(&h).contains_key(header::CONTENT_LENGTH),
            "content-length dropped beside chunked"
        );
        let h = f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = f("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = f("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", Method::HEAD);
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(map(&h)[header::CONTENT_LENGTH], "10", "kept for the client");
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
        let headers = map(&h);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-end"]);
        assert!(h.keep_alive);
        // A 101 keeps the protocol it switches to; `Connection: close` names no field.
        let raw = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade, close\r\nupgrade: websocket\r\nclose: x\r\n\r\n";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        assert_eq!(map(&h)[header::UPGRADE], "websocket");
        assert_eq!(map(&h)["close"], "x");
        assert!(!map(&h).contains_key(header::CONNECTION) && !h.keep_alive);
        // A `Connection` naming the length does not take it: the framing needs it.
        let raw = "HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 2\r\n\r\nok";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        assert_eq!((h.framing, super::super::content_length(&map(&h))), (Framing::Length(2), Ok(2)));
    }

    #[test]
    fn wire_fields_are_the_kept_lines_as_they_came() {
        let raw = "HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Y:a b \r\n\
                   Content-Length: 2\r\nkeep-alive: timeout=5\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nok";
        let h = head_of(raw, Method::GET).0.unwrap().unwrap();
        let lines: Vec<(&[u8], &[u8], &[u8])> = h.fields.iter().collect();
        assert_eq!(
            lines,
            [
                (&b"Server"[..], &b"nginx"[..], &b"Server: nginx"[..]),
                (b"X-Y", b"a b", b"X-Y:a b"),
                (b"Content-Length", b"2", b"Content-Length: 2"),
                (b"Set-Cookie", b"a=1", b"Set-Cookie: a=1"),
                (b"set-cookie", b"b=2", b"set-cookie: b=2"),
            ]
        );
        assert!(h.fields.contains(b"content-length") && h.fields.contains(b"SERVER") && !h.fields.contains(b"x-hop"));
        // The map holds the same fields, in the same order, with lower-case names.
        let headers = map(&h);
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            pairs,
            [
                ("server", &b"nginx"[..]),
                ("x-y", b"a b"),
                ("content-length", b"2"),
                ("set-cookie", b"a=1"),
                ("set-cookie", b"b=2"),
            ]
        );
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
    fn fields_are_known_by_name_in_any_case() {
        let known = [
            ("te", Field::HopByHop),
            ("trailer", Field::HopByHop),
            ("upgrade", Field::Upgrade),
            ("connection", Field::Connection),
            ("keep-alive", Field::HopByHop),
            ("content-length", Field::ContentLength),
            ("proxy-connection", Field::HopByHop),
            ("transfer-encoding", Field::TransferEncoding),
            ("proxy-authenticate", Field::HopByHop),
            ("proxy-authorization", Field::HopByHop),
        ];
        for (name, kind) in known {
            assert_eq!(Field::of(name.as_bytes()), kind, "{name}");
            assert_eq!(Field::of(name.to_ascii_uppercase().as_bytes()), kind, "{name}");
        }
        for other in [
            "",
            "t",
            "tee",
            "content-type",
            "user-agent",
            "keep-alives",
            "server",
            "Cache-Control",
            "x-te",
            "proxy",
        ] {
            assert_eq!(Field::of(other.as_bytes()), Field::Other, "{other}");
        }
        let mut o = ConnectionOptions::default();
        o.add(b"Keep-Alive");
        assert!(o.keep_alive && !o.close && !o.upgrade);
        let mut o = ConnectionOptions::default();
        o.add(b"keep-alive, Upgrade");
        assert!(o.keep_alive && o.upgrade && !o.close);
        assert!(options_only(b"close") && options_only(b"KEEP-ALIVE") && !options_only(b"keep-alive, x-a"));
    }
}

//! The request side of the HTTP/1.1 codec, without I/O: a client's request head parsed (on `httparse`,
//! held to hyper's strictness and more: see [`parse_request_head`]) with the framing of the body that
//! follows it.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::protocols::h1::fields::{FieldsRef, Index, Name, RequestFields, PASSED_ON};
use crate::protocols::h1::Framing;
use crate::Limits;

/// A request head that must be refused: the status to answer with (400, 414, 431, 501, ...) and why.
/// The connection closes after it.
#[derive(Debug)]
pub(crate) struct BadHead(pub(crate) StatusCode, pub(crate) String);

/// A request head, parsed.
pub(crate) struct RequestHead {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    /// The header fields when they are in a map (`wire` is then `None`): a request that asks to switch
    /// protocols, or whose absolute-form target's authority replaced its `Host`. Empty otherwise.
    pub(crate) headers: HeaderMap,
    /// The header fields still in the head's bytes, with no map made: what the proxy passes on line by
    /// line to an HTTP/1.1 upstream (see [`crate::protocols::h1::fields`]).
    pub(crate) wire: Option<RequestFields>,
    pub(crate) keep_alive: bool,
    pub(crate) framing: Framing,
    pub(crate) expect_continue: bool,
    /// An HTTP/1.1 request without a body that asks to switch protocols (`connection: upgrade` and an
    /// `upgrade` field; never `h2c`): a WebSocket handshake or the like, relayed once the upstream
    /// agrees (101).
    pub(crate) upgrade: bool,
}

impl RequestHead {
    /// The header fields, wherever they are.
    pub(crate) fn fields(&self) -> FieldsRef<'_> {
        FieldsRef::of(&self.headers, self.wire.as_ref())
    }
}

pub(crate) fn request_line_too_long(max: usize) -> BadHead {
    BadHead(StatusCode::URI_TOO_LONG, format!("request line longer than {max} bytes"))
}

/// Whether `a` is a valid `Host` (RFC 9112 §3.2, RFC 3986 §3.2.2): a name of letters, digits and
/// `-._~`, an IPv4 address, or an IPv6 literal in brackets, with an optional port. Stricter than the
/// RFC's reg-name (no sub-delims, no percent-encoding): a `Host` of `a, b`, `a/b` or `user@a` is
/// refused rather than copied into `x-forwarded-host` or matched against a domain.
pub(crate) fn valid_authority(a: &[u8]) -> bool {
    let (_, port) = if a.first() == Some(&b'[') {
        let Some(end) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &a[1..end];
        if inner.is_empty() || !inner.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        a.split_at(end + 1)
    } else {
        let (host, port) = a.split_at(a.iter().position(|&b| b == b':').unwrap_or(a.len()));
        if host.is_empty() || !host.iter().all(|&b| NAME_BYTES[usize::from(b)]) {
            return false;
        }
        (host, port)
    };
    port.is_empty() || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit))
}

/// The bytes of a host name `valid_authority` takes: letters, digits and `-._~`.
static NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_' || c == b'~';
        b += 1;
    }
    t
};

/// Where a header field's name and value sit in the buffer.
pub(crate) type FieldAt = (usize, usize, usize, usize);

fn offset_in(base: &[u8], part: &[u8]) -> (usize, usize) {
    (part.as_ptr() as usize - base.as_ptr() as usize, part.len())
}

/// Parses the request head at the start of `buf` and splits it off; `Ok(None)` when more is needed.
/// `at` is scratch space for the fields' positions (kept by the connection, so not allocated per request).
///
/// Beyond what `httparse` checks: every line ends with CRLF (as chunk lines and trailers must; a bare
/// LF is refused, not taken as a line end), the request line and each field have their own length
/// limits (414, 431), `Host` must be a valid authority, and an absolute-form target's authority
/// replaces `Host` (RFC 9112 §3.2.2).
pub(crate) fn parse_request_head(buf: &mut BytesMut, limits: &Limits, at: &mut Vec<FieldAt>) -> Result<Option<RequestHead>, BadHead> {
    let max = limits.max_header_bytes;
    let too_large = || {
        BadHead(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "request head larger than {max} bytes or with more than {} fields",
                crate::protocols::h1::MAX_HEADERS
            ),
        )
    };
    // Uninitialized: no 3 KiB of stores per request for fields most requests do not have.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; crate::protocols::h1::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut fields) {
        // (Offsets into the head are kept as `u32`s.)
        Ok(httparse::Status::Complete(len)) if len > max || len > u32::MAX as usize => return Err(too_large()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => return Err(bad(format!("invalid request head: {e}"))),
    };
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(BadHead(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "unsupported HTTP version".into())),
    };
    let method = req.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad(format!("invalid method {method:?}")))?;
    // canarygate never tunnels; a CONNECT forwarded as an ordinary request would reach a backend that
    // did not expect one (nginx answers 405, HAProxy 400).
    if method == Method::CONNECT {
        return Err(BadHead(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported (the gateway does not tunnel)".into(),
        ));
    }
    let path = req.path.unwrap_or_default();
    let path_at = offset_in(buf, path.as_bytes());
    at.clear();
    for h in req.headers.iter() {
        let (ns, nl) = offset_in(buf, h.name.as_bytes());
        let (vs, vl) = offset_in(buf, h.value);
        at.push((ns, nl, vs, vl));
    }
    check_lines(buf, len, at, limits)?;
    // Frozen, so the URI and the header values are slices of it rather than copies.
    let bytes = buf.split_to(len).freeze();
    let target = bytes.slice(path_at.0..path_at.0 + path_at.1);
    let (target, uri) = parse_target(target)?;
    let Fields {
        wire,
        connection,
        expect_continue,
        transfer_encoding,
        upgrade_field,
        hosts,
    } = read_fields(&bytes, at)?;
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host field.
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(bad(format!("{hosts} host header fields (an HTTP/1.1 request has exactly one)")));
    }
    let framing = request_framing(FieldsRef::Wire(&wire), transfer_encoding, version).map_err(|(status, msg)| BadHead(status, msg))?;
    let upgrade = upgrade_field && connection.upgrade && version == Version::HTTP_11 && framing == Framing::Empty;
    let (headers, wire) = home(wire, upgrade, target_host(&target, &uri, &method)?)?;
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        wire,
        keep_alive: connection.persistent(version),
        framing,
        expect_continue: expect_continue && version == Version::HTTP_11,
        upgrade,
    }))
}

/// Where a request's fields are read from: the head's bytes, but where a map is what is read — an
/// upgrade (its driver and relay read them), a target's authority that replaces `Host`.
fn home(wire: RequestFields, upgrade: bool, host: Option<HeaderValue>) -> Result<(HeaderMap, Option<RequestFields>), BadHead> {
    if !upgrade && host.is_none() {
        return Ok((HeaderMap::new(), Some(wire)));
    }
    let mut headers = wire.wire.into_map().map_err(|e| bad(e.to_string()))?;
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    Ok((headers, None))
}

fn bad(msg: String) -> BadHead {
    BadHead(StatusCode::BAD_REQUEST, msg)
}

/// Line ends and lengths: every line of the head (`len` bytes of `buf`, its fields at `at`) ends with
/// CRLF, the request line is at most `max_request_line` bytes (414) and each field `max_field_bytes`
/// (431).
fn check_lines(buf: &[u8], len: usize, at: &[FieldAt], limits: &Limits) -> Result<(), BadHead> {
    // Each line ends where the next begins, less its CRLF; the head ends with an empty line.
    let crlf_before = |pos: usize| pos >= 2 && &buf[pos - 2..pos] == b"\r\n";
    if !buf[..len].ends_with(b"\r\n\r\n") || !at.iter().all(|&(ns, ..)| crlf_before(ns)) {
        return Err(bad("bare LF in the request head (lines end with CRLF)".into()));
    }
    let line_ends = at.iter().map(|&(ns, ..)| ns - 2).chain(std::iter::once(len - 4));
    let mut starts = std::iter::once(0).chain(at.iter().map(|&(ns, ..)| ns));
    for (i, end) in line_ends.enumerate() {
        let start = starts.next().unwrap_or(end);
        if i == 0 && end - start > limits.max_request_line {
            return Err(request_line_too_long(limits.max_request_line));
        }
        if i > 0 && end - start > limits.max_field_bytes {
            let (ns, nl, ..) = at[i - 1];
            return Err(BadHead(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "header field {} longer than {} bytes",
                    String::from_utf8_lossy(&buf[ns..ns + nl]),
                    limits.max_field_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// The request target as a URI, and the bytes it was made of.
fn parse_target(target: Bytes) -> Result<(Bytes, Uri), BadHead> {
    match Uri::from_maybe_shared(target.clone()) {
        Ok(uri) => Ok((target, uri)),
        // Bytes real clients send unencoded (`"`, `<`, `|`, `\`, ...), which nginx takes: forwarded
        // percent-encoded, which means the same to the backend and cannot re-frame anything. (What the
        // URI type takes raw, as `{` in a query or UTF-8, goes on as it came.)
        Err(_) => {
            let encoded = Bytes::from(percent_encode_target(&target));
            match Uri::from_maybe_shared(encoded.clone()) {
                Ok(uri) => Ok((encoded, uri)),
                Err(_) => Err(bad(format!("invalid request target {}", quoted(&target)))),
            }
        }
    }
}

/// What the header fields of a request head say, beside the fields kept.
struct Fields {
    wire: RequestFields,
    connection: crate::protocols::h1::ConnectionOptions,
    expect_continue: bool,
    transfer_encoding: bool,
    upgrade_field: bool,
    hosts: usize,
}

/// The longest field name a header map holds (`http`'s limit): a longer one is refused here, so that
/// the kept fields can always be made a map.
const MAX_NAME: usize = (1 << 16) - 1;

/// The fields of a request head (`bytes`, its fields at `at`) to keep, without an h2c upgrade's, and
/// what its fields say of the connection, the framing and the host. httparse has checked each name
/// (a token) and value (visible bytes, spaces and tabs), a header map's own rules.
fn read_fields(bytes: &Bytes, at: &[FieldAt]) -> Result<Fields, BadHead> {
    let mut kept = Vec::with_capacity(at.len());
    let mut index = Index::default();
    let mut connection = crate::protocols::h1::ConnectionOptions::default();
    let mut expect_continue = false;
    let mut transfer_encoding = false;
    let mut upgrade_field = false;
    let mut hosts = 0;
    for &(ns, nl, vs, vl) in at {
        let (name, value) = (&bytes[ns..ns + nl], &bytes[vs..vs + vl]);
        if nl > MAX_NAME {
            return Err(bad(format!("invalid header name {}", quoted(name))));
        }
        let known = Name::of(name);
        match known {
            Name::Connection => connection.add(value),
            Name::Expect => expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            Name::TransferEncoding => transfer_encoding = true,
            // An HTTP/2 cleartext upgrade (RFC 9113 §3.1 removed it; `curl --http2` still offers it) is
            // ignored, as nginx and HAProxy do: the request is served over HTTP/1.1, and neither field
            // is forwarded (an h2c upgrade through a proxy is a known smuggling path).
            Name::Upgrade if crate::protocols::h1::connection_tokens(value).any(|t| t.eq_ignore_ascii_case(b"h2c")) => continue,
            Name::Http2Settings => continue,
            Name::Upgrade => upgrade_field = true,
            Name::Host => {
                hosts += 1;
                if !value.is_empty() && !valid_authority(value) {
                    return Err(bad(format!("invalid host {}", quoted(value))));
                }
            }
            _ => {}
        }
        index.add(kept.len(), known, value);
        // Offsets fit: the caller refuses a head of more than `u32::MAX` bytes.
        let flags = if known.passed_on() { PASSED_ON } else { 0 };
        kept.push([ns as u32, (ns + nl) as u32, vs as u32, (vs + vl) as u32, flags]);
    }
    Ok(Fields {
        wire: RequestFields::new(bytes.clone(), kept, index),
        connection,
        expect_continue,
        transfer_encoding,
        upgrade_field,
        hosts,
    })
}

/// Checks the target's form: origin-form, `*` for OPTIONS, or absolute-form, whose authority is the
/// host (returned, to replace `Host`: RFC 9112 §3.2.2).
fn target_host(target: &[u8], uri: &Uri, method: &Method) -> Result<Option<HeaderValue>, BadHead> {
    match (uri.scheme_str(), uri.authority()) {
        (None, None) if target.starts_with(b"/") || (target == b"*" && *method == Method::OPTIONS) => Ok(None),
        (Some(scheme), Some(authority))
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && valid_authority(authority.as_str().as_bytes()) =>
        {
            HeaderValue::from_str(authority.as_str())
                .map(Some)
                .map_err(|_| bad("invalid request target".into()))
        }
        _ => Err(bad(format!("invalid request target {}", quoted(target)))),
    }
}

/// How the request body is delimited (RFC 9112 §6.3). A request with both `transfer-encoding` and
/// `content-length` is refused (400), and so is any `transfer-encoding` other than exactly one
/// `chunked` (501, as nginx answers): a proxy that guessed would let a request be smuggled past it.
pub(crate) fn request_framing(fields: FieldsRef<'_>, transfer_encoding: bool, version: Version) -> Result<Framing, (StatusCode, String)> {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    let joined = |name: &HeaderName| {
        let values: Vec<_> = fields.get_all(name).map(String::from_utf8_lossy).collect();
        quoted(values.join(", ").as_bytes())
    };
    if transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(bad("transfer-encoding in an HTTP/1.0 request".into()));
        }
        if fields.contains(&header::CONTENT_LENGTH) {
            return Err(bad("both transfer-encoding and content-length".into()));
        }
        let mut values = fields.get_all(&header::TRANSFER_ENCODING);
        return match (values.next(), values.next()) {
            (Some(v), None) if v.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err((
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "unsupported transfer-encoding {} (only chunked)",
                    joined(&header::TRANSFER_ENCODING)
                ),
            )),
        };
    }
    if fields.contains(&header::CONTENT_LENGTH) {
        return crate::protocols::h1::length_of(fields.get_all(&header::CONTENT_LENGTH))
            .map(|n| if n == 0 { Framing::Empty } else { Framing::Length(n) })
            .map_err(|_| bad(format!("invalid content-length {}", joined(&header::CONTENT_LENGTH))));
    }
    Ok(Framing::Empty)
}

/// A value from a request quoted for an error message: at most 200 bytes of it, with its length when
/// it was longer (an answer never echoes a large input back).
fn quoted(value: &[u8]) -> String {
    const KEEP: usize = 200;
    if value.len() <= KEEP {
        return format!("{:?}", String::from_utf8_lossy(value));
    }
    format!("{:?}… ({} bytes)", String::from_utf8_lossy(&value[..KEEP]), value.len())
}

/// A request target with the bytes a URI may not hold raw (RFC 3986: `"`, `<`, `>`, `\`, `^`, `` ` ``,
/// `{`, `|`, `}` and every byte above 0x7F) percent-encoded; the rest as it came. httparse has already
/// refused control bytes and spaces.
fn percent_encode_target(target: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(target.len() + 16);
    for &b in target {
        if b"\"<>\\^`{|}".contains(&b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_authorities() {
        for ok in [
            "a",
            "api.example.com",
            "a-b_c~d.e:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:9090",
            "x:",
            "[fe80::1.2.3.4]:1",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", ":80", "a, b", "a,b", "a/b", "user@a", "a b", "a:8o", "a:123456", "[::1", "[]", "[::g]", "a%20b", "a\\b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let request_framing = |h: &HeaderMap, te, v| request_framing(FieldsRef::Map(h), te, v);
        assert_eq!(request_framing(&h(&[]), false, Version::HTTP_11), Ok(Framing::Empty));
        assert_eq!(
            request_framing(&h(&[("content-length", "0")]), false, Version::HTTP_11),
            Ok(Framing::Empty)
        );
        assert_eq!(
            request_framing(&h(&[("content-length", "12")]), false, Version::HTTP_11),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&h(&[("content-length", "12"), ("content-length", "12")]), false, Version::HTTP_11),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&h(&[("transfer-encoding", "Chunked")]), true, Version::HTTP_11),
            Ok(Framing::Chunked)
        );
        assert!(request_framing(&h(&[("transfer-encoding", "gzip, chunked")]), true, Version::HTTP_11).is_err());
        assert!(request_framing(&h(&[("transfer-encoding", "chunked")]), true, Version::HTTP_10).is_err());
        assert!(request_framing(&h(&[("content-length", "1x")]), false, Version::HTTP_11).is_err());
    }

    #[test]
    fn an_h2c_upgrade_is_ignored_and_not_forwarded() {
        let limits = Limits::default();
        let mut at = Vec::new();
        for head in [
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket, H2C\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            let h = parse_request_head(&mut buf, &limits, &mut at).unwrap().unwrap();
            assert!(!h.upgrade, "{head:?}");
            assert!(
                h.fields().get(&header::UPGRADE).is_none() && h.fields().get(&HeaderName::from_static("http2-settings")).is_none(),
                "{head:?}"
            );
        }
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
        assert!(parse_request_head(&mut buf, &limits, &mut at).unwrap().unwrap().upgrade);
    }

    #[test]
    fn errors_quote_a_request_value_only_in_part() {
        let limits = Limits::default();
        let mut at = Vec::new();
        let host = "h".repeat(5000) + "/";
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_str());
        let Err(BadHead(status, msg)) = parse_request_head(&mut buf, &limits, &mut at) else {
            panic!("accepted")
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(msg.len() < 300 && msg.ends_with("(5001 bytes)"), "{msg}");
        assert_eq!(quoted(b"ab"), "\"ab\"");
    }

    #[test]
    fn raw_bytes_nginx_takes_in_a_target_are_percent_encoded() {
        let limits = Limits::default();
        let mut at = Vec::new();
        let mut target = |line: &[u8]| {
            let mut head = b"GET ".to_vec();
            head.extend_from_slice(line);
            head.extend_from_slice(b" HTTP/1.1\r\nhost: x\r\n\r\n");
            let mut buf = BytesMut::from(&head[..]);
            parse_request_head(&mut buf, &limits, &mut at).map(|h| h.unwrap().uri.to_string())
        };
        assert_eq!(target(b"/a?q=\"x\"").unwrap(), "/a?q=%22x%22");
        assert_eq!(target(b"/a?q={1}|<2>").unwrap(), "/a?q=%7B1%7D%7C%3C2%3E");
        assert_eq!(target(b"/a\\b^c`").unwrap(), "/a%5Cb%5Ec%60");
        // UTF-8 is taken as it came (as the URI type does), also beside a byte that is encoded.
        assert_eq!(target("/caf\u{e9}".as_bytes()).unwrap(), "/caf\u{e9}");
        assert_eq!(target("/caf\u{e9}?\"".as_bytes()).unwrap(), "/caf\u{e9}?%22");
        // What the URI type takes raw (a `{` in a query) goes on as it came.
        assert_eq!(target(b"/a?{x}").unwrap(), "/a?{x}");
        // What was valid stays byte for byte, percent signs included.
        assert_eq!(target(b"/a%2Fb?x=%7B&y=~!$'()*+,;=:@").unwrap(), "/a%2Fb?x=%7B&y=~!$'()*+,;=:@");
        // Control bytes and spaces are still refused (httparse), as is a target not starting with /.
        assert!(target(b"/a\x01b").is_err());
        assert!(target(b"a{b}").is_err());
    }

    #[test]
    fn only_a_bodyless_http11_request_with_connection_upgrade_asks_to_switch() {
        let limits = Limits::default();
        let mut at = Vec::new();
        let mut upgrade = |head: &str| {
            let mut buf = BytesMut::from(head);
            parse_request_head(&mut buf, &limits, &mut at).unwrap().unwrap().upgrade
        };
        assert!(upgrade(
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\r\n"
        ));
        // No `connection: upgrade`: the field is hop-by-hop noise, stripped.
        assert!(!upgrade("GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n"));
        // No `upgrade` field.
        assert!(!upgrade("GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n\r\n"));
        // HTTP/1.0 cannot switch; nor can a request with a body (it would be relayed as the new protocol).
        assert!(!upgrade("GET /ws HTTP/1.0\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"));
        assert!(!upgrade(
            "POST /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\ncontent-length: 3\r\n\r\nabc"
        ));
    }
}

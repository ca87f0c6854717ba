//! Header fields as an HTTP/1.1 peer sent them, kept where they lie in its head's bytes
//! ([`WireFields`]), both directions: an upstream's response fields go to an HTTP/1.1 client, and an
//! HTTP/1.1 client's request fields to an HTTP/1.1 upstream, each line as it came, with no header map
//! made; a map is made from them only where one is read whole. [`FieldsRef`] reads one field of a
//! request wherever its fields are.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::ProtocolError;

/// Header fields where they lie in a head's bytes: each kept field's line start, name end, value start
/// and value end, and (a request's) whether it is passed on as it came ([`PASSED_ON`]). A line is the name, `:`, any whitespace and the value (httparse takes nothing else:
/// no space before the colon, no folded lines), and its name and value follow httparse's rules, which
/// are a header map's (RFC 9110 tokens; visible bytes, spaces and tabs), so a map can always be made
/// from them (the fuzz targets check it, both directions).
#[derive(Debug, Clone)]
pub struct WireFields {
    /// The head's bytes (for a response, sharing one buffer with the body's first bytes).
    bytes: Bytes,
    at: Vec<[u32; 5]>,
}

/// A request's fields still in an HTTP/1.1 client's head, with what its parser found of them on the
/// way ([`Index`]; each field's [`PASSED_ON`] flag). Apart from [`WireFields`] so that a response's
/// fields (carried by value through every phase back to the client) stay as small as they were.
#[derive(Debug, Clone)]
pub(crate) struct RequestFields {
    pub(crate) wire: WireFields,
    pub(crate) index: Index,
}

impl RequestFields {
    /// The fields at `at` in `bytes` (at most [`super::MAX_HEADERS`]), as the parser indexed them.
    pub(crate) fn new(bytes: Bytes, at: Vec<[u32; 5]>, index: Index) -> RequestFields {
        debug_assert!(at.len() <= super::MAX_HEADERS && super::MAX_HEADERS < 256);
        RequestFields {
            wire: WireFields::new(bytes, at),
            index,
        }
    }

    /// The place of the first field `name`: from the index when it keeps the name, else by looking.
    fn first(&self, name: &HeaderName) -> Option<usize> {
        match SLOT_NAMES.iter().position(|n| n == name) {
            Some(slot) => self.index.first[slot].checked_sub(1).map(usize::from),
            None => self
                .wire
                .iter()
                .position(|(n, ..)| n.eq_ignore_ascii_case(name.as_str().as_bytes())),
        }
    }

    /// The first value of the field `name` as a field value sharing the head's bytes.
    pub(crate) fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        let [_, _, value, end, _] = self.wire.at[self.first(name)?];
        HeaderValue::from_maybe_shared(self.wire.bytes.slice(value as usize..end as usize)).ok()
    }

    /// The fields an upstream request carries as they came (see [`Name::passed_on`]), less those
    /// `named` (by a `Connection` field).
    pub(crate) fn passed_on(self, named: &[Vec<u8>]) -> WireFields {
        let mut wire = self.wire;
        let bytes = &wire.bytes;
        wire.at.retain(|&[start, name_end, _, _, flags]| {
            flags & PASSED_ON != 0
                && (named.is_empty()
                    || !named
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&bytes[start as usize..name_end as usize])))
        });
        wire
    }
}

/// The fields a request's phases look up, found by the request parser in its one pass over the
/// fields: where the first of each is, and whether a `Connection` field names more fields. Eight
/// bytes: the fields travel by value through the request's phases (and their futures).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Index {
    /// One more than the place of the first field of each name [`Name::slot`] keeps (0: none).
    first: [u8; SLOTS],
    /// A `Connection` field names a field besides its `keep-alive` and `close` options.
    pub(crate) names_more: bool,
}

/// The names [`Index`] keeps the first field of, in [`Name::slot`]'s order (standard names first: a
/// lookup compares them by kind, the others by their bytes).
static SLOT_NAMES: [HeaderName; SLOTS] = [
    http::header::HOST,
    http::header::CONTENT_LENGTH,
    http::header::USER_AGENT,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("traceparent"),
];

/// A field's flag (in its fifth word): a request field an upstream request carries as it came (see
/// [`Name::passed_on`]); set by the request parser.
pub(crate) const PASSED_ON: u32 = 1;

/// A field's flag (in its fifth word): a response field whose name the head writer has to look at
/// (`content-length`, `date`, `connection`, `transfer-encoding`, and every `x-` name, as the
/// gateway's marks are); set by the response parser. A field without it is written as it came.
pub(crate) const LOOKED_AT: u32 = 2;

/// How many names [`Index`] keeps the first field of.
const SLOTS: usize = 6;

/// A request field's name as the gateway knows it: each one a phase acts on or looks up, told apart
/// with one comparison (by length, then first byte, then the name in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    /// Only an h2c upgrade carries it.
    Http2Settings,
    /// Another hop-by-hop field (RFC 9110 §7.6.1, and the old ones): `te`, `trailer`, `keep-alive`,
    /// `proxy-connection`, `proxy-authenticate`, `proxy-authorization`.
    HopByHop,
    XForwardedFor,
    /// `x-forwarded-proto`, `x-forwarded-host`.
    Forwarding,
    RequestId,
    UserAgent,
    TraceParent,
    Other,
}

impl Name {
    pub(crate) fn of(name: &[u8]) -> Name {
        let is = |s: &[u8]| super::is_name(name, s);
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        match (name.len(), first) {
            (2, b't') if is(b"te") => Name::HopByHop,
            (4, b'h') if is(b"host") => Name::Host,
            (6, b'e') if is(b"expect") => Name::Expect,
            (7, b'u') if is(b"upgrade") => Name::Upgrade,
            (7, b't') if is(b"trailer") => Name::HopByHop,
            (10, b'c') if is(b"connection") => Name::Connection,
            (10, b'k') if is(b"keep-alive") => Name::HopByHop,
            (10, b'u') if is(b"user-agent") => Name::UserAgent,
            (11, b't') if is(b"traceparent") => Name::TraceParent,
            (12, b'x') if is(b"x-request-id") => Name::RequestId,
            (14, b'c') if is(b"content-length") => Name::ContentLength,
            (14, b'h') if is(b"http2-settings") => Name::Http2Settings,
            (15, b'x') if is(b"x-forwarded-for") => Name::XForwardedFor,
            (16, b'p') if is(b"proxy-connection") => Name::HopByHop,
            (16, b'x') if is(b"x-forwarded-host") => Name::Forwarding,
            (17, b't') if is(b"transfer-encoding") => Name::TransferEncoding,
            (17, b'x') if is(b"x-forwarded-proto") => Name::Forwarding,
            (18, b'p') if is(b"proxy-authenticate") => Name::HopByHop,
            (19, b'p') if is(b"proxy-authorization") => Name::HopByHop,
            _ => Name::Other,
        }
    }

    /// Whether a client's request field of this name goes on to an upstream as it came: not a
    /// hop-by-hop field, not one the upstream request's head writes itself (host, framing, `expect`),
    /// not a forwarding field (replaced by the gateway's). Fields a `Connection` field names are not
    /// either (not known from the name alone: see [`Index::names_more`]).
    pub(crate) fn passed_on(self) -> bool {
        matches!(self, Name::UserAgent | Name::TraceParent | Name::Http2Settings | Name::Other)
    }

    /// Where [`Index`] keeps the first field of this name, if it does.
    fn slot(self) -> Option<usize> {
        match self {
            Name::Host => Some(0),
            Name::ContentLength => Some(1),
            Name::UserAgent => Some(2),
            Name::RequestId => Some(3),
            Name::XForwardedFor => Some(4),
            Name::TraceParent => Some(5),
            _ => None,
        }
    }
}

impl Index {
    /// Notes field number `i` (of at most 255), of name `name`.
    pub(crate) fn add(&mut self, i: usize, name: Name, value: &[u8]) {
        if name == Name::Connection {
            self.names_more |= super::named_by_connection([value]).next().is_some();
        }
        if let Some(slot) = name.slot() {
            if self.first[slot] == 0 {
                self.first[slot] = i as u8 + 1;
            }
        }
    }
}

impl WireFields {
    /// The fields at `at` (line start, name end, value start, value end, flags) in `bytes`.
    pub(crate) fn new(bytes: Bytes, at: Vec<[u32; 5]>) -> WireFields {
        WireFields { bytes, at }
    }

    /// The value of field number `i`.
    fn value_at(&self, i: usize) -> &[u8] {
        let [_, _, value, end, _] = self.at[i];
        &self.bytes[value as usize..end as usize]
    }

    /// Each field's name (in the case it came in), its value, and its line without the CRLF.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> + '_ {
        self.at.iter().map(|&[start, name_end, value, end, _]| {
            let (start, name_end, value, end) = (start as usize, name_end as usize, value as usize, end as usize);
            (&self.bytes[start..name_end], &self.bytes[value..end], &self.bytes[start..end])
        })
    }

    /// Appends the lines `keep` says yes to (by name, value and flags), each with its CRLF. Lines that
    /// follow each other in the head, one CRLF apart, go in one piece: the same bytes, fewer copies.
    pub(crate) fn write_lines(&self, out: &mut Vec<u8>, mut keep: impl FnMut(&[u8], &[u8], u32) -> bool) {
        let b = &self.bytes[..];
        // The lines of the current piece: from the start of its first to the end of its last value.
        let mut piece: Option<(usize, usize)> = None;
        for &[start, name_end, value, end, flags] in &self.at {
            let (start, end) = (start as usize, end as usize);
            if !keep(&b[start..name_end as usize], &b[value as usize..end], flags) {
                continue;
            }
            piece = match piece {
                Some((from, to)) if b.get(to..start) == Some(&b"\r\n"[..]) => Some((from, end)),
                Some((from, to)) => {
                    out.extend_from_slice(&b[from..to]);
                    out.extend_from_slice(b"\r\n");
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((from, to)) = piece {
            out.extend_from_slice(&b[from..to]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// How many fields there are.
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether a field of this name (any case) is here.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.iter().any(|(n, ..)| n.eq_ignore_ascii_case(name))
    }

    /// Keeps the fields `keep` says yes to (by name and value), in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let bytes = &self.bytes;
        self.at.retain(|&[start, name_end, value, end, _]| {
            keep(&bytes[start as usize..name_end as usize], &bytes[value as usize..end as usize])
        });
    }

    /// The fields as a header map (values share the head's bytes).
    pub fn into_map(self) -> Result<HeaderMap, ProtocolError> {
        // Room for the marks the proxy adds to a response, so they do not grow the map.
        let mut headers = HeaderMap::with_capacity(self.at.len() + 3);
        for &[start, name_end, value, end, _] in &self.at {
            let name = &self.bytes[start as usize..name_end as usize];
            let name = HeaderName::from_bytes(name).map_err(|_| ProtocolError::Header(String::from_utf8_lossy(name).into_owned()))?;
            let value = HeaderValue::from_maybe_shared(self.bytes.slice(value as usize..end as usize))
                .map_err(|_| ProtocolError::Header(name.to_string()))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// Moves a request's fields still on the wire into its map (which is empty while they are), for a
/// phase that edits them or reads them whole: tracing, a mirrored copy, the cache, an HTTP/2 upstream.
/// The request parser refuses what a map cannot hold, so every field moves (the `request_head` fuzz
/// target checks it); were one refused, it would be left out, not the request failed.
pub(crate) fn move_to_map(map: &mut HeaderMap, wire: &mut Option<RequestFields>) {
    let Some(RequestFields { wire: w, .. }) = wire.take() else { return };
    map.reserve(w.at.len() + 5);
    for (name, value, _) in w.iter() {
        match (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(w.bytes.slice_ref(value)),
        ) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => debug_assert!(false, "a request field a map cannot hold: {name:?}"),
        }
    }
}

/// A request's header fields wherever they are: in its map (HTTP/2, or a request whose fields had to
/// be made a map), or still in an HTTP/1.1 client's head. For the phases that read a field or two
/// (the host, the request id, the variant header or cookie, the user agent); a phase that edits the
/// fields or reads them whole takes the map.
#[derive(Clone, Copy)]
pub(crate) enum FieldsRef<'a> {
    Map(&'a HeaderMap),
    Wire(&'a RequestFields),
}

impl<'a> FieldsRef<'a> {
    /// The wire fields when there are some, else the map.
    pub(crate) fn of(map: &'a HeaderMap, wire: Option<&'a RequestFields>) -> FieldsRef<'a> {
        match wire {
            Some(w) => FieldsRef::Wire(w),
            None => FieldsRef::Map(map),
        }
    }

    /// The first value of the field `name`.
    pub(crate) fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        match self {
            FieldsRef::Map(m) => m.get(name).map(HeaderValue::as_bytes),
            FieldsRef::Wire(w) => w.first(name).map(|i| w.wire.value_at(i)),
        }
    }

    /// Every value of the field `name`, in order.
    pub(crate) fn get_all<'n>(self, name: &'n HeaderName) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        let (map, wire) = match self {
            FieldsRef::Map(m) => (Some(m.get_all(name).iter().map(HeaderValue::as_bytes)), None),
            FieldsRef::Wire(w) => (
                None,
                Some(
                    w.wire
                        .iter()
                        .filter(move |(n, ..)| n.eq_ignore_ascii_case(name.as_str().as_bytes()))
                        .map(|(_, v, _)| v),
                ),
            ),
        };
        map.into_iter().flatten().chain(wire.into_iter().flatten())
    }

    /// The first value of the field `name` as text (visible ASCII, spaces and tabs: what `HeaderValue::to_str` takes).
    pub(crate) fn text_of(self, name: &HeaderName) -> Option<&'a str> {
        self.get(name).and_then(text)
    }

    /// The first value of the field `name`, in any case (a name from configuration).
    pub(crate) fn get_bytes(self, name: &str) -> Option<&'a [u8]> {
        match self {
            FieldsRef::Map(m) => m.get(name).map(HeaderValue::as_bytes),
            FieldsRef::Wire(w) => w
                .wire
                .iter()
                .find(|(n, ..)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v, _)| v),
        }
    }

    /// Every value of the field `name` that is text (visible ASCII, spaces and tabs: what `HeaderValue::to_str` takes), in order.
    pub(crate) fn get_all_str<'n>(self, name: &'n HeaderName) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.get_all(name).filter_map(text)
    }

    /// Whether a field `name` is here.
    pub(crate) fn contains(self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// The first value of the field `name` as a field value (sharing the head's or the map's bytes).
    pub(crate) fn value(self, name: &HeaderName) -> Option<HeaderValue> {
        match self {
            FieldsRef::Map(m) => m.get(name).cloned(),
            FieldsRef::Wire(w) => w.value(name),
        }
    }
}

#[cfg(test)]
impl RequestFields {
    /// The fields of `head` (header lines and the empty line that ends them) indexed as the request
    /// parser does (for tests).
    pub(crate) fn of_lines(head: &[u8]) -> RequestFields {
        let head = Bytes::copy_from_slice(head);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&head, &mut fields) else {
            panic!("not a head: {head:?}")
        };
        let base = head.as_ptr() as usize;
        let mut index = Index::default();
        let at = parsed
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let name = Name::of(h.name.as_bytes());
                index.add(i, name, h.value);
                let start = (h.name.as_ptr() as usize - base) as u32;
                let value = (h.value.as_ptr() as usize - base) as u32;
                let flags = if name.passed_on() { PASSED_ON } else { 0 };
                [start, start + h.name.len() as u32, value, value + h.value.len() as u32, flags]
            })
            .collect();
        RequestFields::new(head.clone(), at, index)
    }
}

impl<'a> From<&'a HeaderMap> for FieldsRef<'a> {
    fn from(map: &'a HeaderMap) -> FieldsRef<'a> {
        FieldsRef::Map(map)
    }
}

/// A field value as text when it is visible ASCII, spaces and tabs (`HeaderValue::to_str`'s rule).
fn text(v: &[u8]) -> Option<&str> {
    if super::is_text(v) {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn wire(head: &'static [u8]) -> RequestFields {
        RequestFields::of_lines(head)
    }

    #[test]
    fn a_field_reads_the_same_from_the_wire_and_from_the_map() {
        let w = wire(b"Host: a.example\r\nCookie: a=1\r\nX-Two: 1\r\ncookie: b=2\r\nX-Empty:\r\n\r\n");
        let map = w.wire.clone().into_map().unwrap();
        for fields in [FieldsRef::Wire(&w), FieldsRef::Map(&map)] {
            assert_eq!(fields.get(&header::HOST), Some(&b"a.example"[..]));
            assert_eq!(fields.get_all(&header::COOKIE).collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
            assert_eq!(fields.value(&HeaderName::from_static("x-two")), Some(HeaderValue::from_static("1")));
            assert_eq!(fields.get(&HeaderName::from_static("x-empty")), Some(&b""[..]));
            assert!(!fields.contains(&header::USER_AGENT));
            assert_eq!(fields.get_bytes("X-TWO"), Some(&b"1"[..]));
            assert_eq!(fields.text_of(&header::HOST), Some("a.example"));
            assert_eq!(fields.get_all_str(&header::COOKIE).collect::<Vec<_>>(), ["a=1", "b=2"]);
        }
        assert_eq!(map.len(), 5);
    }

    #[test]
    fn names_are_known_in_any_case_and_only_end_to_end_ones_are_passed_on() {
        let upper = |n: &str| n.to_ascii_uppercase();
        for (name, known) in [
            ("host", Name::Host),
            ("content-length", Name::ContentLength),
            ("transfer-encoding", Name::TransferEncoding),
            ("connection", Name::Connection),
            ("expect", Name::Expect),
            ("upgrade", Name::Upgrade),
            ("http2-settings", Name::Http2Settings),
            ("x-forwarded-for", Name::XForwardedFor),
            ("x-forwarded-proto", Name::Forwarding),
            ("x-forwarded-host", Name::Forwarding),
            ("x-request-id", Name::RequestId),
            ("user-agent", Name::UserAgent),
            ("traceparent", Name::TraceParent),
            ("accept", Name::Other),
            ("x-forwarded-by", Name::Other),
            ("hostx", Name::Other),
        ] {
            assert_eq!(Name::of(name.as_bytes()), known, "{name}");
            assert_eq!(Name::of(upper(name).as_bytes()), known, "{name}");
        }
        for (i, n) in SLOT_NAMES.iter().enumerate() {
            assert_eq!(Name::of(n.as_str().as_bytes()).slot(), Some(i), "{n}");
        }
        // Not passed on: every hop-by-hop field the response side knows, what the upstream request's
        // head writes itself, the forwarding fields; everything else is.
        for name in [
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "connection",
            "upgrade",
            "transfer-encoding",
            "host",
            "content-length",
            "expect",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
        ] {
            assert!(!Name::of(name.as_bytes()).passed_on(), "{name}");
        }
        for name in [
            "accept",
            "user-agent",
            "traceparent",
            "cookie",
            "authorization",
            "x-forwarded",
            "tea",
            "hosts",
        ] {
            assert!(Name::of(name.as_bytes()).passed_on(), "{name}");
            assert!(!crate::protocols::h1::client::is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn retain_keeps_the_lines_said_yes_to_in_order() {
        let mut w = wire(b"A: 1\r\nB: 2\r\nC:  3\r\n\r\n").wire;
        w.retain(|n, _| n != b"B");
        let lines: Vec<_> = w.iter().map(|(.., line)| line.to_vec()).collect();
        assert_eq!(lines, [b"A: 1".to_vec(), b"C:  3".to_vec()]);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn lines_are_written_as_they_came_whether_in_one_piece_or_not() {
        // Lines one CRLF apart, one ending in a bare LF, one with spaces after its value.
        let w = wire(b"A: 1\r\nB: 2\r\nC:  3\nD: 4 \r\nE: 5\r\nF: 6\r\n\r\n").wire;
        type Keep<'a> = &'a dyn Fn(&[u8]) -> bool;
        let line_by_line = |keep: Keep<'_>| {
            let mut out = Vec::new();
            for (name, _, line) in w.iter().filter(|(n, ..)| keep(n)) {
                assert!(keep(name));
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            out
        };
        let cases: [Keep<'_>; 4] = [&|_| true, &|n| n != b"B", &|n| n == b"F", &|_| false];
        for keep in cases {
            let mut out = b"before\r\n".to_vec();
            w.write_lines(&mut out, |n, _, _| keep(n));
            assert_eq!(out[8..], line_by_line(keep)[..]);
        }
        let mut all = Vec::new();
        w.write_lines(&mut all, |_, _, _| true);
        assert_eq!(all, b"A: 1\r\nB: 2\r\nC:  3\r\nD: 4\r\nE: 5\r\nF: 6\r\n");
    }
}

//! The response side of the HTTP/1.1 codec, without I/O: the head the gateway writes to its client
//! (status line, the response's fields less the framing ones, the gateway's marks, `date`, and the
//! framing and persistence it chooses).

use std::time::SystemTime;

use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;

use crate::protocols::h1::fields::LOOKED_AT;
use crate::protocols::h1::WireFields;

/// Header fields the gateway adds to a response (its marks): written after the response's own,
/// which lose any field of the same name.
pub(crate) type Marks<'a> = &'a [(&'a HeaderName, &'a HeaderValue)];

/// A response head to write: its status and where its fields are.
#[derive(Clone, Copy)]
pub(crate) struct ResponseHead<'a> {
    pub(crate) status: StatusCode,
    pub(crate) fields: FieldsIn<'a>,
}

/// Where a response's header fields are.
#[derive(Clone, Copy)]
pub(crate) enum FieldsIn<'a> {
    Map(&'a http::HeaderMap),
    /// Still in an HTTP/1.1 upstream's head: written line by line from there.
    Wire(&'a WireFields),
}

impl<'a> ResponseHead<'a> {
    /// The head of `parts`, its fields in `wire` when those are given (its map then empty).
    pub(crate) fn of(parts: &'a http::response::Parts, wire: Option<&'a WireFields>) -> ResponseHead<'a> {
        ResponseHead {
            status: parts.status,
            fields: wire.map_or(FieldsIn::Map(&parts.headers), FieldsIn::Wire),
        }
    }

    fn contains(&self, name: &HeaderName) -> bool {
        match self.fields {
            FieldsIn::Map(m) => m.contains_key(name),
            FieldsIn::Wire(w) => w.contains(name.as_str().as_bytes()),
        }
    }
}

impl<'a> From<&'a http::response::Parts> for ResponseHead<'a> {
    fn from(parts: &'a http::response::Parts) -> ResponseHead<'a> {
        ResponseHead::of(parts, None)
    }
}

/// Whether `name` (any case) is `known` (a lower-case name).
fn is(name: &[u8], known: &[u8]) -> bool {
    name.len() == known.len() && name.eq_ignore_ascii_case(known)
}

/// Appends the response's fields but those `skip` picks (by name, any case, and value) and those
/// `marks` replace, then the marks.
fn write_fields(out: &mut Vec<u8>, fields: FieldsIn<'_>, marks: Marks<'_>, mut skip: impl FnMut(&[u8], &[u8]) -> bool) {
    let mut pass = |name: &[u8], value: &[u8]| skip(name, value) || marks.iter().any(|(m, _)| is(name, m.as_str().as_bytes()));
    match fields {
        FieldsIn::Map(map) => {
            for (name, value) in map {
                if !pass(name.as_str().as_bytes(), value.as_bytes()) {
                    field(out, name, value);
                }
            }
        }
        FieldsIn::Wire(wire) => {
            // A line the parser did not flag is written without a look at its name, when every mark's
            // name is one it flags (`x-`).
            let marks_flagged = marks.iter().all(|(m, _)| m.as_str().starts_with("x-"));
            wire.write_lines(out, |name, value, flags| {
                (flags & LOOKED_AT == 0 && marks_flagged) || !pass(name, value)
            });
        }
    }
    for (name, value) in marks {
        field(out, name, value);
    }
}

fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a response written by [`encode_response_head`] is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseFraming {
    /// No body follows (a HEAD's response, 1xx, 204, 304).
    pub(crate) bodyless: bool,
    /// The body follows as chunks.
    pub(crate) chunked: bool,
    /// The connection may carry another request afterwards.
    pub(crate) keep_alive: bool,
}

/// Appends the response head for `head` and `marks` to `out`. `exact` is the body's length when known; without it
/// the body is chunked, except to an HTTP/1.0 client (then it runs until the connection closes). With
/// `keep_alive` false, or when the response says `connection: close` or has no length to an HTTP/1.0
/// client, the head says `connection: close`.
pub(crate) fn encode_response_head<'a>(
    out: &mut Vec<u8>,
    head: impl Into<ResponseHead<'a>>,
    marks: Marks<'_>,
    exact: Option<u64>,
    is_head: bool,
    http10: bool,
    keep_alive: bool,
) -> ResponseFraming {
    let head = head.into();
    let status = head.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body_status = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let bodyless = is_head || no_body_status;
    let length = if !bodyless {
        exact
    } else if is_head && !head.contains(&header::CONTENT_LENGTH) {
        // The length a GET would have had, when known (as hyper does).
        exact.filter(|_| !no_body_status)
    } else {
        None
    };
    let chunked = !bodyless && length.is_none() && !http10;
    let mut keep_alive = keep_alive && (bodyless || length.is_some() || chunked);
    let mut has_date = false;
    write_fields(out, head.fields, marks, |name, value| {
        if is(name, b"connection") {
            keep_alive &= !value.eq_ignore_ascii_case(b"close");
            return true;
        }
        has_date |= is(name, b"date");
        // The framing is ours; a response without a body keeps the length it describes.
        is(name, b"transfer-encoding") || (!bodyless && is(name, b"content-length"))
    });
    if !has_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(crate::protocols::h1::itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponseFraming {
        bodyless,
        chunked,
        keep_alive,
    }
}

/// Appends the head of a 101 that switches the connection to the protocol its `upgrade` field names:
/// the response's fields less the framing and connection ones, then `connection: upgrade`.
pub(crate) fn encode_switching_head<'a>(out: &mut Vec<u8>, head: impl Into<ResponseHead<'a>>, marks: Marks<'_>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    write_fields(out, head.into().fields, marks, |name, _| {
        is(name, b"connection") || is(name, b"transfer-encoding") || is(name, b"content-length")
    });
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
}

thread_local! {
    /// The `date` value of the current second, formatted once per second per worker.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// Appends the current time as an HTTP date (RFC 9110 §5.6.7).
fn http_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let sec = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != sec || text[0] == 0 {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = sec;
            }
        }
        out.extend_from_slice(text);
    });
}

/// The current time as an HTTP date field value (for HTTP/2 responses).
pub(crate) fn date_value() -> http::HeaderValue {
    let mut v = Vec::with_capacity(29);
    http_date(&mut v);
    http::HeaderValue::from_bytes(&v).expect("an HTTP date is a valid field value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> http::response::Parts {
        let mut r = http::Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(*k, http::HeaderValue::from_static(v));
        }
        r.into_parts().0
    }

    fn encode(
        parts: &http::response::Parts,
        exact: Option<u64>,
        is_head: bool,
        http10: bool,
        keep_alive: bool,
    ) -> (String, ResponseFraming) {
        let mut out = Vec::new();
        let f = encode_response_head(&mut out, parts, &[], exact, is_head, http10, keep_alive);
        (String::from_utf8(out).unwrap(), f)
    }

    #[test]
    fn the_marks_follow_the_fields_and_replace_theirs() {
        static RID: HeaderName = HeaderName::from_static("x-request-id");
        static VARIANT: HeaderName = HeaderName::from_static("x-canarygate-variant");
        let (rid, canary) = (HeaderValue::from_static("ours"), HeaderValue::from_static("canary"));
        let marks = [(&RID, &rid), (&VARIANT, &canary)];
        let p = head(
            200,
            &[
                ("x-request-id", "theirs"),
                ("server", "up"),
                ("x-canarygate-variant", "x"),
                ("x-a", "1"),
            ],
        );
        let mut out = Vec::new();
        encode_response_head(&mut out, &p, &marks, Some(0), false, false, true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nserver: up\r\nx-a: 1\r\nx-request-id: ours\r\nx-canarygate-variant: canary\r\ndate: "),
            "{text}"
        );
        assert_eq!(text.matches("x-request-id").count(), 1, "{text}");
        let mut out = Vec::new();
        encode_switching_head(
            &mut out,
            &head(101, &[("upgrade", "websocket"), ("x-request-id", "theirs")]),
            &marks,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nx-request-id: ours\r\nx-canarygate-variant: canary\r\nconnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn fields_from_the_wire_are_written_as_they_came_under_the_same_rules() {
        static RID: HeaderName = HeaderName::from_static("x-request-id");
        let rid = HeaderValue::from_static("ours");
        let marks = [(&RID, &rid)];
        let raw = "HTTP/1.1 200 OK\r\nServer:  up\r\nX-Request-Id: theirs\r\nContent-Length: 2\r\nDate: d\r\n\
                   X-A: 1\r\n\r\nok";
        let mut buf = bytes::BytesMut::from(raw);
        let (upstream, _) = crate::protocols::h1::parse_head(&mut buf, &http::Method::GET).unwrap().unwrap();
        let parts = http::Response::new(()).into_parts().0;
        let head = ResponseHead::of(&parts, Some(&upstream.fields));
        let mut out = Vec::new();
        let f = encode_response_head(&mut out, head, &marks, Some(2), false, false, true);
        // Each line as it came (case and spacing), theirs of a mark's name gone, its date kept, the
        // framing the gateway's.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer:  up\r\nDate: d\r\nX-A: 1\r\nx-request-id: ours\r\ncontent-length: 2\r\n\r\n"
        );
        assert_eq!((f.bodyless, f.chunked, f.keep_alive), (false, false, true));
        // To a HEAD: the length the upstream stated is kept, and none is added.
        let mut out = Vec::new();
        encode_response_head(&mut out, head, &[], None, true, false, true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\r\nContent-Length: 2\r\n") && !text.contains("content-length"),
            "{text}"
        );
        assert!(text.contains("\r\nX-Request-Id: theirs\r\n"), "{text}");
        // The same head from the map: the same fields, names in lower case.
        let mut map = parts.clone();
        map.headers = upstream.fields.clone().into_map().unwrap();
        let mut out = Vec::new();
        encode_response_head(&mut out, &map, &marks, Some(2), false, false, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nserver: up\r\ndate: d\r\nx-a: 1\r\nx-request-id: ours\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_the_length_the_version_and_the_method() {
        let p = head(200, &[("content-length", "99"), ("transfer-encoding", "chunked"), ("x-a", "1")]);
        let (text, f) = encode(&p, Some(5), false, false, true);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "), "{text}");
        assert!(text.ends_with("content-length: 5\r\n\r\n"), "the framing is ours: {text}");
        assert_eq!((f.bodyless, f.chunked, f.keep_alive), (false, false, true));
        let (text, f) = encode(&p, None, false, false, true);
        assert!(
            text.contains("transfer-encoding: chunked\r\n") && f.chunked && f.keep_alive,
            "{text}"
        );
        // HTTP/1.0 without a length: the body runs until the connection closes.
        let (text, f) = encode(&p, None, false, true, true);
        assert!(text.contains("connection: close\r\n") && !f.chunked && !f.keep_alive, "{text}");
        // A HEAD keeps the length its GET would have had; a 304 keeps the one it states.
        let (text, f) = encode(&head(200, &[]), Some(7), true, false, true);
        assert!(text.contains("content-length: 7\r\n") && f.bodyless, "{text}");
        let (text, f) = encode(&head(304, &[("content-length", "12")]), None, false, false, true);
        assert!(text.contains("content-length: 12\r\n") && f.bodyless && f.keep_alive, "{text}");
        // The upstream's `connection: close` and a date it set are honoured.
        let (text, f) = encode(&head(200, &[("connection", "close"), ("date", "x")]), Some(0), false, false, true);
        assert!(
            !f.keep_alive && text.contains("date: x\r\n") && text.matches("date:").count() == 1,
            "{text}"
        );
    }
}

//! Entry points of the fuzz targets (`fuzz/`, run with `cargo fuzz`) and of their corpus replay on stable
//! (`crates/fuzzing`): the gateway's HTTP/1.1 parsers run on arbitrary bytes, each checking the
//! invariants it must keep. A panic is a finding. Not an API.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::Method;

use crate::protocols::h1::fields::FieldsRef;
use crate::protocols::h1::server::request::{parse_request_head, request_framing, valid_authority, BadHead};
use crate::protocols::h1::{self, Decoded, Decoder, Framing};
use crate::Limits;

/// A request head: parsed with the default limits; a parsed head keeps what it promises, and the body
/// its framing says follows decodes alike in one piece or byte by byte.
pub fn request_head(data: &[u8]) {
    let limits = Limits::default();
    let mut buf = BytesMut::from(data);
    let mut at = Vec::new();
    let head = match parse_request_head(&mut buf, &limits, &mut at) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert_eq!(buf.len(), data.len(), "a partial head consumes nothing");
            return;
        }
        Err(BadHead(status, msg)) => {
            assert!(status.is_client_error() || status.is_server_error(), "{status}");
            assert!(!msg.is_empty());
            return;
        }
    };
    let consumed = data.len() - buf.len();
    assert!(
        consumed >= 4 && data[..consumed].ends_with(b"\r\n\r\n"),
        "a head ends with an empty line"
    );
    assert!(consumed <= limits.max_header_bytes);
    let fields = head.fields();
    assert!(fields.get_all(&header::HOST).count() <= 1);
    if let Some(a) = head.uri.authority() {
        assert_eq!(fields.get(&header::HOST), Some(a.as_str().as_bytes()));
    }
    if let Some(host) = fields.get(&header::HOST).filter(|h| !h.is_empty()) {
        assert!(valid_authority(host), "{host:?}");
    }
    if let Some(wire) = &head.wire {
        fields_both_ways(wire, &head);
    }
    if let Ok(path) = crate::routing::path::resolve_dot_segments(head.uri.path()) {
        assert!(path.is_empty() || path.starts_with('/') || path == "*", "{path}");
        assert!(!path.split('/').any(|s| s == "." || s == ".."), "{path}");
    }
    // What follows is the body as the framing says: decoded in one piece or byte by byte, the same.
    let rest = buf.freeze();
    let max = limits.max_body_bytes;
    same_in_pieces(Decoder::with_limit(head.framing, max), &rest, 1);
}

/// A request's fields kept in its head and the map made of them (for tracing, a mirror, the cache, an
/// HTTP/2 upstream) are the same fields: every kept line parses back to itself, the map holds each
/// of them and gives the same framing; and an HTTP/1.1 upstream is sent the same fields either way.
fn fields_both_ways(fields: &crate::protocols::h1::fields::RequestFields, head: &crate::protocols::h1::server::request::RequestHead) {
    let wire = &fields.wire;
    assert!(head.headers.is_empty(), "fields in the head or in the map, not both");
    let map = wire
        .clone()
        .into_map()
        .expect("the request parser passes only fields a map can hold");
    assert_eq!(map.len(), wire.len());
    let mut moved = HeaderMap::new();
    crate::protocols::h1::fields::move_to_map(&mut moved, &mut Some(fields.clone()));
    assert_eq!(moved, map);
    for (name, value, line) in wire.iter() {
        same_line(line, name, value);
        assert!(map
            .get_all(std::str::from_utf8(name).unwrap())
            .iter()
            .any(|v| v.as_bytes() == value));
    }
    let te = map.contains_key(header::TRANSFER_ENCODING);
    let framing = request_framing(FieldsRef::Map(&map), te, head.version);
    assert_eq!(framing.ok(), Some(head.framing));
    // What an HTTP/1.1 upstream is sent: the same fields (each name's values in the same order).
    let peer = std::net::IpAddr::from([192, 0, 2, 1]);
    let (kept, from_wire) = crate::proxy::upstream_wire(peer, fields.clone());
    let (mut from_map, forwarded) = crate::proxy::upstream_headers(peer, map, None, false);
    for n in [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::EXPECT,
    ] {
        from_map.remove(n);
    }
    let mut sent: Vec<(String, &[u8])> = kept
        .iter()
        .map(|(n, v, _)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v))
        .collect();
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, &[u8])> = from_map.iter().map(|(n, v)| (n.to_string(), v.as_bytes())).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sent, want);
    assert_eq!(from_wire.xff, forwarded.xff);
}

/// A field line, written as it came, parses back to the same name and value.
fn same_line(line: &[u8], name: &[u8], value: &[u8]) {
    let mut again = line.to_vec();
    again.extend_from_slice(b"\r\n\r\n");
    let mut one = [httparse::EMPTY_HEADER; 1];
    let parsed = httparse::parse_headers(&again, &mut one);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete((n, [_]))) if n == again.len()),
        "{line:?}"
    );
    assert!(one[0].name.as_bytes() == name && one[0].value == value, "{line:?}");
}

/// The head an HTTP/1.1 client is sent from a response's fields on the wire (lines the parser did not
/// flag written without a look, adjacent ones in one piece) and from their map: the same fields, the
/// marks replacing theirs, the same framing and persistence.
fn same_head_both_ways(wire: &h1::WireFields, map: HeaderMap) {
    use crate::protocols::h1::server::response::{encode_response_head, ResponseHead};
    let mut lines = Vec::new();
    for (_, _, line) in wire.iter() {
        lines.extend_from_slice(line);
        lines.extend_from_slice(b"\r\n");
    }
    let mut pieces = Vec::new();
    wire.write_lines(&mut pieces, |_, _, _| true);
    assert_eq!(pieces, lines, "written in pieces, the same bytes");
    static MARK: header::HeaderName = header::HeaderName::from_static("x-request-id");
    let ours = http::HeaderValue::from_static("ours");
    let marks = [(&MARK, &ours)];
    let mut parts = http::Response::new(()).into_parts().0;
    let (mut from_wire, mut from_map) = (Vec::new(), Vec::new());
    let a = encode_response_head(
        &mut from_wire,
        ResponseHead::of(&parts, Some(wire)),
        &marks,
        Some(0),
        false,
        false,
        true,
    );
    parts.headers = map;
    let b = encode_response_head(&mut from_map, &parts, &marks, Some(0), false, false, true);
    assert_eq!(a, b);
    // By name in lower case and value, in any order (a map groups a name's values), and without
    // `date`, which the writer adds when there is none (its second may turn between the two).
    let fields = |head: &[u8]| {
        let mut f: Vec<(Vec<u8>, Vec<u8>)> = head
            .split(|&b| b == b'\n')
            .skip(1)
            .filter_map(|l| {
                let l = l.strip_suffix(b"\r")?;
                let colon = l.iter().position(|&b| b == b':')?;
                Some((l[..colon].to_ascii_lowercase(), l[colon + 1..].trim_ascii().to_vec()))
            })
            .filter(|(n, _)| n != b"date")
            .collect();
        f.sort();
        f
    };
    assert_eq!(fields(&from_wire), fields(&from_map));
}

/// A chunked body: decoded whole and in pieces (the first byte chooses their size) with the same
/// outcome; never more bytes out than in; never past the budget (the second byte chooses it).
pub fn chunked(data: &[u8]) {
    let [piece, budget, input @ ..] = data else { return };
    let budget = u64::from(*budget) * 64;
    same_in_pieces(Decoder::new(Framing::Chunked), input, usize::from(*piece % 16) + 1);
    if let Ok((body, _)) = decode(Decoder::with_limit(Framing::Chunked, budget), input, input.len()) {
        assert!(body.len() as u64 <= budget, "{} bytes over a budget of {budget}", body.len());
    }
}

/// A response head: parsed for GET and HEAD; a parsed head's framing decodes what follows.
pub fn response_head(data: &[u8]) {
    for method in [Method::GET, Method::HEAD] {
        let mut buf = BytesMut::from(data);
        match h1::parse_head(&mut buf, &method) {
            Ok(Some((head, rest))) => {
                assert!(buf.is_empty());
                assert!(rest.len() < data.len());
                if method == Method::HEAD {
                    assert_eq!(head.framing, Framing::Empty);
                }
                // What an HTTP/1.1 client is sent (each kept line as it came) and what the map holds
                // (for an HTTP/2 client, the cache) are the same fields.
                let map = head.fields.clone().into_map().expect("httparse passes only fields a map can hold");
                assert_eq!(map.len(), head.fields.iter().count());
                for (name, value, line) in head.fields.iter() {
                    same_line(line, name, value);
                    assert!(map
                        .get_all(std::str::from_utf8(name).unwrap())
                        .iter()
                        .any(|v| v.as_bytes() == value));
                }
                if let Framing::Length(n) = head.framing {
                    assert_eq!(h1::content_length(&map), Ok(n));
                }
                same_head_both_ways(&head.fields, map);
                same_in_pieces(Decoder::new(head.framing), &rest, 3);
            }
            // Interim (1xx) heads before it are consumed; the rest is kept.
            Ok(None) => assert!(data.ends_with(&buf), "a partial head keeps every byte after interim heads"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// The body decoded from `input` fed whole, and fed in pieces of `piece` bytes: the same body and the
/// same number of bytes consumed, or an error both ways.
pub(crate) fn same_in_pieces(decoder: Decoder, input: &[u8], piece: usize) {
    let whole = decode(decoder, input, input.len());
    let pieces = decode(decoder, input, piece);
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "whole and in pieces of {piece}"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole: {whole:?}, in pieces of {piece}: {pieces:?}"),
    }
    if let Ok((body, consumed)) = whole {
        assert!(body.len() <= consumed && consumed <= input.len());
    }
}

/// Feeds `input` to `d` in pieces of `piece` bytes until the body ends; the body and the bytes it used.
fn decode(mut d: Decoder, input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), String> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut body = Vec::new();
    loop {
        match d.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(b) => body.extend_from_slice(&b),
            Decoded::End => return Ok((body, fed - buf.len())),
            Decoded::NeedMore if fed < input.len() => {
                let next = (fed + piece.max(1)).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
            Decoded::NeedMore => {
                d.eof().map_err(|e| e.to_string())?;
                return Ok((body, fed - buf.len()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_take_what_they_are_built_for() {
        request_head(b"POST /a/../b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        request_head(b"GET http://a.example/x HTTP/1.1\r\nhost: b\r\n\r\n");
        chunked(b"\x03\x10 5;a=b\r\nhello\r\n0\r\nt: 1\r\n\r\nrest");
        response_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    }
}

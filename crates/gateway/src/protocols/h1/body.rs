//! HTTP/1.1 message bodies, both directions (RFC 9112 §6, §7): chunks written, and a body decoded as
//! its framing says, with the limits that keep a decoder bounded.

use bytes::{Buf, Bytes, BytesMut};

use super::{is_tchar, Framing, ProtocolError};

/// Chunk-size lines (with their extensions) longer than this are refused.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Trailer sections larger than this are refused.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// A chunk size is at most 16 hex digits and below 2^63 (hyper's and nginx's bound).
const MAX_CHUNK_SIZE: u64 = 1 << 63;

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

//! The HTTP/1.1 wire format, with no I/O, by direction: [`server`] (a client's request head read, the
//! response head written to it), [`client`] (the upstream request's head written, the upstream's
//! response head read), [`body`] (bodies framed and decoded, both directions) and [`fields`] (header
//! fields kept where they lie in a head's bytes, both directions); here, what they share.
//! The connection drivers ([`crate::server`], [`crate::upstream`]) do the I/O.
//!
//! The client side of the gateway is narrow — it writes requests the gateway itself built and reads
//! responses from upstreams it was configured with — so it runs in the request's own task (see
//! [`crate::upstream`]) instead of behind a connection task and channels, and holds a read buffer only
//! while a response is in flight.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod fields;
pub(crate) mod server;

pub use body::{encode_chunk, encode_chunk_size, Arriving, Decoded, Decoder, WireBody, LAST_CHUNK};
pub use client::{encode_head, parse_head, Head, Reply, RequestFraming};
pub use fields::WireFields;

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

/// A response head larger than this is refused (hyper's default limit is about 400 KiB; nginx's
/// `proxy_buffer_size` is 4–8 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A response with more header fields than this is refused (hyper's default).
pub const MAX_HEADERS: usize = 100;

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

/// The options of a `Connection` field value: its comma-separated tokens, trimmed, empty ones skipped
/// (RFC 9110 §7.6.1). One parser for requests, responses and the hop-by-hop fields it names.
pub(crate) fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// The field names a message's `Connection` field values name (RFC 9110 §7.6.1): their tokens but the
/// `keep-alive` and `close` options. One list for a request's fields in a map and on the wire, and a
/// response's; each caller removes those fields from what it passes on.
pub(crate) fn named_by_connection<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values
        .into_iter()
        .flat_map(connection_tokens)
        .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
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
        // What nearly every message says: one token.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
            return;
        }
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

/// Whether a field value is what `HeaderValue::to_str` takes (visible ASCII, spaces and tabs).
pub(crate) fn is_text(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
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

/// Whether `name` is `lower` (in lower case) in any case: what `eq_ignore_ascii_case` says, eight bytes
/// at a time (the field names every head is searched for are compared on every request).
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name.chunks_exact(8), lower.chunks_exact(8));
    for (x, y) in (&mut a).zip(&mut b) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        if lower8(word(x)) != word(y) {
            return false;
        }
    }
    a.remainder().eq_ignore_ascii_case(b.remainder())
}

/// Eight bytes with `A`–`Z` made lower case, the rest as they are.
fn lower8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low = x & !HIGH;
    // Bit 7 of each byte: its low seven bits are at least `A` (0x41), at least `[` (0x5b).
    let from_a = low.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
    let past_z = low.wrapping_add(0x2525_2525_2525_2525);
    let upper = from_a & !past_z & !x & HIGH;
    x | (upper >> 2)
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_name_is_eq_ignore_ascii_case() {
        for b in 0..=255u8 {
            let word = [b; 9];
            // `lower` is in lower case, as every name searched for is.
            for c in (0..=255u8).map(|c| c.to_ascii_lowercase()) {
                let other = [c; 9];
                assert_eq!(is_name(&word, &other), word.eq_ignore_ascii_case(&other), "{b:#x} {c:#x}");
            }
        }
        assert!(is_name(b"Transfer-Encoding", b"transfer-encoding"));
        assert!(!is_name(b"Transfer-Encodinh", b"transfer-encoding"));
        assert!(!is_name(b"transfer-encoding", b"transfer-encodin"));
    }
}

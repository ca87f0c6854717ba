//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate` request
//! headers a gateway continues (or starts) and forwards upstream, and the head-sampling decision
//! (OpenTelemetry's parent-based sampler over a trace-id-ratio one). Pure: the ids to use are passed in.

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span (the parent of the spans this hop makes).
    pub parent_id: [u8; 8],
    pub flags: u8,
}

const SAMPLED: u8 = 0x01;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        // The specification allows lowercase hex only.
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` when it is not valid (then a new trace is started). Version
    /// `00` must be exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version (not `ff`) may carry more
    /// fields after a `-`, which are ignored. All-zero trace or parent ids are invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let b = value.trim_matches([' ', '\t']).as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version: [u8; 1] = parse_hex(&b[0..2])?;
        if version[0] == 0xff || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        if version[0] == 0 && b.len() != 55 {
            return None;
        }
        if b.len() > 55 && b[55] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = parse_hex(&b[3..35])?;
        let parent_id: [u8; 8] = parse_hex(&b[36..52])?;
        let flags: [u8; 1] = parse_hex(&b[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The context to send on: the same trace, `span_id` as the parent, the sampling decision as the flag
    /// (other flags are not propagated, as the specification says for version 00).
    pub fn child(&self, span_id: [u8; 8], sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: span_id,
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// A new trace's context.
    pub fn start(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> TraceParent {
        TraceParent {
            trace_id,
            parent_id: span_id,
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// The header value, version 00.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &self.parent_id);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        s
    }

    /// The trace id as 32 lowercase hex digits (as access logs show it).
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.trace_id);
        s
    }
}

/// Whether a `tracestate` value is valid (at most 32 list members `key=value`, keys and values as the
/// specification restricts them, at most 512 characters in all), so it may be forwarded as it is; an
/// invalid one is dropped.
pub fn tracestate_is_valid(value: &str) -> bool {
    if value.len() > 512 {
        return false;
    }
    let mut members = 0;
    for m in value.split(',') {
        let m = m.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, val)) = m.split_once('=') else { return false };
        if members > 32 || !valid_key(key) || !valid_value(val) {
            return false;
        }
    }
    true
}

fn valid_key(key: &str) -> bool {
    let simple = |k: &str, max: usize| {
        let b = k.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(c))
    };
    match key.split_once('@') {
        None => simple(key, 256),
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
    }
}

fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 256 && b.iter().all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=') && b[b.len() - 1] != b' '
}

/// Head sampling: a request with a parent follows the parent's sampled flag; a new trace is sampled when
/// its trace id's last 8 bytes, read as a number, fall below `ratio` of their range (OpenTelemetry's
/// `ParentBased(TraceIdRatioBased(ratio))`), so every hop of one trace decides alike.
pub fn sample(parent: Option<&TraceParent>, trace_id: &[u8; 16], ratio: f64) -> bool {
    if let Some(p) = parent {
        return p.sampled();
    }
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    x < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example_and_writes_it_back() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert!(p.sampled());
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.header(), EXAMPLE);
        let c = p.child([1, 2, 3, 4, 5, 6, 7, 8], false);
        assert_eq!(c.header(), "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00");
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceParent::parse(v1).is_some());
    }

    #[test]
    fn tracestate_members_are_checked() {
        assert!(tracestate_is_valid("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(tracestate_is_valid("tenant@vendor=x, other=y"));
        assert!(tracestate_is_valid(""));
        for bad in ["Rojo=1", "rojo", "rojo=a,b", "a=1=2", &format!("k={}", "v".repeat(300))] {
            assert!(!tracestate_is_valid(bad), "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(!tracestate_is_valid(&many.join(",")));
    }

    #[test]
    fn sampling_follows_the_parent_or_the_ratio() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let unsampled = parent.child(parent.parent_id, false);
        let id = [7u8; 16];
        assert!(sample(Some(&parent), &id, 0.0), "a sampled parent wins over the ratio");
        assert!(!sample(Some(&unsampled), &id, 1.0), "so does an unsampled one");
        assert!(sample(None, &id, 1.0));
        assert!(!sample(None, &id, 0.0));
        // About the ratio over many ids, and the same id decides alike.
        let mut n = 0;
        for i in 0u64..10_000 {
            let mut t = [0u8; 16];
            t[8..].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            if sample(None, &t, 0.1) {
                n += 1;
            }
            assert_eq!(sample(None, &t, 0.1), sample(None, &t, 0.1));
        }
        assert!((900..1100).contains(&n), "{n}");
    }
}

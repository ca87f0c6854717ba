//! gRPC as the gateway counts it (PRODUCT.md §11): which requests are gRPC, and how a `grpc-status`
//! counts in a variant's metrics — the codes a client causes as a 4XXError, the rest as a 5XXError —
//! through the HTTP status each one stands for.

/// The gRPC status codes (grpc/doc/statuscodes.md).
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const ALREADY_EXISTS: u32 = 6;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const ABORTED: u32 = 10;
    pub const OUT_OF_RANGE: u32 = 11;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const DATA_LOSS: u32 = 15;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether a `content-type` value is gRPC's: `application/grpc`, alone or with a `+format` or
/// parameters (not gRPC-Web, `application/grpc-web`, which is ordinary HTTP to a proxy).
pub fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.len() >= GRPC.len()
        && content_type[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// A `grpc-status` value: a decimal code.
pub fn parse_status(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The HTTP status a gRPC outcome counts as in the variant's metrics: 200 for OK; for the codes a
/// client causes, the 4xx status it corresponds to; for the rest, a 5xx (unknown codes too).
pub fn counted_status(code: u32) -> u16 {
    match code {
        code::OK => 200,
        code::CANCELLED => 499,
        code::INVALID_ARGUMENT | code::FAILED_PRECONDITION | code::OUT_OF_RANGE => 400,
        code::NOT_FOUND => 404,
        code::ALREADY_EXISTS => 409,
        code::PERMISSION_DENIED => 403,
        code::UNAUTHENTICATED => 401,
        code::RESOURCE_EXHAUSTED => 429,
        code::DEADLINE_EXCEEDED => 504,
        code::UNIMPLEMENTED => 501,
        code::UNAVAILABLE => 503,
        _ => 500,
    }
}

/// A `grpc-message` value: the text percent-encoded as the gRPC wire format asks (bytes outside
/// printable ASCII, and `%`).
pub fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        for ct in ["application/grpc", "application/grpc+proto", "Application/GRPC;charset=utf-8"] {
            assert!(is_grpc(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc(ct.as_bytes()), "{ct}");
        }
    }

    #[test]
    fn the_codes_a_client_causes_count_as_4xx_and_the_rest_as_5xx() {
        let client = [
            code::INVALID_ARGUMENT,
            code::NOT_FOUND,
            code::ALREADY_EXISTS,
            code::PERMISSION_DENIED,
            code::UNAUTHENTICATED,
            code::FAILED_PRECONDITION,
            code::OUT_OF_RANGE,
            code::CANCELLED,
            code::RESOURCE_EXHAUSTED,
        ];
        assert_eq!(counted_status(code::OK), 200);
        for c in 1..=20 {
            let s = counted_status(c);
            if client.contains(&c) {
                assert!((400..500).contains(&s), "{c} -> {s}");
            } else {
                assert!((500..600).contains(&s), "{c} -> {s}");
            }
        }
    }

    #[test]
    fn status_values_and_messages() {
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"0"), Some(0));
        for bad in [&b""[..], b"-1", b"1a", b"1234", b" 1"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
        assert_eq!(encode_message("no route: 100% é"), "no route: 100%25 %C3%A9");
    }
}

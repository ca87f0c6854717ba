//! What the connection drivers and the request handler share: the client connection's address
//! ([`Peer`]) and how a response ended as the driver wrote it ([`Ending`]).

use std::net::SocketAddr;

use http::HeaderValue;

/// The client connection's address, its IP as a header value (made once per connection), and whether
/// it came over TLS.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    pub tls: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let ip = HeaderValue::try_from(addr.ip().to_string()).expect("an IP address is a valid header value");
        Peer { addr, ip, tls: false }
    }

    /// A connection that came over TLS.
    pub fn new_tls(addr: SocketAddr) -> Peer {
        Peer {
            tls: true,
            ..Peer::new(addr)
        }
    }

    /// The scheme the client used: `x-forwarded-proto`, a span's `url.scheme`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// How a response ended, as the server saw it writing it.
pub(crate) enum Ending {
    /// Written to its end.
    Complete,
    /// The response body failed mid-way — the upstream broke it off, stalled or framed it wrongly —
    /// and the client got a truncated response: counted as the variant's 5XXError.
    Failed(String),
    /// The client went away or stopped reading before the end; not an error of the variant.
    ClientGone,
}

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

/// A request that asks to switch protocols (HTTP/1.1 `connection: upgrade`), as an extension of the
/// request the connection driver hands to the handler: the proxy forwards its `upgrade` field, and the
/// upstream may answer 101 with its connection ([`Upgraded`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UpgradeRequest {
    pub(crate) kind: canarygate_metrics::OpenKind,
}

/// A byte stream both ways (an upstream connection of any kind, plain or TLS).
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The upstream's connection once it answered an upgrade request with 101, and the bytes it sent past
/// that head: an extension of the 101 response, taken by the client's connection driver to relay.
#[derive(Clone)]
pub(crate) struct Upgraded(std::sync::Arc<std::sync::Mutex<Option<Switched>>>);

/// A switched connection and the bytes already read from it.
pub(crate) type Switched = (Box<dyn Io>, bytes::Bytes);

impl Upgraded {
    pub(crate) fn new(io: Box<dyn Io>, rest: bytes::Bytes) -> Upgraded {
        Upgraded(std::sync::Arc::new(std::sync::Mutex::new(Some((io, rest)))))
    }

    /// The connection and its bytes already read (once).
    pub(crate) fn take(&self) -> Option<Switched> {
        self.0.lock().ok()?.take()
    }
}

/// A gRPC request (HTTP/2, `content-type: application/grpc`), as an extension of the request: the
/// proxy refuses to send it to an HTTP/1.1 integration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GrpcRequest;

//! Shared parts of the end-to-end tests: the real `canarygate` binary started on free loopback ports
//! ([`server`]), real HTTP backends started in the test process ([`backends`]), set-ups built of both
//! ([`fixtures`]), and the real PostgreSQL, Prometheus and `openssl` the tests need.

pub mod backends;
pub mod fixtures;
pub mod postgres;
pub mod prometheus;
pub mod server;
pub mod tls;

pub use backends::*;
pub use fixtures::*;
pub use postgres::*;
pub use prometheus::*;
pub use server::*;
pub use tls::*;

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

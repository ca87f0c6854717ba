//! The wire: the HTTP/1.1 codec of both directions, reading a body off a connection, TLS, and relaying
//! an upgraded connection. No knowledge of stages or requests' fate.

pub(crate) mod body_read;
pub(crate) mod h1;
pub mod tls;
pub(crate) mod tunnel;

//! The client-facing side of HTTP/1.1: a client's request head read ([`request`]) and the response
//! head written to it ([`response`]).

pub(crate) mod request;
pub(crate) mod response;

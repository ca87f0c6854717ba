//! Errors of the request path, each knowing who caused it ([`Source`]), so every 4xx/5xx is counted
//! against the variant that produced it and answered with the right status; and the JSON error body
//! every refusal of the gateway carries (`{"error":{"code","message"}}`).

use std::io;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{full, Body};
use crate::protocols::body_read::ReadError;
use crate::protocols::h1;

/// Who a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse, too slowly, or broke it off (4xx).
    Client,
    /// canarygate itself could not serve (5xx).
    Gateway,
    /// The upstream failed: refused, reset, too slow, or broke its response off (502/504, or a
    /// response body cut short).
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Gateway => "gateway",
            Source::Upstream => "upstream",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no API stage at this path")]
    NoStage,
    #[error("no route for this path")]
    NoRoute,
    #[error("method not allowed for this route")]
    MethodNotAllowed,
    #[error("path {0:?} climbs above the stage's root")]
    AboveRoot(String),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client closed its connection in the middle of the request body, or framed it wrongly.
    #[error("request body: {0}")]
    ClientBody(String),
    /// The client sent no request body bytes for this long.
    #[error("the client sent no request body bytes for {} ms", .0.as_millis())]
    ClientTimeout(Duration),
    #[error("integration URI {0:?} is not a valid URI after substitution")]
    BadIntegrationUri(String),
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("upstream did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A gRPC request for an integration that speaks HTTP/1.1 (gRPC needs HTTP/2 end to end).
    #[error("gRPC needs an HTTP/2 upstream: the integration {0:?} is HTTP/1.1 (set http2: true)")]
    GrpcNeedsHttp2(String),
}

impl ProxyError {
    /// A short, stable name of the failure (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoStage => "no_stage",
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::AboveRoot(_) => "above_root",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::ClientTimeout(_) => "client_timeout",
            ProxyError::BadIntegrationUri(_) => "bad_integration_uri",
            ProxyError::Upstream(_) => "upstream_failed",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::GrpcNeedsHttp2(_) => "grpc_needs_http2",
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::NoStage
            | ProxyError::NoRoute
            | ProxyError::MethodNotAllowed
            | ProxyError::AboveRoot(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::ClientBody(_)
            | ProxyError::ClientTimeout(_) => Source::Client,
            ProxyError::BadIntegrationUri(_) | ProxyError::GrpcNeedsHttp2(_) => Source::Gateway,
            ProxyError::Upstream(_) | ProxyError::Timeout(_) => Source::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoStage | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) | ProxyError::AboveRoot(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadIntegrationUri(_) | ProxyError::GrpcNeedsHttp2(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the connection must close after the answer: the rest of the request is unread, or the
    /// request was refused as malformed.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            ProxyError::BodyTooLarge(_) | ProxyError::ClientBody(_) | ProxyError::ClientTimeout(_) | ProxyError::AboveRoot(_)
        )
    }

    /// The gRPC status a gRPC client is answered with.
    pub fn grpc_code(&self) -> u32 {
        use canarygate_model::grpc::code;
        match self {
            ProxyError::NoStage | ProxyError::NoRoute | ProxyError::MethodNotAllowed => code::UNIMPLEMENTED,
            ProxyError::AboveRoot(_) => code::INVALID_ARGUMENT,
            ProxyError::BodyTooLarge(_) => code::RESOURCE_EXHAUSTED,
            ProxyError::ClientBody(_) => code::CANCELLED,
            ProxyError::ClientTimeout(_) | ProxyError::Timeout(_) => code::DEADLINE_EXCEEDED,
            ProxyError::BadIntegrationUri(_) | ProxyError::GrpcNeedsHttp2(_) => code::INTERNAL,
            ProxyError::Upstream(_) => code::UNAVAILABLE,
        }
    }

    /// The answer to a gRPC client: trailers-only (HTTP 200, no body, `grpc-status` and `grpc-message`
    /// in the one header block), as gRPC servers and proxies answer a call they cannot serve.
    pub fn grpc_response(&self) -> Response<Body> {
        let mut r = Response::new(crate::body::empty());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(self.grpc_code()));
        if let Ok(v) = HeaderValue::try_from(canarygate_model::grpc::encode_message(&self.to_string())) {
            h.insert("grpc-message", v);
        }
        r
    }

    /// The answer to the client.
    pub fn response(&self) -> Response<Body> {
        let mut r = json_error(self.status(), &self.to_string());
        if self.closes() {
            // Say so, or a client may send its next request on a connection the server is closing.
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// The error code of a status, as in the admin API's errors.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        StatusCode::REQUEST_TIMEOUT => "RequestTimeout",
        StatusCode::URI_TOO_LONG => "UriTooLong",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "RequestHeaderFieldsTooLarge",
        StatusCode::NOT_IMPLEMENTED => "NotImplemented",
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => "HttpVersionNotSupported",
        StatusCode::BAD_GATEWAY => "BadGateway",
        StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
        s if s.is_client_error() => "BadRequest",
        _ => "Internal",
    }
}

/// `{"error":{"code","message"}}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    let mut r = Response::new(full(format!("{{\"error\":{{\"code\":\"{}\",\"message\":{msg}}}}}", code(status))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_says_who_caused_it_and_its_status_agrees() {
        let all = [
            ProxyError::NoStage,
            ProxyError::NoRoute,
            ProxyError::MethodNotAllowed,
            ProxyError::AboveRoot("/..".into()),
            ProxyError::BodyTooLarge(1),
            ProxyError::ClientBody("x".into()),
            ProxyError::ClientTimeout(Duration::from_secs(1)),
            ProxyError::BadIntegrationUri("x".into()),
            ProxyError::Upstream("x".into()),
            ProxyError::Timeout(Duration::from_secs(1)),
        ];
        for e in all {
            let status = e.status();
            match e.source() {
                Source::Client => assert!(status.is_client_error(), "{e}"),
                Source::Gateway | Source::Upstream => assert!(status.is_server_error(), "{e}"),
            }
            if status != StatusCode::INTERNAL_SERVER_ERROR {
                assert_ne!(code(status), "Internal", "{e}: {status}");
            }
        }
        assert_eq!(code(StatusCode::INTERNAL_SERVER_ERROR), "Internal");
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client closed the connection in the middle of the request body")]
    Truncated,
    #[error("invalid chunked request body: {0}")]
    Chunked(h1::ProtocolError),
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    #[error("the client sent no request body bytes for {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

impl From<ReadError> for ClientBodyError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Protocol(h1::ProtocolError::Truncated) => ClientBodyError::Truncated,
            ReadError::Protocol(h1::ProtocolError::TooLarge(n)) => ClientBodyError::TooLarge(n),
            ReadError::Protocol(e) => ClientBodyError::Chunked(e),
            ReadError::Io(e) => ClientBodyError::Io(e),
            ReadError::Stalled(d) => ClientBodyError::Timeout(d),
        }
    }
}

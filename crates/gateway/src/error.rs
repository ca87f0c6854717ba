//! Errors of the request path, each knowing who caused it, so every 4xx/5xx is counted against the
//! variant that produced it and answered with the right status.

use http::StatusCode;

/// Who a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse (4xx).
    Client,
    /// canarygate itself could not serve (5xx).
    Gateway,
    /// The upstream failed: refused, reset, or too slow (502/504).
    Upstream,
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
    #[error("integration URI {0:?} is not a valid URI after substitution")]
    BadIntegrationUri(String),
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("upstream did not answer within {0} ms")]
    Timeout(u128),
}

impl ProxyError {
    pub fn source(&self) -> Source {
        match self {
            ProxyError::NoStage
            | ProxyError::NoRoute
            | ProxyError::MethodNotAllowed
            | ProxyError::AboveRoot(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::ClientBody(_) => Source::Client,
            ProxyError::BadIntegrationUri(_) => Source::Gateway,
            ProxyError::Upstream(_) | ProxyError::Timeout(_) => Source::Upstream,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoStage | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) | ProxyError::AboveRoot(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadIntegrationUri(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoStage | ProxyError::NoRoute => "NotFound",
            ProxyError::MethodNotAllowed => "MethodNotAllowed",
            ProxyError::BodyTooLarge(_) => "PayloadTooLarge",
            ProxyError::ClientBody(_) | ProxyError::AboveRoot(_) => "BadRequest",
            ProxyError::BadIntegrationUri(_) => "Internal",
            ProxyError::Upstream(_) => "BadGateway",
            ProxyError::Timeout(_) => "GatewayTimeout",
        }
    }
}

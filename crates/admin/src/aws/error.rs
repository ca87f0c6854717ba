//! AWS's errors, in each protocol's shape: rest-json (API Gateway: the code in `x-amzn-ErrorType`, the
//! body `{"message"}`), JSON 1.0/1.1 (CodeDeploy, CloudWatch: `{"__type", "message"}`), and the query
//! protocol (CloudWatch: `<ErrorResponse>` XML).

use axum::http::StatusCode;
use canarygate_store::StoreError;

use super::sigv4::SigError;
use super::Protocol;

/// One refusal: AWS's code, its HTTP status, and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
    }

    /// A body that does not parse in the request's protocol.
    pub fn serialization(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        AwsError::new(StatusCode::NOT_FOUND, "NotFoundException", message)
    }

    /// An operation canarygate does not answer (named, so a pipeline's log says which).
    pub fn unknown_operation(protocol: Protocol, operation: &str) -> Self {
        let status = match protocol {
            Protocol::RestJson => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        AwsError::new(
            status,
            "UnknownOperationException",
            format!(
                "canarygate does not support the operation {} (see docs/aws.md for the supported ones)",
                bounded(operation, 120)
            ),
        )
    }

    /// A signature refused, with the code each protocol gives it.
    pub fn signature(e: &SigError, protocol: Protocol) -> Self {
        let query = protocol == Protocol::Query;
        let (status, code) = match e {
            SigError::Missing if query => (StatusCode::FORBIDDEN, "MissingAuthenticationToken"),
            SigError::Missing => (StatusCode::FORBIDDEN, "MissingAuthenticationTokenException"),
            SigError::Incomplete(_) if query => (StatusCode::BAD_REQUEST, "IncompleteSignature"),
            SigError::Incomplete(_) => (StatusCode::BAD_REQUEST, "IncompleteSignatureException"),
            SigError::UnknownKey if query => (StatusCode::FORBIDDEN, "InvalidClientTokenId"),
            SigError::UnknownKey => (StatusCode::FORBIDDEN, "UnrecognizedClientException"),
            SigError::Mismatch | SigError::Expired(_) | SigError::Scope(_) if query => (StatusCode::FORBIDDEN, "SignatureDoesNotMatch"),
            SigError::Mismatch | SigError::Expired(_) | SigError::Scope(_) => (StatusCode::FORBIDDEN, "InvalidSignatureException"),
        };
        AwsError::new(status, code, e.to_string())
    }

    /// A read-only key asked for a change.
    pub fn access_denied(protocol: Protocol, user: &str, action: &str, resource: &str) -> Self {
        let code = if protocol == Protocol::Query {
            "AccessDenied"
        } else {
            "AccessDeniedException"
        };
        AwsError::new(
            StatusCode::FORBIDDEN,
            code,
            format!("User: arn:aws:iam::000000000000:user/{user} is not authorized to perform: {action} on resource: {resource}"),
        )
    }

    /// A refusal of the store or the model, in API Gateway's terms (`ConflictException` for a
    /// conflict, `BadRequestException` for a bad value, `NotFoundException` for a missing resource).
    pub fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::Model(canarygate_model::Error::Conflict(m)) => AwsError::new(StatusCode::CONFLICT, "ConflictException", m),
            StoreError::Model(canarygate_model::Error::NotFound { kind, name }) => {
                AwsError::not_found(format!("Invalid {kind} identifier specified {}", bounded(&name, 200)))
            }
            StoreError::Model(m) => AwsError::bad_request(m.to_string()),
            StoreError::Conflict => AwsError::new(
                StatusCode::CONFLICT,
                "ConflictException",
                "Another change was made at the same time; nothing was changed. Retry the call.",
            ),
            other => {
                tracing::error!(error = %other, "AWS endpoint: the store failed");
                AwsError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServiceUnavailableException",
                    "the store failed; nothing was changed",
                )
            }
        }
    }
}

/// A value cut to about `max` bytes for a message.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Text made safe inside an XML element.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

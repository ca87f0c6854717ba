//! The admin API's JSON errors: `{"error":{"code","message"}}` with the matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canarygate_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn code(&self) -> &'static str {
        match self.status {
            StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "BadRequest",
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Unauthorized",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            _ => "Internal",
        }
    }
}

/// The longest error message sent: a message that quotes a huge invalid value is cut, so a client
/// cannot make the API echo megabytes back.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A value quoted for an error message (as `{:?}` does), cut to about 200 bytes with how long it was.
pub fn quote_value(value: &str) -> String {
    const KEEP: usize = 200;
    if value.len() <= KEEP {
        return format!("{value:?}");
    }
    let mut end = KEEP;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying how long it was.
fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (message cut: {} bytes)", &message[..end], message.len())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code(), "message": bounded(self.message)}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<canarygate_model::Error> for ApiError {
    fn from(e: canarygate_model::Error) -> Self {
        use canarygate_model::Error as E;
        let status = match &e {
            E::Invalid { .. } => StatusCode::BAD_REQUEST,
            // As the body extractor says it (`crate::body`).
            E::Unreadable { .. } => return ApiError::bad_request(format!("invalid request body: {e}")),
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

fn e_conflict() -> String {
    StoreError::Conflict.to_string() + " (retry it)"
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Model(m) => m.into(),
            StoreError::Backend(msg) => {
                tracing::error!(error = %msg, "storage failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the change was not saved: {msg}"))
            }
            StoreError::Conflict => ApiError::new(StatusCode::CONFLICT, e_conflict()),
            // Only controller writes are fenced; an API call never is.
            e @ StoreError::Fenced { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_and_messages_are_bounded() {
        assert_eq!(quote_value("ab\"c"), "\"ab\\\"c\"");
        let q = quote_value(&"é".repeat(1000));
        assert!(q.len() < 260 && q.ends_with("(2000 bytes)"), "{q}");
        let m = bounded("x".repeat(2_000_000));
        assert!(m.len() < 1100 && m.ends_with("(message cut: 2000000 bytes)"));
        assert_eq!(bounded("short".into()), "short");
        assert_eq!(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "x").code(), "PayloadTooLarge");
    }
}

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
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => "BadRequest",
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Unauthorized",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            _ => "Internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.message}});
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

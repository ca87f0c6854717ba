//! The AWS-compatible endpoints (`server.awsListen`, its own listener): the calls pipelines make to API
//! Gateway, CodeDeploy and CloudWatch, answered in each service's wire protocol over the same store and
//! model transitions as `/v1` (one change path).
//!
//! Every request is verified with Signature Version 4 ([`sigv4`]) against `server.awsCredentials`
//! before anything is read or changed; a read key may only read. The service is told apart by the
//! protocol: `X-Amz-Target: CodeDeploy_20141006.*` is CodeDeploy (JSON 1.1),
//! `X-Amz-Target: GraniteServiceVersion20100801.*` is CloudWatch (JSON 1.0), a form `POST /` is
//! CloudWatch's query protocol, and everything else is API Gateway's REST API (rest-json).

mod apigateway;
pub mod error;
pub mod sigv4;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::Router;
use chrono::Utc;

pub use error::AwsError;
pub use sigv4::Credential;

use crate::auth::Role;
use crate::AppState;

/// Largest request body the AWS endpoints read, bytes.
const MAX_BODY: usize = 1024 * 1024;

/// The AWS endpoints' settings.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// The region every credential scope must name.
    pub region: String,
    pub credentials: Vec<Credential>,
}

/// The wire protocol of a request (and so of its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// API Gateway's REST API.
    RestJson,
    /// CodeDeploy.
    Json11,
    /// CloudWatch, current SDKs.
    Json10,
    /// CloudWatch, older SDKs and the CLI v1 (form body, XML answers).
    Query,
}

impl Protocol {
    fn of(parts: &Parts) -> Protocol {
        let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
        if target.starts_with("CodeDeploy_20141006.") {
            Protocol::Json11
        } else if target.starts_with("GraniteServiceVersion20100801.") {
            Protocol::Json10
        } else if parts.method == axum::http::Method::POST
            && parts.uri.path() == "/"
            && parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        {
            Protocol::Query
        } else {
            Protocol::RestJson
        }
    }

    /// The service name a credential scope must carry.
    fn service(self) -> &'static str {
        match self {
            Protocol::RestJson => "apigateway",
            Protocol::Json11 => "codedeploy",
            Protocol::Json10 | Protocol::Query => "monitoring",
        }
    }
}

/// What a handler knows of a verified call.
pub(crate) struct Call<'a> {
    pub state: &'a AppState,
    pub config: &'a AwsConfig,
    pub caller: &'a Credential,
    pub parts: &'a Parts,
    pub body: &'a [u8],
}

impl Call<'_> {
    /// Refuses a change by a read key.
    pub fn need_write(&self, protocol: Protocol, action: &str, resource: &str) -> Result<(), AwsError> {
        if self.caller.role == Role::Admin {
            Ok(())
        } else {
            Err(AwsError::access_denied(protocol, &self.caller.name, action, resource))
        }
    }
}

/// The AWS router: one handler that verifies, then dispatches by protocol.
pub fn router(state: AppState, config: Arc<AwsConfig>) -> Router {
    Router::new().fallback(handle).with_state((state, config))
}

fn request_id() -> String {
    let mut s = String::with_capacity(36);
    for (i, len) in [8, 4, 4, 4, 12].iter().enumerate() {
        if i > 0 {
            s.push('-');
        }
        for _ in 0..*len {
            s.push(char::from_digit(fastrand::u32(..16), 16).expect("a hex digit"));
        }
    }
    s
}

async fn handle(State((state, config)): State<(AppState, Arc<AwsConfig>)>, req: Request) -> Response {
    let id = request_id();
    let (parts, body) = req.into_parts();
    let protocol = Protocol::of(&parts);
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return AwsError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                format!("Request body is larger than {MAX_BODY} bytes"),
            )
            .render(protocol, &id)
        }
    };
    let signed = sigv4::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        body: &body,
    };
    let caller = match sigv4::verify(&signed, &config.credentials, &config.region, protocol.service(), Utc::now()) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, service = protocol.service(), "AWS endpoint: signature refused");
            return AwsError::signature(&e, protocol).render(protocol, &id);
        }
    };
    let call = Call {
        state: &state,
        config: &config,
        caller,
        parts: &parts,
        body: &body,
    };
    let answer = match protocol {
        Protocol::RestJson => apigateway::handle(&call).await,
        Protocol::Json11 | Protocol::Json10 => {
            let op = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.split_once('.'))
                .map_or("", |(_, op)| op);
            Err(AwsError::unknown_operation(protocol, op))
        }
        Protocol::Query => {
            let action = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            Err(AwsError::unknown_operation(protocol, &action))
        }
    };
    let mut r = match answer {
        Ok(r) => r,
        Err(e) => e.render(protocol, &id),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

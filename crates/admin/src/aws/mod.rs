//! The AWS-compatible endpoints (`server.awsListen`, its own listener): the calls pipelines make to API
//! Gateway, CodeDeploy and CloudWatch, answered in each service's wire protocol over the same store and
//! model transitions as `/v1` (one change path).
//!
//! Every request is verified with Signature Version 4 ([`sigv4`]) against `server.awsCredentials`
//! before anything is read or changed; a read key may only read. The service is told apart by the
//! protocol: `smithy-protocol: rpc-v2-cbor` with `/service/{Service}/operation/{Operation}` is
//! CloudWatch or CodeDeploy as current CLIs and SDKs call them, `X-Amz-Target:
//! CodeDeploy_20141006.*` is CodeDeploy (JSON 1.1), `X-Amz-Target: GraniteServiceVersion20100801.*` is
//! CloudWatch (JSON 1.0), a form `POST /` is CloudWatch's query protocol, and everything else is API
//! Gateway's REST API (rest-json).

mod apigateway;
mod cloudwatch;
mod codedeploy;
pub mod error;
pub mod rpc;
pub mod sigv4;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::Router;
use chrono::Utc;

pub use apigateway::{translate as translate_stage_patch, AwsPatch};
pub use codedeploy::{parse_appspec, AppSpec};
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

/// An RPC service, by the name its protocol gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    CloudWatch,
    CodeDeploy,
    Unknown,
}

impl Service {
    fn named(name: &str) -> Service {
        match name {
            "GraniteServiceVersion20100801" => Service::CloudWatch,
            "CodeDeploy_20141006" => Service::CodeDeploy,
            _ => Service::Unknown,
        }
    }
}

/// The wire protocol of a request (and so of its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Smithy RPC v2 CBOR: CloudWatch and CodeDeploy from current CLIs and SDKs.
    Cbor(Service),
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
        let smithy = parts.headers.get("smithy-protocol").and_then(|v| v.to_str().ok());
        if smithy == Some("rpc-v2-cbor") {
            let service = rpc_path(parts.uri.path()).map_or(Service::Unknown, |(s, _)| Service::named(s));
            Protocol::Cbor(service)
        } else if target.starts_with("CodeDeploy_20141006.") {
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
            Protocol::Json11 | Protocol::Cbor(Service::CodeDeploy) => "codedeploy",
            Protocol::Json10 | Protocol::Query | Protocol::Cbor(Service::CloudWatch) => "monitoring",
            Protocol::Cbor(Service::Unknown) => "unknown",
        }
    }
}

/// `/service/{Service}/operation/{Operation}`'s two names.
fn rpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/service/")?;
    let (service, op) = rest.split_once("/operation/")?;
    (!service.contains('/') && !op.contains('/') && !op.is_empty()).then_some((service, op))
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
            let e = AwsError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLargeException",
                format!("Request body is larger than {MAX_BODY} bytes"),
            );
            return rpc::error_response(&e, protocol, &id);
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
            return rpc::error_response(&AwsError::signature(&e, protocol), protocol, &id);
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
        _ => rpc_call(&call, protocol, &id).await,
    };
    let mut r = match answer {
        Ok(r) => r,
        Err(e) => rpc::error_response(&e, protocol, &id),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

/// An RPC call (CBOR, JSON or query): the operation's input read, answered, and written back.
async fn rpc_call(call: &Call<'_>, protocol: Protocol, request_id: &str) -> Result<Response, AwsError> {
    let parts = call.parts;
    let (service, operation) = match protocol {
        Protocol::Cbor(service) => (service, rpc_path(parts.uri.path()).map_or("", |(_, op)| op).to_string()),
        Protocol::Json10 | Protocol::Json11 => {
            let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
            let (service, op) = target.split_once('.').unwrap_or((target, ""));
            (Service::named(service), op.to_string())
        }
        Protocol::Query => {
            let action = form_urlencoded::parse(call.body)
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            (Service::CloudWatch, action)
        }
        Protocol::RestJson => unreachable!("rest-json is API Gateway's"),
    };
    let input = match protocol {
        Protocol::Cbor(_) => rpc::cbor_to_json(call.body)?,
        Protocol::Query => rpc::form_to_json(call.body)?,
        _ if call.body.iter().all(u8::is_ascii_whitespace) => serde_json::json!({}),
        _ => serde_json::from_slice(call.body).map_err(|e| AwsError::serialization(format!("the JSON body does not parse: {e}")))?,
    };
    if !input.is_object() {
        return Err(AwsError::serialization("the body is not an object"));
    }
    let output = match service {
        Service::CloudWatch => cloudwatch::handle(call, protocol, &operation, input).await?,
        Service::CodeDeploy => codedeploy::handle(call, protocol, &operation, input).await?,
        Service::Unknown => return Err(AwsError::unknown_operation(protocol, &operation)),
    };
    Ok(match protocol {
        Protocol::Cbor(_) => rpc::cbor_response(&output),
        Protocol::Json10 => rpc::json_response(&output, "1.0"),
        Protocol::Json11 => rpc::json_response(&output, "1.1"),
        Protocol::Query => rpc::query_response(&operation, &output, request_id),
        Protocol::RestJson => unreachable!("rest-json is API Gateway's"),
    })
}

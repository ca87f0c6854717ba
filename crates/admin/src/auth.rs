//! Bearer-token auth of the admin API. With tokens configured, every change needs an admin token and
//! every read a read-only or admin token, unless `read_requires_token` is off (reads open on purpose).
//!
//! With no token configured every call is open, but only from this machine: the binary refuses to listen
//! beyond loopback then, and every request must name a loopback host (`localhost`, `127.0.0.1`, `[::1]`,
//! any port) or one of `admin_hosts` in its `Host`. A web page the operator opens cannot reach the API by
//! DNS rebinding (its requests carry the page's own host name).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

/// The configured tokens, and the host names the admin API answers to without them.
/// One configured token: the secret, what it may do, and the name events record (never the secret).
#[derive(Clone)]
pub struct Token {
    pub token: String,
    pub role: Role,
    pub name: String,
}

/// Who made an admin API call, as handlers see it (a request extension set by [`middleware`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The presented token's name; without tokens configured, a fixed label.
    pub name: String,
}

#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<Token>,
    pub read_requires_token: bool,
    /// Extra `Host` names (with or without a port) accepted when no token is configured.
    admin_hosts: Vec<String>,
    /// Web origins (`https://ops.example`) besides the admin API's own whose pages may change state
    /// (`server.adminOrigins`).
    admin_origins: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never appear in logs.
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .field("read_requires_token", &self.read_requires_token)
            .finish()
    }
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn new(tokens: Vec<Token>, read_requires_token: bool, admin_hosts: Vec<String>) -> Auth {
        Auth {
            tokens: tokens.into_iter().filter(|t| !t.token.is_empty()).collect(),
            read_requires_token,
            admin_hosts: admin_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            admin_origins: Vec::new(),
        }
    }

    /// Web origins besides the admin API's own whose pages may make state-changing calls.
    pub fn with_origins(mut self, origins: Vec<String>) -> Auth {
        self.admin_origins = origins.into_iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect();
        self
    }

    /// Refuses a state-changing call a web page could have made on another site's behalf (cross-site
    /// request forgery), tokens or not: one whose `Sec-Fetch-Site` says another site sent it, one with
    /// an `Origin` that is neither the admin API's own nor listed in `server.adminOrigins`, and one
    /// with a body that is not `application/json` (the only body type a page on another site cannot
    /// send without the browser asking first). Reads are not checked: a page cannot read the answers.
    pub fn check_cross_site(&self, method: &Method, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        use axum::http::header;
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let text = |name: &header::HeaderName| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let origin = text(&header::ORIGIN).map(|o| o.trim().to_ascii_lowercase());
        let listed = origin.as_ref().is_some_and(|o| self.admin_origins.iter().any(|a| a == o));
        if let Some(o) = &origin {
            let host = text(&header::HOST).map(|h| h.to_ascii_lowercase());
            let own = host.is_some_and(|h| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")) == Some(h.as_str()));
            if !own && !listed {
                return Err(forbidden(format!(
                    "a state-changing call from the web page at origin {} is refused: it is not the admin API's own origin and not in server.adminOrigins",
                    quote(o)
                )));
            }
        }
        if let Some(site) = text(&header::HeaderName::from_static("sec-fetch-site")) {
            let site = site.trim().to_ascii_lowercase();
            if (site == "cross-site" || site == "same-site") && !listed {
                return Err(forbidden(format!(
                    "a state-changing call sent by a page of another site (Sec-Fetch-Site: {}) is refused",
                    quote(&site)
                )));
            }
        }
        let content_type = text(&header::CONTENT_TYPE);
        let has_body = headers.contains_key(header::TRANSFER_ENCODING) || text(&header::CONTENT_LENGTH).is_some_and(|l| l.trim() != "0");
        match content_type {
            Some(ct) if !is_json(&ct) => Err(forbidden(format!(
                "a state-changing call needs Content-Type: application/json, not {} (a web page on another site can send that type without the browser asking)",
                quote(&ct)
            ))),
            None if has_body => Err(forbidden(
                "a state-changing call with a body needs Content-Type: application/json",
            )),
            _ => Ok(()),
        }
    }

    /// Without tokens, whether a request with this `Host` may be answered (see the module's doc).
    pub fn check_host(&self, host: Option<&str>) -> Result<(), ApiError> {
        if self.has_tokens() {
            return Ok(());
        }
        let Some(host) = host.map(str::to_ascii_lowercase) else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a request without Host; without admin tokens the admin API answers only loopback host names",
            ));
        };
        // The name without a port (an IPv6 literal keeps its brackets).
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (!n.contains(':') || n.ends_with(']')) => n,
            _ => host.as_str(),
        };
        let loopback = name == "localhost" || name == "[::1]" || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
        if loopback || self.admin_hosts.iter().any(|h| *h == host || *h == name) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "host {host:?} is not a loopback name and not in server.adminHosts; without admin tokens the admin API answers only those"
            ),
        ))
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The role of the bearer token in an `Authorization` header, if it is a valid one.
    pub fn role_of(&self, authorization: Option<&str>) -> Option<Role> {
        let presented = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))?;
        self.role(presented.trim())
    }

    fn role(&self, presented: &str) -> Option<Role> {
        self.token(presented).map(|t| t.role)
    }

    /// The configured token equal to `presented`. Checks every token so the time taken does not
    /// depend on which one matched.
    fn token(&self, presented: &str) -> Option<&Token> {
        self.tokens
            .iter()
            .fold(None, |found, t| if same(&t.token, presented) { Some(t) } else { found })
    }

    /// The caller's name for the record: the presented token's name.
    pub fn caller(&self, authorization: Option<&str>) -> Caller {
        if self.tokens.is_empty() {
            return Caller {
                name: "anonymous (no admin tokens configured)".into(),
            };
        }
        let presented = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
        let name = presented
            .and_then(|p| self.token(p.trim()))
            .map_or_else(|| "anonymous".to_string(), |t| t.name.clone());
        Caller { name }
    }

    /// Decides whether a request with this method and `Authorization` header may go on.
    pub fn check(&self, method: &Method, authorization: Option<&str>) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if read && !self.read_requires_token {
            return Ok(());
        }
        let presented = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")));
        let Some(presented) = presented.map(str::trim) else {
            return Err(ApiError::unauthorized(
                "this call needs a bearer token (Authorization: Bearer <token>)",
            ));
        };
        match self.role(presented) {
            Some(Role::Admin) => Ok(()),
            Some(Role::ReadOnly) if read => Ok(()),
            Some(Role::ReadOnly) => Err(ApiError::unauthorized("the token is read-only; this call changes state")),
            None => Err(ApiError::unauthorized("the bearer token is not valid")),
        }
    }
}

/// `application/json` or `application/<something>+json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

/// A value from a request, quoted for an error message and cut to 200 bytes.
fn quote(value: &str) -> String {
    crate::error::quote_value(value)
}

/// `GET /v1/auth`: what the presented token may do, so the dashboard offers actions only to an admin
/// token. Behind the same check as every read.
pub async fn whoami(State(auth): State<Auth>, headers: axum::http::HeaderMap) -> axum::Json<serde_json::Value> {
    let role = match auth.role_of(headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        Some(Role::Admin) => "admin",
        Some(Role::ReadOnly) => "readOnly",
        None => "anonymous",
    };
    axum::Json(serde_json::json!({
        "role": role,
        "tokensConfigured": auth.has_tokens(),
        "readRequiresToken": auth.has_tokens() && auth.read_requires_token,
    }))
}

/// The `Host` check of every admin request (see [`Auth::check_host`]) and the cross-site check of
/// every state-changing one (see [`Auth::check_cross_site`]).
pub async fn host_middleware(State(auth): State<Auth>, req: Request, next: Next) -> Result<Response, ApiError> {
    let host = req.headers().get(axum::http::header::HOST).and_then(|v| v.to_str().ok());
    auth.check_host(host)?;
    auth.check_cross_site(req.method(), req.headers())?;
    Ok(next.run(req).await)
}

pub async fn middleware(State(auth): State<Auth>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let authz = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth.check(req.method(), authz)?;
    let caller = auth.caller(authz);
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(t: &str, role: Role) -> Token {
        Token {
            token: t.into(),
            role,
            name: format!("{t}-name"),
        }
    }

    #[test]
    fn roles() {
        let a = Auth::new(vec![tok("adm", Role::Admin), tok("ro", Role::ReadOnly)], false, vec![]);
        assert!(a.check(&Method::GET, None).is_ok());
        assert!(a.check(&Method::POST, None).is_err());
        assert!(a.check(&Method::POST, Some("Bearer nope")).is_err());
        assert!(a.check(&Method::POST, Some("Bearer ro")).is_err());
        assert!(a.check(&Method::POST, Some("Bearer adm")).is_ok());
        let strict = Auth::new(vec![tok("ro", Role::ReadOnly)], true, vec![]);
        assert!(strict.check(&Method::GET, None).is_err());
        assert!(strict.check(&Method::GET, Some("Bearer ro")).is_ok());
        assert!(Auth::default().check(&Method::DELETE, None).is_ok());
        assert!(!format!("{a:?}").contains("adm"));
    }

    #[test]
    fn without_tokens_only_loopback_hosts_are_answered() {
        let a = Auth::new(vec![], false, vec!["admin.internal".into(), "ops.example:9443".into()]);
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:9090",
            "admin.internal",
            "admin.internal:9090",
            "ops.example:9443",
        ] {
            assert!(a.check_host(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:9090",
            "[::2]:9090",
            "ops.example:9090",
            "",
        ] {
            let e = a.check_host(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad}");
        }
        assert!(a.check_host(None).is_err());
        // With tokens the token decides, whatever the host.
        let t = Auth::new(vec![tok("adm", Role::Admin)], true, vec![]);
        assert!(t.check_host(Some("evil.example")).is_ok());
    }

    fn headers(fields: &[(&'static str, &str)]) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in fields {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_writes_are_refused_tokens_or_not() {
        for a in [
            Auth::new(vec![], false, vec![]).with_origins(vec!["https://ops.example/".into()]),
            Auth::new(vec![tok("adm", Role::Admin)], true, vec![]).with_origins(vec!["https://ops.example".into()]),
        ] {
            let json = ("content-type", "application/json");
            let host = ("host", "127.0.0.1:9090");
            // What the CLI and the dashboard send.
            for ok in [
                vec![host, json, ("content-length", "2")],
                vec![host, ("content-length", "0")],
                vec![host],
                vec![host, ("content-type", "application/json; charset=utf-8"), ("content-length", "2")],
                vec![host, json, ("origin", "http://127.0.0.1:9090"), ("sec-fetch-site", "same-origin")],
                vec![host, json, ("origin", "https://ops.example"), ("sec-fetch-site", "cross-site")],
                vec![host, ("content-type", "application/merge-patch+json"), ("content-length", "2")],
            ] {
                assert!(a.check_cross_site(&Method::POST, &headers(&ok)).is_ok(), "{ok:?}");
            }
            for bad in [
                vec![host, ("content-type", "text/plain"), ("content-length", "20")],
                vec![host, ("content-type", "application/x-www-form-urlencoded"), ("content-length", "0")],
                vec![host, ("content-type", "multipart/form-data; boundary=x")],
                vec![host, ("content-length", "20")],
                vec![host, ("transfer-encoding", "chunked")],
                vec![host, json, ("origin", "http://evil.example")],
                vec![host, json, ("origin", "null")],
                vec![host, json, ("origin", "http://127.0.0.1:9091")],
                vec![host, json, ("sec-fetch-site", "cross-site")],
                vec![host, json, ("sec-fetch-site", "same-site")],
            ] {
                let e = a.check_cross_site(&Method::POST, &headers(&bad)).unwrap_err();
                assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad:?}");
                for m in [Method::PUT, Method::PATCH, Method::DELETE] {
                    assert!(a.check_cross_site(&m, &headers(&bad)).is_err(), "{m} {bad:?}");
                }
                // Reads are not checked: a page cannot read another origin's answers.
                assert!(a.check_cross_site(&Method::GET, &headers(&bad)).is_ok());
            }
        }
        let e = Auth::default()
            .check_cross_site(&Method::POST, &headers(&[("content-type", &"x".repeat(5000))]))
            .unwrap_err();
        assert!(e.message.len() < 500, "the bad value is quoted only in part: {}", e.message);
    }
}

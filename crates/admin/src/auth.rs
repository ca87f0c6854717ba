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

/// The `Host` check of every admin request (see [`Auth::check_host`]).
pub async fn host_middleware(State(auth): State<Auth>, req: Request, next: Next) -> Result<Response, ApiError> {
    let host = req.headers().get(axum::http::header::HOST).and_then(|v| v.to_str().ok());
    auth.check_host(host)?;
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
}

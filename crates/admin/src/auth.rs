//! Bearer-token auth of the admin API. With no token configured every call is open (the binary refuses
//! to listen beyond loopback then). With tokens, every change needs an admin token; reads are open unless
//! `read_requires_token` is set, in which case read-only or admin tokens may read.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Vec<(String, Role)>,
    pub read_requires_token: bool,
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
    pub fn new(tokens: Vec<(String, Role)>, read_requires_token: bool) -> Auth {
        Auth {
            tokens: tokens.into_iter().filter(|(t, _)| !t.is_empty()).collect(),
            read_requires_token,
        }
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn role(&self, presented: &str) -> Option<Role> {
        // Check every token so the time taken does not depend on which one matched.
        self.tokens
            .iter()
            .fold(None, |found, (t, r)| if same(t, presented) { Some(*r) } else { found })
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

pub async fn middleware(State(auth): State<Auth>, req: Request, next: Next) -> Result<Response, ApiError> {
    let authz = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth.check(req.method(), authz)?;
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let a = Auth::new(vec![("adm".into(), Role::Admin), ("ro".into(), Role::ReadOnly)], false);
        assert!(a.check(&Method::GET, None).is_ok());
        assert!(a.check(&Method::POST, None).is_err());
        assert!(a.check(&Method::POST, Some("Bearer nope")).is_err());
        assert!(a.check(&Method::POST, Some("Bearer ro")).is_err());
        assert!(a.check(&Method::POST, Some("Bearer adm")).is_ok());
        let strict = Auth::new(vec![("ro".into(), Role::ReadOnly)], true);
        assert!(strict.check(&Method::GET, None).is_err());
        assert!(strict.check(&Method::GET, Some("Bearer ro")).is_ok());
        assert!(Auth::default().check(&Method::DELETE, None).is_ok());
        assert!(!format!("{a:?}").contains("adm"));
    }
}

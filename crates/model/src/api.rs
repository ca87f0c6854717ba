//! APIs, routes, integrations and deployments.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::template::{self, Template};
use crate::{Error, Result};

/// An HTTP method a route answers, or `ANY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
    Options,
    #[default]
    Any,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Any => "ANY",
        }
    }
}

/// Where a matched request goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Integration {
    /// Proxy to a URI template over stage variables and path parameters.
    Http {
        uri: String,
        #[serde(rename = "timeoutMs", default = "default_timeout_ms")]
        timeout_ms: u32,
        /// The longest the upstream may go without sending body bytes once its response head came
        /// (nginx's `proxy_read_timeout`); a stalled body is ended and counted as a 5XXError.
        #[serde(rename = "readTimeoutMs", default = "default_read_timeout_ms")]
        read_timeout_ms: u32,
        /// For an `https://` URI: the CA certificates (PEM file on the gateway's machine) the upstream's
        /// certificate must chain to, instead of the system's roots.
        #[serde(rename = "caFile", default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
        /// Speak HTTP/2 to the upstream (cleartext with prior knowledge for `http://`, ALPN `h2` over
        /// TLS for `https://`), multiplexed on one connection per upstream and worker; gRPC needs it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        http2: bool,
    },
    /// A fixed response; the body may refer to stage variables.
    Mock {
        #[serde(default = "default_mock_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: String,
    },
}

fn default_timeout_ms() -> u32 {
    29_000
}
fn default_read_timeout_ms() -> u32 {
    60_000
}
fn default_mock_status() -> u16 {
    200
}

/// A route: method + path pattern -> integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub method: Method,
    pub path: String,
    pub integration: Integration,
}

impl Integration {
    fn validate(&self, field: &str, path_params: &[&str]) -> Result<()> {
        match self {
            Integration::Http {
                uri,
                timeout_ms,
                read_timeout_ms,
                ca_file,
                http2: _,
            } => {
                let f = format!("{field}.uri");
                if !uri.starts_with("http://") && !uri.starts_with("https://") {
                    return Err(Error::invalid(f, uri, "must start with http:// or https://"));
                }
                if let Some(ca) = ca_file {
                    if !uri.starts_with("https://") {
                        return Err(Error::invalid(format!("{field}.caFile"), ca, "is only for https:// URIs"));
                    }
                    if ca.trim().is_empty() || ca.contains('\0') {
                        return Err(Error::invalid(format!("{field}.caFile"), ca, "must be a file path"));
                    }
                }
                let t = Template::parse(&f, uri, true)?;
                for p in t.path_params() {
                    if !path_params.contains(&p) {
                        return Err(Error::invalid(
                            f,
                            uri,
                            format!("refers to path parameter {{{p}}} that the route path does not define"),
                        ));
                    }
                }
                if !(50..=29_000).contains(timeout_ms) {
                    return Err(Error::invalid(
                        format!("{field}.timeoutMs"),
                        timeout_ms.to_string(),
                        "must be between 50 and 29000",
                    ));
                }
                if !(50..=3_600_000).contains(read_timeout_ms) {
                    return Err(Error::invalid(
                        format!("{field}.readTimeoutMs"),
                        read_timeout_ms.to_string(),
                        "must be between 50 and 3600000",
                    ));
                }
            }
            Integration::Mock { status, headers, body } => {
                if !(100..=599).contains(status) {
                    return Err(Error::invalid(
                        format!("{field}.status"),
                        status.to_string(),
                        "must be between 100 and 599",
                    ));
                }
                for (k, v) in headers {
                    let ok_name = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !ok_name {
                        return Err(Error::invalid(format!("{field}.headers"), k, "is not a valid header name"));
                    }
                    if v.bytes().any(|b| b < 0x20 && b != b'\t') {
                        return Err(Error::invalid(format!("{field}.headers.{k}"), v, "has control characters"));
                    }
                }
                Template::parse(&format!("{field}.body"), body, false)?;
            }
        }
        Ok(())
    }
}

/// Validates a whole route list: each route, and no two routes that would match the same requests.
pub fn validate_routes(routes: &[Route]) -> Result<()> {
    if routes.len() > 1000 {
        return Err(Error::invalid("routes", routes.len().to_string(), "at most 1000 routes"));
    }
    let mut seen: BTreeMap<String, (Vec<String>, Vec<Method>)> = BTreeMap::new();
    for (i, r) in routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        let segs = template::parse_path(&format!("{field}.path"), &r.path)?;
        let names: Vec<String> = segs
            .iter()
            .filter_map(|s| match s {
                template::PathSegment::Param(n) | template::PathSegment::Greedy(n) => Some(n.clone()),
                template::PathSegment::Literal(_) => None,
            })
            .collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        r.integration.validate(&format!("{field}.integration"), &name_refs)?;
        let entry = seen
            .entry(template::path_shape(&segs))
            .or_insert_with(|| (names.clone(), Vec::new()));
        if entry.0 != names {
            return Err(Error::invalid(
                format!("{field}.path"),
                &r.path,
                "uses other parameter names than another route with the same shape",
            ));
        }
        if entry.1.contains(&r.method) {
            return Err(Error::invalid(
                format!("{field}.path"),
                &r.path,
                format!("duplicate route {} {}", r.method.as_str(), r.path),
            ));
        }
        entry.1.push(r.method);
    }
    Ok(())
}

/// A named set of routes. Serving changes only with a new deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Api {
    pub name: String,
    pub routes: Vec<Route>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An immutable snapshot of an API's routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub routes: Vec<Route>,
}

/// Validates a deployment id as the model makes them: `d-` and 5 to 32 lowercase letters or digits.
pub fn validate_deployment_id(field: &str, id: &str) -> Result<()> {
    let ok = id
        .strip_prefix("d-")
        .is_some_and(|s| (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, id, "is not a deployment id (d-xxxxx)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(path: &str, uri: &str) -> Route {
        Route {
            method: Method::Any,
            path: path.into(),
            integration: Integration::Http {
                uri: uri.into(),
                timeout_ms: 1000,
                read_timeout_ms: 60_000,
                ca_file: None,
                http2: false,
            },
        }
    }

    #[test]
    fn routes_deserialize_with_defaults() {
        let r: Route = serde_json::from_str(r#"{"path":"/h","integration":{"type":"mock","body":"ok"}}"#).unwrap();
        assert_eq!(r.method, Method::Any);
        assert_eq!(
            r.integration,
            Integration::Mock {
                status: 200,
                headers: BTreeMap::new(),
                body: "ok".into()
            }
        );
        let r: Route = serde_json::from_str(r#"{"method":"GET","path":"/h","integration":{"type":"http","uri":"http://x/"}}"#).unwrap();
        assert_eq!(
            r.integration,
            Integration::Http {
                uri: "http://x/".into(),
                timeout_ms: 29000,
                read_timeout_ms: 60_000,
                ca_file: None,
                http2: false,
            }
        );
    }

    #[test]
    fn validates_routes() {
        validate_routes(&[
            http("/orders/{id}", "http://${stageVariables.b}/o/{id}"),
            http("/orders", "http://x/"),
        ])
        .unwrap();
        let e = validate_routes(&[http("/a/{id}", "http://x/{other}")]).unwrap_err().to_string();
        assert!(e.contains("routes[0].integration.uri") && e.contains("{other}"), "{e}");
        let e = validate_routes(&[http("/a/{x}", "http://x/"), http("/a/{y}", "http://x/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[1].path"), "{e}");
        let e = validate_routes(&[http("/a", "http://x/"), http("/a", "http://y/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate"), "{e}");
        validate_routes(&[http("/a", "https://x/")]).unwrap();
        let e = validate_routes(&[http("/a", "ftp://x/")]).unwrap_err().to_string();
        assert!(e.contains("routes[0].integration.uri") && e.contains("ftp://x/"), "{e}");
        let with_ca = |uri: &str| Route {
            integration: Integration::Http {
                uri: uri.into(),
                timeout_ms: 1000,
                read_timeout_ms: 60_000,
                ca_file: Some("ca.pem".into()),
                http2: false,
            },
            ..http("/a", "")
        };
        validate_routes(&[with_ca("https://x/")]).unwrap();
        let e = validate_routes(&[with_ca("http://x/")]).unwrap_err().to_string();
        assert!(e.contains("routes[0].integration.caFile") && e.contains("only for https://"), "{e}");
        let bad_timeout = Route {
            integration: Integration::Http {
                uri: "http://x/".into(),
                timeout_ms: 10,
                read_timeout_ms: 60_000,
                ca_file: None,
                http2: false,
            },
            ..http("/a", "")
        };
        let e = validate_routes(&[bad_timeout]).unwrap_err().to_string();
        assert!(e.contains("routes[0].integration.timeoutMs") && e.contains("\"10\""), "{e}");
        let bad_read = Route {
            integration: Integration::Http {
                uri: "http://x/".into(),
                timeout_ms: 1000,
                read_timeout_ms: 0,
                ca_file: None,
                http2: false,
            },
            ..http("/a", "")
        };
        let e = validate_routes(&[bad_read]).unwrap_err().to_string();
        assert!(e.contains("routes[0].integration.readTimeoutMs") && e.contains("\"0\""), "{e}");
    }

    #[test]
    fn deployment_ids() {
        validate_deployment_id("deploymentId", "d-7kq2m").unwrap();
        assert!(validate_deployment_id("deploymentId", "x-1").is_err());
        assert!(validate_deployment_id("deploymentId", "d-ABC").is_err());
    }
}

//! AWS Signature Version 4, verified: the canonical request rebuilt from what arrived, the string to
//! sign, the signing key derived from the secret, and the signature compared in constant time (HMAC
//! and SHA-256 from the `hmac` and `sha2` crates). Pure: the clock is an argument.
//!
//! Canonicalisation follows AWS's rules for every service but S3 (the ones canarygate answers): the
//! path as sent, percent-encoded once more (unreserved bytes and `/` kept); query parameters decoded,
//! encoded strictly and sorted; signed headers lowercased, values trimmed with inner runs of spaces
//! folded, several values joined by `,`; the payload's SHA-256.

use axum::http::{self, HeaderMap};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::auth::Role;

type HmacSha256 = Hmac<Sha256>;

/// How far a request's time may be from ours, either way (AWS's window).
pub const MAX_SKEW: TimeDelta = TimeDelta::minutes(15);

/// Bytes kept as they are by AWS's URI encoding: `A-Z a-z 0-9 - _ . ~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// The same for a path, which keeps its `/`.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// A key that may sign requests.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    pub access_key_id: String,
    pub secret: String,
    pub role: Role,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What arrived, as the signature covers it.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as sent (still percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why a request's signature is refused. Each protocol names these with its own codes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SigError {
    #[error("Missing Authentication Token")]
    Missing,
    /// The `Authorization` header or a part of it is not as SigV4 makes it.
    #[error("{0}")]
    Incomplete(String),
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    Mismatch,
    /// Outside the clock window, or the scope's date or region is not this server's.
    #[error("{0}")]
    Expired(String),
    /// The credential scope names another region or service.
    #[error("{0}")]
    Scope(String),
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

impl<'a> Authorization<'a> {
    /// Parses the header's value.
    pub fn parse(value: &'a str) -> Result<Authorization<'a>, SigError> {
        let incomplete = |what: &str| {
            SigError::Incomplete(format!(
                "Authorization header requires '{what}' parameter. Authorization={}",
                value.chars().take(200).collect::<String>()
            ))
        };
        let rest = value.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
            SigError::Incomplete(format!(
                "Unsupported authorization type: {:?} (only AWS4-HMAC-SHA256 is accepted)",
                value.split(' ').next().unwrap_or("").chars().take(40).collect::<String>()
            ))
        })?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=').ok_or_else(|| incomplete("Credential"))?;
            match k {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed = Some(v),
                "Signature" => signature = Some(v),
                _ => {}
            }
        }
        let credential = credential.ok_or_else(|| incomplete("Credential"))?;
        let signed = signed.ok_or_else(|| incomplete("SignedHeaders"))?;
        let signature = signature.ok_or_else(|| incomplete("Signature"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(SigError::Incomplete(format!(
                "Credential should be scoped to a valid region, service and terminator: {:?}",
                credential.chars().take(200).collect::<String>()
            )));
        };
        if terminator != "aws4_request" {
            return Err(SigError::Incomplete(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
                terminator.chars().take(40).collect::<String>()
            )));
        }
        Ok(Authorization {
            access_key_id,
            date,
            region,
            service,
            signed_headers: signed.split(';').collect(),
            signature,
        })
    }
}

/// Verifies `req` for `service` in `region` at `now`; returns the credential that signed it.
pub fn verify<'c>(
    req: &SignedRequest<'_>,
    credentials: &'c [Credential],
    region: &str,
    service: &str,
    now: DateTime<Utc>,
) -> Result<&'c Credential, SigError> {
    let header = match req.headers.get(http::header::AUTHORIZATION) {
        None => return Err(SigError::Missing),
        Some(v) => v
            .to_str()
            .map_err(|_| SigError::Incomplete("Authorization header is not ASCII".into()))?,
    };
    let auth = Authorization::parse(header)?;
    let credential = credentials
        .iter()
        .find(|c| c.access_key_id == auth.access_key_id)
        .ok_or(SigError::UnknownKey)?;
    if auth.service != service {
        return Err(SigError::Scope(format!(
            "Credential should be scoped to correct service: '{service}'. "
        )));
    }
    if auth.region != region {
        return Err(SigError::Scope(format!(
            "Credential should be scoped to a valid region, not '{}'. ",
            auth.region.chars().take(40).collect::<String>()
        )));
    }
    // The request's time: X-Amz-Date (as every SDK sends), else Date.
    let amz_date = req.headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        SigError::Incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into())
    })?;
    let at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| {
            SigError::Incomplete(format!(
                "X-Amz-Date {:?} is not in the form 20150830T123600Z",
                amz_date.chars().take(40).collect::<String>()
            ))
        })?
        .and_utc();
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(SigError::Scope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from 'x-amz-date'.",
            auth.date.chars().take(40).collect::<String>(),
            &amz_date[..8]
        )));
    }
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    if at < now - MAX_SKEW {
        return Err(SigError::Expired(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            stamp(now - MAX_SKEW),
            stamp(now)
        )));
    }
    if at > now + MAX_SKEW {
        return Err(SigError::Expired(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            stamp(now + MAX_SKEW),
            stamp(now)
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(SigError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let payload = hex::encode(Sha256::digest(req.body));
    if let Some(claimed) = req.headers.get("x-amz-content-sha256") {
        if claimed.as_bytes() != payload.as_bytes() {
            return Err(SigError::Mismatch);
        }
    }
    let canonical = canonical_request(req, &auth.signed_headers, &payload).ok_or(SigError::Mismatch)?;
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let given = hex::decode(auth.signature).map_err(|_| SigError::Mismatch)?;
    let key = signing_key(&credential.secret, auth.date, auth.region, auth.service);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    mac.verify_slice(&given).map_err(|_| SigError::Mismatch)?;
    Ok(credential)
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The signing key: HMAC chain over the date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, service);
    hmac(&k, "aws4_request")
}

/// The canonical request; None when a signed header is missing from the request.
pub fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[&str], payload_hash: &str) -> Option<String> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_path(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query.unwrap_or("")));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(*name)
            .iter()
            .map(|v| fold_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() {
            return None;
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Some(out)
}

/// The path as sent, encoded once more (so `%2F` becomes `%252F`), `/` kept; an empty path is `/`.
pub fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    utf8_percent_encode(path, PATH).to_string()
}

/// Query parameters decoded, encoded strictly, and sorted by name then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let raw: Vec<u8> = percent_decode_str(s).collect();
                percent_encoding::percent_encode(&raw, UNRESERVED).to_string()
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn fold_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Vec<Credential> {
        vec![Credential {
            name: "test".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            role: Role::Admin,
        }]
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn at(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").unwrap().and_utc()
    }

    // AWS's SigV4 test suite, "get-vanilla" and "get-vanilla-query-order-key-case": the published
    // signatures for the example key.
    const VANILLA: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    #[test]
    fn the_aws_test_suite_vanilla_request_verifies() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", VANILLA),
        ]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: None,
            headers: &h,
            body: b"",
        };
        let c = creds();
        assert_eq!(
            verify(&req, &c, "us-east-1", "service", at("20150830T123600Z")).unwrap().name,
            "test"
        );
    }

    #[test]
    fn the_aws_test_suite_query_order_verifies() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500";
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", auth),
        ]);
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: Some("Param2=value2&Param1=value1"),
            headers: &h,
            body: b"",
        };
        let c = creds();
        assert!(verify(&req, &c, "us-east-1", "service", at("20150830T123600Z")).is_ok());
    }

    #[test]
    fn anything_changed_is_refused() {
        let c = creds();
        let now = at("20150830T123600Z");
        let ok = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", VANILLA),
        ]);
        let check = |method: &str, path: &str, query: Option<&str>, h: &HeaderMap, body: &[u8], now: DateTime<Utc>| {
            verify(
                &SignedRequest {
                    method,
                    path,
                    query,
                    headers: h,
                    body,
                },
                &c,
                "us-east-1",
                "service",
                now,
            )
        };
        assert_eq!(check("POST", "/", None, &ok, b"", now).unwrap_err(), SigError::Mismatch);
        assert_eq!(check("GET", "/x", None, &ok, b"", now).unwrap_err(), SigError::Mismatch);
        assert_eq!(check("GET", "/", Some("a=b"), &ok, b"", now).unwrap_err(), SigError::Mismatch);
        assert_eq!(check("GET", "/", None, &ok, b"body", now).unwrap_err(), SigError::Mismatch);
        let other_host = headers(&[
            ("host", "evil.example"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", VANILLA),
        ]);
        assert_eq!(check("GET", "/", None, &other_host, b"", now).unwrap_err(), SigError::Mismatch);
        // Twenty minutes late, or early: expired, named with AWS's words.
        let late = check("GET", "/", None, &ok, b"", now + TimeDelta::minutes(20)).unwrap_err();
        assert!(
            matches!(&late, SigError::Expired(m) if m.starts_with("Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z")),
            "{late:?}"
        );
        let early = check("GET", "/", None, &ok, b"", now - TimeDelta::minutes(20)).unwrap_err();
        assert!(matches!(early, SigError::Expired(m) if m.starts_with("Signature not yet current")));
        // Unknown key, no header, wrong scope.
        let unknown = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &VANILLA.replace("AKIDEXAMPLE", "AKIDOTHER")),
        ]);
        assert_eq!(check("GET", "/", None, &unknown, b"", now).unwrap_err(), SigError::UnknownKey);
        let none = headers(&[("host", "example.amazonaws.com")]);
        assert_eq!(check("GET", "/", None, &none, b"", now).unwrap_err(), SigError::Missing);
        let scoped = |region: &str, service: &str| {
            let req = SignedRequest {
                method: "GET",
                path: "/",
                query: None,
                headers: &ok,
                body: b"",
            };
            verify(&req, &c, region, service, now).map(|c| c.name.clone())
        };
        assert!(matches!(scoped("eu-west-1", "service"), Err(SigError::Scope(m)) if m.contains("'us-east-1'")));
        assert!(matches!(scoped("us-east-1", "monitoring"), Err(SigError::Scope(m)) if m.contains("'monitoring'")));
        assert_eq!(scoped("us-east-1", "service").unwrap(), "test");
    }

    #[test]
    fn malformed_headers_are_incomplete_not_panics() {
        for bad in [
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 ",
            "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz",
            "Basic dXNlcjpwYXNz",
            "AWS4-HMAC-SHA256 garbage",
        ] {
            let r = Authorization::parse(bad);
            if let Ok(a) = r {
                assert_eq!(a.signature, "zz", "{bad}");
            }
        }
    }

    #[test]
    fn canonical_parts_follow_aws() {
        assert_eq!(canonical_path("/restapis/a%2Fb/stages/prod"), "/restapis/a%252Fb/stages/prod");
        assert_eq!(canonical_path("/~x/-_."), "/~x/-_.");
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query("k=a%20b&k2=%7E+"), "k=a%20b&k2=~%2B");
        assert_eq!(fold_spaces("  a   b  c "), "a b c");
    }
}

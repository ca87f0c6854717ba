//! Reaching PostgreSQL: the store URL's TLS parameters, as libpq spells them, turned into the client's
//! configuration. `sslmode=require`, `verify-ca` and `verify-full` connect over TLS (rustls) and
//! always verify the server's certificate and name — against `sslrootcert` (a PEM file of the CAs to
//! trust) when given, else the system's roots; there is no unverified TLS. Without `sslmode` (or with
//! `disable`, `allow` or `prefer`) the connection is plain TCP, as before; `sslrootcert` alone means
//! `verify-full`. The parameters are taken out of the URL before the client reads it.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, NoTls};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::StoreError;

/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn bad(message: String) -> StoreError {
    StoreError::Backend(format!("store URL: {message}"))
}

/// The client configuration and, for TLS, the rustls configuration of a store URL.
pub(crate) fn target(url: &str) -> Result<(postgres::Config, Option<rustls::ClientConfig>), StoreError> {
    let mut parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let mode = pairs.iter().find(|(k, _)| k == "sslmode").map(|(_, v)| v.clone());
    let root = pairs.iter().find(|(k, _)| k == "sslrootcert").map(|(_, v)| v.clone());
    let tls = match (mode.as_deref(), &root) {
        (None, None) | (Some("disable" | "allow" | "prefer"), None) => false,
        (None | Some("require" | "verify-ca" | "verify-full"), _) => true,
        (Some(m @ ("disable" | "allow" | "prefer")), Some(_)) => {
            return Err(bad(format!(
                "sslrootcert needs TLS, but sslmode is {m:?} (use sslmode=verify-full)"
            )))
        }
        (Some(m), _) => {
            return Err(bad(format!(
                "sslmode {m:?} is not disable, allow, prefer, require, verify-ca or verify-full"
            )))
        }
    };
    // What the client reads: no sslrootcert, and sslmode as it knows it.
    let rest: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "sslrootcert" && k != "sslmode")
        .chain(tls.then(|| ("sslmode".to_string(), "require".to_string())))
        .collect();
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    let mut cfg = postgres::Config::from_str(parsed.as_str()).map_err(|e| bad(e.to_string()))?;
    cfg.connect_timeout(CONNECT_TIMEOUT);
    if cfg.get_application_name().is_none() {
        cfg.application_name("canarygate");
    }
    if !tls {
        return Ok((cfg, None));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &root {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(format!("sslrootcert {path:?} cannot be read: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
            if added == 0 {
                return Err(bad(format!("sslrootcert {path:?} holds no certificate")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(bad(
                    "sslmode asks for TLS but the system has no root certificates: set sslrootcert".into()
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((cfg, Some(config)))
}

/// Connects to the store URL (over TLS when it asks for it).
pub(crate) fn connect(url: &str) -> Result<Client, StoreError> {
    let (cfg, tls) = target(url)?;
    Ok(match tls {
        None => cfg.connect(NoTls)?,
        Some(tls) => cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_read_and_taken_out() {
        let (cfg, tls) = target("postgres://u:secret@db.internal:5433/gw").unwrap();
        assert!(tls.is_none());
        assert_eq!(cfg.get_dbname(), Some("gw"));
        assert_eq!(cfg.get_ssl_mode(), postgres::config::SslMode::Prefer);
        let (_, tls) = target("postgres://u@db/gw?sslmode=disable&application_name=x").unwrap();
        assert!(tls.is_none());

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = target(&format!("postgres://u@db/gw?sslmode=verify-full&sslrootcert={}", empty.display())).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e = target("postgres://u@db/gw?sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(e.to_string().contains("sslrootcert \"/nonexistent/ca.pem\" cannot be read"), "{e}");
        let e = target("postgres://u:secret@db/gw?sslmode=sometimes").unwrap_err();
        assert!(e.to_string().contains("sslmode \"sometimes\" is not"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = target("postgres://u@db/gw?sslmode=prefer&sslrootcert=/x.pem").unwrap_err();
        assert!(e.to_string().contains("sslrootcert needs TLS"), "{e}");
    }
}

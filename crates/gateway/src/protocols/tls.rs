//! TLS termination on rustls: the certificates the gateway serves, chosen by SNI (a domain's own pair,
//! else the server's), loaded from PEM files and read again when they change (or on SIGHUP) without
//! touching open connections. A pair that cannot be loaded — unreadable, no certificate, no key, or a
//! key that does not match — is refused with a log line naming the file, and the pair in use stays.
//!
//! The handshake's certificate lookup reads one immutable snapshot (swapped whole, like the routing
//! table), so a reload never blocks a handshake.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Why a pair could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot be read: {error}", .file.display())]
    Read { file: PathBuf, error: String },
    #[error("{}: holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", .0.display())]
    NoKey(PathBuf),
    #[error("{}: the key does not fit the certificate in {}: {error}", .key_file.display(), .cert_file.display())]
    Mismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
        error: String,
    },
}

/// A loaded pair and the files' modification times it was loaded at.
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
}

/// What the handshake reads: the server's pair and the domains' pairs, by lower-case name.
#[derive(Default)]
struct Snapshot {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// The gateway's certificates.
pub struct Certificates {
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: ArcSwap<Snapshot>,
    /// Control-plane side: what is configured and what was loaded from which files.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    default: Option<PairFiles>,
    domains: Vec<(String, PairFiles)>,
    loaded: HashMap<PairFiles, Loaded>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

fn stamp(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Certificates {
    /// Loads the server's pair; it must load (the gateway refuses to start otherwise).
    pub fn new(default: PairFiles) -> Result<Arc<Certificates>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let c = Certificates {
            provider,
            current: ArcSwap::from_pointee(Snapshot::default()),
            inner: Mutex::new(Inner::default()),
        };
        let loaded = c.load(&default)?;
        {
            let mut inner = c.inner.lock().expect("not poisoned");
            inner.loaded.insert(default.clone(), loaded);
            inner.default = Some(default);
            c.publish(&inner);
        }
        Ok(Arc::new(c))
    }

    fn load(&self, files: &PairFiles) -> Result<Loaded, TlsError> {
        let stamps = (stamp(&files.cert_file), stamp(&files.key_file));
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Read {
                file: p.to_path_buf(),
                error: e.to_string(),
            })
        };
        let cert_pem = read(&files.cert_file)?;
        let key_pem = read(&files.key_file)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(files.cert_file.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(files.key_file.clone()))?;
        let key = CertifiedKey::from_der(certs, key, &self.provider).map_err(|e| TlsError::Mismatch {
            cert_file: files.cert_file.clone(),
            key_file: files.key_file.clone(),
            error: e.to_string(),
        })?;
        Ok(Loaded {
            key: Arc::new(key),
            stamps,
        })
    }

    fn publish(&self, inner: &Inner) {
        let pick = |f: &PairFiles| inner.loaded.get(f).map(|l| l.key.clone());
        let snapshot = Snapshot {
            default: inner.default.as_ref().and_then(pick),
            by_name: inner
                .domains
                .iter()
                .filter_map(|(name, f)| Some((name.to_ascii_lowercase(), pick(f)?)))
                .collect(),
        };
        self.current.store(Arc::new(snapshot));
    }

    /// Sets the domains' pairs (from the stored domains); pairs not loaded yet are loaded now. A pair
    /// that cannot be loaded is logged and that domain gets the server's certificate until it can.
    pub fn set_domains(&self, domains: Vec<(String, PairFiles)>) {
        let mut inner = self.inner.lock().expect("not poisoned");
        if inner.domains == domains {
            return;
        }
        for (name, files) in &domains {
            if inner.loaded.contains_key(files) {
                continue;
            }
            match self.load(files) {
                Ok(l) => {
                    inner.loaded.insert(files.clone(), l);
                }
                Err(e) => {
                    tracing::error!(domain = %name, error = %e, "the domain's certificate cannot be loaded; it is served the server's")
                }
            }
        }
        inner.domains = domains;
        let Inner { default, domains, loaded } = &mut *inner;
        loaded.retain(|f, _| default.as_ref() == Some(f) || domains.iter().any(|(_, d)| d == f));
        self.publish(&inner);
    }

    /// Reads again every pair whose files changed (or all of them with `force`, on SIGHUP). A pair that
    /// fails to load is logged and the one in use stays. Open connections keep the certificate they
    /// were made with; new handshakes get the new one.
    pub fn reload(&self, force: bool) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut changed = false;
        let mut wanted: Vec<PairFiles> = inner.default.iter().cloned().collect();
        wanted.extend(inner.domains.iter().map(|(_, f)| f.clone()));
        for files in wanted {
            let now = (stamp(&files.cert_file), stamp(&files.key_file));
            let stale = inner.loaded.get(&files).is_none_or(|l| l.stamps != now);
            if !force && !stale {
                continue;
            }
            match self.load(&files) {
                Ok(l) => {
                    tracing::info!(cert = %files.cert_file.display(), "certificate loaded");
                    inner.loaded.insert(files, l);
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the new certificate is refused; the one in use stays");
                    // Not tried again until the files change once more.
                    if let Some(l) = inner.loaded.get_mut(&files) {
                        l.stamps = now;
                    }
                }
            }
        }
        if changed {
            self.publish(&inner);
        }
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, these certificates, ALPN `h2` then `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.current.load();
        if let Some(name) = hello.server_name() {
            // SNI names are ASCII; rustls hands them over as sent.
            if let Some(k) = snapshot
                .by_name
                .get(name)
                .or_else(|| snapshot.by_name.get(&name.to_ascii_lowercase()))
            {
                return Some(k.clone());
            }
        }
        snapshot.default.clone()
    }
}

/// Client configurations for `https://` upstreams, by CA file (`None`: the system's roots) and
/// protocol (HTTP/2 or not), made once.
type ClientConfigs = HashMap<(Option<String>, bool), Arc<rustls::ClientConfig>>;
static CLIENT_CONFIGS: std::sync::LazyLock<Mutex<ClientConfigs>> = std::sync::LazyLock::new(Default::default);

/// How an `https://` upstream's certificate is verified: against `ca_file`'s certificates, or the
/// system's roots. A CA file that cannot be read gives a configuration that trusts nothing (every call
/// fails, as a 502 naming the reason) and an error log line naming the file. ALPN offers `h2` for an
/// `http2: true` integration, else `http/1.1`.
pub(crate) fn client_config(ca_file: Option<&str>, http2: bool) -> Arc<rustls::ClientConfig> {
    let key = (ca_file.map(str::to_string), http2);
    let mut configs = CLIENT_CONFIGS.lock().expect("not poisoned");
    if let Some(c) = configs.get(&key) {
        return c.clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => match CertificateDer::pem_file_iter(path) {
            Ok(certs) => {
                let (added, _) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
                if added == 0 {
                    tracing::error!(file = %path, "the integration's caFile holds no usable certificate: its upstream is trusted by nothing");
                }
            }
            Err(e) => {
                tracing::error!(file = %path, error = %e, "the integration's caFile cannot be read: its upstream is trusted by nothing")
            }
        },
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "a system root certificate cannot be loaded");
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let cfg = Arc::new(cfg);
    configs.insert(key, cfg.clone());
    cfg
}

//! TLS termination (PRODUCT.md §11) end to end, with certificates made by `openssl` as a user would: SNI
//! picks each domain's certificate (else the server's), requests over TLS (HTTP/1.1, and HTTP/2 by
//! ALPN with `curl --http2`) reach the stage with `x-forwarded-proto: https`, and a certificate replaced on disk is served to new connections while an
//! open one keeps working; a broken new file is refused with a log line naming it and the old pair stays.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The subject CN of the certificate the server presents for `sni` (via `openssl s_client`).
fn served_cn(tls: &str, sni: &str) -> String {
    let addr = tls.trim_start_matches("https://");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -subject -nameopt RFC2253"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.trim_start_matches("subject=").trim().trim_start_matches("CN=").to_string()
}

fn curl_https(tls: &str, host: &str, path: &str, ca: &Path) -> (String, String) {
    let port = tls.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "-w", "\n%{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

fn config(dir: &Path, pem: &Path, key: &Path) -> PathBuf {
    let p = dir.join("canarygate.yaml");
    let text = format!(
        "server:\n  tlsListen: 127.0.0.1:0\n  tls: {{certFile: {}, keyFile: {}}}\n",
        pem.display(),
        key.display()
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_domains_certificate_and_requests_reach_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (pem, key) = ca.issue("server", "gateway.test");
    let (a_pem, a_key) = ca.issue("a", "a.test");
    let (b_pem, b_key) = ca.issue("b", "b.test");
    let cfg = config(dir.path(), &pem, &key);
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let tls = s.tls.clone().expect("a TLS listener");
    let backend = Backend::start("production", Behaviour::Echo).await;
    let c = client();
    setup_split(&c, &s, backend.addr, backend.addr, 0.0, json!({})).await;
    for (domain, pem, key) in [("a.test", &a_pem, &a_key), ("b.test", &b_pem, &b_key)] {
        ok(
            &c,
            &s,
            "PUT",
            &format!("/v1/domains/{domain}"),
            Some(json!({"mappings": [{"basePath": "", "api": "orders", "stage": "prod"}],
                        "tls": {"certFile": pem, "keyFile": key}})),
        )
        .await;
    }
    assert_eq!(served_cn(&tls, "a.test"), "a.test");
    assert_eq!(served_cn(&tls, "b.test"), "b.test");
    assert_eq!(
        served_cn(&tls, "other.test"),
        "gateway.test",
        "no domain of its own: the server's certificate"
    );

    // curl verifies the chain and the name against the test CA, and the request reaches the stage.
    let (code, body) = curl_https(&tls, "a.test", "/items/1", &dir.path().join("ca.pem"));
    assert_eq!(code, "200", "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["path"], "/items/1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    let (code, body) = curl_https(&tls, "gateway.test", "/orders/prod/items/2", &dir.path().join("ca.pem"));
    assert_eq!(code, "200", "{body}");

    // HTTP/2 over TLS, chosen by ALPN: curl --http2 gets an HTTP/2 answer from the stage.
    let port = tls.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args([
            "--resolve",
            &format!("b.test:{port}:127.0.0.1"),
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("https://b.test:{port}/items/3"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status, "2 200", "{text} {}", String::from_utf8_lossy(&out.stderr));
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["path"], "/items/3");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["headers"]["x-forwarded-host"], "b.test", "the :authority is the host");

    // 1,000 requests over HTTP/2 on TLS (curl multiplexing them on its connections) with the canary at
    // 10%: each is a request of its own, split within 4 binomial σ.
    set_percent(&c, &s, 10.0).await;
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--parallel", "--parallel-max", "20", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args([
            "--resolve",
            &format!("b.test:{port}:127.0.0.1"),
            "-w",
            "%{http_version} %{http_code} %header{x-canarygate-variant}\n",
        ])
        .args((0..1000).flat_map(|i| {
            [
                "-o".to_string(),
                "/dev/null".to_string(),
                format!("https://b.test:{port}/items/{i}"),
            ]
        }))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1000, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.iter().all(|l| l.starts_with("2 200 ")), "{text}");
    let canary = lines.iter().filter(|l| l.ends_with(" canary")).count();
    assert!((62..=138).contains(&canary), "{canary} of 1000 to the canary");
    set_percent(&c, &s, 0.0).await;

    // A domain's bad pair is refused naming the field; nothing is stored.
    let (status, body) = admin(
        &c,
        &s,
        "PUT",
        "/v1/domains/c.test",
        Some(json!({"mappings": [], "tls": {"certFile": "", "keyFile": "x"}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("tls.certFile"), "{body}");
}

/// A TLS client connection to the gateway that trusts the test CA.
async fn connect(tls: &str, ca: &Path, sni: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tls.trim_start_matches("https://")).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap()
}

async fn get_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(conn: &mut S, path: &str) -> u16 {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: gateway.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(conn, &mut Vec::new()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_connections_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (pem, key) = ca.issue("server", "gateway.test");
    let cfg = config(dir.path(), &pem, &key);
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let tls = s.tls.clone().unwrap();
    let backend = Backend::start("production", Behaviour::Echo).await;
    let c = client();
    setup_split(&c, &s, backend.addr, backend.addr, 0.0, json!({})).await;

    let mut open = connect(&tls, &dir.path().join("ca.pem"), "gateway.test").await;
    assert_eq!(get_on(&mut open, "/orders/prod/a").await, 200);

    // A new pair for another name, written over the files: new connections get it.
    ca.issue("server", "renewed.test");
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_cn(&tls, "gateway.test") != "renewed.test" {
        assert!(Instant::now() < deadline, "the new certificate was not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made before keeps working.
    assert_eq!(get_on(&mut open, "/orders/prod/b").await, 200);

    // A broken certificate file: refused with a log line naming it, the pair in use stays.
    std::fs::write(&pem, "not a certificate\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&s.stderr_log).unwrap_or_default();
        if log.contains("the new certificate is refused") && log.contains(&pem.display().to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "no log line for the broken file:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served_cn(&tls, "gateway.test"), "renewed.test");
    let mut fresh = connect(&tls, &dir.path().join("ca.pem"), "renewed.test").await;
    assert_eq!(get_on(&mut fresh, "/orders/prod/c").await, 200);
    assert_eq!(get_on(&mut open, "/orders/prod/d").await, 200);
}

#[tokio::test]
async fn a_tls_listener_without_a_usable_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cfg = config(dir.path(), &missing, &dir.path().join("missing.key"));
    let out = Command::new(env!("CARGO_BIN_EXE_canarygate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.tls") && err.contains("missing.pem"), "{err}");
}

/// An HTTPS backend started by the test: answers `{"backend": name}` over TLS with `pem`/`key`.
async fn https_backend(name: &'static str, pem: &Path, key: &Path) -> std::net::SocketAddr {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = json!({"backend": name, "path": req.uri().path()}).to_string();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body))))
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let (pem, key) = ca.issue("backend", "localhost");
    let trusted = https_backend("trusted", &pem, &key).await;
    let other_dir = dir.path().join("other-ca");
    std::fs::create_dir(&other_dir).unwrap();
    let other = Ca::new(&other_dir);
    let (opem, okey) = other.issue("backend", "localhost");
    let untrusted = https_backend("untrusted", &opem, &okey).await;

    let s = Server::start(&dir.path().join("data"), &[], &[]);
    let c = client();
    let ca_file = dir.path().join("ca.pem");
    for (api, port) in [("good", trusted.port()), ("bad", untrusted.port())] {
        ok(
            &c,
            &s,
            "PUT",
            &format!("/v1/apis/{api}"),
            Some(json!({"routes": [{"path": "/{proxy+}", "integration": {"type": "http",
                "uri": format!("https://localhost:{port}/{{proxy}}"), "caFile": ca_file}}]})),
        )
        .await;
        let d = ok(&c, &s, "POST", &format!("/v1/apis/{api}/deployments"), Some(json!({}))).await;
        ok(
            &c,
            &s,
            "PUT",
            &format!("/v1/apis/{api}/stages/prod"),
            Some(json!({"deploymentId": d["id"]})),
        )
        .await;
    }
    let r = c.get(format!("{}/good/prod/x/1", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, json!({"backend": "trusted", "path": "/x/1"}));
    // Twice more on the pooled connection.
    for _ in 0..2 {
        assert_eq!(c.get(format!("{}/good/prod/x/2", s.gateway)).send().await.unwrap().status(), 200);
    }

    // A certificate the CA did not sign: 502, counted as the variant's 5XXError.
    let r = c.get(format!("{}/bad/prod/x", s.gateway)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("certificate"), "{text}");
    let q = "/v1/metrics?api=bad&stage=prod&variant=production&metric=5XXError&statistic=Sum&periodSeconds=3600";
    let v = ok(&c, &s, "GET", q, None).await;
    let errors: f64 = v["datapoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["value"].as_f64().unwrap())
        .sum();
    assert_eq!(errors, 1.0, "{v}");

    // caFile only goes with https://.
    let (status, body) = admin(
        &c,
        &s,
        "PUT",
        "/v1/apis/plain",
        Some(json!({"routes": [{"path": "/x", "integration": {"type": "http", "uri": "http://localhost:1/", "caFile": "ca.pem"}}]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("caFile"), "{body}");
}

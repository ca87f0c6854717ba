//! A minimal OTLP/HTTP receiver for the tracing benchmark: takes every `POST /v1/traces`, reads the
//! body to its end and answers an empty (valid) `ExportTraceServiceResponse`. It does not decode the
//! spans — the benchmark measures the gateway's cost of making and exporting them, not a collector's.
//! Prints the requests and bytes it got when it receives SIGTERM or Ctrl-C.
//!
//! Usage: `otlp-sink <port>` (started by `bench/run --ab OLD --tracing RATIO`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let port: u16 = std::env::args().nth(1).context("usage: otlp-sink <port>")?.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (r2, b2) = (requests.clone(), bytes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (requests, bytes) = (r2.clone(), b2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (requests, bytes) = (requests.clone(), bytes.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let n = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                            requests.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            r.headers_mut()
                                .insert("content-type", hyper::header::HeaderValue::from_static("application/x-protobuf"));
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!(
            "otlp-sink: {} export requests, {} bytes",
            requests.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

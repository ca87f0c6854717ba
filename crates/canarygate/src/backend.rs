//! `canarygate demo-backend`: a tiny HTTP service to put behind the gateway in the quickstart and
//! demos. It answers every request with JSON naming itself, and can be made slow or failing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Name reported in every answer (e.g. v1).
    #[arg(long, default_value = "backend")]
    pub name: String,
    /// Share of requests answered 500, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Added latency per request, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
}

pub async fn run(args: BackendArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!("invalid value {} for --error-rate: must be between 0 and 1", args.error_rate);
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("demo backend {} listening on http://{}", args.name, listener.local_addr()?);
    serve(listener, args.name, args.error_rate, Duration::from_millis(args.delay_ms)).await;
    Ok(())
}

/// Serves the demo backend on `listener` until the task is dropped: JSON naming `name`, a 500 for a
/// share `error_rate` of requests, each answer after `delay`.
pub async fn serve(listener: TcpListener, name: String, error_rate: f64, delay: Duration) {
    let name: Arc<str> = Arc::from(name);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let fail = fastrand::f64() < error_rate;
                    let body = serde_json::json!({
                        "backend": &*name,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "query": req.uri().query(),
                        "error": fail,
                    });
                    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                    *r.status_mut() = if fail {
                        hyper::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        hyper::StatusCode::OK
                    };
                    r.headers_mut()
                        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
                        r.headers_mut().insert("x-backend", v);
                    }
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

//! A real Prometheus server (Debian's package) on a free loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::closed_port;
use super::server::client;

/// A real Prometheus server (Debian's `prometheus`), on a free loopback port, scraping `targets` every
/// second; killed on drop.
pub struct Prometheus {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!("global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: backends\n    static_configs: [{{targets: [{}]}}]\n", list.join(", ")),
        )
        .unwrap();
        let addr = closed_port();
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("prometheus not found: the test command (scripts/test) installs Debian's prometheus");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            url: format!("http://{addr}"),
            child,
            _dir: dir,
        };
        let c = client();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = c.get(format!("{}/-/ready", p.url)).send().await {
                if r.status() == 200 {
                    return p;
                }
            }
            assert!(std::time::Instant::now() < deadline, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant query now, if it returns one sample.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let v: Value = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

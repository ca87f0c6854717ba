//! Access logs, one JSON line a request, written off the request path: the request path sends a record
//! into a bounded channel (dropping it, and counting the drop, if the writer falls behind; a request is
//! never slowed by its log line) and a writer thread appends it to `<dir>/<api>/<stage>.log` and, for
//! canary requests, also to `<dir>/<api>/<stage>/Canary.log`. Files rotate by size: `x.log` becomes
//! `x.log.1`, and so on up to `keep` old files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use canarygate_model::Variant;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

/// Where and how access logs are written.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub dir: PathBuf,
    /// Rotate a file when it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept per log.
    pub keep: usize,
    /// Records queued before new ones are dropped.
    pub queue: usize,
}

/// One request's log line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub request_id: String,
    pub time: DateTime<Utc>,
    pub ip: IpAddr,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
    pub integration_latency_ms: Option<f64>,
    pub variant: Variant,
    pub deployment_id: Arc<str>,
    pub cache: Option<&'static str>,
    pub user_agent: Option<String>,
    #[serde(skip)]
    pub api: Arc<str>,
    #[serde(skip)]
    pub stage: Arc<str>,
}

enum Msg {
    Record(Record),
    /// Flush every file, then acknowledge.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The sending side, held by the gateway.
pub struct AccessLog {
    tx: Option<mpsc::Sender<Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// No access log.
    pub fn disabled() -> AccessLog {
        AccessLog {
            tx: None,
            writer: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts the writer thread.
    pub fn start(cfg: AccessLogConfig) -> std::io::Result<AccessLog> {
        std::fs::create_dir_all(&cfg.dir)?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let writer = std::thread::Builder::new().name("access-log".into()).spawn(move || {
            Writer {
                cfg,
                files: HashMap::new(),
            }
            .run(rx)
        })?;
        Ok(AccessLog {
            tx: Some(tx),
            writer: Some(writer),
            dropped: AtomicU64::new(0),
        })
    }

    /// Stops accepting records, lets the writer drain and flush everything queued, and waits for it.
    pub fn close(mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record without waiting.
    pub fn send(&self, r: Record) {
        if let Some(tx) = &self.tx {
            if tx.try_send(Msg::Record(r)).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Waits until every record queued before this call is written and flushed (used at shutdown).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = std::sync::mpsc::channel();
        if tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || done.recv()).await;
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

struct OpenLog {
    out: BufWriter<File>,
    size: u64,
}

struct Writer {
    cfg: AccessLogConfig,
    files: HashMap<PathBuf, OpenLog>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut line = Vec::with_capacity(512);
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(msg) = next {
                let r = match msg {
                    Msg::Record(r) => r,
                    Msg::Flush(ack) => {
                        for f in self.files.values_mut() {
                            let _ = f.out.flush();
                        }
                        let _ = ack.send(());
                        next = rx.try_recv().ok();
                        continue;
                    }
                };
                line.clear();
                if serde_json::to_writer(&mut line, &r).is_ok() {
                    line.push(b'\n');
                    let base = self.cfg.dir.join(&*r.api);
                    self.write(base.join(format!("{}.log", r.stage)), &line);
                    if r.variant == Variant::Canary {
                        self.write(base.join(&*r.stage).join("Canary.log"), &line);
                    }
                }
                next = rx.try_recv().ok();
            }
            for f in self.files.values_mut() {
                let _ = f.out.flush();
            }
        }
        for f in self.files.values_mut() {
            let _ = f.out.flush();
        }
    }

    fn write(&mut self, path: PathBuf, line: &[u8]) {
        if !self.files.contains_key(&path) {
            match open(&path) {
                Ok(f) => {
                    self.files.insert(path.clone(), f);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open access log");
                    return;
                }
            }
        }
        let needs_rotation = self
            .files
            .get(&path)
            .is_some_and(|f| f.size > 0 && f.size + line.len() as u64 > self.cfg.max_bytes);
        if needs_rotation {
            if let Some(mut f) = self.files.remove(&path) {
                let _ = f.out.flush();
            }
            rotate(&path, self.cfg.keep);
            match open(&path) {
                Ok(f) => {
                    self.files.insert(path.clone(), f);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot reopen access log");
                    return;
                }
            }
        }
        if let Some(f) = self.files.get_mut(&path) {
            if f.out.write_all(line).is_ok() {
                f.size += line.len() as u64;
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<OpenLog> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok(OpenLog {
        out: BufWriter::with_capacity(64 * 1024, file),
        size,
    })
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(path: &Path, keep: usize) {
    if keep == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(rotated(path, n), rotated(path, n + 1));
    }
    let _ = std::fs::rename(path, rotated(path, 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(variant: Variant, i: usize) -> Record {
        Record {
            request_id: format!("req-{i}"),
            time: Utc::now(),
            ip: "127.0.0.1".parse().unwrap(),
            method: "GET".into(),
            path: "/x".into(),
            status: 200,
            latency_ms: 1.5,
            integration_latency_ms: Some(1.0),
            variant,
            deployment_id: Arc::from("d-one"),
            cache: None,
            user_agent: None,
            api: Arc::from("orders"),
            stage: Arc::from("prod"),
        }
    }

    #[test]
    fn writes_both_logs_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let log = AccessLog::start(AccessLogConfig {
            dir: dir.path().into(),
            max_bytes: 4000,
            keep: 2,
            queue: 1000,
        })
        .unwrap();
        for i in 0..30 {
            log.send(record(if i % 3 == 0 { Variant::Canary } else { Variant::Production }, i));
        }
        log.close();
        let canary = dir.path().join("orders/prod/Canary.log");
        let main = dir.path().join("orders/prod.log");
        let all: String = [rotated(&main, 2), rotated(&main, 1), main.clone()]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
        assert!(all.contains("\"req-29\""), "newest line kept");
        let c = std::fs::read_to_string(&canary).unwrap();
        assert_eq!(c.lines().count(), 10, "every canary request in Canary.log");
        let first: serde_json::Value = serde_json::from_str(c.lines().next().unwrap()).unwrap();
        assert_eq!(first["variant"], "canary");
        assert_eq!(first["deploymentId"], "d-one");
        assert_eq!(first["requestId"], "req-0");
        assert!(rotated(&main, 1).exists(), "main log rotated");
        assert!(!rotated(&main, 3).exists(), "keeps at most 2");
        assert!(std::fs::metadata(&main).unwrap().len() <= 4000);
    }
}

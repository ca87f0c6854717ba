//! Access logs, one JSON line a request, written off the request path: the request path sends a record
//! into a bounded channel (dropping it, and counting the drop, if the writer falls behind; a request is
//! never slowed by its log line) and a writer thread appends it to `<dir>/<api>/<stage>.log` and, for
//! canary requests, also to `<dir>/<api>/<stage>/Canary.log`; mirrored copies (whose answers no client
//! saw) go only to `<dir>/<api>/<stage>/Mirror.log`. Files rotate by size: `x.log` becomes
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
    #[serde(serialize_with = "header_str")]
    pub request_id: http::HeaderValue,
    pub time: DateTime<Utc>,
    pub ip: IpAddr,
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
    pub integration_latency_ms: Option<f64>,
    pub variant: Variant,
    pub deployment_id: Arc<str>,
    pub cache: Option<&'static str>,
    pub user_agent: Option<String>,
    /// The W3C trace the request belongs to (32 hex digits): the one it continued or started with
    /// tracing on; with tracing off, the one its `traceparent` named, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// What went wrong, when something did: the refusal, or why the response body ended early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who caused it: `client`, `gateway` or `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_source: Option<&'static str>,
    /// A gRPC call's status (from the upstream's trailers or head, or the gateway's own answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(skip)]
    pub api: Arc<str>,
    #[serde(skip)]
    pub stage: Arc<str>,
}

fn header_str<S: serde::Serializer>(v: &http::HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.to_str().unwrap_or_default())
}

fn method_str<S: serde::Serializer>(m: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

// Records are nearly every message: boxing them would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
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
    files: HashMap<FileKey, OpenLog>,
}

/// How often the writer drains the queue. Senders never wake the writer: a request only pushes its
/// record, and the writer collects what has queued since its last pass (at 50,000 requests/s, about
/// 1,000 records, written in a few 64 KiB writes).
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// A log file's identity: api, stage, and which of the stage's files: its main log (`None`), or
/// `Canary.log` or `Mirror.log`.
type FileKey = (Arc<str>, Arc<str>, Option<Variant>);

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        use tokio::sync::mpsc::error::TryRecvError;
        let mut line = Vec::with_capacity(512);
        loop {
            let mut wrote = false;
            loop {
                let msg = match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush_all();
                        return;
                    }
                };
                match msg {
                    Msg::Record(r) => {
                        line.clear();
                        if serde_json::to_writer(&mut line, &r).is_ok() {
                            line.push(b'\n');
                            match r.variant {
                                Variant::Production => self.write((r.api, r.stage, None), &line),
                                Variant::Canary => {
                                    self.write((r.api.clone(), r.stage.clone(), None), &line);
                                    self.write((r.api, r.stage, Some(Variant::Canary)), &line);
                                }
                                Variant::Mirror => self.write((r.api, r.stage, Some(Variant::Mirror)), &line),
                            }
                            wrote = true;
                        }
                    }
                    Msg::Flush(ack) => {
                        self.flush_all();
                        let _ = ack.send(());
                    }
                }
            }
            if wrote {
                self.flush_all();
            }
            std::thread::sleep(DRAIN_EVERY);
        }
    }

    fn flush_all(&mut self) {
        for f in self.files.values_mut() {
            let _ = f.out.flush();
        }
    }

    fn path(&self, (api, stage, which): &FileKey) -> PathBuf {
        let base = self.cfg.dir.join(&**api);
        match which {
            None | Some(Variant::Production) => base.join(format!("{stage}.log")),
            Some(Variant::Canary) => base.join(&**stage).join("Canary.log"),
            Some(Variant::Mirror) => base.join(&**stage).join("Mirror.log"),
        }
    }

    fn write(&mut self, key: FileKey, line: &[u8]) {
        if !self.files.contains_key(&key) {
            let path = self.path(&key);
            match open(&path) {
                Ok(f) => {
                    self.files.insert(key.clone(), f);
                }
                Err(e) => {
                    static CANNOT_OPEN: crate::log_every::Every = crate::log_every::Every::second();
                    if let Some(left_out) = CANNOT_OPEN.check() {
                        tracing::warn!(path = %path.display(), error = %e, left_out, "cannot open access log");
                    }
                    return;
                }
            }
        }
        let Some(f) = self.files.get_mut(&key) else { return };
        if f.size > 0 && f.size + line.len() as u64 > self.cfg.max_bytes {
            let _ = f.out.flush();
            self.files.remove(&key);
            let path = self.path(&key);
            rotate(&path, self.cfg.keep);
            match open(&path) {
                Ok(f) => {
                    self.files.insert(key.clone(), f);
                }
                Err(e) => {
                    static CANNOT_REOPEN: crate::log_every::Every = crate::log_every::Every::second();
                    if let Some(left_out) = CANNOT_REOPEN.check() {
                        tracing::warn!(path = %path.display(), error = %e, left_out, "cannot reopen access log");
                    }
                    return;
                }
            }
        }
        if let Some(f) = self.files.get_mut(&key) {
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
            request_id: http::HeaderValue::try_from(format!("req-{i}")).unwrap(),
            time: Utc::now(),
            ip: "127.0.0.1".parse().unwrap(),
            method: http::Method::GET,
            path: "/x".into(),
            status: 200,
            latency_ms: 1.5,
            integration_latency_ms: Some(1.0),
            variant,
            deployment_id: Arc::from("d-one"),
            cache: None,
            user_agent: None,
            trace_id: None,
            grpc_status: None,
            error: None,
            error_source: None,
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

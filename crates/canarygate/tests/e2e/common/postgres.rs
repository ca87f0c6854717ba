//! A real PostgreSQL server (Debian's package), started with `initdb` on a free port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::closed_port;

/// A real PostgreSQL server (Debian's `postgresql` package), one per test binary: `initdb` in a
/// temporary directory and `postgres` on a free loopback port, as the `postgres` user when the tests run
/// as root (initdb refuses root). It stops when the test process exits (a watcher shell waits for it).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    next_db: AtomicUsize,
    /// The shell that runs the server and stops it when we exit (it outlives us; never waited for).
    _watcher: Child,
}

static POSTGRES: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): scripts/test installs Debian's postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL program as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A fresh database cluster (`initdb`, owned by the postgres user) in a new temporary directory with
/// this `prefix`: the directory (its `data` inside).
fn initdb(bin: &Path, prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap().keep();
    let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
    let out = as_postgres(&bin.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .output()
        .expect("initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The test binary's PostgreSQL server, started on first use.
pub fn postgres() -> &'static Postgres {
    POSTGRES.get_or_init(|| {
        let bin = postgres_bin();
        let dir = initdb(&bin, "canarygate-pg-");
        let data = dir.join("data");
        let port = closed_port().port();
        // The server stops when this test process does: a shell watches our pid (through /proc: as another
        // user it may not signal us).
        let script = format!(
            "{pg} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 >{dir}/postgres.log 2>&1 & pg=$!; \
             while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done; kill -INT $pg 2>/dev/null; wait $pg; rm -rf {dir}",
            pg = bin.join("postgres").display(),
            data = data.display(),
            dir = dir.display(),
            parent = std::process::id(),
        );
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let mut sh = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        };
        sh.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let watcher = sh.spawn().expect("start postgres");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Postgres {
            port,
            bin,
            next_db: AtomicUsize::new(0),
            _watcher: watcher,
        }
    })
}

impl Postgres {
    /// A new, empty database of its own for a test: its URL.
    pub fn database(&self) -> String {
        let name = format!("test_{}_{}", std::process::id(), self.next_db.fetch_add(1, Ordering::SeqCst));
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", &name])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The database `name`, created if it does not exist yet: its URL.
    pub fn database_named(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .expect("createdb");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("already exists"), "createdb: {err}");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL on a database (psql), returning its unaligned output.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        psql_with(&self.bin, url, sql)
    }
}

fn psql_with(bin: &Path, url: &str, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A PostgreSQL server of a test's own (for a test that stops and starts it), run with `pg_ctl`;
/// stopped and removed when dropped.
pub struct OwnPostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        Self::start_with(|_| {})
    }

    /// A server that accepts only TLS connections over TCP (`hostssl`; plain ones are rejected),
    /// serving `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> OwnPostgres {
        Self::start_with(|data| {
            std::fs::copy(cert, data.join("server.crt")).unwrap();
            std::fs::copy(key, data.join("server.key")).unwrap();
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status();
            let _ = Command::new("chmod").arg("600").arg(data.join("server.key")).status();
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        })
    }

    /// Runs `setup` on the data directory after `initdb`, before the server starts.
    fn start_with(setup: impl FnOnce(&Path)) -> OwnPostgres {
        let bin = postgres_bin();
        let dir = initdb(&bin, "canarygate-pg-own-");
        setup(&dir.join("data"));
        let pg = OwnPostgres {
            port: closed_port().port(),
            bin,
            dir,
        };
        pg.up();
        let out = Command::new(pg.bin.join("createdb"))
            .env("PGSSLMODE", "prefer")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "canarygate"])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/canarygate", self.port)
    }

    /// Runs SQL on its database (psql, over TLS when the server offers it).
    pub fn psql(&self, sql: &str) -> String {
        psql_with(&self.bin, &format!("{}?sslmode=prefer", self.url()), sql)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("pg_ctl")
    }

    /// Starts the server (and waits until it accepts connections).
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let out = self.pg_ctl(&["-w", "-o", &opts, "-l", log.to_str().unwrap(), "start"]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server (fast: open connections are cut).
    pub fn down(&self) {
        let out = self.pg_ctl(&["-w", "-m", "fast", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

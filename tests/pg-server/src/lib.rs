//! A real PostgreSQL 15 for Concord's tests and benchmarks: `initdb` and `pg_ctl` (on the PATH,
//! as on the machine image and in CI) on a temporary folder, listening on
//! a free loopback port. One server is shared by the tests that run at the
//! same time, each on its own fresh database; it stops when the last of
//! them lets go of it.
//!
//! PostgreSQL refuses to run as root: as root, the server runs as the
//! `postgres` user (`runuser`), on a folder it owns.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A running server; stopped (immediately) when dropped.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    as_postgres: bool,
    /// Whether the server syncs its WAL (off for tests, on for benchmarks).
    fsync: bool,
    /// The `concord` user's password, when the server asks for one
    /// (scram-sha-256) rather than trusting every local connection.
    password: Option<String>,
}

static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
static DATABASES: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgServer {
    /// The shared server, started if none runs.
    pub fn shared() -> Arc<PgServer> {
        let mut shared = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(PgServer::start());
        *shared = Arc::downgrade(&server);
        server
    }

    fn command(&self, program: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new server on a temporary folder, for tests: `fsync = off` (a
    /// test's data need not outlive the machine).
    pub fn start() -> PgServer {
        Self::start_with(false)
    }

    /// A new server that syncs its WAL as a production one does, for
    /// benchmarks, under `target/` (the disk the other benchmarks use).
    pub fn start_durable(under: &std::path::Path) -> PgServer {
        Self::start_in(tempfile::tempdir_in(under).expect("a temp dir for PostgreSQL"), true, None)
    }

    fn start_with(fsync: bool) -> PgServer {
        Self::start_in(tempfile::tempdir().expect("a temp dir for PostgreSQL"), fsync, None)
    }

    /// A new server that asks for the `concord` user's `password`.
    pub fn start_with_password(password: &str) -> PgServer {
        Self::start_in(tempfile::tempdir().expect("a temp dir for PostgreSQL"), false, Some(password.into()))
    }

    fn start_in(dir: tempfile::TempDir, fsync: bool, password: Option<String>) -> PgServer {
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown").args(["postgres", &dir.path().display().to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "chown of the PostgreSQL folder to the postgres user");
        }
        let port = free_port();
        let server = PgServer { dir, port, as_postgres, fsync, password };
        let mut initdb = server.command("initdb");
        initdb.args(["-D", &server.data().display().to_string(), "-U", "concord", "--no-sync", "-E", "UTF8"]);
        match &server.password {
            Some(password) => {
                let file = server.dir.path().join("pwfile");
                std::fs::write(&file, password).expect("the password file");
                if as_postgres {
                    let status = Command::new("chown").arg("postgres").arg(&file).status();
                    assert!(status.is_ok_and(|s| s.success()), "chown of the password file");
                }
                initdb.args(["-A", "scram-sha-256", "--pwfile"]).arg(&file);
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        let out = initdb.output().expect("initdb (PostgreSQL 15) on the PATH: `.ci/run` installs it");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let options = server.options();
        server.pg_ctl_start(&options);
        server
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync={}",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" }
        )
    }

    fn pg_ctl_start(&self, options: &str) {
        let out = self
            .command("pg_ctl")
            .args(["-D", &self.data().display().to_string(), "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", options, "-w", "-t", "30", "start"])
            .output()
            .expect("pg_ctl on the PATH");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the server at once (`-m immediate`: connections cut, as in a
    /// crash), waits `down`, and starts it again on the same port.
    pub fn restart(&self, down: std::time::Duration) {
        let out = self
            .command("pg_ctl")
            .args(["-D", &self.data().display().to_string(), "-m", "immediate", "-w", "stop"])
            .output()
            .expect("pg_ctl on the PATH");
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(down);
        self.pg_ctl_start(&self.options());
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(pw) => format!("postgres://concord:{pw}@127.0.0.1:{}/{db}", self.port),
            None => format!("postgres://concord@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("psql")
            .env("PGPASSWORD", self.password.as_deref().unwrap_or(""))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "concord", "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .expect("psql on the PATH");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }

    /// Runs SQL on database `url` (for tests that damage or inspect it).
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new("psql").args(["-tA", url, "-c", sql]).output().expect("psql on the PATH");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data().display().to_string(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

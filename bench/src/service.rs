//! The `service` phase: `concord serve` over HTTP against what a team would
//! write by hand, a plain axum service doing the same read-check-write on
//! SQLite (WAL, `synchronous=FULL`; `src/bin/sqlite_service.rs`).
//!
//! Both run as processes of their own; the load comes from this one (a
//! Rust client on hyper, keep-alive connections), at 1, 16 and 64
//! concurrent clients, each on its own entity: one request is one
//! invocation of the bench agent doing a `kb.get` and a `kb.commit` (its
//! `commits` op, `n = 1`), or one transaction of the baseline. Only answers
//! that say the write was made count.
//!
//! Also: the resident memory of an idle `concord serve` with the three
//! example agents, and the same load on the debug build (what `cargo run`
//! and `just run` give) against the release build (`just serve`).

use crate::Sizes;
use crate::stats::percentile;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The concurrency levels.
pub const CLIENTS: [usize; 3] = [1, 16, 64];

/// A server process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The folder it runs in.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// Builds `concord` with `profile` (`release` or `dev`); returns the binary.
pub(crate) fn build_concord(profile: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate::root())
        .args(["build", "--quiet", "-p", "concord-host", "--profile", profile])
        .status()
        .context("running cargo to build concord")?;
    if !status.success() {
        bail!("building concord ({profile}) failed");
    }
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(crate::root().join("target").join(dir).join("concord"))
}

/// Starts `concord serve` in a fresh folder with these agents and config.
pub(crate) fn concord(binary: &Path, guests: &Path, agents: &[(&str, &str)], config: &str) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("a temp folder under target/")?;
    std::fs::create_dir_all(dir.path().join("agents"))?;
    for (name, guest) in agents {
        std::fs::copy(guests.join(format!("{guest}.wasm")), dir.path().join(format!("agents/{name}.wasm")))?;
    }
    std::fs::write(dir.path().join("concord.toml"), config)?;
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let child = Command::new(binary)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CONCORD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let file = dir.path().join("data/concord.redb.server");
    let started = Instant::now();
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(v) = serde_json::from_str::<Json>(&text)
            && let Some(a) = v["address"].as_str()
        {
            break a.to_string();
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("concord serve did not start: {}", std::fs::read_to_string(dir.path().join("serve.log"))?);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Server { child, base: format!("http://{address}"), _dir: dir })
}

/// Starts the SQLite baseline service.
fn sqlite(binary: &Path) -> anyhow::Result<Server> {
    use std::io::BufRead;
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("a temp folder under target/")?;
    let mut child = Command::new(binary)
        .arg(dir.path().join("service.db"))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("its stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let address = line.trim().strip_prefix("listening ").context("`listening ADDR` from the baseline")?.to_string();
    Ok(Server { child, base: format!("http://{address}"), _dir: dir })
}

/// What one load level measured.
pub(crate) struct Level {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    pub(crate) lat_ms: Vec<f64>,
}

impl Level {
    pub(crate) fn json(&self) -> Json {
        json!({
            "ok": self.ok, "failed": self.failed, "seconds": self.seconds,
            "per_s": self.ok as f64 / self.seconds,
            "p50_ms": percentile(&self.lat_ms, 50.0), "p99_ms": percentile(&self.lat_ms, 99.0),
            "max_ms": percentile(&self.lat_ms, 100.0),
        })
    }
}

/// `clients` loops sending `request(client)` for `warmup` then `measure`.
pub(crate) async fn load(
    base: &str,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    request: impl Fn(usize) -> (String, String) + Send + Sync + Clone + 'static,
) -> anyhow::Result<Level> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(clients).build(connector);
    let begin = Instant::now() + warmup;
    let end = begin + measure;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base, request) = (client.clone(), base.to_string(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let (path, body) = request(c);
                let req = Request::post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let answered = match client.request(req).await {
                    Ok(r) => {
                        let status = r.status();
                        let bytes = r.into_body().collect().await?.to_bytes();
                        status.is_success() && bytes.windows(14).any(|w| w == b"\"outcome\":\"ok\"")
                    }
                    Err(_) => false,
                };
                if started >= begin {
                    if answered {
                        ok += 1;
                        lat.push(started.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        failed += 1;
                    }
                }
            }
            anyhow::Ok((ok, failed, lat))
        }));
    }
    let mut level = Level { ok: 0, failed: 0, seconds: measure.as_secs_f64(), lat_ms: Vec::new() };
    for t in tasks {
        let (ok, failed, lat) = t.await??;
        level.ok += ok;
        level.failed += failed;
        level.lat_ms.extend(lat);
    }
    Ok(level)
}

pub(crate) fn concord_request(c: usize) -> (String, String) {
    let body = json!({ "kind": "bench", "body": { "op": "commits", "entity": format!("counter/c{c}"), "n": 1 } });
    ("/v1/invoke/bench".into(), body.to_string())
}

fn sqlite_request(c: usize) -> (String, String) {
    (format!("/invoke/c{c}"), String::new())
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmRSS has no value")?.parse()?;
    Ok(kib / 1024.0)
}

pub async fn run(guests: &Path, sizes: &Sizes, baseline: &Path) -> anyhow::Result<Json> {
    let measure = Duration::from_millis(sizes.service_ms);
    let warmup = Duration::from_millis(500);
    let release = tokio::task::spawn_blocking(|| build_concord("release")).await??;
    let debug = tokio::task::spawn_blocking(|| build_concord("dev")).await??;
    let config = format!("{}\n[server]\nqueue = 4096\n", crate::concord_runs::BENCH_CONFIG);

    // Idle memory with the three example agents.
    let demo = crate::concord_runs::demo_config(&crate::root().join("target/bench-cache/examples"))?;
    let agents = [("sales", "sales"), ("support", "support"), ("product", "product")];
    let idle = concord(&release, guests, &agents, &demo)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_mib = rss_mib(idle.pid())?;
    drop(idle);

    let mut out = serde_json::Map::new();
    for (name, binary) in [("concord", &release), ("concord_debug", &debug)] {
        let server = concord(binary, guests, &[("bench", "bench_agent")], &config)?;
        let levels: &[usize] = if name == "concord" { &CLIENTS } else { &[64] };
        let mut by = serde_json::Map::new();
        for &clients in levels {
            let l = load(&server.base, clients, warmup, measure, concord_request).await?;
            eprintln!(
                "   {name} {clients} clients: {:.0}/s, p99 {:.2} ms",
                l.ok as f64 / l.seconds,
                percentile(&l.lat_ms, 99.0).unwrap_or(0.0)
            );
            by.insert(clients.to_string(), l.json());
        }
        if name == "concord" {
            by.insert("rss_after_load_mib".into(), json!(rss_mib(server.pid())?));
        }
        out.insert(name.into(), Json::Object(by));
    }
    let server = sqlite(baseline)?;
    let mut by = serde_json::Map::new();
    for clients in CLIENTS {
        let l = load(&server.base, clients, warmup, measure, sqlite_request).await?;
        eprintln!(
            "   sqlite {clients} clients: {:.0}/s, p99 {:.2} ms",
            l.ok as f64 / l.seconds,
            percentile(&l.lat_ms, 99.0).unwrap_or(0.0)
        );
        by.insert(clients.to_string(), l.json());
    }
    out.insert("sqlite".into(), Json::Object(by));
    out.insert("idle_rss_mib".into(), json!(idle_mib));
    Ok(Json::Object(out))
}

/// One GET, timed end to end, in ms; it must answer 200.
pub async fn get_ms(base: &str, path: &str) -> anyhow::Result<f64> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let t = Instant::now();
    let r = client.request(Request::get(format!("{base}{path}")).body(Full::new(Bytes::new()))?).await?;
    let status = r.status();
    r.into_body().collect().await?;
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

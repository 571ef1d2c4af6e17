//! `postgres`: Concord on PostgreSQL. Durable commits at 16 and 64
//! concurrent invocations on distinct entities, with one host and with two
//! hosts (each its own store, writer and pool, in this process) on one
//! database, against two references in the same run: Concord on redb at
//! the same concurrency, and pgbench's simple-update TPS on the same server
//! (the server's own ceiling for a one-row update per transaction). The
//! server syncs its WAL (`fsync = on`, `synchronous_commit = on`), on the
//! disk the other benchmarks use. Each run checks that no update was lost.
//!
//! CPU: this process's threads (the invocations, the PostgreSQL client's
//! writer and I/O threads) and the server's processes, per commit: on a
//! 2-core machine they share the cores, which is what bounds it here.

use crate::Sizes;
use crate::concord_runs::{BENCH_CONFIG, Lab, Report, counter, run, summary};
use crate::machine::Threads;
use anyhow::{Context, bail};
use concord_pg_server::PgServer;
use serde_json::{Value as Json, json};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The concurrency levels measured.
const LEVELS: [usize; 2] = [16, 64];

/// A bench host on the PostgreSQL database `url`.
fn pg_lab(guests: &Path, url: &str) -> anyhow::Result<Lab> {
    let config = BENCH_CONFIG.replacen("[kb]\n", &format!("[kb]\nbackend = \"postgres\"\nurl = \"{url}\"\n"), 1);
    Lab::new(guests, &[("bench", "bench_agent")], &config)
}

/// CPU time of every `postgres` process so far, in ns (`/proc/*/stat`,
/// utime + stime, in clock ticks of 10 ms).
fn server_cpu_ns() -> u64 {
    let mut total = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    for p in procs.flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else { continue };
        // `pid (comm) state ...`: fields after the comm's closing paren.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
        total += ticks * 10_000_000;
    }
    total
}

/// `level` invocations, each committing `per` times to its own counter,
/// spread over `labs` (hosts on one store). Checks every commit is there.
async fn distinct(labs: &[Lab], level: usize, per: u64) -> anyhow::Result<Json> {
    let keys: Vec<String> = (0..level).map(|i| format!("counter/c{i}")).collect();
    let threads = Threads::now()?;
    let server_before = server_cpu_ns();
    let t = Instant::now();
    let handles: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let host = labs[i % labs.len()].host.clone();
            let body = json!({ "op": "commits", "entity": k, "n": per });
            tokio::spawn(async move { run(&host, body).await })
        })
        .collect();
    let mut reports: Vec<Report> = Vec::new();
    for h in handles {
        reports.push(h.await??);
    }
    let seconds = t.elapsed().as_secs_f64();
    let cpu = Threads::now()?.since(&threads);
    let server_ns = server_cpu_ns().saturating_sub(server_before);
    let mut lost = 0i64;
    for k in &keys {
        let (n, version) = counter(&labs[0].host, k)?;
        lost += (per as i64 + 1 - version as i64) + (per as i64 - 1 - n);
    }
    let mut line = summary(&reports, seconds, lost);
    let commits = reports.iter().map(|r| r.ok).sum::<u64>().max(1) as f64;
    let (mut client, mut invocations, mut other) = (0u64, 0u64, 0u64);
    for (name, ns) in &cpu {
        match name.as_str() {
            n if n.starts_with("concord-pg") => client += ns,
            "tokio-rt-worker" => invocations += ns,
            _ => other += ns,
        }
    }
    let us = |ns: u64| ns as f64 / 1000.0 / commits;
    line["cpu"] = json!({
        "pg_client_us": us(client), "invocations_us": us(invocations), "other_us": us(other),
        "hosts_us": us(client + invocations + other), "server_us": us(server_ns),
        "cores_busy": (client + invocations + other + server_ns) as f64 / 1e9 / seconds,
    });
    Ok(line)
}

/// pgbench's built-in simple-update script at `clients`, for `secs` s.
fn pgbench(url: &str, clients: usize, secs: u64) -> anyhow::Result<f64> {
    let out = Command::new("pgbench")
        .args(["-n", "-b", "simple-update", "-c", &clients.to_string(), "-j", "2", "-T", &secs.to_string(), url])
        .output()
        .context("running pgbench (Debian: postgresql-contrib, or postgresql's client tools)")?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

pub async fn run_phase(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let server = PgServer::start_durable(&crate::root().join("target"));
    let mut levels = serde_json::Map::new();
    for level in LEVELS {
        let per = (sizes.commits / level as u64).max(1);
        eprintln!("   {level} invocations × {per} commits: redb, one host on PostgreSQL, two hosts on PostgreSQL");
        let redb = distinct(&[Lab::bench(guests)?], level, per).await?;
        let one = distinct(&[pg_lab(guests, &server.fresh_database())?], level, per).await?;
        let url = server.fresh_database();
        let two = distinct(&[pg_lab(guests, &url)?, pg_lab(guests, &url)?], level, per).await?;
        levels.insert(level.to_string(), json!({ "redb": redb, "one_host": one, "two_hosts": two }));
    }
    let url = server.fresh_database();
    let init = Command::new("pgbench").args(["-i", "-q", "-s", "16", &url]).output().context("pgbench -i")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let secs = (sizes.service_ms / 1000).max(3);
    let mut pgbench_tps = serde_json::Map::new();
    for level in LEVELS {
        eprintln!("   pgbench simple-update, {level} clients, {secs} s");
        pgbench_tps.insert(level.to_string(), json!(pgbench(&url, level, secs)?));
    }
    Ok(json!({ "levels": levels, "pgbench_tps": pgbench_tps }))
}

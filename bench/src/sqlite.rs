//! The baseline: SQLite through rusqlite, in WAL mode with
//! `synchronous=FULL` (every commit durable, as Concord's are), doing the
//! same optimistic write: `UPDATE … WHERE id=? AND version=?` plus an audit
//! row in the same transaction, at the same concurrency.
//!
//! Two set-ups, both reported so the baseline is not a straw man: a
//! connection per thread (`BEGIN IMMEDIATE`; writers wait on SQLite's busy
//! handler), and one connection shared behind a mutex (writers queue on the
//! mutex instead).

use crate::stats::percentile;
use crate::{CONTENDERS, LEVELS, Sizes};
use anyhow::{Context, bail};
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCHEMA: &str = "
    CREATE TABLE counters (id TEXT PRIMARY KEY, n INTEGER NOT NULL, version INTEGER NOT NULL);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, agent TEXT NOT NULL,
        entity TEXT NOT NULL, call TEXT NOT NULL, args TEXT NOT NULL, outcome TEXT NOT NULL);
    CREATE INDEX audit_by_agent ON audit (agent, seq);
    CREATE INDEX audit_by_entity ON audit (entity, seq);
";

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("SQLite refused WAL mode (got {mode})");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(60))?;
    Ok(conn)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    PerThread,
    Shared,
}

/// Where a thread gets its connection.
enum Conn {
    Own(Connection),
    Shared(Arc<Mutex<Connection>>),
}

impl Conn {
    fn with<T>(&mut self, f: impl FnOnce(&mut Connection) -> anyhow::Result<T>) -> anyhow::Result<T> {
        match self {
            Conn::Own(c) => f(c),
            Conn::Shared(m) => {
                let mut guard = m.lock().map_err(|_| anyhow::anyhow!("a SQLite thread panicked"))?;
                f(&mut guard)
            }
        }
    }
}

/// One optimistic write: the update on `version` and its audit row, in one
/// immediate transaction. Returns whether the version still held.
fn write(conn: &mut Connection, id: &str, n: i64, version: i64) -> anyhow::Result<bool> {
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let changed = txn
        .prepare_cached("UPDATE counters SET n = ?1, version = version + 1 WHERE id = ?2 AND version = ?3")?
        .execute(params![n, id, version])?;
    let outcome = if changed == 1 { format!("version {}", version + 1) } else { "conflict".into() };
    let args = json!({ "entity": id, "expect": version, "set": { "n": n } }).to_string();
    txn.prepare_cached(
        "INSERT INTO audit (at_ms, agent, entity, call, args, outcome) VALUES (?1, 'bench', ?2, 'kb.commit', ?3, ?4)",
    )?
    .execute(params![now_ms(), id, args, outcome])?;
    txn.commit()?;
    Ok(changed == 1)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

struct Tally {
    ok: u64,
    conflicts: u64,
    lat_us: Vec<f64>,
}

/// `threads` writers doing `per_thread` successful writes each, on their
/// own row (`contended == false`) or all on one.
fn run(setup: Setup, threads: usize, per_thread: u64, contended: bool) -> anyhow::Result<Json> {
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("creating a temp folder under target/")?;
    let path = dir.path().join("bench.sqlite");
    let first = connect(&path)?;
    first.execute_batch(SCHEMA)?;
    let ids: Vec<String> =
        (0..threads).map(|t| if contended { "counter/hot".to_string() } else { format!("counter/c{t}") }).collect();
    for id in &ids {
        first.execute("INSERT OR IGNORE INTO counters (id, n, version) VALUES (?1, 0, 1)", params![id])?;
    }
    let shared = Arc::new(Mutex::new(first));
    let start = Instant::now();
    let handles: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let mut conn = match setup {
                Setup::PerThread => Conn::Own(connect(&path)?),
                Setup::Shared => Conn::Shared(shared.clone()),
            };
            Ok(std::thread::spawn(move || -> anyhow::Result<Tally> {
                let mut tally = Tally { ok: 0, conflicts: 0, lat_us: Vec::new() };
                let mut known: Option<(i64, i64)> = None;
                while tally.ok < per_thread {
                    // Read (outside the write transaction, as an agent
                    // reads before it decides), unless our last write told
                    // us the state: on a private row it always does.
                    let (n, version) = match known {
                        Some(k) => k,
                        None => conn.with(|c| {
                            Ok(c.prepare_cached("SELECT n, version FROM counters WHERE id = ?1")?
                                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?)
                        })?,
                    };
                    let t = Instant::now();
                    if conn.with(|c| write(c, &id, n + 1, version))? {
                        tally.lat_us.push(t.elapsed().as_secs_f64() * 1e6);
                        tally.ok += 1;
                        known = (!contended).then_some((n + 1, version + 1));
                    } else {
                        tally.conflicts += 1;
                        known = None;
                    }
                }
                Ok(tally)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut tallies = Vec::new();
    for h in handles {
        tallies.push(h.join().map_err(|_| anyhow::anyhow!("a SQLite bench thread panicked"))??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let conflicts: u64 = tallies.iter().map(|t| t.conflicts).sum();
    let lat: Vec<f64> = tallies.into_iter().flat_map(|t| t.lat_us).collect();
    // The lost-update check: every acknowledged increment is in the row(s).
    let conn = shared.lock().map_err(|_| anyhow::anyhow!("a SQLite bench thread panicked"))?;
    let total: i64 = conn.query_row("SELECT COALESCE(SUM(n), 0) FROM counters", [], |r| r.get(0))?;
    let lost = ok as i64 - total;
    Ok(json!({
        "threads": threads, "commits": ok, "conflicts": conflicts, "seconds": seconds,
        "per_s": ok as f64 / seconds,
        "conflict_rate": conflicts as f64 / (ok + conflicts).max(1) as f64,
        "p50_ms": percentile(&lat, 50.0).map(|x| x / 1000.0), "p99_ms": percentile(&lat, 99.0).map(|x| x / 1000.0),
        "lost_updates": lost,
    }))
}

/// The commit benchmark's baseline, both set-ups.
pub fn commits(sizes: &Sizes) -> anyhow::Result<Json> {
    let mut out = serde_json::Map::new();
    for setup in [Setup::PerThread, Setup::Shared] {
        let mut distinct = serde_json::Map::new();
        for level in LEVELS {
            let per = (sizes.commits / level as u64).max(1);
            eprintln!("   sqlite {setup:?}: {level} writers × {per} commits");
            distinct.insert(level.to_string(), run(setup, level, per, false)?);
        }
        eprintln!("   sqlite {setup:?}: {CONTENDERS} contending × {} increments", sizes.increments);
        let contended = run(setup, CONTENDERS, sizes.increments, true)?;
        let key = if setup == Setup::PerThread { "per_thread" } else { "shared" };
        out.insert(key.into(), json!({ "distinct": distinct, "contended": contended }));
    }
    Ok(Json::Object(out))
}

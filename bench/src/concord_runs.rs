//! The Concord side of each benchmark. Every run gets a fresh host in its
//! own folder under `target/` (the same disk as the SQLite baseline).

use crate::machine::{Threads, rss_bytes};
use crate::stats::{median, percentile};
use crate::{CONTENDERS, LEVELS, Sizes};
use anyhow::{Context, bail};
use concord::Caller;
use concord::audit::AuditFilter;
use concord::kb::redb::RedbStore;
use concord::kb::{EntityRef, Value};
use concord::kb::{Expect, Write};
use concord::{Breakpoint, Config, Host, Message, Outcome};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The benchmark's knowledge base: counters, written by the `bench` agent.
/// The limits are lifted so that long loops are not stopped.
pub const BENCH_CONFIG: &str = r#"
[kb]
path = "data/concord.redb"

[agents]
dir = "agents"

[actions]
sink = "data/actions.jsonl"

[limits]
memory_mib = 64
fuel = 1_000_000_000_000_000
timeout_ms = 3_600_000
max_host_calls = 4_000_000_000

[kinds.counter.fields]
n = { type = "integer", owner = "bench" }
"#;

/// A host in a temp folder; the folder goes when this does.
#[derive(Debug)]
pub struct Lab {
    pub host: Arc<Host>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A host loading `agents` (`(name, guest file stem)`) under `config`.
    pub(crate) fn new(guests: &Path, agents: &[(&str, &str)], config: &str) -> anyhow::Result<Lab> {
        let dir = tempfile::tempdir_in(crate::root().join("target")).context("creating a temp folder under target/")?;
        let agents_dir = dir.path().join("agents");
        std::fs::create_dir_all(&agents_dir)?;
        for (name, guest) in agents {
            let from = guests.join(format!("{guest}.wasm"));
            std::fs::copy(&from, agents_dir.join(format!("{name}.wasm")))
                .with_context(|| format!("copying {}", from.display()))?;
        }
        let file = dir.path().join("concord.toml");
        std::fs::write(&file, config)?;
        let config = Config::load(&file)?;
        let host = Host::start(config)?;
        Ok(Lab { host: Arc::new(host), dir })
    }

    /// Closes the host, then times opening its store again: read-only, as
    /// every `concord` command does, and for writing, as a host does; and
    /// `concord check`, which must find nothing.
    fn reopen(self) -> anyhow::Result<Json> {
        let path = self.dir.path().join("data/concord.redb");
        let host = Arc::try_unwrap(self.host).map_err(|_| anyhow::anyhow!("the host is still in use"))?;
        drop(host);
        let bytes = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?.len();
        let t = Instant::now();
        drop(RedbStore::open_read_only(&path)?);
        let read_only = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        drop(RedbStore::open(&path)?);
        let read_write = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let check = RedbStore::check(&path)?;
        let check_ms = t.elapsed().as_secs_f64() * 1000.0;
        if !check.is_clean() {
            bail!("`concord check` found damage in a store the bench just wrote: {check:?}");
        }
        Ok(json!({
            "file_mib": bytes as f64 / (1 << 20) as f64, "read_only_ms": read_only, "read_write_ms": read_write,
            "check_ms": check_ms, "check_records": check.records(),
        }))
    }

    /// Stops the host (it stores what it counted) and starts a new one on
    /// the same folder.
    fn restart(self) -> anyhow::Result<Lab> {
        let Lab { host, dir } = self;
        let host = Arc::try_unwrap(host).map_err(|_| anyhow::anyhow!("the host is still in use"))?;
        drop(host);
        let config = Config::load(&dir.path().join("concord.toml"))?;
        Ok(Lab { host: Arc::new(Host::start(config)?), dir })
    }

    pub(crate) fn bench(guests: &Path) -> anyhow::Result<Lab> {
        Self::new(guests, &[("bench", "bench_agent")], BENCH_CONFIG)
    }

    /// The demo: the example config and the three example agents.
    fn demo(guests: &Path) -> anyhow::Result<Lab> {
        let cache = crate::root().join("target/bench-cache/examples");
        Self::new(guests, &[("sales", "sales"), ("support", "support"), ("product", "product")], &demo_config(&cache)?)
    }
}

/// The example config, its compiled components kept in `cache`. The
/// example agents' phases share one (`target/bench-cache/examples`): a
/// Python or TypeScript component compiles for seconds, which no figure
/// here is about but the languages phase's first compile.
pub fn demo_config(cache: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(crate::root().join("concord.toml"))?;
    let at = text.find("[agents]\n").context("concord.toml has no [agents] table")? + "[agents]\n".len();
    Ok(format!("{}cache_dir = {:?}\n{}", &text[..at], cache.display().to_string(), &text[at..]))
}

/// What the bench agent reported.
#[derive(Debug, Default)]
pub struct Report {
    pub ok: u64,
    pub conflicts: u64,
    pub lat_us: Vec<f64>,
}

/// Runs the bench agent once with `body`.
pub async fn run(host: &Host, body: Json) -> anyhow::Result<Report> {
    let inv = host.invoke("bench", Message { kind: "bench".into(), entity: None, body: body.to_string() }).await?;
    let Outcome::Ok(text) = inv.outcome else {
        bail!("the bench agent did not finish: {}", inv.outcome);
    };
    let v: Json = serde_json::from_str(&text).context("the bench agent's report")?;
    Ok(Report {
        ok: v["ok"].as_u64().unwrap_or(0),
        conflicts: v["conflicts"].as_u64().unwrap_or(0),
        lat_us: v["lat_us"].as_array().map(|a| a.iter().filter_map(Json::as_f64).collect()).unwrap_or_default(),
    })
}

fn entity(s: &str) -> anyhow::Result<EntityRef> {
    s.parse().map_err(anyhow::Error::msg)
}

fn us(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e6
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A native caller with its own invocation id, as a Rust-side agent.
async fn native_caller(host: &Host, agent: &str) -> anyhow::Result<Caller> {
    let id = host.gate().start_invocation(agent, "native", json!({ "bench": agent }), None, None).await?;
    Ok(Caller::new(agent.into(), "native".into(), id, None, None))
}

/// Resident memory: a host with the three example agents, idle, then with
/// `in_flight` Sales invocations held at their first `kb.get`.
pub async fn memory(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let before = rss_bytes()?;
    let lab = Lab::demo(guests)?;
    let idle = rss_bytes()?;
    let acme = entity("customer/acme")?;
    let upsell = || Message { kind: "upsell".into(), entity: Some(acme.clone()), body: "{}".into() };
    // One invocation first, so the figure below is per invocation, not the
    // first-use cost of the code pages.
    lab.host.invoke("sales", upsell()).await?;
    let warm = rss_bytes()?;
    let mut held = Vec::new();
    for _ in 0..sizes.in_flight {
        let bp = Breakpoint::before("kb.get", 1);
        let (host, b, msg) = (lab.host.clone(), bp.clone(), upsell());
        held.push((bp, tokio::spawn(async move { host.invoke_with("sales", msg, b).await })));
    }
    for (bp, _) in &held {
        bp.reached().await;
    }
    let busy = rss_bytes()?;
    for (bp, task) in held {
        bp.release();
        task.await??;
    }
    let per = busy.saturating_sub(warm) as f64 / sizes.in_flight as f64;
    Ok(json!({
        "rss_before_mib": mib(before), "rss_idle_mib": mib(idle), "host_idle_mib": mib(idle.saturating_sub(before)),
        "rss_warm_mib": mib(warm), "rss_in_flight_mib": mib(busy), "in_flight": sizes.in_flight,
        "per_invocation_kib": per / 1024.0,
    }))
}

/// `kb.get` from the wasm agent against the same audited get called
/// natively through the gate, rounds alternating so drift hits both.
pub async fn hostcall(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let lab = Lab::bench(guests)?;
    let host = &lab.host;
    let key = "counter/g";
    run(host, json!({ "op": "commits", "entity": key, "n": 1 })).await?;
    run(host, json!({ "op": "gets", "entity": key, "n": sizes.gets / 4 })).await?;
    let mut empty = Vec::new();
    for _ in 0..51 {
        let t = Instant::now();
        run(host, json!({ "op": "gets", "entity": key, "n": 0 })).await?;
        empty.push(us(t));
    }
    let base = median(&empty).unwrap_or(0.0);
    let caller = Arc::new(native_caller(host, "bench").await?);
    let (mut wasm, mut native) = (Vec::new(), Vec::new());
    for _ in 0..sizes.get_rounds {
        let t = Instant::now();
        let r = run(host, json!({ "op": "gets", "entity": key, "n": sizes.gets })).await?;
        if r.ok != sizes.gets {
            bail!("the agent made {} gets, not {}", r.ok, sizes.gets);
        }
        wasm.push((us(t) - base).max(0.0) / sizes.gets as f64);

        let (h, c, e, n) = (host.clone(), caller.clone(), entity(key)?, sizes.gets);
        let elapsed = tokio::spawn(async move {
            let t = Instant::now();
            for _ in 0..n {
                h.gate().get(&c, e.clone()).await?.map_err(anyhow::Error::msg)?;
            }
            anyhow::Ok(us(t))
        })
        .await??;
        native.push(elapsed / n as f64);
    }
    let (w, n) = (median(&wasm).unwrap_or(0.0), median(&native).unwrap_or(0.0));
    // The mean over every round is the sustained cost: it includes the
    // rounds where the read entries outran the writer and a caller waited
    // for it (the backpressure that bounds memory).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(json!({
        "gets_per_round": sizes.gets, "rounds": sizes.get_rounds, "empty_invocation_us": base,
        "wasm_us_p50": w, "native_us_p50": n, "ratio": w / n,
        "wasm_us_mean": mean(&wasm), "native_us_mean": mean(&native),
        "wasm_rounds_us": wasm, "native_rounds_us": native,
    }))
}

/// A fresh instance plus a trivial handler, end to end through
/// [`Host::invoke`] (including its start and end audit entries).
pub async fn start(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let lab = Lab::bench(guests)?;
    let noop = || json!({ "op": "noop" });
    for _ in 0..50 {
        run(&lab.host, noop()).await?;
    }
    let mut samples = Vec::with_capacity(sizes.starts);
    for _ in 0..sizes.starts {
        let t = Instant::now();
        run(&lab.host, noop()).await?;
        samples.push(us(t));
    }
    Ok(json!({
        "invocations": sizes.starts, "us_p50": median(&samples), "us_p99": percentile(&samples, 99.0),
        "us_min": percentile(&samples, 0.0),
    }))
}

/// Runs `tasks` bench invocations at once; returns their reports and the
/// wall time in seconds.
async fn concurrently(host: &Arc<Host>, bodies: Vec<Json>) -> anyhow::Result<(Vec<Report>, f64)> {
    let t = Instant::now();
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let host = host.clone();
            tokio::spawn(async move { run(&host, b).await })
        })
        .collect();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.await??);
    }
    Ok((reports, t.elapsed().as_secs_f64()))
}

/// Field `n` of `key`, and its version.
pub(crate) fn counter(host: &Host, key: &str) -> anyhow::Result<(i64, u64)> {
    let e = host.store().get(&entity(key)?)?.with_context(|| format!("{key} is missing"))?;
    let n = match e.fields.get("n") {
        Some(Value::Integer(n)) => *n,
        other => bail!("{key}.n is {other:?}"),
    };
    Ok((n, e.version))
}

pub(crate) fn summary(reports: &[Report], seconds: f64, lost: i64) -> Json {
    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let conflicts: u64 = reports.iter().map(|r| r.conflicts).sum();
    let lat: Vec<f64> = reports.iter().flat_map(|r| r.lat_us.iter().copied()).collect();
    json!({
        "invocations": reports.len(), "commits": ok, "conflicts": conflicts, "seconds": seconds,
        "per_s": ok as f64 / seconds, "conflict_rate": conflicts as f64 / (ok + conflicts).max(1) as f64,
        "p50_ms": percentile(&lat, 50.0).map(|x| x / 1000.0), "p99_ms": percentile(&lat, 99.0).map(|x| x / 1000.0),
        "lost_updates": lost,
    })
}

/// Where the CPU went, per acknowledged commit, by kind of thread: the
/// writer, the syncer, the invocations (tokio's workers: wasm, the host
/// calls, the replies) and the rest; and how many cores were busy on
/// average. On a machine whose cores are all busy, this is what bounds
/// the throughput, whatever the disk does.
fn cpu_per_commit(ns_by_thread: &std::collections::BTreeMap<String, u64>, commits: u64, seconds: f64) -> Json {
    let commits = commits.max(1) as f64;
    let (mut writer, mut syncer, mut invocations, mut other) = (0u64, 0u64, 0u64, 0u64);
    for (name, ns) in ns_by_thread {
        match name.as_str() {
            "concord-writer" => writer += ns,
            "concord-syncer" => syncer += ns,
            "tokio-rt-worker" => invocations += ns,
            _ => other += ns,
        }
    }
    let us = |ns: u64| ns as f64 / 1000.0 / commits;
    let total = writer + syncer + invocations + other;
    json!({
        "writer_us": us(writer), "syncer_us": us(syncer), "invocations_us": us(invocations), "other_us": us(other),
        "total_us": us(total), "cores_busy": total as f64 / 1e9 / seconds,
    })
}

/// Durable commits at each concurrency level on distinct entities, and
/// [`CONTENDERS`] invocations incrementing one. Each run checks that every
/// acknowledged commit is in the store.
pub async fn commits(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let mut distinct = serde_json::Map::new();
    for level in LEVELS {
        let lab = Lab::bench(guests)?;
        let per = (sizes.commits / level as u64).max(1);
        eprintln!("   concord: {level} invocations × {per} commits");
        let keys: Vec<String> = (0..level).map(|i| format!("counter/c{i}")).collect();
        let bodies = keys.iter().map(|k| json!({ "op": "commits", "entity": k, "n": per })).collect();
        let threads = Threads::now()?;
        let (reports, seconds) = concurrently(&lab.host, bodies).await?;
        // Taken before the lab (and its writer and syncer threads) goes.
        let cpu = Threads::now()?.since(&threads);
        // Each entity: created at version 1, then `per` commits.
        let mut lost = 0i64;
        for k in &keys {
            let (n, version) = counter(&lab.host, k)?;
            lost += (per as i64 + 1 - version as i64) + (per as i64 - 1 - n);
        }
        let mut line = summary(&reports, seconds, lost);
        let acknowledged = reports.iter().map(|r| r.ok).sum();
        line["cpu"] = cpu_per_commit(&cpu, acknowledged, seconds);
        distinct.insert(level.to_string(), line);
    }
    let lab = Lab::bench(guests)?;
    let hot = "counter/hot";
    eprintln!("   concord: {CONTENDERS} contending × {} increments", sizes.increments);
    run(&lab.host, json!({ "op": "increments", "entity": hot, "n": 0 })).await?;
    let bodies = (0..CONTENDERS).map(|_| json!({ "op": "increments", "entity": hot, "n": sizes.increments })).collect();
    let (reports, seconds) = concurrently(&lab.host, bodies).await?;
    let (n, _) = counter(&lab.host, hot)?;
    let acknowledged: u64 = reports.iter().map(|r| r.ok).sum();
    let contended = summary(&reports, seconds, acknowledged as i64 - n);
    Ok(json!({ "distinct": distinct, "contended": contended }))
}

/// Writes `events` events through the gate as the `bench` agent: tasks own
/// 100 counters each and commit all of them at once, so each commit is 100
/// events. Returns the counters' keys.
async fn fill_events(lab: &Lab, events: u64) -> anyhow::Result<Vec<String>> {
    const TASKS: u64 = 16;
    const WIDTH: u64 = 100;
    let commits = events.div_ceil(WIDTH);
    let mut handles = Vec::new();
    let mut keys = Vec::new();
    for t in 0..TASKS {
        let mine: Vec<String> = (0..WIDTH).map(|j| format!("counter/r{t}-{j}")).collect();
        keys.extend(mine.iter().cloned());
        let rounds = commits / TASKS + u64::from(t < commits % TASKS);
        let host = lab.host.clone();
        handles.push(tokio::spawn(async move {
            let caller = native_caller(&host, "bench").await?;
            let refs: Vec<EntityRef> = mine.iter().map(|k| entity(k)).collect::<anyhow::Result<_>>()?;
            for round in 0..rounds {
                let writes = refs
                    .iter()
                    .map(|e| Write {
                        entity: e.clone(),
                        expect: if round == 0 { Expect::Absent } else { Expect::Version(round) },
                        set: vec![("n".into(), Value::Integer(round as i64))],
                        unset: vec![],
                        fence: None,
                    })
                    .collect();
                host.gate().commit(&caller, writes, "bench: fill".into()).await?.map_err(anyhow::Error::msg)?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(keys)
}

/// Rebuilds the projection from an event log of `sizes.events` events.
pub async fn replay(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let lab = Lab::bench(guests)?;
    let t = Instant::now();
    fill_events(&lab, sizes.events).await?;
    eprintln!("   wrote {} events in {:.1} s", sizes.events, t.elapsed().as_secs_f64());
    let store = lab.host.store().clone();
    let (report, seconds) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = store.replay();
        (r, t.elapsed().as_secs_f64())
    })
    .await?;
    let report = report?;
    let check = if report.differences.is_empty() && report.events >= sizes.events {
        "ok".to_string()
    } else {
        format!("{} events, differences: {:?}", report.events, report.differences.iter().take(5).collect::<Vec<_>>())
    };
    let open = tokio::task::spawn_blocking(move || lab.reopen()).await??;
    Ok(json!({
        "events": report.events, "entities": report.entities, "seconds": seconds,
        "events_per_s": report.events as f64 / seconds, "check": check, "open": open,
    }))
}

/// Queries by agent and entity over an audit log of `sizes.events`
/// `kb.get` entries by 10 agents on 1,000 entities (each pair read the
/// same number of times, spread over the whole log).
pub async fn audit_query(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    const AGENTS: u64 = 10;
    const ENTITIES: u64 = 1000;
    const TASKS: u64 = 16;
    let lab = Lab::bench(guests)?;
    let keys = fill_events(&lab, ENTITIES).await?;
    let keys: Arc<Vec<String>> = Arc::new(keys.into_iter().take(ENTITIES as usize).collect());
    let pairs = AGENTS * ENTITIES;
    let gets = sizes.events.div_ceil(pairs) * pairs;
    let t = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (host, keys) = (lab.host.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let mut callers = Vec::new();
            for a in 0..AGENTS {
                callers.push(native_caller(&host, &format!("agent{a}")).await?);
            }
            let refs: Vec<EntityRef> = keys.iter().map(|k| entity(k)).collect::<anyhow::Result<_>>()?;
            let mut k = task;
            while k < gets {
                let (agent, e) = ((k % AGENTS) as usize, ((k / AGENTS) % ENTITIES) as usize);
                host.gate().get(&callers[agent], refs[e].clone()).await?.map_err(anyhow::Error::msg)?;
                k += TASKS;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    eprintln!("   wrote {gets} audited gets in {:.1} s", t.elapsed().as_secs_f64());
    let store = lab.host.store().clone();
    let expected = gets / pairs;
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Vec<f64>)> {
        let entries = store.audit(&AuditFilter { limit: Some(1), ..Default::default() })?.pop().map_or(0, |e| e.seq);
        let mut times = Vec::new();
        for q in 0..25u64 {
            let (agent, e) = (q * 7 % AGENTS, q * 389 % ENTITIES);
            let filter = AuditFilter {
                agent: Some(format!("agent{agent}")),
                entity: Some(keys[e as usize].clone()),
                ..Default::default()
            };
            let t = Instant::now();
            let found = store.audit(&filter)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if found.len() as u64 != expected {
                bail!("agent{agent} on {}: {} entries, expected {expected}", keys[e as usize], found.len());
            }
        }
        Ok((entries, times))
    })
    .await??;
    let (entries, times) = result;
    let open = tokio::task::spawn_blocking(move || lab.reopen()).await??;
    Ok(json!({
        "entries": entries, "matches": expected, "queries": times.len(),
        "ms_p50": median(&times), "ms_max": percentile(&times, 100.0), "check": "ok", "open": open,
    }))
}

/// Writes about `entries` audit entries as 16 native callers, each on its
/// own 100 counters: per round a commit, eight reads, and a commit on a
/// version that is gone (a conflict, audited as a refusal).
async fn fill_audit(lab: &Lab, entries: u64) -> anyhow::Result<()> {
    const TASKS: u64 = 16;
    const PER_ROUND: u64 = 10;
    let rounds = entries.div_ceil(TASKS * PER_ROUND);
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let host = lab.host.clone();
        handles.push(tokio::spawn(async move {
            let caller = native_caller(&host, "bench").await?;
            let e = entity(&format!("counter/a{t}"))?;
            let write = |expect| Write {
                entity: e.clone(),
                expect,
                set: vec![("n".into(), Value::Integer(1))],
                unset: vec![],
                fence: None,
            };
            let mut version = host.store().get(&e)?.map(|x| x.version);
            for _ in 0..rounds {
                let expect = version.map_or(Expect::Absent, Expect::Version);
                let done = host.gate().commit(&caller, vec![write(expect)], "bench: fill".into()).await?;
                version = done.map_err(anyhow::Error::msg)?.first().copied();
                for _ in 0..8 {
                    host.gate().get(&caller, e.clone()).await?.map_err(anyhow::Error::msg)?;
                }
                // Stale on purpose: refused as a conflict.
                let stale = host.gate().commit(&caller, vec![write(Expect::Absent)], "bench: stale".into()).await?;
                if stale.is_ok() {
                    bail!("a stale commit went through");
                }
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// The conflicts report and the run summary over a log of `sizes.events`
/// audit entries (a tenth of them refusals): counted from nothing (once,
/// as after an upgrade), after a restart (the count stored by the last
/// stop), after a thousand more entries, and through `GET /v1/conflicts`.
pub async fn reports(guests: &Path, sizes: &Sizes) -> anyhow::Result<Json> {
    let lab = Lab::bench(guests)?;
    let t = Instant::now();
    fill_audit(&lab, sizes.events).await?;
    eprintln!("   wrote {} audit entries in {:.1} s", sizes.events, t.elapsed().as_secs_f64());
    let host = lab.host.clone();
    let (cold_ms, report) = tokio::task::spawn_blocking(move || time_ms(|| host.conflicts(600_000))).await?;
    let report = report?;
    let entries = report.through_audit;
    let refused = report.refused.values().sum::<usize>();
    let lab = tokio::task::spawn_blocking(move || lab.restart()).await??;
    let host = lab.host.clone();
    let (restart_ms, _) = tokio::task::spawn_blocking(move || time_ms(|| host.conflicts(600_000))).await?;
    fill_audit(&lab, 1000).await?;
    let host = lab.host.clone();
    let (incremental_ms, _) = tokio::task::spawn_blocking(move || time_ms(|| host.conflicts(600_000))).await?;
    // The run summary: the refusals (from the report) and the actions.
    let host = lab.host.clone();
    let (summary_ms, _) = tokio::task::spawn_blocking(move || {
        time_ms(|| {
            host.conflicts(600_000).map(|r| r.refused.len()).and_then(|_| host.store().actions().map(|a| a.len()))
        })
    })
    .await?;
    let server = concord::Server::start(lab.host.clone(), "127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", server.addr());
    let mut http = Vec::new();
    for _ in 0..10 {
        http.push(crate::service::get_ms(&base, "/v1/conflicts").await?);
    }
    let console = console_views(&base).await?;
    server.shutdown();
    server.wait().await;
    let check =
        if refused as u64 >= entries / 12 { "ok".to_string() } else { format!("only {refused} refusals in {entries}") };
    Ok(json!({
        "entries": entries, "refused": refused, "cold_ms": cold_ms, "after_restart_ms": restart_ms,
        "after_1000_more_ms": incremental_ms, "summary_ms": summary_ms,
        "http_ms_p50": median(&http), "http_ms_max": percentile(&http, 100.0), "console": console, "check": check,
    }))
}

/// Each view of the web console, as the requests it makes (the same
/// paths as `host/console/*.js`), over the big log: the slowest of three
/// loads, in ms. The agents view asks for the bench agent's latest
/// invocation ends, of which it has none: the worst case, a walk back
/// through every entry of the agent.
async fn console_views(base: &str) -> anyhow::Result<Json> {
    const VIEWS: [(&str, &[&str]); 6] = [
        ("feed", &["/v1/audit?limit=100", "/v1/audit?limit=1"]),
        ("feed, refusals only", &["/v1/audit?outcome=conflict&limit=100", "/v1/audit?limit=1"]),
        (
            "entity",
            &[
                "/v1/schema",
                "/v1/entities/counter/a0",
                "/v1/entities/counter/a0/history?after=0&limit=200",
                "/v1/change-requests?entity=counter%2Fa0&open=true",
            ],
        ),
        ("conflicts", &["/v1/conflicts"]),
        ("agents", &["/v1/agents", "/v1/conflicts", "/v1/audit?agent=bench&call=invocation.end&limit=200"]),
        ("trust", &["/v1/audit/verify", "/v1/audit?call=audit.checkpoint&limit=1", "/v1/audit?call=audit.key&limit=1"]),
    ];
    let mut out = serde_json::Map::new();
    for (view, paths) in VIEWS {
        let mut slowest = 0f64;
        for _ in 0..3 {
            let mut total = 0.0;
            for path in paths {
                total += crate::service::get_ms(base, path).await?;
            }
            slowest = slowest.max(total);
        }
        out.insert(view.into(), json!(slowest));
    }
    Ok(Json::Object(out))
}

/// Runs `f`, and how long it took, in ms.
fn time_ms<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64() * 1000.0, v)
}

//! Concord's benchmarks. Each comparison runs its baseline in the same
//! process run and reports the ratio; see BENCHMARKS.md for the figures.
//!
//! `cargo bench -p concord-bench -- [--quick] [--out DIR] [--events N] [--only PHASE,...]`
//! (or `just bench`). Phases, in the order they run:
//! - `machine`: the CPU, the fsync rate of the bench folder's disk (the
//!   physical limit of a durable commit that is not batched), and what a
//!   durable redb commit costs by the number of tables it touches (what
//!   bounds Concord's commit on this disk);
//! - `memory`: resident memory of a host with the three example agents,
//!   idle and with invocations in flight ([`concord`]'s own breakpoints
//!   hold them, so the figure is exact, not a race);
//! - `hostcall`: `kb.get` from a wasm agent against the same audited get
//!   called natively through the gate, on the same store;
//! - `start`: a fresh instance plus a trivial handler, end to end;
//! - `languages`: the conformance agent in Rust, Python and TypeScript:
//!   size, first compile, cached load, invocation start, `kb.get` per call,
//!   a commit; and the start of a host whose example agents are all cached
//!   ([`languages`]);
//! - `outbound`: an agent's GET through the host (`wasi:http`: checked,
//!   audited, sent) against reqwest calling the same loopback server from
//!   this process ([`outbound`]);
//! - `commit`: durable commits at 1, 4, 16 and 64 concurrent invocations on
//!   distinct entities and 16 contending on one, against SQLite (WAL,
//!   synchronous=FULL, optimistic `UPDATE … WHERE version=?` plus an audit
//!   row in the same transaction) at the same concurrency. Every run checks
//!   that no update was lost, on both sides;
//! - `replay`: rebuilding the projection of a 1,000,000-event log (and,
//!   like `audit`, reopening the store it wrote, and `concord check` on it);
//! - `audit`: a query by agent and entity over 1,000,000 audit entries;
//! - `reports`: the conflicts report and the run summary over 1,000,000
//!   audit entries, counted from nothing, after a restart, after more
//!   entries, and through `GET /v1/conflicts`;
//! - `service`: `concord serve` over HTTP (a get and a commit per request)
//!   at 1, 16 and 64 clients from this process, against an axum service on
//!   SQLite doing the same (`src/bin/sqlite_service.rs`), both separate
//!   processes; idle memory; the debug build against the release one;
//! - `reload`: hot reload in `concord serve`: from a build renamed into
//!   `agents/` to the first invocation on it (compiled-component cache
//!   missed and hit), and invocation latency while builds swap in, against
//!   a steady window ([`reload`]);
//! - `postgres`: durable commits at 16 and 64 invocations with one and two
//!   hosts on one PostgreSQL (which it starts), against Concord on redb and
//!   pgbench's simple-update on the same server ([`postgres`]).
//!
//! Results go to `DIR` (default `target/bench`): `report.md` (the tables),
//! `results.json` (the raw numbers) and `throughput.png` (the plot).
//!
//! Layout: [`concord_runs`] (the Concord side), [`sqlite`] (the baseline),
//! [`machine`] (fsync, memory, CPU), [`service`] (HTTP), [`reload`], [`postgres`], [`stats`], [`plot`].

pub mod concord_runs;
pub mod languages;
pub mod machine;
pub mod outbound;
pub mod plot;
pub mod postgres;
pub mod reload;
pub mod service;
pub mod sqlite;
pub mod stats;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How big each phase is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// `kb.get` calls per invocation (and per native round).
    pub gets: u64,
    /// Rounds of `gets`; the median round is reported.
    pub get_rounds: usize,
    /// Invocations timed for the start benchmark.
    pub starts: usize,
    /// Commits per concurrency level (split among the invocations).
    pub commits: u64,
    /// Successful increments per contending invocation.
    pub increments: u64,
    /// Events in the replay log, and entries in the audit log queried.
    pub events: u64,
    /// Invocations held in flight for the memory figure.
    pub in_flight: usize,
    /// How long each load level of the service phase is measured, in ms
    /// (and each latency window of the reload phase).
    pub service_ms: u64,
    /// Hot-reload rounds (a cache miss and a hit each).
    pub reload_rounds: usize,
    /// Outbound requests per round of the outbound phase (rounds:
    /// `get_rounds`).
    pub http_requests: u64,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            gets: 20_000,
            get_rounds: 21,
            starts: 3_000,
            commits: 20_000,
            increments: 300,
            events: 1_000_000,
            in_flight: 64,
            service_ms: 5_000,
            reload_rounds: 5,
            http_requests: 500,
        }
    }

    fn quick() -> Self {
        Sizes {
            gets: 2_000,
            get_rounds: 7,
            starts: 300,
            commits: 2_000,
            increments: 40,
            events: 50_000,
            in_flight: 16,
            service_ms: 1_500,
            reload_rounds: 2,
            http_requests: 100,
        }
    }
}

/// The concurrency levels of the commit benchmark.
pub const LEVELS: [usize; 4] = [1, 4, 16, 64];
/// Invocations contending on one entity.
pub const CONTENDERS: usize = 16;

const PHASES: [&str; 13] = [
    "machine",
    "memory",
    "hostcall",
    "start",
    "languages",
    "outbound",
    "commit",
    "replay",
    "audit",
    "reports",
    "service",
    "reload",
    "postgres",
];

struct Args {
    sizes: Sizes,
    out: PathBuf,
    only: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut sizes = Sizes::full();
    let mut out = root().join("target/bench");
    let mut only: Vec<String> = PHASES.iter().map(|s| s.to_string()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--quick" => sizes = Sizes { events: sizes.events.min(Sizes::quick().events), ..Sizes::quick() },
            // `cargo bench` runs us in bench/; a relative folder means one
            // in the workspace, as the user typed it there.
            "--out" => out = root().join(args.next().context("--out needs a folder")?),
            "--events" => {
                let n = args.next().context("--events needs a number")?;
                sizes.events = n.replace('_', "").parse().with_context(|| format!("--events {n}: not a number"))?;
            }
            "--only" => {
                let list = args.next().context("--only needs a list of phases")?;
                only = list.split(',').map(str::to_string).collect();
                if let Some(bad) = only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("--only: no phase `{bad}` (phases: {})", PHASES.join(", "));
                }
            }
            other => {
                bail!("unknown argument `{other}`; use --quick, --out DIR, --events N or --only {}", PHASES.join(","))
            }
        }
    }
    Ok(Args { sizes, out, only })
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the guests the benchmarks load (the Rust ones with cargo, the
/// Python and TypeScript ones with the project's toolchain scripts), and
/// returns the one folder that holds them all (`target/bench-guests`).
fn build_guests() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir", "target/wasm", "--quiet"])
        .args(["-p", "bench-agent", "-p", "sales", "-p", "conformance"])
        .status()
        .context("running cargo to build the guest agents")?;
    if !status.success() {
        bail!("building the guest agents failed; is the wasm32-wasip2 target installed? (`just setup`)");
    }
    let polyglot = languages::build_polyglot()?;
    let rust = root().join("target/wasm/wasm32-wasip2/release");
    let all = root().join("target/bench-guests");
    std::fs::create_dir_all(&all)?;
    for (from, name) in [
        (&rust, "bench_agent"),
        (&rust, "sales"),
        (&rust, "conformance"),
        (&polyglot, "support"),
        (&polyglot, "product"),
        (&polyglot, "conformance-py"),
        (&polyglot, "conformance-ts"),
    ] {
        let file = format!("{name}.wasm");
        std::fs::copy(from.join(&file), all.join(&file)).with_context(|| format!("copying {file}"))?;
    }
    Ok(all)
}

pub fn main(sqlite_service: &Path) -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let guests = build_guests()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = serde_json::Map::new();
    let started = std::time::Instant::now();
    let sizes = &args.sizes;
    eprintln!("concord bench: {sizes:?}; results in {}", args.out.display());
    for phase in PHASES.iter().filter(|p| args.only.iter().any(|o| o == *p)) {
        eprintln!("== {phase}");
        let t = std::time::Instant::now();
        let value = match *phase {
            "machine" => machine::run()?,
            "memory" => runtime.block_on(concord_runs::memory(&guests, sizes))?,
            "hostcall" => runtime.block_on(concord_runs::hostcall(&guests, sizes))?,
            "start" => runtime.block_on(concord_runs::start(&guests, sizes))?,
            "languages" => {
                runtime.block_on(languages::run_phase(&guests, sizes.starts.min(1_000), sizes.get_rounds))?
            }
            "outbound" => runtime.block_on(outbound::run_phase(&guests, sizes.http_requests, sizes.get_rounds))?,
            "commit" => {
                let concord = runtime.block_on(concord_runs::commits(&guests, sizes))?;
                let sqlite = sqlite::commits(sizes)?;
                json!({ "concord": concord, "sqlite": sqlite })
            }
            "replay" => runtime.block_on(concord_runs::replay(&guests, sizes))?,
            "audit" => runtime.block_on(concord_runs::audit_query(&guests, sizes))?,
            "reports" => runtime.block_on(concord_runs::reports(&guests, sizes))?,
            "service" => runtime.block_on(service::run(&guests, sizes, sqlite_service))?,
            "reload" => runtime.block_on(reload::run(
                &guests,
                sizes.reload_rounds,
                std::time::Duration::from_millis(sizes.service_ms),
            ))?,
            "postgres" => runtime.block_on(postgres::run_phase(&guests, sizes))?,
            _ => unreachable!("phases are checked when parsed"),
        };
        eprintln!("   {phase} took {:.1} s", t.elapsed().as_secs_f64());
        results.insert(phase.to_string(), value);
    }
    let results = Json::Object(results);
    let report = render(&results, sizes);
    let meta = json!({
        "date": machine::date(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let all = json!({ "meta": meta, "results": results });
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&all)?)?;
    std::fs::write(args.out.join("report.md"), &report)?;
    if let Some(commit) = results.get("commit") {
        plot::throughput(commit, &args.out.join("throughput.png"))?;
    }
    println!("{report}");
    let failed = failures(&results);
    if !failed.is_empty() {
        bail!("correctness checks failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// Every `lost_updates` check that did not come out as zero, by path.
fn failures(v: &Json) -> Vec<String> {
    fn walk(v: &Json, path: &str, out: &mut Vec<String>) {
        match v {
            Json::Object(m) => {
                for (k, x) in m {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    if k == "lost_updates" && x.as_u64() != Some(0) {
                        out.push(format!("{p} = {x}"));
                    }
                    if k == "check" && x.as_str() != Some("ok") {
                        out.push(format!("{p} = {x}"));
                    }
                    walk(x, &p, out);
                }
            }
            Json::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    walk(v, "", &mut out);
    out
}

fn f(v: &Json, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

/// The markdown report: one table per phase, targets beside the figures.
fn render(r: &Json, sizes: &Sizes) -> String {
    let mut s = String::new();
    s.push_str(&format!("Sizes: {sizes:?}\n\n"));
    if let Some(m) = r.get("machine") {
        s.push_str(&format!(
            "### Machine\n\n{} · {} cores · {}\n\nfsync (fdatasync of a 4 KiB write): {} µs median, {} /s\n\n",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?"),
            num(f(m, &["fsync_us_p50"]), 0),
            num(f(m, &["fsyncs_per_s"]), 0),
        ));
        let by = &m["redb_commit_us_by_tables"];
        s.push_str(&format!(
            "A durable redb commit of one row in each of N tables (B-trees), median: 1 table {} µs, 2 tables {} µs, 4 tables {} µs, 8 tables {} µs (a Concord commit writes 4, plus the journal position; the 4 audit indexes are written in bulk)\n\n",
            num(f(by, &["1"]), 0),
            num(f(by, &["2"]), 0),
            num(f(by, &["4"]), 0),
            num(f(by, &["8"]), 0),
        ));
    }
    if let Some(m) = r.get("memory") {
        s.push_str(&format!(
            "### Memory\n\n| figure | value |\n|---|---|\n| process RSS before the host | {} MiB |\n| host idle, 3 example agents (RSS) | {} MiB |\n| the host's own share of that | {} MiB |\n| per concurrent invocation ({} held in flight) | {} KiB |\n\n",
            num(f(m, &["rss_before_mib"]), 1),
            num(f(m, &["rss_idle_mib"]), 1),
            num(f(m, &["host_idle_mib"]), 1),
            m["in_flight"],
            num(f(m, &["per_invocation_kib"]), 0),
        ));
    }
    if let Some(h) = r.get("hostcall") {
        s.push_str(&format!(
            "### Host-call overhead (`kb.get`, audited)\n\n| | per call, median round | per call, all rounds (sustained) | target |\n|---|---|---|---|\n| from a wasm agent | {} µs | {} µs | ≤ 2 µs |\n| native, through the same gate | {} µs | {} µs | |\n| ratio | {}× | | ≤ 3× |\n\n",
            num(f(h, &["wasm_us_p50"]), 2),
            num(f(h, &["wasm_us_mean"]), 2),
            num(f(h, &["native_us_p50"]), 2),
            num(f(h, &["native_us_mean"]), 2),
            num(f(h, &["ratio"]), 2),
        ));
    }
    if let Some(h) = r.get("start") {
        s.push_str(&format!(
            "### Invocation start (fresh instance + trivial handler, end to end)\n\n| median | p99 | target |\n|---|---|---|\n| {} µs | {} µs | median ≤ 50 µs |\n\n",
            num(f(h, &["us_p50"]), 1),
            num(f(h, &["us_p99"]), 1),
        ));
    }
    if let Some(l) = r.get("languages") {
        s.push_str("### One agent in three languages (the conformance agent)\n\n| | size | first compile | cached load | invocation start p50 / p99 | `kb.get` per call | read + commit p50 / p99 |\n|---|---|---|---|---|---|---|\n");
        for lang in ["rust", "python", "typescript"] {
            let x = &l[lang];
            s.push_str(&format!(
                "| {lang} | {} MB | {} s | {} ms | {} / {} µs | {} µs | {} / {} ms |\n",
                num(f(x, &["bytes"]).map(|b| b / 1e6), 1),
                num(f(x, &["first_compile_s"]), 1),
                num(f(x, &["cached_load_ms"]), 0),
                num(f(x, &["start_us_p50"]), 0),
                num(f(x, &["start_us_p99"]), 0),
                num(f(x, &["get_us"]), 2),
                num(f(x, &["commit_ms_p50"]), 2),
                num(f(x, &["commit_ms_p99"]), 2),
            ));
        }
        s.push_str(&format!(
            "\nTargets: a Python or TypeScript invocation starts in ≤ 1 ms (median, warm cache). A host with every example agent cached starts in {} s (target ≤ 1 s).\n\n",
            num(f(l, &["host_start_cached_s"]), 2)
        ));
    }
    if let Some(h) = r.get("outbound") {
        s.push_str(&format!(
            "### Outbound HTTP (a GET to a loopback server, {} requests)\n\n| | median | p99 |\n|---|---|---|\n| from a wasm agent, through the host (checked, audited, a connection each) | {} µs | {} µs |\n| reqwest from this process, a connection each | {} µs | {} µs |\n| reqwest from this process, connections kept | {} µs | |\n| added by the host (median, against a connection each) | {} µs (target ≤ 200 µs) | |\n\n",
            h["requests"],
            num(f(h, &["host_us_p50"]), 1),
            num(f(h, &["host_us_p99"]), 1),
            num(f(h, &["reqwest_fresh_us_p50"]), 1),
            num(f(h, &["reqwest_fresh_us_p99"]), 1),
            num(f(h, &["reqwest_pooled_us_p50"]), 1),
            num(f(h, &["added_us_p50"]), 1),
        ));
    }
    if let Some(c) = r.get("commit") {
        s.push_str("### Durable commits\n\n| concurrency | Concord commits/s | p50 | p99 | SQLite (connection per thread) | SQLite (one shared connection) | ratio to the better SQLite |\n|---|---|---|---|---|---|---|\n");
        for level in LEVELS {
            let k = level.to_string();
            let cc = &c["concord"]["distinct"][&k];
            let sp = &c["sqlite"]["per_thread"]["distinct"][&k];
            let ss = &c["sqlite"]["shared"]["distinct"][&k];
            let best = f(sp, &["per_s"]).unwrap_or(0.0).max(f(ss, &["per_s"]).unwrap_or(0.0));
            s.push_str(&format!(
                "| {level} | {} | {} ms | {} ms | {} | {} | {}× |\n",
                num(f(cc, &["per_s"]), 0),
                num(f(cc, &["p50_ms"]), 3),
                num(f(cc, &["p99_ms"]), 3),
                num(f(sp, &["per_s"]), 0),
                num(f(ss, &["per_s"]), 0),
                num(f(cc, &["per_s"]).map(|x| x / best), 2),
            ));
        }
        s.push_str("\nConcord's CPU per commit, by thread (µs), and the cores busy on average:\n\n| concurrency | writer | syncer | invocations | other | total | cores busy |\n|---|---|---|---|---|---|---|\n");
        for level in LEVELS {
            let cpu = &c["concord"]["distinct"][level.to_string()]["cpu"];
            s.push_str(&format!(
                "| {level} | {} | {} | {} | {} | {} | {} |\n",
                num(f(cpu, &["writer_us"]), 1),
                num(f(cpu, &["syncer_us"]), 1),
                num(f(cpu, &["invocations_us"]), 1),
                num(f(cpu, &["other_us"]), 1),
                num(f(cpu, &["total_us"]), 1),
                num(f(cpu, &["cores_busy"]), 2),
            ));
        }
        let hot = |v: &Json| {
            format!(
                "{} commits/s, {}% conflicts, lost updates: {}",
                num(f(v, &["per_s"]), 0),
                num(f(v, &["conflict_rate"]).map(|x| x * 100.0), 1),
                v["lost_updates"]
            )
        };
        s.push_str(&format!(
            "\n{CONTENDERS} contending on one entity (goodput): Concord {}; SQLite per thread {}; SQLite shared {}\n\nTargets: ≥ 25,000 commits/s at 16, ≥ 4× SQLite; single-invocation p50 ≤ 0.5 ms.\n\n",
            hot(&c["concord"]["contended"]),
            hot(&c["sqlite"]["per_thread"]["contended"]),
            hot(&c["sqlite"]["shared"]["contended"]),
        ));
    }
    if let Some(p) = r.get("replay") {
        s.push_str(&format!(
            "### Replay\n\n{} events rebuilt into {} entities in {} s: {} events/s (target ≥ 300,000); projection matches: {}\n\n",
            p["events"],
            p["entities"],
            num(f(p, &["seconds"]), 2),
            num(f(p, &["events_per_s"]), 0),
            p["check"],
        ));
        s.push_str(&reopened(p));
    }
    if let Some(a) = r.get("audit") {
        s.push_str(&format!(
            "### Audit query by agent and entity\n\n{} entries; {} matches per query; median {} ms, max {} ms over {} queries (target ≤ 50 ms)\n\n",
            a["entries"],
            a["matches"],
            num(f(a, &["ms_p50"]), 2),
            num(f(a, &["ms_max"]), 2),
            a["queries"],
        ));
        s.push_str(&reopened(a));
    }
    if let Some(p) = r.get("reports") {
        s.push_str(&format!(
            "### Reports at scale

{} audit entries ({} refusals). The conflicts report: counted from nothing {} ms (once: a store a host never counted, such as after an upgrade); after a restart (the count the last stop stored) {} ms; after 1,000 more entries {} ms; `GET /v1/conflicts` median {} ms, max {} ms; the run summary {} ms (target ≤ 100 ms)\n\n",
            p["entries"],
            p["refused"],
            num(f(p, &["cold_ms"]), 0),
            num(f(p, &["after_restart_ms"]), 1),
            num(f(p, &["after_1000_more_ms"]), 1),
            num(f(p, &["http_ms_p50"]), 1),
            num(f(p, &["http_ms_max"]), 1),
            num(f(p, &["summary_ms"]), 1),
        ));
        if let Some(views) = p["console"].as_object() {
            s.push_str("The web console's views over the same log (every request a view makes, the slowest of three loads):\n\n| view | ms |\n| --- | --- |\n");
            for (view, ms) in views {
                s.push_str(&format!("| {view} | {} |\n", num(ms.as_f64(), 1)));
            }
            s.push('\n');
        }
    }
    if let Some(v) = r.get("service") {
        s.push_str("### The service: HTTP invoke (a `kb.get` and a `kb.commit` per request)\n\n| clients | Concord (release) req/s | p50 | p99 | SQLite service req/s | p50 | p99 | ratio |\n|---|---|---|---|---|---|---|---|\n");
        for clients in service::CLIENTS {
            let k = clients.to_string();
            let (c, q) = (&v["concord"][&k], &v["sqlite"][&k]);
            s.push_str(&format!(
                "| {clients} | {} | {} ms | {} ms | {} | {} ms | {} ms | {}× |\n",
                num(f(c, &["per_s"]), 0),
                num(f(c, &["p50_ms"]), 2),
                num(f(c, &["p99_ms"]), 2),
                num(f(q, &["per_s"]), 0),
                num(f(q, &["p50_ms"]), 2),
                num(f(q, &["p99_ms"]), 2),
                num(f(c, &["per_s"]).zip(f(q, &["per_s"])).map(|(a, b)| a / b), 2),
            ));
        }
        let d = &v["concord_debug"]["64"];
        s.push_str(&format!(
            "\nThe debug build (what `cargo build` gives) at 64 clients: {} req/s, p99 {} ms. Memory: an idle `concord serve` with the three example agents {} MiB RSS (target ≤ 64 MiB); the bench server after its load {} MiB. Failed requests: Concord {}, SQLite {}.\n\nTargets: at 64 clients ≥ 2× the SQLite service, with p99 ≤ 10 ms.\n\n",
            num(f(d, &["per_s"]), 0),
            num(f(d, &["p99_ms"]), 2),
            num(f(v, &["idle_rss_mib"]), 1),
            num(f(v, &["concord", "rss_after_load_mib"]), 1),
            service::CLIENTS.iter().map(|c| v["concord"][c.to_string()]["failed"].as_u64().unwrap_or(0)).sum::<u64>(),
            service::CLIENTS.iter().map(|c| v["sqlite"][c.to_string()]["failed"].as_u64().unwrap_or(0)).sum::<u64>(),
        ));
    }
    if let Some(v) = r.get("postgres") {
        s.push_str("### PostgreSQL (durable: fsync on, synchronous_commit on)\n\n| invocations | store | commits/s | p50 | p99 | hosts' CPU / commit | server CPU / commit | cores busy | lost |\n|---|---|---|---|---|---|---|---|---|\n");
        for level in ["16", "64"] {
            for (key, label) in [
                ("redb", "redb, one host"),
                ("one_host", "PostgreSQL, one host"),
                ("two_hosts", "PostgreSQL, two hosts"),
            ] {
                let l = &v["levels"][level][key];
                s.push_str(&format!(
                    "| {level} | {label} | {} | {} ms | {} ms | {} µs | {} µs | {} | {} |\n",
                    num(f(l, &["per_s"]), 0),
                    num(f(l, &["p50_ms"]), 2),
                    num(f(l, &["p99_ms"]), 2),
                    num(f(l, &["cpu", "hosts_us"]), 0),
                    num(f(l, &["cpu", "server_us"]), 0),
                    num(f(l, &["cpu", "cores_busy"]), 2),
                    l["lost_updates"],
                ));
            }
        }
        s.push_str(&format!(
            "\npgbench simple-update on the same server: {} tps at 16 clients, {} tps at 64.\n\n",
            num(f(v, &["pgbench_tps", "16"]), 0),
            num(f(v, &["pgbench_tps", "64"]), 0),
        ));
    }
    if let Some(v) = r.get("reload") {
        let (d, l) = (&v["drop_to_first_ms"], &v["latency"]);
        s.push_str(&format!(
            "### Hot reload (`concord serve`, release)\n\nFrom a build renamed into `agents/` to the answer of the first invocation on it, median of {} (max), including the {} ms settle time: cache missed {} ms ({}), cache hit {} ms ({}).\n\n| {} clients, a get and a commit each | req/s | p50 | p99 | max | failed |\n|---|---|---|---|---|---|\n| steady | {} | {} ms | {} ms | {} ms | {} |\n| during {} swaps (each a compile) | {} | {} ms | {} ms | {} ms | {} |\n\n",
            v["rounds"],
            v["settle_ms"],
            num(f(d, &["miss", "median"]), 0),
            num(f(d, &["miss", "max"]), 0),
            num(f(d, &["hit", "median"]), 0),
            num(f(d, &["hit", "max"]), 0),
            l["clients"],
            num(f(l, &["steady", "per_s"]), 0),
            num(f(l, &["steady", "p50_ms"]), 2),
            num(f(l, &["steady", "p99_ms"]), 2),
            num(f(l, &["steady", "max_ms"]), 2),
            l["steady"]["failed"],
            l["swaps"],
            num(f(l, &["during_swaps", "per_s"]), 0),
            num(f(l, &["during_swaps", "p50_ms"]), 2),
            num(f(l, &["during_swaps", "p99_ms"]), 2),
            num(f(l, &["during_swaps", "max_ms"]), 2),
            l["during_swaps"]["failed"],
        ));
    }
    s
}

/// The line on reopening a phase's store, once its host has closed it.
fn reopened(phase: &Json) -> String {
    format!(
        "Reopening its store ({} MiB, host closed): read-only, as each `concord` read command does, {} ms; for writing, as a host does (verifying every page's checksum first), {} ms; `concord check` (every page's checksum, every record decoded, {} records) {} ms.\n\n",
        num(f(phase, &["open", "file_mib"]), 0),
        num(f(phase, &["open", "read_only_ms"]), 1),
        num(f(phase, &["open", "read_write_ms"]), 0),
        phase["open"]["check_records"],
        num(f(phase, &["open", "check_ms"]), 0),
    )
}

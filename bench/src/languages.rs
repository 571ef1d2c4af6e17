//! The `languages` phase: one agent, the conformance agent of
//! `tests/conformance/SPEC.md`, in Rust, Python and TypeScript, so that the
//! figures differ by language and nothing else.
//!
//! Per language: the component's size; its first compile (an empty cache)
//! and a cached load (the same cache again: read, deserialise, link); the
//! start of an invocation that makes no host call (`ping`), median and p99,
//! warm; `kb.get` per call from the guest (`reads` of 1,000 gets against
//! `reads` of none, the difference over 1,000); and a read plus a durable
//! commit (`bump`), median and p99. Last, the start of a host with every
//! example agent (Sales in Rust, Support in Python, Product in TypeScript)
//! already in the cache: the target is ≤ 1 s.
//!
//! The Python and TypeScript components are built with the project's own
//! toolchain scripts, the ones `concord build` runs.

use crate::stats::{median, percentile};
use anyhow::{Context, bail};
use concord::{Config, Host, Message, Outcome};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Warm-up invocations before any timing.
const WARM: usize = 20;

/// `kb.get` calls in the loaded round of `reads`.
const READS: u64 = 1_000;

/// Builds the Python and TypeScript conformance agents and example agents
/// into `target/agents/`, as `concord build` would.
pub fn build_polyglot() -> anyhow::Result<PathBuf> {
    let root = crate::root();
    let out = root.join("target/agents");
    std::fs::create_dir_all(&out)?;
    let run = |what: &str, command: &mut Command| -> anyhow::Result<()> {
        let status = command.current_dir(&root).status().with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed (its output is above)");
        }
        Ok(())
    };
    for (name, dir) in [("conformance-py", "tests/agents/conformance-py"), ("support", "agents/support")] {
        run(
            &format!("building {name}"),
            Command::new("bash").arg("scripts/build_python_agent.sh").arg(dir).arg(out.join(format!("{name}.wasm"))),
        )?;
    }
    run("scripts/toolchain_js.sh", Command::new("bash").arg("scripts/toolchain_js.sh"))?;
    for (name, dir) in [("conformance-ts", "tests/agents/conformance-ts"), ("product", "agents/product")] {
        run(
            &format!("building {name}"),
            Command::new("node")
                .arg("agents/sdk-js/build.mjs")
                .arg(format!("{dir}/index.ts"))
                .arg(out.join(format!("{name}.wasm"))),
        )?;
    }
    Ok(out)
}

/// A folder with these agents (`(name, component file)`) and the example
/// config; `Host::start` on it is timed by the caller.
fn lab(agents: &[(&str, PathBuf)], cache: &Path) -> anyhow::Result<(tempfile::TempDir, Config)> {
    let dir = tempfile::tempdir_in(crate::root().join("target")).context("a temp folder under target/")?;
    std::fs::create_dir_all(dir.path().join("agents"))?;
    for (name, from) in agents {
        std::fs::copy(from, dir.path().join(format!("agents/{name}.wasm")))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let file = dir.path().join("concord.toml");
    std::fs::write(&file, crate::concord_runs::demo_config(cache)?)?;
    let config = Config::load(&file)?;
    Ok((dir, config))
}

async fn send(host: &Host, kind: &str, body: Json) -> anyhow::Result<f64> {
    let message = Message {
        kind: kind.into(),
        entity: Some("customer/c1".parse().map_err(anyhow::Error::msg)?),
        body: body.to_string(),
    };
    let t = Instant::now();
    let inv = host.invoke("support", message).await?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    match inv.outcome {
        Outcome::Ok(_) => Ok(us),
        other => bail!("the conformance agent's `{kind}` did not succeed: {other}"),
    }
}

async fn samples(host: &Host, kind: &str, body: Json, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(host, kind, body.clone()).await?);
    }
    Ok(out)
}

/// One language's figures.
async fn language(
    component: &Path,
    starts: usize,
    rounds: usize,
    cache_root: &Path,
    tag: &str,
) -> anyhow::Result<Json> {
    let size = std::fs::metadata(component).with_context(|| format!("{}", component.display()))?.len();
    // An empty cache of its own: the first compile is a real one.
    let cache = cache_root.join(tag);
    let _ = std::fs::remove_dir_all(&cache);
    let limits = {
        let (_dir, config) = lab(&[("support", component.to_path_buf())], &cache)?;
        config.pool_limits()
    };
    let first = concord::precompile(component, &limits, &cache)?.as_secs_f64();
    let cached = concord::precompile(component, &limits, &cache)?.as_secs_f64();

    let (_dir, config) = lab(&[("support", component.to_path_buf())], &cache)?;
    let host = Host::start(config)?;
    let line = json!({"entity": "customer/c1", "fields": {"name": "C1", "status": "active"}, "expect": "absent"});
    let raw = concord::import::parse_jsonl(&line.to_string()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rows = concord::import::check_rows(&host.config().schema, &raw)?;
    concord::import::import(host.store().as_ref(), &rows, "bench", "the languages phase")?;
    samples(&host, "ping", json!({}), WARM).await?;
    let ping = samples(&host, "ping", json!({}), starts).await?;
    // `reads` of none and of READS, alternating, so drift hits both.
    let (mut none, mut many) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        none.push(send(&host, "reads", json!({"n": 0})).await?);
        many.push(send(&host, "reads", json!({"n": READS})).await?);
    }
    let get_us = median(&many).zip(median(&none)).map(|(m, z)| (m - z) / READS as f64);
    samples(&host, "bump", json!({}), WARM).await?;
    let bump = samples(&host, "bump", json!({}), starts.min(500)).await?;
    Ok(json!({
        "bytes": size,
        "first_compile_s": first,
        "cached_load_ms": cached * 1000.0,
        "start_us_p50": median(&ping), "start_us_p99": percentile(&ping, 99.0),
        "get_us": get_us,
        "commit_ms_p50": median(&bump).map(|x| x / 1000.0), "commit_ms_p99": percentile(&bump, 99.0).map(|x| x / 1000.0),
    }))
}

pub async fn run_phase(guests: &Path, starts: usize, rounds: usize) -> anyhow::Result<Json> {
    let polyglot = guests;
    let cache_root = crate::root().join("target/bench-cache");
    let mut out = serde_json::Map::new();
    for (lang, component) in [
        ("rust", guests.join("conformance.wasm")),
        ("python", polyglot.join("conformance-py.wasm")),
        ("typescript", polyglot.join("conformance-ts.wasm")),
    ] {
        eprintln!("   {lang}");
        out.insert(lang.into(), language(&component, starts, rounds, &cache_root, lang).await?);
    }

    // A host with every example agent, each already compiled into the cache.
    let examples = [
        ("sales", guests.join("sales.wasm")),
        ("support", polyglot.join("support.wasm")),
        ("product", polyglot.join("product.wasm")),
    ];
    let cache = cache_root.join("examples");
    let mut host_starts = Vec::new();
    for round in 0..4 {
        let (_dir, config) = lab(&examples, &cache)?;
        let t = Instant::now();
        let host = Host::start(config)?;
        let s = t.elapsed().as_secs_f64();
        drop(host);
        // The first start fills the cache; the others are what is measured.
        if round > 0 {
            host_starts.push(s);
        }
    }
    out.insert("host_start_cached_s".into(), json!(median(&host_starts)));
    Ok(Json::Object(out))
}

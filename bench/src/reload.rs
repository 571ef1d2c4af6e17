//! The `reload` phase: hot reload of `agents/` in a release `concord serve`.
//!
//! - **Drop to first invocation.** A new build of the bench agent is
//!   written beside `agents/bench.wasm` and renamed over it (as `just dev`
//!   and install tools do). The clock runs from the rename to the answer of
//!   the first invocation that ran on the new version (its audit entries
//!   carry the new digest). With the cache missed (bytes never compiled
//!   here) and hit (bytes compiled earlier in the run, so the compiled
//!   component is read back from the cache). It includes the settle time
//!   (`[agents] settle_ms`, default 500 ms), which is reported apart.
//! - **Invocation latency during swaps.** 16 clients invoke the agent
//!   (a `kb.get` and a `kb.commit` each) for a window with no swap, then
//!   for a window of the same length in which new builds are swapped in
//!   one after another (each a compile, the worst case). p50 and p99 of
//!   each window; every request must succeed.
//!
//! The builds differ only by a custom section appended to the component:
//! valid, and another sha256.

use crate::service::{Level, build_concord, concord, load};
use crate::stats::{median, percentile};
use anyhow::{Context, bail};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// The load of the latency windows.
const CLIENTS: usize = 16;

/// The settle time of the server measured (the default).
const SETTLE_MS: u64 = 500;

/// `bytes` with a custom section `concord-bench` holding `tag` appended.
fn build(bytes: &[u8], tag: u32) -> Vec<u8> {
    let name = b"concord-bench";
    let payload = tag.to_le_bytes();
    let mut out = bytes.to_vec();
    let size = 1 + name.len() + payload.len();
    out.extend([0x00, u8::try_from(size).unwrap_or(u8::MAX), u8::try_from(name.len()).unwrap_or(u8::MAX)]);
    out.extend(name);
    out.extend(payload);
    out
}

/// Writes `bytes` beside `dest` and renames it over.
fn install(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dest.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming over {}", dest.display()))?;
    Ok(())
}

/// A small JSON client for the server under test.
struct Api {
    base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Api {
    fn new(base: &str) -> Api {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        Api { base: base.to_string(), client }
    }

    async fn call(&self, method: hyper::Method, path: &str, body: Option<Json>) -> anyhow::Result<Json> {
        use http_body_util::BodyExt;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))?;
        let r = self.client.request(req).await?;
        let status = r.status();
        let bytes = r.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn digest(&self) -> anyhow::Result<String> {
        let list = self.call(hyper::Method::GET, "/v1/agents", None).await?;
        let agent = list["agents"].as_array().and_then(|a| a.iter().find(|a| a["name"] == "bench"));
        Ok(agent.context("bench is in service")?["digest"].as_str().context("a digest")?.to_string())
    }

    /// Invokes the bench agent once; returns the digest its audit entries carry.
    async fn invoke_digest(&self) -> anyhow::Result<String> {
        let body = json!({ "kind": "bench", "body": { "op": "commits", "entity": "counter/reload", "n": 1 } });
        let a = self.call(hyper::Method::POST, "/v1/invoke/bench", Some(body)).await?;
        if a["outcome"] != "ok" {
            bail!("an invocation failed: {a}");
        }
        let id = a["invocation"].as_u64().context("an invocation id")?;
        let entries = self.call(hyper::Method::GET, &format!("/v1/audit?invocation={id}&limit=1000"), None).await?;
        let digests: std::collections::BTreeSet<&str> =
            entries["entries"].as_array().context("entries")?.iter().filter_map(|e| e["digest"].as_str()).collect();
        match digests.len() {
            1 => Ok(digests.into_iter().next().unwrap_or_default().to_string()),
            n => bail!("invocation {id} ran on {n} versions: {digests:?}"),
        }
    }

    /// The compiled-component cache's (hits, misses), from `/metrics`.
    async fn cache(&self) -> anyhow::Result<(u64, u64)> {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(format!("{}/metrics", self.base)).body(http_body_util::Full::default())?;
        let text = self.client.request(req).await?.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&text);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok()))
                .with_context(|| format!("{name} in /metrics"))
        };
        Ok((value("concord_component_cache_hits_total")?, value("concord_component_cache_misses_total")?))
    }
}

/// Renames `bytes` in and times until an invocation runs on them; checks
/// that the cache was hit (or missed) as expected.
async fn drop_to_first(api: &Api, dest: &Path, bytes: &[u8], expect_hit: bool) -> anyhow::Result<f64> {
    let old = api.digest().await?;
    let (hits, misses) = api.cache().await?;
    let started = Instant::now();
    install(dest, bytes)?;
    let new = loop {
        let d = api.digest().await?;
        if d != old {
            break d;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the new build was not picked up within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let ran_on = api.invoke_digest().await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if ran_on != new {
        bail!("the first invocation after the swap ran on {ran_on}, not {new}");
    }
    let (hits2, misses2) = api.cache().await?;
    let hit = hits2 > hits && misses2 == misses;
    if hit != expect_hit {
        bail!(
            "expected a cache {}, got hits {hits}->{hits2}, misses {misses}->{misses2}",
            if expect_hit { "hit" } else { "miss" }
        );
    }
    Ok(ms)
}

pub async fn run(guests: &Path, rounds: usize, window: Duration) -> anyhow::Result<Json> {
    let release = tokio::task::spawn_blocking(|| build_concord("release")).await??;
    let config = format!("{}\n[server]\nqueue = 4096\n", crate::concord_runs::BENCH_CONFIG);
    let server = concord(&release, guests, &[("bench", "bench_agent")], &config)?;
    let api = Api::new(&server.base);
    let dest = server.dir().join("agents/bench.wasm");
    let original = std::fs::read(guests.join("bench_agent.wasm"))?;

    // Cache missed: a build never seen; hit: back to one compiled before.
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let fresh = build(&original, 1_000 + u32::try_from(round)?);
        miss.push(drop_to_first(&api, &dest, &fresh, false).await?);
        hit.push(drop_to_first(&api, &dest, &original, true).await?);
        eprintln!("   drop to first invocation, round {round}: miss {:.0} ms, hit {:.0} ms", miss[round], hit[round]);
    }

    // Latency: a steady window, then one with swaps one after another.
    let warmup = Duration::from_millis(500);
    let steady = load(&server.base, CLIENTS, warmup, window, crate::service::concord_request).await?;
    let swapping = {
        let base = server.base.clone();
        // The same warm-up as the steady window; swaps start with the
        // measured window.
        let loaded =
            tokio::spawn(async move { load(&base, CLIENTS, warmup, window, crate::service::concord_request).await });
        tokio::time::sleep(warmup).await;
        let until = Instant::now() + window;
        let mut swaps = 0u32;
        while Instant::now() + Duration::from_millis(SETTLE_MS) < until {
            let old = api.digest().await?;
            let started = Instant::now();
            install(&dest, &build(&original, 2_000 + swaps))?;
            // Polled every 20 ms: a light extra load beside the 16 clients.
            while api.digest().await? == old {
                if started.elapsed() > Duration::from_secs(120) {
                    bail!("swap {swaps} was not picked up within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            swaps += 1;
        }
        let level: Level = loaded.await??;
        (level, swaps)
    };
    let (during, swaps) = swapping;
    eprintln!(
        "   {CLIENTS} clients: steady p99 {:.2} ms; during {swaps} swaps p99 {:.2} ms",
        percentile(&steady.lat_ms, 99.0).unwrap_or(0.0),
        percentile(&during.lat_ms, 99.0).unwrap_or(0.0)
    );
    let failed = steady.failed + during.failed;
    Ok(json!({
        "settle_ms": SETTLE_MS,
        "rounds": rounds,
        "drop_to_first_ms": {
            "miss": { "median": median(&miss), "max": percentile(&miss, 100.0), "all": miss },
            "hit": { "median": median(&hit), "max": percentile(&hit, 100.0), "all": hit },
        },
        "latency": { "clients": CLIENTS, "steady": steady.json(), "during_swaps": during.json(), "swaps": swaps },
        "failed": failed,
        "check": if failed == 0 { "ok" } else { "requests failed during the swaps" },
    }))
}

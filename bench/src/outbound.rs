//! The `outbound` phase: an agent's GET through the host (`wasi:http`:
//! the check, the audit entry, a fresh connection, the response read
//! whole) against reqwest calling the same loopback server directly from
//! this process, in the same run, rounds alternating so drift hits both.
//!
//! The host opens a connection per request (it keeps no pool across an
//! agent's requests, so nothing of one invocation's leaks to the next); the
//! baseline is reqwest both ways, without a pool (the same work on the wire)
//! and with one (what a native client that keeps connections does). The
//! added cost is the host's median against the first.

use crate::concord_runs::{Lab, run};
use crate::stats::{median, percentile};
use anyhow::bail;
use serde_json::{Value as Json, json};
use std::path::Path;
use std::time::Instant;

/// A server on loopback that answers every request with a small body.
async fn server() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok: a small answer" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

pub async fn run_phase(guests: &Path, requests: u64, rounds: usize) -> anyhow::Result<Json> {
    let addr = server().await?;
    let url = format!("http://{addr}/ok");
    let config = format!(
        "{}\n[agents.bench]\nhttp = [\"http://{addr}\"]\n",
        crate::concord_runs::BENCH_CONFIG.replace("[limits]\n", "[limits]\nmax_http_requests = 10_000\n")
    );
    let lab = Lab::new(guests, &[("bench", "bench_agent")], &config)?;
    let host = &lab.host;
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let pooled = reqwest::Client::builder().build()?;
    let direct = |client: reqwest::Client, url: String, n: u64| async move {
        let mut lat = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t = Instant::now();
            let r = client.get(&url).send().await?;
            if r.status() != 200 {
                bail!("GET {url}: {}", r.status());
            }
            r.bytes().await?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        anyhow::Ok(lat)
    };
    // Warm both: the component's first instances, the server's accept loop.
    run(host, json!({ "op": "http_gets", "url": url, "n": 20 })).await?;
    direct(fresh.clone(), url.clone(), 20).await?;
    let (mut host_lat, mut fresh_lat, mut pooled_lat) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let r = run(host, json!({ "op": "http_gets", "url": url, "n": requests })).await?;
        if r.ok != requests {
            bail!("the agent made {} requests, not {requests}", r.ok);
        }
        host_lat.extend(r.lat_us);
        fresh_lat.extend(direct(fresh.clone(), url.clone(), requests).await?);
        pooled_lat.extend(direct(pooled.clone(), url.clone(), requests).await?);
    }
    let audited = host
        .store()
        .audit(&concord::audit::AuditFilter { call: Some("http.request".into()), ..Default::default() })?
        .len();
    if audited != host_lat.len() + 20 {
        bail!("{audited} http.request audit entries for {} requests", host_lat.len() + 20);
    }
    let (h, f, p) =
        (median(&host_lat).unwrap_or(0.0), median(&fresh_lat).unwrap_or(0.0), median(&pooled_lat).unwrap_or(0.0));
    Ok(json!({
        "requests": host_lat.len(), "audited": audited,
        "host_us_p50": h, "host_us_p99": percentile(&host_lat, 99.0),
        "reqwest_fresh_us_p50": f, "reqwest_fresh_us_p99": percentile(&fresh_lat, 99.0),
        "reqwest_pooled_us_p50": p,
        "added_us_p50": h - f,
    }))
}

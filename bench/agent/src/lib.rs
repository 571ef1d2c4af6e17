//! The benchmark agent (see `bench/`): runs one loop of host calls and
//! reports what it saw. Each loop is what a real agent does, minus the
//! business logic, so the host's cost is all that is measured.
//!
//! Body: `{"op": ..., "entity": "kind/id", "n": N}`, with `op` one of
//! - `noop`: nothing (invocation start and end, for the start benchmark);
//! - `gets`: `n` audited `kb.get` calls of `entity`;
//! - `commits`: read `entity` once (creating it if absent), then `n` commits
//!   in a row, each on the version the last one returned: no conflicts
//!   unless someone else writes the entity;
//! - `increments`: `n` successful increments of `entity.n`: read, add one,
//!   commit on the version read; on a conflict, count it, re-read, retry.
//! - `http_gets`: `n` outbound `GET url` requests through the host
//!   (`wasi:http`), each timed in the guest (`lat_us`).
//!
//! The report is JSON: `{"ok": successes, "conflicts": c, "lat_us": [...]}`,
//! with one latency per successful commit, timed in the guest around the
//! host call (so it includes everything the agent waits for: the host,
//! the group commit and the fsync).

use concord_agent::{Entity, EntityRef, Expect, Handler, Message, Value, Write, WriteError, describe, kb};
use serde_json::json;
use std::time::Instant;

struct Bench;

fn entity(body: &serde_json::Value) -> Result<EntityRef, String> {
    let s = body["entity"].as_str().ok_or("the body needs an `entity`")?;
    let (k, i) = s.split_once('/').ok_or("entity must be kind/id")?;
    Ok(concord_agent::entity(k, i))
}

/// Reads `e`, creating it (with `n = 0`) if it does not exist yet.
fn read_or_create(e: &EntityRef) -> Result<Entity, String> {
    if let Some(found) = kb::get(e)? {
        return Ok(found);
    }
    match kb::commit(&[Write::create(e.clone()).set("n", Value::Integer(0))], "bench: create") {
        Ok(_) | Err(WriteError::Conflict(_)) => kb::get(e)?.ok_or_else(|| format!("{e:?} vanished")),
        Err(other) => Err(describe(&other)),
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl Handler for Bench {
    fn handle(message: Message) -> Result<String, String> {
        let body = message.body_json();
        let n = body["n"].as_u64().unwrap_or(1);
        let (mut ok, mut conflicts, mut lat_us) = (0u64, 0u64, Vec::new());
        match body["op"].as_str().unwrap_or("noop") {
            "noop" => {}
            "gets" => {
                let e = entity(&body)?;
                for _ in 0..n {
                    kb::get(&e)?;
                    ok += 1;
                }
            }
            "commits" => {
                let e = entity(&body)?;
                let mut version = read_or_create(&e)?.version;
                for i in 0..n {
                    let mut w = Write::create(e.clone()).set("n", Value::Integer(i as i64));
                    w.expect = Expect::Version(version);
                    let t = Instant::now();
                    match kb::commit(&[w], "bench: commit") {
                        Ok(v) => {
                            lat_us.push(micros(t));
                            version = v[0];
                            ok += 1;
                        }
                        Err(err) => return Err(describe(&err)),
                    }
                }
            }
            "increments" => {
                let e = entity(&body)?;
                let mut current = read_or_create(&e)?;
                while ok < n {
                    let next = current.integer("n").unwrap_or(0) + 1;
                    let w = Write::update(&current).set("n", Value::Integer(next));
                    let t = Instant::now();
                    match kb::commit(&[w], "bench: increment") {
                        Ok(_) => {
                            lat_us.push(micros(t));
                            ok += 1;
                        }
                        Err(WriteError::Conflict(_)) => conflicts += 1,
                        Err(err) => return Err(describe(&err)),
                    }
                    current = kb::get(&e)?.ok_or("the counter vanished")?;
                }
            }
            "http_gets" => {
                let url = body["url"].as_str().ok_or("http_gets needs a `url`")?;
                for _ in 0..n {
                    let t = Instant::now();
                    let r = concord_agent::http::Request::get(url).no_redirects().send().map_err(|e| e.to_string())?;
                    if r.status != 200 {
                        return Err(format!("GET {url}: status {}", r.status));
                    }
                    lat_us.push(micros(t));
                    ok += 1;
                }
            }
            other => return Err(format!("unknown op `{other}`")),
        }
        Ok(json!({ "ok": ok, "conflicts": conflicts, "lat_us": lat_us }).to_string())
    }
}

concord_agent::export!(Bench);

//! Test-only agent: runs the host calls listed in its message body, so that
//! tests control exactly which calls are made.
//!
//! Body: `{"ops": [op, ...]}`, each op one of
//! - `{"op": "get", "entity": "k/i"}`
//! - `{"op": "commit", "reason": "...", "writes": [{"entity": "k/i",
//!   "expect": "absent" | "read" | N, "set": {"f": json}, "unset": ["f"]}]}`
//!   (`"read"` uses the version of the last `get` of that entity; JSON
//!   strings, integers, floats, booleans and null map to the matching
//!   value, objects and arrays to `json`)
//! - `{"op": "history", "entity": "k/i", "after": N, "limit": N}`
//! - `{"op": "recent", "entity": "k/i", "within_ms": N}`
//! - `{"op": "log", "message": "..."}`
//! - `{"op": "increment", "entity": "k/i", "field": "f", "tries": N}`: read,
//!   add one, commit on that version; on conflict re-read and retry.
//! - `{"op": "act", "entity": "k/i", "kind": "...", "payload": {...},
//!   "based_on": N | "read", "key": "..."}`
//! - `{"op": "lease", "entity": "k/i", "ttl_ms": N}`; a later commit write
//!   with `"fence": "lease"` carries the last token, or `"fence": N`
//! - `{"op": "renew", "entity": "k/i", "token": N | "lease", "ttl_ms": N}`
//! - `{"op": "release", "entity": "k/i", "token": N | "lease"}`
//! - `{"op": "changes", "entity": "k/i"}`: changes since this agent's last read
//! - `{"op": "request_change", "owner": "...", "entity": "k/i", "proposed": {...}}`
//! - `{"op": "resolve", "request": N, "applied": bool, "reason": "..."}`: `{"resolved": true}`
//!   or `{"error": "resolve", "text": ...}`
//! - `{"op": "spin", "ms": N}`: busy for N ms, with no host call
//! - `{"op": "scribble"}`: counts the pages of a 3 MiB static that are not
//!   zero and the runs of this op in this instance, then dirties every page
//!   and counts this run: `{"dirty_pages": N, "runs_before": N}` (both 0 in
//!   a fresh instance)
//!
//! - `{"op": "http", "method": "GET", "url": "...", "headers": {"k": "v"},
//!   "body": "...", "follow": true}`: a request through the SDK's `http`;
//!   `{"status": N, "body": "...", "url": "..."}` or `{"error": "refused" |
//!   "bad_url" | "failed", "text": ...}`
//! - `{"op": "http_abandon", "url": "http://host:port/path"}`: hands a GET
//!   to the host and drops its response future at once: `"abandoned"`
//! - `{"op": "model", "model": "...", "messages": [{"role": "...", "content":
//!   "..."}], "max_tokens": N, "temperature": F}`: `model.complete`;
//!   `{"content", "model", "prompt_tokens", "completion_tokens",
//!   "finish_reason"}` or `{"error": "refused" | "unavailable" | "invalid",
//!   "text": ...}`
//! - `{"op": "memory_holds", "reversed": "..."}`: whether this instance's
//!   linear memory holds the text whose reverse is given anywhere (the text
//!   itself is never built, so looking for it cannot plant it):
//!   `{"found": bool, "bytes_scanned": N}`
//!
//! The report is a JSON array with one result per op.
//!
//! An `event` message (a subscription) flips the entity's `status` between
//! `ping` and `pong`: two probes subscribed to each other loop, which the
//! host's cascade limit must stop.

use concord_agent::{EntityRef, Expect, Field, Handler, Message, Value, Write, WriteError, coord, describe, kb};
use serde_json::{Value as Json, json};
use std::collections::HashMap;

struct Probe;

/// `scribble`'s memory: larger than the part of a pool slot the host
/// resets in place (2 MiB), so both ways of resetting it are seen.
static SCRIBBLE: [std::sync::atomic::AtomicU8; 3 << 20] = [const { std::sync::atomic::AtomicU8::new(0) }; 3 << 20];
static SCRIBBLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn scribble() -> Json {
    use std::sync::atomic::Ordering::Relaxed;
    let pages = SCRIBBLE.chunks(65_536);
    let dirty = pages.clone().filter(|page| page.iter().any(|b| b.load(Relaxed) != 0)).count();
    for page in pages {
        for b in page.iter().step_by(4096) {
            b.store(0xab, Relaxed);
        }
    }
    json!({ "dirty_pages": dirty, "runs_before": SCRIBBLES.fetch_add(1, Relaxed) })
}

fn http(op: &Json) -> Json {
    use concord_agent::http::{HttpError, Request};
    let mut request = Request::new(op["method"].as_str().unwrap_or("GET"), op["url"].as_str().unwrap_or_default());
    for (name, value) in op["headers"].as_object().into_iter().flatten() {
        request = request.header(name, value.as_str().unwrap_or_default());
    }
    if let Some(body) = op["body"].as_str() {
        request = request.body(body);
    }
    if op["follow"] == json!(false) {
        request = request.no_redirects();
    }
    match request.send() {
        Ok(r) => json!({ "status": r.status, "body": r.text(), "url": r.url, "location": r.header("location") }),
        Err(e) => {
            let kind = match &e {
                HttpError::Refused(_) => "refused",
                HttpError::BadUrl(_) => "bad_url",
                HttpError::Failed(_) => "failed",
            };
            json!({ "error": kind, "text": e.to_string() })
        }
    }
}

/// A request handed to the host and given up on before any answer.
fn http_abandon(url: &str) -> Json {
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let Some(rest) = url.strip_prefix("http://") else { return json!({ "error": "http:// URLs only" }) };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let set = request.set_scheme(Some(&Scheme::Http)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(if path.is_empty() { "/" } else { path })).is_ok();
    if !set {
        return json!({ "error": "the host refused the URL's parts" });
    }
    match wasip2::http::outgoing_handler::handle(request, None) {
        Ok(future) => {
            drop(future);
            json!("abandoned")
        }
        Err(e) => json!({ "error": format!("{e:?}") }),
    }
}

fn model(op: &Json) -> Json {
    use concord_agent::model::{self, ModelError, Request};
    let messages = op["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| model::message(m["role"].as_str().unwrap_or("user"), m["content"].as_str().unwrap_or_default()))
        .collect();
    let request = Request {
        model: op["model"].as_str().map(str::to_string),
        messages,
        temperature: op["temperature"].as_f64().map(|t| t as f32),
        max_tokens: op["max_tokens"].as_u64().map(|n| n as u32),
    };
    match model::complete(&request) {
        Ok(c) => json!({
            "content": c.content, "model": c.model, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
        }),
        Err(e) => {
            let kind = match &e {
                ModelError::Refused(_) => "refused",
                ModelError::Unavailable(_) => "unavailable",
                ModelError::Invalid(_) => "invalid",
            };
            json!({ "error": kind, "text": model::describe(&e) })
        }
    }
}

/// Scans all of linear memory for the reverse of `reversed`, comparing
/// byte by byte from the end, so the text sought is never in memory
/// because of the search.
#[allow(unsafe_code)]
fn memory_holds(reversed: &str) -> Json {
    let needle = reversed.as_bytes();
    let size = core::arch::wasm32::memory_size(0) * 65_536;
    let mut found = false;
    // Address 0 is null in Rust; nothing the host writes lives below 1 KiB.
    let mut at = 1024;
    while !found && at + needle.len() <= size {
        // SAFETY: every address below `memory_size` is mapped linear memory
        // of this instance; reading it (volatile, byte by byte) creates no
        // reference and has no side effect.
        found = (0..needle.len())
            .all(|j| unsafe { core::ptr::read_volatile((at + j) as *const u8) } == needle[needle.len() - 1 - j]);
        at += 1;
    }
    json!({ "found": found && !needle.is_empty(), "bytes_scanned": at })
}

fn entity(op: &Json) -> Result<EntityRef, String> {
    let s = op["entity"].as_str().ok_or("op needs an `entity`")?;
    let (k, i) = s.split_once('/').ok_or("entity must be kind/id")?;
    Ok(concord_agent::entity(k, i))
}

fn value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => n.as_i64().map_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0)), Value::Integer),
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

fn error_json(e: &WriteError) -> Json {
    match e {
        WriteError::Conflict(c) => json!({
            "error": "conflict", "text": describe(e), "current_version": c.current_version,
            "changed_by": c.changed_by, "changed_fields": c.changed_fields, "events_since": c.events_since.len(),
        }),
        WriteError::Forbidden(f) => {
            json!({ "error": "forbidden", "text": describe(e), "field": f.field, "writers": f.writers })
        }
        WriteError::Invalid(m) => json!({ "error": "invalid", "text": m }),
        WriteError::Deferred(d) => json!({ "error": "deferred", "text": describe(e), "rule": d.rule }),
        WriteError::Denied(d) => json!({ "error": "denied", "text": describe(e), "rule": d.rule }),
        WriteError::Pinned(p) => json!({ "error": "pinned", "text": describe(e), "field": p.field, "by": p.by }),
        WriteError::Leased(l) => json!({ "error": "leased", "text": describe(e), "holder": l.holder }),
        WriteError::StaleFence(f) => json!({ "error": "stale_fence", "text": describe(e), "current": f.current }),
    }
}

/// A subscription event: flip `status` between ping and pong.
fn flip(message: &Message) -> Result<String, String> {
    let e = message.entity.clone().ok_or("event without an entity")?;
    let current = kb::get(&e)?.ok_or("entity missing")?;
    let next = if current.text("status") == Some("ping") { "pong" } else { "ping" };
    let w = Write::update(&current).set("status", Value::Text(next.into()));
    match kb::commit(&[w], "flip") {
        Ok(v) => Ok(format!("status -> {next} (version {})", v[0])),
        Err(err) => Err(describe(&err)),
    }
}

impl Handler for Probe {
    fn handle(message: Message) -> Result<String, String> {
        if message.kind == "event" {
            return flip(&message);
        }
        let body = message.body_json();
        let ops = body["ops"].as_array().cloned().unwrap_or_default();
        let mut read_versions: HashMap<String, u64> = HashMap::new();
        let mut last_lease: Option<u64> = None;
        let mut out = Vec::new();
        for op in &ops {
            let result = match op["op"].as_str().unwrap_or("") {
                "get" => {
                    let e = entity(op)?;
                    match kb::get(&e) {
                        Ok(Some(found)) => {
                            read_versions.insert(e.to_string(), found.version);
                            let fields: serde_json::Map<String, Json> =
                                found.fields.iter().map(|f| (f.name.clone(), json!(f.value.to_string()))).collect();
                            json!({ "version": found.version, "fields": fields, "updated_by": found.updated_by })
                        }
                        Ok(None) => json!(null),
                        Err(m) => json!({ "error": "read", "text": m }),
                    }
                }
                "commit" => {
                    let mut writes = Vec::new();
                    for w in op["writes"].as_array().cloned().unwrap_or_default() {
                        let e = entity(&w)?;
                        let expect = match &w["expect"] {
                            Json::String(s) if s == "absent" => Expect::Absent,
                            Json::String(s) if s == "read" => {
                                Expect::Version(*read_versions.get(&e.to_string()).ok_or("expect=read without a get")?)
                            }
                            n => Expect::Version(n.as_u64().ok_or("expect must be absent, read or a version")?),
                        };
                        let set = w["set"]
                            .as_object()
                            .map(|m| m.iter().map(|(k, v)| Field { name: k.clone(), value: value(v) }).collect())
                            .unwrap_or_default();
                        let unset = w["unset"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                            .unwrap_or_default();
                        let fence = match &w["fence"] {
                            Json::String(s) if s == "lease" => Some(last_lease.ok_or("fence=lease without a lease")?),
                            n => n.as_u64(),
                        };
                        writes.push(Write { entity: e, expect, set, unset, fence });
                    }
                    match kb::commit(&writes, op["reason"].as_str().unwrap_or("probe")) {
                        Ok(versions) => json!({ "versions": versions }),
                        Err(e) => error_json(&e),
                    }
                }
                "history" => {
                    let e = entity(op)?;
                    match kb::history(&e, op["after"].as_u64().unwrap_or(0), op["limit"].as_u64().unwrap_or(100) as u32)
                    {
                        Ok(events) => json!(
                            events
                                .iter()
                                .map(|ev| json!({"seq": ev.seq, "version": ev.version, "agent": ev.agent}))
                                .collect::<Vec<_>>()
                        ),
                        Err(m) => json!({ "error": "read", "text": m }),
                    }
                }
                "recent" => {
                    let e = entity(op)?;
                    match kb::recent(&e, op["within_ms"].as_u64().unwrap_or(60_000)) {
                        Ok(events) => {
                            json!(events.iter().map(|ev| json!({"seq": ev.seq, "agent": ev.agent})).collect::<Vec<_>>())
                        }
                        Err(m) => json!({ "error": "read", "text": m }),
                    }
                }
                "scribble" => scribble(),
                "http" => http(op),
                "http_abandon" => http_abandon(op["url"].as_str().unwrap_or_default()),
                "model" => model(op),
                "memory_holds" => memory_holds(op["reversed"].as_str().unwrap_or_default()),
                "spin" => {
                    // Busy for `ms` of wall-clock time, making no host call:
                    // an invocation that is simply slow.
                    let ms = op["ms"].as_u64().unwrap_or(0);
                    let started = std::time::Instant::now();
                    while started.elapsed() < std::time::Duration::from_millis(ms) {
                        std::hint::spin_loop();
                    }
                    json!({ "spun_ms": started.elapsed().as_millis() as u64 })
                }
                "log" => {
                    concord_agent::info(op["message"].as_str().unwrap_or(""));
                    json!("logged")
                }
                "increment" => {
                    let e = entity(op)?;
                    let field = op["field"].as_str().ok_or("increment needs a `field`")?;
                    let tries = op["tries"].as_u64().unwrap_or(100);
                    let mut result = json!({ "error": "gave up" });
                    for attempt in 1..=tries {
                        let current = kb::get(&e)?.ok_or_else(|| format!("{e} does not exist"))?;
                        let n = current.integer(field).unwrap_or(0);
                        let w = Write::update(&current).set(field, Value::Integer(n + 1));
                        match kb::commit(&[w], "increment") {
                            Ok(v) => {
                                result = json!({ "value": n + 1, "version": v[0], "attempts": attempt });
                                break;
                            }
                            Err(WriteError::Conflict(_)) => continue,
                            Err(other) => {
                                result = error_json(&other);
                                break;
                            }
                        }
                    }
                    result
                }
                "act" => {
                    let e = entity(op)?;
                    let based_on = match &op["based_on"] {
                        Json::String(s) if s == "read" => {
                            *read_versions.get(&e.to_string()).ok_or("based_on=read without a get")?
                        }
                        n => n.as_u64().ok_or("based_on must be read or a version")?,
                    };
                    let payload = op.get("payload").cloned().unwrap_or(json!({})).to_string();
                    let kind = op["kind"].as_str().unwrap_or("test.action");
                    match coord::act(kind, &payload, &e, based_on, op["key"].as_str()) {
                        Ok(id) => json!({ "action": id }),
                        Err(err) => error_json(&err),
                    }
                }
                "lease" => {
                    let e = entity(op)?;
                    match coord::lease(&e, op["ttl_ms"].as_u64().unwrap_or(60_000)) {
                        Ok(l) => {
                            last_lease = Some(l.token);
                            json!({ "token": l.token, "expires_at_ms": l.expires_at_ms })
                        }
                        Err(err) => error_json(&err),
                    }
                }
                "renew" => {
                    let e = entity(op)?;
                    let token = match &op["token"] {
                        Json::String(s) if s == "lease" => last_lease.ok_or("token=lease without a lease")?,
                        n => n.as_u64().ok_or("token must be lease or a number")?,
                    };
                    match coord::renew(&e, token, op["ttl_ms"].as_u64().unwrap_or(60_000)) {
                        Ok(l) => json!({ "token": l.token, "expires_at_ms": l.expires_at_ms }),
                        Err(err) => error_json(&err),
                    }
                }
                "release" => {
                    let e = entity(op)?;
                    let token = match &op["token"] {
                        Json::String(s) if s == "lease" => last_lease.ok_or("token=lease without a lease")?,
                        n => n.as_u64().ok_or("token must be lease or a number")?,
                    };
                    json!({ "released": coord::release(&e, token) })
                }
                "changes" => {
                    let e = entity(op)?;
                    match coord::changes_since_read(&e) {
                        Ok(events) => json!(
                            events
                                .iter()
                                .map(|ev| json!({"seq": ev.seq, "agent": ev.agent, "kind": ev.kind}))
                                .collect::<Vec<_>>()
                        ),
                        Err(m) => json!({ "error": "read", "text": m }),
                    }
                }
                "request_change" => {
                    let e = entity(op)?;
                    let proposed: Vec<Field> = op["proposed"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| Field { name: k.clone(), value: value(v) }).collect())
                        .unwrap_or_default();
                    match coord::request_change(
                        op["owner"].as_str().unwrap_or(""),
                        &e,
                        &proposed,
                        op["reason"].as_str().unwrap_or("probe"),
                    ) {
                        Ok(id) => json!({ "request": id }),
                        Err(err) => error_json(&err),
                    }
                }
                "resolve" => {
                    let id = op["request"].as_u64().ok_or("request must be a number")?;
                    match coord::resolve_change(
                        id,
                        op["applied"].as_bool().unwrap_or(false),
                        op["reason"].as_str().unwrap_or("probe"),
                    ) {
                        Ok(()) => json!({ "resolved": true }),
                        Err(m) => json!({ "error": "resolve", "text": m }),
                    }
                }
                other => return Err(format!("unknown op `{other}`")),
            };
            out.push(result);
        }
        Ok(Json::Array(out).to_string())
    }
}

concord_agent::export!(Probe);

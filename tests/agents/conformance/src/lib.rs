//! The agent conformance suite, in Rust: every behaviour of
//! `tests/conformance/SPEC.md`, one message kind each. The Python and
//! TypeScript versions (`tests/agents/conformance-py`, `conformance-ts`)
//! answer the same messages with the same reports, and
//! `tests/e2e/agent_conformance.rs` runs one set of assertions on all three.

use concord_agent::{Entity, EntityRef, Expect, Handler, Message, Value, Write, WriteError, coord, kb, log};
use serde_json::{Value as Json, json};

struct Conformance;

fn read(target: &EntityRef) -> Result<Entity, String> {
    kb::get(target)?.ok_or_else(|| format!("{}/{} does not exist", target.kind, target.id))
}

/// The name of a refusal's variant, as the spec spells it.
fn variant(e: &WriteError) -> &'static str {
    match e {
        WriteError::Conflict(_) => "conflict",
        WriteError::Forbidden(_) => "forbidden",
        WriteError::Deferred(_) => "deferred",
        WriteError::Denied(_) => "denied",
        WriteError::Pinned(_) => "pinned",
        WriteError::Leased(_) => "leased",
        WriteError::StaleFence(_) => "stale-fence",
        WriteError::Invalid(_) => "invalid",
    }
}

fn unexpected(step: &str, got: Result<impl std::fmt::Debug, WriteError>) -> String {
    match got {
        Ok(v) => format!("{step}: expected a refusal, got {v:?}"),
        Err(e) => format!("{step}: expected another refusal, got {}", concord_agent::describe(&e)),
    }
}

fn commit_retry(target: &EntityRef) -> Result<Json, String> {
    let first = read(target)?;
    let bump = |e: &Entity| e.integer("open_tickets").unwrap_or(0) + 1;
    let mut stale = Write::update(&first).set("open_tickets", Value::Integer(bump(&first)));
    stale.expect = Expect::Version(first.version - 1);
    let conflict = match kb::commit(&[stale], "conformance: a stale commit") {
        Err(WriteError::Conflict(c)) => c,
        other => return Err(unexpected("the stale commit", other)),
    };
    let fresh = read(target)?;
    let open = bump(&fresh);
    let w = Write::update(&fresh).set("open_tickets", Value::Integer(open));
    let versions = kb::commit(&[w], "conformance: the retry").map_err(|e| concord_agent::describe(&e))?;
    Ok(json!({
        "conflict": {
            "current_version": conflict.current_version,
            "changed_by": conflict.changed_by,
            "changed_fields": conflict.changed_fields,
            "events": conflict.events_since.len(),
        },
        "version": versions[0],
        "open_tickets": open,
    }))
}

fn forbidden(target: &EntityRef) -> Result<Json, String> {
    let e = read(target)?;
    let w = Write::update(&e).set("deal_stage", Value::Text("won".into()));
    match kb::commit(&[w], "conformance: not mine") {
        Err(WriteError::Forbidden(f)) => Ok(json!({ "field": f.field, "agent": f.agent, "writers": f.writers })),
        other => Err(unexpected("writing deal_stage", other)),
    }
}

fn act(target: &EntityRef) -> Result<Json, String> {
    let e = read(target)?;
    let id =
        coord::act("ticket.notify", r#"{"n":1}"#, target, e.version, None).map_err(|e| concord_agent::describe(&e))?;
    match coord::act("ticket.notify", r#"{"n":1}"#, target, e.version - 1, Some("stale")) {
        Err(e) => Ok(json!({ "action": id, "stale": variant(&e) })),
        Ok(other) => Err(format!("an act based on a stale version was recorded as {other}")),
    }
}

fn request_change(target: &EntityRef) -> Result<Json, String> {
    let proposed =
        [concord_agent::Field { name: "deal_stage".into(), value: Value::Text("expansion_candidate".into()) }];
    let id =
        coord::request_change("sales", target, &proposed, "conformance").map_err(|e| concord_agent::describe(&e))?;
    Ok(json!({ "request": id }))
}

fn change_request(target: &EntityRef, body: &Json) -> Result<Json, String> {
    let request = body["request"].as_u64().ok_or("change_request without a request id")?;
    let proposed = body["proposed"].as_object().ok_or("change_request without proposed fields")?;
    let e = read(target)?;
    let mut w = Write::update(&e);
    for (name, value) in proposed {
        w = w.set(name, Value::Text(value.as_str().ok_or("a proposed value that is not text")?.into()));
    }
    let versions = kb::commit(&[w], "conformance: applied").map_err(|e| concord_agent::describe(&e))?;
    coord::resolve_change(request, true, "applied")?;
    Ok(json!({ "applied": request, "version": versions[0] }))
}

fn lease(target: &EntityRef) -> Result<Json, String> {
    let grant = coord::lease(target, 5000).map_err(|e| concord_agent::describe(&e))?;
    let e = read(target)?;
    let w = Write::update(&e).set("last_interaction", Value::Text("leased".into())).fenced(grant.token);
    let fenced = kb::commit(&[w], "conformance: fenced").map_err(|e| concord_agent::describe(&e))?;
    let released = coord::release(target, grant.token);
    let e = read(target)?;
    let w = Write::update(&e).set("last_interaction", Value::Text("late".into())).fenced(grant.token);
    match kb::commit(&[w], "conformance: late") {
        Err(e @ WriteError::StaleFence(_)) => Ok(json!({
            "token": grant.token,
            "fenced_version": fenced[0],
            "released": released,
            "late": variant(&e),
        })),
        other => Err(unexpected("the late fenced commit", other)),
    }
}

fn awareness(target: &EntityRef) -> Result<Json, String> {
    read(target)?;
    let since = coord::changes_since_read(target)?;
    let recent = kb::recent(target, 3_600_000)?;
    let agents: Vec<&str> = recent.iter().map(|e| e.agent.as_str()).collect();
    Ok(json!({ "since_read": since.len(), "recent": recent.len(), "recent_agents": agents }))
}

fn logged() -> Json {
    use log::Level::*;
    for (level, name) in [(Trace, "trace"), (Debug, "debug"), (Info, "info"), (Warn, "warn"), (Error, "error")] {
        log::log(level, &format!("conformance {name}"));
    }
    json!({ "logged": 5 })
}

impl Handler for Conformance {
    fn handle(message: Message) -> Result<String, String> {
        if message.kind == "ping" {
            return Ok(json!({ "pong": true }).to_string());
        }
        let target = message.entity.clone().ok_or("conformance needs an entity")?;
        let report = match message.kind.as_str() {
            "commit_retry" => commit_retry(&target)?,
            "forbidden" => forbidden(&target)?,
            "act" => act(&target)?,
            "request_change" => request_change(&target)?,
            "change_request" => change_request(&target, &message.body_json())?,
            "lease" => lease(&target)?,
            "awareness" => awareness(&target)?,
            "log" => logged(),
            "trap" => panic!("conformance trap"),
            "reads" => {
                let n = message.body_json()["n"].as_u64().unwrap_or(1);
                for _ in 0..n {
                    kb::get(&target)?;
                }
                json!({ "reads": n })
            }
            "bump" => {
                let e = read(&target)?;
                let w =
                    Write::update(&e).set("open_tickets", Value::Integer(e.integer("open_tickets").unwrap_or(0) + 1));
                let versions = kb::commit(&[w], "conformance: bump").map_err(|e| concord_agent::describe(&e))?;
                json!({ "version": versions[0] })
            }
            other => return Err(format!("conformance does not handle {other}")),
        };
        Ok(report.to_string())
    }
}

concord_agent::export!(Conformance);

//! One conformance suite for agents in every language: the behaviours of
//! `tests/conformance/SPEC.md`, asserted the same way against the Rust,
//! Python and TypeScript conformance agents (`tests/agents/conformance*`).
//! Each runs in a host of its own, loaded under the names `support` and
//! `sales`, on a customer the test creates as an operator. Where a report
//! quotes the store (the refusals, the recent events), the expectation is
//! read from the store, not written down.

use crate::common::{Env, FAST_LIMITS, config_text};
use concord::audit::{AuditFilter, Decision, calls};
use concord::import;
use serde_json::{Value as Json, json};

/// The example config, with an action kind for Support.
fn config() -> String {
    config_text(FAST_LIMITS)
        .replace("\"email.upsell\" = [\"sales\"]", "\"email.upsell\" = [\"sales\"]\n\"ticket.notify\" = [\"support\"]")
}

/// An operator's import: creates or updates one entity.
fn import(env: &Env, line: Json) {
    let raw = import::parse_jsonl(&line.to_string()).expect("an import line");
    let rows = import::check_rows(&env.host.config().schema, &raw).expect("valid rows");
    import::import(env.host.store().as_ref(), &rows, "alice", "the conformance test").expect("imported");
}

/// Sends one message as `agent`; the report of a successful invocation.
async fn report(env: &Env, agent: &str, kind: &str) -> Json {
    let inv = env.send(agent, kind, "customer/c1", json!({})).await;
    match &inv.outcome {
        concord::Outcome::Ok(text) => serde_json::from_str(text).unwrap_or_else(|e| panic!("{kind}: {text}: {e}")),
        other => panic!("{kind} as {agent} did not succeed: {other}"),
    }
}

async fn conforms(guest: &str) {
    let env = Env::with_config(&[("support", guest), ("sales", guest)], &config());
    import(&env, json!({"entity": "customer/c1", "fields": {"name": "C1", "status": "active"}, "expect": "absent"}));
    import(&env, json!({"entity": "customer/c1", "fields": {"status": "at_risk"}, "expect": 1}));
    let changer = env.get("customer/c1").expect("c1").updated_by;

    // Read, a stale commit refused with a conflict that explains itself,
    // and the retry on a fresh read.
    let r = report(&env, "support", "commit_retry").await;
    assert_eq!(
        r["conflict"],
        json!({"current_version": 2, "changed_by": changer, "changed_fields": ["status"], "events": 1}),
        "{guest}: {r}"
    );
    assert_eq!((r["version"].clone(), r["open_tickets"].clone()), (json!(3), json!(1)), "{guest}: {r}");
    let c1 = env.get("customer/c1").expect("c1");
    assert_eq!((c1.version, c1.fields.get("open_tickets")), (3, Some(&concord::kb::Value::Integer(1))));

    // A field of another agent's.
    let r = report(&env, "support", "forbidden").await;
    assert_eq!(r, json!({"field": "deal_stage", "agent": "support", "writers": ["sales"]}), "{guest}");

    // An action guarded by the version read; a stale one is refused.
    let r = report(&env, "support", "act").await;
    assert_eq!(r["stale"], "conflict", "{guest}: {r}");
    let actions = env.host.store().actions().expect("actions");
    assert_eq!(actions.len(), 1, "{guest}: only the current act is recorded: {actions:?}");
    assert_eq!((actions[0].id, actions[0].kind.as_str()), (r["action"].as_u64().expect("an id"), "ticket.notify"));

    // A handoff: the owner (the same guest, as sales) applies and resolves.
    let runs = env.dispatch("support", "request_change", "customer/c1", json!({})).await;
    assert_eq!(runs.len(), 2, "{guest}: the request and the owner's answer: {runs:?}");
    let asked: Json = serde_json::from_str(runs[0].outcome.text()).expect("a report");
    let applied: Json = serde_json::from_str(runs[1].outcome.text()).expect("a report");
    assert_eq!((runs[1].agent.as_str(), &applied["applied"]), ("sales", &asked["request"]), "{guest}: {runs:?}");
    let c1 = env.get("customer/c1").expect("c1");
    assert_eq!(applied["version"], json!(c1.version), "{guest}");
    assert_eq!(crate::common::text(&c1, "deal_stage").as_deref(), Some("expansion_candidate"), "{guest}");
    let resolved = env.host.store().history(&"customer/c1".parse().expect("ref"), 0, 1000).expect("history");
    assert!(
        resolved.iter().any(|e| e.kind == concord::kb::EventKind::ChangeResolved && e.agent == "sales"),
        "{guest}: the answer is an event"
    );

    // A lease and its fence: good while held, stale once released.
    let r = report(&env, "support", "lease").await;
    assert_eq!((&r["released"], &r["late"]), (&json!(true), &json!("stale-fence")), "{guest}: {r}");
    let c1 = env.get("customer/c1").expect("c1");
    assert_eq!(
        (json!(c1.version), crate::common::text(&c1, "last_interaction")),
        (r["fenced_version"].clone(), Some("leased".into()))
    );

    // Awareness: nothing since its own read; the recent events as stored.
    let r = report(&env, "support", "awareness").await;
    let events = env.host.store().history(&"customer/c1".parse().expect("ref"), 0, 1000).expect("history");
    let agents: Vec<&str> = events.iter().map(|e| e.agent.as_str()).collect();
    assert_eq!(r, json!({"since_read": 0, "recent": events.len(), "recent_agents": agents}), "{guest}");

    // Five log lines, each an audit entry of its invocation.
    let inv = env.send("support", "log", "customer/c1", json!({})).await;
    assert_eq!(inv.outcome.text(), json!({"logged": 5}).to_string().replace(' ', ""), "{guest}");
    let logged: Vec<String> = env
        .audit(AuditFilter { invocation: Some(inv.id), call: Some(calls::LOG.into()), ..Default::default() })
        .into_iter()
        .map(|e| e.args)
        .collect();
    assert_eq!(logged.len(), 5, "{guest}: {logged:?}");
    for level in ["trace", "debug", "info", "warn", "error"] {
        assert!(logged.iter().any(|a| a.contains(&format!("conformance {level}"))), "{guest}: {level}: {logged:?}");
    }

    // A bug in the agent fails its invocation with the language's own
    // message, audited; the host and the next invocation are unharmed.
    let inv = env.send("support", "trap", "customer/c1", json!({})).await;
    assert!(!inv.outcome.is_ok(), "{guest}: {}", inv.outcome);
    assert!(inv.outcome.text().contains("conformance trap"), "{guest}: {}", inv.outcome);
    let end = env
        .audit(AuditFilter { invocation: Some(inv.id), call: Some(calls::INVOCATION_END.into()), ..Default::default() })
        .pop()
        .expect("an end entry");
    assert!(matches!(end.decision, Decision::Failed | Decision::Trapped), "{guest}: {:?}", end.decision);
    assert!(end.outcome.contains("conformance trap"), "{guest}: {}", end.outcome);

    // What the benchmarks send: no host call, N reads, a read and a commit.
    assert_eq!(report(&env, "support", "ping").await, json!({"pong": true}), "{guest}");
    let inv = env.send("support", "reads", "customer/c1", json!({"n": 3})).await;
    assert_eq!(inv.outcome.text(), r#"{"reads":3}"#, "{guest}");
    let gets = env.audit(AuditFilter { invocation: Some(inv.id), call: Some(calls::GET.into()), ..Default::default() });
    assert_eq!(gets.len(), 3, "{guest}");
    let before = env.get("customer/c1").expect("c1").version;
    assert_eq!(report(&env, "support", "bump").await, json!({"version": before + 1}), "{guest}");

    let inv = env.send("support", "no_such_kind", "customer/c1", json!({})).await;
    assert_eq!(inv.outcome, concord::Outcome::Failed("conformance does not handle no_such_kind".into()), "{guest}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_agent_conforms() {
    conforms("conformance").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_agent_conforms() {
    conforms("conformance-py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_agent_conforms() {
    conforms("conformance-ts").await;
}

//! Coordination guarantees: guarded actions and the outbox, deference
//! rules, pins, handoffs, cascades, leases, replay, revert, and the
//! conflicts report. Real agents, real host, no timing.

use crate::common::{Env, FAST_LIMITS, config_text, message, onboard, text};
use concord::Breakpoint;
use concord::audit::{AuditFilter, Decision, calls};
use concord::kb::{ActionRecord, AtPoint, Value};
use concord::outbox::{JsonlSink, Sink, SinkError};
use concord::{conflicts, operator};
use serde_json::json;
use std::path::PathBuf;

const SALES_SUPPORT: &[(&str, &str)] = &[("sales", "sales"), ("support", "support")];

/// The upsell is an action. Once Support has marked Acme at_risk, the
/// upsell decided on the earlier version is never recorded nor delivered;
/// after the ticket is resolved, a fresh decision goes out exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn the_upsell_action_is_never_delivered_after_at_risk() {
    let env = Env::new(SALES_SUPPORT);
    onboard(&env, "acme").await;
    let bp = Breakpoint::before(calls::ACT, 1);
    let upsell = {
        let (host, bp) = (env.host.clone(), bp.clone());
        tokio::spawn(async move {
            let inv =
                host.invoke_with("sales", message("upsell", "customer/acme", json!({"offer": "Pro"})), bp).await?;
            host.finish(inv).await
        })
    };
    bp.reached().await;
    env.dispatch("support", "escalation", "customer/acme", json!({"ticket": "T-7", "summary": "down"})).await;
    bp.release();
    let runs = upsell.await.expect("task").expect("runs");
    assert!(runs[0].outcome.text().contains("held the upsell"), "{}", runs[0].outcome);
    assert!(env.host.store().actions().expect("actions").is_empty());
    assert!(env.delivered().is_empty(), "nothing reached the sink");

    // While the ticket is open, a fresh upsell is held too (Sales checks,
    // and the support-first rule would defer the action anyway).
    env.dispatch("sales", "upsell", "customer/acme", json!({"offer": "Pro"})).await;
    assert!(env.delivered().is_empty());

    env.dispatch("support", "resolved", "customer/acme", json!({"ticket": "T-7"})).await;
    let runs = env.dispatch("sales", "upsell", "customer/acme", json!({"offer": "Pro"})).await;
    assert!(runs[0].outcome.text().contains("sent the upsell"), "{}", runs[0].outcome);
    let delivered = env.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["kind"], "email.upsell");
    assert_eq!(delivered[0]["payload"]["offer"], "Pro");
}

/// The three rules of the reference case hold, each naming itself in the
/// refusal and the audit; disabled, a rule stops holding.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_rules_hold_and_a_disabled_rule_does_not() {
    async fn check(enabled: bool) {
        // Two more action kinds than the example declares.
        let kinds = config_text(FAST_LIMITS).replace(
            "\"email.upsell\" = [\"sales\"]",
            "\"email.upsell\" = [\"sales\"]\n\"email.renewal_reminder\" = [\"sales\"]\n\"crm.sync\" = [\"support\"]",
        );
        let config =
            if enabled { kinds } else { kinds.replace("effect = \"defer\"", "effect = \"defer\"\nenabled = false") };
        let env = Env::with_config(&[("sales", "probe"), ("support", "probe"), ("product", "probe")], &config);
        let create = json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent",
            "set": {"status": "active", "open_tickets": 0}}]}]);
        env.probe("support", create).await;
        let ticket = json!([{"op": "get", "entity": "customer/acme"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"open_tickets": 1}}]}]);
        env.probe("support", ticket).await;

        // Support first during active tickets: Sales's status writes and upsells wait.
        let sales = json!([{"op": "get", "entity": "customer/acme"},
            {"op": "act", "entity": "customer/acme", "kind": "email.upsell", "based_on": "read"},
            {"op": "act", "entity": "customer/acme", "kind": "email.renewal_reminder", "based_on": "read"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"status": "churned"}}]}]);
        let r = env.probe("sales", sales).await;
        if enabled {
            assert_eq!(r[1]["error"], "deferred", "{r:?}");
            assert_eq!(r[1]["rule"], "support-first-during-tickets");
            assert_eq!(r[3]["error"], "deferred", "{r:?}");
        } else {
            assert!(r[1].get("action").is_some(), "disabled: the upsell is recorded: {r:?}");
            assert!(r[3].get("versions").is_some(), "disabled: the write goes through: {r:?}");
        }
        assert!(r[2].get("action").is_some(), "other action kinds are not covered: {r:?}");

        // Product defers to Support during escalations.
        let escalate = json!([{"op": "get", "entity": "customer/acme"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"status": "at_risk"}}]}]);
        env.probe("support", escalate).await;
        let product = json!([{"op": "get", "entity": "customer/acme"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"beta_programs": ["x"]}}]}]);
        let r = env.probe("product", product).await;
        if enabled {
            assert_eq!(r[1]["rule"], "product-defers-during-escalations", "{r:?}");
        } else {
            assert!(r[1].get("versions").is_some(), "{r:?}");
        }

        // Every agent defers to a human override.
        let store = env.host.store();
        operator::pin(
            store.as_ref(),
            &"customer/acme".parse().expect("ref"),
            &[("name".into(), Value::Text("Acme".into()))],
            "alice",
            "legal hold",
        )
        .expect("pin");
        let act = json!([{"op": "get", "entity": "customer/acme"},
            {"op": "act", "entity": "customer/acme", "kind": "crm.sync", "based_on": "read"}]);
        let r = env.probe("support", act).await;
        if enabled {
            assert_eq!(r[1]["rule"], "human-override", "{r:?}");
            let audited = env.audit(AuditFilter { decision: Some(Decision::Deferred), ..Default::default() });
            let rules: Vec<&str> = audited.iter().filter_map(|e| e.rule.as_deref()).collect();
            assert!(rules.contains(&"rule: support-first-during-tickets"), "{rules:?}");
            assert!(rules.contains(&"rule: product-defers-during-escalations"), "{rules:?}");
            assert!(rules.contains(&"rule: human-override"), "{rules:?}");
        } else {
            assert!(r[1].get("action").is_some(), "{r:?}");
        }
    }
    check(true).await;
    check(false).await;
}

/// A pin refuses every agent write to the field, naming who and why, until
/// it is unpinned. Pins and unpins are events.
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_refuses_agent_writes_until_unpinned() {
    let env = Env::new(&[("sales", "sales"), ("support", "probe")]);
    onboard(&env, "acme").await;
    let acme = "customer/acme".parse().expect("ref");
    let store = env.host.store();
    let pinned = operator::pin(
        store.as_ref(),
        &acme,
        &[("status".into(), Value::Text("active".into()))],
        "alice",
        "CEO promised",
    )
    .expect("pin");
    let write = json!([{"op": "get", "entity": "customer/acme"},
        {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"status": "at_risk", "open_tickets": 1}}]}]);
    let r = env.probe("support", write.clone()).await;
    assert_eq!(r[1]["error"], "pinned", "{r:?}");
    assert_eq!(r[1]["by"], "alice");
    assert!(r[1]["text"].as_str().unwrap_or("").contains("CEO promised"), "{r:?}");
    assert_eq!(env.get("customer/acme").expect("acme").version, pinned.version, "nothing changed");
    let audited = env.audit(AuditFilter { decision: Some(Decision::Pinned), ..Default::default() });
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].peer.as_deref(), Some("human:alice"));

    operator::unpin(store.as_ref(), &acme, &["status".into()], "alice", "resolved").expect("unpin");
    let r = env.probe("support", write).await;
    assert!(r[1].get("versions").is_some(), "after the unpin the write goes through: {r:?}");
    let kinds: Vec<&str> = store.history(&acme, 0, 100).expect("history").iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "pinned", "unpinned", "updated"]);
    // Unpinning what is not pinned is a clear error.
    let e = operator::unpin(store.as_ref(), &acme, &["status".into()], "alice", "again").unwrap_err();
    assert!(e.to_string().contains("is not pinned"), "{e}");
}

/// A handoff: Product asks Sales (the owner) to change `deal_stage`. Sales
/// declines while the customer is at risk and applies it once it is
/// healthy. Both outcomes are events the requester can see; Product never
/// writes the field.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_is_declined_then_applied_by_the_owner() {
    let env = Env::new(&[("sales", "sales"), ("support", "support"), ("product", "product")]);
    onboard(&env, "acme").await;
    env.dispatch("support", "escalation", "customer/acme", json!({"ticket": "T-1", "summary": "x"})).await;

    let runs = env.dispatch("product", "expansion_signal", "customer/acme", json!({"reason": "growth"})).await;
    assert_eq!(runs.len(), 2, "product, then sales with the request: {runs:#?}");
    assert_eq!((runs[1].agent.as_str(), runs[1].causation), ("sales", Some(runs[0].id)));
    assert!(runs[1].outcome.text().contains("declined"), "{}", runs[1].outcome);
    assert_ne!(text(&env.get("customer/acme").expect("acme"), "deal_stage").as_deref(), Some("expansion_candidate"));

    env.dispatch("support", "resolved", "customer/acme", json!({"ticket": "T-1"})).await;
    let runs = env.dispatch("product", "expansion_signal", "customer/acme", json!({"reason": "growth"})).await;
    assert!(runs[1].outcome.text().contains("applied change request"), "{}", runs[1].outcome);
    let acme = env.get("customer/acme").expect("acme");
    assert_eq!(text(&acme, "deal_stage").as_deref(), Some("expansion_candidate"));
    assert_eq!(acme.updated_by, "sales", "the owner wrote it");

    // The requester sees both outcomes in the entity's history.
    let history = env.host.store().history(&"customer/acme".parse().expect("ref"), 0, 100).expect("history");
    let resolved: Vec<(String, bool)> = history
        .iter()
        .filter(|e| e.kind == concord::kb::EventKind::ChangeResolved)
        .map(|e| {
            let d: serde_json::Value = serde_json::from_str(e.detail.as_deref().unwrap_or("{}")).expect("detail");
            (e.agent.clone(), d["applied"].as_bool().unwrap_or_default())
        })
        .collect();
    assert_eq!(resolved, [("sales".to_string(), false), ("sales".to_string(), true)]);
    assert!(history.iter().all(|e| !(e.agent == "product"
        && e.changes.iter().any(|c| c.name == "deal_stage")
        && e.kind.changes_state())));
    // A request to an agent that cannot write the field is refused up front.
    let env2 = Env::new(&[("product", "probe"), ("sales", "sales")]);
    onboard(&env2, "acme").await;
    let r = env2.probe("product", json!([{"op": "request_change", "owner": "support", "entity": "customer/acme", "proposed": {"deal_stage": "x"}}])).await;
    assert_eq!(r[0]["error"], "invalid", "{r:?}");
}

/// Two agents subscribed to each other's changes ping-pong. The cascade is
/// stopped at the depth limit, the stop is audited with the chain, and
/// `--trace` (the causation filter) shows the whole chain.
#[tokio::test(flavor = "multi_thread")]
async fn a_cascade_loop_is_stopped_at_the_depth_limit_and_traced() {
    let config = config_text(&format!("{FAST_LIMITS}max_cascade_depth = 3\n"))
        + "\n[[subscriptions]]\nagent = \"support\"\nkind = \"customer\"\nfields = [\"status\"]\n";
    let env = Env::with_config(&[("sales", "probe"), ("support", "probe")], &config);
    let start = json!({"ops": [{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "ping"}}]}]});
    let runs = env.host.dispatch("sales", message("probe", "", start)).await.expect("dispatch");
    let chain: Vec<(&str, u32)> = runs.iter().map(|r| (r.agent.as_str(), r.depth)).collect();
    assert_eq!(chain, [("sales", 0), ("support", 1), ("sales", 2), ("support", 3)]);
    for pair in runs.windows(2) {
        assert_eq!(pair[1].causation, Some(pair[0].id), "each step is caused by the one before");
    }
    let stops = env.audit(AuditFilter { decision: Some(Decision::Stopped), ..Default::default() });
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0].causation, Some(runs[3].id));
    assert!(stops[0].outcome.contains("sales -> support -> sales -> support -> sales"), "{}", stops[0].outcome);
    assert!(stops[0].outcome.contains("loops"), "{}", stops[0].outcome);

    // The trace of the last step reaches back to the root and the stop.
    let ids: std::collections::BTreeSet<u64> = runs.iter().map(|r| r.id).chain([stops[0].invocation]).collect();
    let traced = env.audit(AuditFilter { trace: Some(ids.clone()), ..Default::default() });
    let starts = traced.iter().filter(|e| e.call == calls::INVOCATION_START).count();
    assert_eq!(starts, 4);
    // And `concord conflicts` sees the ping-pong and the stopped cascade.
    let report = conflicts::analyze(env.host.store().as_ref(), 600_000).expect("report");
    assert_eq!(report.stopped_cascades.seqs, [stops[0].seq]);
    assert_eq!(report.deepest_chain, runs.iter().map(|r| r.id).collect::<Vec<_>>());
    let pp = &report.ping_pongs;
    assert_eq!(pp.len(), 1, "{pp:#?}");
    assert_eq!((pp[0].entity.as_str(), pp[0].field.as_str()), ("customer/acme", "status"));
    assert_eq!(pp[0].agents, ("sales".to_string(), "support".to_string()));
    assert!(pp[0].flips >= 2);
}

/// Leases with fencing tokens: while a lease is held, others' writes are
/// refused; a superseded or expired token is refused; tokens keep growing
/// across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_fencing_token_is_refused() {
    let env = Env::new(&[("sales", "probe"), ("support", "probe")]);
    env.probe("sales", json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "active"}}]}])).await;
    let fenced = |status: &str, fence: serde_json::Value| json!({"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "fence": fence, "set": {"status": status}}]});
    let get = json!({"op": "get", "entity": "customer/acme"});

    // Sales takes a lease and releases it (a "paused holder" whose lease is gone).
    let r = env
        .probe(
            "sales",
            json!([{"op": "lease", "entity": "customer/acme", "ttl_ms": 60000},
        {"op": "release", "entity": "customer/acme", "token": "lease"}]),
        )
        .await;
    let old_token = r[0]["token"].as_u64().expect("token");
    assert_eq!(r[1]["released"], true);
    // Support leases; its token is higher, and Sales can no longer write, with
    // or without the old token.
    let r = env.probe("support", json!([{"op": "lease", "entity": "customer/acme", "ttl_ms": 60000}, get.clone(), fenced("at_risk", json!("lease"))])).await;
    let new_token = r[0]["token"].as_u64().expect("token");
    assert!(new_token > old_token);
    assert!(r[2].get("versions").is_some(), "the holder writes with its token: {r:?}");
    let r = env.probe("sales", json!([get.clone(), fenced("active", json!(old_token))])).await;
    assert_eq!(r[1]["error"], "stale_fence", "{r:?}");
    assert_eq!(r[1]["current"], new_token);
    let r = env.probe("sales", json!([get.clone(), {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"status": "active"}}]}])).await;
    assert_eq!(r[1]["error"], "leased", "{r:?}");
    assert_eq!(r[1]["holder"], "support");
    assert_eq!(text(&env.get("customer/acme").expect("acme"), "status").as_deref(), Some("at_risk"));

    // An expired lease's token is refused too (ttl 0 expires at once).
    let r = env
        .probe(
            "support",
            json!([{"op": "release", "entity": "customer/acme", "token": new_token},
        {"op": "lease", "entity": "customer/acme", "ttl_ms": 0}, get.clone(), fenced("x", json!("lease"))]),
        )
        .await;
    assert_eq!(r[3]["error"], "stale_fence", "{r:?}");
    assert_eq!(r[3]["current"], serde_json::Value::Null);

    // Tokens survive a restart: the next one is still higher.
    let last = r[1]["token"].as_u64().expect("token");
    let env = env.restart();
    let r = env.probe("sales", json!([{"op": "lease", "entity": "customer/acme", "ttl_ms": 1000}])).await;
    assert!(r[0]["token"].as_u64().expect("token") > last, "{r:?}");
}

/// A sink that fails, optionally after really delivering (as a crash after
/// the side effect and before the outbox is updated would).
#[derive(Debug)]
struct CrashingSink {
    inner: Option<JsonlSink>,
}

impl Sink for CrashingSink {
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError> {
        if let Some(inner) = &self.inner {
            inner.deliver(action)?;
        }
        Err(SinkError { sink: "crashing".into(), reason: "simulated crash".into() })
    }
}

fn sink_path(env: &Env) -> PathBuf {
    env.dir.path().join("data/actions.jsonl")
}

/// An action recorded before a crash is delivered after the restart; one
/// that reached the sink just before a crash is redelivered, and the sink
/// keeps it exactly once per idempotency key.
#[tokio::test(flavor = "multi_thread")]
async fn actions_survive_a_crash_and_reach_the_sink_exactly_once() {
    // Crash between record and delivery.
    let config = config_text(FAST_LIMITS);
    let env = Env::with_sink(SALES_SUPPORT, &config, Box::new(CrashingSink { inner: None }));
    onboard(&env, "acme").await;
    env.dispatch("sales", "upsell", "customer/acme", json!({"offer": "Pro"})).await;
    assert_eq!(env.host.store().pending_actions(10).expect("outbox").len(), 1, "recorded, not delivered");
    assert!(env.delivered().is_empty());
    let env = env.restart();
    assert_eq!(env.delivered().len(), 1, "delivered at start");
    assert!(env.host.store().pending_actions(10).expect("outbox").is_empty());
    let env = env.restart();
    assert_eq!(env.delivered().len(), 1, "not delivered twice");

    // Crash after the sink wrote it, before the outbox knew.
    let path = sink_path(&env);
    let crashing = CrashingSink { inner: Some(JsonlSink::open(&path).expect("sink")) };
    let env = env.restart_with_sink(Box::new(crashing));
    env.dispatch("support", "escalation", "customer/acme", json!({"ticket": "T", "summary": "s"})).await;
    env.dispatch("support", "resolved", "customer/acme", json!({"ticket": "T"})).await;
    env.dispatch("sales", "upsell", "customer/acme", json!({"offer": "Max"})).await;
    assert_eq!(env.delivered().len(), 2, "the sink has it");
    assert_eq!(env.host.store().pending_actions(10).expect("outbox").len(), 1, "the outbox does not know");
    let env = env.restart();
    let delivered = env.delivered();
    assert_eq!(delivered.len(), 2, "redelivered, and kept once by its key: {delivered:?}");
    let keys: std::collections::BTreeSet<&str> =
        delivered.iter().filter_map(|d| d["idempotency_key"].as_str()).collect();
    assert_eq!(keys.len(), 2);
    assert!(env.host.store().pending_actions(10).expect("outbox").is_empty());
}

/// Replay rebuilds the projection from the events and finds it equal; the
/// state at any earlier seq is the fold of the events up to it.
#[tokio::test(flavor = "multi_thread")]
async fn replay_equals_the_projection_and_the_past_is_readable() {
    let env = Env::new(&[("sales", "sales"), ("support", "support"), ("product", "product")]);
    let script = concord::script::Script::load(&crate::common::root().join("scenarios/acme.jsonl")).expect("script");
    concord::script::run(env.host.clone(), &script, |_| {}).await.expect("runs");
    let store = env.host.store();
    let report = store.replay().expect("replay");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert!(report.events > 10 && report.entities == 1, "{report:?}");

    let acme = "customer/acme".parse().expect("ref");
    let history = store.history(&acme, 0, 1000).expect("history");
    let escalation = history.iter().find(|e| e.agent == "support").expect("support event");
    let then = store.get_at(&acme, AtPoint::Seq(escalation.seq)).expect("read").expect("existed");
    assert_eq!(then.fields.get("status"), Some(&Value::Text("at_risk".into())));
    assert_eq!(then.version, escalation.version);
    assert_eq!(store.get_at(&acme, AtPoint::Seq(0)).expect("read"), None, "before the first event");
    let now = store.get_at(&acme, AtPoint::Seq(u64::MAX)).expect("read");
    assert_eq!(now, store.get(&acme).expect("read"));
}

/// Revert appends a compensating event that restores the earlier values;
/// history is not edited. A revert that later events depend on is refused
/// with the list of them, unless forced.
#[tokio::test(flavor = "multi_thread")]
async fn revert_restores_earlier_values_as_new_events() {
    let env = Env::new(SALES_SUPPORT);
    onboard(&env, "acme").await;
    env.dispatch("support", "escalation", "customer/acme", json!({"ticket": "T-1", "summary": "x"})).await;
    let acme = "customer/acme".parse().expect("ref");
    let store = env.host.store();
    let before = store.history(&acme, 0, 100).expect("history");
    let escalation = before.iter().find(|e| e.agent == "support").expect("escalation").clone();

    // The escalation is the newest change to its fields: it can be reverted.
    let reverted = operator::revert(store.as_ref(), escalation.seq, "alice", "false alarm", false).expect("revert");
    assert_eq!(reverted.kind, concord::kb::EventKind::Reverted);
    let now = env.get("customer/acme").expect("acme");
    assert_eq!(text(&now, "status").as_deref(), Some("active"));
    assert_eq!(now.fields.get("open_tickets"), None, "a field the event created is removed again");
    let after = store.history(&acme, 0, 100).expect("history");
    assert_eq!(after[..before.len()], before[..], "history is only appended to");
    assert_eq!(after.len(), before.len() + 1);

    // The onboarding is depended on by later events: refused, then forced.
    let e = operator::revert(store.as_ref(), before[0].seq, "alice", "oops", false).unwrap_err();
    assert!(e.to_string().contains("later events depend on event 1") && e.to_string().contains("--force"), "{e}");
    assert_eq!(store.history(&acme, 0, 100).expect("history").len(), after.len(), "nothing written");
    operator::revert(store.as_ref(), before[0].seq, "alice", "oops", true).expect("forced");
    assert!(!env.get("customer/acme").expect("acme").fields.contains_key("name"));
    assert!(store.replay().expect("replay").differences.is_empty());
    let audited = env.audit(AuditFilter { call: Some(calls::REVERT.into()), ..Default::default() });
    assert_eq!(audited.len(), 2);
    assert_eq!(audited[0].agent, "human:alice");
}

/// "What changed since I last read it": each agent has its own cursor.
#[tokio::test(flavor = "multi_thread")]
async fn changes_since_last_read_follow_each_agent() {
    let env = Env::new(&[("sales", "probe"), ("support", "probe")]);
    env.probe("sales", json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "active"}}]}])).await;
    let r = env
        .probe("sales", json!([{"op": "get", "entity": "customer/acme"}, {"op": "changes", "entity": "customer/acme"}]))
        .await;
    assert_eq!(r[1], json!([]), "nothing since the read");
    env.probe(
        "support",
        json!([{"op": "get", "entity": "customer/acme"},
        {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"open_tickets": 2}}]}]),
    )
    .await;
    let r = env
        .probe(
            "sales",
            json!([{"op": "changes", "entity": "customer/acme"}, {"op": "changes", "entity": "customer/acme"}]),
        )
        .await;
    assert_eq!(r[0].as_array().map(Vec::len), Some(1), "{r:?}");
    assert_eq!(r[0][0]["agent"], "support");
    assert_eq!(r[1], json!([]), "the call moves the cursor");
}

/// `concord conflicts` finds a ping-pong that agents provoke by writing a
/// field back and forth, and counts refusals per pair with their seqs.
#[tokio::test(flavor = "multi_thread")]
async fn conflicts_report_finds_a_provoked_ping_pong() {
    let env = Env::new(&[("sales", "probe"), ("support", "probe")]);
    env.probe("sales", json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "active"}}]}])).await;
    for (agent, status) in [("support", "at_risk"), ("sales", "active"), ("support", "at_risk"), ("sales", "active")] {
        env.probe(
            agent,
            json!([{"op": "get", "entity": "customer/acme"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"status": status}}]}]),
        )
        .await;
    }
    // And one stale write, for the refusal counts.
    env.probe(
        "sales",
        json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": 1, "set": {"status": "x"}}]}]),
    )
    .await;
    let report = conflicts::analyze(env.host.store().as_ref(), 600_000).expect("report");
    assert_eq!(report.ping_pongs.len(), 1, "{report:#?}");
    let p = &report.ping_pongs[0];
    assert_eq!((p.field.as_str(), p.flips), ("status", 3));
    assert_eq!(p.events, [2, 3, 4, 5]);
    let stale = &report.stale["sales"];
    assert_eq!(stale.count, 1);
    let conflict = env.audit(AuditFilter { decision: Some(Decision::Conflict), ..Default::default() });
    assert_eq!(stale.seqs, [conflict[0].seq]);
    assert!(report.by_pair.contains_key("sales vs sales, support: conflict"), "{:?}", report.by_pair.keys());
}

/// `get --at TIME`: the state at a wall-clock time.
#[tokio::test(flavor = "multi_thread")]
async fn the_past_is_readable_by_time() {
    let env = Env::new(SALES_SUPPORT);
    onboard(&env, "acme").await;
    let acme: concord::kb::EntityRef = "customer/acme".parse().expect("ref");
    let created = env.get("customer/acme").expect("acme");
    env.dispatch("support", "escalation", "customer/acme", json!({"ticket": "T", "summary": "s"})).await;
    let store = env.host.store();
    let escalated =
        store.history(&acme, 0, 100).expect("history").into_iter().find(|e| e.agent == "support").expect("event");
    assert!(escalated.at_ms >= created.updated_at_ms);
    let then = store.get_at(&acme, AtPoint::Time(created.updated_at_ms)).expect("read").expect("existed");
    if escalated.at_ms > created.updated_at_ms {
        assert_eq!(text(&then, "status").as_deref(), Some("active"));
    }
    assert_eq!(store.get_at(&acme, AtPoint::Time(created.updated_at_ms - 1)).expect("read"), None);
    let now = store.get_at(&acme, AtPoint::Time(u64::MAX)).expect("read");
    assert_eq!(now, store.get(&acme).expect("read"));
}

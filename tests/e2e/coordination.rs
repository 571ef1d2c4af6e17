//! Versions, conflicts, ownership and atomicity, on real agents.

use crate::common::{Env, message, onboard, text};
use concord::Breakpoint;
use concord::audit::{AuditFilter, Decision, calls};
use serde_json::json;

/// The reference case. Sales reads Acme (active) and decides to upsell;
/// Support then marks Acme at_risk; Sales's upsell email (a guarded action)
/// rests on the old version, so the host refuses it with a conflict naming
/// Support and the changed fields. Sales re-reads and does not upsell.
#[tokio::test(flavor = "multi_thread")]
async fn the_race_sales_upsell_after_support_escalation_is_refused_and_reconsidered() {
    let env = Env::new(&[("sales", "sales"), ("support", "support")]);
    onboard(&env, "acme").await;
    let before = env.get("customer/acme").expect("acme exists");

    // Sales runs until it is about to ask for the upsell email.
    let bp = Breakpoint::before(calls::ACT, 1);
    let sales = {
        let (host, bp) = (env.host.clone(), bp.clone());
        tokio::spawn(async move {
            host.invoke_with("sales", message("upsell", "customer/acme", json!({"offer": "Enterprise"})), bp).await
        })
    };
    bp.reached().await;
    // Sales has read Acme and is paused: nothing it decided is in the KB.
    assert_eq!(env.get("customer/acme").expect("acme").version, before.version);

    let support =
        env.send("support", "escalation", "customer/acme", json!({"ticket": "T-1", "summary": "outage"})).await;
    assert!(support.outcome.is_ok(), "{}", support.outcome);
    bp.release();
    let sales = sales.await.expect("task").expect("invocation");

    // Sales reconsidered on fresh data and held the upsell.
    let report = sales.outcome.text().to_string();
    assert!(sales.outcome.is_ok(), "{}", sales.outcome);
    assert!(report.contains("held the upsell") && report.contains("at_risk"), "{report}");
    let acme = env.get("customer/acme").expect("acme");
    assert_eq!(text(&acme, "status").as_deref(), Some("at_risk"));
    assert_eq!(text(&acme, "deal_stage").as_deref(), Some("closed_won"), "no upsell was recorded");
    assert!(env.host.store().actions().expect("actions").is_empty(), "no email was recorded");

    // The conflict is audited and explains itself: who, and which fields.
    let conflicts = env.audit(AuditFilter {
        agent: Some("sales".into()),
        decision: Some(Decision::Conflict),
        ..Default::default()
    });
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    let c = &conflicts[0];
    assert_eq!(c.call, calls::ACT);
    assert_eq!(c.invocation, sales.id);
    assert_eq!(c.peer.as_deref(), Some("support"));
    assert_eq!(c.fields, ["last_interaction", "open_tickets", "status"]);
    assert!(c.outcome.contains("changed by support"), "{}", c.outcome);
    assert!(c.outcome.contains("status") && c.outcome.contains("open_tickets"), "{}", c.outcome);
    // After the conflict Sales read again (a second kb.get) and asked for nothing more.
    let sales_calls = env.audit(AuditFilter { invocation: Some(sales.id), ..Default::default() });
    let gets = sales_calls.iter().filter(|e| e.call == calls::GET).count();
    let acts = sales_calls.iter().filter(|e| e.call == calls::ACT).count();
    let commits = sales_calls.iter().filter(|e| e.call == calls::COMMIT).count();
    assert_eq!((gets, acts, commits), (2, 1, 0), "{sales_calls:#?}");
}

/// The conflict an agent receives carries the current version, who changed
/// the entity, the changed fields and the events since its read.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_write_gets_a_conflict_with_who_what_and_the_events_since() {
    let env = Env::new(&[("sales", "probe"), ("support", "support")]);
    env.probe("sales", json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "active"}}]}])).await;

    let bp = Breakpoint::before(calls::COMMIT, 1);
    let probe = {
        let (host, bp) = (env.host.clone(), bp.clone());
        let ops = json!({"ops": [
            {"op": "get", "entity": "customer/acme"},
            {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {"deal_stage": "upsell_offered"}}]},
        ]});
        tokio::spawn(async move { host.invoke_with("sales", message("probe", "", ops), bp).await })
    };
    bp.reached().await;
    env.send("support", "escalation", "customer/acme", json!({"ticket": "T-9", "summary": "down"})).await;
    bp.release();
    let inv = probe.await.expect("task").expect("invocation");
    let results: Vec<serde_json::Value> = serde_json::from_str(inv.outcome.text()).expect("json");
    let conflict = &results[1];
    assert_eq!(conflict["error"], "conflict", "{conflict}");
    assert_eq!(conflict["current_version"], 2);
    assert_eq!(conflict["changed_by"], "support");
    assert_eq!(conflict["changed_fields"], json!(["last_interaction", "open_tickets", "status"]));
    assert_eq!(conflict["events_since"], 1);
    assert_eq!(text(&env.get("customer/acme").expect("acme"), "deal_stage"), None);
}

/// Many concurrent invocations increment one field with optimistic retries:
/// the final value equals the number of successful commits, and no version
/// appears twice in the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_updates_concurrent_increments_all_count() {
    const WRITERS: usize = 12;
    let env = Env::new(&[("support", "probe")]);
    env.probe("support", json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"open_tickets": 0}}]}])).await;

    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let host = env.host.clone();
        let ops =
            json!({"ops": [{"op": "increment", "entity": "customer/acme", "field": "open_tickets", "tries": 1000}]});
        tasks.push(tokio::spawn(async move { host.invoke("support", message("probe", "", ops)).await }));
    }
    let mut successes = 0;
    let mut attempts = 0;
    for t in tasks {
        let inv = t.await.expect("task").expect("invocation");
        let r: Vec<serde_json::Value> = serde_json::from_str(inv.outcome.text()).expect("json report");
        if r[0].get("value").is_some() {
            successes += 1;
            attempts += r[0]["attempts"].as_u64().expect("attempts");
        }
    }
    let acme = env.get("customer/acme").expect("acme");
    assert_eq!(acme.fields.get("open_tickets"), Some(&concord::kb::Value::Integer(successes)));
    assert_eq!(successes, WRITERS as i64, "every writer eventually succeeds");
    assert_eq!(acme.version, 1 + WRITERS as u64);

    let events = env.host.store().history(&"customer/acme".parse().expect("ref"), 0, 10_000).expect("history");
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=1 + WRITERS as u64).collect::<Vec<_>>(), "each version exactly once, in order");
    // Each retry was a refused commit with a conflict, audited as such.
    let conflicts = env.audit(AuditFilter { decision: Some(Decision::Conflict), ..Default::default() }).len() as u64;
    assert_eq!(conflicts, attempts - WRITERS as u64, "every failed attempt is one audited conflict");
}

/// A product agent writing `deal_stage` (Sales's) is refused; the entity is
/// unchanged; the refusal is audited with the rule that decided.
#[tokio::test(flavor = "multi_thread")]
async fn ownership_product_may_not_write_deal_stage() {
    let env = Env::new(&[("sales", "sales"), ("product", "probe")]);
    onboard(&env, "acme").await;
    let before = env.get("customer/acme").expect("acme");

    let write = |field: &str, value: serde_json::Value| {
        json!([{"op": "get", "entity": "customer/acme"},
               {"op": "commit", "writes": [{"entity": "customer/acme", "expect": "read", "set": {field: value}}]}])
    };
    let r = env.probe("product", write("deal_stage", json!("expansion_candidate"))).await;
    assert_eq!(r[1]["error"], "forbidden", "{r:?}");
    assert_eq!(r[1]["field"], "deal_stage");
    assert_eq!(r[1]["writers"], json!(["sales"]));
    assert_eq!(env.get("customer/acme").expect("acme"), before, "the entity is unchanged");

    let refused = env.audit(AuditFilter { decision: Some(Decision::Forbidden), ..Default::default() });
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].agent, "product");
    assert_eq!(refused[0].call, calls::COMMIT);
    assert_eq!(refused[0].rule.as_deref(), Some("ownership: customer.deal_stage is owned by sales"));
    assert!(refused[0].entities.contains(&"customer/acme".to_string()));

    // Its own fields it may write.
    let r = env.probe("product", write("usage_metrics", json!({"active_users": 5}))).await;
    assert_eq!(r[1]["versions"], json!([before.version + 1]), "{r:?}");
}

/// A commit of three writes where the third is stale, or forbidden, or
/// invalid, leaves all three entities unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn atomicity_a_bad_third_write_leaves_all_three_unchanged() {
    let env = Env::new(&[("sales", "probe")]);
    let create: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| json!({"entity": format!("customer/{id}"), "expect": "absent", "set": {"status": "active"}}))
        .collect();
    let r = env.probe("sales", json!([{"op": "commit", "writes": create}])).await;
    assert_eq!(r[0]["versions"], json!([1, 1, 1]), "{r:?}");

    let write = |id: &str, expect: serde_json::Value, field: &str| json!({"entity": format!("customer/{id}"), "expect": expect, "set": {field: "changed"}});
    for (third, error) in [
        (write("c", json!(7), "status"), "conflict"),
        (write("c", json!(1), "open_tickets"), "forbidden"),
        (write("c", json!(1), "no_such_field"), "invalid"),
    ] {
        let writes = json!([write("a", json!(1), "status"), write("b", json!(1), "deal_stage"), third]);
        let r = env.probe("sales", json!([{"op": "commit", "writes": writes}])).await;
        assert_eq!(r[0]["error"], error, "{r:?}");
        for id in ["a", "b", "c"] {
            let e = env.get(&format!("customer/{id}")).expect("exists");
            assert_eq!(e.version, 1, "customer/{id} unchanged after a refused {error}");
            assert_eq!(text(&e, "status").as_deref(), Some("active"));
            assert_eq!(text(&e, "deal_stage"), None);
        }
    }
    // The same commit with a good third write applies all three.
    let writes =
        json!([write("a", json!(1), "status"), write("b", json!(1), "deal_stage"), write("c", json!(1), "name")]);
    let r = env.probe("sales", json!([{"op": "commit", "writes": writes}])).await;
    assert_eq!(r[0]["versions"], json!([2, 2, 2]), "{r:?}");
}

/// The whole Acme scenario, as `just run` plays it: no upsell is ever
/// committed while the customer is not active or has open tickets.
#[tokio::test(flavor = "multi_thread")]
async fn acme_scenario_never_upsells_an_at_risk_customer() {
    let env = Env::new(&[("sales", "sales"), ("support", "support"), ("product", "product")]);
    let script = concord::script::Script::load(&crate::common::root().join("scenarios/acme.jsonl")).expect("script");
    let runs = concord::script::run(env.host.clone(), &script, |_| {}).await.expect("script runs");
    assert!(runs.iter().all(|r| r.outcome.is_ok()), "{runs:#?}");

    // Every upsell email recorded rests on a version where Acme was active
    // with no open tickets; exactly one went out (after the resolution).
    let store = env.host.store();
    let actions = store.actions().expect("actions");
    let upsells: Vec<_> = actions.iter().filter(|a| a.kind == "email.upsell").collect();
    assert_eq!(upsells.len(), 1, "{actions:#?}");
    let events = store.history(&"customer/acme".parse().expect("ref"), 0, 1000).expect("history");
    for a in &upsells {
        let at = events.iter().filter(|e| e.kind.changes_state() && e.version == a.based_on).map(|e| e.seq).next_back();
        let state = store
            .get_at(&a.entity, concord::kb::AtPoint::Seq(at.expect("version exists")))
            .expect("read")
            .expect("exists");
        assert_eq!(state.fields.get("status"), Some(&concord::kb::Value::Text("active".into())), "action {}", a.id);
        assert_eq!(state.fields.get("open_tickets"), Some(&concord::kb::Value::Integer(0)), "action {}", a.id);
        assert!(a.delivered_at_ms.is_some(), "delivered");
    }
    let delivered = std::fs::read_to_string(env.dir.path().join("data/actions.jsonl")).expect("sink file");
    assert_eq!(delivered.lines().count(), 1, "{delivered}");
    let held = runs.iter().filter(|r| r.agent == "sales" && r.outcome.text().contains("held the upsell")).count();
    assert_eq!(held, 1, "the raced upsell was held");
}

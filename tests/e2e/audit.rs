//! Audit completeness: every host call is one entry, gap-free, attributed.

use crate::common::Env;
use concord::audit::{AuditFilter, Decision, Verification, calls};
use serde_json::json;
use std::collections::BTreeMap;

/// A probe makes a known set of calls; the audit holds exactly those, in
/// order, bracketed by the invocation's start and end.
#[tokio::test(flavor = "multi_thread")]
async fn each_host_call_is_one_audit_entry_in_order() {
    let env = Env::new(&[("sales", "probe")]);
    let ops = json!([
        {"op": "get", "entity": "customer/acme"},
        {"op": "commit", "reason": "create", "writes": [{"entity": "customer/acme", "expect": "absent", "set": {"status": "active"}}]},
        {"op": "get", "entity": "customer/acme"},
        {"op": "history", "entity": "customer/acme"},
        {"op": "recent", "entity": "customer/acme", "within_ms": 60000},
        {"op": "log", "message": "hello audit"},
        {"op": "get", "entity": "vendor/x"},
    ]);
    let inv = env.send("sales", "probe", "", json!({ "ops": ops })).await;
    assert!(inv.outcome.is_ok(), "{}", inv.outcome);
    assert_eq!(inv.host_calls, 7);

    let entries = env.audit(AuditFilter { invocation: Some(inv.id), ..Default::default() });
    let names: Vec<&str> = entries.iter().map(|e| e.call.as_str()).collect();
    assert_eq!(
        names,
        [
            calls::INVOCATION_START,
            calls::GET,
            calls::COMMIT,
            calls::GET,
            calls::HISTORY,
            calls::RECENT,
            calls::LOG,
            calls::GET,
            calls::INVOCATION_END
        ]
    );
    assert_eq!(entries[1].outcome, "absent");
    assert_eq!(entries[3].outcome, "version 1");
    assert!(entries[6].args.contains("hello audit"));
    // An unknown kind is refused as invalid, and audited as such.
    assert_eq!(entries[7].decision, Decision::Invalid);
    assert!(entries[7].outcome.contains("unknown entity kind `vendor`"), "{}", entries[7].outcome);
    assert_eq!(entries[8].args, json!({"host_calls": 7}).to_string());
}

/// For a whole scripted run: the number of host calls the agents made
/// equals the number of call entries; sequence numbers have no gaps; every
/// entry names its agent and that agent's digest; the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_run_is_audited_completely() {
    let env = Env::new(&[("sales", "sales"), ("support", "support"), ("product", "product")]);
    let script = concord::script::Script::load(&crate::common::root().join("scenarios/acme.jsonl")).expect("script");
    let runs = concord::script::run(env.host.clone(), &script, |_| {}).await.expect("runs");

    let made: u64 = runs.iter().map(|r| u64::from(r.host_calls)).sum();
    let entries = env.all_audit();
    let call_entries = entries.iter().filter(|e| calls::AGENT_CALLS.contains(&e.call.as_str())).count() as u64;
    assert_eq!(call_entries, made, "one entry per host call");
    assert!(made >= 16, "the scenario makes many calls ({made})");

    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>(), "gap-free from 1");

    let digests: BTreeMap<String, String> = env.host.agents().into_iter().map(|a| (a.name, a.digest)).collect();
    for e in entries.iter().filter(|e| e.agent != concord::audit::HOST) {
        assert_eq!(digests.get(&e.agent), Some(&e.digest), "entry {} names a loaded agent and its digest", e.seq);
    }
    assert_eq!(entries[0].call, calls::HOST_START, "the host's start is the first entry");
    assert_eq!(entries[0].digest, env.host.config().digest, "with the config's digest");
    for r in &runs {
        let of = env.audit(AuditFilter { invocation: Some(r.id), ..Default::default() });
        assert_eq!(of.first().map(|e| e.call.as_str()), Some(calls::INVOCATION_START));
        assert_eq!(of.last().map(|e| e.call.as_str()), Some(calls::INVOCATION_END));
        assert_eq!(of.len() as u32, r.host_calls + 2);
    }
    assert!(matches!(env.host.store().verify_audit().expect("verify"), Verification::Intact { .. }));
}

/// Queries by agent, entity, call, outcome and time select exactly the
/// matching entries.
#[tokio::test(flavor = "multi_thread")]
async fn audit_filters_select_what_they_say() {
    let env = Env::new(&[("sales", "sales"), ("product", "probe")]);
    crate::common::onboard(&env, "acme").await;
    crate::common::onboard(&env, "globex").await;
    let forbidden_write =
        json!([{"op": "commit", "writes": [{"entity": "customer/acme", "expect": 1, "set": {"deal_stage": "x"}}]}]);
    env.probe("product", forbidden_write).await;
    let all = env.all_audit();

    let by = |f: AuditFilter| env.audit(f);
    let expect =
        |f: &dyn Fn(&concord::audit::AuditEntry) -> bool| all.iter().filter(|e| f(e)).cloned().collect::<Vec<_>>();
    assert_eq!(
        by(AuditFilter { agent: Some("product".into()), ..Default::default() }),
        expect(&|e| e.agent == "product")
    );
    assert_eq!(
        by(AuditFilter { entity: Some("customer/globex".into()), ..Default::default() }),
        expect(&|e| e.entities.contains(&"customer/globex".to_string()))
    );
    assert_eq!(
        by(AuditFilter { call: Some("kb.commit".into()), ..Default::default() }),
        expect(&|e| e.call == "kb.commit")
    );
    let forbidden = by(AuditFilter { decision: Some(Decision::Forbidden), ..Default::default() });
    assert_eq!(forbidden.len(), 1);
    let both =
        by(AuditFilter { agent: Some("sales".into()), entity: Some("customer/acme".into()), ..Default::default() });
    assert!(
        !both.is_empty() && both.iter().all(|e| e.agent == "sales" && e.entities.contains(&"customer/acme".into()))
    );
    let last = by(AuditFilter { limit: Some(2), ..Default::default() });
    assert_eq!(last, all[all.len() - 2..].to_vec());
    let future = by(AuditFilter { since_ms: Some(all.last().expect("entries").at_ms + 1), ..Default::default() });
    assert!(future.is_empty());
}

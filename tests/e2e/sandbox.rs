//! The sandbox: a hostile or broken agent ends only its own invocation,
//! with an audited error, and the next invocation works.

use crate::common::{Env, onboard};
use concord::Outcome;
use concord::audit::{AuditFilter, Decision, calls};
use serde_json::json;

/// Invokes `hostile` with `kind`, checks the outcome and its audit entry,
/// then checks that a well-behaved agent still works.
async fn misbehave(env: &Env, kind: &str, body: serde_json::Value, expect: Decision, needle: &str) -> String {
    let inv = env.send("hostile", kind, "customer/acme", body).await;
    assert_eq!(inv.outcome.decision(), expect, "{kind}: {}", inv.outcome);
    let text = inv.outcome.text().to_string();
    assert!(text.contains(needle), "{kind}: `{text}` should mention `{needle}`");

    let end = env.audit(AuditFilter {
        invocation: Some(inv.id),
        call: Some(calls::INVOCATION_END.into()),
        ..Default::default()
    });
    assert_eq!(end.len(), 1, "{kind}: the end of the invocation is audited");
    assert_eq!(end[0].decision, expect);
    assert!(end[0].outcome.contains(needle), "{kind}: audited as `{}`", end[0].outcome);

    let ok = env.send("sales", "upsell", "customer/acme", json!({})).await;
    assert!(ok.outcome.is_ok(), "after {kind}, sales still works: {}", ok.outcome);
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_runs_out_of_fuel() {
    let env = Env::new(&[("hostile", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    misbehave(&env, "loop", json!({}), Decision::Trapped, "CPU limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infinite_loop_hits_the_time_limit_when_fuel_is_ample() {
    let limits = "fuel = 1_000_000_000_000_000\ntimeout_ms = 300\n";
    let env = Env::with_limits(&[("hostile", "hostile"), ("sales", "sales")], limits);
    onboard(&env, "acme").await;
    misbehave(&env, "loop", json!({}), Decision::Trapped, "time limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allocating_past_the_memory_limit_traps() {
    let env = Env::new(&[("hostile", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    misbehave(&env, "alloc", json!({}), Decision::Trapped, "memory limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_and_stack_overflows_trap() {
    let env = Env::new(&[("hostile", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    let text = misbehave(&env, "trap", json!({}), Decision::Trapped, "unreachable").await;
    assert!(text.contains("hostile agent panics on purpose"), "the panic message is in the report: {text}");
    misbehave(&env, "stack", json!({}), Decision::Trapped, "stack overflow").await;
    misbehave(&env, "shadow_stack", json!({}), Decision::Trapped, "out-of-bounds memory access").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_a_host_file_is_denied() {
    let env = Env::new(&[("hostile", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    let secret = env.dir.path().join("concord.toml");
    let body = json!({ "path": secret.to_str().expect("utf-8 path") });
    misbehave(&env, "open_file", body, Decision::Failed, "could not open").await;
    misbehave(&env, "open_file", json!({ "path": "/etc/passwd" }), Decision::Failed, "could not open").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_environment_is_empty() {
    // SAFETY of the test: this variable is only read, by this test's guest.
    // The host process has it; the agent must not see it (nor anything else).
    let env = Env::new(&[("hostile", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    let text = misbehave(&env, "env", json!({ "name": "PATH" }), Decision::Failed, "could not read PATH").await;
    assert!(text.contains("(0 variables visible)"), "{text}");
}

/// A trap after a commit keeps what the invocation legitimately committed
/// (each commit is atomic and durable on its own), and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn a_trap_mid_invocation_keeps_only_completed_commits() {
    // The hostile guest, loaded as `support`, may write `last_interaction`.
    let env = Env::new(&[("support", "hostile"), ("sales", "sales")]);
    onboard(&env, "acme").await;
    let before = env.get("customer/acme").expect("acme");
    let inv = env.send("support", "commit_then_trap", "customer/acme", json!({})).await;
    assert!(matches!(inv.outcome, Outcome::Trapped(ref m) if m.contains("trap after a commit")), "{}", inv.outcome);
    let after = env.get("customer/acme").expect("acme");
    assert_eq!(after.version, before.version + 1, "the completed commit stays");
    assert_eq!(crate::common::text(&after, "last_interaction").as_deref(), Some("hostile was here"));
    let calls: Vec<(String, Decision)> = env
        .audit(AuditFilter { invocation: Some(inv.id), ..Default::default() })
        .into_iter()
        .map(|e| (e.call, e.decision))
        .collect();
    assert_eq!(
        calls,
        [
            (calls::INVOCATION_START.to_string(), Decision::Allowed),
            (calls::GET.to_string(), Decision::Allowed),
            (calls::COMMIT.to_string(), Decision::Allowed),
            (calls::INVOCATION_END.to_string(), Decision::Trapped),
        ]
    );
}

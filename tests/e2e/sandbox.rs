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

/// Each invocation gets a fresh instance: nothing an invocation leaves in
/// its memory (a static counter, 3 MiB of dirtied pages) is seen by the
/// next, though the pool reuses the slot and keeps part of it resident.
#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_never_sees_what_the_last_one_left_in_memory() {
    let env = Env::new(&[("probe", "probe")]);
    for i in 0..4 {
        let report = env.probe("probe", json!([{ "op": "scribble" }, { "op": "scribble" }])).await;
        assert_eq!(report[0], json!({ "dirty_pages": 0, "runs_before": 0 }), "invocation {i} starts clean");
        // Within one invocation the memory is the guest's own: the second
        // run sees the first (so the check above can fail).
        assert_eq!(report[1], json!({ "dirty_pages": 48, "runs_before": 1 }), "invocation {i}");
    }
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

/// Limits that make the hostile cases quick: 16 MiB of memory, 500 host
/// calls, 64 KiB of arguments per call.
const HOSTILE_LIMITS: &str =
    "memory_mib = 16\nfuel = 300_000_000\ntimeout_ms = 5_000\nmax_host_calls = 500\nmax_call_bytes = 65536\n";

/// Runs one hostile case (the guest loaded as `product`, which owns a json
/// field) and checks the common promises: the expected, audited outcome;
/// no change to the KB; a well-behaved agent works right after.
async fn hostile_case(
    kind: &str,
    body: serde_json::Value,
    expect: &[Decision],
    needle: &str,
) -> Vec<concord::audit::AuditEntry> {
    let env = Env::with_limits(&[("product", "hostile"), ("sales", "sales")], HOSTILE_LIMITS);
    onboard(&env, "acme").await;
    let before = env.get("customer/acme").expect("acme");
    let inv = env.send("product", kind, "customer/acme", body).await;
    let text = inv.outcome.text().to_string();
    assert!(expect.contains(&inv.outcome.decision()), "{kind}: {}", inv.outcome);
    assert!(text.contains(needle), "{kind}: `{text}` should mention `{needle}`");
    assert_eq!(env.get("customer/acme").expect("acme"), before, "{kind}: the KB is unchanged");
    let entries = env.audit(AuditFilter { invocation: Some(inv.id), ..Default::default() });
    let end = entries.last().expect("entries");
    assert_eq!(end.call, calls::INVOCATION_END, "{kind}: the end is audited");
    assert!(end.outcome.contains(needle) || end.outcome.len() >= 2000, "{kind}: audited as `{}`", end.outcome);
    let ok = env.send("sales", "upsell", "customer/acme", json!({})).await;
    assert!(ok.outcome.is_ok(), "after {kind}, sales still works: {}", ok.outcome);
    entries
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_a_100_mib_string_hits_the_memory_limit() {
    hostile_case("huge_string", json!({"mib": 100}), &[Decision::Trapped], "memory limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_a_million_field_commit_is_stopped() {
    // The guest cannot even build it within 16 MiB; with more memory the
    // host would refuse it by size (see the next case).
    hostile_case("many_fields", json!({"count": 1_000_000}), &[Decision::Trapped], "memory limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_oversized_arguments_are_refused_and_audited() {
    let entries =
        hostile_case("big_commit", json!({"bytes": 100_000}), &[Decision::Failed], "limits.max_call_bytes").await;
    let commit = entries.iter().find(|e| e.call == calls::COMMIT).expect("the commit is audited");
    assert_eq!(commit.decision, Decision::Invalid);
    assert!(commit.args.len() < 3000, "the audit keeps a bounded copy of the arguments ({} bytes)", commit.args.len());
    hostile_case("many_fields", json!({"count": 20_000}), &[Decision::Failed], "limits.max_call_bytes").await;
    let entries =
        hostile_case("big_log", json!({"bytes": 100_000}), &[Decision::Trapped], "limits.max_call_bytes").await;
    assert!(entries.iter().any(|e| e.call == calls::LOG && e.decision == Decision::Invalid));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_deeply_nested_json_is_invalid() {
    hostile_case("deep_json", json!({"depth": 20_000}), &[Decision::Failed], "recursion limit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_invalid_utf8_traps_at_the_boundary() {
    hostile_case("invalid_utf8", json!({}), &[Decision::Trapped], "utf-8").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_sockets_are_denied() {
    hostile_case("socket", json!({}), &[Decision::Failed], "could not connect").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_flooding_hits_the_host_call_limit() {
    let entries =
        hostile_case("flood", json!({"calls": 1_000_000}), &[Decision::Trapped], "limits.max_host_calls").await;
    let logged = entries.iter().filter(|e| e.call == calls::LOG).count();
    assert_eq!(logged, 501, "500 calls served, the 501st refused and audited, then the stop");
}

/// A shutdown that runs out of time stops what is still running: an agent
/// spinning in wasm (it yields at every tick) and one paused before a host
/// call both end as `stopped`, audited so, and the other agents' work is
/// unaffected. Invocations started after the stop are stopped at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_stops_invocations_in_flight_and_audits_them() {
    let limits = "fuel = 1_000_000_000_000_000\ntimeout_ms = 60_000\n";
    let env = Env::with_limits(&[("hostile", "hostile"), ("sales", "sales")], limits);
    onboard(&env, "acme").await;
    let spinning = {
        let host = env.host.clone();
        tokio::spawn(
            async move { host.invoke("hostile", crate::common::message("loop", "customer/acme", json!({}))).await },
        )
    };
    let bp = concord::Breakpoint::before("kb.get", 1);
    let paused = {
        let (host, bp) = (env.host.clone(), bp.clone());
        let message = crate::common::message("upsell", "customer/acme", json!({}));
        tokio::spawn(async move { host.invoke_with("sales", message, bp).await })
    };
    bp.reached().await;
    env.host.stop_invocations("the host is shutting down (server.drain_ms ran out)");
    let started = std::time::Instant::now();
    for task in [spinning, paused] {
        let inv = task.await.expect("task").expect("invocation");
        assert_eq!(inv.outcome.decision(), Decision::Stopped, "{}", inv.outcome);
        assert!(matches!(&inv.outcome, Outcome::Stopped(why) if why.contains("drain_ms")), "{}", inv.outcome);
        let end = env.audit(AuditFilter {
            invocation: Some(inv.id),
            call: Some(calls::INVOCATION_END.into()),
            ..Default::default()
        });
        assert_eq!(end.len(), 1);
        assert_eq!(end[0].decision, Decision::Stopped);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "stopped long before the time limit");
    let late = env.send("sales", "upsell", "customer/acme", json!({})).await;
    assert_eq!(late.outcome.decision(), Decision::Stopped, "{}", late.outcome);
}

/// `[agents.NAME]` memory, fuel and time override `[limits]` for that agent
/// alone, and the instance pool is sized for the hungriest: an agent given
/// 64 MiB builds a 24 MiB string where one under the 16 MiB default traps;
/// each trap names the key that set its limit.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_of_its_own_limits_gets_them_and_the_pool_fits_it() {
    let grants =
        "\n[agents.big]\nmemory_mib = 64\n\n[agents.small]\nmemory_mib = 8\n\n[agents.thrifty]\nfuel = 1_000_000\n";
    let config = format!("{}{grants}", crate::common::config_text(crate::common::FAST_LIMITS));
    let env = Env::with_config(
        &[("big", "hostile"), ("small", "hostile"), ("thrifty", "hostile"), ("hostile", "hostile")],
        &config,
    );
    let run = |agent: &'static str, kind: &'static str, body: serde_json::Value| {
        let env = &env;
        async move { env.send(agent, kind, "customer/acme", body).await.outcome }
    };
    // 24 MiB fits 64: the string is built, and only the log of it (over
    // limits.max_call_bytes) stops the invocation.
    let big = run("big", "huge_string", json!({ "mib": 24 })).await;
    assert!(big.text().contains("limits.max_call_bytes"), "{big}");
    let default = run("hostile", "huge_string", json!({ "mib": 24 })).await;
    assert!(default.text().contains("past 16 MiB (limits.memory_mib)"), "{default}");
    let small = run("small", "alloc", json!({})).await;
    assert!(small.text().contains("past 8 MiB (agents.small.memory_mib)"), "{small}");
    let spun = run("thrifty", "loop", json!({})).await;
    assert!(spun.text().contains("all 1000000 fuel consumed (agents.thrifty.fuel)"), "{spun}");
    let bad = format!("{}\n[agents.big]\nmemory_mib = 5000\n", crate::common::config_text(crate::common::FAST_LIMITS));
    let err = concord::Config::parse(&bad, std::path::Path::new("concord.toml"), std::path::Path::new("."))
        .expect_err("too much memory");
    assert!(err.to_string().contains("agents.big: memory_mib is 1 to 4096"), "{err}");
}

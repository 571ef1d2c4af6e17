//! The `concord` binary, as a user runs it.

use crate::common::{concord, demo_dir, root, stderr, stdout};
use std::path::Path;

#[test]
fn the_demo_runs_and_the_read_verbs_show_who_did_what() {
    let dir = demo_dir();
    let run = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}\n{}", stdout(&run), stderr(&run));
    let out = stdout(&run);
    assert!(out.contains("held the upsell"), "{out}");
    assert!(out.contains("13 invocations: 13 ok, 0 failed, 0 trapped"), "{out}");
    assert!(out.contains("1 conflict, 1 deferred"), "{out}");
    assert!(out.contains("actions: 1 recorded, 1 delivered"), "{out}");

    let get = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(get.status.code(), Some(0));
    assert!(stdout(&get).contains("deal_stage") && stdout(&get).contains("expansion_candidate"), "{}", stdout(&get));
    let json = concord(dir.path(), &["get", "customer/acme", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).expect("json");
    assert_eq!(v["fields"]["status"], "active");

    let history = stdout(&concord(dir.path(), &["history", "customer/acme"]));
    assert!(history.contains("status: \"active\" -> \"at_risk\""), "{history}");

    let audit = stdout(&concord(dir.path(), &["audit", "--agent", "product", "--outcome", "deferred"]));
    assert!(audit.contains("[rule: product-defers-during-escalations]"), "{audit}");
    let lines = stdout(&concord(dir.path(), &["audit", "--agent", "sales", "--json"]));
    for l in lines.lines() {
        let e: serde_json::Value = serde_json::from_str(l).expect("json line");
        assert_eq!(e["agent"], "sales");
    }
    let verify = concord(dir.path(), &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0));
    assert!(stdout(&verify).contains("audit chain intact"));

    let agents = stdout(&concord(dir.path(), &["agents"]));
    assert!(agents.contains("sales") && agents.contains("customer.deal_stage"), "{agents}");
}

#[test]
fn exit_codes_mean_something() {
    let dir = demo_dir();
    // Reading before anything ran: the store does not exist (bad input, 3).
    let o = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist yet"), "{}", stderr(&o));
    // Usage errors are 2, and name the problem.
    let o = concord(dir.path(), &["get", "acme"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kind/id"), "{}", stderr(&o));
    // A bad script line is 3, names file and line, and writes nothing.
    std::fs::write(dir.path().join("bad.jsonl"), "{\"agent\":\"sales\",\"kind\":\"onboard\",\"entity\":\"customer/acme\"}\n{\"agent\":\"salse\",\"kind\":\"x\"}\n").expect("write");
    let o = concord(dir.path(), &["run", "--script", "bad.jsonl"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("bad.jsonl:2:") && stderr(&o).contains("salse"), "{}", stderr(&o));
    assert!(!dir.path().join("data").exists(), "nothing was written");
    // A missing entity is 4.
    let o = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(o.status.code(), Some(0));
    let o = concord(dir.path(), &["get", "customer/nobody"]);
    assert_eq!(o.status.code(), Some(4));
    // A bad config is 3 and names the line.
    std::fs::write(
        dir.path().join("broken.toml"),
        "[kinds.customer.fields]\nstatus = { type = \"txt\", owner = \"sales\" }\n",
    )
    .expect("write");
    let o = concord(dir.path(), &["--config", "broken.toml", "agents"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("broken.toml:2:") && stderr(&o).contains("unknown type `txt`"), "{}", stderr(&o));
}

#[test]
fn help_is_enough_to_start() {
    let o = concord(Path::new("."), &["--help"]);
    let help = stdout(&o);
    for needle in ["run", "get", "history", "audit", "agents", "Exit codes", "concord audit verify"] {
        assert!(help.contains(needle), "--help should mention {needle}:\n{help}");
    }
}

/// By default a running host has the knowledge base to itself (the fast
/// mode): a read command is refused with an error that says why and how to
/// read alongside.
#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_running_host_has_the_store_to_itself() {
    let env = crate::common::Env::new(&[("sales", "sales")]);
    crate::common::onboard(&env, "acme").await;
    let o = concord(env.dir.path(), &["get", "customer/acme"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let expected = format!("already in use by pid {}", std::process::id());
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
    assert!(stderr(&o).contains("run it as `concord serve`"), "the error says how to read alongside: {}", stderr(&o));
    // An operator is told the same, never a setting that cannot help it.
    let o = concord(env.dir.path(), &["pin", "customer/acme", "status=active", "--by", "alice", "--reason", "r"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("pin or revert") && !stderr(&o).contains("shared_reads"), "{}", stderr(&o));
    let o = concord(env.dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let expected = format!("a host is using it (pid {}); stop that `concord run` first", std::process::id());
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
    // Once the host stops, reads work, and see what it wrote.
    let dir = env.dir;
    drop(env.host);
    let o = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("version 1"), "{}", stdout(&o));
}

/// With `[kb] shared_reads = true`, the read commands work while a host
/// runs; a second host is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn reads_work_while_a_host_runs_and_a_second_host_is_refused() {
    let text = crate::common::config_text(crate::common::FAST_LIMITS).replace("[kb]\n", "[kb]\nshared_reads = true\n");
    assert!(text.contains("shared_reads = true"));
    let env = crate::common::Env::with_config(&[("sales", "sales")], &text);
    crate::common::onboard(&env, "acme").await;
    let o = concord(env.dir.path(), &["get", "customer/acme"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("version 1"), "{}", stdout(&o));
    let o = concord(env.dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // `check` needs the host stopped, shared reads or not.
    let o = concord(env.dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("`concord check` reads a file no host is writing"), "{}", stderr(&o));

    std::fs::write(
        env.dir.path().join("s.jsonl"),
        "{\"agent\":\"sales\",\"kind\":\"upsell\",\"entity\":\"customer/acme\"}\n",
    )
    .expect("write");
    let o = concord(env.dir.path(), &["run", "--script", "s.jsonl"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let expected = format!("already in use by pid {}", std::process::id());
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
}

/// The coordination verbs, as an operator uses them after the demo.
#[test]
fn operator_verbs_pin_revert_replay_trace_conflicts() {
    let dir = demo_dir();
    std::fs::copy(root().join("scenarios/override.jsonl"), dir.path().join("override.jsonl")).expect("script");
    let ok = |args: &[&str]| {
        let o = concord(dir.path(), args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}\n{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    ok(&["run", "--script", "acme.jsonl"]);
    let pinned = ok(&["pin", "customer/acme", "status=active", "--by", "alice", "--reason", "CEO call"]);
    assert!(pinned.contains("pinned status=\"active\""), "{pinned}");
    let out = ok(&["run", "--script", "override.jsonl"]);
    assert!(out.contains("pinned by alice: CEO call"), "{out}");
    assert!(out.contains("deferred by rule `human-override`"), "{out}");
    ok(&["unpin", "customer/acme", "status", "--by", "alice", "--reason", "done"]);

    // Bad operator input: a value of the wrong type, an unknown field.
    let o = concord(dir.path(), &["pin", "customer/acme", "open_tickets=many", "--by", "a", "--reason", "r"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("`many` is not an integer"), "{}", stderr(&o));
    let o = concord(dir.path(), &["unpin", "customer/acme", "status", "--by", "a", "--reason", "r"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("is not pinned"), "{}", stderr(&o));

    // The past, replay, revert.
    let then = ok(&["get", "customer/acme", "--at", "3"]);
    assert!(then.contains("version 3") && then.contains("\"at_risk\""), "{then}");
    assert!(ok(&["replay"]).contains("the projection equals the replay"));
    let history = ok(&["history", "customer/acme", "--json"]);
    let applied: Vec<serde_json::Value> = history.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let handoff = applied
        .iter()
        .find(|e| e["reason"].as_str().is_some_and(|r| r.starts_with("applied change request")))
        .expect("the applied handoff");
    let seq = handoff["seq"].to_string();
    let reverted = ok(&["revert", &seq, "--by", "alice", "--reason", "not yet"]);
    assert!(reverted.contains("reverted event"), "{reverted}");
    assert!(ok(&["get", "customer/acme"]).contains("\"upsell_offered\""));
    let o = concord(dir.path(), &["revert", "1", "--by", "alice", "--reason", "x"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("later events depend on event 1"), "{}", stderr(&o));

    // Trace, conflicts, actions.
    let starts = ok(&["audit", "--call", "invocation.start", "--json"]);
    let caused: serde_json::Value = starts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|e| !e["causation"].is_null())
        .expect("a caused invocation");
    let trace = ok(&["audit", "--trace", &caused["invocation"].to_string()]);
    let parent = caused["causation"].to_string();
    assert!(
        trace.lines().any(|l| l.contains("invocation.start") && l.split_whitespace().nth(3) == Some(&parent)),
        "{trace}"
    );
    let report = ok(&["conflicts"]);
    assert!(report.contains("agents acting on stale versions") && report.contains("sales"), "{report}");
    let actions = ok(&["actions"]);
    assert!(actions.contains("email.upsell"), "{actions}");
}

//! What a careless operator or a hostile agent could still do, and what the
//! host now does instead (issue 21). Each test runs the real binary or a
//! real compiled agent, and would fail if its hole came back.

use crate::common::{Env, FAST_LIMITS, concord, config_text, demo_dir, stderr};
use crate::http::Served;
use concord::audit::{AuditFilter, Decision, calls};
use concord::conflicts;
use hyper::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `concord` in `dir` with its stdout a pipe that nobody reads: the
/// read end is closed before the command starts, so its first write fails
/// as it does once `head` has had its lines. `RUST_BACKTRACE` is set, so a
/// panic anywhere would print its report.
fn with_stdout_closed(dir: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONCORD_CONFIG")
        .env_remove("CONCORD_AUDIT_KEY")
        .env("RUST_BACKTRACE", "1")
        .env("CONCORD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("concord runs")
}

#[test]
fn a_closed_stdout_ends_a_read_command_quietly_and_never_changes_how_a_run_ends() {
    let dir = demo_dir();
    // The run's reader is gone from the start: the script still plays to
    // its end, and the store is closed as after any run.
    let run = with_stdout_closed(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(!stderr(&run).contains("panicked"), "{}", stderr(&run));
    let ends = concord(dir.path(), &["audit", "--call", "invocation.end", "--json"]);
    assert_eq!(ends.status.code(), Some(0), "a read after the run: {}", String::from_utf8_lossy(&ends.stderr));
    assert_eq!(String::from_utf8_lossy(&ends.stdout).lines().count(), 13, "every trigger of the script ran");

    // Each read and operator family, with nobody reading: exit 141 (as a
    // shell reports SIGPIPE; never 0, so that a verdict nobody read does
    // not pass for success), nothing on stderr (no internal-fault line, no
    // panic report).
    for args in [
        &["audit", "--json"][..],
        &["audit"],
        &["history", "customer/acme"],
        &["get", "customer/acme", "--json"],
        &["conflicts"],
        &["export"],
        &["agents"],
        &["audit", "verify"],
    ] {
        let o = with_stdout_closed(dir.path(), args);
        assert_eq!(o.status.code(), Some(141), "concord {args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "concord {args:?} says nothing when its reader is gone");
    }
    // Work that must not depend on a reader goes on: every row is imported,
    // and a token that nobody was shown is not kept.
    let rows: String =
        (0..5).map(|i| format!("{{\"entity\":\"customer/c{i}\",\"fields\":{{\"status\":\"active\"}}}}\n")).collect();
    std::fs::write(dir.path().join("rows.jsonl"), rows).expect("rows");
    let o = with_stdout_closed(dir.path(), &["import", "rows.jsonl", "--by", "alice", "--batch", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for i in 0..5 {
        assert_eq!(concord(dir.path(), &["get", &format!("customer/c{i}")]).status.code(), Some(0), "row {i} imported");
    }
    let config = std::fs::read_to_string(dir.path().join("concord.toml")).expect("config");
    std::fs::write(dir.path().join("concord.toml"), format!("{config}\n[server]\ntokens = \"tokens\"\n"))
        .expect("config");
    let o = with_stdout_closed(dir.path(), &["token", "add", "alice", "--role", "operator"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("so it was not kept"), "{}", stderr(&o));
    let list = concord(dir.path(), &["token", "list"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("alice"), "{}", String::from_utf8_lossy(&list.stdout));

    // And the store is as it was: the chain verifies, nothing is marked open.
    let verify = concord(dir.path(), &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stderr));
}

/// The probe's results, from an invoke answer.
fn results(answer: &serde_json::Value) -> Vec<serde_json::Value> {
    let report = answer["report"].as_str().unwrap_or_else(|| panic!("a report: {answer}"));
    serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: {report}"))
}

fn ops(ops: serde_json::Value) -> serde_json::Value {
    json!({ "kind": "probe", "body": { "ops": ops } })
}

/// A lease can no longer block everyone forever: its TTL is bounded, only
/// an agent with a stake in the entity may take one, the holder renews it
/// explicitly (keeping its token), an operator can break it (audited; the
/// holder's token goes stale), and `get` shows it while it is live.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_bounded_held_only_by_a_writer_renewed_explicitly_and_broken_by_an_operator() {
    let s = Served::start(&[("sales", "probe"), ("support", "probe"), ("outsider", "probe")], "").await;
    let create = ops(json!([{ "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]));
    assert_eq!(s.api.post("/v1/invoke/support", create).await.status, StatusCode::OK);

    // Seen at HEAD: a lease for 2^64-1 ms, granted. Now `invalid`, naming the limit.
    let forever = ops(json!([{ "op": "lease", "entity": "customer/acme", "ttl_ms": u64::MAX }]));
    let r = results(&s.api.post("/v1/invoke/sales", forever).await.body);
    assert_eq!(r[0]["error"], "invalid", "{r:?}");
    assert!(r[0]["text"].as_str().unwrap().contains("limits.lease_max_ms"), "{r:?}");

    // Seen at HEAD: an agent that may write no field of customer/acme leased it.
    let take = ops(json!([{ "op": "lease", "entity": "customer/acme", "ttl_ms": 30_000 }]));
    let r = results(&s.api.post("/v1/invoke/outsider", take.clone()).await.body);
    assert_eq!(r[0]["error"], "forbidden", "{r:?}");
    assert_eq!(r[0]["field"], "*");
    assert!(r[0]["text"].as_str().unwrap().contains("[kinds.customer] leases"), "{r:?}");
    let writers: Vec<&str> = r[0]["writers"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert!(writers.contains(&"sales") && writers.contains(&"support") && !writers.contains(&"outsider"));

    // Sales leases, then renews with its token: the same token, a later expiry.
    let r = results(&s.api.post("/v1/invoke/sales", take.clone()).await.body);
    let (token, until) = (r[0]["token"].as_u64().expect("granted"), r[0]["expires_at_ms"].as_u64().unwrap());
    let renew = |token: u64, ttl: u64| {
        ops(json!([{ "op": "renew", "entity": "customer/acme", "token": token, "ttl_ms": ttl }]))
    };
    let r = results(&s.api.post("/v1/invoke/sales", renew(token, 60_000)).await.body);
    assert_eq!(r[0]["token"], token, "a renewal keeps the token: {r:?}");
    assert!(r[0]["expires_at_ms"].as_u64().unwrap() > until, "{r:?}");
    // A renewal is bounded as a lease is, and only the holder's token renews.
    let r = results(&s.api.post("/v1/invoke/sales", renew(token, 60_001)).await.body);
    assert_eq!(r[0]["error"], "invalid", "{r:?}");
    let r = results(&s.api.post("/v1/invoke/support", renew(token, 1_000)).await.body);
    assert_eq!(r[0]["error"], "stale_fence", "support does not hold it: {r:?}");

    // `get` (API and CLI view) shows the live lease.
    let view = s.api.get("/v1/entities/customer/acme").await;
    assert_eq!(view.body["lease"]["holder"], "sales", "{}", view.text);
    assert_eq!(view.body["lease"]["token"], token);
    assert!(s.api.get("/v1/entities/customer/acme?at=1").await.body.get("lease").is_none(), "no lease in the past");

    // Support is blocked; an operator breaks the lease, with a reason.
    let write = ops(json!([{ "op": "get", "entity": "customer/acme" },
        { "op": "commit", "writes": [{ "entity": "customer/acme", "expect": "read", "set": { "status": "at_risk" } }] }]));
    let r = results(&s.api.post("/v1/invoke/support", write.clone()).await.body);
    assert_eq!(r[1]["error"], "leased", "{r:?}");
    let broke = s
        .api
        .post("/v1/entities/customer/acme/lease/break", json!({ "reason": "sales is stuck", "by": "alice" }))
        .await;
    assert_eq!(broke.status, StatusCode::OK, "{}", broke.text);
    assert_eq!(broke.body["holder"], "sales");
    let r = results(&s.api.post("/v1/invoke/support", write).await.body);
    assert!(r[1].get("versions").is_some(), "support writes once the lease is broken: {r:?}");
    // The holder's token is stale now: its renewal and its fenced write are refused.
    let r = results(&s.api.post("/v1/invoke/sales", renew(token, 1_000)).await.body);
    assert_eq!(r[0]["error"], "stale_fence", "{r:?}");
    // Nothing left to break: refused, naming why.
    let again = s.api.post("/v1/entities/customer/acme/lease/break", json!({ "reason": "again" })).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(again.text.contains("no live lease"), "{}", again.text);

    // The break is audited as the operator's, naming the holder.
    let entries = s.env.audit(AuditFilter { call: Some(calls::BREAK_LEASE.into()), ..AuditFilter::default() });
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].agent, "human:alice");
    assert_eq!(entries[0].peer.as_deref(), Some("sales"));
    assert!(entries[0].args.contains("sales is stuck"), "{:?}", entries[0]);
    let renewals = s.env.audit(AuditFilter { call: Some(calls::RENEW.into()), ..AuditFilter::default() });
    assert_eq!(renewals.len(), 4, "every renewal is audited, refused or not");

    // And from the CLI, with no host running: `concord lease break`, and `get` shows a lease.
    let env = s.stop().await;
    let r = env.probe("support", json!([{ "op": "lease", "entity": "customer/acme", "ttl_ms": 30_000 }])).await;
    assert!(r[0]["token"].is_u64(), "{r:?}");
    let crate::common::Env { dir, host } = env;
    drop(std::sync::Arc::into_inner(host).expect("no other host handles"));
    let dir = dir.path();
    let get = concord(dir, &["get", "customer/acme"]);
    let shown = String::from_utf8_lossy(&get.stdout);
    assert!(shown.contains("leased by support until"), "{shown}");
    let cli = concord(dir, &["lease", "break", "customer/acme", "--by", "bob", "--reason", "support is gone"]);
    assert_eq!(cli.status.code(), Some(0), "{}", stderr(&cli));
    assert!(String::from_utf8_lossy(&cli.stdout).contains("broke support's lease on customer/acme"));
    let get = concord(dir, &["get", "customer/acme", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&get.stdout).expect("json");
    assert!(v.get("lease").is_none(), "{v}");
    let again = concord(dir, &["lease", "break", "customer/acme", "--by", "bob", "--reason", "again"]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(stderr(&again).contains("no live lease"), "{}", stderr(&again));
}

/// A rule with a typo is refused at start, with its line; one that still
/// cannot be evaluated at run time fails closed: the write is refused,
/// audited naming the rule and the error, and counted as a conflict.
#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_cannot_be_evaluated_fails_closed() {
    let rule = |when: &str| {
        format!(
            "{}\n[[rules]]\nname = \"big-accounts-by-hand\"\nwhen = \"{when}\"\nagents = [\"sales\"]\nfields = [\"status\"]\neffect = \"deny\"\nreason = \"big accounts are handled by hand\"\n",
            config_text(FAST_LIMITS)
        )
    };
    // Seen at HEAD: accepted at start, then never matching. Now refused, with the line.
    for (when, named) in [("sise(pins) > 0", "`sise`"), ("entity.contract_valu > 1000000", "`entity.contract_valu`")] {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("concord.toml"), rule(when)).expect("config");
        let line =
            rule(when).lines().collect::<Vec<_>>().iter().rposition(|l| l.starts_with("when = ")).expect("when line")
                + 1;
        let o = concord(dir.path(), &["agents"]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("concord.toml:{line}: rule `big-accounts-by-hand`")), "{}", stderr(&o));
        assert!(stderr(&o).contains(named), "{}", stderr(&o));
    }

    // A field the schema declares, read without has() on an entity that
    // lacks it: the condition fails at run time, and the write is refused.
    let env = Env::with_config(&[("sales", "probe")], &rule("entity.contract_value > 1000000"));
    let r = env
        .probe(
            "sales",
            json!([{ "op": "commit", "writes": [
            { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]),
        )
        .await;
    assert_eq!(r[0]["error"], "denied", "{r:?}");
    assert_eq!(r[0]["rule"], "big-accounts-by-hand");
    assert!(r[0]["text"].as_str().unwrap().contains("could not be evaluated"), "{r:?}");
    assert!(env.get("customer/acme").is_none(), "nothing was written");
    let refused = env.audit(AuditFilter { call: Some(calls::COMMIT.into()), ..AuditFilter::default() });
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].decision, Decision::Denied);
    assert_eq!(refused[0].rule.as_deref(), Some("rule: big-accounts-by-hand"));
    assert!(refused[0].outcome.contains("No such key: contract_value"), "{}", refused[0].outcome);
    let report = env.host.conflicts(conflicts::MAX_WINDOW_MS).expect("report");
    assert_eq!(report.by_pair["sales vs rule:big-accounts-by-hand: denied"].count, 1, "{:?}", report.by_pair);
}

/// A change request must reach a loaded agent that can apply it, with
/// something to apply; one its owner never resolves expires, as an event
/// on the entity that the requester sees, and cannot be resolved after.
#[tokio::test(flavor = "multi_thread")]
async fn change_requests_go_to_someone_and_expire_when_nobody_answers() {
    let env = Env::new(&[("sales", "probe"), ("support", "probe")]);
    let create = json!([{ "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]);
    env.probe("support", create).await;
    let ask = |owner: &str, proposed: serde_json::Value| json!([{ "op": "request_change", "owner": owner, "entity": "customer/acme", "proposed": proposed, "reason": "r" }]);
    // Seen at HEAD: each of these was accepted, recorded, and went nowhere.
    for (owner, proposed, says) in [
        ("host", json!({ "open_tickets": 1 }), "`host` is not a loaded agent"),
        ("human:alice", json!({ "open_tickets": 1 }), "`human:alice` is not a loaded agent"),
        ("billing", json!({ "open_tickets": 1 }), "loaded: sales, support"),
        ("support", json!({}), "proposes none"),
        ("sales", json!({ "open_tickets": 1 }), "sales cannot apply"),
    ] {
        let r = env.probe("sales", ask(owner, proposed)).await;
        assert_eq!(r[0]["error"], "invalid", "{owner}: {r:?}");
        assert!(r[0]["text"].as_str().unwrap().contains(says), "{owner}: {r:?}");
    }
    let requested = env.audit(AuditFilter { call: Some(calls::REQUEST_CHANGE.into()), ..AuditFilter::default() });
    assert!(requested.iter().all(|e| e.decision == Decision::Invalid), "each refusal is audited");
    let events_before = env.host.store().history(&"customer/acme".parse().unwrap(), 0, 100).unwrap().len();
    assert_eq!(events_before, 1, "no refused request became an event");

    // Support (a probe) is asked, and does not answer.
    let r = env.probe("sales", ask("support", json!({ "open_tickets": 2 }))).await;
    let id = r[0]["request"].as_u64().unwrap_or_else(|| panic!("accepted: {r:?}"));
    let ttl = concord::Limits::default().change_request_ttl_ms;
    let asked_at = env.host.store().event(id).unwrap().expect("the request's event").at_ms;
    assert!(env.host.expire_change_requests(asked_at + ttl - 1).unwrap().is_empty(), "not yet");
    let expired = env.host.expire_change_requests(asked_at + ttl).unwrap();
    assert_eq!(expired.len(), 1);
    let e = &expired[0];
    assert_eq!((e.agent.as_str(), e.kind.as_str()), ("host", "change_resolved"));
    let detail: serde_json::Value = serde_json::from_str(e.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["expired"], true);
    assert_eq!(detail["request"], id);
    assert_eq!(detail["from"], "sales");
    assert!(e.reason.contains("support did not resolve it"), "{}", e.reason);
    assert!(env.host.expire_change_requests(asked_at + 10 * ttl).unwrap().is_empty(), "each expires once");

    // The requester sees it, the late owner is told, and the audit has it.
    let r = env.probe("sales", json!([{ "op": "changes", "entity": "customer/acme" }])).await;
    assert!(
        r[0].as_array().unwrap().iter().any(|ev| ev["agent"] == "host" && ev["kind"] == "change_resolved"),
        "{r:?}"
    );
    let r = env.probe("support", json!([{ "op": "resolve", "request": id, "applied": true }])).await;
    assert_eq!(r[0]["error"], "resolve", "{r:?}");
    assert!(r[0]["text"].as_str().unwrap().contains("expired"), "{r:?}");
    let audited = env.audit(AuditFilter { call: Some(calls::CHANGE_EXPIRED.into()), ..AuditFilter::default() });
    assert_eq!(audited.len(), 1);
    assert_eq!((audited[0].agent.as_str(), audited[0].peer.as_deref()), ("host", Some("support")));

    // After a restart the cursor holds: the first never expires again, and
    // the second does when its time comes.
    let r = env.probe("sales", ask("support", json!({ "open_tickets": 3 }))).await;
    let second = r[0]["request"].as_u64().expect("accepted");
    let env = env.restart();
    assert!(env.host.expire_change_requests(asked_at + 10 * ttl).unwrap().iter().all(|e| {
        serde_json::from_str::<serde_json::Value>(e.detail.as_deref().unwrap()).unwrap()["request"] == second
    }));
    assert_eq!(env.audit(AuditFilter { call: Some(calls::CHANGE_EXPIRED.into()), ..AuditFilter::default() }).len(), 2);
}

/// What an agent says is bounded and cannot spoof the terminal: a 40 MiB
/// report with a screen-clearing escape and a right-to-left override is
/// cut at 64 KiB and printed with those characters escaped; an id with a
/// bidirectional control or a `/`, and an action kind with an escape, are
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn agent_text_is_bounded_and_cannot_spoof_what_is_printed() {
    let limits = "memory_mib = 160\nfuel = 3_000_000_000\ntimeout_ms = 20_000\n";
    let dir = {
        let env = Env::with_limits(&[("hostile", "hostile"), ("sales", "probe")], limits);
        // Ids and kinds that would print as something else.
        for id in ["acme\u{202e}gpj", "acme\u{200b}", "acme\u{ad}", "acme\u{e0041}", "acme/../x", "acme\u{1b}[2J"] {
            let r = env
                .probe(
                    "sales",
                    json!([{ "op": "commit", "writes": [
                    { "entity": format!("customer/{id}"), "expect": "absent", "set": { "status": "active" } }] }]),
                )
                .await;
            assert_eq!(r[0]["error"], "invalid", "{id:?}: {r:?}");
        }
        let ok = json!([{ "op": "commit", "writes": [
            { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]);
        env.probe("sales", ok).await;
        for kind in ["email\u{1b}[31m.send", "email.\u{202e}dnes", "email send", &"e".repeat(129)] {
            let r = env
                .probe("sales", json!([{ "op": "act", "entity": "customer/acme", "kind": kind, "based_on": 1 }]))
                .await;
            assert_eq!(r[0]["error"], "invalid", "{kind:?}: {r:?}");
        }
        let inv = env.send("hostile", "loud_report", "customer/acme", json!({ "mib": 40 })).await;
        let report = inv.outcome.text();
        assert!(report.len() < (65 << 10) + 200, "the host keeps 64 KiB of a report, not {}", report.len());
        assert!(report.ends_with("the host keeps 65536]"), "{}", &report[report.len() - 80..]);
        let crate::common::Env { dir, host } = env;
        drop(std::sync::Arc::into_inner(host).expect("no other host handles"));
        dir
    };
    std::fs::write(
        dir.path().join("loud.jsonl"),
        "{\"agent\": \"hostile\", \"kind\": \"loud_report\", \"entity\": \"customer/acme\", \"body\": {\"mib\": 40}}\n",
    )
    .expect("script");
    let run = concord(dir.path(), &["run", "--script", "loud.jsonl"]);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(out.len() < 200 << 10, "concord run printed {} bytes", out.len());
    assert!(!out.contains('\u{1b}') && !out.contains('\u{202e}'), "nothing raw reaches the terminal");
    assert!(out.contains("\\u{1b}[2J\\u{202e}all clear"), "escaped, and so visible: {}", &out[..out.len().min(400)]);
}

/// A store cut short after a clean stop is named as damaged by the read
/// commands, not as a host that stopped without closing it (whose remedy,
/// starting a host, would not help).
#[test]
fn a_truncated_store_is_named_as_damaged_by_the_read_commands() {
    let dir = demo_dir();
    let run = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let file = std::fs::OpenOptions::new().write(true).open(dir.path().join("data/concord.redb")).expect("store");
    file.set_len(50_000).expect("truncate");
    for args in [&["get", "customer/acme"][..], &["audit"], &["history", "customer/acme"]] {
        let o = concord(dir.path(), args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("the file is damaged") && stderr(&o).contains("backup"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("stopped without closing"), "{args:?}: {}", stderr(&o));
    }
}

/// And a host that was killed is named as such, with the remedy that works.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_host_is_named_as_one_that_stopped_without_closing() {
    let dir = crate::http::service_dir(&[("support", "probe")], "");
    let p = crate::http::Process::start(dir.path());
    let create = ops(json!([{ "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]));
    assert_eq!(p.api.post("/v1/invoke/support", create).await.status, StatusCode::OK);
    p.signal("KILL");
    p.wait();
    let o = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("stopped without closing") && stderr(&o).contains("start a host"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("damaged"), "{}", stderr(&o));
}

/// Side effects are asked for only by whom the config names, at a bounded
/// rate, into a bounded outbox: an agent that owns nothing cannot send an
/// email, nor can one send 3,000.
#[tokio::test(flavor = "multi_thread")]
async fn actions_are_declared_rate_limited_and_the_outbox_is_bounded() {
    let config = |actions: &str| {
        config_text(FAST_LIMITS).replace("per_minute = 60\nper_hour = 1_000\nmax_pending = 10_000\n", actions)
    };
    let acts = |kind: &str, n: usize| {
        let mut ops = vec![json!({ "op": "get", "entity": "customer/acme" })];
        ops.extend((0..n).map(|i| json!({ "op": "act", "entity": "customer/acme", "kind": kind, "based_on": "read", "key": format!("k{i}") })));
        serde_json::Value::Array(ops)
    };
    let create = json!([{ "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "absent", "set": { "status": "active" } }] }]);

    let env = Env::with_config(&[("sales", "probe"), ("outsider", "probe")], &config("per_minute = 5\n"));
    env.probe("sales", create.clone()).await;
    // Seen at HEAD: any agent could ask for any kind.
    let r = env.probe("outsider", acts("email.upsell", 1)).await;
    assert_eq!(r[1]["error"], "forbidden", "{r:?}");
    assert_eq!(r[1]["field"], "action:email.upsell");
    assert_eq!(r[1]["writers"], json!(["sales"]));
    let r = env.probe("sales", acts("email.spam", 1)).await;
    assert_eq!(r[1]["error"], "forbidden", "{r:?}");
    assert!(r[1]["text"].as_str().unwrap().contains("not declared"), "{r:?}");
    // Seen at HEAD: 3,000 in one invocation, all delivered. Now five a minute.
    let r = env.probe("sales", acts("email.upsell", 12)).await;
    let recorded = r[1..].iter().filter(|x| x.get("action").is_some()).count();
    assert_eq!(recorded, 5, "{r:?}");
    assert!(r[6..].iter().all(|x| x["error"] == "deferred" && x["rule"] == "actions.per_minute"), "{r:?}");
    env.host.deliver_actions().expect("delivers");
    assert_eq!(env.delivered().len(), 5, "only what was recorded reaches the sink");
    let deferred = env.audit(AuditFilter { decision: Some(Decision::Deferred), ..AuditFilter::default() });
    assert_eq!(deferred.len(), 7, "each refusal is audited");
    assert!(deferred.iter().all(|e| e.rule.as_deref() == Some("rule: actions.per_minute")));
    let forbidden = env.audit(AuditFilter { decision: Some(Decision::Forbidden), ..AuditFilter::default() });
    assert_eq!(forbidden.len(), 2);

    // The outbox holds at most `max_pending` undelivered; once the sink has
    // caught up, actions are taken again.
    let env = Env::with_config(&[("sales", "probe")], &config("max_pending = 3\n"));
    env.probe("sales", create).await;
    let r = env.probe("sales", acts("email.upsell", 5)).await;
    assert_eq!(r[1..].iter().filter(|x| x.get("action").is_some()).count(), 3, "{r:?}");
    assert_eq!(r[4]["rule"], "actions.max_pending", "{r:?}");
    assert!(r[4]["text"].as_str().unwrap().contains("the outbox holds 3 undelivered actions"), "{r:?}");
    env.host.deliver_actions().expect("delivers");
    assert_eq!(env.delivered().len(), 3);
    let r = env.probe("sales", acts("email.upsell", 1)).await;
    assert!(r[1].get("action").is_some(), "{r:?}");

    // A bad [actions] table is refused with its line.
    let dir = tempfile::tempdir().expect("dir");
    let text = config("per_minute = 0\n");
    std::fs::write(dir.path().join("concord.toml"), &text).expect("config");
    let o = concord(dir.path(), &["agents"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let line = text.lines().position(|l| l.starts_with("per_minute")).unwrap() + 1;
    assert!(stderr(&o).contains(&format!("concord.toml:{line}: actions.per_minute")), "{}", stderr(&o));
}

/// Every refusal the gate audits names the rule that decided it, and no
/// free-form string an agent passes reaches the audit or the store
/// unbounded: each host call's refusals, made through a real agent.
#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_names_its_rule_and_every_free_form_string_is_bounded() {
    let limits = format!("{FAST_LIMITS}max_call_bytes = 4096\naudit_arg_bytes = 512\n");
    let env = Env::with_limits(&[("sales", "probe"), ("support", "probe")], &limits);
    let huge = "x".repeat(10_000);
    let acme = "customer/acme";
    let create =
        json!([{ "op": "commit", "writes": [{ "entity": acme, "expect": "absent", "set": { "status": "active" } }] }]);
    env.probe("support", create).await;
    let r = env.probe("sales", json!([{ "op": "request_change", "owner": "support", "entity": acme, "proposed": { "open_tickets": 1 }, "reason": "r" }])).await;
    let request = r[0]["request"].as_u64().unwrap_or_else(|| panic!("accepted: {r:?}"));
    let sales = json!([
        { "op": "get", "entity": "nokind/x" },
        { "op": "history", "entity": "nokind/x" },
        { "op": "recent", "entity": "nokind/x", "within_ms": 1000 },
        { "op": "changes", "entity": "nokind/x" },
        // Not sales's field; then a version that is gone; then too big.
        { "op": "commit", "writes": [{ "entity": acme, "expect": 1, "set": { "open_tickets": 3 } }] },
        { "op": "commit", "writes": [{ "entity": acme, "expect": 7, "set": { "status": "x" } }] },
        { "op": "commit", "reason": huge, "writes": [{ "entity": acme, "expect": 1, "set": { "status": "x" } }] },
        { "op": "act", "entity": acme, "kind": "", "payload": {}, "based_on": 1 },
        { "op": "act", "entity": acme, "kind": "email.send", "payload": { "body": huge }, "based_on": 1 },
        { "op": "lease", "entity": acme, "ttl_ms": 1_000_000_000u64 },
        { "op": "lease", "entity": acme, "ttl_ms": 10_000 },
        { "op": "request_change", "owner": "billing", "entity": acme, "proposed": { "open_tickets": 1 }, "reason": "r" },
        { "op": "request_change", "owner": "support", "entity": acme, "proposed": {}, "reason": "r" },
        { "op": "request_change", "owner": "support", "entity": acme, "proposed": { "open_tickets": 1 }, "reason": huge },
        { "op": "resolve", "request": request, "applied": true },
    ]);
    let r = env.probe("sales", sales).await;
    assert_eq!(r[10]["token"].as_u64().map(|_| ()), Some(()), "sales holds the lease: {r:?}");
    let support = json!([
        { "op": "lease", "entity": acme, "ttl_ms": 10_000 },
        { "op": "renew", "entity": acme, "token": 999_999, "ttl_ms": 10_000 },
        { "op": "resolve", "request": 999_999, "applied": true },
        { "op": "resolve", "request": request, "applied": false, "reason": huge },
        { "op": "resolve", "request": request, "applied": false, "reason": "not now" },
        { "op": "resolve", "request": request, "applied": false, "reason": "again" },
    ]);
    let r = env.probe("support", support).await;
    assert_eq!(r[3]["error"], "resolve", "an oversized reason is refused: {r:?}");
    assert!(r[3]["text"].as_str().unwrap_or("").contains("limits.max_call_bytes"), "{r:?}");
    assert_eq!(r[4]["resolved"], true, "{r:?}");

    let entries = env.all_audit();
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| !matches!(e.decision, Decision::Allowed | Decision::Stopped) && e.agent != "host")
        .collect();
    // Each call above that is refused, once: 15 from sales (less the lease
    // it got) and 5 from support.
    let calls_refused: std::collections::BTreeSet<&str> = refused.iter().map(|e| e.call.as_str()).collect();
    for call in [
        calls::GET,
        calls::HISTORY,
        calls::RECENT,
        calls::CHANGES,
        calls::COMMIT,
        calls::ACT,
        calls::LEASE,
        calls::RENEW,
        calls::REQUEST_CHANGE,
        calls::RESOLVE_CHANGE,
    ] {
        assert!(calls_refused.contains(call), "a refusal of {call} was made: {calls_refused:?}");
    }
    assert_eq!(refused.len(), 19, "{:#?}", refused.iter().map(|e| (&e.call, &e.outcome)).collect::<Vec<_>>());
    for e in &refused {
        assert!(
            e.rule.as_deref().is_some_and(|r| !r.is_empty()),
            "{} refused ({:?}) names its rule: {}",
            e.call,
            e.decision,
            e.outcome
        );
    }
    for e in &entries {
        for (what, text) in [("args", &e.args), ("outcome", &e.outcome)] {
            assert!(text.len() <= 512 + 64, "{} entry {}: {what} is {} bytes", e.call, e.seq, text.len());
        }
    }
    let requests = env.host.store().change_requests(0, 100).expect("reads");
    let stored = requests.iter().find(|q| q.id == request).expect("the request");
    assert_eq!(stored.resolution.as_deref(), Some("not now"), "the oversized reason was not stored");
}

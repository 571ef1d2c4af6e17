//! `concord serve` as a process: killed under load, drained by SIGTERM,
//! and the CLI going through it.

use crate::common::{concord, demo_dir, stderr, stdout};
use crate::http::{Process, service_dir};
use hyper::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn probe(ops: Value) -> Value {
    json!({ "kind": "probe", "body": { "ops": ops } })
}

/// Ample CPU for agents that spin on purpose.
const SLOW_LIMITS: &str = "fuel = 1_000_000_000_000_000\ntimeout_ms = 60_000\n";

fn slow_dir(agents: &[(&str, &str)], server: &str) -> tempfile::TempDir {
    let dir = service_dir(agents, server);
    let path = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let start = text.find("[limits]").expect("limits");
    let end = start + text[start..].find("\n# Customer records").expect("limits end");
    std::fs::write(&path, format!("{}[limits]\n{SLOW_LIMITS}\n{}", &text[..start], &text[end..])).expect("config");
    dir
}

/// SIGKILL under HTTP load, then a restart: every commit acknowledged with
/// a 200 is there, no read ever showed a state the restarted host lacks,
/// and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_http_load_loses_nothing_acknowledged() {
    let dir = service_dir(&[("support", "probe")], "");
    let p = Process::start(dir.path());
    let create = probe(
        json!([{ "op": "commit", "writes": [{ "entity": "customer/n", "expect": "absent", "set": { "open_tickets": 0 } }] }]),
    );
    assert_eq!(p.api.post("/v1/invoke/support", create).await.status, StatusCode::OK);
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let incremented: Arc<Mutex<Vec<i64>>> = Arc::default();
    let seen: Arc<Mutex<(u64, i64)>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..6 {
        let (api, created) = (p.api.clone(), created.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("customer/w{t}-{i}");
                let body = probe(json!([{ "op": "commit", "writes": [{ "entity": id, "expect": "absent", "set": { "name": "w" } }] }]));
                let Some(a) = api.try_post("/v1/invoke/support", &body).await else { return };
                if a.status == StatusCode::OK && a.text.contains("versions") {
                    created.lock().expect("lock").push(id);
                }
            }
        }));
    }
    for _ in 0..3 {
        let (api, incremented) = (p.api.clone(), incremented.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let body = probe(
                    json!([{ "op": "increment", "entity": "customer/n", "field": "open_tickets", "tries": 1000 }]),
                );
                let Some(a) = api.try_post("/v1/invoke/support", &body).await else { return };
                let results: Vec<Value> =
                    a.body["report"].as_str().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
                if let Some(v) = results.first().and_then(|r| r["value"].as_i64()) {
                    incremented.lock().expect("lock").push(v);
                }
            }
        }));
    }
    for _ in 0..3 {
        let (api, seen) = (p.api.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(a) = api.try_get("/v1/entities/customer/n").await else { return };
                if a.status == StatusCode::OK {
                    let (v, n) = (
                        a.body["version"].as_u64().unwrap_or(0),
                        a.body["fields"]["open_tickets"].as_i64().unwrap_or(0),
                    );
                    let mut s = seen.lock().expect("lock");
                    *s = (s.0.max(v), s.1.max(n));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    p.signal("KILL");
    for t in tasks {
        let _ = t.await;
    }
    drop(p);
    let created = created.lock().expect("lock").clone();
    let incremented = incremented.lock().expect("lock").clone();
    let (read_version, read_value) = *seen.lock().expect("lock");
    assert!(
        created.len() > 10 && !incremented.is_empty(),
        "the load ran: {} created, {} increments",
        created.len(),
        incremented.len()
    );

    let p = Process::start(dir.path());
    for id in &created {
        let (kind, rest) = id.split_once('/').expect("kind/id");
        let a = p.api.get(&format!("/v1/entities/{kind}/{rest}")).await;
        assert_eq!(a.status, StatusCode::OK, "acknowledged {id} is there");
    }
    let n = p.api.get("/v1/entities/customer/n").await;
    let value = n.body["fields"]["open_tickets"].as_i64().expect("value");
    let version = n.body["version"].as_u64().expect("version");
    assert!(value >= incremented.iter().copied().max().unwrap_or(0), "every acknowledged increment is there");
    assert!(
        version >= read_version && value >= read_value,
        "no read showed what the restart lacks: read v{read_version}={read_value}, now v{version}={value}"
    );
    let verify = p.api.get("/v1/audit/verify").await;
    assert_eq!(verify.body["intact"], true, "{}", verify.text);
    let start = p.api.get("/v1/audit?call=host.start&limit=1").await;
    assert!(
        start.text.contains("ended without a stop entry"),
        "the restart says the last run was killed: {}",
        start.text
    );
}

/// SIGTERM drains: an invocation in flight finishes and its client gets
/// the answer; then the host stops cleanly (exit 0, `host.stop` after it).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_invocation_in_flight_finish_and_answer() {
    let dir = slow_dir(&[("sales", "probe")], "drain_ms = 20_000");
    let p = Process::start(dir.path());
    let api = p.api.clone();
    let slow =
        tokio::spawn(
            async move { api.try_post("/v1/invoke/sales", &probe(json!([{ "op": "spin", "ms": 1500 }]))).await },
        );
    tokio::time::sleep(Duration::from_millis(400)).await;
    p.signal("TERM");
    let answer = slow.await.expect("client").expect("an answer, not a dropped connection");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["outcome"], "ok", "it finished: {}", answer.text);
    let late = p.api.try_post("/v1/invoke/sales", &probe(json!([]))).await;
    assert!(late.is_none_or(|a| a.status == StatusCode::SERVICE_UNAVAILABLE), "nothing new is taken while draining");
    let log = dir.path().join("serve.log");
    assert_eq!(p.wait(), Some(0), "{}", std::fs::read_to_string(log).unwrap_or_default());
    let audit = stdout(&concord(dir.path(), &["audit", "--limit", "2", "--json"]));
    let entries: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(entries[0]["call"], "invocation.end");
    assert_eq!(entries[0]["decision"], "allowed");
    assert_eq!(entries[1]["call"], "host.stop", "then the host stopped");
}

/// A drain that runs out stops what still runs: audited as stopped, its
/// client told so; and a second signal stops at once, losing nothing
/// acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_runs_out_stops_the_invocation_and_a_second_signal_stops_at_once() {
    let dir = slow_dir(&[("sales", "probe")], "drain_ms = 300");
    let p = Process::start(dir.path());
    let api = p.api.clone();
    let slow =
        tokio::spawn(
            async move { api.try_post("/v1/invoke/sales", &probe(json!([{ "op": "spin", "ms": 30_000 }]))).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    p.signal("TERM");
    let answer = slow.await.expect("client").expect("an answer");
    assert_eq!(answer.body["outcome"], "stopped", "{}", answer.text);
    assert!(answer.body["report"].as_str().is_some_and(|r| r.contains("drain_ms")), "{}", answer.text);
    assert_eq!(p.wait(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(15), "well before the agent would have finished");
    let end = stdout(&concord(dir.path(), &["audit", "--call", "invocation.end", "--limit", "1", "--json"]));
    assert!(end.contains("\"decision\":\"stopped\""), "{end}");

    let p = Process::start(dir.path());
    let create = probe(
        json!([{ "op": "commit", "writes": [{ "entity": "customer/kept", "expect": "absent", "set": { "name": "k" } }] }]),
    );
    assert_eq!(p.api.post("/v1/invoke/sales", create).await.status, StatusCode::OK);
    let api = p.api.clone();
    let _slow =
        tokio::spawn(
            async move { api.try_post("/v1/invoke/sales", &probe(json!([{ "op": "spin", "ms": 30_000 }]))).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    p.signal("TERM");
    assert_eq!(p.wait(), Some(130), "a second signal stops at once");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The next start recovers the journal; the acknowledged commit is there.
    let p = Process::start(dir.path());
    let kept = p.api.get("/v1/entities/customer/kept").await;
    assert_eq!(kept.status, StatusCode::OK, "the acknowledged commit is there: {}", kept.text);
    assert_eq!(p.api.get("/v1/audit/verify").await.body["intact"], true);
}

/// A keyed request cut short by a kill is not run again under its key: the
/// retry after the restart is answered 409, saying what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_whose_first_request_was_killed_is_not_run_again() {
    let dir = service_dir(&[("sales", "sales")], "breakpoints = true");
    let p = Process::start(dir.path());
    let body =
        json!({ "kind": "upsell", "entity": "customer/acme", "idempotency_key": "once", "pause_before": "kb.get" });
    let a = p.api.post("/v1/invoke/sales", body.clone()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    p.signal("KILL");
    drop(p);
    let p = Process::start(dir.path());
    let retry = p.api.post("/v1/invoke/sales", body).await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text);
    assert_eq!(retry.body["error"], "interrupted");
    assert!(retry.body["detail"].as_str().is_some_and(|d| d.contains("new key")), "{}", retry.text);
}

/// The read verbs print the same against a running host as against a
/// stopped one, with the same exit codes; operators and triggers go
/// through it; and what needs the store to itself says who holds it.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_the_same_through_a_running_host() {
    let dir = demo_dir();
    let run = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}{}", stdout(&run), stderr(&run));
    let verbs: &[&[&str]] = &[
        &["get", "customer/acme"],
        &["get", "customer/acme", "--json"],
        &["get", "customer/acme", "--at", "3"],
        &["get", "customer/nobody"],
        &["get", "vendor/x"],
        &["history", "customer/acme"],
        &["history", "customer/acme", "--json", "--after", "2", "--limit", "3"],
        &["audit", "--agent", "sales"],
        &["audit", "--agent", "product", "--outcome", "deferred", "--json"],
        &["audit", "--entity", "customer/acme", "--limit", "7"],
        &["audit", "--trace", "8"],
        &["audit", "--trace", "99999"],
        &["actions"],
        &["actions", "--json"],
        &["conflicts"],
        &["replay"],
        &["agents"],
    ];
    let offline: Vec<_> = verbs.iter().map(|v| concord(dir.path(), v)).collect();
    let p = Process::start(dir.path());
    for (verb, before) in verbs.iter().zip(&offline) {
        let through = concord(dir.path(), verb);
        assert_eq!(through.status.code(), before.status.code(), "{verb:?}: {}", stderr(&through));
        if verb == &["agents"] {
            // The one line that differs: when the agents were loaded (a
            // running host's start; offline, the listing's own load).
            let timeless = |o: &std::process::Output| {
                stdout(o).lines().filter(|l| !l.contains(" loaded ")).collect::<Vec<_>>().join("\n")
            };
            assert!(stdout(&through).contains(" loaded "), "load times are shown: {}", stdout(&through));
            assert_eq!(timeless(&through), timeless(before), "{verb:?} prints the same agents");
            continue;
        }
        assert_eq!(stdout(&through), stdout(before), "{verb:?} prints the same");
    }
    let conflicts = |o: std::process::Output| {
        let mut v: Value = serde_json::from_str(&stdout(&o)).expect("json");
        // How far the count went: the running host's start is one entry more.
        v.as_object_mut().map(|m| (m.remove("through_audit"), m.remove("through_event")));
        v
    };

    let pin = concord(dir.path(), &["pin", "customer/acme", "status=active", "--reason", "CEO call"]);
    assert_eq!(pin.status.code(), Some(0), "{}", stderr(&pin));
    assert!(stdout(&pin).starts_with("pinned status=\"active\" on customer/acme (event "), "{}", stdout(&pin));
    let invoke =
        concord(dir.path(), &["invoke", "sales", "upsell", "--entity", "customer/acme", "--body", "{\"offer\":\"x\"}"]);
    assert_eq!(invoke.status.code(), Some(0), "{}", stderr(&invoke));
    assert!(stdout(&invoke).contains("sales    invocation"), "{}", stdout(&invoke));
    let unpin = concord(dir.path(), &["unpin", "customer/acme", "status", "--reason", "done"]);
    assert_eq!(unpin.status.code(), Some(0), "{}", stderr(&unpin));
    let script = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(script.status.code(), Some(3));
    assert!(stderr(&script).contains("held by `concord serve`"), "{}", stderr(&script));
    let check = concord(dir.path(), &["check"]);
    assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
    let serve_again = concord(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(serve_again.status.code(), Some(3));
    assert!(stderr(&serve_again).contains("served already"), "{}", stderr(&serve_again));

    let remote = conflicts(concord(dir.path(), &["conflicts", "--json"]));
    assert!(remote["by_pair"].as_object().is_some_and(|m| !m.is_empty()), "{remote}");
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let offline_conflicts = conflicts(concord(dir.path(), &["conflicts", "--json"]));
    assert_eq!(offline_conflicts, remote, "the report is the same offline");
    let pins = stdout(&concord(dir.path(), &["audit", "--call", "human.pin", "--json"]));
    assert!(pins.contains("\"agent\":\"human:local\""), "an open host records `local`: {pins}");
    let follow = concord(dir.path(), &["audit", "--follow"]);
    assert_eq!(follow.status.code(), Some(3));
    assert!(stderr(&follow).contains("needs a running host"), "{}", stderr(&follow));
}

/// With tokens: the CLI's `token add` prints a token once and keeps its
/// sha256; the server lets it in, names it in the request log, and no
/// token appears in the log.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_the_cli_and_no_token_in_the_logs() {
    let dir = service_dir(&[("sales", "sales")], "tokens = \"tokens.toml\"");
    let add = concord(dir.path(), &["token", "add", "alice", "--role", "operator"]);
    assert_eq!(add.status.code(), Some(0), "{}", stderr(&add));
    let token = stdout(&add).trim().to_string();
    assert!(token.starts_with("concord_"), "{token}");
    let file = std::fs::read_to_string(dir.path().join("tokens.toml")).expect("file");
    assert!(!file.contains(&token), "only the digest is kept");
    let list = stdout(&concord(dir.path(), &["token", "list"]));
    assert!(list.contains("alice") && list.contains("operator") && !list.contains(&token), "{list}");
    let p = Process::start(dir.path());
    let ok = p
        .api
        .with_token(&token)
        .post("/v1/invoke/sales", json!({ "kind": "onboard", "entity": "customer/a", "body": { "name": "A" } }))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let wrong = format!("{token}x");
    assert_eq!(p.api.with_token(&wrong).get("/v1/agents").await.status, StatusCode::UNAUTHORIZED);
    // The CLI with and without the token.
    let mut get = std::process::Command::new(env!("CARGO_BIN_EXE_concord"));
    get.current_dir(dir.path()).args(["get", "customer/a"]).env_remove("CONCORD_CONFIG");
    let anonymous = get.output().expect("runs");
    assert_eq!(anonymous.status.code(), Some(3), "{}", stderr(&anonymous));
    assert!(stderr(&anonymous).contains("CONCORD_TOKEN"), "says how: {}", stderr(&anonymous));
    let with = get.env("CONCORD_TOKEN", &token).output().expect("runs");
    assert_eq!(with.status.code(), Some(0), "{}", stderr(&with));
    let removed = concord(dir.path(), &["token", "remove", "alice"]);
    assert_eq!(removed.status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.api.with_token(&token).get("/v1/agents").await.status, StatusCode::UNAUTHORIZED, "removed: refused");
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(log.contains("token=alice"), "requests are logged with the token's name:\n{log}");
    assert!(!log.contains(&token), "no token in the log");
}

/// A server file left by a killed host, whose pid has since gone to
/// another process and whose address now answers for another host, is not
/// trusted: the CLI reads its own store, not the stranger's.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_server_file_is_not_trusted_when_its_pid_and_address_are_reused() {
    let other = service_dir(&[("sales", "sales")], "");
    let stranger = Process::start(other.path());
    let text = std::fs::read_to_string(other.path().join("data/concord.redb.server")).expect("server file");
    let address = serde_json::from_str::<Value>(&text).expect("json")["address"].as_str().expect("address").to_string();

    let dir = demo_dir();
    let run = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let own = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(own.status.code(), Some(0), "{}", stderr(&own));
    // This test's pid is alive, and the address answers: only the pid the
    // host itself reports tells the stale file apart.
    let stale = json!({ "pid": std::process::id(), "address": address, "started_at_ms": 1, "version": "0" });
    std::fs::write(dir.path().join("data/concord.redb.server"), stale.to_string()).expect("stale file");
    let read = concord(dir.path(), &["get", "customer/acme"]);
    assert_eq!(read.status.code(), Some(0), "{}", stderr(&read));
    assert_eq!(stdout(&read), stdout(&own), "the CLI read its own store");
    let pin = concord(dir.path(), &["pin", "customer/acme", "status=active", "--by", "alice", "--reason", "mine"]);
    assert_eq!(pin.status.code(), Some(0), "{}", stderr(&pin));
    let theirs = stranger.api.get("/v1/audit?call=human.pin").await;
    assert_eq!(theirs.body["entries"].as_array().map(Vec::len), Some(0), "the stranger got no pin: {}", theirs.text);
    stranger.signal("TERM");
    assert_eq!(stranger.wait(), Some(0));
}

/// With the watching off, an edit of `concord.toml` waits for SIGHUP:
/// then it applies (audited), and the process goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let dir = service_dir(&[("product", "probe")], "");
    let path = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config").replace("[agents]\n", "[agents]\nwatch = false\n");
    std::fs::write(&path, &text).expect("config");
    let p = Process::start(dir.path());
    let reloads = async |api: &crate::http::Api| {
        let a = api.get("/v1/audit?call=config.reloaded").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.body["entries"].as_array().expect("entries").clone()
    };
    let moved = text.replace("[limits]\n", "[limits]\nmax_cascade_depth = 7\n");
    assert_ne!(moved, text);
    std::fs::write(&path, &moved).expect("config");
    // Watched, the edit would apply after the config's settle time (200 ms);
    // five times that without a reload shows it is not watched.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reloads(&p.api).await.is_empty(), "not watched: nothing until the SIGHUP");

    p.signal("HUP");
    let started = std::time::Instant::now();
    let entries = loop {
        let entries = reloads(&p.api).await;
        if !entries.is_empty() {
            break entries;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "SIGHUP did not reload the config");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entries.len(), 1);
    let outcome = entries[0]["outcome"].as_str().expect("outcome");
    assert!(outcome.contains("max_cascade_depth"), "{outcome}");
    let a = p.api.post("/v1/invoke/product", probe(json!([{ "op": "log", "message": "still here" }]))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}

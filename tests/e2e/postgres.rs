//! The PostgreSQL backend beyond the conformance suite: what several hosts
//! on one database must keep (one order, one chain, conflicts across
//! hosts, fences that only grow), and the open errors. Each test runs on a
//! real server ([`concord_pg_server`]); a "host" here is a store opened on the
//! shared database, as each `concord serve` process opens one.

use crate::conformance::{T0, acme, actor, commit, draft, globex, set, versions};
use concord::audit::{AuditFilter, Decision, Verification};
use concord::kb::postgres::{OpenError, PgOptions, SCHEMA_VERSION};
use concord::kb::{Access, Backend, CommitOutcome, EntityRef, Expect, LeaseOutcome, Store, Value};
use concord_pg_server::PgServer;
use std::sync::Arc;

fn open(url: &str, access: Access) -> Result<Arc<dyn Store>, concord::kb::OpenError> {
    concord::kb::open(&Backend::Postgres(PgOptions { url: url.into(), pool: 4 }), access)
}

fn host(url: &str) -> Arc<dyn Store> {
    open(url, Access::ReadWrite).expect("a host's store on the shared database")
}

/// A folder for a `concord serve` host on the PostgreSQL database `url`:
/// these agents (`(name, guest)`), `server` under `[server]`, and the
/// config then passed through `edit`.
fn pg_service_dir(
    agents: &[(&str, &str)],
    server: &str,
    url: &str,
    edit: impl FnOnce(String) -> String,
) -> tempfile::TempDir {
    let dir = crate::http::service_dir(agents, server);
    let path = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replacen("[kb]\n", &format!("[kb]\nbackend = \"postgres\"\nurl = \"{url}\"\n"), 1);
    std::fs::write(&path, edit(text)).expect("config");
    dir
}

fn pg_error(result: Result<Arc<dyn Store>, concord::kb::OpenError>) -> OpenError {
    match result {
        Err(concord::kb::OpenError::Postgres(e)) => e,
        Err(other) => panic!("expected a PostgreSQL open error, got {other}"),
        Ok(_) => panic!("expected the open to fail"),
    }
}

#[test]
fn open_errors_name_the_server_and_never_the_password() {
    let server = PgServer::shared();

    let e = pg_error(open("postgres://concord:s3cret@127.0.0.1:notaport/x", Access::ReadWrite));
    assert!(matches!(e, OpenError::BadUrl { .. }), "{e:?}");
    assert!(!e.to_string().contains("s3cret"), "{e}");

    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    let e = pg_error(open(&format!("postgres://concord:s3cret@127.0.0.1:{port}/kb"), Access::ReadWrite));
    let text = e.to_string();
    assert!(matches!(e, OpenError::Unreachable { .. }), "{e:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}/kb as concord")), "{text}");
    assert!(!text.contains("s3cret"), "{text}");

    let e = pg_error(open(&format!("postgres://concord:s3cret@127.0.0.1:{}/missing", server.port), Access::ReadWrite));
    let text = e.to_string();
    assert!(matches!(e, OpenError::Refused { .. }), "{e:?}");
    assert!(text.contains("createdb"), "says what to do: {text}");
    assert!(!text.contains("s3cret"), "{text}");

    // A read command on a database no host has set up.
    let url = server.fresh_database();
    let e = pg_error(open(&url, Access::ReadOnly));
    assert!(matches!(e, OpenError::NotMigrated { found: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("concord serve"), "{e}");

    // A schema from a newer Concord is refused, naming both versions, and
    // left as it was.
    drop(host(&url));
    let newer = SCHEMA_VERSION + 1;
    server.psql(&url, &format!("INSERT INTO concord_schema VALUES ({newer}, 0)"));
    for access in [Access::ReadWrite, Access::ReadOnly] {
        let e = pg_error(open(&url, access));
        let text = e.to_string();
        assert!(matches!(e, OpenError::Newer { .. }), "{e:?}");
        assert!(text.contains(&format!("version {newer}")) && text.contains(&SCHEMA_VERSION.to_string()), "{text}");
    }
    assert_eq!(server.psql(&url, "SELECT max(version) FROM concord_schema"), newer.to_string());
}

#[test]
fn a_second_host_migrates_nothing_and_sees_the_first_hosts_state() {
    let server = PgServer::shared();
    let url = server.fresh_database();
    let a = host(&url);
    let (outcome, _) = commit(&*a, "support", vec![set(acme(), Expect::Absent, &[("status", "active")])], T0);
    assert_eq!(versions(&outcome), [1]);
    let b = host(&url);
    assert_eq!(b.get(&acme()).expect("read").map(|e| e.version), Some(1));
    assert_eq!(server.psql(&url, "SELECT count(*) FROM concord_schema"), SCHEMA_VERSION.to_string());
    let reader = open(&url, Access::ReadOnly).expect("a read-only open of a migrated database");
    assert_eq!(reader.get(&acme()).expect("read").map(|e| e.version), Some(1));
}

#[test]
fn a_conflict_across_hosts_names_the_other_hosts_agent() {
    let server = PgServer::shared();
    let url = server.fresh_database();
    let (a, b) = (host(&url), host(&url));
    commit(&*a, "support", vec![set(acme(), Expect::Absent, &[("status", "active")])], T0);
    // Sales, on host A, read version 1; Support, on host B, changes it.
    let read = a.get(&acme()).expect("read").expect("acme").version;
    let (outcome, _) =
        commit(&*b, "support", vec![set(acme(), Expect::Version(read), &[("status", "at_risk")])], T0 + 1);
    assert_eq!(versions(&outcome), [2]);
    let (outcome, entry) =
        commit(&*a, "sales", vec![set(acme(), Expect::Version(read), &[("note", "upsell")])], T0 + 2);
    let CommitOutcome::Conflict(c) = outcome else { panic!("expected a conflict, got {outcome:?}") };
    assert_eq!((c.changed_by.as_str(), c.changed_fields.as_slice()), ("support", ["status".to_string()].as_slice()));
    assert_eq!(c.current_version, Some(2));
    assert_eq!(entry.decision, Decision::Conflict);
}

/// Hosts × writers, each adding 1 to a counter on shared entities, on the
/// version it read, retrying on conflicts.
#[test]
fn several_hosts_keep_one_order_one_chain_and_no_lost_update() {
    const HOSTS: usize = 3;
    const WRITERS: usize = 3;
    const INCREMENTS: usize = 15;
    let server = PgServer::shared();
    let url = server.fresh_database();
    let hosts: Vec<Arc<dyn Store>> = (0..HOSTS).map(|_| host(&url)).collect();
    let entities = [acme(), globex(), EntityRef::new("customer", "initech")];
    for e in &entities {
        let w = concord::kb::Write {
            entity: e.clone(),
            expect: Expect::Absent,
            set: [("n".to_string(), Value::Integer(0))].into(),
            unset: vec![],
            fence: None,
        };
        commit(&*hosts[0], "setup", vec![w], T0);
    }
    let conflicts = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for (h, store) in hosts.iter().enumerate() {
            for w in 0..WRITERS {
                let (store, entities, conflicts) = (store.clone(), &entities, &conflicts);
                scope.spawn(move || {
                    let agent = format!("h{h}w{w}");
                    for i in 0..INCREMENTS {
                        let entity = &entities[(h + w + i) % entities.len()];
                        loop {
                            let current = store.get(entity).expect("read").expect("exists");
                            let Some(Value::Integer(n)) = current.fields.get("n").cloned() else { panic!("n") };
                            let write = concord::kb::Write {
                                entity: entity.clone(),
                                expect: Expect::Version(current.version),
                                set: [("n".to_string(), Value::Integer(n + 1))].into(),
                                unset: vec![],
                                fence: None,
                            };
                            match commit(&*store, &agent, vec![write], T0 + 1).0 {
                                CommitOutcome::Committed { .. } => break,
                                CommitOutcome::Conflict(_) => {
                                    conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                other => panic!("{other:?}"),
                            }
                        }
                    }
                });
            }
        }
    });
    let total: i64 = entities
        .iter()
        .map(|e| match hosts[1].get(e).expect("read").expect("exists").fields.get("n") {
            Some(Value::Integer(n)) => *n,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(total as usize, HOSTS * WRITERS * INCREMENTS, "no increment lost");
    // One gap-free order of events across hosts, the same from every host.
    let events = hosts[2].events(0, usize::MAX).expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(seqs.len(), entities.len() + HOSTS * WRITERS * INCREMENTS);
    // One chain: every host verifies it whole, every commit and conflict in it.
    for store in &hosts {
        match store.verify_audit().expect("verify") {
            Verification::Intact { entries, .. } => {
                let expected = entities.len()
                    + HOSTS * WRITERS * INCREMENTS
                    + conflicts.load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(entries as usize, expected);
            }
            broken => panic!("{broken:?}"),
        }
    }
    let refused =
        hosts[0].audit(&AuditFilter { decision: Some(Decision::Conflict), ..Default::default() }).expect("audit");
    assert_eq!(refused.len(), conflicts.load(std::sync::atomic::Ordering::Relaxed));
}

#[test]
fn fencing_tokens_grow_strictly_across_hosts() {
    let server = PgServer::shared();
    let url = server.fresh_database();
    let (a, b) = (host(&url), host(&url));
    let mut tokens = Vec::new();
    for round in 0..6u64 {
        let (store, agent) = if round % 2 == 0 { (&a, "support") } else { (&b, "sales") };
        let now = T0 + round * 100_000;
        let granted = store
            .lease(actor(agent, 1), acme(), 1_000, now, Box::new(|_| draft("a", 1, "kb.lease", Decision::Allowed, &[])))
            .expect("lease")
            .0;
        let LeaseOutcome::Granted(lease) = granted else { panic!("the last lease expired: {granted:?}") };
        tokens.push(lease.token);
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[test]
fn another_hosts_commit_wakes_this_hosts_streams() {
    let server = PgServer::shared();
    let url = server.fresh_database();
    let (a, b) = (host(&url), host(&url));
    let mut changes = b.durable_changes();
    // The listener connects in the background; wait for its first wake-up.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed()).await;
        changes.borrow_and_update();
        commit(&*a, "support", vec![set(acme(), Expect::Absent, &[("status", "active")])], T0);
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
            .await
            .expect("host B is told of host A's commit within 5 s")
            .expect("the store is open");
    });
    assert_eq!(b.events(0, 10).expect("events").len(), 1);
}

/// Two `concord serve` processes, each from its own folder, on one
/// database: the reference race played across them. Sales reads Acme on
/// host A and pauses before its action; Support marks Acme at_risk on host
/// B; Sales goes on, and its stale action is refused, naming Support.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_race_across_two_serve_processes() {
    use crate::http::Process;
    use serde_json::json;
    let server = PgServer::shared();
    let url = server.fresh_database();
    let agents = [("sales", "sales"), ("support", "support"), ("product", "product")];
    let folder = || pg_service_dir(&agents, "breakpoints = true", &url, |text| text);
    let (dir_a, dir_b) = (folder(), folder());
    let (a, b) = (Process::start(dir_a.path()), Process::start(dir_b.path()));
    let onboard = json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme Corp" } });
    assert_eq!(a.api.post("/v1/invoke/sales", onboard).await.status, hyper::StatusCode::OK);
    let upsell = json!({ "kind": "upsell", "entity": "customer/acme", "body": { "offer": "Enterprise tier" }, "pause_before": "coord.act" });
    let paused = a.api.post("/v1/invoke/sales?wait=false", upsell).await;
    let id = paused.body["invocation"].as_u64().expect("an invocation id");
    let escalation =
        json!({ "kind": "escalation", "entity": "customer/acme", "body": { "ticket": "T-1", "summary": "outage" } });
    let escalated = b.api.post("/v1/invoke/support", escalation).await;
    assert_eq!(escalated.status, hyper::StatusCode::OK, "{}", escalated.text);
    let resumed = a.api.post(&format!("/v1/invocations/{id}/resume"), json!({})).await;
    assert!(resumed.text.contains("held the upsell"), "Sales on host A held back: {}", resumed.text);

    // One store, whichever host is asked: the refusal names Support, and
    // no email was recorded.
    let store = open(&url, Access::ReadOnly).expect("the shared database");
    let refused = store
        .audit(&AuditFilter {
            call: Some("coord.act".into()),
            decision: Some(Decision::Conflict),
            ..Default::default()
        })
        .expect("audit");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].invocation, id);
    assert!(refused[0].peer.as_deref().is_some_and(|p| p.contains("support")), "{:?}", refused[0].peer);
    assert!(store.actions().expect("actions").is_empty());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
    // Each host's start is its own: neither reads the other's as a crash.
    let starts = store
        .audit(&AuditFilter { call: Some(concord::audit::calls::HOST_START.into()), ..Default::default() })
        .expect("audit");
    assert_eq!(starts.len(), 2);
    assert!(starts.iter().all(|e| e.outcome == "started"), "{starts:#?}");
    // Support's commit on B matched Sales's subscription: Sales ran once in
    // the cluster (on B, where the commit was), caused by Support.
    let escalation = escalated.body["invocation"].as_u64().expect("the escalation's invocation");
    let caused = store
        .audit(&AuditFilter {
            call: Some(concord::audit::calls::INVOCATION_START.into()),
            agent: Some("sales".into()),
            ..Default::default()
        })
        .expect("audit");
    assert_eq!(caused.iter().filter(|e| e.causation == Some(escalation)).count(), 1, "{caused:#?}");
    // The CLI reads the same from either folder.
    let out = crate::common::concord(dir_b.path(), &["audit", "verify"]);
    assert!(crate::common::stdout(&out).contains("intact"), "{}", crate::common::stderr(&out));
}

/// Each pending action is claimed by one host at a time; a claim that runs
/// out (its host died before delivering) lets another host deliver it.
#[test]
fn one_host_at_a_time_claims_an_action_and_a_dead_hosts_claim_runs_out() {
    use concord::kb::{ActOutcome, ActRequest};
    let server = PgServer::shared();
    let url = server.fresh_database();
    let (a, b) = (host(&url), host(&url));
    commit(&*a, "sales", vec![set(acme(), Expect::Absent, &[("status", "active")])], T0);
    for n in 0..3 {
        let request = ActRequest {
            actor: actor("sales", 1),
            entity: acme(),
            based_on: 1,
            kind: "email.upsell".into(),
            payload: format!("{{\"n\":{n}}}"),
            idempotency_key: None,
            at_ms: T0 + 1,
            max_pending: 100,
        };
        let (outcome, _) = a
            .act(
                request,
                crate::conformance::allow(),
                Box::new(|_| draft("sales", 1, "coord.act", Decision::Allowed, &[])),
            )
            .expect("act");
        assert!(matches!(outcome, ActOutcome::Recorded(_)), "{outcome:?}");
    }
    let first = a.claim_pending_actions(2, 60_000).expect("claim");
    assert_eq!(first.iter().map(|x| x.id).collect::<Vec<_>>(), [1, 2]);
    // Host B gets only what A did not claim.
    let second = b.claim_pending_actions(10, 60_000).expect("claim");
    assert_eq!(second.iter().map(|x| x.id).collect::<Vec<_>>(), [3]);
    assert!(b.claim_pending_actions(10, 60_000).expect("claim").is_empty());
    // A dies without delivering; once its claim runs out, B takes them.
    drop(a);
    server.psql(&url, "UPDATE concord_actions SET claimed_until = 0 WHERE id IN (1, 2)");
    let again = b.claim_pending_actions(10, 60_000).expect("claim");
    assert_eq!(again.iter().map(|x| x.id).collect::<Vec<_>>(), [1, 2]);
    for x in &again {
        b.mark_delivered(x.id, T0 + 2).expect("delivered");
    }
    assert_eq!(b.pending_actions(10).expect("pending").iter().map(|x| x.id).collect::<Vec<_>>(), [3]);
}

/// Two `concord serve` processes with the same schedule fire it once per
/// due time between them, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_cluster() {
    use crate::http::Process;
    let server = PgServer::shared();
    let url = server.fresh_database();
    let schedule = "\n[[schedules]]\nname = \"beat\"\nagent = \"product\"\nkind = \"probe\"\n\
                    body = { ops = [{ op = \"log\", message = \"beat\" }] }\nevery = \"1s\"\n";
    let folder = || pg_service_dir(&[("product", "probe")], "", &url, |text| text + schedule);
    let (dir_a, dir_b) = (folder(), folder());
    let a = Process::start(dir_a.path());
    let b = Process::start(dir_b.path());
    tokio::time::sleep(std::time::Duration::from_millis(4_500)).await;
    drop((a, b));
    let store = open(&url, Access::ReadOnly).expect("the shared database");
    let fires = store
        .audit(&AuditFilter { call: Some(concord::audit::calls::SCHEDULE_FIRE.into()), ..Default::default() })
        .expect("audit");
    let mut due: Vec<u64> = fires
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.args).expect("args")["due_ms"].as_u64().expect("due_ms"))
        .collect();
    let log = std::fs::read_to_string(dir_a.path().join("serve.log")).unwrap_or_default();
    assert!(due.len() >= 3, "it fired in 4.5 s: {fires:#?}\n{log}");
    let all = due.len();
    due.dedup();
    assert_eq!(due.len(), all, "no due time fired twice: {fires:#?}");
    // And each fire ran the agent once.
    let runs = store
        .audit(&AuditFilter { call: Some(concord::audit::calls::INVOCATION_START.into()), ..Default::default() })
        .expect("audit");
    for fire in &fires {
        assert_eq!(runs.iter().filter(|r| r.causation == Some(fire.seq)).count(), 1, "fire {}: {runs:#?}", fire.seq);
    }
}

/// PostgreSQL killed and restarted under load: while it is gone every
/// commit is refused as unavailable (naming the server, saying to retry);
/// then the host reconnects by itself. Every commit answered as committed
/// is there once, and none answered as failed is there at all.
#[test]
fn a_server_restart_under_load_loses_nothing_and_doubles_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    // A server of its own: the restart must not disturb other tests.
    let server = PgServer::start();
    let url = server.fresh_database();
    let store = host(&url);
    let counter = EntityRef::new("customer", "counter");
    let create = concord::kb::Write {
        entity: counter.clone(),
        expect: Expect::Absent,
        set: [("n".to_string(), Value::Integer(0))].into(),
        unset: vec![],
        fence: None,
    };
    commit(&*store, "setup", vec![create], T0);
    let (acked, unavailable, stop) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    let messages = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for w in 0..4 {
            let (store, counter, acked, unavailable, stop, messages) =
                (store.clone(), &counter, &acked, &unavailable, &stop, &messages);
            scope.spawn(move || {
                let agent = format!("w{w}");
                while !stop.load(Relaxed) {
                    let current = match store.get(counter) {
                        Ok(e) => e.expect("exists"),
                        Err(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            continue;
                        }
                    };
                    let Some(Value::Integer(n)) = current.fields.get("n").cloned() else { panic!("n") };
                    let write = concord::kb::Write {
                        entity: counter.clone(),
                        expect: Expect::Version(current.version),
                        set: [("n".to_string(), Value::Integer(n + 1))].into(),
                        unset: vec![],
                        fence: None,
                    };
                    let request = concord::kb::CommitRequest {
                        actor: actor(&agent, 1),
                        reason: "count".into(),
                        writes: vec![write],
                        at_ms: T0 + 1,
                        by_human: false,
                        kind: concord::kb::EventKind::Updated,
                    };
                    let audit = Box::new(|_: &CommitOutcome| draft("w", 1, "kb.commit", Decision::Allowed, &[]));
                    match store.commit(request, crate::conformance::allow(), audit) {
                        Ok((CommitOutcome::Committed { .. }, _)) => {
                            acked.fetch_add(1, Relaxed);
                        }
                        Ok((CommitOutcome::Conflict(_), _)) => {}
                        Ok((other, _)) => panic!("{other:?}"),
                        Err(concord::kb::StoreError::Unavailable(m)) => {
                            unavailable.fetch_add(1, Relaxed);
                            messages.lock().expect("lock").push(m);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        Err(e) => panic!("a commit failed other than as unavailable: {e}"),
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        server.restart(std::time::Duration::from_millis(700));
        // Back to committing after the restart.
        let before = acked.load(Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while acked.load(Relaxed) < before + 20 {
            assert!(std::time::Instant::now() < deadline, "no commits after the restart");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, Relaxed);
    });
    assert!(unavailable.load(Relaxed) > 0, "some commits met the server down");
    let messages = messages.into_inner().expect("lock");
    assert!(
        messages.iter().all(|m| m.contains(&format!("127.0.0.1:{}", server.port)) && m.contains("retry")),
        "{messages:#?}"
    );
    let n = match store.get(&counter).expect("read").expect("exists").fields.get("n") {
        Some(Value::Integer(n)) => *n as usize,
        other => panic!("{other:?}"),
    };
    assert_eq!(n, acked.load(Relaxed), "every acknowledged commit once, and no other");
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
    assert!(store.health().is_ok(), "healthy again: {:?}", store.health());
}

/// While PostgreSQL is gone, `concord serve` answers 503 with
/// `Retry-After` (naming the server), and serves again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_while_postgresql_is_down() {
    use crate::http::Process;
    use serde_json::json;
    let server = Arc::new(PgServer::start());
    let url = server.fresh_database();
    let dir = pg_service_dir(&[("sales", "sales")], "", &url, |text| text);
    let p = Process::start(dir.path());
    let onboard = |id: &str| json!({ "kind": "onboard", "entity": format!("customer/{id}"), "body": { "name": id } });
    assert_eq!(p.api.post("/v1/invoke/sales", onboard("before")).await.status, hyper::StatusCode::OK);

    let restarting = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart(std::time::Duration::from_secs(2)))
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let down = p.api.post("/v1/invoke/sales", onboard("during")).await;
    assert_eq!(down.status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{}", down.text);
    assert!(down.headers.contains_key("retry-after"), "{:?}", down.headers);
    assert!(down.text.contains(&format!("127.0.0.1:{}", server.port)), "names the server: {}", down.text);
    restarting.await.expect("restarted");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let again = p.api.post("/v1/invoke/sales", onboard("after")).await;
        if again.status == hyper::StatusCode::OK {
            break;
        }
        assert_eq!(again.status, hyper::StatusCode::SERVICE_UNAVAILABLE, "{}", again.text);
        assert!(std::time::Instant::now() < deadline, "the host did not reconnect: {}", again.text);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let store = open(&url, Access::ReadOnly).expect("the database");
    assert!(store.get(&EntityRef::new("customer", "before")).expect("read").is_some());
    assert!(store.get(&EntityRef::new("customer", "after")).expect("read").is_some());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
}

/// Everything a store holds, for comparing two of them.
fn contents(store: &dyn Store) -> String {
    let entities = store.list(None, None, usize::MAX).expect("list");
    let pins: Vec<_> = entities.iter().map(|e| store.pins(&e.entity).expect("pins")).collect();
    format!(
        "{entities:?}\n{pins:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        store.events(0, usize::MAX).expect("events"),
        store.audit(&AuditFilter { after: Some(0), ..Default::default() }).expect("audit"),
        store.actions().expect("actions"),
        store.change_requests(0, usize::MAX).expect("requests"),
        store.extras().expect("extras"),
    )
}

/// `concord migrate` redb → PostgreSQL → redb: the audit verifies at each
/// step, and every record is the same in all three. A target that is not
/// empty is refused, and left as it was.
#[test]
fn migrate_redb_to_postgresql_and_back() {
    use crate::common::{concord, demo_dir, stderr, stdout};
    let server = PgServer::shared();
    let url = server.fresh_database();
    let dir = demo_dir();
    let out = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = concord(dir.path(), &["pin", "customer/acme", "status=active", "--by", "alice", "--reason", "CEO call"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let source = dir.path().join("data/concord.redb");
    let back = dir.path().join("back.redb");

    let out = concord(dir.path(), &["migrate", "--from", &source.display().to_string(), "--to", &url]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("the audit verifies on the copy"), "{}", stdout(&out));
    let out = concord(dir.path(), &["migrate", "--from", &url, "--to", &back.display().to_string()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let redb = |path: &std::path::Path| {
        concord::kb::open(
            &Backend::Redb { path: path.to_path_buf(), sharing: concord::kb::redb::Sharing::Exclusive },
            Access::ReadOnly,
        )
        .expect("a redb store")
    };
    let original = contents(&*redb(&source));
    assert!(original.contains("CEO call") && original.contains("email.upsell"), "the demo left pins and actions");
    assert_eq!(contents(&*open(&url, Access::ReadOnly).expect("pg")), original);
    assert_eq!(contents(&*redb(&back)), original);

    // Into a store that holds something: refused, nothing written.
    let before = server.psql(&url, "SELECT count(*) FROM concord_audit");
    let out = concord(dir.path(), &["migrate", "--from", &back.display().to_string(), "--to", &url]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty one only"), "{}", stderr(&out));
    assert_eq!(server.psql(&url, "SELECT count(*) FROM concord_audit"), before);
    let out = concord(dir.path(), &["migrate", "--from", &url, "--to", &back.display().to_string()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    let out = concord(dir.path(), &["migrate", "--from", &url, "--to", "mysql://db/kb"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--to: `mysql://` is not a store"), "{}", stderr(&out));
    assert!(!dir.path().join("mysql:").exists(), "no file made of the URL");
}

/// Two `concord serve` hosts on one database, under commits sent to both:
/// an event stream on either host shows every event of the cluster once,
/// in seq order; then one host is SIGKILLed mid-load, the other goes on,
/// and every commit either host acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_show_the_whole_cluster_and_a_killed_host_loses_nothing_acknowledged() {
    use crate::http::Process;
    use serde_json::json;
    let server = PgServer::shared();
    let url = server.fresh_database();
    let folder = || pg_service_dir(&[("support", "probe")], "", &url, |text| text);
    let (dir_a, dir_b) = (folder(), folder());
    let a = Process::start(dir_a.path());
    let mut b = Process::start(dir_b.path());
    let create = |id: String| json!({ "kind": "probe", "body": { "ops": [{ "op": "commit", "writes": [{ "entity": id, "expect": "absent", "set": { "name": "w" } }] }] } });
    const EVENTS: usize = 20;
    let within = std::time::Duration::from_secs(30);
    let (api_a, api_b) = (a.api.clone(), b.api.clone());
    let stream_a = tokio::spawn(async move { api_a.sse("/v1/events", None, EVENTS, within).await });
    let stream_b = tokio::spawn(async move { api_b.sse("/v1/events", None, EVENTS, within).await });
    for i in 0..EVENTS {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        let answer = api.post("/v1/invoke/support", create(format!("customer/s{i}"))).await;
        assert!(answer.text.contains("versions"), "{}", answer.text);
    }
    for stream in [stream_a.await.expect("stream a"), stream_b.await.expect("stream b")] {
        let ids: Vec<u64> = stream.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=EVENTS as u64).collect::<Vec<_>>(), "every event once, in order");
    }

    // Load on both hosts; B dies under it.
    let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for (h, api) in [(0, a.api.clone()), (1, b.api.clone()), (2, a.api.clone()), (3, b.api.clone())] {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let id = format!("customer/k{h}-{i}");
                let Some(answer) = api.try_post("/v1/invoke/support", &create(id.clone())).await else { return };
                if answer.status == hyper::StatusCode::OK && answer.text.contains("versions") {
                    acked.lock().expect("lock").push(id);
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    b.child.kill().expect("SIGKILL host B");
    for t in tasks {
        t.await.expect("a load task");
    }
    let after = a.api.post("/v1/invoke/support", create("customer/after".into())).await;
    assert!(after.text.contains("versions"), "host A goes on: {}", after.text);
    let store = open(&url, Access::ReadOnly).expect("the database");
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 20, "load ran on both hosts: {}", acked.len());
    for id in &acked {
        let entity: EntityRef = id.parse().expect("an entity");
        assert!(store.get(&entity).expect("read").is_some(), "{id} was acknowledged and is there");
    }
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
}

/// A server that asks for a password: the right one opens, a wrong one is
/// refused saying to check the user and password, and neither password
/// appears in the error.
#[test]
fn a_wrong_password_is_refused_without_showing_it() {
    let server = PgServer::start_with_password("right-horse-battery");
    let url = server.fresh_database();
    drop(host(&url));
    let wrong = url.replace("right-horse-battery", "wr0ng-guess");
    let e = pg_error(open(&wrong, Access::ReadWrite));
    let text = e.to_string();
    assert!(matches!(e, OpenError::Refused { .. }), "{e:?}");
    assert!(text.contains("check the user and password"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", server.port)), "{text}");
    assert!(!text.contains("wr0ng-guess") && !text.contains("right-horse-battery"), "{text}");
}

/// Two hosts under concurrent HTTP load on one shared entity: no update is
/// lost, the conflicts name the other host's agent, the audit verifies,
/// and an event stream on each host sees every event once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_incrementing_one_entity_over_http() {
    use crate::http::Process;
    use serde_json::json;
    let server = PgServer::shared();
    let url = server.fresh_database();
    // Host A runs the probe as `support`, host B as `product`: both may
    // write the counter.
    let kind = "\n[kinds.counter.fields]\nn = { type = \"integer\", writers = [\"support\", \"product\"] }\n";
    let folder = |agent: &str| pg_service_dir(&[(agent, "probe")], "", &url, |text| text + kind);
    let (dir_a, dir_b) = (folder("support"), folder("product"));
    let (a, b) = (Process::start(dir_a.path()), Process::start(dir_b.path()));
    let probe = |ops: serde_json::Value| json!({ "kind": "probe", "body": { "ops": ops } });
    let create = probe(
        json!([{ "op": "commit", "writes": [{ "entity": "counter/shared", "expect": "absent", "set": { "n": 0 } }] }]),
    );
    assert!(a.api.post("/v1/invoke/support", create).await.text.contains("versions"));

    const PER_TASK: usize = 12;
    let total = 4 * PER_TASK;
    let within = std::time::Duration::from_secs(60);
    let streams: Vec<_> = [a.api.clone(), b.api.clone()]
        .into_iter()
        .map(|api| tokio::spawn(async move { api.sse("/v1/events", None, total + 1, within).await }))
        .collect();
    let mut tasks = Vec::new();
    for (api, agent) in [(&a.api, "support"), (&b.api, "product"), (&a.api, "support"), (&b.api, "product")] {
        let (api, path) = (api.clone(), format!("/v1/invoke/{agent}"));
        let body = probe(json!([{ "op": "increment", "entity": "counter/shared", "field": "n", "tries": 1000 }]));
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::new();
            for _ in 0..PER_TASK {
                let answer = api.post(&path, body.clone()).await;
                let results: Vec<serde_json::Value> =
                    answer.body["report"].as_str().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
                values.push(results.first().and_then(|r| r["value"].as_i64()).expect("an increment's value"));
            }
            values
        }));
    }
    let mut values = Vec::new();
    for t in tasks {
        values.extend(t.await.expect("a load task"));
    }
    values.sort_unstable();
    assert_eq!(values, (1..=total as i64).collect::<Vec<_>>(), "each increment saw the one before: none lost");

    let store = open(&url, Access::ReadOnly).expect("the database");
    let n = store.get(&EntityRef::new("counter", "shared")).expect("read").expect("exists");
    assert_eq!(n.fields.get("n"), Some(&Value::Integer(total as i64)));
    let conflicts =
        store.audit(&AuditFilter { decision: Some(Decision::Conflict), ..Default::default() }).expect("audit");
    assert!(
        conflicts.iter().any(|c| match (c.agent.as_str(), c.peer.as_deref()) {
            ("support", Some(p)) => p.contains("product"),
            ("product", Some(p)) => p.contains("support"),
            _ => false,
        }),
        "a conflict names the other host's agent: {conflicts:#?}"
    );
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
    for stream in streams {
        let ids: Vec<u64> = stream.await.expect("a stream").iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=total as u64 + 1).collect::<Vec<_>>(), "every event once, in seq order");
    }
}

/// An action recorded on a host that could not deliver it and then died
/// is delivered by another host on the same database, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_recorded_action_is_delivered_by_another_host() {
    use crate::http::Process;
    use serde_json::json;
    let server = PgServer::shared();
    let url = server.fresh_database();
    let folder = |sink: &str| {
        pg_service_dir(&[("sales", "probe")], "", &url, |text| {
            text.replacen("sink = \"data/actions.jsonl\"", &format!("sink = \"{sink}\""), 1)
        })
    };
    let (dir_a, dir_b) = (folder("data/actions.jsonl"), folder("sink/actions.jsonl"));
    let (a, mut b) = (Process::start(dir_a.path()), Process::start(dir_b.path()));
    // B's sink breaks once it runs: its folder becomes a file.
    let _ = std::fs::remove_dir_all(dir_b.path().join("sink"));
    std::fs::write(dir_b.path().join("sink"), "not a folder").expect("break B's sink");
    let probe = |ops: serde_json::Value| json!({ "kind": "probe", "body": { "ops": ops } });
    let create = probe(
        json!([{ "op": "commit", "writes": [{ "entity": "customer/x", "expect": "absent", "set": { "name": "X" } }] }]),
    );
    assert!(a.api.post("/v1/invoke/sales", create).await.text.contains("versions"));
    let act = probe(
        json!([{ "op": "get", "entity": "customer/x" }, { "op": "act", "entity": "customer/x", "kind": "email.upsell", "payload": {}, "based_on": "read", "key": "mail-1" }]),
    );
    let acted = b.api.post("/v1/invoke/sales", act).await;
    assert!(acted.text.contains(r#"{\"action\":1}"#), "{}", acted.text);
    b.child.kill().expect("SIGKILL host B");

    let store = open(&url, Access::ReadOnly).expect("the database");
    let pending = store.pending_actions(10).expect("pending");
    assert_eq!(pending.len(), 1, "B recorded it and could not deliver it: {pending:?}");
    // A's next trigger delivers what waits in the shared outbox.
    let log = probe(json!([{ "op": "log", "message": "tick" }]));
    assert_eq!(a.api.post("/v1/invoke/sales", log).await.status, hyper::StatusCode::OK);
    let delivered = std::fs::read_to_string(dir_a.path().join("data/actions.jsonl")).expect("A's sink");
    assert_eq!(delivered.matches("mail-1").count(), 1, "{delivered}");
    assert!(store.pending_actions(10).expect("pending").is_empty());
}

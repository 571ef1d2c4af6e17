//! `concord serve`: a real server on `127.0.0.1:0`, a real HTTP client and
//! real compiled agents. Crash, drain and CLI tests run the binary (see
//! `serve_process`).

use crate::http::Served;
use concord::audit::{AuditFilter, Decision, calls};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn probe(ops: Value) -> Value {
    json!({ "kind": "probe", "body": { "ops": ops } })
}

/// The probe's first result, from an answer.
fn first_result(answer: &Value) -> Value {
    let report = answer["report"].as_str().unwrap_or_else(|| panic!("a report: {answer}"));
    let results: Vec<Value> = serde_json::from_str(report).unwrap_or_else(|e| panic!("{e}: {report}"));
    results[0].clone()
}

/// 64 clients increment one counter through an agent (read, then commit
/// on that version), over HTTP, at once. The final value is exactly the
/// number of increments acknowledged, and every refusal the host made was
/// a conflict the agent retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_increment_one_counter_and_lose_nothing() {
    let s = Served::start(&[("support", "probe")], "").await;
    let create = probe(json!([{ "op": "commit", "writes": [
        { "entity": "customer/counter", "expect": "absent", "set": { "open_tickets": 0 } }
    ]}]));
    let a = s.api.post("/v1/invoke/support", create).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    const CLIENTS: usize = 64;
    const EACH: usize = 3;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let api = s.api.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for _ in 0..EACH {
                let body = probe(json!([{ "op": "increment", "entity": "customer/counter", "field": "open_tickets", "tries": 10_000 }]));
                let a = api.post("/v1/invoke/support", body).await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.text);
                assert_eq!(a.body["outcome"], "ok", "{}", a.text);
                let r = first_result(&a.body);
                acked.push((r["value"].as_i64().expect("a value"), r["attempts"].as_u64().expect("attempts")));
            }
            acked
        }));
    }
    let mut values = Vec::new();
    let mut retries = 0;
    for t in tasks {
        for (value, attempts) in t.await.expect("client") {
            values.push(value);
            retries += attempts - 1;
        }
    }
    values.sort_unstable();
    let n = (CLIENTS * EACH) as i64;
    assert_eq!(values, (1..=n).collect::<Vec<_>>(), "each acknowledged increment saw its own value");
    let e = s.api.get("/v1/entities/customer/counter").await;
    assert_eq!(e.body["fields"]["open_tickets"], n, "the final value is every acknowledged increment");
    let refused: Vec<_> = s
        .env
        .audit(AuditFilter { agent: Some("support".into()), call: Some(calls::COMMIT.into()), ..Default::default() })
        .into_iter()
        .filter(|e| e.decision != Decision::Allowed)
        .collect();
    assert!(refused.iter().all(|e| e.decision == Decision::Conflict), "every refusal was a conflict");
    assert_eq!(refused.len() as u64, retries, "and each was retried");
    assert!(retries > 0, "64 clients at once did contend");
}

/// The reference case, over HTTP and exactly: Sales pauses just before it
/// asks to send the upsell; Support marks Acme at_risk; Sales goes on, its
/// version is gone, the email is refused with who changed what, and Sales
/// holds the upsell.
#[tokio::test(flavor = "multi_thread")]
async fn the_acme_race_over_http() {
    let s = Served::start(&[("sales", "sales"), ("support", "support"), ("product", "product")], "breakpoints = true")
        .await;
    let api = &s.api;
    let onboard = json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme Corp" } });
    assert_eq!(api.post("/v1/invoke/sales", onboard).await.status, StatusCode::OK);
    let upsell = json!({ "kind": "upsell", "entity": "customer/acme", "body": { "offer": "Enterprise tier" }, "pause_before": "coord.act" });
    let paused = api.post("/v1/invoke/sales", upsell).await;
    assert_eq!(paused.status, StatusCode::ACCEPTED, "{}", paused.text);
    assert_eq!(paused.body["status"], "paused");
    assert_eq!(paused.body["paused_before"], "coord.act");
    let id = paused.body["invocation"].as_u64().expect("an id");
    let status = api.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(status.body["status"], "paused", "{}", status.text);

    let escalation =
        json!({ "kind": "escalation", "entity": "customer/acme", "body": { "ticket": "T-1042", "summary": "outage" } });
    let support = api.post("/v1/invoke/support", escalation).await;
    assert_eq!(support.status, StatusCode::OK, "{}", support.text);
    assert_eq!(
        support.body["caused"].as_array().map(Vec::len),
        Some(1),
        "Sales, subscribed to status: {}",
        support.text
    );

    let resumed = api.post(&format!("/v1/invocations/{id}/resume"), json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(resumed.body["outcome"], "ok");
    let report = resumed.body["report"].as_str().expect("report");
    assert!(report.contains("held the upsell") && report.contains("at_risk"), "{report}");
    let done = api.get(&format!("/v1/invocations/{id}")).await;
    assert_eq!(done.body, resumed.body, "the status says the same once done");

    let acts = api.get(&format!("/v1/audit?invocation={id}&call=coord.act")).await;
    let entry = &acts.body["entries"][0];
    assert_eq!(entry["decision"], "conflict", "{}", acts.text);
    let peer = entry["peer"].as_str().expect("peer");
    assert!(peer.contains("support"), "the conflict names who changed Acme: {peer}");
    let actions = api.get("/v1/actions").await;
    assert_eq!(actions.body["actions"], json!([]), "no email was recorded");
    let acme = api.get("/v1/entities/customer/acme").await;
    assert_eq!(acme.body["fields"]["status"], "at_risk");
}

/// A stream read part way, the host restarted, and the stream resumed with
/// `Last-Event-ID`: every event and audit entry comes once, in order, from
/// before and after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn streams_resume_after_a_restart_with_no_gap_and_no_duplicate() {
    let s = Served::start(&[("sales", "sales"), ("support", "support")], "").await;
    for i in 0..4 {
        let b = json!({ "kind": "onboard", "entity": format!("customer/c{i}"), "body": { "name": format!("C{i}") } });
        assert_eq!(s.api.post("/v1/invoke/sales", b).await.status, StatusCode::OK);
    }
    let events = s.api.sse("/v1/events", None, 2, Duration::from_secs(10)).await;
    let audit = s.api.sse("/v1/audit/stream", None, 5, Duration::from_secs(10)).await;
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(audit.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        events[1].1["entity"],
        json!({ "kind": "customer", "id": "c1" }),
        "an item is the event: {:?}",
        events[1]
    );

    let env = s.stop().await.restart();
    let s = Served::on(env).await;
    for i in 4..7 {
        let b = json!({ "kind": "onboard", "entity": format!("customer/c{i}"), "body": { "name": format!("C{i}") } });
        assert_eq!(s.api.post("/v1/invoke/sales", b).await.status, StatusCode::OK);
    }
    let rest = s.api.sse("/v1/events", Some(2), 5, Duration::from_secs(10)).await;
    assert_eq!(rest.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7], "events 3..7, each once");
    let log = s.env.all_audit();
    let expected: Vec<u64> = log.iter().map(|e| e.seq).filter(|s| *s > 5).collect();
    let rest = s.api.sse("/v1/audit/stream", Some(5), expected.len(), Duration::from_secs(10)).await;
    assert_eq!(rest.iter().map(|e| e.0).collect::<Vec<_>>(), expected, "the audit after entry 5, across the restart");
    // Live: an item written after the stream opened arrives too.
    let api = s.api.clone();
    let last = *expected.last().expect("entries");
    let live =
        tokio::spawn(
            async move { api.sse("/v1/audit/stream?agent=support", Some(last), 1, Duration::from_secs(10)).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = json!({ "kind": "escalation", "entity": "customer/c1", "body": { "ticket": "T", "summary": "s" } });
    assert_eq!(s.api.post("/v1/invoke/support", b).await.status, StatusCode::OK);
    let live = live.await.expect("stream");
    assert_eq!(live.len(), 1, "the live entry arrived");
    assert_eq!(live[0].1["agent"], "support", "and the filter held");
}

/// The same idempotency key runs once: twice in a row, twice at once, and
/// after a restart; the same key for another request is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_runs_once() {
    let s = Served::start(&[("sales", "sales")], "breakpoints = true").await;
    let onboard = |key: &str| json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme" }, "idempotency_key": key });
    let first = s.api.post("/v1/invoke/sales", onboard("k1")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = s.api.post("/v1/invoke/sales", onboard("k1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body, "the first answer");
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.as_bytes()), Some(b"true".as_slice()));
    let header = s
        .api
        .request(
            Method::POST,
            "/v1/invoke/sales",
            Some(
                json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme" } })
                    .to_string()
                    .into_bytes(),
            ),
            &[("idempotency-key", "k1")],
        )
        .await;
    assert_eq!(header.body, first.body, "the key may come in a header too");
    let other = s
        .api
        .post("/v1/invoke/sales", json!({ "kind": "onboard", "entity": "customer/other", "idempotency_key": "k1" }))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["error"], "key_reused", "{}", other.text);

    // A request refused before anything runs holds no key: the retry is
    // refused for its own reason again, not as an interrupted run.
    let unknown = json!({ "kind": "onboard", "entity": "vendor/x", "idempotency_key": "k0" });
    for _ in 0..2 {
        let refused = s.api.post("/v1/invoke/sales", unknown.clone()).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.text);
        assert_eq!(refused.body["error"], "invalid_entity", "{}", refused.text);
    }

    // Twice at once: the first pauses (so the second surely overlaps it),
    // the second waits for it, and both get one answer.
    let paused = json!({ "kind": "upsell", "entity": "customer/acme", "body": {}, "idempotency_key": "k2", "pause_before": "kb.get" });
    let p = s.api.post("/v1/invoke/sales", paused.clone()).await;
    assert_eq!(p.status, StatusCode::ACCEPTED, "{}", p.text);
    let id = p.body["invocation"].as_u64().expect("id");
    let dup = {
        let api = s.api.clone();
        let body = paused.clone();
        tokio::spawn(async move { api.post("/v1/invoke/sales", body).await })
    };
    let early = s.api.post("/v1/invoke/sales?wait=false", paused.clone()).await;
    assert_eq!(early.status, StatusCode::ACCEPTED, "a duplicate that does not wait gets the id: {}", early.text);
    assert_eq!(early.body["invocation"], id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!dup.is_finished(), "the duplicate waits for the first");
    let resumed = s.api.post(&format!("/v1/invocations/{id}/resume"), json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK);
    let dup = dup.await.expect("duplicate");
    assert_eq!(dup.status, StatusCode::OK, "{}", dup.text);
    assert_eq!(dup.body, resumed.body, "one answer for both");
    // Many at once, no breakpoint.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = s.api.clone();
        tasks.push(tokio::spawn(async move {
            api.post(
                "/v1/invoke/sales",
                json!({ "kind": "upsell", "entity": "customer/acme", "idempotency_key": "k3" }),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let a = t.await.expect("client");
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        answers.push(a.body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one answer: {answers:?}");

    let runs = |env: &crate::common::Env, key: &str| {
        env.audit(AuditFilter { call: Some(calls::INVOCATION_START.into()), ..Default::default() })
            .iter()
            .filter(|e| e.args.contains(&format!("\"idempotency_key\":\"{key}\"")))
            .count()
    };
    for key in ["k1", "k2", "k3"] {
        assert_eq!(runs(&s.env, key), 1, "{key} ran once");
    }
    // After a restart the store still has the answer.
    let env = s.stop().await.restart();
    let s = Served::on(env).await;
    let after = s.api.post("/v1/invoke/sales", onboard("k1")).await;
    assert_eq!(after.body, first.body, "the first answer, after a restart");
    assert_eq!(runs(&s.env, "k1"), 1, "and nothing ran");
}

/// Tokens: none, a wrong one, and one whose role is too low are refused
/// (401, 401, 403), each audited with who, what and from where; the
/// operator acts as its token's name; no token appears in the audit.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles_are_enforced_and_refusals_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.toml");
    let alice = concord::tokens::add(&tokens, "alice", concord::tokens::Role::Operator).expect("add");
    let rita = concord::tokens::add(&tokens, "rita", concord::tokens::Role::Read).expect("add");
    let server = format!("tokens = {:?}", tokens.display().to_string());
    let s = Served::start(&[("sales", "sales")], &server).await;
    let (as_alice, as_rita) = (s.api.with_token(&alice), s.api.with_token(&rita));
    let onboard = json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme" } });

    let none = s.api.post("/v1/invoke/sales", onboard.clone()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.text);
    assert_eq!(none.headers.get("www-authenticate").map(|v| v.as_bytes()), Some(b"Bearer".as_slice()));
    let wrong = s.api.with_token("concord_not-a-token").get("/v1/agents").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let low = as_rita.post("/v1/invoke/sales", onboard.clone()).await;
    assert_eq!(low.status, StatusCode::FORBIDDEN, "{}", low.text);
    assert!(low.body["detail"].as_str().expect("detail").contains("`read`"), "{}", low.text);
    assert_eq!(as_rita.get("/v1/agents").await.status, StatusCode::OK, "reading is rita's");
    assert_eq!(s.api.get("/healthz").await.status, StatusCode::OK, "health needs no token");

    assert_eq!(as_alice.post("/v1/invoke/sales", onboard).await.status, StatusCode::OK);
    let pin = as_alice
        .post("/v1/entities/customer/acme/pin", json!({ "set": { "status": "active" }, "reason": "CEO call" }))
        .await;
    assert_eq!(pin.status, StatusCode::OK, "{}", pin.text);
    assert_eq!(pin.body["agent"], "human:alice", "the token's name acts");
    let spoof = as_alice
        .post("/v1/entities/customer/acme/unpin", json!({ "fields": ["status"], "reason": "x", "by": "bob" }))
        .await;
    assert_eq!(spoof.status, StatusCode::FORBIDDEN, "{}", spoof.text);
    assert_eq!(spoof.body["error"], "by_mismatch");

    let refused = s.env.audit(AuditFilter { call: Some(calls::API_REFUSED.into()), ..Default::default() });
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(refused.iter().all(|e| e.decision == Decision::Forbidden && e.agent == "api"));
    assert_eq!(refused[2].peer.as_deref(), Some("rita"), "who");
    let args: Value = serde_json::from_str(&refused[2].args).expect("args");
    assert_eq!(args["path"], "/v1/invoke/sales", "what");
    assert!(args["from"].as_str().is_some_and(|f| f.starts_with("127.0.0.1:")), "from where: {args}");
    let everything = serde_json::to_string(&s.env.all_audit()).expect("json");
    for token in [&alice, &rita, &"concord_not-a-token".to_string()] {
        assert!(!everything.contains(token.as_str()), "no token in the audit");
    }
}

/// Bad requests get a 4xx with `{error, detail}` naming the problem, never
/// a 500.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_named_and_never_a_500() {
    let s = Served::start(&[("sales", "sales")], "max_body_bytes = 2048").await;
    let api = &s.api;
    let raw = |body: &str| api.request(Method::POST, "/v1/invoke/sales", Some(body.as_bytes().to_vec()), &[]);
    let cases: Vec<(crate::http::Answer, StatusCode, &str)> = vec![
        (raw("{not json").await, StatusCode::BAD_REQUEST, "invalid_json"),
        (raw("{\"kind\": 3}").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json"),
        (raw("{\"kind\": \"x\", \"agnet\": 1}").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json"),
        (api.post("/v1/invoke/salse", json!({ "kind": "x" })).await, StatusCode::NOT_FOUND, "unknown_agent"),
        (
            api.post("/v1/invoke/sales", json!({ "kind": "x", "entity": "acme" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_entity",
        ),
        (
            api.post("/v1/invoke/sales", json!({ "kind": "x", "entity": "vendor/x" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_entity",
        ),
        (
            api.post("/v1/invoke/sales", json!({ "kind": "x", "body": "a".repeat(4000) })).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            api.post("/v1/invoke/sales", json!({ "kind": "x", "pause_before": "kb.get" })).await,
            StatusCode::FORBIDDEN,
            "breakpoints_off",
        ),
        (api.get("/v1/audit?outcome=maybe").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_outcome"),
        (api.get("/v1/audit?since=soon").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_time"),
        (api.get("/v1/audit?limit=5000").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit"),
        (api.get("/v1/audit?after=x").await, StatusCode::BAD_REQUEST, "invalid_query"),
        (api.get("/v1/entities/customer/nobody").await, StatusCode::NOT_FOUND, "not_found"),
        (api.get("/v1/entities/customer/acme?at=yesterday").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_at"),
        (api.get("/v1/invocations/999999").await, StatusCode::NOT_FOUND, "unknown_invocation"),
        (api.get("/v1/conflicts?window_ms=999999999999").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_window"),
        (api.post("/v1/events/99/revert", json!({ "reason": "x" })).await, StatusCode::CONFLICT, "rejected"),
        (
            api.post("/v1/entities/customer/acme/pin", json!({ "set": { "nope": 1 }, "reason": "x" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            api.post("/v1/entities/customer/acme/pin", json!({ "set": { "status": 5 }, "reason": "x" })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
        ),
        (api.get("/v1/nothing-here").await, StatusCode::NOT_FOUND, "no_such_route"),
        (
            api.request(Method::DELETE, "/v1/agents", None, &[]).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (i, (answer, status, error)) in cases.iter().enumerate() {
        assert_eq!(answer.status, *status, "case {i}: {}", answer.text);
        assert_eq!(answer.body["error"], *error, "case {i}: {}", answer.text);
        assert!(answer.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "case {i} says why: {}", answer.text);
    }
    let loaded = &cases[3].0.body["detail"];
    assert!(loaded.as_str().expect("detail").contains("loaded: sales"), "404 lists the loaded agents: {loaded}");
}

/// A full house answers 503 with `Retry-After` at once: the pool's slots
/// and the queue taken, the next trigger is refused, not kept waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after() {
    let s = Served::start(&[("sales", "probe")], "breakpoints = true\nqueue = 1").await;
    let pool = concord::MAX_LIVE_INVOCATIONS as usize;
    let get = json!({ "kind": "probe", "body": { "ops": [{ "op": "get", "entity": "customer/x" }] }, "pause_before": "kb.get" });
    let mut ids = Vec::new();
    for _ in 0..pool {
        let a = s.api.post("/v1/invoke/sales", get.clone()).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        ids.push(a.body["invocation"].as_u64().expect("id"));
    }
    let queued = s.api.post("/v1/invoke/sales?wait=false", probe(json!([]))).await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "the queue takes one: {}", queued.text);
    let started = std::time::Instant::now();
    let full = s.api.post("/v1/invoke/sales", probe(json!([]))).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{}", full.text);
    assert!(started.elapsed() < Duration::from_secs(5), "at once, not after a wait");
    assert_eq!(full.headers.get("retry-after").map(|v| v.as_bytes()), Some(b"1".as_slice()));
    assert_eq!(full.body["error"], "busy");
    let metrics = s.api.get("/metrics").await.text;
    assert!(metrics.contains(&format!("concord_pool_slots_in_use {pool}")), "{metrics}");
    assert!(metrics.contains("\nconcord_queue_depth 1\n"), "the queued one waits for a slot: {metrics}");
    for id in ids {
        assert_eq!(s.api.post(&format!("/v1/invocations/{id}/resume"), json!({})).await.status, StatusCode::OK);
    }
    let q = queued.body["invocation"].as_u64().expect("id");
    for _ in 0..100 {
        if s.api.get(&format!("/v1/invocations/{q}")).await.body["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.api.get(&format!("/v1/invocations/{q}")).await.body["status"], "done", "the queued one ran");
    assert_eq!(s.api.post("/v1/invoke/sales", probe(json!([]))).await.status, StatusCode::OK, "room again");
}

/// A client that connects and trickles its headers holds nothing: others
/// are served meanwhile, and it is dropped after the header timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_stalls_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Served::start(&[("sales", "sales")], "header_timeout_ms = 500").await;
    let addr = s.server.addr();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        slow.push(c);
    }
    let started = std::time::Instant::now();
    assert_eq!(s.api.get("/v1/agents").await.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(400), "served while 20 clients trickle");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow[0].read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow client is dropped after the header timeout");
}

/// The OpenAPI document is generated from the routes: every path it lists
/// is served (no route is undocumented, and none documented is missing),
/// and it says how to authenticate.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_route() {
    let s = Served::start(&[("sales", "sales")], "").await;
    let doc = s.api.get("/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert_eq!(doc.body["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let paths = doc.body["paths"].as_object().expect("paths");
    for expected in [
        "/v1/invoke/{agent}",
        "/v1/invocations/{id}",
        "/v1/invocations/{id}/resume",
        "/v1/entities",
        "/v1/entities/{kind}/{id}",
        "/v1/entities/{kind}/{id}/history",
        "/v1/entities/{kind}/{id}/pin",
        "/v1/entities/{kind}/{id}/unpin",
        "/v1/entities/{kind}/{id}/lease/break",
        "/v1/entities:import",
        "/v1/events/{seq}/revert",
        "/v1/audit",
        "/v1/audit/verify",
        "/v1/audit/trace/{id}",
        "/v1/audit/stream",
        "/v1/audit/checkpoint",
        "/v1/audit/keys",
        "/v1/events",
        "/v1/conflicts",
        "/v1/actions",
        "/v1/agents",
        "/v1/replay",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(expected), "{expected} is documented");
    }
    for (path, item) in paths {
        if path.ends_with("/stream") || path == "/v1/events" {
            // Streams never end: the stream tests read them.
            continue;
        }
        for method in item.as_object().expect("methods").keys() {
            let concrete = path
                .replace("{agent}", "sales")
                .replace("{kind}", "customer")
                .replace("{id}", "1")
                .replace("{seq}", "1");
            let method: Method = method.to_uppercase().parse().expect("method");
            let body = (method == Method::POST).then(|| b"{}".to_vec());
            let a = s.api.request(method.clone(), &concrete, body, &[]).await;
            assert!(
                a.body["error"] != "no_such_route" && a.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is served: {} {}",
                a.status,
                a.text
            );
            assert!(!a.status.is_server_error(), "{method} {path}: {} {}", a.status, a.text);
        }
    }
}

/// Import (JSON lines and CSV) writes as the operator through the same
/// checks, all or nothing per batch, and export gives the state back in a
/// form that imports into an empty knowledge base.
#[tokio::test(flavor = "multi_thread")]
async fn import_and_export_over_http() {
    let s = Served::start(&[("sales", "sales")], "").await;
    let rows = json!({ "rows": [
        { "entity": "customer/a", "fields": { "name": "A", "status": "active", "contract_value": 10 }, "line": 1 },
        { "entity": "customer/b", "fields": { "name": "B" }, "line": 2 },
    ], "source": "rows.jsonl", "by": "ops" });
    let a = s.api.post("/v1/entities:import", rows.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["imported"], 2);
    assert_eq!(a.body["events"][0]["agent"], "human:ops");
    let again = s.api.post("/v1/entities:import", rows).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert!(again.text.contains("line 1") && again.text.contains("exists already"), "{}", again.text);
    let bad = s
        .api
        .post(
            "/v1/entities:import",
            json!({ "rows": [
                { "entity": "customer/c", "fields": { "name": "C" }, "line": 7 },
                { "entity": "customer/d", "fields": { "contract_value": "lots" }, "line": 8 },
                { "entity": "vendor/x", "fields": { "name": "X" }, "line": 9 },
            ]}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let lines: Vec<u64> =
        bad.body["rows"].as_array().expect("rows").iter().map(|r| r["line"].as_u64().expect("line")).collect();
    assert_eq!(lines, vec![8, 9], "each bad row by its line");
    assert_eq!(
        s.api.get("/v1/entities/customer/c").await.status,
        StatusCode::NOT_FOUND,
        "nothing of the batch was written"
    );
    let page = s.api.get("/v1/entities?kind=customer&limit=1").await;
    assert_eq!(page.body["entities"][0]["entity"], "customer/a");
    assert_eq!(page.body["next"], "customer/a");
    let rest = s.api.get("/v1/entities?kind=customer&after=customer/a").await;
    assert_eq!(rest.body["entities"][0]["entity"], "customer/b");
    assert_eq!(rest.body["next"], Value::Null);
    let audit = s.env.audit(AuditFilter { call: Some(calls::IMPORT.into()), ..Default::default() });
    // The import, and the one refused by a version; the rows refused by the
    // schema never reached the store.
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert_eq!(audit[1].decision, Decision::Conflict);
    assert_eq!(audit[0].entities, vec!["customer/a", "customer/b"]);
}

/// `/metrics` is the Prometheus text format with the host's counters.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_invocations_calls_and_refusals() {
    let s = Served::start(&[("sales", "sales"), ("support", "probe")], "").await;
    s.api
        .post("/v1/invoke/sales", json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "A" } }))
        .await;
    let forbidden = probe(
        json!([{ "op": "commit", "writes": [{ "entity": "customer/acme", "expect": 1, "set": { "deal_stage": "x" } }] }]),
    );
    s.api.post("/v1/invoke/support", forbidden).await;
    let m = s.api.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers.get("content-type").is_some_and(|c| c.to_str().is_ok_and(|c| c.starts_with("text/plain"))));
    for needle in [
        "concord_invocations_total{agent=\"sales\",outcome=\"ok\"} 1",
        "concord_host_calls_total{call=\"kb.commit\",decision=\"allowed\"} 1",
        "concord_refusals_total{agent=\"support\",decision=\"forbidden\"} 1",
        "concord_commit_latency_seconds_count",
        "concord_batch_size_count",
        "concord_journal_sync_seconds_count",
        "concord_queue_depth 0",
        "concord_http_requests_total{route=\"/v1/invoke/{agent}\",status=\"200\"} 2",
    ] {
        assert!(m.text.contains(needle), "{needle} in:\n{}", m.text);
    }
    // Both agents were compiled or read from the cache (the tests share
    // one, so which depends on the order the tests ran in).
    let counter = |name: &str| -> u64 {
        let line = m.text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line[name.len() + 1..].trim().parse().expect("a count")
    };
    let loads = counter("concord_component_cache_misses_total") + counter("concord_component_cache_hits_total");
    assert_eq!(loads, 2, "{}", m.text);
}

/// Reads an API answer's `entries` seqs.
pub fn seqs(a: &crate::http::Answer) -> Vec<u64> {
    a.body["entries"].as_array().map(|v| v.iter().filter_map(|e| e["seq"].as_u64()).collect()).unwrap_or_default()
}

/// The audit pages by a seq cursor, forward and back, with filters.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_pages_by_cursor() {
    let s = Served::start(&[("sales", "sales")], "").await;
    for i in 0..5 {
        s.api
            .post(
                "/v1/invoke/sales",
                json!({ "kind": "onboard", "entity": format!("customer/c{i}"), "body": { "name": "C" } }),
            )
            .await;
    }
    let all: Vec<u64> = s.env.all_audit().iter().map(|e| e.seq).collect();
    let newest = s.api.get("/v1/audit?limit=4").await;
    assert_eq!(seqs(&newest), all[all.len() - 4..].to_vec(), "the newest page, oldest first");
    let back = s.api.get(&format!("/v1/audit?limit=4&before={}", newest.body["next"])).await;
    assert_eq!(seqs(&back), all[all.len() - 8..all.len() - 4].to_vec());
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = s.api.get(&format!("/v1/audit?after={after}&limit=3")).await;
        forward.extend(seqs(&page));
        match page.body["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(forward, all, "forward pages cover the log once");
    let commits = s.api.get("/v1/audit?agent=sales&call=kb.commit&after=0").await;
    assert_eq!(seqs(&commits).len(), 5);
}

/// A server without tokens answers only requests addressed to loopback by
/// name: a web page that rebinds its own name to 127.0.0.1 gets 403. With
/// tokens, the token decides, whatever the name.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_server_answers_only_requests_addressed_to_loopback() {
    let s = Served::start(&[("sales", "sales")], "").await;
    let port = s.server.addr().port();
    let rebound = s.api.request(Method::GET, "/v1/agents", None, &[("host", "evil.example")]).await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN, "{}", rebound.text);
    assert_eq!(rebound.body["error"], "not_loopback", "{}", rebound.text);
    assert!(rebound.body["detail"].as_str().is_some_and(|d| d.contains("tokens")), "says what to do: {}", rebound.text);
    let onboard = json!({ "kind": "onboard", "entity": "customer/acme", "body": { "name": "Acme" } });
    let write = s
        .api
        .request(
            Method::POST,
            "/v1/invoke/sales",
            Some(onboard.to_string().into_bytes()),
            &[("host", &format!("evil.example:{port}"))],
        )
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{}", write.text);
    assert!(
        s.env.audit(AuditFilter { call: Some("kb.commit".into()), ..Default::default() }).is_empty(),
        "ran nothing"
    );
    for name in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "LOCALHOST".into()]
    {
        let a = s.api.request(Method::GET, "/v1/agents", None, &[("host", &name)]).await;
        assert_eq!(a.status, StatusCode::OK, "{name}: {}", a.text);
    }
    drop(s);

    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.toml");
    let rita = concord::tokens::add(&tokens, "rita", concord::tokens::Role::Read).expect("add");
    let s = Served::start(&[("sales", "sales")], &format!("tokens = {:?}", tokens.display().to_string())).await;
    let named = s.api.with_token(&rita).request(Method::GET, "/v1/agents", None, &[("host", "concord.example")]).await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.text);
}

/// A stream ends once its token is removed, even while nothing happens;
/// another token's stream goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_token_is_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens.toml");
    let rita = concord::tokens::add(&tokens, "rita", concord::tokens::Role::Read).expect("add");
    let ray = concord::tokens::add(&tokens, "ray", concord::tokens::Role::Read).expect("add");
    let s = Served::start(&[("sales", "sales")], &format!("tokens = {:?}", tokens.display().to_string())).await;
    let (as_rita, as_ray) = (s.api.with_token(&rita), s.api.with_token(&ray));
    let within = Duration::from_secs(30);
    let rita_stream = tokio::spawn(async move {
        let started = std::time::Instant::now();
        as_rita.sse("/v1/events", None, usize::MAX, within).await;
        started.elapsed()
    });
    let ray_stream = tokio::spawn(async move {
        let started = std::time::Instant::now();
        as_ray.sse("/v1/audit/stream", None, usize::MAX, Duration::from_secs(6)).await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(concord::tokens::remove(&tokens, "rita").expect("remove"));
    let rita_open = rita_stream.await.expect("rita's stream");
    assert!(rita_open < within, "rita's stream ended by itself, after {rita_open:?}");
    let ray_open = ray_stream.await.expect("ray's stream");
    assert!(ray_open >= Duration::from_secs(6), "ray's stream stayed open ({ray_open:?})");
    let gone = s.api.with_token(&rita).get("/v1/agents").await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
}

/// Streams are bounded: past the most the server keeps, a new one is
/// answered 503 with `Retry-After`, and one closing makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_past_the_bound_are_answered_503() {
    use http_body_util::BodyExt;
    let s = Served::start(&[("sales", "sales")], "").await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, http_body_util::Full<hyper::body::Bytes>>(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            );
    let open = |client: &hyper_util::client::legacy::Client<_, _>| {
        let req = hyper::Request::get(format!("{}/v1/events", s.api.base))
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .expect("request");
        client.request(req)
    };
    let mut held = Vec::new();
    for _ in 0..concord::MAX_STREAMS {
        let response = open(&client).await.expect("opens");
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let refused = open(&client).await.expect("answers");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body = refused.into_body().collect().await.expect("body").to_bytes();
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "too_many_streams", "{body}");
    drop(held.pop());
    // The server sees the hang-up when it next writes (a keep-alive at the
    // latest), so room comes back within that.
    let mut reopened = None;
    for _ in 0..400 {
        let response = open(&client).await.expect("answers");
        if response.status() == StatusCode::OK {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "a closed stream makes room");
}

//! The HTTP sink, against a receiver these tests start on loopback: it
//! gets exactly the recorded actions, each with its idempotency key; a host
//! killed between the receiver's answer and recording the delivery sends it
//! again, for the receiver to dedupe by key; a receiver that keeps failing
//! ends in the dead letter, and an operator's retry delivers it.

use crate::common::{Env, FAST_LIMITS, config_text, stdout};
use bytes::Bytes;
use concord::audit::{AuditFilter, calls};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers.
const OK: u8 = 0;
const FAIL: u8 = 1;
/// The first POST of each key waits 3 s before its 200 (a window to kill
/// the host in); later ones are answered at once.
const SLOW_FIRST: u8 = 2;

/// A webhook receiver: records every POST (its `idempotency-key` header
/// and JSON body) and dedupes by key, as a real receiver should.
struct Receiver {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    posts: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    async fn start(mode: u8) -> Receiver {
        let (mode, posts) = (Arc::new(AtomicU8::new(mode)), Arc::<Mutex<Vec<(String, Value)>>>::default());
        let (m, p) = (mode.clone(), posts.clone());
        let addr = crate::common::serve_loopback(move |req| receive(req, m.clone(), p.clone())).await;
        Receiver { addr, mode, posts }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn posts(&self) -> Vec<(String, Value)> {
        self.posts.lock().expect("lock").clone()
    }

    /// The keys it acted on: each once, however often it was sent.
    fn unique_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.posts().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

async fn receive(
    req: Request<hyper::body::Incoming>,
    mode: Arc<AtomicU8>,
    posts: Arc<Mutex<Vec<(String, Value)>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body: Value = serde_json::from_slice(&req.into_body().collect().await?.to_bytes()).unwrap_or(Value::Null);
    let seen_before = {
        let mut posts = posts.lock().expect("lock");
        let seen = posts.iter().any(|(k, _)| *k == key);
        posts.push((key, body));
        seen
    };
    let status = match mode.load(Ordering::SeqCst) {
        FAIL => 503,
        SLOW_FIRST if !seen_before => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            200
        }
        _ => 200,
    };
    Ok(Response::builder().status(status).body(Full::new(Bytes::from_static(b"receiver says hi"))).expect("response"))
}

/// The example config (test limits), delivering to `url`, with `http`
/// under `[actions.http]`.
fn config(url: &str, http: &str) -> String {
    let text = config_text(FAST_LIMITS).replacen("sink = \"data/actions.jsonl\"", &format!("sink = \"{url}\""), 1);
    format!("{text}\n[actions.http]\n{http}\n")
}

/// Probe ops that create `customer/ID` and record actions with these keys.
fn acts(id: &str, keys: &[&str]) -> Value {
    let entity = format!("customer/{id}");
    let mut ops = vec![
        json!({ "op": "commit", "writes": [{ "entity": entity, "expect": "absent", "set": { "name": id } }] }),
        json!({ "op": "get", "entity": entity }),
    ];
    for k in keys {
        ops.push(json!({ "op": "act", "entity": entity, "kind": "email.upsell", "payload": { "offer": k }, "based_on": "read", "key": k }));
    }
    Value::Array(ops)
}

async fn deliver(env: &Env) -> concord::outbox::Delivery {
    let host = env.host.clone();
    tokio::task::spawn_blocking(move || host.deliver_actions()).await.expect("task").expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_gets_exactly_the_recorded_actions_with_their_keys() {
    let receiver = Receiver::start(OK).await;
    let env = Env::with_config(&[("sales", "probe")], &config(&receiver.url(), ""));
    env.probe("sales", acts("w1", &["mail-1", "mail-2", "mail-3"])).await;
    assert!(receiver.posts().is_empty(), "nothing is sent before the round");
    let round = deliver(&env).await;
    assert_eq!(round.delivered.len(), 3, "{round:?}");
    let posts = receiver.posts();
    let keys: Vec<&str> = posts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["mail-1", "mail-2", "mail-3"], "in order, each once");
    for (key, body) in &posts {
        assert_eq!(body["idempotency_key"], *key);
        assert_eq!(body["kind"], "email.upsell");
        assert_eq!(body["entity"], "customer/w1");
        assert_eq!(body["payload"]["offer"], *key);
    }
    assert!(deliver(&env).await.delivered.is_empty(), "a delivered action is not sent again");
    assert_eq!(receiver.posts().len(), 3);
    assert!(env.host.store().actions().expect("actions").iter().all(|a| a.delivered_at_ms.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_ends_in_the_dead_letter_and_an_operator_retries_it() {
    let receiver = Receiver::start(FAIL).await;
    let env = Env::with_config(&[("sales", "probe")], &config(&receiver.url(), "max_attempts = 3\nbackoff_ms = 20\n"));
    env.probe("sales", acts("w2", &["dead-1", "dead-2"])).await;
    let first = deliver(&env).await;
    assert_eq!(first.failed.len(), 1, "the head fails, the one after it waits: {first:?}");
    assert!(first.retry_at_ms.is_some(), "and is due again after its backoff");
    let early = deliver(&env).await;
    assert!(early.failed.is_empty() && early.delivered.is_empty(), "nothing is tried before its backoff: {early:?}");
    let started = std::time::Instant::now();
    while env.host.store().actions().expect("actions").iter().any(|a| a.dead_at_ms.is_none()) {
        assert!(started.elapsed() < Duration::from_secs(20), "the actions never reached the dead letter");
        tokio::time::sleep(Duration::from_millis(25)).await;
        deliver(&env).await;
    }
    let posts = receiver.posts();
    assert_eq!(posts.iter().filter(|(k, _)| k == "dead-1").count(), 3, "three attempts each: {posts:?}");
    assert_eq!(posts.iter().filter(|(k, _)| k == "dead-2").count(), 3);
    let failed = env.audit(AuditFilter { call: Some(calls::ACTION_FAILED.into()), ..AuditFilter::default() });
    assert_eq!(failed.len(), 6);
    assert!(failed[0].outcome.starts_with("attempt 1 of 3 failed: "), "{}", failed[0].outcome);
    assert!(failed[0].outcome.contains("answered 503 Service Unavailable: receiver says hi"), "{}", failed[0].outcome);
    assert!(failed[2].outcome.contains("is in the dead letter (`concord actions retry 1`)"), "{}", failed[2].outcome);

    // The operator sees it, fixes the receiver, retries one: it is
    // delivered at the next start; the other stays dead.
    let Env { dir, host } = env;
    drop(Arc::into_inner(host).expect("no other host handles"));
    let listed = stdout(&crate::common::concord(dir.path(), &["actions"]));
    assert!(listed.contains("DEAD LETTER"), "{listed}");
    assert!(
        listed.contains("after 3 attempts: sink http://") && listed.contains("concord actions retry 1 --reason"),
        "{listed}"
    );
    let refused = crate::common::concord(dir.path(), &["actions", "retry", "7", "--by", "alice", "--reason", "x"]);
    assert!(!refused.status.success());
    assert!(crate::common::stderr(&refused).contains("there is no action 7"), "{}", crate::common::stderr(&refused));
    receiver.mode.store(OK, Ordering::SeqCst);
    let retried =
        crate::common::concord(dir.path(), &["actions", "retry", "1", "--by", "alice", "--reason", "receiver fixed"]);
    assert!(retried.status.success(), "{}", crate::common::stderr(&retried));
    assert!(
        stdout(&retried).contains("action 1 (email.upsell for customer/w2) is back in the outbox"),
        "{}",
        stdout(&retried)
    );
    let again = crate::common::concord(dir.path(), &["actions", "retry", "1", "--by", "alice", "--reason", "twice"]);
    assert!(
        crate::common::stderr(&again).contains("action 1 is not in the dead letter"),
        "{}",
        crate::common::stderr(&again)
    );
    let env = Env { host: Arc::new(concord::Host::start(Env::config_of(dir.path())).expect("host restarts")), dir };
    let actions = env.host.store().actions().expect("actions");
    assert!(actions[0].delivered_at_ms.is_some(), "the retried action is delivered at start: {actions:?}");
    assert!(actions[1].dead_at_ms.is_some(), "the other stays dead");
    assert_eq!(receiver.posts().iter().filter(|(k, _)| k == "dead-1").count(), 4);
    let retry = env.audit(AuditFilter { call: Some(calls::ACTION_RETRY.into()), ..AuditFilter::default() });
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].agent, "human:alice");
    assert!(retry[0].outcome.contains("answered 503"), "the retry names the last error: {}", retry[0].outcome);
}

#[test]
fn bad_webhook_settings_are_refused_at_start_with_their_line() {
    for (text, says) in [
        (config("http://127.0.0.1:9/hook", "max_attempts = 0\n"), "actions.http.max_attempts is 1 to 100"),
        (config("http://127.0.0.1:9/hook", "secret = \"nope\"\n"), "actions.http.secret `nope` is not declared"),
        (config("ftp://127.0.0.1:9/hook", ""), "[actions.http] is for an HTTP sink"),
        (config("http://user@127.0.0.1:9/hook", ""), "names a user"),
        (config("http://127.0.0.1:9/hook", "retries = 3\n"), "unknown field `retries`"),
    ] {
        let err = concord::Config::parse(&text, std::path::Path::new("concord.toml"), std::path::Path::new("."))
            .expect_err(says);
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
}

/// `concord serve` killed while the receiver holds a delivery's answer:
/// after the restart the action is sent again with the same key, the
/// receiver dedupes it, and the store has it delivered once. A slow
/// receiver never holds a trigger's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_delivery_resends_with_the_same_key_for_the_receiver_to_dedupe() {
    use crate::http::{Process, service_dir};
    let receiver = Receiver::start(SLOW_FIRST).await;
    let dir = service_dir(&[("sales", "probe")], "");
    std::fs::write(dir.path().join("concord.toml"), format!("{}\n[server]\n", config(&receiver.url(), "")))
        .expect("config");
    let p = Process::start(dir.path());
    let started = std::time::Instant::now();
    let answer =
        p.api.post("/v1/invoke/sales", json!({ "kind": "probe", "body": { "ops": acts("w3", &["once-1"]) } })).await;
    assert_eq!(answer.status, hyper::StatusCode::OK, "{}", answer.text);
    assert!(started.elapsed() < Duration::from_secs(2), "the trigger waited for the receiver");
    let waiting = std::time::Instant::now();
    while receiver.posts().is_empty() {
        assert!(waiting.elapsed() < Duration::from_secs(10), "nothing was delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The receiver has it and has not answered: the host dies now.
    p.signal("KILL");
    let _ = p.wait();
    let p = Process::start(dir.path());
    let waiting = std::time::Instant::now();
    while receiver.posts().len() < 2 {
        assert!(waiting.elapsed() < Duration::from_secs(10), "the action was not sent again after the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(receiver.unique_keys(), ["once-1"], "one effect, however often sent");
    let listed = p.api.get("/v1/actions").await;
    assert_eq!(listed.body["actions"][0]["idempotency_key"], "once-1", "{}", listed.text);
    let waiting = std::time::Instant::now();
    while p.api.get("/v1/actions").await.body["actions"][0]["delivered_at_ms"].is_null() {
        assert!(waiting.elapsed() < Duration::from_secs(10), "the store never recorded the delivery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

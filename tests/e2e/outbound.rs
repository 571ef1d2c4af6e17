//! Outbound HTTP (`wasi:http`) through the host, against real servers on
//! loopback that these tests start: granted requests work and are audited;
//! everything else is refused before any connection (the refused server
//! must see none); secrets reach their hosts and nothing else; the limits
//! hold.

use crate::common::{Env, FAST_LIMITS, config_text};
use crate::http::{Process, service_dir};
use bytes::Bytes;
use concord::audit::{AuditEntry, AuditFilter, Decision, calls};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a test server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

/// An HTTP server on loopback. Routes: `/echo` answers the method, path,
/// body and header *names* (never values) as JSON; `/redirect?to=URL`
/// answers 302 to URL; `/big?bytes=N` answers N bytes; `/slow?ms=N`
/// answers after N ms.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Echo {
    async fn start() -> Echo {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let addr = crate::common::serve_loopback(move |req| answer(req, log.clone())).await;
        Echo { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let method = req.method().to_string();
    log.lock().expect("lock").push(Seen { path: path.clone(), headers: headers.clone() });
    let body = req.into_body().collect().await?.to_bytes();
    let param = |name: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap_or_default().to_string()
    };
    let response = match path.as_str() {
        "/redirect" => Response::builder().status(302).header("location", param("to")).body(Full::default()),
        "/big" => {
            let n: usize = param("bytes").parse().unwrap_or(0);
            Response::builder().body(Full::new(Bytes::from(vec![b'x'; n])))
        }
        // A careless server: echoes the authorization it got, in its body
        // and in a header.
        "/leak" => {
            let auth = headers.iter().find(|(n, _)| n == "authorization").map(|(_, v)| v.clone()).unwrap_or_default();
            Response::builder().header("x-echo", auth.clone()).body(Full::new(Bytes::from(format!("you sent: {auth}"))))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(param("ms").parse().unwrap_or(0))).await;
            Response::builder().body(Full::new(Bytes::from_static(b"late")))
        }
        _ => {
            let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
            let echo = json!({ "method": method, "path": path, "body": String::from_utf8_lossy(&body), "header_names": names });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(echo.to_string())))
        }
    };
    Ok(response.expect("a valid response"))
}

/// A server that must never be reached: it counts the connections it gets.
struct Tap {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Tap {
    async fn start() -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let count = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Tap { port, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The example config (test limits plus `limits`), with `grants` appended.
fn config(limits: &str, grants: &str) -> String {
    format!("{}\n{grants}\n", config_text(&format!("{FAST_LIMITS}{limits}")))
}

fn get(url: &str) -> Value {
    json!({ "op": "http", "method": "GET", "url": url })
}

fn http_entries(env: &Env) -> Vec<AuditEntry> {
    env.audit(AuditFilter { call: Some(calls::HTTP.into()), ..AuditFilter::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_request_is_sent_and_audited() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let env = Env::with_config(&[("support", "probe")], &config("", &grants));
    let ops = json!([{ "op": "http", "method": "POST", "url": echo.url("/echo?x=1"), "body": "hello", "headers": { "x-mine": "1" } }]);
    let out = env.probe("support", ops).await;
    assert_eq!(out[0]["status"], 200, "{out:?}");
    let echoed: Value = serde_json::from_str(out[0]["body"].as_str().expect("a body")).expect("JSON");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/echo");
    assert_eq!(echoed["body"], "hello");
    assert!(echoed["header_names"].as_array().expect("names").contains(&json!("x-mine")));

    let entries = http_entries(&env);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e.agent, "support");
    assert_eq!(e.decision, Decision::Allowed);
    let args: Value = serde_json::from_str(&e.args).expect("args are JSON");
    assert_eq!(args["method"], "POST");
    assert_eq!(args["url"], echo.url("/echo?x=1"));
    assert_eq!(args["bytes_out"], 5);
    assert_eq!(args["secrets"], json!([]));
    let body_len = out[0]["body"].as_str().expect("body").len();
    assert!(e.outcome.starts_with("200 OK: 5 bytes out, "), "{}", e.outcome);
    assert!(e.outcome.contains(&format!("{body_len} bytes in")), "{}", e.outcome);
    assert!(e.invocation > 0, "the entry names its invocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_not_granted_is_refused_before_any_connection() {
    let echo = Echo::start().await;
    let tap = Tap::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let env = Env::with_config(&[("support", "probe"), ("sales", "probe")], &config("", &grants));
    let p = tap.port;
    let e = echo.addr.port();
    let refused = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://localhost:{p}/"),
        format!("http://localhost:{e}/echo"),
        format!("https://127.0.0.1:{e}/echo"),
        format!("http://127.1:{p}/"),
        format!("http://0x7f.0.0.1:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://{}@127.0.0.1:{e}/echo", "user"),
        echo.url(&format!("/redirect?to=http://127.0.0.1:{p}/")),
    ];
    let out = env.probe("support", Value::Array(refused.iter().map(|u| get(u)).collect())).await;
    for (url, result) in refused.iter().zip(&out) {
        assert!(result["error"] == "refused" || result["error"] == "bad_url", "{url}: {result}");
    }
    // An agent with no grant reaches nothing, not even the granted server.
    let out = env.probe("sales", json!([get(&echo.url("/echo"))])).await;
    assert_eq!(out[0]["error"], "refused", "{out:?}");
    assert_eq!(tap.connections(), 0, "the refused server was connected to");
    // The echo server saw the redirect only; the user@ request never left.
    assert_eq!(echo.seen().iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/redirect"]);

    let entries = http_entries(&env);
    let refusals: Vec<&AuditEntry> = entries.iter().filter(|e| e.decision != Decision::Allowed).collect();
    // Every request was audited, the redirect as two: its hop and the refusal.
    assert_eq!(entries.len(), refused.len() + 2, "{entries:#?}");
    assert_eq!(refusals.len(), refused.len() + 1);
    for r in &refusals {
        assert!(r.rule.is_some(), "a refusal names its rule: {r:?}");
    }
    let forbidden: Vec<&&AuditEntry> = refusals.iter().filter(|e| e.decision == Decision::Forbidden).collect();
    for f in &forbidden {
        assert!(f.outcome.contains("refused before any connection"), "{}", f.outcome);
    }
    let rule_of = |agent: &str| format!("agents.{agent}.http");
    assert!(forbidden.iter().any(|f| f.agent == "sales" && f.rule.as_deref() == Some(rule_of("sales").as_str())));
    let trick = forbidden
        .iter()
        .find(|f| f.args.contains("0x7f.0.0.1"))
        .expect("the hex spelling is audited as the agent wrote it");
    assert_eq!(trick.rule.as_deref(), Some(rule_of("support").as_str()));
    assert!(trick.outcome.contains(&format!("port {p} is not granted for 127.0.0.1")), "{}", trick.outcome);
    let scheme = forbidden.iter().find(|f| f.args.contains("https://")).expect("the https request");
    assert!(scheme.outcome.contains("scheme https is not granted"), "{}", scheme.outcome);
    let user = refusals.iter().find(|f| f.args.contains("user@")).expect("the user@ request");
    assert_eq!(user.decision, Decision::Invalid);
    assert!(user.outcome.contains("names a user"), "{}", user.outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spelling_of_a_granted_address_reaches_the_address_as_checked() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let env = Env::with_config(&[("support", "probe")], &config("", &grants));
    let port = echo.addr.port();
    let out = env
        .probe(
            "support",
            json!([get(&format!("http://127.1:{port}/echo")), get(&format!("http://0x7f000001:{port}/echo"))]),
        )
        .await;
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(out[1]["status"], 200, "{out:?}");
    // The Host header names the address as checked, not the agent's spelling.
    let hosts: Vec<String> = echo
        .seen()
        .iter()
        .map(|s| s.headers.iter().find(|(n, _)| n == "host").map(|(_, v)| v.clone()).unwrap_or_default())
        .collect();
    assert_eq!(hosts, [format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")]);
    // A relative redirect is followed to the same origin, checked again.
    let out = env.probe("support", json!([get(&echo.url("/redirect?to=/echo"))])).await;
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(http_entries(&env).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_limits_hold() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let limits = "max_http_requests = 3\nmax_http_response_bytes = 1000\nhttp_timeout_ms = 300\n";
    let env = Env::with_config(&[("support", "probe")], &config(limits, &grants));
    let started = std::time::Instant::now();
    let out = env
        .probe(
            "support",
            json!([
                get(&echo.url("/big?bytes=1000")),
                get(&echo.url("/big?bytes=1001")),
                get(&echo.url("/slow?ms=5000")),
                get(&echo.url("/echo")),
            ]),
        )
        .await;
    assert_eq!(out[0]["status"], 200, "{out:?}");
    assert_eq!(out[0]["body"].as_str().map(str::len), Some(1000));
    assert_eq!(out[1]["error"], "failed", "{out:?}");
    assert_eq!(out[2]["error"], "failed", "{out:?}");
    assert_eq!(out[3]["error"], "refused", "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "the slow request was not cut at 300 ms");
    let entries = http_entries(&env);
    let rules: Vec<Option<&str>> = entries.iter().map(|e| e.rule.as_deref()).collect();
    assert_eq!(
        rules,
        [
            None,
            Some("limits.max_http_response_bytes"),
            Some("limits.http_timeout_ms"),
            Some("limits.max_http_requests")
        ]
    );
    assert!(entries[1].outcome.contains("over 1000 bytes"), "{}", entries[1].outcome);
    assert!(entries[2].outcome.contains("300 ms"), "{}", entries[2].outcome);
    assert_eq!(entries[3].decision, Decision::Invalid);
    assert!(entries[3].outcome.contains("request 4 refused: the limit is 3"), "{}", entries[3].outcome);
}

#[test]
fn bad_grants_are_refused_at_start_with_their_line() {
    for (grants, says) in [
        (
            "[agents.support]\nhttp = [\"api.example.com\"]\n",
            "agents.support: http: `api.example.com` is not an origin",
        ),
        ("[agents.support]\nhttp = [\"https://*\"]\n", "may only stand for subdomains"),
        ("[agents.support]\nhtp = []\n", "unknown field `htp`"),
        ("[agents.support]\nsecrets = [\"openai\"]\n", "no secret `openai` is declared"),
        (
            "[secrets.openai]\nenv = \"K\"\nhosts = [\"https://api.openai.com\"]\nheader = \"Authorization\"\n[agents.support]\nhttp = [\"https://other.example.com\"]\nsecrets = [\"openai\"]\n",
            "`openai` goes to https://api.openai.com, which agents.support.http does not grant",
        ),
        (
            "[secrets.openai]\nenv = \"K\"\nhosts = [\"https://api.openai.com\"]\nheader = \"Host\"\n",
            "secrets.openai: `Host` frames or routes the request",
        ),
        ("[secrets.openai]\nenv = \"K\"\nhosts = []\nheader = \"x-key\"\n", "`hosts` lists the origins"),
    ] {
        let text = config("", grants);
        let err = concord::Config::parse(&text, std::path::Path::new("concord.toml"), std::path::Path::new("."))
            .expect_err(grants);
        let shown = err.to_string();
        assert!(shown.contains(says), "{grants}: {shown}");
        assert!(err.line.is_some(), "{shown}");
    }
}

/// The secret, from the host's environment, reaches the granted server in
/// its header. It is in no audit entry, no log line, no file of the store,
/// no other server's request and nowhere in the agent's memory; and a host
/// whose secret is not set does not start, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_host_and_nothing_else() {
    let echo = Echo::start().await;
    let other = Echo::start().await;
    let secret = format!("sk-test-{}", std::process::id() as u64 * 7919 + 104_729);
    let reversed: String = secret.chars().rev().collect();
    let dir = service_dir(&[("support", "probe")], "");
    let path = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let grants = format!(
        "\n[secrets.token]\nenv = \"CONCORD_TEST_TOKEN\"\nhosts = [\"{}\"]\nheader = \"Authorization\"\nformat = \"Bearer {{}}\"\n\n[agents.support]\nhttp = [\"{}\", \"{}\"]\nsecrets = [\"token\"]\n",
        echo.origin(),
        echo.origin(),
        other.origin()
    );
    std::fs::write(&path, format!("{text}{grants}")).expect("config");

    // Without the variable, the host does not start, and says which it is.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("CONCORD_TEST_TOKEN")
        .env_remove("CONCORD_CONFIG")
        .output()
        .expect("concord runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret `token`: the environment variable CONCORD_TEST_TOKEN is not set"), "{stderr}");

    let p = Process::start_with_env(dir.path(), &[("CONCORD_TEST_TOKEN", &secret), ("CONCORD_LOG", "debug")]);
    let marker = "marker-7c1f0e";
    let ops = json!([
        get(&echo.url("/echo")),
        get(&other.url("/echo")),
        get(&echo.url("/leak")),
        { "op": "memory_holds", "reversed": reversed },
        { "op": "memory_holds", "reversed": marker.chars().rev().collect::<String>() },
    ]);
    let answer =
        p.api.post("/v1/invoke/support", json!({ "kind": "probe", "body": { "ops": ops, "marker": marker } })).await;
    assert_eq!(answer.status, hyper::StatusCode::OK, "{}", answer.text);
    let report = answer.body["report"].as_str().unwrap_or_else(|| panic!("a report: {}", answer.text));
    let results: Value = serde_json::from_str(report).expect("the probe reports JSON");
    assert_eq!(results[0]["status"], 200, "{results}");
    assert_eq!(results[1]["status"], 200, "{results}");
    assert_eq!(results[2]["body"], "you sent: Bearer [secret token]", "an echo is scrubbed: {results}");
    assert_eq!(results[3]["found"], false, "the secret is in the agent's memory: {results}");
    assert_eq!(results[4]["found"], true, "the memory scan does not find what is there: {results}");
    assert!(results[3]["bytes_scanned"].as_u64().unwrap_or(0) > 1 << 20, "{results}");

    let auth = |seen: &[Seen]| -> Vec<String> {
        seen.iter()
            .flat_map(|s| s.headers.iter().filter(|(n, _)| n == "authorization").map(|(_, v)| v.clone()))
            .collect()
    };
    assert_eq!(auth(&echo.seen()), [format!("Bearer {secret}"), format!("Bearer {secret}")]);
    assert!(auth(&other.seen()).is_empty(), "the secret went to a host that is not its own");

    let audit = p.api.get("/v1/audit?limit=1000").await.text;
    assert!(audit.contains(r#"\"secrets\":[\"token\"]"#), "the audit names the secret added: {audit}");
    assert!(!audit.contains(&secret), "the audit holds the secret");
    let metrics = p.api.get("/metrics").await.text;
    assert!(metrics.contains("call=\"http.request\""), "{metrics}");
    assert!(metrics.contains("concord_http_body_bytes_total{agent=\"support\",direction=\"received\"}"), "{metrics}");
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(log.contains("support"), "the log is empty: {log}");
    assert!(!log.contains(&secret), "a log line holds the secret: {log}");
    for entry in std::fs::read_dir(dir.path().join("data")).expect("data") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
}

/// A reload puts a new grant in force from the next request; one granting
/// a secret whose variable is not set is refused, and the old grant stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_reload_live_and_a_missing_secret_refuses_the_reload() {
    use concord::ConfigReload;
    let (first, second) = (Echo::start().await, Echo::start().await);
    let env = Env::with_config(
        &[("support", "probe")],
        &config("", &format!("[agents.support]\nhttp = [\"{}\"]\n", first.origin())),
    );
    let out = env.probe("support", json!([get(&second.url("/echo"))])).await;
    assert_eq!(out[0]["error"], "refused", "{out:?}");

    let path = env.dir.path().join("concord.toml");
    let both = config("", &format!("[agents.support]\nhttp = [\"{}\", \"{}\"]\n", first.origin(), second.origin()));
    std::fs::write(&path, &both).expect("write");
    let ConfigReload::Applied { changes, .. } = env.host.reload_config().expect("reload") else { panic!("applied") };
    assert!(changes.iter().any(|c| c == "grant of agent support changed"), "{changes:?}");
    let out = env.probe("support", json!([get(&second.url("/echo"))])).await;
    assert_eq!(out[0]["status"], 200, "{out:?}");

    let digest = env.host.config().digest.clone();
    let unset = "CONCORD_TEST_NEVER_SET_7D41";
    let with_secret = config(
        "",
        &format!(
            "[secrets.key]\nenv = \"{unset}\"\nhosts = [\"{}\"]\nheader = \"x-api-key\"\n[agents.support]\nhttp = [\"{}\"]\nsecrets = [\"key\"]\n",
            first.origin(),
            first.origin()
        ),
    );
    std::fs::write(&path, with_secret).expect("write");
    let ConfigReload::Refused(why) = env.host.reload_config().expect("reload") else { panic!("refused") };
    assert!(why.contains(&format!("the environment variable {unset} is not set")), "{why}");
    assert_eq!(env.host.config().digest, digest, "the old config stays");
    let out = env.probe("support", json!([get(&second.url("/echo"))])).await;
    assert_eq!(out[0]["status"], 200, "the old grant stays: {out:?}");
}

/// Requests answer through their futures and cannot trap; past
/// `limits.max_host_calls` the invocation is stopped all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_stops_at_the_host_call_limit() {
    let tap = Tap::start().await;
    let env = Env::with_config(&[("support", "probe")], &config("max_host_calls = 3\n", ""));
    let flood: Vec<Value> = (0..200).map(|_| get(&format!("http://127.0.0.1:{}/", tap.port))).collect();
    let inv = env.send("support", "probe", "", json!({ "ops": flood })).await;
    match &inv.outcome {
        concord::Outcome::Trapped(why) => assert!(why.contains("limits.max_host_calls"), "{why}"),
        other => panic!("the flood was not stopped: {other}"),
    }
    assert_eq!(tap.connections(), 0);
    let entries = http_entries(&env);
    assert!(entries.iter().take(3).all(|e| e.decision == Decision::Forbidden), "{entries:#?}");
    assert_eq!(entries[3].rule.as_deref(), Some("limits.max_host_calls"));
}

/// A request the agent hands over and drops at once is audited all the
/// same: the entry is drafted when the request is handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_agent_gives_up_on_is_audited() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let env = Env::with_config(&[("support", "probe")], &config("", &grants));
    let ops: Vec<Value> = (0..20).map(|_| json!({ "op": "http_abandon", "url": echo.url("/slow?ms=2000") })).collect();
    let out = env.probe("support", Value::Array(ops)).await;
    assert_eq!(out.len(), 20, "{out:?}");
    // An aborted request leaves its entry when it is dropped, which may be
    // just after the invocation ends.
    let mut entries = http_entries(&env);
    for _ in 0..100 {
        if entries.len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        entries = http_entries(&env);
    }
    assert_eq!(entries.len(), 20, "one entry per request handed over: {entries:#?}");
    // Each is counted when it is handed over: past limits.max_http_requests
    // (16) the rest are refused, though none was ever polled.
    entries.sort_by_key(|e| e.seq);
    let (abandoned, refused): (Vec<_>, Vec<_>) = entries.iter().partition(|e| e.outcome.starts_with("abandoned"));
    assert_eq!(abandoned.len(), 16, "{entries:#?}");
    assert!(abandoned.iter().all(|e| e.decision == Decision::Allowed), "they passed the checks");
    assert!(refused.iter().all(|e| e.rule.as_deref() == Some("limits.max_http_requests")), "{refused:#?}");
}

/// `concord agents` shows what each agent may reach beyond the knowledge
/// base, and nothing for an agent granted nothing.
#[test]
fn concord_agents_shows_the_grants() {
    let grants = "[secrets.key]\nenv = \"CONCORD_TEST_NEVER_SET_AGENTS\"\nhosts = [\"https://api.example.com\"]\nheader = \"x-api-key\"\n\n[agents.support]\nhttp = [\"https://api.example.com\", \"http://127.0.0.1:11434\"]\nsecrets = [\"key\"]\n";
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    for name in ["support", "sales"] {
        std::fs::copy(crate::common::wasm("probe"), dir.path().join("agents").join(format!("{name}.wasm")))
            .expect("copy");
    }
    std::fs::write(dir.path().join("concord.toml"), config("", grants)).expect("config");
    let out = crate::common::concord(dir.path(), &["agents"]);
    let text = crate::common::stdout(&out);
    assert!(out.status.success(), "{text}{}", crate::common::stderr(&out));
    assert!(text.contains("may reach: https://api.example.com, http://127.0.0.1:11434"), "{text}");
    assert!(text.contains("secrets added: key"), "{text}");
    assert_eq!(text.matches("may reach").count(), 1, "sales is granted nothing: {text}");
    let json = crate::common::concord(dir.path(), &["agents", "--json"]);
    let support = crate::common::stdout(&json)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON lines"))
        .find(|v| v["name"] == "support")
        .expect("support is listed");
    assert_eq!(support["http"], json!(["https://api.example.com", "http://127.0.0.1:11434"]));
}

/// `TRACE` would echo the request, secrets and all, back to the agent;
/// `CONNECT` would open a tunnel past the check. Both are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_connect_are_refused() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let env = Env::with_config(&[("support", "probe")], &config("", &grants));
    let out = env
        .probe(
            "support",
            json!([
                { "op": "http", "method": "TRACE", "url": echo.url("/echo") },
                { "op": "http", "method": "CONNECT", "url": echo.url("/echo") },
            ]),
        )
        .await;
    assert!(out.iter().all(|r| r["error"] == "failed" || r["error"] == "refused"), "{out:?}");
    assert!(echo.seen().is_empty(), "the server was reached");
    let entries = http_entries(&env);
    assert_eq!(entries.len(), 2);
    assert!(
        entries.iter().all(|e| e.decision == Decision::Invalid && e.outcome.contains("does not send")),
        "{entries:#?}"
    );
}

/// `limits.timeout_ms` bounds an invocation that waits on the network too,
/// not only one running wasm: the request is cut with it, and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invocation_time_limit_covers_waiting_on_a_request() {
    let echo = Echo::start().await;
    let grants = format!("[agents.support]\nhttp = [\"{}\"]\n", echo.origin());
    let text = config("", &grants).replace("timeout_ms = 5_000", "timeout_ms = 400");
    let env = Env::with_config(&[("support", "probe")], &text);
    let started = std::time::Instant::now();
    let inv = env.send("support", "probe", "", json!({ "ops": [get(&echo.url("/slow?ms=5000"))] })).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the wait was not cut");
    match &inv.outcome {
        concord::Outcome::Trapped(why) => assert!(why.contains("time limit") && why.contains("400 ms"), "{why}"),
        other => panic!("not stopped: {other}"),
    }
    let mut entries = http_entries(&env);
    for _ in 0..100 {
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        entries = http_entries(&env);
    }
    assert_eq!(entries.len(), 1, "the request cut short is audited");
    assert!(entries[0].outcome.starts_with("abandoned"), "{}", entries[0].outcome);
}

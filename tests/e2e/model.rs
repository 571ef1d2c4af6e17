//! `model.complete` against an OpenAI-compatible chat-completions server
//! that these tests start on loopback: an answer is audited with the
//! prompt's sha256 and what the model said; grants and token budgets hold;
//! a server that hangs, fails or answers garbage gets a clear error.

use crate::common::{Env, FAST_LIMITS, config_text};
use bytes::Bytes;
use concord::audit::{AuditEntry, AuditFilter, Decision, calls};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the chat server was asked: the request's JSON and its
/// `authorization` header.
type Asked = Arc<Mutex<Vec<(Value, Option<String>)>>>;

/// An OpenAI-compatible server at `/v1/chat/completions`. It answers by the
/// model asked for: `ok-model` says "high" (40 prompt tokens, 2 completion
/// tokens); `hang` never answers; `garbage` answers HTML; `broken`
/// answers 500.
struct ChatServer {
    addr: SocketAddr,
    asked: Asked,
}

impl ChatServer {
    async fn start() -> ChatServer {
        let asked: Asked = Arc::default();
        let log = asked.clone();
        let addr = crate::common::serve_loopback(move |req| chat(req, log.clone())).await;
        ChatServer { addr, asked }
    }

    fn asked(&self) -> Vec<(Value, Option<String>)> {
        self.asked.lock().expect("lock").clone()
    }
}

async fn chat(req: Request<hyper::body::Incoming>, log: Asked) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = serde_json::from_slice(&req.into_body().collect().await?.to_bytes()).unwrap_or(Value::Null);
    log.lock().expect("lock").push((body.clone(), auth));
    let response = match (path.as_str(), body["model"].as_str().unwrap_or_default()) {
        ("/v1/chat/completions", "ok-model") => {
            let answer = json!({
                "id": "c1", "object": "chat.completion", "model": "ok-model-2026",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "high" }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42 },
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))
        }
        ("/v1/chat/completions", "hang") => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::builder().body(Full::default())
        }
        ("/v1/chat/completions", "garbage") => {
            Response::builder().body(Full::new(Bytes::from_static(b"<html>a proxy's error page</html>")))
        }
        _ => Response::builder().status(500).body(Full::new(Bytes::from_static(b"upstream exploded"))),
    };
    Ok(response.expect("a valid response"))
}

/// The example config (test limits), with `[models]` for `server` and
/// `grants` appended.
fn config(server: &ChatServer, grants: &str) -> String {
    let url = format!("http://{}/v1", server.addr);
    format!(
        "{}\n[models.default]\nurl = \"{url}\"\nmodel = \"ok-model\"\n\n[models.slow]\nurl = \"{url}\"\nmodel = \"hang\"\ntimeout_ms = 300\n\n[models.junk]\nurl = \"{url}\"\nmodel = \"garbage\"\n\n[models.down]\nurl = \"{url}/\"\nmodel = \"broken\"\n\n{grants}\n",
        config_text(FAST_LIMITS)
    )
}

fn ask(model: Option<&str>, max_tokens: Option<u32>) -> Value {
    let mut op = json!({ "op": "model", "messages": [
        { "role": "system", "content": "Answer low, medium or high." },
        { "role": "user", "content": "Checkout is down for every user." },
    ] });
    if let Some(m) = model {
        op["model"] = json!(m);
    }
    if let Some(n) = max_tokens {
        op["max_tokens"] = json!(n);
    }
    op
}

fn model_entries(env: &Env) -> Vec<AuditEntry> {
    env.audit(AuditFilter { call: Some(calls::MODEL.into()), ..AuditFilter::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_answers_and_the_audit_shows_what_it_said() {
    let server = ChatServer::start().await;
    let env = Env::with_config(&[("support", "probe")], &config(&server, "[agents.support]\nmodels = [\"default\"]\n"));
    let out = env.probe("support", json!([ask(None, Some(64))])).await;
    assert_eq!(out[0]["content"], "high", "{out:?}");
    assert_eq!(out[0]["model"], "ok-model-2026");
    assert_eq!((out[0]["prompt_tokens"].as_u64(), out[0]["completion_tokens"].as_u64()), (Some(40), Some(2)));
    assert_eq!(out[0]["finish_reason"], "stop");

    let asked = server.asked();
    assert_eq!(asked.len(), 1);
    let (body, auth) = &asked[0];
    assert_eq!(body["model"], "ok-model", "the configured model name is sent");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["messages"][1]["content"], "Checkout is down for every user.");
    assert_eq!(*auth, None, "no secret is configured for this model");

    let entries = model_entries(&env);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.decision, Decision::Allowed);
    let args: Value = serde_json::from_str(&e.args).expect("JSON args");
    let prompt = json!([
        { "role": "system", "content": "Answer low, medium or high." },
        { "role": "user", "content": "Checkout is down for every user." },
    ])
    .to_string();
    let sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(prompt.as_bytes()))
    };
    assert_eq!(args["prompt_sha256"], sha);
    assert_eq!(args["model"], "default");
    assert!(!e.args.contains("Checkout is down"), "the prompt itself is not audited: {}", e.args);
    assert!(e.outcome.starts_with("stop: 40+2 tokens, ") && e.outcome.ends_with(": high"), "{}", e.outcome);

    // `concord audit --invocation N` shows what the model said (the host
    // stops first: it holds the store).
    let invocation = e.invocation.to_string();
    let Env { dir, host } = env;
    drop(Arc::into_inner(host).expect("no other host handles"));
    let shown = crate::common::concord(dir.path(), &["audit", "--invocation", &invocation]);
    let text = crate::common::stdout(&shown);
    assert!(text.contains("model.complete") && text.contains("high"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_and_declared_models_are_asked() {
    let server = ChatServer::start().await;
    let env = Env::with_config(
        &[("support", "probe"), ("sales", "probe")],
        &config(&server, "[agents.support]\nmodels = [\"default\"]\n"),
    );
    let out = env.probe("sales", json!([ask(None, None)])).await;
    assert_eq!(out[0]["error"], "refused", "{out:?}");
    let out = env.probe("support", json!([ask(Some("gpt-9"), None)])).await;
    assert_eq!(out[0]["error"], "refused", "{out:?}");
    assert!(
        out[0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("no model `gpt-9` is configured (configured: default, down, junk, slow)"),
        "{out:?}"
    );
    let out = env.probe("support", json!([ask(Some("junk"), None)])).await;
    assert_eq!(out[0]["error"], "refused", "a declared model not granted: {out:?}");
    assert!(server.asked().is_empty(), "a refused call reached the server");
    let rules: Vec<(String, Decision, Option<String>)> =
        model_entries(&env).into_iter().map(|e| (e.agent, e.decision, e.rule)).collect();
    assert_eq!(
        rules,
        [
            ("sales".into(), Decision::Forbidden, Some("agents.sales.models".into())),
            ("support".into(), Decision::Invalid, Some("models".into())),
            ("support".into(), Decision::Forbidden, Some("agents.support.models".into())),
        ]
    );
}

/// The prompt `ask` sends, as the host estimates it: four bytes a token.
fn prompt_estimate() -> u64 {
    let prompt = json!([
        { "role": "system", "content": "Answer low, medium or high." },
        { "role": "user", "content": "Checkout is down for every user." },
    ])
    .to_string();
    prompt.len().div_ceil(4) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budgets_hold_per_invocation_and_per_day() {
    let server = ChatServer::start().await;
    let grants = "[agents.support]\nmodels = [\"default\"]\ntokens_per_invocation = 100\ntokens_per_day = 150\n";
    let env = Env::with_config(&[("support", "probe")], &config(&server, grants));
    let p = prompt_estimate();
    assert!(p < 58, "the test's prompt must fit what is left after one call ({p})");
    // Each call reserves its prompt and at most what is left for the
    // answer; the server says it spent 42. Then the invocation has 16 left,
    // less than the prompt alone: refused before anything is sent.
    let out = env.probe("support", json!([ask(None, None), ask(None, Some(1000)), ask(None, None)])).await;
    assert_eq!(out[0]["content"], "high", "{out:?}");
    assert_eq!(out[1]["content"], "high", "{out:?}");
    assert_eq!(out[2]["error"], "refused", "{out:?}");
    assert!(
        out[2]["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("the prompt alone (about {p} tokens) is more than the 16 left")),
        "{out:?}"
    );
    // A new invocation: the day has 84 of 150, so 66 are reserved; then 24
    // are left of the day, less than the prompt.
    let out = env.probe("support", json!([ask(None, None), ask(None, None)])).await;
    assert_eq!(out[0]["content"], "high", "{out:?}");
    assert_eq!(out[1]["error"], "refused", "{out:?}");
    let max: Vec<Value> = server.asked().iter().map(|(b, _)| b["max_tokens"].clone()).collect();
    assert_eq!(max, [json!(100 - p), json!(58 - p), json!(66 - p)], "max_tokens is what is left after the prompt");
    let entries = model_entries(&env);
    assert_eq!(entries[2].rule.as_deref(), Some("agents.support.tokens_per_invocation"));
    assert_eq!(entries[2].decision, Decision::Invalid);
    let day = entries.last().expect("entries");
    assert_eq!(day.decision, Decision::Deferred);
    assert_eq!(day.rule.as_deref(), Some("agents.support.tokens_per_day"));
    assert!(day.outcome.contains("more than the 24 left"), "{}", day.outcome);
}

/// Calls at the same time cannot both take what is left of a day: the
/// reservation is made at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_cannot_overdraw_the_day() {
    let server = ChatServer::start().await;
    let p = prompt_estimate();
    let grants = format!("[agents.support]\nmodels = [\"default\"]\ntokens_per_day = {}\n", p + 50);
    let env = Arc::new(Env::with_config(&[("support", "probe")], &config(&server, &grants)));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { env.probe("support", json!([ask(None, None)])).await })
        })
        .collect();
    let mut answered = 0;
    for c in calls {
        let out = c.await.expect("task");
        if out[0]["content"] == "high" {
            answered += 1;
        }
    }
    let asked: u64 = server.asked().iter().map(|(b, _)| p + b["max_tokens"].as_u64().unwrap_or(0)).sum();
    assert!(asked <= p + 50 + 2 * p, "the reservations overdrew the day: {asked} of {} ({answered} answered)", p + 50);
    assert!(answered >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_hangs_fails_or_answers_garbage_gets_a_clear_error() {
    let server = ChatServer::start().await;
    let env = Env::with_config(
        &[("support", "probe")],
        &config(&server, "[agents.support]\nmodels = [\"slow\", \"junk\", \"down\"]\n"),
    );
    let started = std::time::Instant::now();
    let out =
        env.probe("support", json!([ask(Some("slow"), None), ask(Some("junk"), None), ask(Some("down"), None)])).await;
    assert!(started.elapsed() < Duration::from_secs(10), "the hanging model was not cut");
    let text = |i: usize| out[i]["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(out[0]["error"], "unavailable", "{out:?}");
    assert!(text(0).contains("model `slow` did not answer within 300 ms (models.slow.timeout_ms)"), "{}", text(0));
    assert_eq!(out[1]["error"], "invalid", "{out:?}");
    assert!(
        text(1).contains("is not a chat completion (not JSON") && text(1).contains("a proxy's error page"),
        "{}",
        text(1)
    );
    assert_eq!(out[2]["error"], "unavailable", "{out:?}");
    assert!(text(2).contains("answered 500 Internal Server Error: upstream exploded"), "{}", text(2));
    let entries = model_entries(&env);
    assert_eq!(entries.len(), 3);
    for e in &entries {
        assert!(e.outcome.starts_with("failed: "), "{}", e.outcome);
    }
}

#[test]
fn bad_models_are_refused_at_start_with_their_line() {
    let with = |models: &str| format!("{}\n{models}\n", config_text(FAST_LIMITS));
    for (models, says) in [
        ("[models.default]\nurl = \"127.0.0.1:11434/v1\"\nmodel = \"m\"\n", "has no scheme"),
        ("[models.default]\nurl = \"ftp://example.com/v1\"\nmodel = \"m\"\n", "not http or https"),
        ("[models.default]\nurl = \"http://example.com/v1\"\nmodel = \" \"\n", "`model` names the model"),
        (
            "[models.default]\nurl = \"http://example.com/v1\"\nmodel = \"m\"\nsecret = \"nope\"\n",
            "secret `nope` is not declared",
        ),
        (
            "[models.default]\nurl = \"http://example.com/v1\"\nmodel = \"m\"\ntimeout_ms = 0\n",
            "`timeout_ms` is 1 to 600000",
        ),
        ("[models.default]\nurl = \"http://example.com/v1\"\n", "missing field `model`"),
        ("[agents.support]\nmodels = [\"default\"]\n", "no model `default` is declared"),
        (
            "[models.default]\nurl = \"http://example.com/v1\"\nmodel = \"m\"\n[agents.support]\nmodels = [\"default\"]\ntokens_per_day = 0\n",
            "tokens_per_day must be greater than 0",
        ),
    ] {
        let err =
            concord::Config::parse(&with(models), std::path::Path::new("concord.toml"), std::path::Path::new("."))
                .expect_err(models);
        assert!(err.to_string().contains(says), "{models}: {err}");
        assert!(err.line.is_some(), "{err}");
    }
}

/// A model's secret goes with each request to it, from the host's
/// environment; the agent is not granted the secret, and no audit entry or
/// log line holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_secret_goes_to_the_model_and_nowhere_else() {
    use crate::http::{Process, service_dir};
    let server = ChatServer::start().await;
    let dir = service_dir(&[("support", "probe")], "");
    let path = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let origin = format!("http://{}", server.addr);
    let extra = format!(
        "\n[secrets.llm]\nenv = \"CONCORD_TEST_LLM_KEY\"\nhosts = [\"{origin}\"]\nheader = \"Authorization\"\nformat = \"Bearer {{}}\"\n\n[models.default]\nurl = \"{origin}/v1\"\nmodel = \"ok-model\"\nsecret = \"llm\"\n\n[agents.support]\nmodels = [\"default\"]\n"
    );
    std::fs::write(&path, format!("{text}{extra}")).expect("config");
    let key = format!("llm-key-{}", std::process::id() as u64 * 6_700_417);
    let p = Process::start_with_env(dir.path(), &[("CONCORD_TEST_LLM_KEY", &key), ("CONCORD_LOG", "debug")]);
    let answer =
        p.api.post("/v1/invoke/support", json!({ "kind": "probe", "body": { "ops": [ask(None, None)] } })).await;
    assert_eq!(answer.status, hyper::StatusCode::OK, "{}", answer.text);
    assert!(answer.text.contains("high"), "{}", answer.text);
    assert_eq!(server.asked().iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), [Some(format!("Bearer {key}"))]);
    let audit = p.api.get("/v1/audit?limit=1000").await.text;
    assert!(audit.contains("model.complete"), "{audit}");
    assert!(!audit.contains(&key), "the audit holds the key");
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    assert!(!log.contains(&key), "a log line holds the key: {log}");
}

/// The example Support agent rates an escalation's severity by the model
/// when it is granted one, and by its own rule otherwise (the demo, offline),
/// without a refused call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_rates_severity_by_the_model_when_it_has_one_and_by_its_rule_otherwise() {
    let server = ChatServer::start().await;
    let escalate = json!({ "ticket": "T-7", "summary": "a question about invoices" });
    for (grants, rated) in
        [("[agents.support]\nmodels = [\"default\"]\n", "severity high by the model"), ("", "severity low by rule")]
    {
        let env = Env::with_config(&[("sales", "sales"), ("support", "support")], &config(&server, grants));
        crate::common::onboard(&env, "acme").await;
        let inv = env.send("support", "escalation", "customer/acme", escalate.clone()).await;
        let concord::Outcome::Ok(report) = &inv.outcome else { panic!("support failed: {}", inv.outcome) };
        assert!(report.contains(rated), "{grants:?}: {report}");
        let entries = env.audit(AuditFilter { agent: Some("support".into()), ..AuditFilter::default() });
        assert!(entries.iter().all(|e| !e.decision.is_refusal()), "a refused call: {entries:#?}");
    }
    assert_eq!(server.asked().len(), 1, "only the granted run asked the model");
}

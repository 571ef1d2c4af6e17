//! Schedules through a real server on a manual clock: fires counted
//! exactly, overlaps skipped, missed fires after a restart following
//! `catch_up`, a removed agent's fires skipped, and `concord schedules`.
//! Time never passes by itself here: the test moves the clock and waits
//! for what the server did about it.

use crate::common::{Env, concord, config_text, stdout};
use crate::http::Api;
use concord::LiveOptions;
use concord::Server;
use concord::audit::{AuditEntry, AuditFilter, Decision, calls};
use concord::schedule::{self, Clock};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A fixed start, so that fire times are known: 2027-01-15 08:00:00 UTC.
const T0: u64 = 1_800_000_000_000;

/// Enough fuel for a probe to spin for seconds.
const SPIN_LIMITS: &str = "memory_mib = 16\nfuel = 100_000_000_000\ntimeout_ms = 10_000\n";

fn config(schedules: &str) -> String {
    format!("{}\n{schedules}\n", config_text(SPIN_LIMITS))
}

async fn serve(env: &Env, clock: &Clock) -> (Server, Api) {
    let options = LiveOptions { clock: clock.clone(), watch: false };
    let server =
        Server::start_with(env.host.clone(), "127.0.0.1:0".parse().expect("addr"), options).await.expect("serves");
    let api = Api::new(&format!("http://{}", server.addr()));
    (server, api)
}

async fn stop(server: Server) {
    server.shutdown();
    server.wait().await;
}

/// The schedule `name` as `GET /v1/schedules` shows it.
async fn view(api: &Api, name: &str) -> Value {
    let a = api.get("/v1/schedules").await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["schedules"].as_array().expect("a list").iter().find(|s| s["name"] == name).cloned().expect("listed")
}

/// Waits (on real time, bounded) until `done` holds for schedule `name`.
async fn until(api: &Api, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = view(api, name).await;
        if done(&v) {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{name}: {what} did not happen: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fired `n` times, and the last run has ended.
fn fired(n: u64) -> impl Fn(&Value) -> bool {
    move |v| v["state"]["fires"] == n && v["running"].is_null() && v["state"]["last_outcome"] != "running"
}

fn entries(env: &Env, call: &str) -> Vec<AuditEntry> {
    env.audit(AuditFilter { call: Some(call.into()), ..Default::default() })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_every_schedule_fires_once_per_interval_and_each_fire_is_the_cause_of_its_invocation() {
    let env = Env::with_config(
        &[("product", "probe")],
        &config(
            r#"[[schedules]]
name = "tick"
agent = "product"
kind = "probe"
body = { ops = [{ op = "log", message = "tick" }] }
every = "10s"
"#,
        ),
    );
    let clock = Clock::manual(T0);
    let (server, api) = serve(&env, &clock).await;
    let v = view(&api, "tick").await;
    assert_eq!(v["next_fire_ms"], T0 + 10_000, "counted from the start: {v}");
    assert_eq!(v["when"], "every 10s");

    for i in 1..=5u64 {
        clock.set(T0 + i * 10_000);
        let v = until(&api, "tick", &format!("fire {i}"), fired(i)).await;
        assert_eq!(v["next_fire_ms"], T0 + (i + 1) * 10_000);
        assert!(v["state"]["last_outcome"].as_str().is_some_and(|o| o.starts_with("ok")), "{v}");
    }
    // The host stalled for 35 s: one fire stands for the three due meanwhile.
    clock.set(T0 + 85_000);
    let v = until(&api, "tick", "the fire after a stall", fired(6)).await;
    assert_eq!(v["next_fire_ms"], T0 + 90_000, "counted from the latest fire due: {v}");

    let fires = entries(&env, calls::SCHEDULE_FIRE);
    assert_eq!(fires.len(), 6, "one fire entry per fire, no more: {fires:?}");
    assert!(fires.iter().all(|f| f.agent == "host" && f.rule.as_deref() == Some("schedule: tick")));
    assert!(fires[5].outcome.contains("once for 3 fires"), "{}", fires[5].outcome);
    let due: Vec<u64> = fires
        .iter()
        .map(|f| serde_json::from_str::<Value>(&f.args).expect("args")["due_ms"].as_u64().expect("due_ms"))
        .collect();
    assert_eq!(due, [1, 2, 3, 4, 5, 8].map(|i| T0 + i * 10_000), "each fire at its due time");

    // Each fire caused exactly one invocation, and its trace shows the fire.
    let last = v["state"]["last_invocation"].as_u64().expect("an invocation");
    let start = env.host.store().audit_entry(last).expect("read").expect("start entry");
    assert_eq!(start.causation, Some(fires[5].seq), "the fire is the invocation's cause");
    let trace = api.get(&format!("/v1/audit/trace/{last}")).await;
    let seqs: Vec<u64> =
        trace.body["entries"].as_array().expect("entries").iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.contains(&fires[5].seq), "the trace includes the fire: {seqs:?}");
    let started = env.audit(AuditFilter { agent: Some("product".into()), ..Default::default() });
    let caused: Vec<Option<u64>> =
        started.iter().filter(|e| e.call == "invocation.start").map(|e| e.causation).collect();
    assert_eq!(caused, fires.iter().map(|f| Some(f.seq)).collect::<Vec<_>>());

    // `concord schedules` goes through the running server.
    let out = concord(env.dir.path(), &["schedules"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("tick") && text.contains("every 10s -> product probe"), "{text}");
    assert!(text.contains("fired 6 time(s), skipped 0"), "{text}");

    // The agent's file goes: its fires are skipped, and audited, not failed.
    std::fs::remove_file(env.dir.path().join("agents/product.wasm")).expect("remove");
    env.host.reload_agents().expect("reload");
    clock.set(T0 + 90_000);
    let v = until(&api, "tick", "the skip", |v| v["state"]["skipped"] == 1).await;
    assert_eq!(v["state"]["fires"], 6);
    let skipped = entries(&env, calls::SCHEDULE_SKIPPED);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].outcome.contains("not in service"), "{}", skipped[0].outcome);
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_fires_are_skipped_and_fires_missed_while_down_follow_catch_up() {
    let schedules = r#"[[schedules]]
name = "slow"
agent = "product"
kind = "probe"
body = { ops = [{ op = "spin", ms = 1500 }] }
every = "10s"

[[schedules]]
name = "nightly"
agent = "product"
kind = "probe"
body = '{"ops": [{"op": "log", "message": "nightly"}]}'
every = "10s"
catch_up = "once"
"#;
    let env = Env::with_config(&[("product", "probe")], &config(schedules));
    let clock = Clock::manual(T0);
    let (server, api) = serve(&env, &clock).await;
    view(&api, "slow").await;

    clock.set(T0 + 10_000);
    let running = until(&api, "slow", "the slow run", |v| v["running"]["invocation"].is_u64()).await;
    let inv = running["running"]["invocation"].as_u64().expect("invocation");
    until(&api, "nightly", "fire 1", fired(1)).await;

    // The next fire comes while the first still spins: skipped, not piled up.
    clock.set(T0 + 20_000);
    let v = until(&api, "slow", "the skip", |v| v["state"]["skipped"] == 1).await;
    assert_eq!(v["state"]["fires"], 1, "{v}");
    let skipped = entries(&env, calls::SCHEDULE_SKIPPED);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].outcome.contains(&format!("(invocation {inv}) is still running")), "{}", skipped[0].outcome);
    assert_eq!(skipped[0].decision, Decision::Stopped);
    until(&api, "nightly", "fire 2", fired(2)).await;
    let v = until(&api, "slow", "the slow run's end", fired(1)).await;
    assert_eq!(v["state"]["last_invocation"], inv);
    assert!(v["state"]["last_outcome"].as_str().is_some_and(|o| o.starts_with("ok")), "{v}");
    stop(server).await;
    // As a crash during a run leaves it: the last outcome saved as running.
    let store = env.host.store().as_ref();
    let mut state = schedule::load_state(store, "slow").expect("state").expect("saved");
    state.last_outcome = Some("running".into());
    schedule::save_state(store, "slow", &state).expect("saved");

    // Down from 20 s to 75 s: five fires of each missed (30 … 70 s).
    let env = env.restart();
    let clock = Clock::manual(T0 + 75_000);
    let (server, api) = serve(&env, &clock).await;
    let v = until(&api, "slow", "the missed fires' skip", |v| v["state"]["skipped"] == 6).await;
    assert_eq!(v["state"]["fires"], 1, "catch_up = \"skip\": nothing ran: {v}");
    assert_eq!(v["next_fire_ms"], T0 + 80_000, "counted from the last missed fire: {v}");
    assert!(
        v["state"]["last_outcome"].as_str().is_some_and(|o| o.contains("the host stopped while it ran")),
        "a run under way at the crash is not shown as running: {v}"
    );
    let v = until(&api, "nightly", "the catch-up", fired(3)).await;
    assert_eq!(v["next_fire_ms"], T0 + 80_000, "{v}");
    let fires = entries(&env, calls::SCHEDULE_FIRE);
    let caught = fires.last().expect("a fire");
    let args: Value = serde_json::from_str(&caught.args).expect("args");
    assert_eq!((args["schedule"].as_str(), args["missed"].as_u64()), (Some("nightly"), Some(5)), "{args}");
    assert!(caught.outcome.contains("catch_up = \"once\""), "{}", caught.outcome);
    let skipped = entries(&env, calls::SCHEDULE_SKIPPED);
    assert!(skipped.last().expect("a skip").outcome.contains("while the host was down"), "{skipped:?}");
    assert_eq!(fires.len(), 4, "1 slow + 3 nightly: {fires:?}");
    stop(server).await;
}

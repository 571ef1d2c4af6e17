//! The living host: agents replaced and refused, and config reloaded,
//! while it runs (`Host::reload_agents`, `Host::reload_config`), on real
//! compiled agents.

use crate::common::{Env, wasm};
use concord::audit::{AuditFilter, Decision, calls};
use concord::{AgentChange, ConfigReload};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Writes `bytes` as if the copy had finished a while ago: settled.
fn drop_in(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write");
    let f = std::fs::File::options().write(true).open(path).expect("open");
    f.set_modified(SystemTime::now() - Duration::from_secs(5)).expect("backdate");
}

/// The same component with a custom section appended: valid, with
/// another sha256.
fn another_build(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let name = b"concord-test";
    out.extend([0x00, (1 + name.len() + 2) as u8, name.len() as u8]);
    out.extend(name);
    out.extend(b"v2");
    out
}

fn digest_of(env: &Env, name: &str) -> String {
    env.host.agents().into_iter().find(|a| a.name == name).expect("in service").digest
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_are_refused_and_a_good_one_replaces_the_agent_between_invocations() {
    let env = Env::new(&[("product", "probe")]);
    let file = env.dir.path().join("agents/product.wasm");
    let good = std::fs::read(wasm("probe")).expect("probe");
    let first = digest_of(&env, "product");
    let get = json!([{ "op": "get", "entity": "customer/acme" }]);

    let wrong_world = std::fs::read(wasm("wrong_world")).expect("wrong world");
    for (what, bytes) in [
        ("garbage", b"not wasm at all".to_vec()),
        ("half", good[..good.len() / 2].to_vec()),
        ("another world", wrong_world),
    ] {
        drop_in(&file, &bytes);
        let r = env.host.reload_agents().expect("reload");
        assert!(matches!(&r.changes[..], [AgentChange::Refused(_)]), "{what}: {r:?}");
        assert_eq!(digest_of(&env, "product"), first, "{what}: the old version keeps serving");
        env.probe("product", get.clone()).await;
        assert_eq!(env.host.refused_agents().len(), 1, "{what}: listed as refused");
    }
    let refused = env.audit(AuditFilter { call: Some(calls::AGENT_REFUSED.into()), ..Default::default() });
    assert_eq!(refused.len(), 3, "each refusal is audited");
    assert!(refused.iter().all(|e| e.agent == "host" && e.decision == Decision::Invalid));

    let v2 = another_build(&good);
    drop_in(&file, &v2);
    let r = env.host.reload_agents().expect("reload");
    let [AgentChange::Replaced { old, new }] = &r.changes[..] else { panic!("replaced: {r:?}") };
    assert_eq!(old.digest, first);
    assert_ne!(new.digest, first);
    assert!(env.host.refused_agents().is_empty(), "a file that loads is no longer refused");
    let inv = env.send("product", "probe", "", json!({ "ops": get })).await;
    let start = env.host.store().audit_entry(inv.id).expect("read").expect("start entry");
    assert_eq!(start.digest, new.digest, "a new invocation runs on the new version");
    let swap = env.audit(AuditFilter { call: Some(calls::AGENT_REPLACED.into()), ..Default::default() });
    let args: serde_json::Value = serde_json::from_str(&swap[0].args).expect("args");
    assert_eq!((args["old"].as_str(), args["new"].as_str()), (Some(first.as_str()), Some(new.digest.as_str())));
    assert!(env.host.reload_agents().expect("reload").changes.is_empty(), "nothing changed since");

    std::fs::remove_file(&file).expect("remove");
    let r = env.host.reload_agents().expect("reload");
    assert!(matches!(&r.changes[..], [AgentChange::Removed(_)]), "{r:?}");
    let e = env.host.invoke("product", crate::common::message("probe", "", json!({ "ops": [] }))).await.unwrap_err();
    assert!(e.to_string().contains("no agent named `product`"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_moved_by_a_reload_holds_from_the_next_commit_and_a_broken_config_is_refused() {
    let env = Env::new(&[("product", "probe")]);
    let path = env.dir.path().join("concord.toml");
    let commit = json!([{ "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "absent", "set": { "deal_stage": "trial" } }] }]);
    let r = env.probe("product", commit.clone()).await;
    assert_eq!(r[0]["error"], "forbidden", "sales owns deal_stage: {r:?}");

    let text = std::fs::read_to_string(&path).expect("config");
    let moved = text.replace(
        "deal_stage         = { type = \"text\",    owner = \"sales\" }",
        "deal_stage         = { type = \"text\",    owner = \"product\" }",
    );
    assert_ne!(moved, text);
    std::fs::write(&path, &moved).expect("write");
    let ConfigReload::Applied { from, to, changes } = env.host.reload_config().expect("reload") else {
        panic!("applied")
    };
    assert_ne!(from, to);
    assert!(changes.iter().any(|c| c.contains("customer.deal_stage writers changed")), "{changes:?}");
    let r = env.probe("product", commit).await;
    assert!(r[0]["error"].is_null(), "product owns it now: {r:?}");
    let acme = env.get("customer/acme").expect("committed");
    assert_eq!(crate::common::text(&acme, "deal_stage").as_deref(), Some("trial"));
    let audited = env.audit(AuditFilter { call: Some(calls::CONFIG_RELOADED.into()), ..Default::default() });
    assert_eq!(audited.len(), 1);
    assert!(audited[0].outcome.contains("deal_stage"), "{}", audited[0].outcome);

    std::fs::write(&path, format!("{moved}\n[limits\n")).expect("write");
    let line = moved.lines().count() + 2;
    let ConfigReload::Refused(why) = env.host.reload_config().expect("reload") else { panic!("refused") };
    assert!(why.contains(&format!("concord.toml:{line}")), "names the file and line {line}: {why}");
    assert_eq!(env.host.config().digest, to, "the old config stays");
    let refused = env.audit(AuditFilter { call: Some(calls::CONFIG_REFUSED.into()), ..Default::default() });
    assert_eq!(refused.len(), 1);

    std::fs::write(&path, moved.replace("path = \"data/concord.redb\"", "path = \"data/elsewhere.redb\""))
        .expect("write");
    let ConfigReload::Refused(why) = env.host.reload_config().expect("reload") else { panic!("refused") };
    assert!(why.contains("kb.path") && why.contains("restart"), "{why}");
}

/// Sixteen clients invoke an agent over HTTP without pause while a new
/// build of it is renamed into the watched folder of a real server. No
/// invocation fails, each one's audit entries carry a single digest, both
/// versions served, and the audit shows the swap between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_replaced_under_load_fails_nothing_and_each_invocation_runs_on_one_version() {
    use crate::http::Served;
    use hyper::StatusCode;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let config =
        crate::common::config_text(crate::common::FAST_LIMITS).replace("[agents]\n", "[agents]\nsettle_ms = 50\n");
    let s = Served::on(Env::with_config(&[("product", "probe")], &config)).await;
    let first = digest_of(&s.env, "product");
    // Several host calls per invocation, so that a swap in the middle of
    // one would show as two digests in its entries.
    let body = json!({ "kind": "probe", "body": { "ops": [
        { "op": "get", "entity": "customer/acme" },
        { "op": "spin", "ms": 2 },
        { "op": "get", "entity": "customer/acme" },
        { "op": "log", "message": "done" },
    ] } });
    let swapped = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (api, body, swapped) = (s.api.clone(), body.clone(), swapped.clone());
        clients.push(tokio::spawn(async move {
            let (mut ids, mut after_swap) = (Vec::new(), 0);
            // Until a few invocations each have started after the swap
            // (bounded: the swap must come within the test's time).
            while after_swap < 5 && ids.len() < 2_000 {
                let was = swapped.load(Ordering::SeqCst);
                let a = api.post("/v1/invoke/product", body.clone()).await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.text);
                assert_eq!(a.body["outcome"], "ok", "{}", a.text);
                ids.push((a.body["invocation"].as_u64().expect("an id"), was));
                after_swap += u64::from(was);
            }
            ids
        }));
    }
    // Let the load run, then copy the new build in the way install tools
    // do: written beside, renamed over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dir = s.env.dir.path().join("agents");
    let v2 = another_build(&std::fs::read(wasm("probe")).expect("probe"));
    std::fs::write(dir.join(".product.wasm.tmp"), &v2).expect("write");
    std::fs::rename(dir.join(".product.wasm.tmp"), dir.join("product.wasm")).expect("rename");
    let started = std::time::Instant::now();
    while digest_of(&s.env, "product") == first {
        assert!(started.elapsed() < Duration::from_secs(60), "the watcher did not pick the new build up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    swapped.store(true, Ordering::SeqCst);
    let second = digest_of(&s.env, "product");

    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.expect("a client"));
    }
    let mut digests: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for e in s.env.audit(AuditFilter { agent: Some("product".into()), ..Default::default() }) {
        digests.entry(e.invocation).or_default().insert(e.digest);
    }
    let mut served = BTreeSet::new();
    for (id, _) in &ids {
        let d = digests.get(id).unwrap_or_else(|| panic!("invocation {id} is audited"));
        assert_eq!(d.len(), 1, "invocation {id} ran on one version: {d:?}");
        served.extend(d.iter().cloned());
    }
    assert_eq!(served, BTreeSet::from([first.clone(), second.clone()]), "both versions served");
    let swap = s.env.audit(AuditFilter { call: Some(calls::AGENT_REPLACED.into()), ..Default::default() });
    assert_eq!(swap.len(), 1, "one swap: {swap:?}");
    let args: serde_json::Value = serde_json::from_str(&swap[0].args).expect("args");
    assert_eq!((args["old"].as_str(), args["new"].as_str()), (Some(first.as_str()), Some(second.as_str())));
    // Invocations sent once the new version was seen in service ran on it.
    let after: Vec<u64> = ids.iter().filter(|(_, was)| *was).map(|(id, _)| *id).collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|id| digests[id].contains(&second)), "after the swap, only the new version");
    assert!(s.env.host.refused_agents().is_empty(), "the rename brought a whole file");
    s.stop().await;
}

/// What the docs promise of a reload that removes or retypes a field:
/// values already stored stay as they are (readable by every agent, never
/// rewritten, still in the replay), while writes follow the new schema.
#[tokio::test(flavor = "multi_thread")]
async fn values_of_a_removed_or_retyped_field_stay_and_writes_follow_the_new_schema() {
    let env = Env::new(&[("support", "probe")]);
    let path = env.dir.path().join("concord.toml");
    let create = json!([{ "op": "commit", "writes": [{ "entity": "customer/acme", "expect": "absent",
        "set": { "open_tickets": 3, "last_interaction": "call on Monday" } }] }]);
    assert!(env.probe("support", create).await[0]["error"].is_null());

    let text = std::fs::read_to_string(&path).expect("config");
    let next = text
        .replace(
            "open_tickets       = { type = \"integer\", owner = \"support\" }",
            "open_tickets = { type = \"text\", owner = \"support\" }",
        )
        .replace("last_interaction   = { type = \"text\",    owner = \"support\" }\n", "");
    assert_ne!(next, text);
    std::fs::write(&path, &next).expect("write");
    let ConfigReload::Applied { changes, .. } = env.host.reload_config().expect("reload") else { panic!("applied") };
    assert!(changes.iter().any(|c| c.contains("customer.last_interaction") && c.contains("removed")), "{changes:?}");
    assert!(changes.iter().any(|c| c.contains("customer.open_tickets") && c.contains("integer")), "{changes:?}");

    // Stored values stay, and agents still read them.
    let acme = env.get("customer/acme").expect("there");
    assert_eq!(acme.fields.get("open_tickets"), Some(&concord::kb::Value::Integer(3)));
    assert_eq!(crate::common::text(&acme, "last_interaction").as_deref(), Some("call on Monday"));
    let read = env.probe("support", json!([{ "op": "get", "entity": "customer/acme" }])).await;
    assert_eq!(read[0]["fields"]["open_tickets"], "3", "{read:?}");
    assert_eq!(read[0]["fields"]["last_interaction"], "call on Monday", "{read:?}");

    // Writes follow the new schema: the old type and the removed field are
    // refused, naming the field; the new type goes in.
    let write = |set: serde_json::Value| {
        json!([{ "op": "get", "entity": "customer/acme" }, { "op": "commit", "writes": [
        { "entity": "customer/acme", "expect": "read", "set": set }] }])
    };
    let r = env.probe("support", write(json!({ "open_tickets": 4 }))).await;
    assert_eq!(r[1]["error"], "invalid", "{r:?}");
    assert!(r[1]["text"].as_str().is_some_and(|t| t.contains("open_tickets")), "{r:?}");
    let r = env.probe("support", write(json!({ "last_interaction": "again" }))).await;
    assert_eq!(r[1]["error"], "invalid", "{r:?}");
    assert!(r[1]["text"].as_str().is_some_and(|t| t.contains("last_interaction")), "{r:?}");
    let r = env.probe("support", write(json!({ "open_tickets": "four" }))).await;
    assert!(r[1]["error"].is_null(), "the new type is accepted: {r:?}");

    // The removed field's value was not rewritten by that commit, and the
    // projection still equals the replay of the log.
    let acme = env.get("customer/acme").expect("there");
    assert_eq!(crate::common::text(&acme, "open_tickets").as_deref(), Some("four"));
    assert_eq!(crate::common::text(&acme, "last_interaction").as_deref(), Some("call on Monday"));
    let replay = env.host.store().replay().expect("replay");
    assert!(replay.differences.is_empty(), "{:?}", replay.differences);
    let r = env
        .probe(
            "support",
            json!([{ "op": "get", "entity": "customer/acme" }, { "op": "commit", "writes": [
            { "entity": "customer/acme", "expect": "read", "unset": ["last_interaction"] }] }]),
        )
        .await;
    // Nobody owns a removed field, so nobody may unset it either: to clear
    // it, declare it again with an owner, and unset it.
    assert_eq!(r[1]["error"], "invalid", "{r:?}");
    assert!(r[1]["text"].as_str().is_some_and(|t| t.contains("unknown field `last_interaction`")), "{r:?}");
}

/// A schedule naming an agent that is not loaded stops the start, naming
/// the schedule, its line and the file it looked for; in a reload it is
/// refused, and the schedules in force stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_of_an_unknown_agent_is_refused_at_start_and_at_reload() {
    let stanza = |agent: &str| {
        format!("\n[[schedules]]\nname = \"report\"\nagent = \"{agent}\"\nkind = \"probe\"\nevery = \"1h\"\n")
    };
    let base = crate::common::config_text(crate::common::FAST_LIMITS);
    let text = format!("{base}{}", stanza("reporter"));
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    std::fs::copy(wasm("probe"), dir.path().join("agents/product.wasm")).expect("copy");
    std::fs::write(dir.path().join("concord.toml"), &text).expect("config");
    let e = concord::Host::start(Env::config_of(dir.path())).unwrap_err().to_string();
    let line = base.lines().count() + 2;
    assert!(e.contains(&format!("concord.toml:{line}")), "names the line {line}: {e}");
    assert!(e.contains("schedule `report`") && e.contains("reporter.wasm") && e.contains("loaded: product"), "{e}");

    let env = Env::with_config(&[("product", "probe")], &format!("{base}{}", stanza("product")));
    std::fs::write(env.dir.path().join("concord.toml"), &text).expect("config");
    let ConfigReload::Refused(why) = env.host.reload_config().expect("reload") else { panic!("refused") };
    assert!(why.contains("schedule `report`") && why.contains("reporter"), "{why}");
    assert_eq!(env.host.config().schedules[0].agent, "product", "the schedules in force stay");
}

/// The README's `concord.toml` reference is a config that loads, so that
/// what it shows is what the host takes.
#[test]
fn the_readme_config_reference_loads() {
    let readme = std::fs::read_to_string(crate::common::root().join("README.md")).expect("README");
    let start = readme.find("## `concord.toml` reference").expect("the reference section");
    let section = &readme[start..start + readme[start..].find("\n## Scripts").expect("its end")];
    let blocks: Vec<&str> = section.split("```toml\n").skip(1).map(|b| &b[..b.find("```").expect("closed")]).collect();
    assert!(blocks.len() >= 2, "{blocks:?}");
    // The second block adds to `[limits]`, which TOML allows only once:
    // its lines go under the first block's header.
    let (first, second) = (blocks[0], blocks[1..].join("\n"));
    let (before, after) = second.split_once("[limits]").expect("the second block adds limits");
    let (more, rest) = after.split_once("\n\n").expect("then other tables");
    let (more, rest) = (more.split_once('\n').map_or("", |(_, lines)| lines), format!("{before}{rest}"));
    let text = first.replacen("[limits]", &format!("[limits]\n{more}\n"), 1) + "\n" + &rest;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("concord.toml");
    std::fs::write(&path, &text).expect("write");
    let config = concord::Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.schedules.len(), 1);
    assert!(config.agents_watch);
    assert_eq!(config.agents_settle, Duration::from_millis(500));
}

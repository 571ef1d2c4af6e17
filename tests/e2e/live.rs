//! The living host: agents replaced and refused, and config reloaded,
//! while it runs (`Host::reload_agents`, `Host::reload_config`), on real
//! compiled agents.

use crate::common::{Env, wasm};
use concord::audit::{AuditFilter, Decision, calls};
use concord::host::{AgentChange, ConfigReload};
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

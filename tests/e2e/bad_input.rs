//! Bad input gets a clear error naming the file and line or field, and
//! nothing is written on the way to that error.

use crate::common::{FAST_LIMITS, config_text, wasm};
use concord::LoadError;
use concord::{Config, Host, StartError};
use std::path::Path;

fn layout(agents: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents dir");
    for (name, src) in agents {
        std::fs::copy(src, dir.path().join("agents").join(name)).expect("copy");
    }
    std::fs::write(dir.path().join("concord.toml"), config_text(FAST_LIMITS)).expect("config");
    dir
}

#[test]
fn a_malformed_config_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("concord.toml");
    let text = config_text(FAST_LIMITS)
        .replace("type = \"integer\", owner = \"sales\"", "type = \"integer\", owner = \"sales\", colour = 3");
    std::fs::write(&path, &text).expect("write");
    let e = Config::load(&path).unwrap_err();
    let line = text.lines().position(|l| l.contains("colour")).expect("line") + 1;
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.to_string().starts_with(&format!("{}:{line}:", path.display())), "{e}");
    assert!(e.message.contains("colour"), "{e}");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[test]
fn bad_agent_files_are_all_named_and_the_host_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"this is not wasm").expect("write");
    let core_module = dir.path().join("core");
    // The smallest core module: magic and version, no sections.
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").expect("write");
    let wrong_world = wasm("wrong_world");
    let env = layout(&[
        ("sales.wasm", &wasm("sales")),
        ("garbage.wasm", &garbage),
        ("core.wasm", &core_module),
        ("command.wasm", &wrong_world),
        ("api.wasm", &wasm("sales")),
    ]);
    let config = Config::load(&env.path().join("concord.toml")).expect("config");
    let e = Host::start(config).unwrap_err();
    let StartError::Agents(LoadError::BadFiles(bad)) = &e else { panic!("expected bad agent files, got {e}") };
    let names: Vec<String> =
        bad.iter().map(|b| b.path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()).collect();
    assert_eq!(names, ["api.wasm", "command.wasm", "core.wasm", "garbage.wasm"], "{e}");
    assert!(bad[0].reason.contains("a name the audit uses"), "{}", bad[0].reason);
    assert!(bad[1].reason.contains("world"), "{}", bad[1].reason);
    assert!(bad[2].reason.contains("core wasm module, not a component"), "{}", bad[2].reason);
    assert!(bad[3].reason.contains("not a valid wasm component"), "{}", bad[3].reason);
    let text = e.to_string();
    assert!(text.contains("4 agent file(s) cannot be loaded"), "{text}");
    assert!(!env.path().join("data/concord.redb").exists(), "no knowledge base was created");
}

#[test]
fn an_empty_agents_folder_is_refused() {
    let env = layout(&[]);
    let config = Config::load(&env.path().join("concord.toml")).expect("config");
    let e = Host::start(config).unwrap_err();
    assert!(e.to_string().contains("no agents in"), "{e}");
    assert!(e.to_string().contains("just build-agents"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_are_refused_before_any_invocation() {
    let env = crate::common::Env::new(&[("sales", "sales")]);
    let e = env.host.invoke("nobody", crate::common::message("x", "", serde_json::json!({}))).await.unwrap_err();
    assert!(e.to_string().contains("no agent named `nobody`") && e.to_string().contains("sales"), "{e}");
    let e =
        env.host.invoke("sales", crate::common::message("x", "vendor/acme", serde_json::json!({}))).await.unwrap_err();
    assert!(e.to_string().contains("unknown entity kind `vendor`"), "{e}");
    let calls: Vec<String> = env.all_audit().into_iter().map(|e| e.call).collect();
    assert_eq!(calls, [concord::audit::calls::HOST_START], "no invocation ran");
}

/// Property test: arbitrary bytes (raw, or behind a wasm header) in the
/// agents folder are refused with a reason, never a panic, and nothing is
/// written.
#[test]
fn random_wasm_files_are_refused_cleanly() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..Default::default()
    });
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| [b"\0asm\x0d\0\x01\0".to_vec(), b].concat()),
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| [b"\0asm\x01\0\0\0".to_vec(), b].concat()),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    runner
        .run(&bytes, |b| {
            let agents = dir.path().join("agents");
            let _ = std::fs::remove_dir_all(&agents);
            std::fs::create_dir_all(&agents).expect("dir");
            std::fs::write(agents.join("fuzz.wasm"), &b).expect("write");
            match concord::Runtime::load(&agents, concord::Limits::default(), None) {
                Err(LoadError::BadFiles(bad)) => {
                    prop_assert_eq!(bad.len(), 1);
                    prop_assert!(!bad[0].reason.is_empty());
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
                Ok(_) => prop_assert!(false, "random bytes loaded as an agent"),
            }
            Ok(())
        })
        .expect("every random file is refused cleanly");
}

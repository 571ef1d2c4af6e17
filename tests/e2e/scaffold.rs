//! `concord new` and `concord build`, as a new user runs them: scaffold an
//! agent in each language in a project of its own, run the agent's own
//! test, build it into the agents folder, and run it on a host. A second
//! `concord new` of the same name changes nothing.

use crate::common::{FAST_LIMITS, concord, config_text, root, stderr, stdout};
use concord::{Config, Host, Message, Outcome};
use std::path::Path;
use std::process::Command;

/// A project folder with the example config and an empty agents folder.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(root().join("target")).expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    std::fs::write(dir.path().join("concord.toml"), config_text(FAST_LIMITS)).expect("config");
    dir
}

/// `concord` with the project's config, from the checkout (where a user
/// runs it, and where `concord build` finds the SDKs).
fn run(project: &Path, args: &[&str]) -> std::process::Output {
    let config = project.join("concord.toml");
    let mut all = vec!["--config", config.to_str().expect("a UTF-8 path")];
    all.extend(args);
    concord(&root(), &all)
}

/// Two notes through a host on the project: the entity is created, then
/// counted.
async fn two_notes(project: &Path, name: &str, kind: &str) {
    let host = Host::start(Config::load(&project.join("concord.toml")).expect("config")).expect("host starts");
    for text in ["hello", "again"] {
        let message = Message {
            kind: "note".into(),
            entity: Some(format!("{kind}/first").parse().expect("ref")),
            body: serde_json::json!({ "text": text }).to_string(),
        };
        let inv = host.invoke(name, message).await.expect("invocation");
        assert!(matches!(inv.outcome, Outcome::Ok(_)), "{name}: {}", inv.outcome);
    }
    let e = host.store().get(&format!("{kind}/first").parse().expect("ref")).expect("read").expect("created");
    assert_eq!((e.version, e.fields.get("count")), (2, Some(&concord::kb::Value::Integer(2))), "{name}");
    assert_eq!(e.fields.get("note"), Some(&concord::kb::Value::Text("again".into())), "{name}");
}

fn ok(what: &str, out: &std::process::Output) {
    assert!(out.status.success(), "{what}: {}\n{}", stdout(out), stderr(out));
}

/// Scaffolds, tests, builds and runs one agent of `lang` in `project`.
async fn new_test_build_run(project: &Path, name: &str, lang: &str, test: &mut Command) {
    let out = run(project, &["new", name, "--lang", lang]);
    ok("concord new", &out);
    assert!(stdout(&out).contains(&format!("concord build {name}")), "says what is next: {}", stdout(&out));
    let kind = name.replace('-', "_");
    let config = Config::load(&project.join("concord.toml")).expect("the stanza keeps the config valid");
    assert!(config.schema.kinds.contains_key(&kind), "{name}: its kind is declared");

    ok(&format!("{name}'s own test"), &test.output().expect("the test runs"));

    let out = run(project, &["build", name]);
    ok("concord build", &out);
    assert!(project.join(format!("agents/{name}.wasm")).is_file(), "{}", stdout(&out));
    let out = run(project, &["build", name]);
    ok("concord build, again", &out);
    assert!(stdout(&out).contains("up to date"), "nothing changed, nothing rebuilt: {}", stdout(&out));
    two_notes(project, name, &kind).await;

    // Again: refused, naming what is there, and nothing changed.
    let before = std::fs::read_to_string(project.join("concord.toml")).expect("config");
    let out = run(project, &["new", name, "--lang", lang]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(project.join("concord.toml")).expect("config"), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_typescript_agent_tests_builds_and_runs() {
    let p = project();
    let dir = p.path().join("agents/notes-ts");
    let mut test = Command::new("bash");
    test.arg(root().join("scripts/test_js_agent.sh")).arg(&dir);
    new_test_build_run(p.path(), "notes-ts", "typescript", &mut test).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_python_agent_tests_builds_and_runs() {
    let p = project();
    let dir = p.path().join("agents/notes-py");
    let mut test = Command::new("bash");
    test.arg(root().join("scripts/test_python_agent.sh")).arg(&dir);
    new_test_build_run(p.path(), "notes-py", "python", &mut test).await;
}

/// A Rust agent is a crate of a workspace: `concord new` adds it to the
/// members (without that, cargo says only "did not match any packages").
/// The project shares the checkout's guest build folder, so that only the
/// agent itself is compiled for wasm.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_agent_joins_the_workspace_tests_builds_and_runs() {
    let p = project();
    let sdk = root().join("agents/sdk");
    std::fs::write(
        p.path().join("Cargo.toml"),
        format!(
            "[workspace]\nresolver = \"3\"\nmembers = [\n]\n\n[workspace.package]\nedition = \"2024\"\nversion = \"0.1.0\"\n\
             license = \"Apache-2.0\"\npublish = false\n\n[workspace.dependencies]\nconcord-agent = {{ path = {:?} }}\n\
             serde_json = \"1\"\n",
            sdk.display().to_string()
        ),
    )
    .expect("Cargo.toml");
    std::fs::copy(root().join("Cargo.lock"), p.path().join("Cargo.lock")).expect("the checkout's lock");
    // The guests' build folder is the checkout's (its dependencies are built
    // there already); `cargo test` holds the lock on the rest of target/.
    std::fs::create_dir(p.path().join("target")).expect("target");
    std::os::unix::fs::symlink(root().join("target/wasm"), p.path().join("target/wasm")).expect("target/wasm");

    // Before it joins, `concord build` says what to add.
    std::fs::create_dir_all(p.path().join("agents/stray/src")).expect("stray");
    std::fs::write(
        p.path().join("agents/stray/Cargo.toml"),
        "[package]\nname = \"stray\"\n[lib]\ncrate-type = [\"cdylib\"]\n",
    )
    .expect("stray crate");
    let out = run(p.path(), &["build", "stray"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("add \"agents/stray\" to `members`"), "{}", stderr(&out));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut test = Command::new(cargo);
    let native = root().join("target/scaffold-native");
    test.current_dir(p.path()).args(["test", "--quiet", "-p", "notes-rs", "--target-dir"]).arg(native);
    new_test_build_run(p.path(), "notes-rs", "rust", &mut test).await;
    let members = std::fs::read_to_string(p.path().join("Cargo.toml")).expect("Cargo.toml");
    assert!(members.contains("\"agents/notes-rs\","), "{members}");
}

/// A refusal leaves nothing behind: a name whose kind the config cannot
/// take is refused before any file is written, and a build file that does
/// not parse is named, not taken for a folder without sources.
#[test]
fn refusals_name_the_problem_and_write_nothing() {
    let p = project();
    let before = std::fs::read_to_string(p.path().join("concord.toml")).expect("config");
    let out = run(p.path(), &["new", "1notes", "--lang", "python"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("the stanza for `1notes` does not fit"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing was written"), "{}", stderr(&out));
    assert!(!p.path().join("agents/1notes").exists(), "no half-made agent");
    assert_eq!(std::fs::read_to_string(p.path().join("concord.toml")).expect("config"), before);

    std::fs::create_dir(p.path().join("agents/broken")).expect("broken");
    std::fs::write(p.path().join("agents/broken/Cargo.toml"), "[package\nname = ").expect("a bad Cargo.toml");
    let out = run(p.path(), &["build", "broken"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("broken/Cargo.toml is not valid TOML"), "{}", stderr(&out));
}

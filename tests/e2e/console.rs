//! The web console in headless Chromium against a real `concord serve`
//! holding the Acme demo, with tokens. The browser side is
//! `tests/console/console.test.mjs` (playwright-core, Node's test runner);
//! this side starts the server, hands it the tokens, and then checks what
//! the console's actions left behind: a pin made in the browser shows in
//! `concord get` and in the audit, under the token's name.
//!
//! Needs Node, `tests/console/node_modules` (`npm ci` there, which `just
//! test` runs) and Debian's `chromium` (`.ci/run` installs it). Without
//! them the test fails and says what to install: it never passes unrun.

use crate::common::{concord, demo_dir, root, stderr, stdout};
use crate::http::Process;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser: `$CHROMIUM`, or Debian's `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
    });
    found.unwrap_or_else(|| {
        panic!(
            "the console tests need Chromium: install Debian's (`apt-get install chromium`; `just console-setup` does it as root) or set CHROMIUM to a Chromium binary"
        )
    })
}

fn token(dir: &Path, name: &str, role: &str) -> String {
    let out = concord(dir, &["token", "add", name, "--role", role]);
    assert!(out.status.success(), "token add {name}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let tests = root().join("tests/console");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "tests/console/node_modules is missing: run `just console-setup` (npm ci in tests/console)"
    );
    let browser = chromium();
    let dir = demo_dir();
    let config = dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}\n[server]\ntokens = \"tokens.toml\"\n")).expect("config");
    let played = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert!(played.status.success(), "the Acme demo: {}", stderr(&played));
    let read = token(dir.path(), "reader", "read");
    let invoke = token(dir.path(), "trigger", "invoke");
    let operator = token(dir.path(), "alice", "operator");
    let p = Process::start(dir.path());

    // Screenshots go where CONCORD_CONSOLE_SHOTS says (`just console-shots`
    // points it at docs/console), else beside the test's server.
    let shots = std::env::var_os("CONCORD_CONSOLE_SHOTS")
        .map(|s| root().join(PathBuf::from(s)))
        .unwrap_or_else(|| dir.path().join("shots"));
    let node = tokio::task::spawn_blocking({
        let (base, read, invoke, operator) = (p.api.base.clone(), read.clone(), invoke, operator);
        move || {
            Command::new("node")
                .current_dir(&tests)
                .args(["--test", "--test-reporter=spec", "--test-concurrency=1", "console.test.mjs"])
                .env("CONCORD_URL", base)
                .env("CONCORD_READ_TOKEN", read)
                .env("CONCORD_INVOKE_TOKEN", invoke)
                .env("CONCORD_OPERATOR_TOKEN", operator)
                .env("CHROMIUM", browser)
                .env("CONCORD_SHOTS", shots)
                .output()
                .expect("node runs (the console tests need Node 20 or later on the PATH)")
        }
    })
    .await
    .expect("node");
    assert!(
        node.status.success(),
        "the console tests failed:\n{}\n{}\nthe server's log:\n{}",
        stdout(&node),
        stderr(&node),
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
    );

    // The pin made in the browser: in `concord get` (through the running
    // host, with a read token)...
    let get = Command::new(env!("CARGO_BIN_EXE_concord"))
        .current_dir(dir.path())
        .args(["get", "customer/acme"])
        .env_remove("CONCORD_CONFIG")
        .env("CONCORD_TOKEN", &read)
        .env("CONCORD_LOG", "warn")
        .output()
        .expect("concord get");
    assert!(get.status.success(), "concord get: {}", stderr(&get));
    let shown = stdout(&get);
    let status = shown.lines().find(|l| l.trim_start().starts_with("status ")).unwrap_or_default();
    assert!(status.ends_with("\"active\""), "{shown}");
    assert!(shown.contains("pinned status by human:alice") && shown.contains("CEO call: keep Acme active"), "{shown}");
    // ...and in the audit, under the token's name.
    let audit = p.api.with_token(&read).get("/v1/audit?call=human.pin").await;
    let entries = audit.body["entries"].as_array().expect("entries");
    let pin = entries
        .iter()
        .find(|e| e["args"].as_str().unwrap_or_default().contains("CEO call"))
        .unwrap_or_else(|| panic!("the console's pin is audited: {entries:?}"));
    assert_eq!(pin["agent"], "human:alice", "{pin}");
    assert_eq!(pin["fields"], serde_json::json!(["status"]), "{pin}");

    // What the console reads besides: the handoffs (Product asked Sales
    // twice; Sales declined, then applied), filtered as asked...
    let api = p.api.with_token(&read);
    let all = api.get("/v1/change-requests?entity=customer/acme").await.body;
    let requests = all["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 2, "{all}");
    assert_eq!((requests[0]["applied"].as_bool(), requests[1]["applied"].as_bool()), (Some(false), Some(true)));
    assert_eq!(requests[0]["from"], "product");
    let open = api.get("/v1/change-requests?open=true").await.body;
    assert_eq!(open["requests"].as_array().map(Vec::len), Some(0), "{open}");
    let paged = api.get("/v1/change-requests?limit=1").await.body;
    assert_eq!(paged["next"], requests[0]["id"], "{paged}");
    let elsewhere = api.get("/v1/change-requests?entity=customer/nobody").await.body;
    assert_eq!(elsewhere["requests"].as_array().map(Vec::len), Some(0));
    let bad = api.get("/v1/change-requests?entity=planet/mars").await;
    assert_eq!(bad.status.as_u16(), 422, "{}", bad.text);
    // ...who the token is, and the schema's owners.
    let me = api.get("/v1/whoami").await.body;
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str(), me["open"].as_bool()),
        (Some("reader"), Some("read"), Some(false))
    );
    let schema = api.get("/v1/schema").await.body;
    assert_eq!(schema["kinds"]["customer"]["fields"]["deal_stage"]["writers"], serde_json::json!(["sales"]));
    assert_eq!(schema["kinds"]["customer"]["fields"]["deal_stage"]["shared"], false);
}

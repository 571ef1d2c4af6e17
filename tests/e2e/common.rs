//! Shared helpers: build the guests once, lay out a host in a temp folder.

use concord::audit::{AuditEntry, AuditFilter};
use concord::kb::{Entity, EntityRef};
use concord::{Config, Host, Invocation, Message};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// Builds every Rust guest (examples and test agents) once, and returns
/// the folder with their `.wasm` files. The guests have their own target
/// dir, so this never waits on the lock `cargo test` holds.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut packages = Vec::new();
        for p in RUST_GUESTS {
            packages.extend(["-p", p]);
        }
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir", "target/wasm", "--quiet"])
            .args(packages)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the guest agents failed; is the wasm32-wasip2 target installed? (`just setup`)"
        );
        root.join("target/wasm/wasm32-wasip2/release")
    })
}

/// The guests in Rust, by package name.
const RUST_GUESTS: [&str; 5] = ["sales", "probe", "hostile", "wrong-world", "conformance"];

/// The guests in Python and TypeScript: (name, the folder of its sources).
const POLYGLOT_GUESTS: [(&str, &str); 4] = [
    ("support", "agents"),
    ("product", "agents"),
    ("conformance-py", "tests/agents"),
    ("conformance-ts", "tests/agents"),
];

/// Builds the Python and TypeScript guests once, with `concord build` as a
/// user would (it installs their toolchains on first use, and skips what
/// is up to date), into `target/agents/`, and compiles them into the tests'
/// shared cache, so that no test host compiles an 18 MB component.
pub fn polyglot_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let out = root.join("target/agents");
        let config = root.join("target/agents-build.toml");
        std::fs::create_dir_all(&out).expect("target/agents");
        std::fs::write(&config, config_text(FAST_LIMITS)).expect("the build's config");
        for folder in ["agents", "tests/agents"] {
            let names: Vec<&str> = POLYGLOT_GUESTS.iter().filter(|(_, f)| *f == folder).map(|(n, _)| *n).collect();
            let status = Command::new(env!("CARGO_BIN_EXE_concord"))
                .current_dir(&root)
                .arg("--config")
                .arg(&config)
                .arg("build")
                .args(&names)
                .arg("--src")
                .arg(root.join(folder))
                .arg("--out")
                .arg(&out)
                .env("CONCORD_LOG", "warn")
                .status()
                .expect("concord build runs");
            assert!(status.success(), "`concord build {}` failed: see its output above", names.join(" "));
        }
        out
    })
}

/// Where every test host keeps compiled components: one cache for all, so
/// each component is compiled once per `cargo test`, not once per test.
pub fn cache_dir() -> PathBuf {
    root().join("target/concord-cache")
}

/// The path of a built guest, such as `probe`, `wrong_world` or `support`.
pub fn wasm(name: &str) -> PathBuf {
    if POLYGLOT_GUESTS.iter().any(|(n, _)| *n == name) {
        return polyglot_dir().join(format!("{name}.wasm"));
    }
    wasm_dir().join(format!("{name}.wasm"))
}

/// The example config, with the `[limits]` table replaced and the tests'
/// shared cache of compiled components.
pub fn config_text(limits: &str) -> String {
    let text = std::fs::read_to_string(root().join("concord.toml")).expect("concord.toml is readable");
    let start = text.find("[limits]").expect("concord.toml has [limits]");
    let end = start + text[start..].find("\n# Customer records").expect("limits end");
    let text = format!("{}[limits]\n{limits}\n{}", &text[..start], &text[end..]);
    let agents = "[agents]\n";
    let at = text.find(agents).expect("concord.toml has [agents]") + agents.len();
    format!("{}cache_dir = {:?}\n{}", &text[..at], cache_dir().display().to_string(), &text[at..])
}

/// Test limits: small enough that runaway agents stop quickly.
pub const FAST_LIMITS: &str = "memory_mib = 16\nfuel = 300_000_000\ntimeout_ms = 5_000\n";

/// A host in its own temp folder.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub host: Arc<Host>,
}

impl Env {
    /// Agents as `(name, guest)`: `("product", "probe")` loads the probe
    /// guest under the name `product`.
    pub fn new(agents: &[(&str, &str)]) -> Env {
        Self::with_limits(agents, FAST_LIMITS)
    }

    pub fn with_limits(agents: &[(&str, &str)], limits: &str) -> Env {
        Self::with_config(agents, &config_text(limits))
    }

    /// With this config text (see [`config_text`]).
    pub fn with_config(agents: &[(&str, &str)], config: &str) -> Env {
        let dir = Self::layout(agents, config);
        let host = Arc::new(Host::start(Self::config_of(dir.path())).expect("host starts"));
        Env { dir, host }
    }

    /// With this config text, delivering actions to `sink`.
    pub fn with_sink(agents: &[(&str, &str)], config: &str, sink: Box<dyn concord::outbox::Sink>) -> Env {
        let dir = Self::layout(agents, config);
        let host = Arc::new(Host::start_with_sink(Self::config_of(dir.path()), sink).expect("host starts"));
        Env { dir, host }
    }

    fn layout(agents: &[(&str, &str)], config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("agents")).expect("agents dir");
        for (name, guest) in agents {
            std::fs::copy(wasm(guest), dir.path().join("agents").join(format!("{name}.wasm"))).expect("copy agent");
        }
        std::fs::write(dir.path().join("concord.toml"), config).expect("write config");
        dir
    }

    pub fn config_of(dir: &Path) -> Config {
        Config::load(&dir.join("concord.toml")).expect("config loads")
    }

    /// Stops the host and starts a new one on the same folder.
    pub fn restart(self) -> Env {
        let Env { dir, host } = self;
        drop(Arc::into_inner(host).expect("no other host handles"));
        let host = Arc::new(Host::start(Self::config_of(dir.path())).expect("host restarts"));
        Env { dir, host }
    }

    /// Stops the host (as a crash would, between two operations) and starts
    /// a new one on the same folder, delivering to `sink`.
    pub fn restart_with_sink(self, sink: Box<dyn concord::outbox::Sink>) -> Env {
        let Env { dir, host } = self;
        drop(Arc::into_inner(host).expect("no other host handles"));
        let host = Arc::new(Host::start_with_sink(Self::config_of(dir.path()), sink).expect("host restarts"));
        Env { dir, host }
    }

    /// Runs a trigger and everything it causes; returns every invocation.
    pub async fn dispatch(&self, agent: &str, kind: &str, entity: &str, body: serde_json::Value) -> Vec<Invocation> {
        self.host.dispatch(agent, message(kind, entity, body)).await.expect("dispatch")
    }

    /// The lines of the action sink file.
    pub fn delivered(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.dir.path().join("data/actions.jsonl")) {
            Ok(text) => text.lines().map(|l| serde_json::from_str(l).expect("sink line is JSON")).collect(),
            Err(_) => vec![],
        }
    }

    pub async fn send(&self, agent: &str, kind: &str, entity: &str, body: serde_json::Value) -> Invocation {
        self.host.invoke(agent, message(kind, entity, body)).await.expect("invocation starts")
    }

    /// Runs the probe (under `agent`) with these ops; returns its results.
    pub async fn probe(&self, agent: &str, ops: serde_json::Value) -> Vec<serde_json::Value> {
        let inv = self.send(agent, "probe", "", serde_json::json!({ "ops": ops })).await;
        match inv.outcome {
            concord::Outcome::Ok(report) => serde_json::from_str(&report).expect("probe reports JSON"),
            other => panic!("probe invocation did not succeed: {other}"),
        }
    }

    pub fn get(&self, entity: &str) -> Option<Entity> {
        self.host.store().get(&entity.parse::<EntityRef>().expect("kind/id")).expect("store reads")
    }

    pub fn audit(&self, filter: AuditFilter) -> Vec<AuditEntry> {
        self.host.store().audit(&filter).expect("audit reads")
    }

    pub fn all_audit(&self) -> Vec<AuditEntry> {
        self.audit(AuditFilter::default())
    }
}

pub fn message(kind: &str, entity: &str, body: serde_json::Value) -> Message {
    Message {
        kind: kind.into(),
        entity: if entity.is_empty() { None } else { Some(entity.parse().expect("kind/id")) },
        body: body.to_string(),
    }
}

/// Creates `customer/<id>` through the real sales agent.
pub async fn onboard(env: &Env, id: &str) {
    let inv = env.send("sales", "onboard", &format!("customer/{id}"), serde_json::json!({ "name": id })).await;
    assert!(inv.outcome.is_ok(), "onboarding {id}: {}", inv.outcome);
}

pub fn text(e: &Entity, field: &str) -> Option<String> {
    match e.fields.get(field) {
        Some(concord::kb::Value::Text(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Runs the `concord` binary in `dir`, as a user would (no config or key
/// from the environment).
pub fn concord(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONCORD_CONFIG")
        .env_remove("CONCORD_AUDIT_KEY")
        // What a user sees by default, whatever the developer's shell sets.
        .env_remove("RUST_BACKTRACE")
        .env("CONCORD_LOG", "warn")
        .output()
        .expect("concord runs")
}

/// A command's stdout, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temp folder laid out like the repo for the demo: the three example
/// agents, the example config (test limits) and the Acme script.
pub fn demo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("agents")).expect("agents");
    for a in ["sales", "support", "product"] {
        std::fs::copy(wasm(a), dir.path().join(format!("agents/{a}.wasm"))).expect("copy");
    }
    std::fs::write(dir.path().join("concord.toml"), config_text(FAST_LIMITS)).expect("config");
    std::fs::copy(root().join("scenarios/acme.jsonl"), dir.path().join("acme.jsonl")).expect("script");
    dir
}

/// A test's own HTTP/1 server on a free loopback port, answering each
/// request with `handler`; it lives as long as the test's runtime.
pub async fn serve_loopback<F, Fut>(handler: F) -> std::net::SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handler);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

//! The `concord` command line. Uses `anyhow` at the edge; every error names
//! the thing involved and what to do.
//!
//! Exit codes: 0 success; 1 the work ran but something in it failed (an
//! invocation failed or trapped, the audit chain is broken, `check` found
//! damage); 2 bad usage;
//! 3 bad input (config, agents, script, store); 4 not found; 5 an internal
//! fault (a panic on the main thread, such as redb's on a page damaged
//! behind its back: reported as an error that says what to do).

mod format;

use crate::audit::checkpoint;
use crate::audit::{AuditFilter, Decision, Verification};
use crate::coord::script::{self, Script, StepReport};
use crate::coord::{conflicts, operator};
use crate::host::{Host, StartError};
use crate::kb::{AtPoint, EntityRef, RedbStore, Store, StoreError};
use crate::policy::config::{Config, ConfigError, DEFAULT_CONFIG};
use crate::runtime::{LoadError, Outcome, Runtime};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const AFTER_HELP: &str = "\
Examples:
  concord run --script scenarios/acme.jsonl   play the Acme scenario
  concord get customer/acme                   current state, with its version
  concord history customer/acme               every change, who made it and why
  concord audit --agent sales                 every host call sales made
  concord audit --outcome forbidden --json    refusals, as JSON lines
  concord audit verify                        check the audit hash chain
  concord audit --trace 12                    the causation chain of invocation 12
  concord agents                              loaded agents, digests, writable fields
  concord pin customer/acme status=active --by alice --reason 'CEO call'
  concord get customer/acme --at 5            the state after event 5
  concord revert 7 --by alice --reason 'wrong customer'
  concord conflicts                           who gets in whose way, and where
  concord actions                             the outbox: recorded and delivered actions
  concord check                               every page's checksum, every record: damage?

Exit codes: 0 ok; 1 something in the run failed (an invocation, the audit chain,
damage `check` found); 2 bad usage; 3 bad input (config, agents, script, store);
4 not found; 5 an internal fault (a damaged store: run `concord check`; or a bug).
Logs go to stderr; set CONCORD_LOG (e.g. CONCORD_LOG=debug) to see more.";

/// Concord: sandboxed WebAssembly agents sharing one versioned, owned,
/// audited knowledge base.
#[derive(Debug, Parser)]
#[command(name = "concord", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The config file. Relative paths in it are resolved against its folder.
    #[arg(long, short, global = true, env = "CONCORD_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the agents and play a script of triggers, then print a summary.
    ///
    /// The script is JSON lines: {"agent":"sales","kind":"upsell","entity":"customer/acme","body":{...}}.
    /// Optional keys: "note" (shown in the summary), "id" and "pause_before" (a host call,
    /// such as "kb.commit": the invocation waits there until a later {"resume":"ID"} line).
    /// Lines starting with # are comments.
    Run {
        /// The script to play; `-` reads standard input.
        #[arg(long, short)]
        script: PathBuf,
    },
    /// Show an entity's current state and version, or its state in the past.
    Get {
        /// The entity, as kind/id (e.g. customer/acme).
        entity: EntityRef,
        /// The state as of a point in the past: an event seq (e.g. 12), or a
        /// time: ms since the epoch (13 digits) or an age such as 10m.
        #[arg(long)]
        at: Option<AtPoint>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an entity's events: who changed which fields, when and why.
    History {
        /// The entity, as kind/id.
        entity: EntityRef,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Query the audit log (every host call), or verify its hash chain.
    Audit(AuditArgs),
    /// List the agents in the agents folder: digest and writable fields.
    Agents {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set fields and pin them (a human override): agent writes to them are
    /// refused until `concord unpin`. Needs the host stopped.
    Pin {
        /// The entity, as kind/id.
        entity: EntityRef,
        /// FIELD=VALUE, read as the field's declared type (`null` for null).
        #[arg(required = true)]
        assignments: Vec<String>,
        /// Who is pinning (recorded as `human:NAME`).
        #[arg(long)]
        by: String,
        /// Why; shown to every agent that is refused.
        #[arg(long)]
        reason: String,
    },
    /// Release pinned fields. Needs the host stopped.
    Unpin {
        entity: EntityRef,
        #[arg(required = true)]
        fields: Vec<String>,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
    },
    /// Rebuild the projection from the event log and report any difference.
    Replay,
    /// Verify every page's checksum and decode every record of the knowledge
    /// base, and report any damage (other read commands read only the ends
    /// of each table). Changes nothing; needs the host stopped.
    Check,
    /// Undo an event by appending a compensating event (history is never
    /// edited). Refuses if later events changed the same fields, unless
    /// --force. Needs the host stopped.
    Revert {
        /// The event's seq (see `concord history`).
        seq: u64,
        #[arg(long)]
        by: String,
        #[arg(long)]
        reason: String,
        /// Revert even though later events changed the same fields.
        #[arg(long)]
        force: bool,
    },
    /// Report conflicts and refusals per agent pair, entity and field;
    /// ping-pongs; deep or stopped cascades; agents acting on stale versions.
    Conflicts {
        /// How close in time two changes must be to count as a ping-pong.
        #[arg(long, default_value_t = 600_000)]
        window_ms: u64,
        /// Print JSON instead of a report.
        #[arg(long)]
        json: bool,
    },
    /// List recorded actions (the outbox) and whether they were delivered.
    Actions {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// Only calls by this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only calls touching this entity (kind/id).
    #[arg(long)]
    pub entity: Option<EntityRef>,
    /// Only this call: kb.get, kb.commit, kb.history, kb.recent, log.log,
    /// invocation.start, invocation.end.
    #[arg(long)]
    pub call: Option<String>,
    /// Only this decision: allowed, forbidden, conflict, invalid, failed, trapped.
    #[arg(long)]
    pub outcome: Option<Decision>,
    /// Only this invocation id.
    #[arg(long)]
    pub invocation: Option<u64>,
    /// The whole causation chain of this invocation: what caused it, and
    /// everything it caused.
    #[arg(long)]
    pub trace: Option<u64>,
    /// Only entries at or after this time: ms since the epoch, or an age such as 30s, 10m, 2h, 7d.
    #[arg(long, value_parser = crate::kb::parse_time)]
    pub since: Option<u64>,
    /// Only entries at or before this time (same forms as --since).
    #[arg(long, value_parser = crate::kb::parse_time)]
    pub until: Option<u64>,
    /// Only the newest N matching entries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Recompute the hash chain; report the first bad entry and exit 1 if broken.
    /// With --checkpoint, also prove that the log still extends a signed
    /// checkpoint (so a rebuilt or truncated chain is caught too).
    Verify {
        /// A checkpoint file written by `concord audit checkpoint`.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The public key the checkpoint must be signed by (hex).
        #[arg(long, conflicts_with = "key")]
        public_key: Option<String>,
        /// Or the key file, whose public half is trusted.
        #[arg(long, env = "CONCORD_AUDIT_KEY")]
        key: Option<PathBuf>,
    },
    /// Create an Ed25519 signing key for checkpoints. Keep it apart from the
    /// knowledge base. The rotation is recorded in the audit.
    Keygen {
        #[arg(long, env = "CONCORD_AUDIT_KEY")]
        key: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Sign the current head of the chain and write a checkpoint (JSON).
    Checkpoint {
        #[arg(long, env = "CONCORD_AUDIT_KEY")]
        key: PathBuf,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the whole log as JSON lines (verifiable independently: see the
    /// README's hash format, or scripts/verify_audit_export.py).
    Export {
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = if error.downcast_ref::<ConfigError>().is_some()
            || error.downcast_ref::<LoadError>().is_some()
            || error.downcast_ref::<StartError>().is_some()
            || error.downcast_ref::<StoreError>().is_some()
            || error.downcast_ref::<script::ScriptError>().is_some()
            || error.downcast_ref::<crate::coord::outbox::SinkError>().is_some()
            || error.downcast_ref::<checkpoint::CheckpointError>().is_some()
        {
            3
        } else {
            1
        };
        Failure { code, error }
    }
}

/// Runs the command line; the `concord` binary is just this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` shows what agents log; the per-invocation results are printed
    // on stdout already, so the host's own chatter stays at `warn`.
    let default_level = if matches!(cli.command, Command::Run { .. }) { "warn,concord::agent=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let fault = catch_faults();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli))) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(f)) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
        Err(_) => {
            let what = fault.lock().map(|m| m.clone()).unwrap_or_default().unwrap_or_else(|| "no message".into());
            eprintln!(
                "error: concord stopped on an internal fault: {what}\n\
                 If the store may be damaged (a disk fault, or the file changed while a host was writing it), \
                 run `concord check`: it reads every page and names what is damaged, and a read command changes nothing. \
                 Otherwise this is a bug in concord: please report it with the command you ran \
                 (RUST_BACKTRACE=1 shows where it happened)."
            );
            ExitCode::from(5)
        }
    }
}

/// Turns a panic on the main thread into an error line instead of Rust's
/// panic report. A read command checks only the ends of each table at open,
/// and redb trusts a file it closed cleanly: a page damaged since then makes
/// redb panic (`unreachable!()` in its cursor), which is its documented
/// limit. `main` catches that unwind and says what to do; this hook keeps
/// its message and place for that line. Panics on other threads (a host's
/// writer, tokio's workers) still get the default report; with
/// `RUST_BACKTRACE` set, a main-thread panic gets both.
fn catch_faults() -> &'static std::sync::Mutex<Option<String>> {
    static FAULT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let default = std::panic::take_hook();
    let verbose = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some("main") {
            return default(info);
        }
        if verbose {
            default(info);
        }
        let message = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
            (Some(s), _) => (*s).to_string(),
            (_, Some(s)) => s.clone(),
            _ => "no message".into(),
        };
        let place = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        if let Ok(mut fault) = FAULT.lock() {
            *fault = Some(format!("{message}{place}"));
        }
    }));
    &FAULT
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Run { script } => run(&cli.config, &script),
        Command::Get { entity, at, json } => {
            let store = open_store(&cli.config)?;
            let found = match at {
                Some(at) => store.get_at(&entity, at)?,
                None => store.get(&entity)?,
            };
            match found {
                Some(e) => {
                    format::print_entity(&e, json);
                    Ok(0)
                }
                None => Err(Failure {
                    code: 4,
                    error: anyhow::anyhow!("{entity} does not exist (see `concord history {entity}`, or check the id)"),
                }),
            }
        }
        Command::History { entity, after, limit, json } => {
            let store = open_store(&cli.config)?;
            let events = store.history(&entity, after, limit)?;
            if events.is_empty() && !json {
                return Err(Failure { code: 4, error: anyhow::anyhow!("{entity} has no events after seq {after}") });
            }
            format::print_events(&events, json);
            Ok(0)
        }
        Command::Audit(args) => audit(&cli.config, args),
        Command::Agents { json } => {
            let config = Config::load(&cli.config)?;
            let runtime = Runtime::load(&config.agents_dir, config.limits.clone(), Some(&config.cache_dir()))?;
            format::print_agents(&runtime, &config, json);
            Ok(0)
        }
        Command::Pin { entity, assignments, by, reason } => {
            let config = Config::load(&cli.config)?;
            let fields = assignments
                .iter()
                .map(|a| operator::parse_assignment(&config.schema, &entity, a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure { code: 2, error: anyhow::anyhow!(e) })?;
            let store = RedbStore::open_with(&config.kb_path, config.kb_sharing)?;
            let event = operator::pin(&store, &entity, &fields, &by, &reason)?;
            println!("pinned {} on {entity} (event {}, version {})", names(&fields), event.seq, event.version);
            Ok(0)
        }
        Command::Unpin { entity, fields, by, reason } => {
            let config = Config::load(&cli.config)?;
            let store = RedbStore::open_with(&config.kb_path, config.kb_sharing)?;
            let event = operator::unpin(&store, &entity, &fields, &by, &reason)?;
            println!("unpinned {} on {entity} (event {})", fields.join(", "), event.seq);
            Ok(0)
        }
        Command::Replay => {
            let store = open_store(&cli.config)?;
            let report = store.replay()?;
            println!("replayed {} events into {} entities", report.events, report.entities);
            if report.differences.is_empty() {
                println!("the projection equals the replay");
                Ok(0)
            } else {
                for d in &report.differences {
                    println!("DIFFERS {d}");
                }
                Ok(1)
            }
        }
        Command::Check => {
            let config = Config::load(&cli.config)?;
            let started = std::time::Instant::now();
            let report = RedbStore::check(&config.kb_path)?;
            for table in &report.tables {
                for problem in &table.problems {
                    println!("DAMAGED {}: {problem}", table.table);
                }
                if table.unlisted > 0 {
                    println!("DAMAGED {}: and {} more problems", table.table, table.unlisted);
                }
            }
            println!(
                "read {} records in {} tables in {:.1} s",
                report.records(),
                report.tables.len(),
                started.elapsed().as_secs_f64()
            );
            if report.is_clean() {
                println!("no damage found");
                Ok(0)
            } else {
                println!("the knowledge base is damaged: restore it from a backup (nothing was changed)");
                Ok(1)
            }
        }
        Command::Revert { seq, by, reason, force } => {
            let config = Config::load(&cli.config)?;
            let store = RedbStore::open_with(&config.kb_path, config.kb_sharing)?;
            let event = operator::revert(&store, seq, &by, &reason, force)?;
            println!(
                "reverted event {seq} with event {} ({} now at version {})",
                event.seq, event.entity, event.version
            );
            format::print_events(std::slice::from_ref(&event), false);
            Ok(0)
        }
        Command::Conflicts { window_ms, json } => {
            let store = open_store(&cli.config)?;
            let window_ms =
                conflicts::check_window(window_ms).map_err(|e| Failure { code: 2, error: anyhow::anyhow!(e) })?;
            let report = conflicts::stored(&store, window_ms)?;
            format::print_conflicts(&report, json);
            Ok(0)
        }
        Command::Actions { json } => {
            let store = open_store(&cli.config)?;
            format::print_actions(&store.actions()?, json);
            Ok(0)
        }
    }
}

fn names(fields: &[(String, crate::kb::Value)]) -> String {
    fields.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", ")
}

fn open_store(config: &std::path::Path) -> Result<RedbStore, Failure> {
    let config = Config::load(config)?;
    Ok(RedbStore::open_read_only_with(&config.kb_path, config.kb_sharing)?)
}

fn audit(config: &std::path::Path, args: AuditArgs) -> Result<u8, Failure> {
    let store = open_store(config)?;
    match args.action {
        None => {}
        Some(AuditAction::Verify { checkpoint: None, .. }) => {
            return Ok(report_verification(store.verify_audit()?));
        }
        Some(AuditAction::Verify { checkpoint: Some(path), public_key, key }) => {
            let cp = checkpoint::read(&path)?;
            let trusted = match (public_key, key) {
                (Some(k), _) => Some(k),
                (None, Some(key)) => Some(checkpoint::public_key(&checkpoint::load_key(&key)?)),
                (None, None) => {
                    eprintln!("warning: no --public-key or --key given: the checkpoint's own key is trusted");
                    None
                }
            };
            let v = checkpoint::verify(&store, &cp, trusted.as_deref())?;
            if matches!(v, Verification::Intact { .. }) {
                println!(
                    "the log extends checkpoint {} (entry {}, signed by {})",
                    path.display(),
                    cp.seq,
                    cp.public_key
                );
            }
            return Ok(report_verification(v));
        }
        Some(AuditAction::Keygen { key, force }) => {
            drop(store);
            let config = Config::load(config)?;
            let public = checkpoint::generate_key(&key, force)?;
            let rw = RedbStore::open_with(&config.kb_path, config.kb_sharing)?;
            rw.append_audit(crate::audit::AuditDraft::host(
                crate::audit::calls::KEY_ROTATED,
                &config.digest,
                serde_json::json!({ "public_key": public }),
                format!("new audit signing key {public}"),
            ))?;
            println!(
                "wrote a new signing key to {} (public key {public}); keep it apart from {}",
                key.display(),
                config.kb_path.display()
            );
            return Ok(0);
        }
        Some(AuditAction::Checkpoint { key, out }) => {
            let cp = checkpoint::create(&store, &checkpoint::load_key(&key)?)?;
            let text = serde_json::to_string_pretty(&cp)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    println!("checkpoint of entry {} written to {}", cp.seq, path.display());
                }
                None => print!("{text}"),
            }
            return Ok(0);
        }
        Some(AuditAction::Export { out }) => {
            let entries = store.audit(&AuditFilter::default())?;
            let mut text = String::new();
            for e in &entries {
                text.push_str(&serde_json::to_string(e)?);
                text.push('\n');
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    println!("{} entries written to {}", entries.len(), path.display());
                }
                None => print!("{text}"),
            }
            return Ok(0);
        }
    }
    let trace = match args.trace {
        Some(id) => Some(crate::coord::trace::chain(&store, id).map_err(|e| match e {
            crate::coord::trace::TraceError::NoSuchInvocation(_) => Failure { code: 4, error: e.into() },
            crate::coord::trace::TraceError::Store(s) => Failure::from(s),
        })?),
        None => None,
    };
    let filter = AuditFilter {
        agent: args.agent,
        entity: args.entity.map(|e| e.key()),
        call: args.call,
        decision: args.outcome,
        invocation: args.invocation,
        trace,
        since_ms: args.since,
        until_ms: args.until,
        after: None,
        before: None,
        limit: args.limit,
    };
    let entries = store.audit(&filter)?;
    format::print_audit(&entries, args.json);
    Ok(0)
}

fn report_verification(v: Verification) -> u8 {
    match v {
        Verification::Intact { entries, head } => {
            println!("audit chain intact: {entries} entries, head {head}");
            0
        }
        Verification::Broken { seq, problem } => {
            println!("audit chain BROKEN at entry {seq}: {problem}");
            1
        }
    }
}

fn run(config_path: &std::path::Path, script_path: &std::path::Path) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    // Parse the whole script before starting, so a bad line writes nothing.
    let script = if script_path == std::path::Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Script::parse(&text, std::path::Path::new("<stdin>"))?
    } else {
        Script::load(script_path)?
    };
    // Check the script against the agents before the store is opened.
    script.check(&config.schema, &crate::runtime::agent_names(&config.agents_dir)?)?;
    let host = Arc::new(Host::start(config)?);
    for w in host.warnings() {
        eprintln!("warning: {w}");
    }
    let names: Vec<String> = host.agents().map(|a| format!("{} ({})", a.name, &a.digest[..12])).collect();
    println!("concord: {} agents loaded: {}", names.len(), names.join(", "));
    println!("concord: knowledge base {}", host.config().kb_path.display());
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = runtime.block_on(script::run(host.clone(), &script, format::print_step))?;

    let ok = results.iter().filter(|i| i.outcome.is_ok()).count();
    let failed = results.iter().filter(|i| matches!(i.outcome, Outcome::Failed(_))).count();
    let trapped = results.iter().filter(|i| matches!(i.outcome, Outcome::Trapped(_) | Outcome::Stopped(_))).count();
    println!();
    println!("summary: {} invocations: {ok} ok, {failed} failed, {trapped} trapped", results.len());
    let report = host.conflicts(conflicts::MAX_WINDOW_MS)?;
    let counts: Vec<String> = report.refused.iter().map(|(d, n)| format!("{n} {d}")).collect();
    println!(
        "         refused by the host in this knowledge base: {}",
        if counts.is_empty() { "nothing".to_string() } else { counts.join(", ") }
    );
    let actions = host.store().actions()?;
    let delivered = actions.iter().filter(|a| a.delivered_at_ms.is_some()).count();
    println!("         actions: {} recorded, {delivered} delivered ({})", actions.len(), sink_name(host.config()));
    println!("         see `concord audit` for every call, `concord history KIND/ID` for every change");
    Ok(if failed + trapped == 0 { 0 } else { 1 })
}

fn sink_name(config: &Config) -> String {
    match &config.sink {
        crate::policy::config::SinkConfig::Stdout => "to stdout".into(),
        crate::policy::config::SinkConfig::File(p) => format!("to {}", p.display()),
    }
}

impl StepReport {
    fn line(&self) -> usize {
        match self {
            StepReport::Paused { line, .. } | StepReport::Finished { line, .. } => *line,
        }
    }
}

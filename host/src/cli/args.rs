//! The command line's arguments (clap), and its help.

use crate::audit::Decision;
use crate::kb::{AtPoint, EntityRef};
use crate::policy::config::DEFAULT_CONFIG;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  concord serve                               run the host as a service (http://127.0.0.1:7700)
  concord invoke sales upsell --entity customer/acme --body '{\"offer\":\"Enterprise\"}'
  concord audit --follow                      print audit entries as they happen (needs `concord serve`)
  concord run --script scenarios/acme.jsonl   play the Acme scenario
  concord get customer/acme                   current state, with its version
  concord history customer/acme               every change, who made it and why
  concord audit --agent sales                 every host call sales made
  concord audit --outcome forbidden --json    refusals, as JSON lines
  concord audit verify                        check the audit hash chain
  concord audit --trace 12                    the causation chain of invocation 12
  concord agents                              loaded agents, digests, writable fields
  concord schedules                           each schedule's next and last fire, and its outcome
  concord pin customer/acme status=active --by alice --reason 'CEO call'
  concord get customer/acme --at 5            the state after event 5
  concord revert 7 --by alice --reason 'wrong customer'
  concord conflicts                           who gets in whose way, and where
  concord actions                             the outbox: recorded and delivered actions
  concord check                               every page's checksum, every record: damage?
  concord import customers.csv                create or update entities, as an operator
  concord export --out kb.jsonl               every entity's current state, as JSON lines
  concord token add alice --role operator     a new API token (printed once)

While `concord serve` runs, the other commands go through it (its address is in
the server file beside the knowledge base; the token comes from CONCORD_TOKEN).

Exit codes: 0 ok; 1 something in the run failed (an invocation, the audit chain,
damage `check` found); 2 bad usage; 3 bad input (config, agents, script, store);
4 not found; 5 an internal fault (a damaged store: run `concord check`; or a bug);
141 stdout closed before the command was done (`| head`).
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
        /// Then print its new events as they are committed (needs a running
        /// host); stop with Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Query the audit log (every host call), or verify its hash chain.
    Audit(AuditArgs),
    /// List the agents in the agents folder: digest and writable fields.
    Agents {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the schedules (`[[schedules]]`): each one's next fire, its last
    /// fire and that fire's outcome.
    Schedules {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set fields and pin them (a human override): agent writes to them are
    /// refused until `concord unpin`. Goes through a running host.
    Pin {
        /// The entity, as kind/id.
        entity: EntityRef,
        /// FIELD=VALUE, read as the field's declared type (`null` for null).
        #[arg(required = true)]
        assignments: Vec<String>,
        /// Who is pinning (recorded as `human:NAME`). Through a running host
        /// with tokens, the token's name is who acts.
        #[arg(long)]
        by: Option<String>,
        /// Why; shown to every agent that is refused.
        #[arg(long)]
        reason: String,
    },
    /// Release pinned fields. Goes through a running host.
    Unpin {
        entity: EntityRef,
        #[arg(required = true)]
        fields: Vec<String>,
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Operators and leases: `concord lease break KIND/ID --reason ...`.
    Lease {
        #[command(subcommand)]
        action: LeaseAction,
    },
    /// Rebuild the projection from the event log and report any difference.
    Replay,
    /// Verify every page's checksum and decode every record of the knowledge
    /// base, and report any damage (other read commands read only the ends
    /// of each table). Changes nothing; needs the host stopped.
    Check,
    /// Copy a whole knowledge base into an empty one, between backends:
    /// events, the projection, the audit (its chain checked on the copy),
    /// pins, leases, the outbox, change requests, read cursors and the
    /// fencing counter. Stop the hosts on the source first
    Migrate {
        /// The source: a redb file (`data/concord.redb`) or a PostgreSQL URL (`postgres://…`)
        #[arg(long)]
        from: String,
        /// The target, empty: a redb file (created) or a PostgreSQL URL (its schema is created)
        #[arg(long)]
        to: String,
    },
    /// Undo an event by appending a compensating event (history is never
    /// edited). Refuses if later events changed the same fields, unless
    /// --force. Goes through a running host.
    Revert {
        /// The event's seq (see `concord history`).
        seq: u64,
        #[arg(long)]
        by: Option<String>,
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
    /// List recorded actions (the outbox): delivered, pending (with failed
    /// attempts), or in the dead letter; `actions retry ID` retries one.
    #[command(args_conflicts_with_subcommands = true)]
    Actions {
        #[command(subcommand)]
        action: Option<ActionsAction>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a new agent: its sources, a build file, a test, and its stanza in
    /// concord.toml (the fields it owns). Then `concord build NAME`.
    New {
        /// The agent's name: letters, digits, `_` or `-`. Its sources go in
        /// the agents folder, under NAME/.
        name: String,
        /// The language: rust, python or typescript.
        #[arg(long, value_enum)]
        lang: Lang,
    },
    /// Build agents from their sources (agents/NAME/: a Cargo.toml, an
    /// app.py or an index.ts), drop each into the agents folder as NAME.wasm,
    /// and compile it into the host's cache, so that a start does not.
    /// Without names, every agent source folder is built.
    Build {
        /// The agents to build (default: every source folder found).
        names: Vec<String>,
        /// Where the agents' source folders are (default: the agents folder).
        #[arg(long)]
        src: Option<PathBuf>,
        /// Where the built components go (default: the agents folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the host as a service: an HTTP API for triggers, reads, streams
    /// and operators, until SIGINT or SIGTERM (a second one stops at once).
    Serve {
        /// The address to listen on (default: `listen` under [server], or
        /// 127.0.0.1:7700). Port 0 picks a free one.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Trigger an agent on the running host and print what it did.
    Invoke {
        /// The agent.
        agent: String,
        /// The message kind, such as `upsell`.
        kind: String,
        /// The entity the message is about, as kind/id.
        #[arg(long)]
        entity: Option<EntityRef>,
        /// The message body, JSON (default `{}`).
        #[arg(long)]
        body: Option<String>,
        /// An idempotency key: a retry with the same key runs nothing and
        /// gets the first answer.
        #[arg(long)]
        key: Option<String>,
        /// Do not wait: print the invocation id as soon as it starts.
        #[arg(long)]
        no_wait: bool,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create or update entities from a file, as an operator: JSON lines
    /// ({"entity":"customer/acme","fields":{...},"expect":"absent"|VERSION})
    /// or CSV (header: entity, optional expect, then fields). Every row is
    /// checked first; each batch is all or nothing.
    Import {
        /// The file (`.csv` is read as CSV, anything else as JSON lines).
        file: PathBuf,
        /// Who imports (recorded as `human:NAME`); through a running host
        /// with tokens, the token's name.
        #[arg(long)]
        by: Option<String>,
        /// Rows per batch (all or nothing each), at most 1024.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Write every entity's current state as JSON lines (what `import`
    /// reads back into an empty knowledge base).
    Export {
        /// Only entities of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Manage the API tokens of `concord serve` (the file `tokens` names
    /// under [server]).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionsAction {
    /// Put an action from the dead letter back in the outbox, its attempts
    /// counted afresh (fix the receiver first). Audited.
    Retry {
        /// The action's id (`concord actions` lists them).
        id: u64,
        /// Who is retrying it (recorded as `human:NAME`). Through a running
        /// host with tokens, the token's name is who acts.
        #[arg(long)]
        by: Option<String>,
        /// Why; kept in the audit.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Break the entity's live lease, whoever holds it (a holder that is
    /// stuck or gone); its fencing token goes stale. Audited.
    Break {
        /// The entity, as kind/id.
        entity: EntityRef,
        /// Who is breaking it (recorded as `human:NAME`). Through a running
        /// host with tokens, the token's name is who acts.
        #[arg(long)]
        by: Option<String>,
        /// Why; kept in the audit.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token and print it, once: only its sha256 is kept.
    Add {
        /// Who the token is: an operator's actions are recorded as `human:NAME`.
        name: String,
        /// read (queries and streams), invoke (also triggers), or operator
        /// (also pins, reverts, imports).
        #[arg(long)]
        role: crate::server::tokens::Role,
    },
    /// List the tokens: name, role, when created (never the tokens).
    List,
    /// Remove a token; it is refused from the server's next request on.
    Remove { name: String },
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
    /// coord.act, http.request, model.complete, invocation.start,
    /// invocation.end, ... (as the audit names them).
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
    /// Then print new entries as they are written (needs a running host);
    /// stop with Ctrl-C.
    #[arg(long)]
    pub follow: bool,
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

/// The languages `concord new` scaffolds and `concord build` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    #[value(alias = "ts")]
    Typescript,
}

impl Lang {
    /// As `--lang` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Typescript => "typescript",
        }
    }

    /// As a sentence names it.
    pub fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Typescript => "TypeScript",
        }
    }
}

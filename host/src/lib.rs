//! Concord: a host runtime where sandboxed WebAssembly agents share one
//! versioned, owned, audited knowledge base.
//!
//! # The public surface
//! Every public type has one path. The knowledge base and the audit are
//! namespaces of their own ([`kb`], [`audit`]); everything else an embedder
//! uses is listed below and re-exported here, from private modules:
//! - running a host: [`Host`], [`Config`], [`Limits`], [`Message`],
//!   [`Invocation`], [`Outcome`], [`Breakpoint`], and the service
//!   ([`Server`], [`tokens`]);
//! - coordination from outside: [`script`], [`operator`], [`outbox`]
//!   sinks, [`schedule`], the [`conflicts`] report;
//! - the command line: [`main`].
//!
//! # Layout (the private modules)
//! - `host`: [`Host`], the assembled runtime. Start here.
//! - `gate`: the one place every host call passes through (policy, then
//!   store, then audit).
//! - `policy`: `concord.toml`, the schema, field ownership, the
//!   coordination rules (CEL), and each agent's grants beyond the knowledge
//!   base (outbound HTTP origins, secrets).
//! - [`kb`]: entities, events, versions, pins, leases, the outbox, the
//!   [`Store`](kb::Store) contract, the rules every backend shares, and the
//!   redb backend.
//! - [`audit`]: audit entries, the hash chain, signed checkpoints, queries.
//! - `runtime`: the wasm engine, agent loading, sandboxed invocations, and
//!   `wasi:http` (whose requests the gate checks, sends and audits).
//! - `coord`: scripts of triggers, cascades (subscriptions, handoffs), the
//!   outbox dispatcher and its sinks, operator commands, the conflicts report.
//! - `server`: `concord serve`, the host as an HTTP service (triggers,
//!   reads, streams, operators, metrics).
//! - `cli`: the `concord` command line.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use concord::{Config, Host, Message};
//! let config = Config::load("concord.toml".as_ref())?;
//! let host = Host::start(config)?;
//! let run = host
//!     .invoke("sales", Message { kind: "upsell".into(), entity: Some("customer/acme".parse().map_err(anyhow::Error::msg)?), body: "{}".into() })
//!     .await?;
//! println!("{}: {}", run.agent, run.outcome);
//! # Ok(()) }
//! ```

pub mod audit;
mod cli;
mod coord;
mod gate;
mod host;
pub mod kb;
mod metrics;
mod policy;
mod runtime;
mod server;

pub use cli::main;
pub use coord::{conflicts, import, operator, outbox, schedule, script};
pub use gate::{Breakpoint, Caller};
pub use host::{AgentChange, ConfigReload, Host, InvokeError, StartError};
pub use policy::config::{Config, ConfigError, Limits};
pub use runtime::{Invocation, LoadError, MAX_LIVE_INVOCATIONS, Message, Origin, Outcome, Runtime, precompile};
pub use server::live::LiveOptions;
pub use server::state::MAX_STREAMS;
pub use server::{ServeError, Server, tokens};
/// The wasmtime this crate is built on, so embedders stay on one version.
pub use wasmtime;

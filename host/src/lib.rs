//! Concord: a host runtime where sandboxed WebAssembly agents share one
//! versioned, owned, audited knowledge base.
//!
//! # Layout
//! - [`host`]: [`Host`], the assembled runtime. Start here.
//! - [`gate`]: the one place every host call passes through (policy, then
//!   store, then audit).
//! - [`policy`]: `concord.toml`, the schema, field ownership, and the
//!   coordination rules (CEL).
//! - [`kb`]: entities, events, versions, pins, leases, the outbox, and the
//!   [`Store`](kb::Store) trait with its redb backend (group commit).
//! - [`audit`]: audit entries, the hash chain, signed checkpoints, queries.
//! - [`runtime`]: the wasm engine, agent loading, sandboxed invocations.
//! - [`coord`]: scripts of triggers, cascades (subscriptions, handoffs), the
//!   outbox dispatcher and its sinks, operator commands, the conflicts report.
//! - [`server`]: `concord serve`, the host as an HTTP service (triggers,
//!   reads, streams, operators, metrics).
//! - [`cli`]: the `concord` command line.
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
pub mod cli;
pub mod coord;
pub mod gate;
pub mod host;
pub mod kb;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod server;

pub use gate::Breakpoint;
pub use host::{Host, InvokeError, StartError};
pub use kb::{Entity, EntityRef, Event, Value};
pub use policy::config::Config;
pub use runtime::{Invocation, Message, Origin, Outcome};
/// The wasmtime this crate is built on, so embedders stay on one version.
pub use wasmtime;

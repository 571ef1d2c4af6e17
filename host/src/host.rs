//! The assembled host: config, store, policy, gate and runtime, started in
//! an order that never leaves anything half-done.

use crate::gate::{Breakpoint, Gate};
use crate::kb::{RedbStore, Store, StoreError};
use crate::policy::Policy;
use crate::policy::config::Config;
use crate::runtime::{AgentInfo, Invocation, LoadError, Message, Runtime};
use std::sync::Arc;

/// Why the host did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Agents(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why an invocation could not be started. (How a started invocation ended,
/// traps included, is its [`Invocation::outcome`].)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    #[error("no agent named `{name}` is loaded (loaded: {})", known.join(", "))]
    UnknownAgent { name: String, known: Vec<String> },
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("host fault: {0}")]
    Host(#[from] StoreError),
}

/// A running Concord host.
#[derive(Debug)]
pub struct Host {
    config: Config,
    gate: Arc<Gate>,
    runtime: Runtime,
    warnings: Vec<String>,
}

impl Host {
    /// Loads the agents, then opens the store. Agents come first so that a
    /// bad agent file stops the start before anything is written.
    pub fn start(config: Config) -> Result<Host, StartError> {
        let runtime = Runtime::load(&config.agents_dir, config.limits.clone())?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&config.kb_path)?);
        Ok(Self::with_store(config, runtime, store))
    }

    fn with_store(config: Config, runtime: Runtime, store: Arc<dyn Store>) -> Host {
        let warnings = ownership_warnings(&config, &runtime);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let policy = Arc::new(Policy::new(config.schema.clone()));
        let gate = Arc::new(Gate::new(store, policy, config.limits.audit_arg_bytes));
        Host { config, gate, runtime, warnings }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Problems found at start that do not stop it (an owner that matches no
    /// loaded agent, for example).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentInfo> {
        self.runtime.agents()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.gate.store()
    }

    /// Invokes an agent with a message in a fresh instance.
    pub async fn invoke(&self, agent: &str, message: Message) -> Result<Invocation, InvokeError> {
        self.invoke_inner(agent, message, None).await
    }

    /// Like [`Host::invoke`], pausing the invocation at `breakpoint`.
    pub async fn invoke_with(
        &self,
        agent: &str,
        message: Message,
        breakpoint: Breakpoint,
    ) -> Result<Invocation, InvokeError> {
        self.invoke_inner(agent, message, Some(breakpoint)).await
    }

    async fn invoke_inner(
        &self,
        agent: &str,
        message: Message,
        breakpoint: Option<Breakpoint>,
    ) -> Result<Invocation, InvokeError> {
        if let Some(entity) = &message.entity {
            self.gate.policy().check_read(entity).map_err(|e| InvokeError::BadMessage(e.to_string()))?;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&message.body) {
            return Err(InvokeError::BadMessage(format!("the body is not JSON: {e}")));
        }
        self.runtime.invoke(&self.gate, agent, &message, breakpoint).await?.ok_or_else(|| InvokeError::UnknownAgent {
            name: agent.to_string(),
            known: self.runtime.agents().map(|a| a.name.clone()).collect(),
        })
    }
}

/// Checks the config's ownership against the loaded agents.
fn ownership_warnings(config: &Config, runtime: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, def) in &config.schema.kinds {
        for (field, f) in &def.fields {
            for name in f.writers.names() {
                if runtime.agent(&name).is_none() {
                    out.push(format!(
                        "{}:{}: field {kind}.{field} names `{name}` as a writer, but no agent `{name}` is loaded from {}",
                        config.file.display(),
                        f.line,
                        config.agents_dir.display()
                    ));
                }
            }
        }
    }
    out
}

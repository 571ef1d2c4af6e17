//! The assembled host: config, store, policy, gate and runtime, started in
//! an order that never leaves anything half-done.

use crate::coord::cascade::{self, FollowUp};
use crate::coord::conflicts::{Report, Tracker};
use crate::coord::outbox::{self, Delivery, Sink, SinkError};
use crate::gate::{Breakpoint, Gate};
use crate::kb::{RedbStore, Store, StoreError};
use crate::policy::Policy;
use crate::policy::config::Config;
use crate::runtime::{AgentInfo, Invocation, LoadError, Message, Origin, Runtime};
use std::collections::VecDeque;
use std::sync::Arc;

/// Why the host did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Agents(#[from] LoadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the action sink: {0}")]
    Sink(#[from] SinkError),
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
    #[error("{0}")]
    Fault(#[from] crate::gate::HostFault),
}

/// A running Concord host.
#[derive(Debug)]
pub struct Host {
    config: Config,
    gate: Arc<Gate>,
    runtime: Runtime,
    warnings: Vec<String>,
    sink: Box<dyn Sink>,
    /// The conflicts report, counted as the logs grow (see
    /// [`Host::conflicts`]).
    tracker: std::sync::Mutex<Tracker>,
}

impl Host {
    /// Loads the agents, then opens the store. Agents come first so that a
    /// bad agent file stops the start before anything is written.
    ///
    /// Actions recorded but not delivered before the last stop (a crash,
    /// say) are delivered now.
    pub fn start(config: Config) -> Result<Host, StartError> {
        let sink = outbox::open_sink(&config.sink)?;
        Self::start_with_sink(config, sink)
    }

    /// Like [`Host::start`], delivering actions to `sink` instead of the
    /// configured one.
    pub fn start_with_sink(config: Config, sink: Box<dyn Sink>) -> Result<Host, StartError> {
        let runtime = Runtime::load(&config.agents_dir, config.limits.clone(), Some(&config.cache_dir()))?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open_with(&config.kb_path, config.kb_sharing)?);
        let warnings = config_warnings(&config, &runtime);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let policy = Arc::new(Policy::new(config.schema.clone()));
        let agents = runtime.agents().map(|a| a.name.clone()).collect();
        let gate = Arc::new(Gate::new(store, policy, config.rules.clone(), config.limits.clone(), agents));
        record_start(store_of(&gate), &config, &runtime)?;
        let tracker = std::sync::Mutex::new(Tracker::load(store_of(&gate))?);
        let host = Host { config, gate, runtime, warnings, sink, tracker };
        host.expire_change_requests(crate::kb::now_ms())?;
        let leftover = outbox::deliver_pending(host.store().as_ref(), host.sink.as_ref())?;
        if !leftover.delivered.is_empty() {
            tracing::info!("delivered {} action(s) left in the outbox by the last run", leftover.delivered.len());
        }
        Ok(host)
    }

    /// Delivers every action waiting in the outbox.
    pub fn deliver_actions(&self) -> Result<Delivery, StoreError> {
        outbox::deliver_pending(self.store().as_ref(), self.sink.as_ref())
    }

    /// Runs a trigger: the invocation, every invocation it causes
    /// (subscriptions, handoffs; breadth first, up to the depth limit), and
    /// then delivers the actions they recorded. Returns every invocation,
    /// in the order they ran.
    pub async fn dispatch(&self, agent: &str, message: Message) -> Result<Vec<Invocation>, InvokeError> {
        let root = self.invoke(agent, message).await?;
        self.finish(root).await
    }

    /// Runs what `root` caused, then delivers recorded actions.
    pub async fn finish(&self, root: Invocation) -> Result<Vec<Invocation>, InvokeError> {
        let mut done = vec![];
        let mut queue: VecDeque<(FollowUp, u64, u32, Vec<String>)> = VecDeque::new();
        let enqueue = |queue: &mut VecDeque<_>, inv: &Invocation, chain: &[String]| {
            let mut chain = chain.to_vec();
            chain.push(inv.agent.clone());
            for f in cascade::follow_ups(&inv.followups, &self.config.subscriptions) {
                queue.push_back((f, inv.id, inv.depth + 1, chain.clone()));
            }
        };
        enqueue(&mut queue, &root, &[]);
        done.push(root);
        while let Some((f, parent, depth, chain)) = queue.pop_front() {
            let Some(info) = self.runtime.agent(&f.agent) else {
                tracing::warn!("invocation {parent} calls for agent `{}`, which is not loaded; skipped", f.agent);
                continue;
            };
            if depth > self.config.limits.max_cascade_depth {
                let mut path = chain.clone();
                path.push(f.agent.clone());
                let looped = chain.contains(&f.agent);
                let outcome = format!(
                    "cascade stopped at depth {depth} (limits.max_cascade_depth = {}): {}{}",
                    self.config.limits.max_cascade_depth,
                    path.join(" -> "),
                    if looped { "; the chain loops" } else { "" }
                );
                tracing::warn!("{outcome}");
                let digest = info.digest.clone();
                self.gate.record_stopped(&f.agent, &digest, parent, f.message.entity.as_ref(), outcome).await?;
                continue;
            }
            let inv = self.invoke_inner(&f.agent, f.message, None, Some(parent), depth, Origin::default()).await?;
            enqueue(&mut queue, &inv, &chain);
            done.push(inv);
        }
        if let Err(e) = self.deliver_actions() {
            tracing::warn!("actions not delivered yet: {e}");
        }
        Ok(done)
    }

    /// Closes the change requests nobody resolved within
    /// `limits.change_request_ttl_ms` of `now_ms` (see
    /// [`crate::coord::expiry`]). Runs at start and every few seconds in
    /// `concord serve` (not on each trigger's path); it reads the store
    /// and may write it: call it off the async threads.
    pub fn expire_change_requests(&self, now_ms: u64) -> Result<Vec<crate::kb::Event>, StoreError> {
        crate::coord::expiry::expire(self.store().as_ref(), self.config.limits.change_request_ttl_ms, now_ms)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The conflicts report (see [`crate::coord::conflicts`]), counted up
    /// to the latest audit entry and event: only what was written since the
    /// last report is read. Stores the count now and then, so that the
    /// next start (or a read command) starts from there. This reads the
    /// store and may write it: call it off the async threads.
    pub fn conflicts(&self, window_ms: u64) -> Result<Report, StoreError> {
        let store = self.store().as_ref();
        let mut tracker = self.tracker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tracker.catch_up(store)?;
        if tracker.worth_saving() {
            tracker.save(store)?;
        }
        tracker.report(store, window_ms)
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

    /// The gate every host call passes through. Native (Rust-side) callers
    /// use it to make the same audited, policy-checked calls agents make.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The runtime: loaded agents, limits, the compiled-component cache.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Invokes an agent with a message in a fresh instance.
    ///
    /// This runs the one invocation; what it causes (subscriptions,
    /// handoffs) and its actions' delivery are [`Host::dispatch`]'s.
    pub async fn invoke(&self, agent: &str, message: Message) -> Result<Invocation, InvokeError> {
        self.invoke_inner(agent, message, None, None, 0, Origin::default()).await
    }

    /// Runs a trigger from outside (the API's): the invocation, with who
    /// asked for it and its idempotency key in its start entry, and what
    /// it causes, as [`Host::dispatch`]. `origin.started` gets the
    /// invocation id as soon as it has one; with a breakpoint, the
    /// invocation pauses there until released.
    pub async fn trigger(
        &self,
        agent: &str,
        message: Message,
        breakpoint: Option<Breakpoint>,
        origin: Origin,
    ) -> Result<Vec<Invocation>, InvokeError> {
        let root = self.invoke_inner(agent, message, breakpoint, None, 0, origin).await?;
        self.finish(root).await
    }

    /// Stops every invocation in flight (and any started after), each
    /// audited as stopped with `why`: the end of a shutdown's drain.
    pub fn stop_invocations(&self, why: &str) {
        self.runtime.stop(why);
    }

    /// Like [`Host::invoke`], pausing the invocation at `breakpoint`.
    pub async fn invoke_with(
        &self,
        agent: &str,
        message: Message,
        breakpoint: Breakpoint,
    ) -> Result<Invocation, InvokeError> {
        self.invoke_inner(agent, message, Some(breakpoint), None, 0, Origin::default()).await
    }

    async fn invoke_inner(
        &self,
        agent: &str,
        message: Message,
        breakpoint: Option<Breakpoint>,
        causation: Option<u64>,
        depth: u32,
        origin: Origin,
    ) -> Result<Invocation, InvokeError> {
        if let Some(entity) = &message.entity {
            self.gate.policy().check_read(entity).map_err(|e| InvokeError::BadMessage(e.to_string()))?;
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&message.body) {
            return Err(InvokeError::BadMessage(format!("the body is not JSON: {e}")));
        }
        self.runtime.invoke(&self.gate, agent, &message, breakpoint, causation, depth, origin).await?.ok_or_else(|| {
            InvokeError::UnknownAgent {
                name: agent.to_string(),
                known: self.runtime.agents().map(|a| a.name.clone()).collect(),
            }
        })
    }
}

fn store_of(gate: &Gate) -> &dyn Store {
    gate.store().as_ref()
}

/// Audits the start: the config digest, the agents and their digests, and,
/// when they apply, that the config changed or the last run ended without
/// a stop entry (a crash or a kill).
fn record_start(store: &dyn Store, config: &Config, runtime: &Runtime) -> Result<(), StoreError> {
    use crate::audit::{AuditDraft, AuditFilter, HOST, calls};
    let last = store.audit(&AuditFilter { agent: Some(HOST.into()), limit: Some(1), ..Default::default() })?.pop();
    let last_start = store
        .audit(&AuditFilter {
            agent: Some(HOST.into()),
            call: Some(calls::HOST_START.into()),
            limit: Some(1),
            ..Default::default()
        })?
        .pop();
    if let Some(prev) = last_start.filter(|p| p.digest != config.digest) {
        store.append_audit(AuditDraft::host(
            calls::CONFIG_CHANGED,
            &config.digest,
            serde_json::json!({ "from": prev.digest, "to": config.digest, "file": config.file }),
            format!("config {} changed since the start at audit entry {}", config.file.display(), prev.seq),
        ))?;
    }
    let unclean = last.as_ref().is_some_and(|e| e.call == calls::HOST_START);
    let agents: serde_json::Map<_, _> = runtime.agents().map(|a| (a.name.clone(), a.digest.clone().into())).collect();
    let args = serde_json::json!({ "config": config.file, "agents": agents, "pid": std::process::id() });
    let outcome = if unclean {
        "started; the previous run ended without a stop entry (killed or crashed)".to_string()
    } else {
        "started".to_string()
    };
    store.append_audit(AuditDraft::host(calls::HOST_START, &config.digest, args, outcome))?;
    Ok(())
}

impl Drop for Host {
    fn drop(&mut self) {
        use crate::audit::{AuditDraft, calls};
        // The count goes with the store, so the next start (or `concord
        // conflicts`) reads only what comes after it.
        let tracker = self.tracker.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) =
            tracker.catch_up(self.gate.store().as_ref()).and_then(|()| tracker.save(self.gate.store().as_ref()))
        {
            tracing::warn!("could not store the conflicts report's count (the next report counts again): {e}");
        }
        let pending = self.store().pending_actions(usize::MAX).map(|p| p.len()).unwrap_or(0);
        let draft = AuditDraft::host(
            calls::HOST_STOP,
            &self.config.digest,
            serde_json::json!({ "pending_actions": pending }),
            "stopped".into(),
        );
        if let Err(e) = self.store().append_audit(draft) {
            tracing::error!("could not audit the host's stop: {e}");
        }
    }
}

/// Checks the config's ownership, rules and subscriptions against the
/// loaded agents.
fn config_warnings(config: &Config, runtime: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let file = config.file.display();
    for s in &config.subscriptions {
        if runtime.agent(&s.agent).is_none() {
            out.push(format!("{file}:{}: subscription names agent `{}`, which is not loaded", s.line, s.agent));
        }
    }
    for r in config.rules.iter() {
        for a in r.agents.iter().filter(|a| runtime.agent(a).is_none()) {
            out.push(format!("{file}:{}: rule `{}` names agent `{a}`, which is not loaded", r.line, r.name));
        }
    }
    for (kind, def) in &config.schema.kinds {
        for (field, f) in &def.fields {
            for name in f.writers.names() {
                if runtime.agent(&name).is_none() {
                    out.push(format!(
                        "{}:{}: field {kind}.{field} names `{name}` as a writer, which is not loaded (no {})",
                        config.file.display(),
                        f.line,
                        config.agents_dir.join(format!("{name}.wasm")).display()
                    ));
                }
            }
        }
    }
    out
}

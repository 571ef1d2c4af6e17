//! The assembled host: config, store, policy, gate and runtime, started in
//! an order that never leaves anything half-done.

use crate::coord::cascade::{self, FollowUp};
use crate::coord::conflicts::{Report, Tracker};
use crate::coord::outbox::{self, Delivery, Sink, SinkError};
use crate::gate::{Breakpoint, Gate};
use crate::kb::{self, Access, OpenError, Store, StoreError};
use crate::policy::config::{Config, ConfigError};
use crate::runtime::folder::{FileChange, Folder};
use crate::runtime::{AgentInfo, Invocation, LoadError, Message, Origin, RefusedFile, Runtime};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Why the host did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Agents(#[from] LoadError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the action sink: {0}")]
    Sink(#[from] SinkError),
    /// The config names what is not there (a schedule's agent).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secret an agent is granted has no value in the environment.
    #[error(transparent)]
    Secret(#[from] crate::policy::secrets::SecretError),
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
///
/// What can change while it runs: the agents ([`Host::reload_agents`]) and
/// the config ([`Host::reload_config`]), each swapped whole. The config in
/// force is the gate's ([`Host::config`]).
#[derive(Debug)]
pub struct Host {
    gate: Arc<Gate>,
    runtime: Runtime,
    warnings: Vec<String>,
    sink: Box<dyn Sink>,
    /// The conflicts report, counted as the logs grow (see
    /// [`Host::conflicts`]).
    tracker: Mutex<Tracker>,
    /// The agents folder as last looked at.
    folder: Mutex<Folder>,
    /// Files of the agents folder that were refused, by path, until they
    /// load or go.
    refused: Mutex<BTreeMap<PathBuf, RefusedFile>>,
    /// One reload (of agents or of the config) at a time.
    reloading: Mutex<()>,
    /// When the head of the outbox is due again after a failed delivery
    /// (ms since the epoch; 0: nothing waits). `concord serve` delivers
    /// then; otherwise the next trigger does.
    retry_at_ms: std::sync::atomic::AtomicU64,
    /// One delivery round at a time on this host: two at once would send
    /// the same action twice, and count one failure twice.
    delivering: Mutex<()>,
    /// Set by a service that delivers in the background (see
    /// [`Host::deliver_in_background`]); woken when a trigger ends.
    background: std::sync::atomic::AtomicBool,
    deliveries: tokio::sync::Notify,
}

/// What a look at the agents folder changed.
#[derive(Debug, Default)]
pub struct AgentReload {
    pub changes: Vec<AgentChange>,
    /// Files still being written: look again after this long.
    pub again_after: Option<Duration>,
}

/// One change of the agents in service, as audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChange {
    Loaded(AgentInfo),
    Replaced {
        old: AgentInfo,
        new: AgentInfo,
    },
    Removed(AgentInfo),
    /// The file does not load; whatever served under its name goes on.
    Refused(RefusedFile),
}

/// What a config reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigReload {
    /// The file's digest is the one in force.
    Unchanged,
    /// In force from the next host call; `changes` summarises the
    /// difference (as audited).
    Applied { from: String, to: String, changes: Vec<String> },
    /// Not applied (as audited), with why: the old config stays.
    Refused(String),
}

impl Host {
    /// Loads the agents, then opens the store. Agents come first so that a
    /// bad agent file stops the start before anything is written.
    ///
    /// Actions recorded but not delivered before the last stop (a crash,
    /// say) are delivered now.
    pub fn start(config: Config) -> Result<Host, StartError> {
        let sink = outbox::open_sink(&config.sink, &config.secrets)?;
        Self::start_with_sink(config, sink)
    }

    /// Like [`Host::start`], delivering actions to `sink` instead of the
    /// configured one.
    pub fn start_with_sink(config: Config, sink: Box<dyn Sink>) -> Result<Host, StartError> {
        let runtime = Runtime::load(&config.agents_dir, config.pool_limits(), Some(&config.agents_cache))?;
        check_schedules(&config, &runtime)?;
        let config = Arc::new(config);
        // Secrets are read before the store is opened: a missing one stops
        // the start before anything is written.
        let settings = crate::gate::Settings::new(config.clone())?;
        let store = kb::open(&config.kb_backend(), Access::ReadWrite)?;
        let warnings = config_warnings(&config, &runtime);
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let loaded = runtime.agents();
        let folder = Folder::new(
            &config.agents_dir,
            config.agents_settle,
            loaded.iter().map(|a| (a.path.clone(), a.digest.clone())),
        );
        let agents = loaded.into_iter().map(|a| a.name).collect();
        let gate = Arc::new(Gate::new(store, settings, agents));
        record_start(store_of(&gate), &config, &runtime)?;
        let tracker = Mutex::new(Tracker::load(store_of(&gate))?);
        let host = Host {
            gate,
            runtime,
            warnings,
            sink,
            tracker,
            folder: Mutex::new(folder),
            refused: Mutex::default(),
            reloading: Mutex::new(()),
            retry_at_ms: std::sync::atomic::AtomicU64::new(0),
            delivering: Mutex::new(()),
            background: std::sync::atomic::AtomicBool::new(false),
            deliveries: tokio::sync::Notify::new(),
        };
        host.expire_change_requests(crate::kb::now_ms())?;
        let leftover = host.deliver_actions()?;
        if !leftover.delivered.is_empty() {
            tracing::info!("delivered {} action(s) left in the outbox by the last run", leftover.delivered.len());
        }
        Ok(host)
    }

    /// Delivers every action waiting in the outbox (blocking: the sink
    /// may write a file or wait for an HTTP answer).
    pub fn deliver_actions(&self) -> Result<Delivery, StoreError> {
        let _one = self.delivering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let delivery = outbox::deliver_pending(self.store().as_ref(), self.sink.as_ref())?;
        self.retry_at_ms.store(delivery.retry_at_ms.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        Ok(delivery)
    }

    /// Hands deliveries to a sink that waits on the network (see
    /// [`crate::outbox::Sink::inline`]) to the caller, which waits on
    /// [`Host::deliveries_wanted`] and calls [`Host::deliver_actions`]: a
    /// trigger's answer no longer waits for them. Other sinks stay inline.
    pub fn deliver_in_background(&self) {
        self.background.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves when a trigger has ended with deliveries for the background
    /// (see [`Host::deliver_in_background`]).
    pub async fn deliveries_wanted(&self) {
        self.deliveries.notified().await;
    }

    /// When a failed delivery is due to be tried again, if one waits.
    pub fn delivery_retry_at(&self) -> Option<u64> {
        Some(self.retry_at_ms.load(std::sync::atomic::Ordering::Relaxed)).filter(|at| *at > 0)
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
        // One config for the whole cascade: its subscriptions and depth.
        let config = self.config();
        let mut done = vec![];
        let mut queue: VecDeque<(FollowUp, u64, u32, Vec<String>)> = VecDeque::new();
        let enqueue = |queue: &mut VecDeque<_>, inv: &Invocation, chain: &[String]| {
            let mut chain = chain.to_vec();
            chain.push(inv.agent.clone());
            for f in cascade::follow_ups(&inv.followups, &config.subscriptions) {
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
            if depth > config.limits.max_cascade_depth {
                let mut path = chain.clone();
                path.push(f.agent.clone());
                let looped = chain.contains(&f.agent);
                let outcome = format!(
                    "cascade stopped at depth {depth} (limits.max_cascade_depth = {}): {}{}",
                    config.limits.max_cascade_depth,
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
        if self.background.load(std::sync::atomic::Ordering::Relaxed) && !self.sink.inline() {
            self.deliveries.notify_one();
            return Ok(done);
        }
        // The sink blocks (a file's fsync): off the async threads where the
        // runtime allows it.
        let delivered = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.deliver_actions()),
            _ => self.deliver_actions(),
        };
        if let Err(e) = delivered {
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
        crate::coord::expiry::expire(self.store().as_ref(), self.config().limits.change_request_ttl_ms, now_ms)
    }

    /// The config in force now. A reload puts a new one in force from the
    /// next host call; hold the returned one for decisions that must agree.
    pub fn config(&self) -> Arc<Config> {
        self.gate.config()
    }

    /// Looks at the agents folder and brings the agents in service in line
    /// with it: a new settled file is compiled and added, a changed one
    /// replaces its agent between invocations, a removed one takes no new
    /// invocations. A file that does not load is refused, and the version
    /// in service (if any) goes on. Each change is audited (agent `host`,
    /// `agent.loaded`, `agent.replaced`, `agent.removed`, `agent.refused`)
    /// with the name and the old and new sha256.
    ///
    /// Compiles (seconds, for a new component): call it off the async
    /// threads.
    pub fn reload_agents(&self) -> Result<AgentReload, StoreError> {
        use crate::audit::{AuditDraft, Decision, calls};
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let scan = {
            let mut folder = self.folder.lock().unwrap_or_else(PoisonError::into_inner);
            folder.set_settle(self.config().agents_settle);
            match folder.scan(SystemTime::now()) {
                Ok(scan) => scan,
                Err(e) => {
                    tracing::warn!("cannot read the agents folder {}: {e}", folder.dir().display());
                    return Ok(AgentReload::default());
                }
            }
        };
        let digest = self.config().digest.clone();
        let mut out = AgentReload { changes: vec![], again_after: scan.again_after };
        let mut unaudited = None;
        for change in scan.changes {
            let (call, args, outcome, change) = match change {
                FileChange::Changed { path, bytes, digest: new } => {
                    let name = stem(&path);
                    let old = self.runtime.agent(&name);
                    match self.runtime.prepare(&path, &bytes) {
                        Ok(agent) => {
                            let info = agent.info().clone();
                            self.runtime.install(agent);
                            self.refused.lock().unwrap_or_else(PoisonError::into_inner).remove(&path);
                            let args = serde_json::json!({
                                "name": name, "path": path, "old": old.as_ref().map(|o| o.digest.clone()), "new": new,
                            });
                            match old {
                                Some(old) => {
                                    let outcome = format!("replaced {name}: {} -> {}", short(&old.digest), short(&new));
                                    (calls::AGENT_REPLACED, args, outcome, AgentChange::Replaced { old, new: info })
                                }
                                None => (
                                    calls::AGENT_LOADED,
                                    args,
                                    format!("loaded {name} ({})", short(&new)),
                                    AgentChange::Loaded(info),
                                ),
                            }
                        }
                        Err(reason) => {
                            let serving = match &old {
                                Some(o) => format!("{name} {} keeps serving", short(&o.digest)),
                                None => "nothing was loaded".into(),
                            };
                            let refused = RefusedFile {
                                path: path.clone(),
                                digest: new.clone(),
                                reason: reason.clone(),
                                at_ms: crate::kb::now_ms(),
                            };
                            self.refused
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .insert(path.clone(), refused.clone());
                            let args = serde_json::json!({
                                "name": name, "path": path, "old": old.as_ref().map(|o| o.digest.clone()), "new": new,
                            });
                            let outcome = format!("refused {}: {reason}; {serving}", path.display());
                            tracing::warn!("{outcome}");
                            (calls::AGENT_REFUSED, args, outcome, AgentChange::Refused(refused))
                        }
                    }
                }
                FileChange::Gone { path } => {
                    self.refused.lock().unwrap_or_else(PoisonError::into_inner).remove(&path);
                    let name = stem(&path);
                    // Only the agent that came from this file goes.
                    match self.runtime.agent(&name).filter(|a| a.path == path) {
                        Some(_) => {
                            let Some(old) = self.runtime.remove(&name) else { continue };
                            let args =
                                serde_json::json!({ "name": name, "path": path, "old": old.digest, "new": null });
                            let outcome = format!(
                                "removed {name} ({}): it takes no new invocations; those running finish",
                                short(&old.digest)
                            );
                            (calls::AGENT_REMOVED, args, outcome, AgentChange::Removed(old))
                        }
                        None => continue,
                    }
                }
            };
            let mut draft = AuditDraft::host(call, &digest, args, outcome);
            if matches!(change, AgentChange::Refused(_)) {
                draft.decision = Decision::Invalid;
            } else {
                tracing::info!("{}", draft.outcome);
            }
            // The change has happened in the runtime already: a failed
            // audit write must not leave the gate's agent set behind it or
            // the remaining changes undone. The first error is returned
            // once all are applied.
            if let Err(e) = self.store().append_audit(draft) {
                tracing::error!("the audit entry of an agent change could not be written: {e}");
                unaudited.get_or_insert(e);
            }
            out.changes.push(change);
        }
        if out.changes.iter().any(|c| !matches!(c, AgentChange::Refused(_))) {
            self.gate.set_agents(self.runtime.agents().into_iter().map(|a| a.name).collect());
            for w in config_warnings(&self.config(), &self.runtime) {
                tracing::warn!("{w}");
            }
        }
        match unaudited {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The agent files refused since they last changed, and why.
    pub fn refused_agents(&self) -> Vec<RefusedFile> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Reads the config file again and, if it is valid whole and can apply
    /// live, puts it in force from the next host call: schema, ownership,
    /// rules, subscriptions, schedules and limits together (see
    /// [`crate::policy::reload`]). Audited either way (`config.reloaded`,
    /// with both digests and what changed, or `config.refused`, with why).
    /// Reads the store: call it off the async threads.
    pub fn reload_config(&self) -> Result<ConfigReload, StoreError> {
        use crate::audit::{AuditDraft, Decision, calls};
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.config();
        let refuse = |why: String, to: Option<&str>| -> Result<ConfigReload, StoreError> {
            tracing::warn!("config not reloaded: {why}");
            let args = serde_json::json!({ "file": old.file, "from": old.digest, "to": to });
            let mut draft = AuditDraft::host(
                calls::CONFIG_REFUSED,
                &old.digest,
                args,
                format!("not reloaded, the config in force stays: {why}"),
            );
            draft.decision = Decision::Invalid;
            self.store().append_audit(draft)?;
            Ok(ConfigReload::Refused(why))
        };
        let new = match Config::load(&old.file) {
            Ok(c) => c,
            Err(e) => return refuse(e.to_string(), None),
        };
        if new.digest == old.digest {
            return Ok(ConfigReload::Unchanged);
        }
        let restart = crate::policy::reload::needs_restart(&old, &new, self.runtime.memory_ceiling());
        if !restart.is_empty() {
            return refuse(
                format!(
                    "{}: this needs a restart of the host (the running host keeps what it has)",
                    restart.join("; ")
                ),
                Some(&new.digest),
            );
        }
        if let Err(e) = check_schedules(&new, &self.runtime) {
            return refuse(e.to_string(), Some(&new.digest));
        }
        let changes = crate::policy::reload::changes(&old, &new);
        let (from, to) = (old.digest.clone(), new.digest.clone());
        let file = new.file.clone();
        let warnings = config_warnings(&new, &self.runtime);
        let settings = match crate::gate::Settings::new(Arc::new(new)) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string(), Some(&to)),
        };
        for w in warnings {
            tracing::warn!("{w}");
        }
        self.gate.reconfigure(settings);
        let args = serde_json::json!({ "file": file, "from": from, "to": to, "changes": changes });
        let summary = if changes.is_empty() { "no change in effect".to_string() } else { changes.join("; ") };
        let outcome = format!("reloaded {}: {summary}", file.display());
        tracing::info!("{outcome}");
        self.store().append_audit(AuditDraft::host(calls::CONFIG_RELOADED, &to, args, outcome))?;
        Ok(ConfigReload::Applied { from, to, changes })
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

    /// The agents in service now.
    pub fn agents(&self) -> Vec<AgentInfo> {
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
        // A trigger caused by an audit entry (a schedule's fire) names it.
        let causation = causation.or(origin.cause);
        self.runtime.invoke(&self.gate, agent, &message, breakpoint, causation, depth, origin).await?.ok_or_else(|| {
            InvokeError::UnknownAgent {
                name: agent.to_string(),
                known: self.runtime.agents().into_iter().map(|a| a.name).collect(),
            }
        })
    }
}

fn store_of(gate: &Gate) -> &dyn Store {
    gate.store().as_ref()
}

/// An agent's name: its file's stem.
fn stem(path: &std::path::Path) -> String {
    path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string()
}

/// A digest's first 12 hex digits, for messages.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Every schedule must name an agent in service: a schedule that would
/// fire at nobody is refused (at start, and at a reload) with its line.
fn check_schedules(config: &Config, runtime: &Runtime) -> Result<(), ConfigError> {
    for s in &config.schedules {
        if !runtime.has_agent(&s.agent) {
            let loaded: Vec<String> = runtime.agents().into_iter().map(|a| a.name).collect();
            return Err(ConfigError {
                file: config.file.clone(),
                line: Some(s.line),
                message: format!(
                    "schedule `{}` names agent `{}`, which is not loaded (no {}; loaded: {})",
                    s.name,
                    s.agent,
                    config.agents_dir.join(format!("{}.wasm", s.agent)).display(),
                    loaded.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Audits the start: the config digest, the agents and their digests, and,
/// when they apply, that the config changed or the last run ended without
/// a stop entry (a crash or a kill).
fn record_start(store: &dyn Store, config: &Config, runtime: &Runtime) -> Result<(), StoreError> {
    use crate::audit::{AuditDraft, AuditFilter, HOST, calls};
    // This host's own last lifecycle entry: several hosts may share one
    // store (PostgreSQL), and another's start is not this one's crash.
    // Entries from before hosts named themselves count as this host's.
    let me = host_identity(config);
    let recent = store.audit(&AuditFilter { agent: Some(HOST.into()), limit: Some(256), ..Default::default() })?;
    let last = recent.into_iter().rev().find(|e| {
        let named = serde_json::from_str::<serde_json::Value>(&e.args)
            .ok()
            .and_then(|a| a.get("host").and_then(|h| h.as_str().map(str::to_string)));
        named.is_none_or(|h| h == me)
    });
    // The config last in force: the last start's, or a reload's since.
    let last_of = |call: &str| {
        store.audit(&AuditFilter {
            agent: Some(HOST.into()),
            call: Some(call.into()),
            limit: Some(1),
            ..Default::default()
        })
    };
    let last_start =
        last_of(calls::HOST_START)?.into_iter().chain(last_of(calls::CONFIG_RELOADED)?).max_by_key(|e| e.seq);
    if let Some(prev) = last_start.filter(|p| p.digest != config.digest) {
        store.append_audit(AuditDraft::host(
            calls::CONFIG_CHANGED,
            &config.digest,
            serde_json::json!({ "from": prev.digest, "to": config.digest, "file": config.file }),
            format!("config {} changed since the start at audit entry {}", config.file.display(), prev.seq),
        ))?;
    }
    let unclean = last.as_ref().is_some_and(|e| e.call == calls::HOST_START);
    let agents: serde_json::Map<_, _> = runtime.agents().into_iter().map(|a| (a.name, a.digest.into())).collect();
    let args = serde_json::json!({ "config": config.file, "agents": agents, "pid": std::process::id(), "host": me });
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
            &self.config().digest,
            serde_json::json!({ "pending_actions": pending, "host": host_identity(&self.config()) }),
            "stopped".into(),
        );
        if let Err(e) = self.store().append_audit(draft) {
            tracing::error!("could not audit the host's stop: {e}");
        }
    }
}

/// Which host this is, in its lifecycle entries: the machine and the
/// config file it runs from (two hosts on one machine run from two folders).
fn host_identity(config: &Config) -> String {
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let file = std::fs::canonicalize(&config.file).unwrap_or_else(|_| config.file.clone());
    format!("{machine}:{}", file.display())
}

/// Checks the config's ownership, rules and subscriptions against the
/// loaded agents.
fn config_warnings(config: &Config, runtime: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let file = config.file.display();
    for s in &config.subscriptions {
        if !runtime.has_agent(&s.agent) {
            out.push(format!("{file}:{}: subscription names agent `{}`, which is not loaded", s.line, s.agent));
        }
    }
    for r in config.rules.iter() {
        for a in r.agents.iter().filter(|a| !runtime.has_agent(a)) {
            out.push(format!("{file}:{}: rule `{}` names agent `{a}`, which is not loaded", r.line, r.name));
        }
    }
    for name in config.grants.keys().filter(|a| !runtime.has_agent(a)) {
        out.push(format!("{file}: [agents.{name}] grants to agent `{name}`, which is not loaded"));
    }
    for (kind, def) in &config.schema.kinds {
        for (field, f) in &def.fields {
            for name in f.writers.names() {
                if !runtime.has_agent(&name) {
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

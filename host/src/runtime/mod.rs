//! The wasm runtime: the engine, loading agent components, and running one
//! invocation in a fresh, limited instance.
//!
//! - [`bindings`]: host bindings generated from `wit/`.
//! - `state`: the per-invocation store data and the WIT host functions.
//! - `output`: agent stdout/stderr to the host log.
//!
//! State is kept apart by lifetime. App-wide: the [`wasmtime::Engine`] and
//! the linker. Per agent version: its compiled, pre-linked component
//! (`InstancePre`), swapped whole when its file changes (see
//! [`Runtime::install`]). Per invocation: a new `Store` with its own WASI
//! context, memory limiter, fuel and epoch deadline, dropped when the
//! invocation ends. An invocation holds the version it started on until it
//! ends, so a swap never changes an agent under a running invocation.
//!
//! # Sandbox defaults
//! An agent gets no preopened directories, no network (TCP, UDP and name
//! lookup are all off), no environment variables and no arguments. Its
//! stdin is closed. Clocks and randomness are the host's. Memory, fuel and
//! wall-clock time are bounded by `[limits]` in `concord.toml`.

pub mod bindings;
pub mod folder;
mod http;
mod output;
mod state;

use crate::audit::Decision;
use crate::gate::{Breakpoint, Caller, Gate};
use crate::kb::EntityRef;
use crate::policy::config::Limits;
use bindings::{AgentPre, types as wit};
use sha2::{Digest, Sha256};
use state::InvocationState;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtxBuilder;

/// How often the epoch advances; the granularity of `limits.timeout_ms`.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One file in the agents folder that is not a usable agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAgentFile {
    pub path: PathBuf,
    pub reason: String,
}

/// A file of the agents folder that a running host refused to load (see
/// [`crate::Host::reload_agents`]): what `concord agents` lists beside the
/// agents in service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RefusedFile {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// sha256 of the refused bytes, hex.
    pub digest: String,
    pub reason: String,
    /// When it was refused, in ms since the epoch.
    pub at_ms: u64,
}

/// Why the agents could not be loaded. The host does not start half-loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot read the agents folder {dir}: {reason}")]
    Folder { dir: PathBuf, reason: String },
    #[error("no agents in {dir}: build the examples with `just build-agents`, or drop *.wasm components there")]
    NoAgents { dir: PathBuf },
    #[error("{}", describe_bad(.0))]
    BadFiles(Vec<BadAgentFile>),
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

fn describe_bad(files: &[BadAgentFile]) -> String {
    let mut s = format!("{} agent file(s) cannot be loaded; fix or remove them:", files.len());
    for f in files {
        s.push_str(&format!("\n  {}: {}", f.path.display(), f.reason));
    }
    s
}

/// A loaded agent, as `concord agents` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The file stem: `agents/sales.wasm` is `sales`.
    pub name: String,
    /// sha256 of the component file, hex.
    pub digest: String,
    pub path: PathBuf,
    /// When it was loaded, in ms since the epoch.
    pub loaded_at_ms: u64,
}

/// One version of one agent, compiled and linked: what an invocation runs.
/// Made by [`Runtime::prepare`], put in service by [`Runtime::install`].
pub struct LoadedAgent {
    info: AgentInfo,
    pre: AgentPre<InvocationState>,
}

impl LoadedAgent {
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }
}

impl fmt::Debug for LoadedAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedAgent").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The agents in service, by name. Replaced whole (copy on write) on every
/// change, so a reader sees one set, never a half-made one.
type AgentSet = BTreeMap<String, Arc<LoadedAgent>>;

/// What an agent is invoked with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: String,
    pub entity: Option<EntityRef>,
    /// JSON text.
    pub body: String,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent's report of what it decided and why.
    Ok(String),
    /// The agent returned an error.
    Failed(String),
    /// The invocation was stopped: a trap, a limit, or a failed instantiation.
    Trapped(String),
    /// The host stopped it from outside (a shutdown's drain ran out), at
    /// its next host call or within a tick of wasm.
    Stopped(String),
}

impl Outcome {
    pub fn decision(&self) -> Decision {
        match self {
            Outcome::Ok(_) => Decision::Allowed,
            Outcome::Failed(_) => Decision::Failed,
            Outcome::Trapped(_) => Decision::Trapped,
            Outcome::Stopped(_) => Decision::Stopped,
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Outcome::Ok(s) | Outcome::Failed(s) | Outcome::Trapped(s) | Outcome::Stopped(s) => s,
        }
    }

    /// `ok`, `failed`, `trapped` or `stopped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Failed(_) => "failed",
            Outcome::Trapped(_) => "trapped",
            Outcome::Stopped(_) => "stopped",
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(s) => write!(f, "ok: {s}"),
            Outcome::Failed(s) => write!(f, "failed: {s}"),
            Outcome::Trapped(s) => write!(f, "trapped: {s}"),
            Outcome::Stopped(s) => write!(f, "stopped: {s}"),
        }
    }
}

/// Where a trigger came from, for the invocation's start entry, and who
/// wants its id as soon as it has one.
#[derive(Default)]
pub struct Origin {
    /// Who asked for it, such as `http:alice` (a token's name).
    pub by: Option<String>,
    /// The request's idempotency key.
    pub key: Option<String>,
    /// Called with the invocation id once the start is audited, before
    /// the agent runs.
    pub started: Option<Box<dyn FnOnce(u64) + Send>>,
    /// The audit entry that caused the trigger (a schedule's fire): the
    /// invocation's causation.
    pub cause: Option<u64>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("by", &self.by)
            .field("key", &self.key)
            .field("cause", &self.cause)
            .finish_non_exhaustive()
    }
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The invocation id: the seq of its `invocation.start` audit entry.
    pub id: u64,
    pub agent: String,
    pub outcome: Outcome,
    /// Host calls the agent made.
    pub host_calls: u32,
    /// The invocation that caused this one, and how deep in its cascade.
    pub causation: Option<u64>,
    pub depth: u32,
    /// What it committed and requested, for the dispatcher.
    pub followups: crate::gate::FollowUps,
}

/// Counts one invocation waiting for a slot while it lives (a stopped
/// invocation's wait is dropped, and counted out, too).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("concord-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine and every loaded agent.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    agents: arc_swap::ArcSwap<AgentSet>,
    /// Serializes changes of `agents` (readers never wait for it).
    changing: std::sync::Mutex<()>,
    /// The most linear memory an instance can have: the pool's slots were
    /// sized for it when the engine was made, so a config reload may lower
    /// `limits.memory_mib` but not raise it past this.
    memory_ceiling: usize,
    cache: Option<wasmtime::Cache>,
    /// One permit per pool slot: a full pool fails at once, so invocations
    /// past it wait here instead.
    slots: tokio::sync::Semaphore,
    /// Set (with the reason) to stop every invocation in flight, and any
    /// that starts after (see [`Runtime::stop`]).
    stop: tokio::sync::watch::Sender<Option<String>>,
    /// Invocations started (audited) and waiting for a pool slot.
    waiting: std::sync::atomic::AtomicUsize,
    _ticker: EpochTicker,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("agents", &self.agents.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How many invocations may be live at once: the size of the instance
/// pool. Past it, invocations wait for a slot (see [`Runtime::invoke`]).
pub const MAX_LIVE_INVOCATIONS: u32 = 128;

/// How much of a pool slot's linear memory stays mapped when its instance
/// is dropped. By default wasmtime resets a slot with `madvise`, which on
/// this 2-core VM means a TLB shootdown per invocation: profiled, dropping
/// the store was the largest single cost of a trivial invocation. Up to
/// this many bytes are instead reset in place (with `PAGEMAP_SCAN`, where
/// the kernel has it, only the pages the guest dirtied), so the next
/// instance starts on resident pages. Measured: invocation start median
/// 94 → 32–39 µs; idle and per-invocation memory unchanged (a slot keeps
/// only the pages its guests touched, and only while it is warm).
const KEEP_RESIDENT: usize = 2 << 20;

fn engine(limits: &Limits, cache_dir: Option<&Path>) -> Result<(Engine, Option<wasmtime::Cache>), LoadError> {
    let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    // Both CPU bounds: fuel is deterministic, the epoch deadline bounds
    // wall-clock time (which fuel alone does not, e.g. in host calls).
    config.consume_fuel(true);
    config.epoch_interruption(true);
    // Instances come from a pre-reserved pool instead of fresh mmaps. A Rust
    // agent today has 3 core instances, 2 tables and 1 memory; the totals
    // leave headroom. The pool's memory size equals the limit, so growth past
    // it is refused by the limiter first, with its clear message.
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(MAX_LIVE_INVOCATIONS)
        .total_core_instances(MAX_LIVE_INVOCATIONS * 4)
        .total_memories(MAX_LIVE_INVOCATIONS)
        .total_tables(MAX_LIVE_INVOCATIONS * 3)
        .total_stacks(MAX_LIVE_INVOCATIONS)
        .max_memory_size(limits.memory_bytes)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    // Compiled components are cached on disk, keyed by their bytes and the
    // engine's settings, so a restart does not recompile unchanged agents.
    let cache = match cache_dir {
        Some(dir) => {
            let dir = std::path::absolute(dir)
                .map_err(|e| LoadError::Engine(format!("cache folder {}: {e}", dir.display())))?;
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(dir);
            let cache = wasmtime::Cache::new(cc).map_err(engine_err)?;
            config.cache(Some(cache.clone()));
            Some(cache)
        }
        None => None,
    };
    Ok((Engine::new(&config).map_err(engine_err)?, cache))
}

/// What every agent is linked against: WASI, outbound HTTP, and the
/// `concord:agent` world's imports.
fn linker(engine: &Engine) -> Result<Linker<InvocationState>, LoadError> {
    let engine_err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
    let mut linker: Linker<InvocationState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err)?;
    // Outbound HTTP is linked for every agent and granted to none: each
    // request is checked against the agent's grant (see `gate::http`).
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(engine_err)?;
    bindings::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
    Ok(linker)
}

/// Compiles the agent at `path` into `cache_dir` with the engine settings
/// a host of these `limits` makes ([`Runtime::load`] then finds it there
/// instead of compiling), and checks that it fits the agent world.
/// `concord build` calls it, so that a host start after a build does not
/// compile. Returns how long the compile took (near zero when the cache
/// already held it).
pub fn precompile(path: &Path, limits: &Limits, cache_dir: &Path) -> Result<Duration, LoadError> {
    let (engine, _cache) = engine(limits, Some(cache_dir))?;
    let linker = linker(&engine)?;
    let started = Instant::now();
    Runtime::load_one(&engine, &linker, path)
        .map_err(|reason| LoadError::BadFiles(vec![BadAgentFile { path: path.to_path_buf(), reason }]))?;
    Ok(started.elapsed())
}

/// The `*.wasm` files of an agents folder, sorted. Errors if there are none.
pub fn agent_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let folder_err = |e: std::io::Error| LoadError::Folder { dir: dir.to_path_buf(), reason: e.to_string() };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(folder_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(LoadError::NoAgents { dir: dir.to_path_buf() });
    }
    Ok(paths)
}

/// The agent names an agents folder would load (file stems), without
/// compiling anything.
pub fn agent_names(dir: &Path) -> Result<Vec<String>, LoadError> {
    Ok(agent_files(dir)?.iter().filter_map(|p| p.file_stem()?.to_str().map(String::from)).collect())
}

/// An agent's name is its file's stem: letters, digits, `_` and `-`, and
/// none of the [`RESERVED_NAMES`].
pub(crate) fn check_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("`{name}` is not a valid agent name: rename the file to letters, digits, `_` or `-`"));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "`{name}` is a name the audit uses for what is not an agent ({}): rename the file",
            RESERVED_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// Names the audit uses for what is not an agent: the host's lifecycle
/// (`host`), the API's refusals (`api`), triggers over HTTP (`http:NAME`
/// in an invocation's start), and operators (`human:NAME`). An agent by
/// one of these names could pass for them.
pub const RESERVED_NAMES: [&str; 4] = [crate::audit::HOST, crate::audit::API, "http", "human"];

impl Runtime {
    /// Loads every `*.wasm` in `dir`. Every bad file is reported, and none
    /// is skipped: the runtime loads whole or not at all.
    ///
    /// `cache_dir`, if given, holds compiled components between runs.
    pub fn load(dir: &Path, limits: Limits, cache_dir: Option<&Path>) -> Result<Runtime, LoadError> {
        let paths = agent_files(dir)?;

        let (engine, cache) = engine(&limits, cache_dir)?;
        let linker = linker(&engine)?;

        let mut agents = BTreeMap::new();
        let mut bad = Vec::new();
        for path in paths {
            match Self::load_one(&engine, &linker, &path) {
                Ok(agent) => {
                    agents.insert(agent.info.name.clone(), Arc::new(agent));
                }
                Err(reason) => bad.push(BadAgentFile { path, reason }),
            }
        }
        if !bad.is_empty() {
            return Err(LoadError::BadFiles(bad));
        }
        Ok(Runtime {
            _ticker: EpochTicker::start(&engine),
            engine,
            linker,
            agents: arc_swap::ArcSwap::from_pointee(agents),
            changing: std::sync::Mutex::new(()),
            memory_ceiling: limits.memory_bytes,
            cache,
            slots: tokio::sync::Semaphore::new(MAX_LIVE_INVOCATIONS as usize),
            stop: tokio::sync::watch::Sender::new(None),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Stops every invocation in flight, and every one started after:
    /// each ends as [`Outcome::Stopped`] with `why`, at its next host call
    /// or wasm tick, and is audited so. For a shutdown whose drain ran out.
    pub fn stop(&self, why: &str) {
        self.stop.send_replace(Some(why.to_string()));
    }

    /// Pool slots taken by running invocations (at most
    /// [`MAX_LIVE_INVOCATIONS`]).
    pub fn slots_in_use(&self) -> usize {
        MAX_LIVE_INVOCATIONS as usize - self.slots.available_permits()
    }

    /// Invocations waiting for a pool slot.
    pub fn waiting_for_slot(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Compiles and links `bytes`, read from `path`, against the world,
    /// without putting them in service. Slow (a compile, unless the cache
    /// has it) and blocking: call it off the async threads. `Err` says why
    /// the file is not a usable agent.
    pub fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<LoadedAgent, String> {
        Self::compile(&self.engine, &self.linker, path, bytes)
    }

    /// Puts `agent` in service under its name, in place of the version
    /// there, if any (returned). Invocations already running go on with the
    /// version they started on; every later one gets this one.
    pub fn install(&self, agent: LoadedAgent) -> Option<AgentInfo> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut set = AgentSet::clone(&self.agents.load());
        let old = set.insert(agent.info.name.clone(), Arc::new(agent));
        self.agents.store(Arc::new(set));
        old.map(|a| a.info.clone())
    }

    /// Takes the agent `name` out of service: it takes no new invocations,
    /// and those running finish on it. Returns it, if it was in service.
    pub fn remove(&self, name: &str) -> Option<AgentInfo> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut set = AgentSet::clone(&self.agents.load());
        let old = set.remove(name);
        self.agents.store(Arc::new(set));
        old.map(|a| a.info.clone())
    }

    /// The most linear memory `limits.memory_mib` may give an invocation
    /// without a restart: the size of the pool's memory slots.
    pub fn memory_ceiling(&self) -> usize {
        self.memory_ceiling
    }

    fn load_one(engine: &Engine, linker: &Linker<InvocationState>, path: &Path) -> Result<LoadedAgent, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        Self::compile(engine, linker, path, &bytes)
    }

    fn compile(
        engine: &Engine,
        linker: &Linker<InvocationState>,
        path: &Path,
        bytes: &[u8],
    ) -> Result<LoadedAgent, String> {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        check_agent_name(&name)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let component = Component::from_binary(engine, bytes).map_err(|e| {
            let e = format!("{e:#}");
            if bytes.starts_with(b"\0asm\x01\0\0\0") {
                format!("this is a core wasm module, not a component; build it for wasm32-wasip2 ({e})")
            } else {
                format!("not a valid wasm component ({e})")
            }
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("imports something the `concord:agent/agent` world does not offer ({e:#})"))?;
        let pre = AgentPre::new(pre)
            .map_err(|e| format!("does not export the `concord:agent/agent` world's handler ({e:#})"))?;
        Ok(LoadedAgent {
            info: AgentInfo { name, digest, path: path.to_path_buf(), loaded_at_ms: crate::kb::now_ms() },
            pre,
        })
    }

    /// The agents in service now, by name.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents.load().values().map(|a| a.info.clone()).collect()
    }

    /// The agent `name` in service now, if any.
    pub fn agent(&self, name: &str) -> Option<AgentInfo> {
        self.agents.load().get(name).map(|a| a.info.clone())
    }

    /// Whether an agent named `name` is in service now.
    pub fn has_agent(&self, name: &str) -> bool {
        self.agents.load().contains_key(name)
    }

    /// Compiled-component cache hits and misses since start (zeros without
    /// a cache).
    pub fn cache_stats(&self) -> (usize, usize) {
        self.cache.as_ref().map_or((0, 0), |c| (c.cache_hits(), c.cache_misses()))
    }

    /// Runs one invocation in a fresh instance and audits its start and end.
    /// `Err` is a host fault (the audit could not be written); everything the
    /// agent does, traps included, is an [`Outcome`].
    #[expect(clippy::too_many_arguments, reason = "what one invocation is run with, each its own concern")]
    pub(crate) async fn invoke(
        &self,
        gate: &Arc<Gate>,
        agent: &str,
        message: &Message,
        breakpoint: Option<Breakpoint>,
        causation: Option<u64>,
        depth: u32,
        mut origin: Origin,
    ) -> Result<Option<Invocation>, crate::gate::HostFault> {
        // The version in service now: the invocation runs on it to the end,
        // whatever is installed meanwhile.
        let Some(loaded) = self.agents.load().get(agent).cloned() else {
            return Ok(None);
        };
        // Limits are the config's at the start, for the whole invocation.
        let limits = gate.config().limits_for(agent);
        let started = Instant::now();
        let args = serde_json::json!({
            "kind": message.kind,
            "entity": message.entity.as_ref().map(EntityRef::key),
            "body": message.body,
        });
        let mut args = args;
        if let Some(by) = &origin.by {
            args["by"] = by.as_str().into();
        }
        if let Some(key) = &origin.key {
            args["idempotency_key"] = key.as_str().into();
        }
        let id = gate.start_invocation(agent, &loaded.info.digest, args, message.entity.as_ref(), causation).await?;
        if let Some(started) = origin.started.take() {
            started(id);
        }
        let caller = Arc::new(Caller::new(agent.to_string(), loaded.info.digest.clone(), id, causation, breakpoint));
        let mut stop = self.stop.subscribe();
        let running = async {
            // A permit per live Store: it is released when `run` has dropped it.
            let waiting = Waiting::new(&self.waiting);
            let slot = self.slots.acquire().await;
            drop(waiting);
            match slot {
                // The epoch deadline bounds time spent running wasm; this
                // bounds the rest too (a wait on the network, in a host
                // call), a little later so that the first names the trap
                // when both could.
                Ok(_permit) => {
                    let run = self.run(&loaded, &limits, gate, caller.clone(), message, id);
                    match tokio::time::timeout(limits.timeout + 2 * EPOCH_TICK, run).await {
                        Ok(outcome) => outcome,
                        Err(_) => Outcome::Trapped(format!(
                            "time limit: still running after {} ms ({}), waiting in a host call",
                            limits.timeout.as_millis(),
                            limits.timeout_key
                        )),
                    }
                }
                Err(_) => Outcome::Trapped("the runtime is shutting down".into()),
            }
        };
        // Stopped from outside: the run is dropped where it waits (a host
        // call, a slot, or a wasm tick, at which every invocation yields).
        let outcome = tokio::select! {
            outcome = running => outcome,
            Ok(why) = stop.wait_for(Option::is_some) => Outcome::Stopped(why.clone().unwrap_or_default()),
        };
        match &outcome {
            Outcome::Ok(s) => tracing::debug!(agent, invocation = id, "ok: {s}"),
            Outcome::Failed(s) => tracing::warn!(agent, invocation = id, "failed: {s}"),
            Outcome::Trapped(s) => tracing::warn!(agent, invocation = id, "trapped: {s}"),
            Outcome::Stopped(s) => tracing::warn!(agent, invocation = id, "stopped: {s}"),
        }
        // A host fault inside the run has already surfaced as a trap; if the
        // audit cannot record even the end, that is the host's error.
        gate.end_invocation(&caller, outcome.decision(), outcome.text(), started).await?;
        Ok(Some(Invocation {
            id,
            agent: agent.to_string(),
            host_calls: caller.calls(),
            outcome,
            causation,
            depth,
            followups: caller.take_followups(),
        }))
    }

    async fn run(
        &self,
        loaded: &LoadedAgent,
        limits: &Limits,
        gate: &Arc<Gate>,
        caller: Arc<Caller>,
        message: &Message,
        id: u64,
    ) -> Outcome {
        let caller_causation = caller.causation;
        let name = &loaded.info.name;
        let stderr = output::AgentOutput::new(name, "stderr", limits.output_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(output::AgentOutput::new(name, "stdout", limits.output_bytes))
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = InvocationState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(limits.memory_bytes).trap_on_grow_failure(true).build(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            outbound: http::Outbound { gate: gate.clone(), caller: caller.clone() },
            caller,
            gate: gate.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if let Err(e) = store.set_fuel(limits.fuel) {
            return Outcome::Trapped(format!("cannot set fuel: {e:#}"));
        }
        // At every tick the invocation yields to the executor, so a busy
        // agent shares its thread with the others (and can be stopped, see
        // `invoke`); past its time limit it traps.
        let ticks = limits.timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX);
        let mut elapsed = 0u64;
        store.set_epoch_deadline(1);
        let halting = store.data().caller.clone();
        store.epoch_deadline_callback(move |_| {
            // A limit reached in a call that could not trap (see
            // `Caller::halted`) stops the invocation here.
            if let Some(why) = halting.halted() {
                return Err(crate::gate::HostFault::Limit(why.to_string()).into());
            }
            elapsed += 1;
            Ok(if elapsed >= ticks { wasmtime::UpdateDeadline::Interrupt } else { wasmtime::UpdateDeadline::Yield(1) })
        });

        let instance = match loaded.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => return Outcome::Trapped(describe_trap(&e, limits, "instantiation failed")),
        };
        let msg = wit::Message {
            kind: message.kind.clone(),
            entity: message.entity.clone().map(Into::into),
            body: message.body.clone(),
            invocation: id,
            causation: caller_causation,
        };
        match instance.concord_agent_handler().call_handle(&mut store, &msg).await {
            Ok(Ok(report)) => Outcome::Ok(bounded_report(report)),
            Ok(Err(error)) => Outcome::Failed(bounded_report(error)),
            Err(e) => {
                let mut why = describe_trap(&e, limits, "trap");
                if let Some(tail) = stderr.tail() {
                    why.push_str(&format!(" (agent stderr: {tail})"));
                }
                Outcome::Trapped(why)
            }
        }
    }
}

/// The most of an agent's report (or error) the host keeps: what `concord
/// run`, the API and the invocation's status show. An agent's memory limit
/// is the only other bound, and a 40 MiB report printed whole floods the
/// terminal and the API's clients. (The audit keeps `audit_arg_bytes`.)
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// Cuts `text` to [`MAX_REPORT_BYTES`] at a character boundary, saying so.
fn bounded_report(mut text: String) -> String {
    let total = text.len();
    if crate::audit::cut_to(&mut text, MAX_REPORT_BYTES) {
        text.push_str(&format!("… [cut: the report was {total} bytes; the host keeps {MAX_REPORT_BYTES}]"));
    }
    text
}

/// Turns a wasmtime error into a sentence that names the limit involved.
/// The wasm backtrace is left out: it is long, and the trap kind plus the
/// agent's last stderr lines say more to an operator.
fn describe_trap(e: &wasmtime::Error, limits: &Limits, what: &str) -> String {
    if let Some(fault) = e.downcast_ref::<crate::gate::HostFault>() {
        return fault.to_string();
    }
    let root = e.root_cause().to_string();
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => format!("CPU limit: all {} fuel consumed ({})", limits.fuel, limits.fuel_key),
        Some(Trap::Interrupt) => {
            format!("time limit: still running after {} ms ({})", limits.timeout.as_millis(), limits.timeout_key)
        }
        Some(Trap::StackOverflow) => "stack overflow: the wasm call stack is exhausted".into(),
        Some(Trap::UnreachableCodeReached) => "trap: wasm `unreachable` executed (a Rust panic or abort)".into(),
        Some(Trap::MemoryOutOfBounds) => {
            "trap: out-of-bounds memory access (in Rust guests, often an overflow of the shadow stack)".into()
        }
        Some(trap) => format!("{what}: {trap}"),
        None if format!("{e:#}").contains("forcing trap when growing memory") => {
            format!("memory limit: tried to grow past {} MiB ({})", limits.memory_bytes >> 20, limits.memory_key)
        }
        None => format!("{what}: {root}"),
    }
}

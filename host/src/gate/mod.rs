//! The gate: the one place every host call passes through.
//!
//! For each call an agent makes, the gate (1) counts it against the
//! invocation's limits and stops at a [`Breakpoint`] if one is set, (2) asks
//! [`Policy`] whether the call is allowed, (3) carries it out on the
//! [`Store`], and (4) writes the call's audit entry, whatever the outcome.
//! An operation's audit entry is written by the store in the operation's own
//! transaction. New host calls go here too, so none can skip policy or audit.
//!
//! Errors come in two layers: the inner `Result` is what the agent sees (a
//! conflict, a refusal); the outer [`HostFault`] (a store failure, or a
//! per-invocation limit) traps the invocation.
//!
//! Where things are: this file holds what every call shares ([`Caller`],
//! [`Breakpoint`], [`Settings`], the entry check, the audit draft and the
//! invocation's start and end entries); one file per call or family holds
//! its checks, in the order they run:
//!
//! | file | calls | checks, after `limits.max_host_calls` and a breakpoint |
//! |---|---|---|
//! | `reads.rs` | `kb.get`, `kb.history`, `kb.recent`, `coord.changes-since-read` | the entity (`schema`); `history`'s limit ([`MAX_HISTORY`]) |
//! | `log.rs` | `kb.log` | `limits.max_call_bytes` (over it, the invocation stops) |
//! | `commit.rs` | `kb.commit` | `limits.max_call_bytes`; ownership and schema; in the writer: versions, pins, leases, fences, rules |
//! | `act.rs` | `coord.act` | `limits.max_call_bytes`; kind, key, payload, entity (`schema`); `actions:` grants; the action rate; in the writer: the version, pins, rules |
//! | `requests.rs` | `coord.request-change`, `coord.resolve-change` | `limits.max_call_bytes`; the owner loaded, something proposed, the owner able to apply it; resolved once, by its owner |
//! | `http.rs` | `http.request` (an agent's `wasi:http` request) | `limits.max_http_requests`; the URL; the grant `agents.NAME.http` on the normalised target; `limits.max_call_bytes` on the body; then the exchange, within `limits.http_timeout_ms` and `limits.max_http_response_bytes` |
//! | `model.rs` | `model.complete` | the model declared (`models`) and granted (`agents.NAME.models`); `limits.max_call_bytes` on the prompt; `agents.NAME.tokens_per_invocation`, then `tokens_per_day` |
//! | `leases.rs` | `coord.lease`, `coord.renew`, `coord.release` | who may lease the kind, `limits.lease_max_ms`; in the store: the live lease, the token |
//!
//! A refusal is written into its entry by `refuse.rs` (or names its rule
//! where it is made): every refusal names the rule that decided it, as a
//! test in `tests/e2e/hardening.rs` checks for every call.

use crate::audit::{self, AuditDraft, Decision, calls};
use crate::kb::{Actor, ChangeRequest, Conflict, Denial, EntityRef, Event, Store, StoreError};
use crate::metrics::GateMetrics;
use crate::policy::config::Config;
use crate::policy::secrets::{SecretError, Secrets};
use crate::policy::{Policy, Refusal};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

mod act;
mod commit;
pub(crate) mod http;
mod leases;
mod log;
mod model;
mod reads;
mod refuse;
mod requests;

pub use model::{ChatMessage, ModelError, ModelRequest};
use refuse::{mark_conflict, mark_denial, mark_refusal};

/// A host call that must stop the invocation (a trap) rather than be
/// answered: a broken host invariant, or a per-invocation limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostFault {
    /// The store failed (a failed audit write, say). Not the agent's doing.
    #[error("host fault: {0}")]
    Store(#[from] StoreError),
    /// The agent went past a per-invocation limit.
    #[error("limit: {0}")]
    Limit(String),
}

/// Why a commit, action or lease was refused. Mirrors the WIT `write-error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("conflict: {0}")]
    Conflict(Box<Conflict>),
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Denied(Box<Denial>),
}

/// Work an invocation leaves for the dispatcher: its committed changes (for
/// subscriptions) and its change requests (for the owners).
#[derive(Debug, Clone, Default)]
pub struct FollowUps {
    pub events: Vec<Event>,
    pub requests: Vec<ChangeRequest>,
}

/// Who is calling: fixed for one invocation.
#[derive(Debug)]
pub struct Caller {
    pub agent: String,
    pub digest: String,
    pub invocation: u64,
    /// The invocation that caused this one.
    pub causation: Option<u64>,
    /// Host calls made so far by this invocation.
    calls: AtomicU32,
    /// Outbound HTTP requests made so far (`limits.max_http_requests`).
    http_requests: AtomicU32,
    /// Model tokens spent so far (`agents.NAME.tokens_per_invocation`).
    model_tokens: std::sync::atomic::AtomicU64,
    /// Set when a call that cannot trap (an outbound request, answered
    /// through its future) found the invocation past a limit: the runtime
    /// stops the invocation at its next tick (see [`Caller::halted`]).
    halt: std::sync::OnceLock<String>,
    breakpoint: Option<Breakpoint>,
    followups: Mutex<FollowUps>,
}

impl Caller {
    /// Who is calling. The runtime makes one per invocation; an embedder
    /// calling the gate natively (a Rust-side agent, a benchmark) makes its
    /// own, with an invocation id from [`Gate::start_invocation`].
    pub fn new(
        agent: String,
        digest: String,
        invocation: u64,
        causation: Option<u64>,
        breakpoint: Option<Breakpoint>,
    ) -> Self {
        Self {
            agent,
            digest,
            invocation,
            causation,
            calls: AtomicU32::new(0),
            http_requests: AtomicU32::new(0),
            model_tokens: std::sync::atomic::AtomicU64::new(0),
            halt: std::sync::OnceLock::new(),
            breakpoint,
            followups: Mutex::default(),
        }
    }

    fn actor(&self) -> Actor {
        Actor { name: self.agent.clone(), invocation: self.invocation }
    }

    /// Takes what the invocation left for the dispatcher.
    pub fn take_followups(&self) -> FollowUps {
        std::mem::take(&mut *self.followups.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn follow(&self, f: impl FnOnce(&mut FollowUps)) {
        f(&mut self.followups.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Why the invocation must stop, if a call found it past a limit it
    /// could not trap on itself.
    pub fn halted(&self) -> Option<&str> {
        self.halt.get().map(String::as_str)
    }

    /// How many host calls this invocation has made.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Pauses one invocation just before a given host call, until released.
///
/// This makes interleavings exact: a test (or a script line with
/// `pause_before`) starts an invocation with a breakpoint, waits until it is
/// [`reached`](Breakpoint::reached), runs other invocations, then
/// [`release`](Breakpoint::release)s it. No sleeps, no timing luck.
#[derive(Debug, Clone)]
pub struct Breakpoint {
    call: String,
    occurrence: u32,
    hits: Arc<AtomicU32>,
    reached: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Breakpoint {
    /// Pauses before the `occurrence`-th (from 1) call named `call`, such as
    /// `kb.commit`.
    pub fn before(call: &str, occurrence: u32) -> Self {
        Self {
            call: call.to_string(),
            occurrence: occurrence.max(1),
            hits: Arc::default(),
            reached: watch::Sender::new(false),
            released: watch::Sender::new(false),
        }
    }

    /// Waits until the invocation is paused at the breakpoint.
    pub async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether the invocation has reached the breakpoint.
    pub fn is_reached(&self) -> bool {
        *self.reached.borrow()
    }

    /// Lets the paused invocation go on (or lets it pass without stopping,
    /// if it has not got there yet).
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    async fn check(&self, call: &str) {
        if call != self.call || self.hits.fetch_add(1, Ordering::SeqCst) + 1 != self.occurrence {
            return;
        }
        self.reached.send_replace(true);
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// What the gate decides with: a config, the policy made from it, and the
/// secrets it grants (read from the environment). Replaced whole by a
/// config reload ([`Gate::reconfigure`]). A call that decides twice (a
/// commit's ownership, then its rules in the writer) decides both times on
/// the one snapshot it took at its start.
#[derive(Debug)]
pub struct Settings {
    pub config: Arc<Config>,
    pub policy: Arc<Policy>,
    pub secrets: Arc<Secrets>,
}

impl Settings {
    /// Reads the value of every secret an agent is granted from the
    /// environment: a missing one is an error that names its variable.
    pub fn new(config: Arc<Config>) -> Result<Self, SecretError> {
        // Secrets an agent is granted, and secrets a model sends.
        let used =
            config.grants.values().flat_map(|g| &g.secrets).chain(config.models.values().flat_map(|m| &m.secret));
        let secrets = Arc::new(Secrets::resolve(&config.secrets, used, |var| std::env::var(var).ok())?);
        let policy = Arc::new(Policy::new(config.schema.clone()));
        Ok(Self { config, policy, secrets })
    }
}

/// Applies policy and audit to every host call. Shared by all invocations.
#[derive(Debug)]
pub struct Gate {
    store: Arc<dyn Store>,
    settings: arc_swap::ArcSwap<Settings>,
    /// The agents in service: a change request goes to one of them.
    agents: arc_swap::ArcSwap<std::collections::BTreeSet<String>>,
    /// Each agent's actions in the last minute and hour.
    rate: crate::policy::rate::ActionRate,
    /// Each agent's model tokens today.
    tokens: crate::policy::tokens::DailyTokens,
    metrics: GateMetrics,
}

/// The longest idempotency key of an action, in bytes: keys are printed
/// in every listing of the outbox.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Largest `limit` a `history` call may ask for.
pub const MAX_HISTORY: u32 = 1000;

impl Gate {
    /// `agents`: the names of the loaded agents. `settings`: see
    /// [`Settings::new`].
    pub fn new(store: Arc<dyn Store>, settings: Settings, agents: std::collections::BTreeSet<String>) -> Self {
        let config = &settings.config;
        let rate =
            crate::policy::rate::ActionRate::new(config.limits.actions_per_minute, config.limits.actions_per_hour);
        Self {
            store,
            settings: arc_swap::ArcSwap::from_pointee(settings),
            agents: arc_swap::ArcSwap::from_pointee(agents),
            rate,
            tokens: crate::policy::tokens::DailyTokens::default(),
            metrics: GateMetrics::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.settings.load().policy.clone()
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.settings.load().config.clone()
    }

    /// Puts `settings` in force from the next host call on: calls under
    /// way finish on the settings they started with.
    pub fn reconfigure(&self, settings: Settings) {
        self.rate.set_limits(settings.config.limits.actions_per_minute, settings.config.limits.actions_per_hour);
        self.settings.store(Arc::new(settings));
    }

    /// The agents in service, for change requests (see
    /// [`crate::runtime::Runtime::install`]).
    pub fn set_agents(&self, agents: std::collections::BTreeSet<String>) {
        self.agents.store(Arc::new(agents));
    }

    /// What the gate has counted (for `GET /metrics`).
    pub fn metrics(&self) -> &GateMetrics {
        &self.metrics
    }

    /// Answers once everything the store has shown anyone is durable (see
    /// [`Store::sync_then`]): what the host is about to tell the outside
    /// world can no longer be taken back by a crash.
    pub async fn sync(&self) -> Result<(), HostFault> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.store.sync_then(Box::new(move |r| {
            let _ = done.send(r);
        }));
        answer.await.map_err(|_| StoreError::Backend("the store dropped a sync unanswered".into()))??;
        Ok(())
    }

    fn count(&self, draft: &AuditDraft) {
        self.metrics.count(&draft.agent, &draft.call, draft.decision);
    }

    fn count_entry(&self, entry: &crate::audit::AuditEntry) {
        self.metrics.count(&entry.agent, &entry.call, entry.decision);
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, HostFault> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?;
        Ok(result?)
    }

    fn draft(&self, caller: &Caller, call: &str, entities: Vec<String>, args: serde_json::Value) -> AuditDraft {
        self.draft_with(caller, call, entities, args.to_string())
    }

    /// [`Gate::draft`], with the arguments already serialized.
    fn draft_with(&self, caller: &Caller, call: &str, entities: Vec<String>, args: String) -> AuditDraft {
        AuditDraft {
            agent: caller.agent.clone(),
            digest: caller.digest.clone(),
            invocation: Some(caller.invocation),
            call: call.to_string(),
            entities,
            arg_bytes: args.len(),
            args: audit::bounded(args, self.settings.load().config.limits.audit_arg_bytes),
            decision: Decision::Allowed,
            rule: None,
            peer: None,
            fields: vec![],
            causation: caller.causation,
            outcome: String::new(),
            duration_us: 0,
        }
    }

    /// Counts the call against `limits.max_host_calls` (past it, the call
    /// is audited and the invocation trapped) and stops at a breakpoint.
    async fn enter(&self, caller: &Caller, call: &str) -> Result<Instant, HostFault> {
        self.count_call(caller, call)?;
        if let Some(bp) = &caller.breakpoint {
            bp.check(call).await;
        }
        Ok(Instant::now())
    }

    /// The counting half of [`Gate::enter`], for a call that must be
    /// counted before it can wait (an outbound request is counted when it
    /// is handed over, not when its future is first polled).
    fn count_call(&self, caller: &Caller, call: &str) -> Result<(), HostFault> {
        let n = caller.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.settings.load().config.limits.max_host_calls {
            let max = self.settings.load().config.limits.max_host_calls;
            let mut draft = self.draft(caller, call, vec![], json!({}));
            draft.decision = Decision::Invalid;
            draft.rule = Some("limits.max_host_calls".into());
            draft.outcome =
                format!("host call {n} refused: the limit is {max} per invocation; the invocation is stopped");
            self.count(&draft);
            self.store.append_read_audit(draft)?;
            return Err(HostFault::Limit(format!(
                "more than {max} host calls in one invocation (limits.max_host_calls)"
            )));
        }
        Ok(())
    }

    /// Refuses a call whose arguments are larger than
    /// `limits.max_call_bytes`, marking the draft. Returns the refusal.
    fn oversize(&self, draft: &mut AuditDraft) -> Option<String> {
        let max = self.settings.load().config.limits.max_call_bytes;
        (draft.arg_bytes > max).then(|| {
            let why = format!(
                "the arguments of {} are {} bytes; the limit is {max} (limits.max_call_bytes)",
                draft.call, draft.arg_bytes
            );
            draft.decision = Decision::Invalid;
            draft.rule = Some("limits.max_call_bytes".into());
            draft.outcome.clone_from(&why);
            why
        })
    }

    /// Audits a call without effects. This does not wait for the disk
    /// (see [`Store::append_read_audit`]; only its backpressure bound does),
    /// so it runs on the caller's thread rather than the blocking pool.
    fn record(&self, mut draft: AuditDraft, started: Instant) -> Result<(), HostFault> {
        draft.duration_us = elapsed_us(started);
        draft.outcome =
            audit::bounded(std::mem::take(&mut draft.outcome), self.settings.load().config.limits.audit_arg_bytes);
        self.count(&draft);
        self.store.append_read_audit(draft)?;
        Ok(())
    }

    /// Records the start of an invocation; its audit seq is the invocation id.
    pub async fn start_invocation(
        &self,
        agent: &str,
        digest: &str,
        message: serde_json::Value,
        entity: Option<&EntityRef>,
        causation: Option<u64>,
    ) -> Result<u64, HostFault> {
        let draft = AuditDraft {
            agent: agent.to_string(),
            digest: digest.to_string(),
            invocation: None,
            call: calls::INVOCATION_START.into(),
            entities: entity.map(EntityRef::key).into_iter().collect(),
            arg_bytes: 0,
            args: audit::bounded(message.to_string(), self.settings.load().config.limits.audit_arg_bytes),
            decision: Decision::Allowed,
            rule: None,
            peer: None,
            fields: vec![],
            causation,
            outcome: match causation {
                Some(c) => format!("started (caused by invocation {c})"),
                None => "started".into(),
            },
            duration_us: 0,
        };
        self.count(&draft);
        Ok(self.store.append_read_audit(draft)?)
    }

    /// Records how an invocation ended.
    pub async fn end_invocation(
        &self,
        caller: &Caller,
        decision: Decision,
        outcome: &str,
        started: Instant,
    ) -> Result<(), HostFault> {
        let mut draft = self.draft(caller, calls::INVOCATION_END, vec![], json!({ "host_calls": caller.calls() }));
        draft.decision = decision;
        self.metrics.invocation(&caller.agent, decision);
        draft.outcome = audit::bounded(outcome.to_string(), self.settings.load().config.limits.audit_arg_bytes);
        self.record(draft, started)
    }

    /// Records a cascade step that was not run because of the depth limit.
    /// Its own seq stands in for the invocation id it never got.
    pub async fn record_stopped(
        &self,
        agent: &str,
        digest: &str,
        causation: u64,
        entity: Option<&EntityRef>,
        outcome: String,
    ) -> Result<u64, HostFault> {
        let draft = AuditDraft {
            agent: agent.to_string(),
            digest: digest.to_string(),
            invocation: None,
            call: calls::CASCADE_STOPPED.into(),
            entities: entity.map(EntityRef::key).into_iter().collect(),
            args: "{}".into(),
            arg_bytes: 2,
            decision: Decision::Stopped,
            rule: Some("limits.max_cascade_depth".into()),
            peer: None,
            fields: vec![],
            causation: Some(causation),
            outcome: audit::bounded(outcome, self.settings.load().config.limits.audit_arg_bytes),
            duration_us: 0,
        };
        self.count(&draft);
        Ok(self.store.append_read_audit(draft)?)
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

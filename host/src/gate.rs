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

use crate::audit::{self, AuditDraft, Decision, calls};
use crate::kb::{
    ActOutcome, ActRequest, Actor, ChangeRequest, CommitOutcome, CommitRequest, Conflict, Denial, Entity, EntityRef,
    Event, EventKind, Lease, LeaseOutcome, Store, StoreError, Value, Write, now_ms,
};
use crate::metrics::GateMetrics;
use crate::policy::config::Config;
use crate::policy::{Policy, Refusal};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

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

/// Audits a conflict: who changed the entity, and which fields.
fn mark_conflict(d: &mut AuditDraft, c: &Conflict) {
    d.decision = Decision::Conflict;
    d.rule = Some("version".into());
    d.peer = Some(c.changed_by.clone()).filter(|p| !p.is_empty());
    d.fields.clone_from(&c.changed_fields);
    d.outcome = c.to_string();
}

/// Audits a guard's denial: the decision, the rule, the other party.
fn mark_denial(d: &mut AuditDraft, denial: &Denial) {
    let (decision, rule, peer) = match denial {
        Denial::Rule { rule, defer, .. } => (
            if *defer { Decision::Deferred } else { Decision::Denied },
            format!("rule: {rule}"),
            Some(format!("rule:{rule}")),
        ),
        Denial::Pinned { field, by, .. } => {
            d.fields = vec![field.clone()];
            (Decision::Pinned, format!("pin: {field} by {by}"), Some(format!("human:{by}")))
        }
        Denial::Leased { holder, .. } => (Decision::Leased, "lease".into(), Some(holder.clone())),
        Denial::StaleFence { .. } => (Decision::Leased, "fencing token".into(), None),
    };
    (d.decision, d.rule, d.peer) = (decision, Some(rule), peer);
    d.outcome = denial.to_string();
}

/// Records a policy refusal in its audit draft: the decision, the rule,
/// and for a forbidden field who may write it.
fn mark_refusal(d: &mut AuditDraft, refusal: &Refusal) {
    d.decision = match refusal {
        Refusal::Forbidden(f) => {
            d.peer = Some(f.writers.join(","));
            d.fields = vec![f.field.clone()];
            Decision::Forbidden
        }
        Refusal::Invalid(_) => Decision::Invalid,
    };
    d.rule = Some(refusal.rule());
    d.outcome = refusal.to_string();
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
        Self { agent, digest, invocation, causation, calls: AtomicU32::new(0), breakpoint, followups: Mutex::default() }
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

/// What the gate decides with: a config and the policy made from it.
/// Replaced whole by a config reload ([`Gate::reconfigure`]). A call that
/// decides twice (a commit's ownership, then its rules in the writer)
/// decides both times on the one snapshot it took at its start.
#[derive(Debug)]
pub struct Settings {
    pub config: Arc<Config>,
    pub policy: Arc<Policy>,
}

impl Settings {
    pub fn new(config: Arc<Config>) -> Self {
        let policy = Arc::new(Policy::new(config.schema.clone()));
        Self { config, policy }
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
    metrics: GateMetrics,
}

/// The longest idempotency key of an action, in bytes: keys are printed
/// in every listing of the outbox.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// Largest `limit` a `history` call may ask for.
pub const MAX_HISTORY: u32 = 1000;

impl Gate {
    /// `agents`: the names of the loaded agents.
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, agents: std::collections::BTreeSet<String>) -> Self {
        let rate =
            crate::policy::rate::ActionRate::new(config.limits.actions_per_minute, config.limits.actions_per_hour);
        Self {
            store,
            settings: arc_swap::ArcSwap::from_pointee(Settings::new(config)),
            agents: arc_swap::ArcSwap::from_pointee(agents),
            rate,
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

    /// Puts `config` in force from the next host call on: calls under way
    /// finish on the settings they started with.
    pub fn reconfigure(&self, config: Arc<Config>) {
        self.rate.set_limits(config.limits.actions_per_minute, config.limits.actions_per_hour);
        self.settings.store(Arc::new(Settings::new(config)));
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
        if let Some(bp) = &caller.breakpoint {
            bp.check(call).await;
        }
        Ok(Instant::now())
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

    pub async fn get(&self, caller: &Caller, entity: EntityRef) -> Result<Result<Option<Entity>, String>, HostFault> {
        let started = self.enter(caller, calls::GET).await?;
        // The hottest call: its arguments are written directly, not through
        // a serde_json::Value, and the key is formatted once.
        let key = entity.key();
        let args = format!("{{\"entity\":{}}}", serde_json::Value::from(key.as_str()));
        let mut draft = self.draft_with(caller, calls::GET, vec![key.clone()], args);
        if let Err(refusal) = self.settings.load().policy.check_read(&entity) {
            draft.decision = Decision::Invalid;
            draft.rule = Some(refusal.rule());
            draft.outcome = refusal.to_string();
            self.record(draft, started)?;
            return Ok(Err(refusal.to_string()));
        }
        // A point read on an MVCC snapshot (never waits for the writer) and
        // a read-entry append (waits for the disk only as backpressure):
        // both stay on this thread, which is most of what makes an audited
        // get cheap.
        let found = self.store.get(&entity)?;
        draft.outcome = match &found {
            Some(e) => format!("version {}", e.version),
            None => "absent".into(),
        };
        draft.duration_us = elapsed_us(started);
        // The read moves the agent's cursor (for `changes-since-read`) in the
        // same transaction as its audit entry.
        let seq = found.as_ref().map_or(0, |e| e.seq);
        self.count(&draft);
        self.store.record_read(caller.agent.clone(), key, seq, draft)?;
        Ok(Ok(found))
    }

    pub async fn history(
        &self,
        caller: &Caller,
        entity: EntityRef,
        after_seq: u64,
        limit: u32,
    ) -> Result<Result<Vec<Event>, String>, HostFault> {
        let started = self.enter(caller, calls::HISTORY).await?;
        let limit = limit.min(MAX_HISTORY);
        let args = json!({ "entity": entity.key(), "after_seq": after_seq, "limit": limit });
        let draft = self.draft(caller, calls::HISTORY, vec![entity.key()], args);
        self.read_events(draft, started, entity, move |s, e| s.history(e, after_seq, limit as usize)).await
    }

    pub async fn recent(
        &self,
        caller: &Caller,
        entity: EntityRef,
        within_ms: u64,
    ) -> Result<Result<Vec<Event>, String>, HostFault> {
        let started = self.enter(caller, calls::RECENT).await?;
        let since = now_ms().saturating_sub(within_ms);
        let args = json!({ "entity": entity.key(), "within_ms": within_ms });
        let draft = self.draft(caller, calls::RECENT, vec![entity.key()], args);
        self.read_events(draft, started, entity, move |s, e| s.recent(e, since)).await
    }

    async fn read_events(
        &self,
        mut draft: AuditDraft,
        started: Instant,
        entity: EntityRef,
        read: impl FnOnce(&dyn Store, &EntityRef) -> Result<Vec<Event>, StoreError> + Send + 'static,
    ) -> Result<Result<Vec<Event>, String>, HostFault> {
        let result = match self.settings.load().policy.check_read(&entity) {
            Err(refusal) => {
                draft.decision = Decision::Invalid;
                draft.rule = Some(refusal.rule());
                Err(refusal.to_string())
            }
            Ok(()) => Ok(self.blocking(move |s| read(s, &entity)).await?),
        };
        draft.outcome = match &result {
            Ok(events) => format!("{} events", events.len()),
            Err(e) => e.clone(),
        };
        self.record(draft, started)?;
        Ok(result)
    }

    pub async fn log(&self, caller: &Caller, level: &str, message: &str) -> Result<(), HostFault> {
        let started = self.enter(caller, calls::LOG).await?;
        let mut draft = self.draft(caller, calls::LOG, vec![], json!({ "level": level, "message": message }));
        if let Some(why) = self.oversize(&mut draft) {
            // `log` has no error to return: an oversized line stops the
            // invocation, after its audit entry.
            self.record(draft, started)?;
            return Err(HostFault::Limit(why));
        }
        draft.outcome = "logged".into();
        self.record(draft, started)
    }

    pub async fn commit(
        &self,
        caller: &Caller,
        writes: Vec<Write>,
        reason: String,
    ) -> Result<Result<Vec<u64>, WriteError>, HostFault> {
        let started = self.enter(caller, calls::COMMIT).await?;
        // One snapshot of the settings for the whole call (see [`Settings`]).
        let now = self.settings.load_full();
        let max_outcome = now.config.limits.audit_arg_bytes;
        let entities: Vec<String> = writes.iter().map(|w| w.entity.key()).collect();
        let args = json!({
            "reason": reason,
            "writes": writes.iter().map(|w| json!({
                "entity": w.entity.key(),
                "expect": w.expect.to_string(),
                "set": w.set.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
                "unset": w.unset,
                "fence": w.fence,
            })).collect::<Vec<_>>(),
        });
        let mut draft = self.draft(caller, calls::COMMIT, entities, args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        let mut written: Vec<String> =
            writes.iter().flat_map(|w| w.set.iter().map(|(n, _)| n.clone()).chain(w.unset.iter().cloned())).collect();
        written.sort();
        written.dedup();
        draft.fields = written;

        if let Err(refusal) = now.policy.check_commit(&caller.agent, &writes) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }

        let request = CommitRequest {
            actor: caller.actor(),
            reason,
            writes,
            at_ms: now_ms(),
            by_human: false,
            kind: EventKind::Updated,
        };
        let (rules, agent) = (now.config.rules.clone(), caller.agent.clone());
        let guard = Box::new(move |input: &crate::kb::GuardInput<'_>| rules.evaluate(&agent, input));
        // Answered by the store's writer when the commit is durable: no
        // thread waits for it meanwhile.
        let (done, answer) = tokio::sync::oneshot::channel();
        self.store.commit_then(
            request,
            guard,
            Box::new(move |outcome: &CommitOutcome| {
                let mut d = draft;
                d.duration_us = elapsed_us(started);
                match outcome {
                    CommitOutcome::Committed { versions, events } => {
                        d.outcome = events
                            .iter()
                            .zip(versions)
                            .map(|(e, v)| format!("{}@{v} (event {})", e.entity, e.seq))
                            .collect::<Vec<_>>()
                            .join(", ");
                        d.outcome.insert_str(0, "committed ");
                    }
                    CommitOutcome::Conflict(c) => mark_conflict(&mut d, c),
                    CommitOutcome::Denied(denial) => mark_denial(&mut d, denial),
                }
                d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                d
            }),
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        let (outcome, entry) =
            answer.await.map_err(|_| StoreError::Backend("the store dropped a commit unanswered".into()))??;
        self.count_entry(&entry);
        self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
        Ok(match outcome {
            CommitOutcome::Committed { versions, events } => {
                caller.follow(|f| f.events.extend(events));
                Ok(versions)
            }
            CommitOutcome::Conflict(c) => Err(WriteError::Conflict(Box::new(c))),
            CommitOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }

    /// Records a guarded action in the outbox, if its version still holds
    /// and no rule defers it.
    pub async fn act(
        &self,
        caller: &Caller,
        kind: String,
        payload: String,
        entity: EntityRef,
        based_on: u64,
        key: Option<String>,
    ) -> Result<Result<u64, WriteError>, HostFault> {
        let started = self.enter(caller, calls::ACT).await?;
        // One snapshot of the settings for the whole call (see [`Settings`]).
        let now = self.settings.load_full();
        let max_outcome = now.config.limits.audit_arg_bytes;
        let args = json!({ "kind": kind, "entity": entity.key(), "based_on": based_on, "idempotency_key": key, "payload": payload });
        let mut draft = self.draft(caller, calls::ACT, vec![entity.key()], args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        let problem = if kind.trim().is_empty() {
            Some("an action needs a kind, such as `email.send`".to_string())
        } else if !crate::policy::schema::valid_action_kind(&kind) {
            Some(format!(
                "action kind {:?} is not 1 to {} ASCII letters, digits, `.`, `_` or `-` (such as `email.send`)",
                crate::policy::schema::shorten(&kind),
                crate::policy::schema::MAX_ACTION_KIND
            ))
        } else if key.as_ref().is_some_and(|k| {
            k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(crate::policy::schema::deceptive)
        }) {
            Some(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes of visible characters (it is printed with the action)"
            ))
        } else if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
            Some(format!("the action payload is not JSON: {e}"))
        } else {
            now.policy.check_read(&entity).err().map(|r| r.to_string())
        };
        if let Some(problem) = problem {
            draft.decision = Decision::Invalid;
            draft.rule = Some("schema".into());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        // Who may ask for this kind, then the agent's rate: a bound is "not
        // now" (deferred), naming its key.
        if let Err(refusal) = now.policy.check_action(&caller.agent, &entity, &kind) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }
        let at_ms = now_ms();
        // The outbox's bound is checked by the store, in the transaction
        // that records (see `ActRequest::max_pending`).
        let admitted = match self.rate.admit(&caller.agent, at_ms) {
            Ok(a) => a,
            Err((key, reason)) => {
                let denial = Denial::Rule { entity: entity.clone(), rule: key.into(), defer: true, reason };
                mark_denial(&mut draft, &denial);
                self.record(draft, started)?;
                return Ok(Err(WriteError::Denied(Box::new(denial))));
            }
        };
        let request = ActRequest {
            actor: caller.actor(),
            entity,
            based_on,
            kind,
            payload,
            idempotency_key: key,
            at_ms,
            max_pending: now.config.limits.max_pending_actions,
        };
        let (rules, agent) = (now.config.rules.clone(), caller.agent.clone());
        let (outcome, entry) = self
            .blocking(move |s| {
                let guard = Box::new(move |input: &crate::kb::GuardInput<'_>| rules.evaluate(&agent, input));
                s.act(
                    request,
                    guard,
                    Box::new(move |outcome: &ActOutcome| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        match outcome {
                            ActOutcome::Recorded(a) => {
                                d.outcome = format!("recorded action {} ({}, key {})", a.id, a.kind, a.idempotency_key);
                            }
                            ActOutcome::Conflict(c) => mark_conflict(&mut d, c),
                            ActOutcome::Denied(denial) => mark_denial(&mut d, denial),
                        }
                        d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        // Only a new record keeps its place: a repeated key answers with
        // the first action, recorded before; a refusal records nothing. (A
        // fault above drops `admitted`, which gives its place back too.)
        if let ActOutcome::Recorded(a) = &outcome
            && a.recorded_at_ms == at_ms
            && a.invocation == caller.invocation
        {
            admitted.keep();
        }
        Ok(match outcome {
            ActOutcome::Recorded(a) => Ok(a.id),
            ActOutcome::Conflict(c) => Err(WriteError::Conflict(Box::new(c))),
            ActOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }

    /// Records a handoff: `owner` is asked to change fields it may write.
    pub async fn request_change(
        &self,
        caller: &Caller,
        owner: String,
        entity: EntityRef,
        proposed: Vec<(String, Value)>,
        reason: String,
    ) -> Result<Result<u64, WriteError>, HostFault> {
        let started = self.enter(caller, calls::REQUEST_CHANGE).await?;
        let args = json!({
            "owner": owner, "entity": entity.key(), "reason": reason,
            "proposed": proposed.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
        });
        let mut draft = self.draft(caller, calls::REQUEST_CHANGE, vec![entity.key()], args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        draft.peer = Some(owner.clone());
        // A request must reach someone who can act on it: a loaded agent
        // (not `host`, a human, or a name nobody runs), with something to do.
        let agents = self.agents.load();
        let nobody = if !agents.contains(&owner) {
            let loaded: Vec<&str> = agents.iter().map(String::as_str).collect();
            Some((
                RULE_REQUEST_OWNER,
                format!(
                    "`{}` is not a loaded agent, so nobody would answer this change request: address the agent that \
                 owns the fields (loaded: {})",
                    audit::bounded(owner.clone(), 64),
                    loaded.join(", ")
                ),
            ))
        } else if proposed.is_empty() {
            Some((
                RULE_REQUEST_PROPOSED,
                format!("a change request proposes at least one field for {owner} to set; this one proposes none"),
            ))
        } else {
            None
        };
        if let Some((rule, problem)) = nobody {
            draft.decision = Decision::Invalid;
            draft.rule = Some(rule.into());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        // The owner must be able to apply what is proposed: the same checks
        // as the owner's own commit would get.
        let as_owner = Write {
            entity: entity.clone(),
            expect: crate::kb::Expect::Absent,
            set: proposed.clone(),
            unset: vec![],
            fence: None,
        };
        if let Err(refusal) = self.settings.load().policy.check_commit(&owner, std::slice::from_ref(&as_owner)) {
            let problem = format!("{owner} cannot apply this change request: {refusal}");
            draft.decision = Decision::Invalid;
            draft.rule = Some(refusal.rule());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        let request = ChangeRequest {
            id: 0,
            from: caller.agent.clone(),
            owner,
            entity,
            proposed,
            reason,
            applied: None,
            resolution: None,
        };
        let actor = caller.actor();
        let (stored, entry) = self
            .blocking(move |s| {
                let owner = request.owner.clone();
                s.request_change(
                    request,
                    actor,
                    now_ms(),
                    Box::new(move |event: &Event| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        d.outcome = format!("change request {} to {owner} (event {})", event.seq, event.seq);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        let id = stored.id;
        caller.follow(|f| f.requests.push(stored));
        Ok(Ok(id))
    }

    /// Records the owner's decision on a change request.
    pub async fn resolve_change(
        &self,
        caller: &Caller,
        request: u64,
        applied: bool,
        reason: String,
    ) -> Result<Result<(), String>, HostFault> {
        let started = self.enter(caller, calls::RESOLVE_CHANGE).await?;
        let max_outcome = self.settings.load().config.limits.audit_arg_bytes;
        let args = json!({ "request": request, "applied": applied, "reason": reason });
        let mut draft = self.draft(caller, calls::RESOLVE_CHANGE, vec![], args);
        // The reason is stored with the request: bounded like every other
        // call's arguments.
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(why));
        }
        let actor = caller.actor();
        let (result, entry) = self
            .blocking(move |s| {
                s.resolve_change(
                    request,
                    actor,
                    applied,
                    reason,
                    now_ms(),
                    Box::new(move |r: &Result<ChangeRequest, String>| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        match r {
                            Ok(req) => {
                                d.entities = vec![req.entity.key()];
                                d.peer = Some(req.from.clone());
                                d.outcome = format!(
                                    "change request {request} from {} {}",
                                    req.from,
                                    if applied { "applied" } else { "declined" }
                                );
                            }
                            Err(e) => {
                                d.decision = Decision::Invalid;
                                d.rule = Some(RULE_RESOLVE.into());
                                d.outcome.clone_from(e);
                            }
                        }
                        d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        Ok(result.map(|_| ()))
    }

    pub async fn lease(
        &self,
        caller: &Caller,
        entity: EntityRef,
        ttl_ms: u64,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        self.lease_call(caller, entity, ttl_ms, None).await
    }

    /// `coord.renew`: extends the caller's live lease, keeping its token.
    pub async fn renew(
        &self,
        caller: &Caller,
        entity: EntityRef,
        token: u64,
        ttl_ms: u64,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        self.lease_call(caller, entity, ttl_ms, Some(token)).await
    }

    /// `coord.lease` (`renew` none) and `coord.renew`: one path, so that
    /// both check the same bounds and are audited alike.
    async fn lease_call(
        &self,
        caller: &Caller,
        entity: EntityRef,
        ttl_ms: u64,
        renew: Option<u64>,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        let call = if renew.is_some() { calls::RENEW } else { calls::LEASE };
        let started = self.enter(caller, call).await?;
        let max_outcome = self.settings.load().config.limits.audit_arg_bytes;
        let args = match renew {
            Some(token) => json!({ "entity": entity.key(), "token": token, "ttl_ms": ttl_ms }),
            None => json!({ "entity": entity.key(), "ttl_ms": ttl_ms }),
        };
        let mut draft = self.draft(caller, call, vec![entity.key()], args);
        if let Err(refusal) = self.settings.load().policy.check_lease(
            &caller.agent,
            &entity,
            ttl_ms,
            self.settings.load().config.limits.lease_max_ms,
        ) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }
        let actor = caller.actor();
        let (outcome, entry) = self
            .blocking(move |s| {
                let audit = Box::new(move |o: &LeaseOutcome| {
                    let mut d = draft;
                    d.duration_us = elapsed_us(started);
                    match o {
                        LeaseOutcome::Granted(l) => {
                            d.outcome = format!(
                                "{} token {} until {} ms",
                                if renew.is_some() { "renewed" } else { "granted" },
                                l.token,
                                l.expires_at_ms
                            );
                        }
                        LeaseOutcome::Denied(denial) => mark_denial(&mut d, denial),
                    }
                    d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                    d
                });
                match renew {
                    Some(token) => s.renew(actor, entity, token, ttl_ms, now_ms(), audit),
                    None => s.lease(actor, entity, ttl_ms, now_ms(), audit),
                }
            })
            .await?;
        self.count_entry(&entry);
        Ok(match outcome {
            LeaseOutcome::Granted(l) => Ok(l),
            LeaseOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }

    pub async fn release(&self, caller: &Caller, entity: EntityRef, token: u64) -> Result<bool, HostFault> {
        let started = self.enter(caller, calls::RELEASE).await?;
        let draft =
            self.draft(caller, calls::RELEASE, vec![entity.key()], json!({ "entity": entity.key(), "token": token }));
        let actor = caller.actor();
        let (released, entry) = self
            .blocking(move |s| {
                s.release(
                    actor,
                    entity,
                    token,
                    Box::new(move |released: &bool| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        d.outcome = if *released {
                            "released".into()
                        } else {
                            "not the live lease's token; nothing released".into()
                        };
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        Ok(released)
    }

    pub async fn changes_since_read(
        &self,
        caller: &Caller,
        entity: EntityRef,
    ) -> Result<Result<Vec<Event>, String>, HostFault> {
        let started = self.enter(caller, calls::CHANGES).await?;
        let mut draft = self.draft(caller, calls::CHANGES, vec![entity.key()], json!({ "entity": entity.key() }));
        if let Err(refusal) = self.settings.load().policy.check_read(&entity) {
            draft.decision = Decision::Invalid;
            draft.rule = Some(refusal.rule());
            draft.outcome = refusal.to_string();
            self.record(draft, started)?;
            return Ok(Err(refusal.to_string()));
        }
        let agent = caller.agent.clone();
        let (events, entry) = self
            .blocking(move |s| {
                s.changes_since_read(
                    agent,
                    entity,
                    Box::new(move |events: &Vec<Event>| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        d.outcome = format!("{} events since the last read", events.len());
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        Ok(Ok(events))
    }
}

/// The rules a change request is refused by, as the audit names them.
const RULE_REQUEST_OWNER: &str = "change request: the owner is a loaded agent";
const RULE_REQUEST_PROPOSED: &str = "change request: at least one field proposed";
const RULE_RESOLVE: &str = "change request: resolved once, by its owner, while open";

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

//! The gate: the one place every host call passes through.
//!
//! For each call an agent makes, the gate (1) stops at a [`Breakpoint`] if
//! one is set, (2) asks [`Policy`] whether the call is allowed, (3) carries it
//! out on the [`Store`], and (4) writes the call's audit entry, whatever the
//! outcome. A commit's audit entry is written by the store in the commit's own
//! transaction. New host calls go here too, so none can skip policy or audit.
//!
//! Errors come in two layers: the inner `Result` is what the agent sees (a
//! conflict, a refusal); the outer [`StoreError`] is a host fault, which
//! traps the invocation.

use crate::audit::{self, AuditDraft, Decision, calls};
use crate::kb::{CommitOutcome, CommitRequest, Conflict, Entity, EntityRef, Event, Store, StoreError, Write, now_ms};
use crate::policy::{Policy, Refusal};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;
use tokio::sync::watch;

/// Why a commit was refused. Mirrors the WIT `write-error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("conflict: {0}")]
    Conflict(Box<Conflict>),
    #[error("{0}")]
    Refused(Refusal),
}

/// Who is calling: fixed for one invocation.
#[derive(Debug)]
pub struct Caller {
    pub agent: String,
    pub digest: String,
    pub invocation: u64,
    /// Host calls made so far by this invocation.
    calls: AtomicU32,
    breakpoint: Option<Breakpoint>,
}

impl Caller {
    pub(crate) fn new(agent: String, digest: String, invocation: u64, breakpoint: Option<Breakpoint>) -> Self {
        Self { agent, digest, invocation, calls: AtomicU32::new(0), breakpoint }
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

/// Applies policy and audit to every host call. Shared by all invocations.
#[derive(Debug)]
pub struct Gate {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    audit_arg_bytes: usize,
}

/// Largest `limit` a `history` call may ask for.
pub const MAX_HISTORY: u32 = 1000;

impl Gate {
    pub fn new(store: Arc<dyn Store>, policy: Arc<Policy>, audit_arg_bytes: usize) -> Self {
        Self { store, policy, audit_arg_bytes }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    fn draft(&self, caller: &Caller, call: &str, entities: Vec<String>, args: serde_json::Value) -> AuditDraft {
        AuditDraft {
            agent: caller.agent.clone(),
            digest: caller.digest.clone(),
            invocation: Some(caller.invocation),
            call: call.to_string(),
            entities,
            args: audit::bounded(args.to_string(), self.audit_arg_bytes),
            decision: Decision::Allowed,
            rule: None,
            outcome: String::new(),
            duration_us: 0,
        }
    }

    async fn enter(&self, caller: &Caller, call: &str) -> Instant {
        caller.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(bp) = &caller.breakpoint {
            bp.check(call).await;
        }
        Instant::now()
    }

    async fn record(&self, mut draft: AuditDraft, started: Instant) -> Result<(), StoreError> {
        draft.duration_us = elapsed_us(started);
        self.blocking(move |s| s.append_audit(draft)).await.map(|_| ())
    }

    /// Records the start of an invocation; its audit seq is the invocation id.
    pub async fn start_invocation(
        &self,
        agent: &str,
        digest: &str,
        message: serde_json::Value,
        entity: Option<&EntityRef>,
    ) -> Result<u64, StoreError> {
        let draft = AuditDraft {
            agent: agent.to_string(),
            digest: digest.to_string(),
            invocation: None,
            call: calls::INVOCATION_START.into(),
            entities: entity.map(EntityRef::key).into_iter().collect(),
            args: audit::bounded(message.to_string(), self.audit_arg_bytes),
            decision: Decision::Allowed,
            rule: None,
            outcome: "started".into(),
            duration_us: 0,
        };
        Ok(self.blocking(move |s| s.append_audit(draft)).await?.seq)
    }

    /// Records how an invocation ended.
    pub async fn end_invocation(
        &self,
        caller: &Caller,
        decision: Decision,
        outcome: &str,
        started: Instant,
    ) -> Result<(), StoreError> {
        let mut draft = self.draft(caller, calls::INVOCATION_END, vec![], json!({ "host_calls": caller.calls() }));
        draft.decision = decision;
        draft.outcome = audit::bounded(outcome.to_string(), self.audit_arg_bytes);
        self.record(draft, started).await
    }

    pub async fn get(&self, caller: &Caller, entity: EntityRef) -> Result<Result<Option<Entity>, String>, StoreError> {
        let started = self.enter(caller, calls::GET).await;
        let mut draft = self.draft(caller, calls::GET, vec![entity.key()], json!({ "entity": entity.key() }));
        let result = match self.policy.check_read(&entity) {
            Err(refusal) => {
                draft.decision = Decision::Invalid;
                draft.rule = Some(refusal.rule());
                Err(refusal.to_string())
            }
            Ok(()) => {
                let found = self.blocking(move |s| s.get(&entity)).await?;
                Ok(found)
            }
        };
        draft.outcome = match &result {
            Ok(Some(e)) => format!("version {}", e.version),
            Ok(None) => "absent".into(),
            Err(e) => e.clone(),
        };
        self.record(draft, started).await?;
        Ok(result)
    }

    pub async fn history(
        &self,
        caller: &Caller,
        entity: EntityRef,
        after_seq: u64,
        limit: u32,
    ) -> Result<Result<Vec<Event>, String>, StoreError> {
        let started = self.enter(caller, calls::HISTORY).await;
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
    ) -> Result<Result<Vec<Event>, String>, StoreError> {
        let started = self.enter(caller, calls::RECENT).await;
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
    ) -> Result<Result<Vec<Event>, String>, StoreError> {
        let result = match self.policy.check_read(&entity) {
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
        self.record(draft, started).await?;
        Ok(result)
    }

    pub async fn log(&self, caller: &Caller, level: &str, message: &str) -> Result<(), StoreError> {
        let started = self.enter(caller, calls::LOG).await;
        let mut draft = self.draft(caller, calls::LOG, vec![], json!({ "level": level, "message": message }));
        draft.outcome = "logged".into();
        self.record(draft, started).await
    }

    pub async fn commit(
        &self,
        caller: &Caller,
        writes: Vec<Write>,
        reason: String,
    ) -> Result<Result<Vec<u64>, WriteError>, StoreError> {
        let started = self.enter(caller, calls::COMMIT).await;
        let entities: Vec<String> = writes.iter().map(|w| w.entity.key()).collect();
        let args = json!({
            "reason": reason,
            "writes": writes.iter().map(|w| json!({
                "entity": w.entity.key(),
                "expect": w.expect.to_string(),
                "set": w.set.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
                "unset": w.unset,
            })).collect::<Vec<_>>(),
        });
        let mut draft = self.draft(caller, calls::COMMIT, entities, args);

        if let Err(refusal) = self.policy.check_commit(&caller.agent, &writes) {
            draft.decision = match refusal {
                Refusal::Forbidden(_) => Decision::Forbidden,
                Refusal::Invalid(_) => Decision::Invalid,
            };
            draft.rule = Some(refusal.rule());
            draft.outcome = refusal.to_string();
            self.record(draft, started).await?;
            return Ok(Err(WriteError::Refused(refusal)));
        }

        let request = CommitRequest {
            agent: caller.agent.clone(),
            invocation: caller.invocation,
            reason,
            writes,
            at_ms: now_ms(),
        };
        let (outcome, _entry) = self
            .blocking(move |s| {
                s.commit(&request, &|outcome| {
                    let mut d = draft.clone();
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
                        CommitOutcome::Conflict(c) => {
                            d.decision = Decision::Conflict;
                            d.rule = Some("version".into());
                            d.outcome = c.to_string();
                        }
                    }
                    d
                })
            })
            .await?;
        Ok(match outcome {
            CommitOutcome::Committed { versions, .. } => Ok(versions),
            CommitOutcome::Conflict(c) => Err(WriteError::Conflict(Box::new(c))),
        })
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

//! The storage boundary. Everything durable goes through [`Store`], so that
//! every backend (redb; PostgreSQL, for several hosts) fits behind the same
//! trait. A backend implements storage and transactions; the rules it must
//! apply are written once in [`super::ops`], over its transaction
//! ([`super::ops::Txn`]). Stores are opened by [`super::open`] from the
//! configured [`super::Backend`], whose constructor errors are its own
//! ([`super::OpenError`]); once open, every failure is a [`StoreError`].

use super::model::{
    ActionRecord, ChangeRequest, Conflict, Denial, Entity, EntityRef, Event, EventKind, Lease, Pin, Value, Write,
};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, Verification};

/// A storage failure. These are host faults, not agent mistakes: the runtime
/// turns them into a trap of the invocation that hit them.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the knowledge base is open read-only")]
    ReadOnly,
    #[error("storage error: {0}")]
    Backend(String),
    /// The store's server cannot be reached for now (a networked backend):
    /// nothing was applied, and the same request may be sent again once it
    /// is back. The API answers 503 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    #[error("stored record {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    /// A request that cannot be carried out as asked (an operator command
    /// naming a missing entity or event, say). Not a host fault.
    #[error("{0}")]
    Rejected(String),
}

/// The longest a read-call audit entry waits before it is made durable.
pub const READ_AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_millis(20);

/// Who is acting, for the records a store operation writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// An agent name, or `human:NAME` for operator commands.
    pub name: String,
    pub invocation: u64,
}

/// One atomic commit, already checked by policy.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub actor: Actor,
    pub reason: String,
    pub writes: Vec<Write>,
    pub at_ms: u64,
    /// Operator commits (`concord revert`) are not held back by pins.
    pub by_human: bool,
    /// `Updated` normally; `Reverted` for compensating commits. Creations
    /// are always `Created`.
    pub kind: EventKind,
}

/// What a guard sees of one entity a commit or action touches, as of the
/// write transaction (so the decision and the write see the same state).
pub struct GuardInput<'a> {
    pub entity: &'a EntityRef,
    pub current: Option<&'a Entity>,
    /// The fields being written (empty for an action).
    pub fields: Vec<&'a str>,
    /// The action kind, for an action.
    pub action: Option<&'a str>,
    pub pins: &'a [Pin],
    /// The entity's events in the rules' recent window, oldest first. Read
    /// only if a rule asks for them: most writes never pay for it.
    pub recent: &'a dyn Fn() -> Vec<Event>,
}

impl std::fmt::Debug for GuardInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardInput")
            .field("entity", &self.entity)
            .field("fields", &self.fields)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// Decides whether a write or action may go ahead (the coordination rules).
/// Owned, because the store may run it on its writer thread.
pub type Guard = Box<dyn Fn(&GuardInput<'_>) -> Option<Denial> + Send>;

/// Where an operation answered later sends its result.
pub type Done<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// Builds an operation's audit entry from its outcome, inside the
/// operation's transaction.
pub type Auditor<T> = Box<dyn FnOnce(&T) -> AuditDraft + Send>;

/// One failed delivery of an action (see [`Store::delivery_failed`]).
/// Whether it was the last attempt, and when the next one is, are decided
/// in the store's transaction, on the attempts counted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub at_ms: u64,
    /// What the sink said.
    pub error: String,
    /// The attempt that fails the action for good.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each, up to
    /// `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl DeliveryFailure {
    /// When to try again after the `attempt`-th failure (from 1).
    pub fn next_attempt_ms(&self, attempt: u32) -> u64 {
        let wait = self.backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(self.max_backoff_ms);
        self.at_ms.saturating_add(wait)
    }
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// All writes applied; the new version of each, in write order.
    Committed { versions: Vec<u64>, events: Vec<Event> },
    /// The first write whose expectation failed; nothing was applied.
    Conflict(Conflict),
    /// A guard refused it (rule, pin, lease); nothing was applied.
    Denied(Denial),
}

/// A guarded action to record in the outbox.
#[derive(Debug, Clone)]
pub struct ActRequest {
    pub actor: Actor,
    pub entity: EntityRef,
    /// The version the decision rested on; it must still hold.
    pub based_on: u64,
    pub kind: String,
    pub payload: String,
    /// Given by the agent, or made up from the outbox id.
    pub idempotency_key: Option<String>,
    pub at_ms: u64,
    /// The most undelivered actions the outbox may hold; a new action past
    /// it is deferred (`actions.max_pending`). Checked in the transaction
    /// that records, so concurrent requests cannot overshoot it.
    pub max_pending: u64,
}

/// What an action request did.
#[derive(Debug, Clone, PartialEq)]
pub enum ActOutcome {
    /// Recorded (or, for a repeated idempotency key, found already recorded).
    Recorded(ActionRecord),
    Conflict(Conflict),
    Denied(Denial),
}

/// What a lease request did.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    Granted(Lease),
    Denied(Denial),
}

/// A point in an entity's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtPoint {
    /// After the event with this seq (and every earlier one).
    Seq(u64),
    /// At this wall-clock time, in ms since the epoch.
    Time(u64),
}

impl std::str::FromStr for AtPoint {
    type Err = String;

    /// An event seq, or a time (ms since the epoch: 13 digits or more; or
    /// an age such as `10m`), as `--at` and the API's `at` take it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<u64>() {
            Ok(n) if n < 1_000_000_000_000 => Ok(AtPoint::Seq(n)),
            _ => super::model::parse_time(s).map(AtPoint::Time),
        }
    }
}

/// What `replay` found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReplayReport {
    pub events: u64,
    pub entities: u64,
    /// Every entity where the stored projection differs from the replay.
    pub differences: Vec<String>,
}

/// Durable state: the event log, its projection, the coordination records
/// (pins, leases, outbox, change requests, read cursors) and the audit log.
///
/// # Invariants every implementation keeps
/// - events are append-only, numbered from 1 without gaps;
/// - the projection changes in the same transaction as the events that
///   caused it, by [`Entity::apply`];
/// - every operation's audit entry is written in the operation's own
///   transaction (a refused one is audited alone);
/// - audit entries are numbered from 1 without gaps and hash-chained.
///
/// The conformance suite (`tests/e2e/conformance.rs`) checks them, and the
/// rules of `kb::ops`, against every backend.
///
/// # Durability classes
/// - **Acknowledged-durable**: every operation with an effect (`commit`,
///   `commit_then`, `act`, `mark_delivered`, the lease calls, the change
///   request calls, `pin`, `unpin`, `changes_since_read`, `append_audit`,
///   `put_request_key`, `put_host_state`) answers only once its effect and
///   its audit entry are durable: a crash after the answer loses neither.
/// - **Deferred**: the audit entries of calls without effects
///   (`append_read_audit`, `record_read` and its cursor move) are numbered
///   and visible to this process's queries at once, and durable within
///   [`READ_AUDIT_FLUSH`] or with the next acknowledged-durable operation,
///   whichever comes first. [`Store::sync_then`] waits for them: the host
///   calls it before an answer leaves for the outside world.
///
/// # Threads and blocking
/// The host calls five methods on the async threads that run invocations,
/// so they must not wait for other writers, the disk or a network:
/// [`Store::get`] (a point read), [`Store::record_read`] and
/// [`Store::append_read_audit`] (numbering only; past 65,536 entries
/// waiting they wait, as backpressure), and [`Store::sync_then`] and
/// [`Store::commit_then`] (answered through their callback, from the
/// store's own threads). Every other method may block its thread; the host
/// calls them from blocking threads (`spawn_blocking`) and the CLI from its
/// own. A backend answers these five from what it holds locally where it
/// can (redb reads an MVCC snapshot); where it cannot (PostgreSQL: a read
/// is a round trip, and a read audit's global seq is handed out under the
/// cluster's lock), it waits inside `tokio::task::block_in_place`, so that
/// the runtime moves its other tasks off the waiting thread.
pub trait Store: Send + Sync + 'static {
    /// The current state of an entity. Called on an invocation's async
    /// thread: it must not wait (see "Threads and blocking").
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError>;

    /// Calls `done` once everything this store has let anyone see (through
    /// any read, in any thread) and every audit entry it has numbered is
    /// durable: a crash can no longer take it back. Reads run first, then
    /// this, then the answer leaves the host (the API's rule).
    ///
    /// Never blocks the caller: a store that must wait answers from another
    /// thread. Cheap when nothing is waiting for the disk.
    fn sync_then(&self, done: Done<()>);

    /// Whether the store can take writes: `Err` says why not (a failed
    /// journal, a writer that stopped). For readiness checks.
    fn health(&self) -> Result<(), String>;

    /// What the store reports about its own work, for metrics.
    fn stats(&self) -> crate::metrics::StoreStats;

    /// Changes whenever more of the store becomes durable: new events or
    /// audit entries may be there to read (the API's streams wait on it).
    fn durable_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// An entity as it was at a point in the past.
    fn get_at(&self, entity: &EntityRef, at: AtPoint) -> Result<Option<Entity>, StoreError>;

    /// Events of one entity with `seq > after_seq`, oldest first.
    fn history(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Current entities in key order (`kind/id`), of one kind or all,
    /// after the key `after`, at most `limit`: a page of an export.
    fn list(&self, kind: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<Entity>, StoreError>;

    /// Events of one entity with `seq < before_seq`, newest first, at most
    /// `limit`.
    fn history_back(&self, entity: &EntityRef, before_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Events of one entity at or after `since_ms`, oldest first.
    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError>;

    /// One event by seq.
    fn event(&self, seq: u64) -> Result<Option<Event>, StoreError>;

    /// Checks every expectation, lease and pin, then the guard, against the
    /// current state, and applies all writes or none.
    fn commit(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError>;

    /// [`Store::commit`], answered through `done` rather than returned.
    ///
    /// The default calls `commit` on the calling thread. A store whose
    /// commit waits for other threads (a group commit, a disk) overrides it
    /// to return at once and call `done` when the answer is known, so an
    /// async caller need not hold a thread while it waits.
    fn commit_then(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
        done: Done<(CommitOutcome, AuditEntry)>,
    ) {
        done(self.commit(request, guard, audit))
    }

    /// Records a guarded action if its version still holds and the guard
    /// allows it.
    fn act(
        &self,
        request: ActRequest,
        guard: Guard,
        audit: Auditor<ActOutcome>,
    ) -> Result<(ActOutcome, AuditEntry), StoreError>;

    /// Actions recorded but not yet delivered, oldest first. Only durable
    /// ones: a store that lets reads see a commit before it is on disk
    /// waits here until these are.
    fn pending_actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError>;

    /// The pending actions this host is to deliver now, oldest first, at
    /// most `limit`: each is this host's alone for `for_ms` (or until it is
    /// delivered), so that hosts sharing a store do not deliver the same
    /// action at once. A claim that runs out (its host died, or its sink
    /// failed) lets any host take the action again: delivery stays at least
    /// once, with the idempotency key.
    ///
    /// The default is [`Store::pending_actions`]: a store one host holds
    /// has no one to share the outbox with.
    fn claim_pending_actions(&self, limit: usize, for_ms: u64) -> Result<Vec<ActionRecord>, StoreError> {
        let _ = for_ms;
        self.pending_actions(limit)
    }

    /// Gives up this host's claims on the pending actions `ids` (see
    /// [`Store::claim_pending_actions`]): its sink refused one, so any host
    /// may try them at once rather than when the claim runs out. The
    /// default does nothing (no claims to give up).
    fn release_action_claims(&self, ids: &[u64]) -> Result<(), StoreError> {
        let _ = ids;
        Ok(())
    }

    /// Claims the fire (or skip) of schedule `schedule` due at `due_ms`:
    /// `true` for the first caller only, on any host sharing the store, so
    /// that a schedule fires once per cluster. Durable when it answers.
    ///
    /// The default says `true`: a store one host holds has no one else to
    /// fire the schedule.
    fn claim_schedule_fire(&self, schedule: &str, due_ms: u64) -> Result<bool, StoreError> {
        let _ = (schedule, due_ms);
        Ok(true)
    }

    /// Every recorded action, oldest first.
    fn actions(&self) -> Result<Vec<ActionRecord>, StoreError>;

    /// Marks an action delivered (it leaves the outbox).
    fn mark_delivered(&self, id: u64, at_ms: u64) -> Result<(), StoreError>;

    /// Records a failed delivery of action `id`, audited; a last attempt
    /// (`failure.dead`) moves it from the outbox to the dead letter.
    fn delivery_failed(
        &self,
        id: u64,
        failure: DeliveryFailure,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError>;

    /// Puts a dead-lettered action back in the outbox, audited (an
    /// operator's `concord actions retry`).
    fn retry_action(
        &self,
        id: u64,
        at_ms: u64,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError>;

    /// Grants a lease unless another agent holds a live one.
    fn lease(
        &self,
        actor: Actor,
        entity: EntityRef,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError>;

    /// Releases a lease if `token` is its current token. Returns whether it did.
    fn release(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        audit: Auditor<bool>,
    ) -> Result<(bool, AuditEntry), StoreError>;

    /// Extends the live lease whose token is `token`, held by the actor, to
    /// `ttl_ms` from now, keeping its token; denied as a stale fence if
    /// that lease is gone or another's.
    fn renew(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError>;

    /// An operator's break of the entity's live lease, whoever holds it.
    /// Returns the lease broken; [`StoreError::Rejected`] if none is live.
    fn break_lease(
        &self,
        entity: EntityRef,
        at_ms: u64,
        audit: Auditor<Lease>,
    ) -> Result<(Lease, AuditEntry), StoreError>;

    /// The entity's lease, if one is live at `now_ms`.
    fn live_lease(&self, entity: &EntityRef, now_ms: u64) -> Result<Option<Lease>, StoreError>;

    /// Records a change request (a handoff) as an event on the entity.
    fn request_change(
        &self,
        request: ChangeRequest,
        actor: Actor,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(ChangeRequest, AuditEntry), StoreError>;

    /// Change requests with ids above `after`, in id (and so asking) order,
    /// at most `limit`, open or closed.
    fn change_requests(&self, after: u64, limit: usize) -> Result<Vec<ChangeRequest>, StoreError>;

    /// Closes open change request `id` as expired: it is marked declined
    /// with `reason`, and a `change_resolved` event by `host` (its detail
    /// says `"expired": true`) is appended on its entity, where the
    /// requester sees it. [`StoreError::Rejected`] if it is closed already
    /// (its owner answered meanwhile): nothing is written then.
    fn expire_change_request(
        &self,
        id: u64,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError>;

    /// Records the owner's decision on an open change request. `Err(reason)`
    /// if the request is unknown, not addressed to the actor, or closed.
    fn resolve_change(
        &self,
        id: u64,
        actor: Actor,
        applied: bool,
        reason: String,
        at_ms: u64,
        audit: Auditor<Result<ChangeRequest, String>>,
    ) -> Result<(Result<ChangeRequest, String>, AuditEntry), StoreError>;

    /// Sets fields and pins them (an operator command), as one event.
    fn pin(
        &self,
        entity: EntityRef,
        fields: Vec<(String, Value)>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError>;

    /// Releases pins (an operator command), as one event.
    fn unpin(
        &self,
        entity: EntityRef,
        fields: Vec<String>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError>;

    /// The pins on an entity.
    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError>;

    /// Events of an entity changed since `agent` last read it, and moves
    /// the agent's cursor to now. Audited in the same transaction.
    fn changes_since_read(
        &self,
        agent: String,
        entity: EntityRef,
        audit: Auditor<Vec<Event>>,
    ) -> Result<(Vec<Event>, AuditEntry), StoreError>;

    /// Moves an agent's read cursor on an entity (a `get` saw `seq`) and
    /// appends the read's audit entry, in one transaction. Returns the
    /// entry's seq; like [`Store::append_read_audit`]'s, the entry is in the
    /// chain at once and durable within [`READ_AUDIT_FLUSH`].
    /// `key` is the entity's (`kind/id`).
    fn record_read(&self, agent: String, key: String, seq: u64, draft: AuditDraft) -> Result<u64, StoreError>;

    /// Rebuilds the projection from the events and compares.
    fn replay(&self) -> Result<ReplayReport, StoreError>;

    /// Appends one audit entry on its own, durably (host lifecycle, key
    /// rotations).
    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError>;

    /// Appends the audit entry of a call without effects (a read, a log line,
    /// a refusal, an invocation's start or end), and returns its seq. It is
    /// numbered at once (queries in this process see it), and durable within
    /// [`READ_AUDIT_FLUSH`] or with the next durable commit, whichever comes
    /// first. It does not wait for the disk (this is the read path), except
    /// as backpressure: when 65,536 entries already wait for the writer, the
    /// caller waits until they are written, so memory stays bounded.
    fn append_read_audit(&self, draft: AuditDraft) -> Result<u64, StoreError>;

    /// One audit entry by seq.
    fn audit_entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError>;

    /// Audit entries matching a filter, oldest first.
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Every event, oldest first (for analysis such as `concord conflicts`).
    fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Recomputes the audit hash chain.
    fn verify_audit(&self) -> Result<Verification, StoreError>;

    /// The record stored under an idempotency key, with when it was
    /// stored (ms since the epoch). The record is the API's; the store
    /// keeps it as bytes.
    fn request_key(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Stores `record` under `key` (replacing what was there), durably,
    /// and forgets some keys stored before `expire_before_ms` (at most
    /// [`EXPIRED_PER_PUT`] per call, so that expiry costs little each time
    /// and keeps up with the puts).
    fn put_request_key(
        &self,
        key: String,
        at_ms: u64,
        record: Vec<u8>,
        expire_before_ms: u64,
    ) -> Result<(), StoreError>;

    /// State the host derives from the logs and keeps to save work (see
    /// [`crate::coord::conflicts::Tracker`]), by name.
    fn host_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores host state, durably.
    fn put_host_state(&self, name: String, value: Vec<u8>) -> Result<(), StoreError>;

    /// What the store keeps for itself (see [`Extras`]), read at once.
    fn extras(&self) -> Result<Extras, StoreError>;

    /// Applies one part of a copied store, in one transaction, durably (see
    /// [`Import`] and `kb::ops::migrate`). Only for an empty store being
    /// filled by `concord migrate`.
    fn import(&self, part: Import) -> Result<(), StoreError>;
}

/// What a store keeps for itself, beyond what the other read methods
/// give: what `concord migrate` needs to copy a store whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    /// The fencing token the store would give next.
    pub next_fence: u64,
    /// Every lease record, live or not, in entity order.
    pub leases: Vec<Lease>,
    /// Every read cursor: (agent, entity as `kind/id`, seq).
    pub cursors: Vec<(String, String, u64)>,
    /// The host's derived state, by name.
    pub host_state: Vec<(String, Vec<u8>)>,
}

/// One part of a store copied into an empty one (`concord migrate`),
/// applied in one transaction by [`super::ops::migrate::import`]. Events and
/// audit entries come in seq order, from 1, without gaps.
#[derive(Debug, Clone)]
pub enum Import {
    Events(Vec<Event>),
    Audit(Vec<AuditEntry>),
    Pins(Vec<(EntityRef, Pin)>),
    Actions(Vec<ActionRecord>),
    ChangeRequests(Vec<ChangeRequest>),
    Extras(Extras),
}

/// How many expired request keys one [`Store::put_request_key`] forgets.
pub const EXPIRED_PER_PUT: usize = 16;

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}

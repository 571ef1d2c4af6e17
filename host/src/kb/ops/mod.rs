//! The knowledge base's rules, written once for every backend.
//!
//! A backend provides transactions and storage ([`Txn`]); everything that
//! decides what a store operation does lives here:
//!
//! | file | what it decides |
//! |---|---|
//! | [`commit`] | whether a commit's expectations hold, and if not the explained conflict; the lease, pin and guard checks of a write; the events and field diffs a commit appends |
//! | [`act`] | a guarded action: idempotency keys, the version it rests on, the outbox bound; delivery |
//! | [`leases`] | grants, renewals, releases and breaks; fencing tokens; the lease check of a write or an action |
//! | [`requests`] | change requests (handoffs): asking, answering, expiring |
//! | [`pins`] | a human's pin and unpin, as events |
//! | [`reads`] | changes since an agent's last read; the state at a past point; replay against the projection |
//! | [`audit_plan`] | which index answers an audit query |
//! | [`migrate`] | copying a whole store into an empty one, and checking the copy |
//!
//! Invariants the rules keep, given a [`Txn`] that keeps its own (below):
//! every operation checks everything before it writes anything, so a refusal
//! writes only its audit entry; every operation appends its audit entry in
//! its own transaction; an event changes the projection by
//! [`Entity::apply`] in the transaction that appends it.

pub mod act;
pub mod audit_plan;
pub mod commit;
pub mod leases;
pub mod migrate;
pub mod pins;
pub mod reads;
pub mod requests;

use super::model::{ActionRecord, ChangeRequest, Entity, EntityRef, Event, Lease, Pin};
use super::store::StoreError;
use crate::audit::{AuditDraft, AuditEntry};
pub use reads::EntityHistory;

/// The window of an entity's past events a guard's rules may look at.
pub const GUARD_RECENT_WINDOW_MS: u64 = 5 * 60 * 1000;

/// What a backend gives the rules inside one write transaction: reads of the
/// state as this transaction sees it, and the appends and puts it commits.
///
/// A backend's contract:
/// - reads see every write made earlier in the same transaction;
/// - the transaction commits all of its writes or none;
/// - transactions that write are serialised: what a rule read is still true
///   when the transaction commits (redb runs one writer; a networked
///   backend holds a lock per transaction);
/// - event seqs come from [`Txn::next_event_seq`] and are appended in order
///   without gaps; audit entries are numbered and chained by
///   [`Txn::append_audit`].
///
/// Methods take `&self` so that a guard can read the entity's recent events
/// while the rules hold the transaction; a backend keeps its mutable state
/// behind cells, and a transaction is used by one thread at a time.
///
/// Its [`EntityHistory`] walks one entity's events newest first.
pub trait Txn: EntityHistory {
    /// The entity's current state (the projection).
    fn entity(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError>;

    /// The entity's events with `seq > after_seq`, oldest first, at most `limit`.
    fn events_after(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// The seq the next appended event gets.
    fn next_event_seq(&self) -> Result<u64, StoreError>;

    /// Appends `event` (indexed under its entity) and, when given, stores
    /// `projection` as the entity's new state.
    fn append_event(&self, event: &Event, projection: Option<&Entity>) -> Result<(), StoreError>;

    /// The pins on an entity.
    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError>;

    /// Stores a pin on `entity`, replacing one on the same field.
    fn put_pin(&self, entity: &EntityRef, pin: &Pin) -> Result<(), StoreError>;

    /// Removes the pin on `entity.field`; whether there was one.
    fn remove_pin(&self, entity: &EntityRef, field: &str) -> Result<bool, StoreError>;

    /// The entity's lease record, live or not.
    fn lease(&self, entity: &EntityRef) -> Result<Option<Lease>, StoreError>;

    /// Stores the entity's lease, replacing the one it had.
    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Removes the entity's lease.
    fn remove_lease(&self, entity: &EntityRef) -> Result<(), StoreError>;

    /// Takes the next fencing token: strictly greater than every token
    /// taken before, across entities and restarts.
    fn next_fence(&self) -> Result<u64, StoreError>;

    /// One recorded action by id.
    fn action(&self, id: u64) -> Result<Option<ActionRecord>, StoreError>;

    /// The id of the action recorded under an idempotency key.
    fn action_by_key(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// The id the next recorded action gets.
    fn next_action_id(&self) -> Result<u64, StoreError>;

    /// How many recorded actions are not yet delivered.
    fn outbox_len(&self) -> Result<u64, StoreError>;

    /// Records a new action: the record, its idempotency key, and its place
    /// in the outbox.
    fn insert_action(&self, record: &ActionRecord) -> Result<(), StoreError>;

    /// Stores a delivered action's record and takes it out of the outbox.
    fn deliver_action(&self, record: &ActionRecord) -> Result<(), StoreError>;

    /// Stores an action's record; its place in the outbox stays as it is.
    fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError>;

    /// Stores an action's record and puts it back in the outbox (an
    /// operator's retry of a dead letter).
    fn requeue_action(&self, record: &ActionRecord) -> Result<(), StoreError>;

    /// One change request by id.
    fn change_request(&self, id: u64) -> Result<Option<ChangeRequest>, StoreError>;

    /// Stores a change request under its id.
    fn put_change_request(&self, request: &ChangeRequest) -> Result<(), StoreError>;

    /// The seq of the last event of `entity` that `agent` has read (0: none).
    fn read_cursor(&self, agent: &str, entity: &EntityRef) -> Result<u64, StoreError>;

    /// Moves `agent`'s read cursor on `entity` to `seq`.
    fn put_read_cursor(&self, agent: &str, entity: &EntityRef, seq: u64) -> Result<(), StoreError>;

    /// Raises the fencing counter so that the next token is at least
    /// `next` (never lowers it). For copying a store.
    fn raise_fence(&self, next: u64) -> Result<(), StoreError>;

    /// Stores host state under `name` (see `Store::put_host_state`).
    fn put_host_state(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Numbers `draft`, links it into the audit chain and stores it, in this
    /// transaction.
    fn append_audit(&self, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError>;
}

/// Appends `event` and applies it to `before` (the entity's state as the
/// caller just read it), so the projection moves with the log.
pub(crate) fn append(tx: &dyn Txn, event: &Event, before: Option<Entity>) -> Result<(), StoreError> {
    let next = match event.kind.changes_state() {
        true => Entity::apply(before, event),
        false => None,
    };
    tx.append_event(event, next.as_ref())
}

/// For operator commands: refuses (writing nothing) unless the entity exists.
pub(crate) fn existing(tx: &dyn Txn, entity: &EntityRef) -> Result<Entity, StoreError> {
    tx.entity(entity)?
        .ok_or_else(|| StoreError::Rejected(format!("{entity} does not exist (check `concord get {entity}`)")))
}

/// Runs `op`, then appends the audit entry `audit` makes of its outcome:
/// the operation and its entry commit together. An `op` that fails writes
/// no entry (a rejected operator command writes nothing at all).
pub(crate) fn audited<T>(
    tx: &dyn Txn,
    at_ms: u64,
    audit: super::store::Auditor<T>,
    op: impl FnOnce(&dyn Txn) -> Result<T, StoreError>,
) -> Result<(T, AuditEntry), StoreError> {
    let value = op(tx)?;
    let entry = tx.append_audit(audit(&value), at_ms)?;
    Ok((value, entry))
}

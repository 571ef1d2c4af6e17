//! A commit: where a conflict is decided and explained, and where a write's
//! lease, pins and guard are checked before any of the commit is applied.

use super::{GUARD_RECENT_WINDOW_MS, Txn, audited, leases::lease_denial};
use crate::audit::AuditEntry;
use crate::kb::model::{Conflict, Denial, Entity, EntityRef, Event, EventKind, Expect, FieldChange};
use crate::kb::store::{Auditor, CommitOutcome, CommitRequest, Guard, GuardInput, StoreError};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The most events a conflict's explanation walks back (see [`conflict`]).
pub const CONFLICT_WALK: usize = 256;

/// Checks every write's expectation, lease, pins and guard against the
/// state in `tx`, then appends all of the writes or none, and the audit
/// entry of what happened.
pub fn commit(
    tx: &dyn Txn,
    request: CommitRequest,
    guard: Guard,
    audit: Auditor<CommitOutcome>,
) -> Result<(CommitOutcome, AuditEntry), StoreError> {
    let now = request.at_ms;
    audited(tx, now, audit, move |tx| {
        let outcome = match check(tx, &request, &guard)? {
            Err(refused) => refused,
            Ok(current) => apply(tx, &request, current)?,
        };
        Ok(outcome)
    })
}

/// Every write's checks, in write order, before anything is applied: the
/// state each write starts from, or the first refusal.
fn check(
    tx: &dyn Txn,
    request: &CommitRequest,
    guard: &Guard,
) -> Result<Result<Vec<Option<Entity>>, CommitOutcome>, StoreError> {
    let now = request.at_ms;
    let mut current = Vec::with_capacity(request.writes.len());
    for w in &request.writes {
        let cur = tx.entity(&w.entity)?;
        let holds = match (w.expect, &cur) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(e)) => e.version == v,
            _ => false,
        };
        if !holds {
            return Ok(Err(CommitOutcome::Conflict(conflict(tx, &w.entity, w.expect, cur.as_ref())?)));
        }
        let lease = tx.lease(&w.entity)?;
        if let Some(d) = lease_denial(lease.as_ref(), &w.entity, &request.actor.name, w.fence, now) {
            return Ok(Err(CommitOutcome::Denied(d)));
        }
        let pins = tx.pins(&w.entity)?;
        let fields: Vec<&str> =
            w.set.iter().map(|(n, _)| n.as_str()).chain(w.unset.iter().map(String::as_str)).collect();
        if !request.by_human
            && let Some(p) = pins.iter().find(|p| fields.contains(&p.field.as_str()))
        {
            return Ok(Err(CommitOutcome::Denied(Denial::Pinned {
                entity: w.entity.clone(),
                field: p.field.clone(),
                by: p.by.clone(),
                reason: p.reason.clone(),
            })));
        }
        let input = |recent: &dyn Fn() -> Vec<Event>| {
            guard(&GuardInput { entity: &w.entity, current: cur.as_ref(), fields, action: None, pins: &pins, recent })
        };
        if let Some(d) = ask_guard(tx, &w.entity, now, input)? {
            return Ok(Err(CommitOutcome::Denied(d)));
        }
        current.push(cur);
    }
    Ok(Ok(current))
}

/// Appends one event per write (the field diff against the state it was
/// checked on) and moves the projection.
fn apply(tx: &dyn Txn, request: &CommitRequest, current: Vec<Option<Entity>>) -> Result<CommitOutcome, StoreError> {
    let first = tx.next_event_seq()?;
    let mut versions = Vec::with_capacity(request.writes.len());
    let mut events = Vec::with_capacity(request.writes.len());
    for (seq, (w, cur)) in (first..).zip(request.writes.iter().zip(current)) {
        let (kind, version) = match &cur {
            None => (EventKind::Created, 1),
            Some(e) => (request.kind, e.version + 1),
        };
        let mut changes = Vec::new();
        for (name, value) in &w.set {
            let before = cur.as_ref().and_then(|e| e.fields.get(name)).cloned();
            if before.as_ref() != Some(value) {
                changes.push(FieldChange { name: name.clone(), before, after: Some(value.clone()) });
            }
        }
        for name in &w.unset {
            if let Some(before) = cur.as_ref().and_then(|e| e.fields.get(name)).cloned() {
                changes.push(FieldChange { name: name.clone(), before: Some(before), after: None });
            }
        }
        let event = Event {
            seq,
            at_ms: request.at_ms,
            agent: request.actor.name.clone(),
            entity: w.entity.clone(),
            version,
            kind,
            changes,
            reason: request.reason.clone(),
            invocation: request.actor.invocation,
            detail: None,
        };
        // The state the checks read: nothing wrote in between, and policy
        // refuses an entity twice in one commit.
        super::append(tx, &event, cur)?;
        versions.push(version);
        events.push(event);
    }
    Ok(CommitOutcome::Committed { versions, events })
}

/// The explanation of a write whose expectation failed: who changed the
/// entity since the version it expected, which fields, and the newest of
/// those events.
pub fn conflict(
    tx: &dyn Txn,
    entity: &EntityRef,
    expected: Expect,
    current: Option<&Entity>,
) -> Result<Conflict, StoreError> {
    let Some(current) = current else {
        return Ok(Conflict {
            entity: entity.clone(),
            expected,
            current_version: None,
            changed_by: String::new(),
            changed_at_ms: 0,
            changed_fields: vec![],
            events_since: vec![],
        });
    };
    let since = match expected {
        Expect::Absent => 0,
        Expect::Version(v) => v,
    };
    // Walk back from the newest event until the expected version: every
    // field changed on the way is reported; the newest events are carried.
    // At most CONFLICT_WALK events: a write that is far behind (expecting
    // an entity absent that has thousands of versions) costs the writer a
    // bounded walk, not one as long as the entity's history; its
    // explanation then names who changed what in those newest events, and
    // `current_version` says how far behind it is.
    let mut changed = BTreeSet::new();
    let mut by: Vec<String> = Vec::new();
    let mut carried = Vec::new();
    let mut walked = 0;
    tx.events_newest_first(entity, &mut |event| {
        if walked >= CONFLICT_WALK || event.version <= since {
            return false;
        }
        walked += 1;
        if event.kind.changes_state() {
            changed.extend(event.changes.iter().map(|c| c.name.clone()));
            if !by.contains(&event.agent) {
                by.push(event.agent.clone());
            }
        }
        if carried.len() < Conflict::MAX_EVENTS {
            carried.push(event);
        }
        true
    })?;
    carried.reverse();
    Ok(Conflict {
        entity: entity.clone(),
        expected,
        current_version: Some(current.version),
        // Everyone who changed it since, most recent first.
        changed_by: if by.is_empty() { current.updated_by.clone() } else { by.join(", ") },
        changed_at_ms: current.updated_at_ms,
        changed_fields: changed.into_iter().collect(),
        events_since: carried,
    })
}

/// Runs the guard, giving it the entity's recent events on demand (most
/// writes never pay for them). A failed read of them is the operation's
/// error, not an empty history the rules would decide on.
pub(super) fn ask_guard(
    tx: &dyn Txn,
    entity: &EntityRef,
    now: u64,
    guard: impl FnOnce(&dyn Fn() -> Vec<Event>) -> Option<Denial>,
) -> Result<Option<Denial>, StoreError> {
    let failed = RefCell::new(None);
    let recent = || {
        super::reads::recent(tx, entity, now.saturating_sub(GUARD_RECENT_WINDOW_MS)).unwrap_or_else(|e| {
            *failed.borrow_mut() = Some(e);
            Vec::new()
        })
    };
    let denied = guard(&recent);
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(denied),
    }
}

//! A guarded action: recorded in the outbox only if the version it rests on
//! still holds, no lease or rule stands in its way, and the outbox has room.

use super::{Txn, audited, commit::ask_guard, commit::conflict, leases::lease_denial};
use crate::audit::AuditEntry;
use crate::kb::model::{ActionRecord, Denial, Event, EventKind, Expect};
use crate::kb::store::{ActOutcome, ActRequest, Auditor, Guard, GuardInput, StoreError};

/// Records the action (and an `action_recorded` event on its entity), or
/// says why not. A repeated idempotency key answers with the action
/// recorded under it, and records nothing.
pub fn act(
    tx: &dyn Txn,
    request: ActRequest,
    guard: Guard,
    audit: Auditor<ActOutcome>,
) -> Result<(ActOutcome, AuditEntry), StoreError> {
    let now = request.at_ms;
    audited(tx, now, audit, move |tx| {
        let outcome = decide(tx, &request, &guard)?;
        Ok(outcome)
    })
}

fn decide(tx: &dyn Txn, request: &ActRequest, guard: &Guard) -> Result<ActOutcome, StoreError> {
    let now = request.at_ms;
    if let Some(key) = &request.idempotency_key
        && let Some(id) = tx.action_by_key(key)?
    {
        let record = tx
            .action(id)?
            .ok_or_else(|| StoreError::Corrupt { what: format!("action {id}"), reason: "keyed but missing".into() })?;
        return Ok(ActOutcome::Recorded(record));
    }
    let cur = tx.entity(&request.entity)?;
    if cur.as_ref().map(|e| e.version) != Some(request.based_on) {
        let expected = Expect::Version(request.based_on);
        return Ok(ActOutcome::Conflict(conflict(tx, &request.entity, expected, cur.as_ref())?));
    }
    let lease = tx.lease(&request.entity)?;
    if let Some(d) = lease_denial(lease.as_ref(), &request.entity, &request.actor.name, None, now) {
        return Ok(ActOutcome::Denied(d));
    }
    let pins = tx.pins(&request.entity)?;
    let input = |recent: &dyn Fn() -> Vec<Event>| {
        guard(&GuardInput {
            entity: &request.entity,
            current: cur.as_ref(),
            fields: vec![],
            action: Some(&request.kind),
            pins: &pins,
            recent,
        })
    };
    if let Some(d) = ask_guard(tx, &request.entity, now, input)? {
        return Ok(ActOutcome::Denied(d));
    }
    // Counted in the transaction that records: concurrent requests cannot
    // overshoot the bound.
    let pending = tx.outbox_len()?;
    if pending >= request.max_pending {
        return Ok(ActOutcome::Denied(Denial::Rule {
            entity: request.entity.clone(),
            rule: "actions.max_pending".into(),
            defer: true,
            reason: format!(
                "the outbox holds {pending} undelivered actions (actions.max_pending = {}); \
                 try again once the sink has caught up",
                request.max_pending
            ),
        }));
    }
    let id = tx.next_action_id()?;
    let record = ActionRecord {
        id,
        kind: request.kind.clone(),
        payload: request.payload.clone(),
        entity: request.entity.clone(),
        based_on: request.based_on,
        agent: request.actor.name.clone(),
        invocation: request.actor.invocation,
        idempotency_key: request.idempotency_key.clone().unwrap_or_else(|| format!("action-{id}")),
        recorded_at_ms: now,
        delivered_at_ms: None,
        attempts: 0,
        last_error: None,
        next_attempt_ms: 0,
        dead_at_ms: None,
    };
    tx.insert_action(&record)?;
    let event = Event {
        seq: tx.next_event_seq()?,
        at_ms: now,
        agent: request.actor.name.clone(),
        entity: request.entity.clone(),
        version: request.based_on,
        kind: EventKind::ActionRecorded,
        changes: vec![],
        reason: format!("{} recorded (action {id})", record.kind),
        invocation: request.actor.invocation,
        detail: Some(serde_json::to_string(&record).map_err(|e| StoreError::Backend(e.to_string()))?),
    };
    super::append(tx, &event, None)?;
    Ok(ActOutcome::Recorded(record))
}

/// A failed delivery of action `id`, counted on its record. The
/// `max_attempts`-th failure moves it from the outbox to the dead letter.
pub fn delivery_failed(
    tx: &dyn Txn,
    id: u64,
    failure: crate::kb::DeliveryFailure,
    audit: crate::kb::Auditor<ActionRecord>,
) -> Result<(ActionRecord, AuditEntry), StoreError> {
    super::audited(tx, failure.at_ms, audit, move |tx| {
        let mut record = tx.action(id)?.ok_or_else(|| StoreError::Rejected(format!("no action {id}")))?;
        if record.delivered_at_ms.is_some() || record.dead_at_ms.is_some() {
            return Err(StoreError::Rejected(format!("action {id} is no longer in the outbox")));
        }
        record.attempts = record.attempts.saturating_add(1);
        let dead = record.attempts >= failure.max_attempts;
        record.next_attempt_ms = if dead { 0 } else { failure.next_attempt_ms(record.attempts) };
        record.last_error = Some(failure.error);
        if dead {
            record.dead_at_ms = Some(failure.at_ms);
            tx.deliver_action(&record)?;
        } else {
            tx.update_action(&record)?;
        }
        Ok(record)
    })
}

/// Puts action `id` back in the outbox from the dead letter, with its
/// attempts counted afresh (its last error stays on the record).
pub fn retry(
    tx: &dyn Txn,
    id: u64,
    at_ms: u64,
    audit: crate::kb::Auditor<ActionRecord>,
) -> Result<(ActionRecord, AuditEntry), StoreError> {
    super::audited(tx, at_ms, audit, move |tx| {
        let mut record = tx
            .action(id)?
            .ok_or_else(|| StoreError::Rejected(format!("there is no action {id} (`concord actions` lists them)")))?;
        if record.dead_at_ms.is_none() {
            let state = match record.delivered_at_ms {
                Some(_) => "it was delivered",
                None => "it is still in the outbox, and is tried again on its own",
            };
            return Err(StoreError::Rejected(format!("action {id} is not in the dead letter: {state}")));
        }
        record.dead_at_ms = None;
        record.attempts = 0;
        record.next_attempt_ms = 0;
        tx.requeue_action(&record)?;
        Ok(record)
    })
}

/// Marks action `id` delivered at `at_ms` (the first delivery's time stays)
/// and takes it out of the outbox.
pub fn mark_delivered(tx: &dyn Txn, id: u64, at_ms: u64) -> Result<(), StoreError> {
    let Some(mut record) = tx.action(id)? else {
        return Err(StoreError::Rejected(format!("no action {id}")));
    };
    record.delivered_at_ms.get_or_insert(at_ms);
    // A delivery that landed after all is not in the dead letter.
    record.dead_at_ms = None;
    tx.deliver_action(&record)
}

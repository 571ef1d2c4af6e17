//! Change requests (handoffs): an agent asks the owner of fields to change
//! them; the owner applies or declines; the host expires the unanswered.
//! Each step is an event on the entity, where the other party sees it.

use super::{Txn, audited};
use crate::audit::AuditEntry;
use crate::kb::model::{ChangeRequest, Event, EventKind, FieldChange};
use crate::kb::store::{Actor, Auditor, StoreError};

/// Records `request` (its id is its event's seq) and a `change_requested`
/// event whose changes are the proposed values against the current ones.
pub fn request_change(
    tx: &dyn Txn,
    request: ChangeRequest,
    actor: Actor,
    at_ms: u64,
    audit: Auditor<Event>,
) -> Result<(ChangeRequest, AuditEntry), StoreError> {
    // Audited by hand, not through `audited`: the entry is about the
    // event, while the caller gets the stored request.
    let current = tx.entity(&request.entity)?;
    let seq = tx.next_event_seq()?;
    let changes = request
        .proposed
        .iter()
        .map(|(name, value)| FieldChange {
            name: name.clone(),
            before: current.as_ref().and_then(|e| e.fields.get(name).cloned()),
            after: Some(value.clone()),
        })
        .collect();
    let event = Event {
        seq,
        at_ms,
        agent: actor.name.clone(),
        entity: request.entity.clone(),
        version: current.as_ref().map_or(0, |e| e.version),
        kind: EventKind::ChangeRequested,
        changes,
        reason: request.reason.clone(),
        invocation: actor.invocation,
        detail: Some(serde_json::json!({ "request": seq, "owner": request.owner }).to_string()),
    };
    super::append(tx, &event, current)?;
    let stored = ChangeRequest { id: seq, applied: None, resolution: None, ..request };
    tx.put_change_request(&stored)?;
    let entry = tx.append_audit(audit(&event), at_ms)?;
    Ok((stored, entry))
}

/// Closes open request `id` as declined by the host with `reason`;
/// rejected (writing nothing) if it is unknown or closed already.
pub fn expire_change_request(
    tx: &dyn Txn,
    id: u64,
    reason: String,
    at_ms: u64,
    audit: Auditor<Event>,
) -> Result<(Event, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let Some(mut r) = tx.change_request(id)? else {
            return Err(StoreError::Rejected(format!("there is no change request {id}")));
        };
        if r.applied.is_some() {
            return Err(StoreError::Rejected(format!("change request {id} is resolved already")));
        }
        r.applied = Some(false);
        r.resolution = Some(reason.clone());
        tx.put_change_request(&r)?;
        let event = Event {
            seq: tx.next_event_seq()?,
            at_ms,
            agent: crate::audit::HOST.into(),
            entity: r.entity.clone(),
            version: tx.entity(&r.entity)?.map_or(0, |e| e.version),
            kind: EventKind::ChangeResolved,
            changes: vec![],
            reason,
            invocation: 0,
            detail: Some(
                serde_json::json!({ "request": id, "applied": false, "expired": true, "from": r.from, "owner": r.owner })
                    .to_string(),
            ),
        };
        super::append(tx, &event, None)?;
        Ok(event)
    })
}

/// The owner's answer to open request `id`. `Err(reason)` (audited, nothing
/// else written) if it is unknown, addressed to another, or closed.
pub fn resolve_change(
    tx: &dyn Txn,
    id: u64,
    actor: Actor,
    applied: bool,
    reason: String,
    at_ms: u64,
    audit: Auditor<Result<ChangeRequest, String>>,
) -> Result<(Result<ChangeRequest, String>, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let result = match tx.change_request(id)? {
            None => Err(format!("there is no change request {id}")),
            Some(r) if r.owner != actor.name => {
                Err(format!("change request {id} is addressed to {}, not {}", r.owner, actor.name))
            }
            Some(r) if r.applied.is_some() => Err(format!(
                "change request {id} is already resolved ({})",
                r.resolution.as_deref().unwrap_or_default()
            )),
            Some(mut r) => {
                r.applied = Some(applied);
                r.resolution = Some(reason.clone());
                tx.put_change_request(&r)?;
                let event = Event {
                    seq: tx.next_event_seq()?,
                    at_ms,
                    agent: actor.name.clone(),
                    entity: r.entity.clone(),
                    version: tx.entity(&r.entity)?.map_or(0, |e| e.version),
                    kind: EventKind::ChangeResolved,
                    changes: vec![],
                    reason,
                    invocation: actor.invocation,
                    detail: Some(serde_json::json!({ "request": id, "applied": applied, "from": r.from }).to_string()),
                };
                super::append(tx, &event, None)?;
                Ok(r)
            }
        };
        Ok(result)
    })
}

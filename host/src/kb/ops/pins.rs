//! A human's pins: set fields and hold them against every agent's writes
//! (the commit checks them, see [`super::commit`]) until unpinned.

use super::{Txn, audited, existing};
use crate::audit::AuditEntry;
use crate::kb::model::{EntityRef, Event, EventKind, FieldChange, Pin, Value};
use crate::kb::store::{Auditor, StoreError};

/// Sets `fields` on an existing entity and pins them, as one `pinned` event.
pub fn pin(
    tx: &dyn Txn,
    entity: EntityRef,
    fields: Vec<(String, Value)>,
    by: String,
    reason: String,
    at_ms: u64,
    audit: Auditor<Event>,
) -> Result<(Event, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let current = existing(tx, &entity)?;
        let seq = tx.next_event_seq()?;
        let changes = fields
            .iter()
            .map(|(name, value)| FieldChange {
                name: name.clone(),
                before: current.fields.get(name).cloned(),
                after: Some(value.clone()),
            })
            .collect();
        let event = Event {
            seq,
            at_ms,
            agent: format!("human:{by}"),
            entity: entity.clone(),
            version: current.version + 1,
            kind: EventKind::Pinned,
            changes,
            reason: reason.clone(),
            invocation: 0,
            detail: None,
        };
        super::append(tx, &event, Some(current))?;
        for (field, _) in fields {
            tx.put_pin(&entity, &Pin { field, by: by.clone(), reason: reason.clone(), at_ms, seq })?;
        }
        Ok(event)
    })
}

/// Releases pins on an existing entity, as one `unpinned` event; rejected
/// (writing nothing) if any of the fields is not pinned.
pub fn unpin(
    tx: &dyn Txn,
    entity: EntityRef,
    fields: Vec<String>,
    by: String,
    reason: String,
    at_ms: u64,
    audit: Auditor<Event>,
) -> Result<(Event, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let current = existing(tx, &entity)?;
        // Check every field first: a rejected operation writes nothing.
        let pinned = tx.pins(&entity)?;
        if let Some(name) = fields.iter().find(|f| !pinned.iter().any(|p| &p.field == *f)) {
            return Err(StoreError::Rejected(format!(
                "{entity}.{name} is not pinned (see `concord history {entity}`)"
            )));
        }
        for name in &fields {
            tx.remove_pin(&entity, name)?;
        }
        let event = Event {
            seq: tx.next_event_seq()?,
            at_ms,
            agent: format!("human:{by}"),
            entity: entity.clone(),
            version: current.version,
            kind: EventKind::Unpinned,
            changes: vec![],
            reason,
            invocation: 0,
            detail: Some(serde_json::json!({ "fields": fields }).to_string()),
        };
        super::append(tx, &event, None)?;
        Ok(event)
    })
}

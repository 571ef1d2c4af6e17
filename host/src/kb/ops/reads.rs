//! The rules of reads that interpret the log: what an agent has not seen
//! yet, an entity's recent past, its state at a past point, and replay.

use super::{Txn, audited};
use crate::audit::AuditEntry;
use crate::kb::model::{Entity, EntityRef, Event};
use crate::kb::store::{AtPoint, Auditor, ReplayReport, StoreError};

/// The most events one `recent` or `changes-since-read` answer holds.
pub const MAX_READ_EVENTS: usize = 1000;

/// One entity's events, newest first: what [`recent`] walks. A write
/// transaction ([`Txn`]) has one, and so does a backend's read snapshot.
pub trait EntityHistory {
    /// Gives `visit` the entity's events newest first, until it returns
    /// `false` or the history ends.
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError>;
}

/// The entity's events at or after `since_ms`, oldest first (the newest
/// [`MAX_READ_EVENTS`] of them).
pub fn recent(history: &dyn EntityHistory, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    history.events_newest_first(entity, &mut |event| {
        if event.at_ms < since_ms || out.len() >= MAX_READ_EVENTS {
            return false;
        }
        out.push(event);
        true
    })?;
    out.reverse();
    Ok(out)
}

/// The entity's events since `agent` last read it (oldest first, at most
/// [`MAX_READ_EVENTS`]), moving the agent's cursor past them.
pub fn changes_since_read(
    tx: &dyn Txn,
    agent: String,
    entity: EntityRef,
    at_ms: u64,
    audit: Auditor<Vec<Event>>,
) -> Result<(Vec<Event>, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let since = tx.read_cursor(&agent, &entity)?;
        let out = tx.events_after(&entity, since, MAX_READ_EVENTS)?;
        if let Some(last) = out.last() {
            tx.put_read_cursor(&agent, &entity, last.seq)?;
        }
        Ok(out)
    })
}

/// The entity's state at `at`, folded from its events oldest first.
pub fn state_at(
    events: impl IntoIterator<Item = Result<Event, StoreError>>,
    at: AtPoint,
) -> Result<Option<Entity>, StoreError> {
    let mut state = None;
    for event in events {
        let event = event?;
        let past = match at {
            AtPoint::Seq(n) => event.seq > n,
            AtPoint::Time(t) => event.at_ms > t,
        };
        if past {
            break;
        }
        state = Entity::apply(state, &event);
    }
    Ok(state)
}

/// Rebuilds every entity from `events` (the whole log, oldest first) and
/// compares it with `stored` (the projection, with the key each is stored
/// under): every difference, named.
pub fn replay(
    events: impl IntoIterator<Item = Result<Event, StoreError>>,
    stored: impl IntoIterator<Item = Result<(String, Entity), StoreError>>,
) -> Result<ReplayReport, StoreError> {
    // A hash map by entity: replay is one lookup per event (no key string
    // built), and order only matters for the report, sorted below. A value
    // is `None` only while its event is applied.
    let mut rebuilt: std::collections::HashMap<EntityRef, Option<Entity>> = Default::default();
    let mut count = 0;
    for event in events {
        let event = event?;
        count += 1;
        match rebuilt.get_mut(&event.entity) {
            Some(slot) => *slot = Entity::apply_owned(slot.take(), event),
            None => {
                if let Some(created) = Entity::apply_owned(None, event) {
                    rebuilt.insert(created.entity.clone(), Some(created));
                }
            }
        }
    }
    let mut differences = Vec::new();
    let mut stored_count = 0;
    for item in stored {
        let (key, stored) = item?;
        stored_count += 1;
        if stored.entity.key() != key {
            differences.push(format!("{key}: the projection stores {} under this key", stored.entity));
            continue;
        }
        match rebuilt.remove(&stored.entity).flatten() {
            None => differences
                .push(format!("{key}: in the projection (version {}) but no event creates it", stored.version)),
            Some(r) if r != stored => differences.push(format!(
                "{key}: the projection has version {} by {}, the events give version {} by {}",
                stored.version, stored.updated_by, r.version, r.updated_by
            )),
            Some(_) => {}
        }
    }
    let mut missing: Vec<_> = rebuilt.into_values().flatten().map(|r| (r.entity.key(), r.version)).collect();
    missing.sort();
    for (key, version) in missing {
        differences.push(format!("{key}: the events give version {version}, but the projection lacks it"));
    }
    Ok(ReplayReport { events: count, entities: stored_count, differences })
}

/// Verifies the audit chain as a backend stores it: each entry's stored
/// bytes under its seq, in seq order. An entry that does not decode, or is
/// stored under another seq than its own, breaks the chain there, as a bad
/// hash does.
pub fn verify_stored<B: AsRef<[u8]>>(
    rows: impl IntoIterator<Item = Result<(u64, B), StoreError>>,
) -> Result<crate::audit::Verification, StoreError> {
    use crate::audit::{AuditEntry, ChainVerifier, Verification};
    let mut chain = ChainVerifier::default();
    for row in rows {
        let (seq, bytes) = row?;
        let entry: AuditEntry = match serde_json::from_slice(bytes.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Verification::Broken { seq, problem: format!("the entry does not decode: {e} (edited)") });
            }
        };
        if entry.seq != seq {
            return Ok(Verification::Broken {
                seq,
                problem: format!("stored under {seq} but claims seq {} (moved)", entry.seq),
            });
        }
        if let Err(broken) = chain.push(&entry) {
            return Ok(broken);
        }
    }
    Ok(chain.finish())
}

//! Copying a whole store into an empty one (`concord migrate`), between
//! any two backends, and checking the copy.
//!
//! The copy is replayed, not poured: events are appended through the rules'
//! own [`append`](super::append), so the target's projection is what its
//! events make it (and checked equal to the source's); audit entries are
//! appended through [`Txn::append_audit`] with their own times, so the
//! target computes every hash itself, and an entry whose hash comes out
//! other than the source's stops the copy (the source's chain is broken).
//! Records with no history (pins, leases, actions, change requests, read
//! cursors, the fencing counter, host state) are stored as they are.

use super::Txn;
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, Verification};
use crate::kb::model::{EntityRef, Event};
use crate::kb::store::{Import, Store, StoreError};

/// How many events or audit entries one import transaction carries.
pub const CHUNK: usize = 1000;

/// Applies one part of a copied store (see [`Import`]), in `tx`.
pub fn import(tx: &dyn Txn, part: Import) -> Result<(), StoreError> {
    match part {
        Import::Events(events) => events.into_iter().try_for_each(|event| import_event(tx, event)),
        Import::Audit(entries) => entries.into_iter().try_for_each(|entry| import_audit(tx, entry)),
        Import::Pins(pins) => pins.iter().try_for_each(|(entity, pin)| tx.put_pin(entity, pin)),
        Import::Actions(actions) => actions.iter().try_for_each(|record| {
            tx.insert_action(record)?;
            match record.delivered_at_ms {
                Some(_) => tx.deliver_action(record),
                None => Ok(()),
            }
        }),
        Import::ChangeRequests(requests) => requests.iter().try_for_each(|r| tx.put_change_request(r)),
        Import::Extras(extras) => {
            for lease in &extras.leases {
                tx.put_lease(lease)?;
            }
            for (agent, key, seq) in &extras.cursors {
                let entity = key.parse::<EntityRef>().map_err(|e| StoreError::Corrupt {
                    what: format!("the read cursor of {agent} on {key}"),
                    reason: e.to_string(),
                })?;
                tx.put_read_cursor(agent, &entity, *seq)?;
            }
            for (name, value) in &extras.host_state {
                tx.put_host_state(name, value)?;
            }
            tx.raise_fence(extras.next_fence)
        }
    }
}

fn import_event(tx: &dyn Txn, event: Event) -> Result<(), StoreError> {
    let next = tx.next_event_seq()?;
    if event.seq != next {
        return Err(StoreError::Rejected(format!(
            "event {} arrived where event {next} belongs: a store is copied whole, in order, into an empty one",
            event.seq
        )));
    }
    let before = tx.entity(&event.entity)?;
    super::append(tx, &event, before)
}

fn import_audit(tx: &dyn Txn, entry: AuditEntry) -> Result<(), StoreError> {
    let draft = AuditDraft {
        agent: entry.agent.clone(),
        digest: entry.digest.clone(),
        invocation: Some(entry.invocation),
        call: entry.call.clone(),
        entities: entry.entities.clone(),
        arg_bytes: entry.args.len(),
        args: entry.args.clone(),
        decision: entry.decision,
        rule: entry.rule.clone(),
        peer: entry.peer.clone(),
        fields: entry.fields.clone(),
        causation: entry.causation,
        outcome: entry.outcome.clone(),
        duration_us: entry.duration_us,
    };
    let copied = tx.append_audit(draft, entry.at_ms)?;
    if copied != entry {
        return Err(StoreError::Rejected(format!(
            "audit entry {} did not come out the same in the copy (seq {}, hash {} for {}): the source's chain is broken there; see `concord audit verify` on it",
            entry.seq, copied.seq, copied.hash, entry.hash
        )));
    }
    Ok(())
}

/// What [`copy`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub events: u64,
    pub entities: u64,
    pub audit: u64,
    pub pins: u64,
    pub leases: u64,
    pub actions: u64,
    pub pending_actions: u64,
    pub change_requests: u64,
    pub cursors: u64,
    /// The audit chain's head, the same in both stores.
    pub audit_head: String,
}

/// Whether a store holds nothing yet.
pub fn is_empty(store: &dyn Store) -> Result<bool, StoreError> {
    let one = AuditFilter { limit: Some(1), ..Default::default() };
    Ok(store.events(0, 1)?.is_empty()
        && store.audit(&one)?.is_empty()
        && store.list(None, None, 1)?.is_empty()
        && store.actions()?.is_empty()
        && store.change_requests(0, 1)?.is_empty())
}

/// Copies `from` whole into `to`, which must be empty, then checks the
/// copy: the audit verifies on both with the same head, the target's
/// projection replays clean and equals the source's, and the counts match.
/// A copy that fails part way leaves `to` partly filled: empty it (or make
/// a new one) before trying again.
pub fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, StoreError> {
    if !is_empty(to)? {
        return Err(StoreError::Rejected(
            "the target already holds a knowledge base: `concord migrate` copies into an empty one only (nothing was changed)"
                .into(),
        ));
    }
    let source_chain = match from.verify_audit()? {
        Verification::Intact { head, .. } => head,
        Verification::Broken { seq, problem } => {
            return Err(StoreError::Rejected(format!(
                "the source's audit chain is broken at entry {seq} ({problem}); nothing was copied"
            )));
        }
    };
    let mut copied = Copied::default();
    let mut after = 0;
    loop {
        let events = from.events(after, CHUNK)?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        copied.events += events.len() as u64;
        to.import(Import::Events(events))?;
    }
    let mut after = 0;
    loop {
        let filter = AuditFilter { after: Some(after), limit: Some(CHUNK), ..Default::default() };
        let entries = from.audit(&filter)?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        copied.audit += entries.len() as u64;
        to.import(Import::Audit(entries))?;
    }
    let mut key: Option<String> = None;
    loop {
        let page = from.list(None, key.as_deref(), CHUNK)?;
        let Some(last) = page.last() else { break };
        key = Some(last.entity.key());
        copied.entities += page.len() as u64;
        let mut pins = Vec::new();
        for entity in &page {
            if to.get(&entity.entity)?.as_ref() != Some(entity) {
                return Err(StoreError::Rejected(format!(
                    "{} replays to another state in the copy than the source holds: run `concord replay` on the source",
                    entity.entity
                )));
            }
            pins.extend(from.pins(&entity.entity)?.into_iter().map(|p| (entity.entity.clone(), p)));
        }
        copied.pins += pins.len() as u64;
        if !pins.is_empty() {
            to.import(Import::Pins(pins))?;
        }
    }
    let actions = from.actions()?;
    copied.actions = actions.len() as u64;
    copied.pending_actions = actions.iter().filter(|a| a.delivered_at_ms.is_none()).count() as u64;
    for chunk in actions.chunks(CHUNK) {
        to.import(Import::Actions(chunk.to_vec()))?;
    }
    let mut after = 0;
    loop {
        let requests = from.change_requests(after, CHUNK)?;
        let Some(last) = requests.last() else { break };
        after = last.id;
        copied.change_requests += requests.len() as u64;
        to.import(Import::ChangeRequests(requests))?;
    }
    let extras = from.extras()?;
    copied.leases = extras.leases.len() as u64;
    copied.cursors = extras.cursors.len() as u64;
    to.import(Import::Extras(extras.clone()))?;

    // The checks, on what the target holds now.
    match to.verify_audit()? {
        Verification::Intact { entries, head } if entries == copied.audit && head == source_chain => {
            copied.audit_head = head;
        }
        other => {
            return Err(StoreError::Rejected(format!("the copied audit does not verify as the source's: {other:?}")));
        }
    }
    let replay = to.replay()?;
    if !replay.differences.is_empty() || replay.events != copied.events || replay.entities != copied.entities {
        return Err(StoreError::Rejected(format!("the copy does not replay as the source: {replay:?}")));
    }
    let target = to.extras()?;
    if target.leases != extras.leases || target.cursors != extras.cursors || target.next_fence < extras.next_fence {
        return Err(StoreError::Rejected(
            "the copy's leases, cursors or fencing counter differ from the source's".into(),
        ));
    }
    if to.actions()? != actions {
        return Err(StoreError::Rejected("the copy's outbox differs from the source's".into()));
    }
    Ok(copied)
}

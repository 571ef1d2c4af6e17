//! The reads: `kb.get`, `kb.history`, `kb.recent` and
//! `coord.changes-since-read`. Each checks the entity's kind and id
//! ([`Policy::check_read`](crate::policy::Policy::check_read)) and is
//! audited as a read (see [`Store::append_read_audit`]): it does not wait
//! for the disk.

use super::{Caller, Gate, HostFault, MAX_HISTORY, elapsed_us, mark_refusal};
use crate::audit::{AuditDraft, calls};
use crate::kb::{Entity, EntityRef, Event, Store, StoreError, now_ms};
use crate::policy::Refusal;
use serde_json::json;
use std::time::Instant;

impl Gate {
    pub async fn get(&self, caller: &Caller, entity: EntityRef) -> Result<Result<Option<Entity>, String>, HostFault> {
        let started = self.enter(caller, calls::GET).await?;
        // The hottest call: its arguments are written directly, not through
        // a serde_json::Value, and the key is formatted once.
        let key = entity.key();
        let args = format!("{{\"entity\":{}}}", serde_json::Value::from(key.as_str()));
        let mut draft = self.draft_with(caller, calls::GET, vec![key.clone()], args);
        if let Err(refusal) = self.settings.load().policy.check_read(&entity) {
            return self.refuse_read(draft, started, &refusal);
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
        if let Err(refusal) = self.settings.load().policy.check_read(&entity) {
            return self.refuse_read(draft, started, &refusal);
        }
        let events = self.blocking(move |s| read(s, &entity)).await?;
        draft.outcome = format!("{} events", events.len());
        self.record(draft, started)?;
        Ok(Ok(events))
    }

    /// Audits a read refused by [`Policy::check_read`](crate::policy::Policy::check_read)
    /// (through the shared [`mark_refusal`], so that it names its rule) and
    /// answers the agent with the refusal.
    fn refuse_read<T>(
        &self,
        mut draft: AuditDraft,
        started: Instant,
        refusal: &Refusal,
    ) -> Result<Result<T, String>, HostFault> {
        mark_refusal(&mut draft, refusal);
        self.record(draft, started)?;
        Ok(Err(refusal.to_string()))
    }

    pub async fn changes_since_read(
        &self,
        caller: &Caller,
        entity: EntityRef,
    ) -> Result<Result<Vec<Event>, String>, HostFault> {
        let started = self.enter(caller, calls::CHANGES).await?;
        let draft = self.draft(caller, calls::CHANGES, vec![entity.key()], json!({ "entity": entity.key() }));
        if let Err(refusal) = self.settings.load().policy.check_read(&entity) {
            return self.refuse_read(draft, started, &refusal);
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

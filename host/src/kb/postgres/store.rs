//! The [`Store`] contract on PostgreSQL: each effect is a writer job
//! running the rules of [`ops`] in a batch's transaction; each read is a
//! query on the pool.
//!
//! Durability: an effect is answered after its batch commits with
//! `synchronous_commit = on`, so the answer implies the server has it on
//! disk. The audit entries of calls without effects (`record_read`,
//! `append_read_audit`) go through the writer too, batched with whatever
//! else this host is writing, and are durable when they return: stronger
//! than [`READ_AUDIT_FLUSH`](crate::kb::READ_AUDIT_FLUSH) asks, because a
//! global, gap-free audit seq can only be handed out under the cluster's
//! lock. Those calls wait for a round trip; on an async thread they wait
//! inside `block_in_place` (see [`super::reads::block`]).

use super::reads::{Pages, Param, PoolHistory};
use super::{PgStore, decode, int, uint};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, Verification};
use crate::kb::model::{ActionRecord, ChangeRequest, Entity, EntityRef, Event, Lease, Pin, Value, now_ms};
use crate::kb::ops::{self, Txn as _};
use crate::kb::store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, Done, Guard, LeaseOutcome,
    ReplayReport, Store, StoreError,
};
use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;

fn events_of(store: &PgStore, sql: &'static str, params: Vec<Param>) -> Result<Vec<Event>, StoreError> {
    store.bodies(sql, params, |r| format!("event {}", r.get::<_, i64>("seq")))
}

impl Store for PgStore {
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        let key = entity.key();
        let rows = self.query("SELECT body FROM concord_entities WHERE key = $1", vec![Box::new(key.clone())])?;
        rows.first().map(|r| decode(r.get::<_, &[u8]>(0), || format!("entity {key}"))).transpose()
    }

    fn sync_then(&self, done: Done<()>) {
        // Every answered effect and every numbered audit entry is already
        // committed (see the module docs), and reads see only committed rows.
        done(Ok(()))
    }

    fn health(&self) -> Result<(), String> {
        let Some(w) = &self.writer else { return Ok(()) };
        if !w.is_running() {
            return Err("the store's writer has stopped".into());
        }
        match &*w.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(why) => Err(format!("the last write to PostgreSQL at {} failed: {why}", self.server)),
            None => Ok(()),
        }
    }

    fn stats(&self) -> crate::metrics::StoreStats {
        let Some(w) = &self.writer else { return Default::default() };
        crate::metrics::StoreStats {
            batch_size: Some(w.shared.batch_sizes.snapshot()),
            sync_latency: Some(w.shared.commit_latency.snapshot()),
            queued: w.shared.queued.load(Relaxed) as u64,
        }
    }

    fn durable_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn get_at(&self, entity: &EntityRef, at: AtPoint) -> Result<Option<Entity>, StoreError> {
        let events = events_of(
            self,
            "SELECT seq, body FROM concord_events WHERE entity = $1 ORDER BY seq",
            vec![Box::new(entity.key())],
        )?;
        ops::reads::state_at(events.into_iter().map(Ok), at)
    }

    fn history(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        events_of(
            self,
            "SELECT seq, body FROM concord_events WHERE entity = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            vec![Box::new(entity.key()), Box::new(int(after_seq)), Box::new(int(limit as u64))],
        )
    }

    fn list(&self, kind: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<Entity>, StoreError> {
        // Keys are `kind/id`, and `0` sorts right after `/`: a kind's
        // entities are the keys from `kind/` up to `kind0` (byte order: the
        // column is COLLATE "C").
        let (low, high) = match kind {
            Some(k) => (format!("{k}/"), Some(format!("{k}0"))),
            None => (String::new(), None),
        };
        self.bodies(
            "SELECT key, body FROM concord_entities \
             WHERE key >= $1 AND ($2::text IS NULL OR key > $2) AND ($3::text IS NULL OR key < $3) \
             ORDER BY key LIMIT $4",
            vec![Box::new(low), Box::new(after.map(str::to_string)), Box::new(high), Box::new(int(limit as u64))],
            |r| format!("entity {}", r.get::<_, &str>("key")),
        )
    }

    fn history_back(&self, entity: &EntityRef, before_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        events_of(
            self,
            "SELECT seq, body FROM concord_events WHERE entity = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
            vec![Box::new(entity.key()), Box::new(int(before_seq)), Box::new(int(limit as u64))],
        )
    }

    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        ops::reads::recent(&PoolHistory(self), entity, since_ms)
    }

    fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        Ok(events_of(self, "SELECT seq, body FROM concord_events WHERE seq = $1", vec![Box::new(int(seq))])?.pop())
    }

    fn commit(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError> {
        self.run(move |tx| ops::commit::commit(tx, request, guard, audit))
    }

    fn commit_then(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
        done: Done<(CommitOutcome, AuditEntry)>,
    ) {
        self.submit(move |tx| ops::commit::commit(tx, request, guard, audit), done)
    }

    fn act(
        &self,
        request: ActRequest,
        guard: Guard,
        audit: Auditor<ActOutcome>,
    ) -> Result<(ActOutcome, AuditEntry), StoreError> {
        self.run(move |tx| ops::act::act(tx, request, guard, audit))
    }

    fn pending_actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        self.bodies(
            "SELECT id, body FROM concord_actions WHERE pending ORDER BY id LIMIT $1",
            vec![Box::new(int(limit as u64))],
            |r| format!("action {}", r.get::<_, i64>("id")),
        )
    }

    fn claim_pending_actions(&self, limit: usize, for_ms: u64) -> Result<Vec<ActionRecord>, StoreError> {
        // SKIP LOCKED: a host claiming meanwhile takes the next ones rather
        // than waiting; `claimed_until` keeps them this host's afterwards.
        let now = now_ms();
        let mut claimed: Vec<ActionRecord> = self.bodies(
            "UPDATE concord_actions SET claimed_until = $2 WHERE id IN \
             (SELECT id FROM concord_actions WHERE pending AND claimed_until <= $1 \
              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, body",
            vec![Box::new(int(now)), Box::new(int(now.saturating_add(for_ms))), Box::new(int(limit as u64))],
            |r| format!("action {}", r.get::<_, i64>("id")),
        )?;
        claimed.sort_by_key(|a| a.id);
        Ok(claimed)
    }

    fn release_action_claims(&self, ids: &[u64]) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| int(*id)).collect();
        self.query("UPDATE concord_actions SET claimed_until = 0 WHERE id = ANY($1) AND pending", vec![Box::new(ids)])
            .map(drop)
    }

    fn claim_schedule_fire(&self, schedule: &str, due_ms: u64) -> Result<bool, StoreError> {
        // The primary key decides: one insert of (name, due) succeeds. A
        // week's claims are kept per schedule (a host far behind would
        // otherwise claim an old fire again); older ones go as new ones come.
        let rows = self.query(
            "WITH gone AS (DELETE FROM concord_schedule_fires WHERE name = $1 AND due_ms < $2::bigint - 604800000) \
             INSERT INTO concord_schedule_fires (name, due_ms) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1",
            vec![Box::new(schedule.to_string()), Box::new(int(due_ms))],
        )?;
        Ok(!rows.is_empty())
    }

    fn actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        self.bodies("SELECT id, body FROM concord_actions ORDER BY id", vec![], |r| {
            format!("action {}", r.get::<_, i64>("id"))
        })
    }

    fn delivery_failed(
        &self,
        id: u64,
        failure: crate::kb::DeliveryFailure,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError> {
        self.run(move |tx| ops::act::delivery_failed(tx, id, failure, audit))
    }

    fn retry_action(
        &self,
        id: u64,
        at_ms: u64,
        audit: Auditor<ActionRecord>,
    ) -> Result<(ActionRecord, AuditEntry), StoreError> {
        self.run(move |tx| ops::act::retry(tx, id, at_ms, audit))
    }

    fn mark_delivered(&self, id: u64, at_ms: u64) -> Result<(), StoreError> {
        self.run(move |tx| ops::act::mark_delivered(tx, id, at_ms))
    }

    fn lease(
        &self,
        actor: Actor,
        entity: EntityRef,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
        self.run(move |tx| ops::leases::lease(tx, actor, entity, ttl_ms, now_ms, audit))
    }

    fn release(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        audit: Auditor<bool>,
    ) -> Result<(bool, AuditEntry), StoreError> {
        let now = now_ms();
        self.run(move |tx| ops::leases::release(tx, actor, entity, token, now, audit))
    }

    fn renew(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
        self.run(move |tx| ops::leases::renew(tx, actor, entity, token, ttl_ms, now_ms, audit))
    }

    fn break_lease(
        &self,
        entity: EntityRef,
        at_ms: u64,
        audit: Auditor<Lease>,
    ) -> Result<(Lease, AuditEntry), StoreError> {
        self.run(move |tx| ops::leases::break_lease(tx, entity, at_ms, audit))
    }

    fn live_lease(&self, entity: &EntityRef, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        let key = entity.key();
        let leases: Vec<Lease> =
            self.bodies("SELECT body FROM concord_leases WHERE entity = $1", vec![Box::new(key.clone())], |_| {
                format!("lease on {key}")
            })?;
        Ok(leases.into_iter().next().filter(|l| l.is_live(now_ms)))
    }

    fn request_change(
        &self,
        request: ChangeRequest,
        actor: Actor,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(ChangeRequest, AuditEntry), StoreError> {
        self.run(move |tx| ops::requests::request_change(tx, request, actor, at_ms, audit))
    }

    fn change_requests(&self, after: u64, limit: usize) -> Result<Vec<ChangeRequest>, StoreError> {
        self.bodies(
            "SELECT id, body FROM concord_change_requests WHERE id > $1 ORDER BY id LIMIT $2",
            vec![Box::new(int(after)), Box::new(int(limit as u64))],
            |r| format!("change request {}", r.get::<_, i64>("id")),
        )
    }

    fn expire_change_request(
        &self,
        id: u64,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(move |tx| ops::requests::expire_change_request(tx, id, reason, at_ms, audit))
    }

    fn resolve_change(
        &self,
        id: u64,
        actor: Actor,
        applied: bool,
        reason: String,
        at_ms: u64,
        audit: Auditor<Result<ChangeRequest, String>>,
    ) -> Result<(Result<ChangeRequest, String>, AuditEntry), StoreError> {
        self.run(move |tx| ops::requests::resolve_change(tx, id, actor, applied, reason, at_ms, audit))
    }

    fn pin(
        &self,
        entity: EntityRef,
        fields: Vec<(String, Value)>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(move |tx| ops::pins::pin(tx, entity, fields, by, reason, at_ms, audit))
    }

    fn unpin(
        &self,
        entity: EntityRef,
        fields: Vec<String>,
        by: String,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(move |tx| ops::pins::unpin(tx, entity, fields, by, reason, at_ms, audit))
    }

    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError> {
        let key = entity.key();
        self.bodies(
            "SELECT body FROM concord_pins WHERE entity = $1 ORDER BY field",
            vec![Box::new(key.clone())],
            |_| format!("pin on {key}"),
        )
    }

    fn changes_since_read(
        &self,
        agent: String,
        entity: EntityRef,
        audit: Auditor<Vec<Event>>,
    ) -> Result<(Vec<Event>, AuditEntry), StoreError> {
        let now = now_ms();
        self.run(move |tx| ops::reads::changes_since_read(tx, agent, entity, now, audit))
    }

    fn record_read(&self, agent: String, key: String, seq: u64, draft: AuditDraft) -> Result<u64, StoreError> {
        let at_ms = now_ms();
        self.run(move |tx| Ok(tx.append_audit_and_cursor(draft, at_ms, Some((&agent, &key, seq)))?.seq))
    }

    fn replay(&self) -> Result<ReplayReport, StoreError> {
        let events = Pages::new(self, "SELECT seq, body FROM concord_events WHERE seq > $1 ORDER BY seq LIMIT $2", 0)
            .map(|row| {
                let row = row?;
                decode(row.get::<_, &[u8]>(1), || format!("event {}", row.get::<_, i64>(0)))
            });
        // The projection whole: replay holds every entity's state anyway.
        let stored = self.query("SELECT key, body FROM concord_entities ORDER BY key", vec![])?;
        let stored = stored.iter().map(|row| {
            let key: String = row.get(0);
            let entity = decode(row.get::<_, &[u8]>(1), || format!("entity {key}"))?;
            Ok((key, entity))
        });
        ops::reads::replay(events, stored)
    }

    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
        let at_ms = now_ms();
        self.run(move |tx| tx.append_audit(draft, at_ms))
    }

    fn append_read_audit(&self, draft: AuditDraft) -> Result<u64, StoreError> {
        let at_ms = now_ms();
        self.run(move |tx| tx.append_audit(draft, at_ms).map(|e| e.seq))
    }

    fn audit_entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
        let mut found: Vec<AuditEntry> =
            self.bodies("SELECT body FROM concord_audit WHERE seq = $1", vec![Box::new(int(seq))], |_| {
                format!("audit entry {seq}")
            })?;
        Ok(found.pop())
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        super::audit::query(self, filter)
    }

    fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        events_of(
            self,
            "SELECT seq, body FROM concord_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            vec![Box::new(int(after_seq)), Box::new(int(limit as u64))],
        )
    }

    fn verify_audit(&self) -> Result<Verification, StoreError> {
        let rows = Pages::new(self, "SELECT seq, body FROM concord_audit WHERE seq > $1 ORDER BY seq LIMIT $2", 0).map(
            |row| {
                let row = row?;
                Ok((uint(row.get(0), || "an audit seq".into())?, row.get::<_, Vec<u8>>(1)))
            },
        );
        ops::reads::verify_stored(rows)
    }

    fn request_key(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let rows = self
            .query("SELECT at_ms, record FROM concord_request_keys WHERE key = $1", vec![Box::new(key.to_string())])?;
        rows.first().map(|r| Ok((uint(r.get(0), || format!("request key {key}"))?, r.get::<_, Vec<u8>>(1)))).transpose()
    }

    fn put_request_key(
        &self,
        key: String,
        at_ms: u64,
        record: Vec<u8>,
        expire_before_ms: u64,
    ) -> Result<(), StoreError> {
        self.run(move |tx| tx.put_request_key(&key, at_ms, &record, expire_before_ms))
    }

    fn host_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows =
            self.query("SELECT value FROM concord_host_state WHERE name = $1", vec![Box::new(name.to_string())])?;
        Ok(rows.first().map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn put_host_state(&self, name: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |tx| tx.put_host_state(&name, &value))
    }

    fn extras(&self) -> Result<crate::kb::store::Extras, StoreError> {
        let head = self.query("SELECT next_fence FROM concord_head WHERE id = 1", vec![])?;
        let next_fence = head.first().map_or(Ok(1), |r| uint(r.get(0), || "concord_head.next_fence".into()))?;
        let leases = self.bodies("SELECT entity, body FROM concord_leases ORDER BY entity", vec![], |r| {
            format!("lease on {}", r.get::<_, &str>("entity"))
        })?;
        let cursors = self
            .query("SELECT agent, entity, seq FROM concord_read_cursors ORDER BY agent, entity", vec![])?
            .iter()
            .map(|r| Ok((r.get(0), r.get(1), uint(r.get(2), || "a read cursor".into())?)))
            .collect::<Result<_, StoreError>>()?;
        let host_state = self
            .query("SELECT name, value FROM concord_host_state ORDER BY name COLLATE \"C\"", vec![])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(crate::kb::store::Extras { next_fence, leases, cursors, host_state })
    }

    fn import(&self, part: crate::kb::store::Import) -> Result<(), StoreError> {
        self.run(move |tx| ops::migrate::import(tx, part))
    }
}

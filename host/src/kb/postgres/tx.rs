//! A batch's transaction as the rules see it: [`PgTx`] implements
//! [`ops::Txn`] over the writer's connection, inside the transaction that
//! holds the head row's lock. Counters (the next event seq, the audit
//! chain's head, the next action id, the fencing counter) are read once per
//! batch, under the lock, and kept in [`Heads`] until it commits: no other
//! host can move them meanwhile.

use super::writer::pg_error;
use super::{decode, encode, int, uint};
use crate::audit::{AuditDraft, AuditEntry};
use crate::kb::model::{ActionRecord, ChangeRequest, Entity, EntityRef, Event, Lease, Pin};
use crate::kb::ops;
use crate::kb::store::StoreError;
use std::cell::RefCell;
use std::collections::HashMap;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// The writer's connection, with its prepared statements. Used by the
/// writer's thread alone, which blocks on the backend's runtime for each
/// call (it is not one of the runtime's threads).
pub(super) struct Conn {
    pub(super) client: tokio_postgres::Client,
    handle: Handle,
    server: String,
    statements: RefCell<HashMap<&'static str, Statement>>,
    /// Statements that wrote, so far: the writer tells from it whether a
    /// failed job had written anything.
    writes: std::cell::Cell<u64>,
    /// Whether the server failed a statement since the last
    /// [`Conn::take_failed`]: the transaction is aborted then.
    failed: std::cell::Cell<bool>,
}

impl Conn {
    pub(super) fn new(client: tokio_postgres::Client, handle: Handle, server: String) -> Self {
        Conn {
            client,
            handle,
            server,
            statements: RefCell::default(),
            writes: std::cell::Cell::new(0),
            failed: std::cell::Cell::new(false),
        }
    }

    pub(super) fn server(&self) -> &str {
        &self.server
    }

    pub(super) fn writes(&self) -> u64 {
        self.writes.get()
    }

    pub(super) fn take_failed(&self) -> bool {
        self.failed.replace(false)
    }

    fn error(&self, e: &tokio_postgres::Error) -> StoreError {
        self.failed.set(true);
        pg_error(&self.server, e)
    }

    fn statement(&self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.handle.block_on(self.client.prepare(sql)).map_err(|e| self.error(&e))?;
        self.statements.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.handle.block_on(self.client.query(&s, params)).map_err(|e| self.error(&e))
    }

    /// The writer's own statements without parameters, as rows of text,
    /// in one round trip (`BEGIN; SELECT …`).
    pub(super) fn simple_rows(&self, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryRow>, StoreError> {
        let messages = self.handle.block_on(self.client.simple_query(sql)).map_err(|e| self.error(&e))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }

    pub(super) fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        self.writes.set(self.writes.get() + 1);
        self.handle.block_on(self.client.execute(&s, params)).map_err(|e| self.error(&e))
    }

    /// Two statements sent together (pipelined): one round trip.
    fn execute2(
        &self,
        a: (&'static str, &[&(dyn ToSql + Sync)]),
        b: (&'static str, &[&(dyn ToSql + Sync)]),
    ) -> Result<(), StoreError> {
        let (sa, sb) = (self.statement(a.0)?, self.statement(b.0)?);
        self.writes.set(self.writes.get() + 2);
        self.handle
            .block_on(futures_util::future::try_join(self.client.execute(&sa, a.1), self.client.execute(&sb, b.1)))
            .map(drop)
            .map_err(|e| self.error(&e))
    }

    /// Three queries sent together (pipelined): one round trip.
    #[allow(clippy::type_complexity)]
    fn query3(
        &self,
        a: (&'static str, &[&(dyn ToSql + Sync)]),
        b: (&'static str, &[&(dyn ToSql + Sync)]),
        c: (&'static str, &[&(dyn ToSql + Sync)]),
    ) -> Result<(Vec<Row>, Vec<Row>, Vec<Row>), StoreError> {
        let (sa, sb, sc) = (self.statement(a.0)?, self.statement(b.0)?, self.statement(c.0)?);
        self.handle
            .block_on(futures_util::future::try_join3(
                self.client.query(&sa, a.1),
                self.client.query(&sb, b.1),
                self.client.query(&sc, c.1),
            ))
            .map_err(|e| self.error(&e))
    }

    /// Statements without parameters, in one round trip.
    pub(super) fn simple(&self, sql: &str) -> Result<(), StoreError> {
        self.handle.block_on(self.client.batch_execute(sql)).map_err(|e| self.error(&e))
    }

    fn opt_body(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.query(sql, params)?.first().map(|r| r.get::<_, Vec<u8>>(0)))
    }
}

/// The counters a batch reads once under the lock (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct Heads {
    /// The next fencing token.
    pub(super) fence: u64,
    next_event: Option<u64>,
    /// The next audit seq and the hash of the entry before it.
    audit: Option<(u64, String)>,
    next_action: Option<u64>,
}

impl Heads {
    pub(super) fn new(fence: u64) -> Self {
        Heads { fence, next_event: None, audit: None, next_action: None }
    }
}

/// An entity's pins and lease, read with its state in one round trip.
struct Prefetched {
    key: String,
    pins: Vec<Pin>,
    lease: Option<Lease>,
}

/// A batch's transaction (see the module docs).
pub(super) struct PgTx<'a> {
    pub(super) conn: &'a Conn,
    heads: RefCell<Heads>,
    /// The pins and lease of the entity last read: a commit or an action
    /// reads the entity, then its lease and pins, and each round trip is
    /// taken under the cluster's lock. Valid until a write to that
    /// entity's pins or lease, which drops it (every write goes through
    /// this transaction, and no other host writes while it holds the lock).
    prefetched: RefCell<Option<Prefetched>>,
}

impl<'a> PgTx<'a> {
    pub(super) fn new(conn: &'a Conn, heads: Heads) -> Self {
        PgTx { conn, heads: RefCell::new(heads), prefetched: RefCell::new(None) }
    }

    /// Forgets the prefetched pins and lease of `key` (about to change).
    fn forget(&self, key: &str) {
        let mut slot = self.prefetched.borrow_mut();
        if slot.as_ref().is_some_and(|p| p.key == key) {
            *slot = None;
        }
    }

    pub(super) fn heads(&self) -> Heads {
        self.heads.borrow().clone()
    }

    /// Puts the counters back as they were before a job that rolled back.
    pub(super) fn restore(&self, heads: Heads) {
        *self.heads.borrow_mut() = heads;
        *self.prefetched.borrow_mut() = None;
    }

    fn max(&self, sql: &'static str, what: &str) -> Result<u64, StoreError> {
        let rows = self.conn.query(sql, &[])?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        uint(n, || what.to_string())
    }

    /// Stores an idempotency record for the API (see `Store::put_request_key`).
    pub(super) fn put_request_key(
        &self,
        key: &str,
        at_ms: u64,
        record: &[u8],
        expire_before_ms: u64,
    ) -> Result<(), StoreError> {
        let (at, before, per_put) = (int(at_ms), int(expire_before_ms), crate::kb::store::EXPIRED_PER_PUT as i64);
        self.conn.execute2(
            (
                "DELETE FROM concord_request_keys WHERE key IN \
                 (SELECT key FROM concord_request_keys WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
                &[&before, &per_put],
            ),
            (
                "INSERT INTO concord_request_keys (key, at_ms, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET at_ms = excluded.at_ms, record = excluded.record",
                &[&key, &at, &record],
            ),
        )
    }
}

/// How many events one page of a newest-first walk reads.
const WALK_PAGE: i64 = 64;

impl ops::EntityHistory for PgTx<'_> {
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError> {
        let key = entity.key();
        let mut before = i64::MAX;
        loop {
            let rows = self.conn.query(
                "SELECT seq, body FROM concord_events WHERE entity = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                &[&key, &before, &WALK_PAGE],
            )?;
            let full = rows.len() as i64 == WALK_PAGE;
            for row in rows {
                before = row.get(0);
                let event = decode(row.get::<_, &[u8]>(1), || format!("event {before}"))?;
                if !visit(event) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

impl ops::Txn for PgTx<'_> {
    fn entity(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        let key = entity.key();
        let (state, pins, lease) = self.conn.query3(
            ("SELECT body FROM concord_entities WHERE key = $1", &[&key]),
            ("SELECT body FROM concord_pins WHERE entity = $1 ORDER BY field", &[&key]),
            ("SELECT body FROM concord_leases WHERE entity = $1", &[&key]),
        )?;
        let pins =
            pins.iter().map(|r| decode(r.get::<_, &[u8]>(0), || format!("pin on {key}"))).collect::<Result<_, _>>()?;
        let lease = lease.first().map(|r| decode(r.get::<_, &[u8]>(0), || format!("lease on {key}"))).transpose()?;
        let state = state.first().map(|r| decode(r.get::<_, &[u8]>(0), || format!("entity {key}"))).transpose()?;
        *self.prefetched.borrow_mut() = Some(Prefetched { key, pins, lease });
        Ok(state)
    }

    fn events_after(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let (key, after, limit) = (entity.key(), int(after_seq), int(limit as u64));
        let rows = self.conn.query(
            "SELECT seq, body FROM concord_events WHERE entity = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&key, &after, &limit],
        )?;
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(1), || format!("event {}", r.get::<_, i64>(0)))).collect()
    }

    fn next_event_seq(&self) -> Result<u64, StoreError> {
        if let Some(next) = self.heads.borrow().next_event {
            return Ok(next);
        }
        let next = self.max("SELECT coalesce(max(seq), 0) FROM concord_events", "the last event seq")? + 1;
        self.heads.borrow_mut().next_event = Some(next);
        Ok(next)
    }

    fn append_event(&self, event: &Event, projection: Option<&Entity>) -> Result<(), StoreError> {
        let (seq, key, body) = (int(event.seq), event.entity.key(), encode(event)?);
        let insert = "INSERT INTO concord_events (seq, entity, body) VALUES ($1, $2, $3)";
        match projection {
            Some(next) => {
                let state = encode(next)?;
                self.conn.execute2(
                    (insert, &[&seq, &key, &body]),
                    (
                        "INSERT INTO concord_entities (key, body) VALUES ($1, $2) \
                         ON CONFLICT (key) DO UPDATE SET body = excluded.body",
                        &[&key, &state],
                    ),
                )?;
            }
            None => {
                self.conn.execute(insert, &[&seq, &key, &body])?;
            }
        }
        self.heads.borrow_mut().next_event = Some(event.seq + 1);
        Ok(())
    }

    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError> {
        let key = entity.key();
        if let Some(p) = self.prefetched.borrow().as_ref().filter(|p| p.key == key) {
            return Ok(p.pins.clone());
        }
        let rows = self.conn.query("SELECT body FROM concord_pins WHERE entity = $1 ORDER BY field", &[&key])?;
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(0), || format!("pin on {key}"))).collect()
    }

    fn put_pin(&self, entity: &EntityRef, pin: &Pin) -> Result<(), StoreError> {
        let (key, body) = (entity.key(), encode(pin)?);
        self.forget(&key);
        self.conn
            .execute(
                "INSERT INTO concord_pins (entity, field, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (entity, field) DO UPDATE SET body = excluded.body",
                &[&key, &pin.field, &body],
            )
            .map(drop)
    }

    fn remove_pin(&self, entity: &EntityRef, field: &str) -> Result<bool, StoreError> {
        let key = entity.key();
        self.forget(&key);
        Ok(self.conn.execute("DELETE FROM concord_pins WHERE entity = $1 AND field = $2", &[&key, &field])? > 0)
    }

    fn lease(&self, entity: &EntityRef) -> Result<Option<Lease>, StoreError> {
        let key = entity.key();
        if let Some(p) = self.prefetched.borrow().as_ref().filter(|p| p.key == key) {
            return Ok(p.lease.clone());
        }
        let body = self.conn.opt_body("SELECT body FROM concord_leases WHERE entity = $1", &[&key])?;
        body.map(|b| decode(&b, || format!("lease on {key}"))).transpose()
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let (key, body) = (lease.entity.key(), encode(lease)?);
        self.forget(&key);
        self.conn
            .execute(
                "INSERT INTO concord_leases (entity, body) VALUES ($1, $2) \
                 ON CONFLICT (entity) DO UPDATE SET body = excluded.body",
                &[&key, &body],
            )
            .map(drop)
    }

    fn remove_lease(&self, entity: &EntityRef) -> Result<(), StoreError> {
        let key = entity.key();
        self.forget(&key);
        self.conn.execute("DELETE FROM concord_leases WHERE entity = $1", &[&key]).map(drop)
    }

    fn next_fence(&self) -> Result<u64, StoreError> {
        // The counter lives in the locked head row: strictly increasing
        // across leases, entities, hosts and restarts.
        let mut heads = self.heads.borrow_mut();
        let token = heads.fence;
        heads.fence += 1;
        Ok(token)
    }

    fn action(&self, id: u64) -> Result<Option<ActionRecord>, StoreError> {
        let body = self.conn.opt_body("SELECT body FROM concord_actions WHERE id = $1", &[&int(id)])?;
        body.map(|b| decode(&b, || format!("action {id}"))).transpose()
    }

    fn action_by_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let rows = self.conn.query("SELECT id FROM concord_actions WHERE idempotency_key = $1", &[&key])?;
        rows.first().map(|r| uint(r.get(0), || format!("the action id of key {key}"))).transpose()
    }

    fn next_action_id(&self) -> Result<u64, StoreError> {
        if let Some(next) = self.heads.borrow().next_action {
            return Ok(next);
        }
        let next = self.max("SELECT coalesce(max(id), 0) FROM concord_actions", "the last action id")? + 1;
        self.heads.borrow_mut().next_action = Some(next);
        Ok(next)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.max("SELECT count(*) FROM concord_actions WHERE pending", "the outbox's length")
    }

    fn insert_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let (id, body) = (int(record.id), encode(record)?);
        self.conn.execute(
            "INSERT INTO concord_actions (id, idempotency_key, pending, body) VALUES ($1, $2, true, $3)",
            &[&id, &record.idempotency_key, &body],
        )?;
        self.heads.borrow_mut().next_action = Some(record.id + 1);
        Ok(())
    }

    fn deliver_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let (id, body) = (int(record.id), encode(record)?);
        self.conn
            .execute("UPDATE concord_actions SET pending = false, body = $2 WHERE id = $1", &[&id, &body])
            .map(drop)
    }

    fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let (id, body) = (int(record.id), encode(record)?);
        self.conn.execute("UPDATE concord_actions SET body = $2 WHERE id = $1", &[&id, &body]).map(drop)
    }

    fn requeue_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let (id, body) = (int(record.id), encode(record)?);
        self.conn
            .execute(
                "UPDATE concord_actions SET pending = true, claimed_until = 0, body = $2 WHERE id = $1",
                &[&id, &body],
            )
            .map(drop)
    }

    fn change_request(&self, id: u64) -> Result<Option<ChangeRequest>, StoreError> {
        let body = self.conn.opt_body("SELECT body FROM concord_change_requests WHERE id = $1", &[&int(id)])?;
        body.map(|b| decode(&b, || format!("change request {id}"))).transpose()
    }

    fn put_change_request(&self, request: &ChangeRequest) -> Result<(), StoreError> {
        let (id, body) = (int(request.id), encode(request)?);
        self.conn
            .execute(
                "INSERT INTO concord_change_requests (id, body) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                &[&id, &body],
            )
            .map(drop)
    }

    fn read_cursor(&self, agent: &str, entity: &EntityRef) -> Result<u64, StoreError> {
        let key = entity.key();
        let rows = self
            .conn
            .query("SELECT seq FROM concord_read_cursors WHERE agent = $1 AND entity = $2", &[&agent, &key])?;
        rows.first().map_or(Ok(0), |r| uint(r.get(0), || format!("the read cursor of {agent} on {key}")))
    }

    fn put_read_cursor(&self, agent: &str, entity: &EntityRef, seq: u64) -> Result<(), StoreError> {
        let key = entity.key();
        self.conn
            .execute(
                "INSERT INTO concord_read_cursors (agent, entity, seq) VALUES ($1, $2, $3) \
                 ON CONFLICT (agent, entity) DO UPDATE SET seq = excluded.seq",
                &[&agent, &key, &int(seq)],
            )
            .map(drop)
    }

    fn raise_fence(&self, next: u64) -> Result<(), StoreError> {
        let mut heads = self.heads.borrow_mut();
        heads.fence = heads.fence.max(next);
        Ok(())
    }

    fn put_host_state(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO concord_host_state (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .map(drop)
    }

    fn append_audit(&self, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
        self.append_audit_and_cursor(draft, at_ms, None)
    }
}

impl PgTx<'_> {
    /// [`ops::Txn::append_audit`], with a read cursor (agent, entity key,
    /// seq) moved up in the same round trip: a `kb.get`'s entry and its
    /// cursor. A read of an older version leaves the cursor where it is; a
    /// read of nothing (seq 0) moves none.
    pub(super) fn append_audit_and_cursor(
        &self,
        draft: AuditDraft,
        at_ms: u64,
        cursor: Option<(&str, &str, u64)>,
    ) -> Result<AuditEntry, StoreError> {
        let (seq, prev) = match self.heads.borrow_mut().audit.take() {
            Some(head) => head,
            None => {
                let rows = self.conn.query("SELECT seq, body FROM concord_audit ORDER BY seq DESC LIMIT 1", &[])?;
                match rows.first() {
                    Some(r) => {
                        let last: AuditEntry = decode(r.get::<_, &[u8]>(1), || "the last audit entry".into())?;
                        (last.seq + 1, last.hash)
                    }
                    None => (1, crate::audit::GENESIS_HASH.to_string()),
                }
            }
        };
        let mut entry = AuditEntry::unsealed(draft, seq, at_ms);
        let body = entry.link_encoded(&prev);
        let decision = entry.decision.as_str();
        let (seq_i, at_i, inv_i) = (int(entry.seq), int(entry.at_ms), int(entry.invocation));
        let insert: (&'static str, &[&(dyn ToSql + Sync)]) = (
            "INSERT INTO concord_audit (seq, at_ms, agent, invocation, call, decision, entities, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[&seq_i, &at_i, &entry.agent, &inv_i, &entry.call, &decision, &entry.entities, &body],
        );
        let inserted = match cursor {
            // A read of nothing (seq 0) moves no cursor.
            Some((agent, key, read)) if read > 0 => {
                let read = int(read);
                self.conn.execute2(insert, (ADVANCE_CURSOR, &[&agent, &key, &read]))
            }
            _ => self.conn.execute(insert.0, insert.1).map(drop),
        };
        match inserted {
            Ok(()) => {
                self.heads.borrow_mut().audit = Some((seq + 1, entry.hash.clone()));
                Ok(entry)
            }
            Err(e) => {
                // Not written: the chain's head stays where it was.
                self.heads.borrow_mut().audit = Some((seq, prev));
                Err(e)
            }
        }
    }
}

/// Moves a read cursor up, never down.
const ADVANCE_CURSOR: &str = "INSERT INTO concord_read_cursors (agent, entity, seq) VALUES ($1, $2, $3) \
     ON CONFLICT (agent, entity) DO UPDATE SET seq = greatest(concord_read_cursors.seq, excluded.seq)";

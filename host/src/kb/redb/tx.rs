//! A batch's write transaction: [`Tx`] opens each table once per batch and
//! records every change for the journal ([`Logged`]), and implements the
//! rules' [`ops::Txn`] on top.

use super::*;

/// A write transaction in a batch, with the audit chain. Jobs open tables
/// with [`Tx::open`], which records every change for the journal, and
/// append audit entries with [`append_audit_in`].
///
/// Invariant: jobs reach the transaction only through `open`; the
/// [`Logged`] table it returns gives out no `&mut` redb table, so no change
/// can bypass the journal (a change missing from it would be lost at a
/// crash, while later ones were kept).
pub(super) struct Tx<'a> {
    pub(super) txn: &'a WriteTransaction,
    pub(super) shared: &'a WriterShared,
    pub(super) chain: RefCell<&'a mut Chain>,
    /// The batch's changes, when the journal makes it durable.
    pub(super) changes: Option<&'a RefCell<Changes>>,
    pub(super) tables: Tables<'a>,
}

impl<'a> Tx<'a> {
    /// A transaction outside the writer's batches (the layout upgrade):
    /// its changes are not journaled, so it must commit durably.
    pub(super) fn unjournaled(txn: &'a WriteTransaction, shared: &'a WriterShared, chain: &'a mut Chain) -> Self {
        Tx { txn, shared, chain: RefCell::new(chain), changes: None, tables: Tables::default() }
    }

    /// Opens a table for the job; its changes go to the journal.
    pub(super) fn open<K: Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<Logged<'a, 'a, K, V>, redb::TableError> {
        let table = self.txn.open_table(def)?;
        let log = match self.changes {
            // Every table a job may write is in `journaled!`; a new one
            // that is not fails its first batch loudly, in every test.
            Some(changes) => Some((
                changes,
                table_id(def.name()).ok_or_else(|| {
                    redb::TableError::Storage(redb::StorageError::Io(std::io::Error::other(format!(
                        "table {} is not in the journal's list (journaled!)",
                        def.name()
                    ))))
                })?,
            )),
            None => None,
        };
        Ok(Logged { table, log })
    }

    /// A table from the batch's cache (see [`Tables`]), opened if needed.
    /// Taking one a job already holds is an error, as in redb.
    #[track_caller]
    pub(super) fn cached<'s, K: Key + 'static, V: redb::Value + 'static>(
        &self,
        slot: &'s RefCell<Option<Logged<'a, 'a, K, V>>>,
        def: TableDefinition<K, V>,
    ) -> Result<std::cell::RefMut<'s, Logged<'a, 'a, K, V>>, redb::TableError> {
        let held = || redb::TableError::TableAlreadyOpen(def.name().to_string(), std::panic::Location::caller());
        let mut open = slot.try_borrow_mut().map_err(|_| held())?;
        if open.is_none() {
            *open = Some(self.open(def)?);
        }
        std::cell::RefMut::filter_map(open, Option::as_mut).map_err(|_| held())
    }

    /// Takes the waiting read entries into this transaction.
    pub(super) fn take_pending(&self) -> Result<(), StoreError> {
        // Room for as many as last time, allocated outside the lock:
        // callers then push without regrowing it.
        let room = Vec::with_capacity(self.chain.borrow().last_pending);
        let pending = std::mem::replace(&mut self.shared.tail().pending, room);
        self.chain.borrow_mut().last_pending = pending.len();
        self.write_reads(pending)
    }

    /// Links and writes read entries (in seq order), with their cursor moves.
    pub(super) fn write_reads(&self, reads: Vec<Pending>) -> Result<(), StoreError> {
        if reads.is_empty() {
            return Ok(());
        }
        let mut guard = self.chain.borrow_mut();
        // Fields borrowed apart: an entry of `in_txn` and `index`.
        let chain: &mut Chain = &mut guard;
        let first = chain.in_txn.len();
        chain.in_txn.extend(reads.into_iter().map(Written::Read));
        let mut cursors = self.cursors().map_err(backend)?;
        for i in first..chain.in_txn.len() {
            let prev = std::mem::take(&mut chain.last_hash);
            let Written::Read(p) = &mut chain.in_txn[i] else { continue };
            let stored = p.entry.link_encoded(&prev);
            let hash = p.entry.hash.clone();
            insert_audit(self, &mut chain.index, &p.entry, &stored)?;
            if let Some((agent, key, seq)) = &p.cursor {
                let old = cursors.get((agent.as_str(), key.as_str())).map_err(backend)?.map_or(0, |v| v.value());
                if *seq > old {
                    cursors.insert((agent.as_str(), key.as_str()), *seq).map_err(backend)?;
                }
            }
            chain.last_hash = hash;
        }
        Ok(())
    }
}

/// A table open in a batch: reads go straight to redb; each change is
/// also recorded for the journal (when it is in use).
pub(super) struct Logged<'t, 'c, K: Key + 'static, V: redb::Value + 'static> {
    pub(super) table: redb::Table<'t, K, V>,
    pub(super) log: Option<(&'c RefCell<Changes>, u8)>,
}

impl<K: Key + 'static, V: redb::Value + 'static> Logged<'_, '_, K, V> {
    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), redb::StorageError> {
        self.table.insert(key.borrow(), value.borrow())?;
        if let Some((changes, table)) = self.log {
            changes.borrow_mut().insert(
                table,
                K::as_bytes(key.borrow()).as_ref(),
                V::as_bytes(value.borrow()).as_ref(),
            );
        }
        Ok(())
    }

    /// Removes `key`; whether it was there (only a removal is journaled).
    pub(super) fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<bool, redb::StorageError> {
        let removed = self.table.remove(key.borrow())?.is_some();
        if removed && let Some((changes, table)) = self.log {
            changes.borrow_mut().remove(table, K::as_bytes(key.borrow()).as_ref());
        }
        Ok(removed)
    }
}

impl<K: Key + 'static, V: redb::Value + 'static> ReadableTableMetadata for Logged<'_, '_, K, V> {
    fn stats(&self) -> redb::Result<redb::TableStats> {
        self.table.stats()
    }

    fn len(&self) -> redb::Result<u64> {
        self.table.len()
    }
}

impl<K: Key + 'static, V: redb::Value + 'static> ReadableTable<K, V> for Logged<'_, '_, K, V> {
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> redb::Result<Option<redb::AccessGuard<'_, V>>> {
        self.table.get(key)
    }

    fn range<'a, KR>(&self, range: impl std::ops::RangeBounds<KR> + 'a) -> redb::Result<redb::Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        self.table.range(range)
    }

    fn first(&self) -> redb::Result<Option<(redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>)>> {
        self.table.first()
    }

    fn last(&self) -> redb::Result<Option<(redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>)>> {
        self.table.last()
    }
}

impl ops::EntityHistory for Tx<'_> {
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError> {
        let events = self.events().map_err(backend)?;
        let history = self.history().map_err(backend)?;
        newest_first(&*events, &*history, entity, visit)
    }
}

/// The rules' view of a batch's transaction. Each method borrows the
/// batch's cached tables only for its own call, so a guard may read while
/// the rules hold the transaction.
impl ops::Txn for Tx<'_> {
    fn entity(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        load_entity(&*self.entities().map_err(backend)?, &entity.key())
    }

    fn events_after(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let key = entity.key();
        let events = self.events().map_err(backend)?;
        let history = self.history().map_err(backend)?;
        let range = history.range((key.as_str(), after_seq.saturating_add(1))..=(key.as_str(), u64::MAX));
        range
            .map_err(backend)?
            .take(limit)
            .map(|item| load_event(&*events, item.map_err(backend)?.0.value().1))
            .collect()
    }

    fn next_event_seq(&self) -> Result<u64, StoreError> {
        next_seq(&*self.events().map_err(backend)?)
    }

    fn append_event(&self, event: &Event, projection: Option<&Entity>) -> Result<(), StoreError> {
        let key = event.entity.key();
        self.events().map_err(backend)?.insert(event.seq, encode(event)?.as_slice()).map_err(backend)?;
        self.history().map_err(backend)?.insert((key.as_str(), event.seq), ()).map_err(backend)?;
        if let Some(next) = projection {
            self.entities().map_err(backend)?.insert(key.as_str(), encode(next)?.as_slice()).map_err(backend)?;
        }
        Ok(())
    }

    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError> {
        load_pins(&*self.pin_table().map_err(backend)?, &entity.key())
    }

    fn put_pin(&self, entity: &EntityRef, pin: &Pin) -> Result<(), StoreError> {
        let key = entity.key();
        let mut pins = self.pin_table().map_err(backend)?;
        pins.insert((key.as_str(), pin.field.as_str()), encode(pin)?.as_slice()).map_err(backend)
    }

    fn remove_pin(&self, entity: &EntityRef, field: &str) -> Result<bool, StoreError> {
        let key = entity.key();
        self.pin_table().map_err(backend)?.remove((key.as_str(), field)).map_err(backend)
    }

    fn lease(&self, entity: &EntityRef) -> Result<Option<Lease>, StoreError> {
        load_lease(&*self.leases().map_err(backend)?, &entity.key())
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.entity.key();
        self.leases().map_err(backend)?.insert(key.as_str(), encode(lease)?.as_slice()).map_err(backend)
    }

    fn remove_lease(&self, entity: &EntityRef) -> Result<(), StoreError> {
        self.leases().map_err(backend)?.remove(entity.key().as_str()).map(drop).map_err(backend)
    }

    fn next_fence(&self) -> Result<u64, StoreError> {
        // One persistent counter: strictly increasing across leases,
        // entities and restarts.
        let mut meta = self.meta().map_err(backend)?;
        let token = meta.get(NEXT_FENCE).map_err(backend)?.map_or(1, |v| v.value());
        meta.insert(NEXT_FENCE, token + 1).map_err(backend)?;
        Ok(token)
    }

    fn action(&self, id: u64) -> Result<Option<ActionRecord>, StoreError> {
        match self.actions().map_err(backend)?.get(id).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("action {id}")).map(Some),
            None => Ok(None),
        }
    }

    fn action_by_key(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.action_keys().map_err(backend)?.get(key).map_err(backend)?.map(|v| v.value()))
    }

    fn next_action_id(&self) -> Result<u64, StoreError> {
        Ok(self.actions().map_err(backend)?.last().map_err(backend)?.map_or(0, |(k, _)| k.value()) + 1)
    }

    fn outbox_len(&self) -> Result<u64, StoreError> {
        self.outbox().map_err(backend)?.len().map_err(backend)
    }

    fn insert_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.actions().map_err(backend)?.insert(record.id, encode(record)?.as_slice()).map_err(backend)?;
        self.action_keys().map_err(backend)?.insert(record.idempotency_key.as_str(), record.id).map_err(backend)?;
        self.outbox().map_err(backend)?.insert(record.id, ()).map_err(backend)
    }

    fn deliver_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.actions().map_err(backend)?.insert(record.id, encode(record)?.as_slice()).map_err(backend)?;
        self.outbox().map_err(backend)?.remove(record.id).map(drop).map_err(backend)
    }

    fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.actions().map_err(backend)?.insert(record.id, encode(record)?.as_slice()).map(drop).map_err(backend)
    }

    fn requeue_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.update_action(record)?;
        self.outbox().map_err(backend)?.insert(record.id, ()).map(drop).map_err(backend)
    }

    fn change_request(&self, id: u64) -> Result<Option<ChangeRequest>, StoreError> {
        match self.requests().map_err(backend)?.get(id).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("change request {id}")).map(Some),
            None => Ok(None),
        }
    }

    fn put_change_request(&self, request: &ChangeRequest) -> Result<(), StoreError> {
        self.requests().map_err(backend)?.insert(request.id, encode(request)?.as_slice()).map_err(backend)
    }

    fn read_cursor(&self, agent: &str, entity: &EntityRef) -> Result<u64, StoreError> {
        let key = entity.key();
        Ok(self.cursors().map_err(backend)?.get((agent, key.as_str())).map_err(backend)?.map_or(0, |v| v.value()))
    }

    fn put_read_cursor(&self, agent: &str, entity: &EntityRef, seq: u64) -> Result<(), StoreError> {
        let key = entity.key();
        self.cursors().map_err(backend)?.insert((agent, key.as_str()), seq).map_err(backend)
    }

    fn raise_fence(&self, next: u64) -> Result<(), StoreError> {
        let mut meta = self.meta().map_err(backend)?;
        let current = meta.get(NEXT_FENCE).map_err(backend)?.map_or(1, |v| v.value());
        if next > current {
            meta.insert(NEXT_FENCE, next).map_err(backend)?;
        }
        Ok(())
    }

    fn put_host_state(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.host_state().map_err(backend)?.insert(name, value).map_err(backend)
    }

    fn append_audit(&self, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
        append_audit_in(self, draft, at_ms)
    }
}

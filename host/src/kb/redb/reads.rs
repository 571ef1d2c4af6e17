//! Snapshot reads: point reads sharing one snapshot and the entities
//! decoded from it, and the loaders and history walks every read uses.

use super::*;

/// The entities table in a read transaction, shared by point reads until
/// the writer commits again (see [`RedbStore::entities`]).
pub(super) struct Snapshot {
    /// [`WriterShared::commits`] when it was taken.
    pub(super) commits: u64,
    pub(super) entities: Arc<PointReads>,
}

/// A snapshot's entities table, and the entities decoded from it so far.
pub(super) struct PointReads {
    pub(super) table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// By key. A point read of an entity already read in this snapshot
    /// clones it instead of decoding its JSON again (the decoding was about
    /// two thirds of a wasm `kb.get`'s host call, measured with perf). It
    /// holds what the snapshot holds, so it goes with the snapshot, at the
    /// next commit; at most [`DECODED_MAX`] entities. `None` for a
    /// read-only store, whose reads do not share a snapshot.
    pub(super) decoded: Option<std::sync::Mutex<std::collections::HashMap<String, Entity>>>,
}

/// The most entities a snapshot keeps decoded.
pub(super) const DECODED_MAX: usize = 4096;

impl PointReads {
    /// `shared`: kept as the snapshot of later reads, so worth decoding for.
    pub(super) fn new(table: redb::ReadOnlyTable<&'static str, &'static [u8]>, shared: bool) -> Self {
        Self { table, decoded: shared.then(Default::default) }
    }

    pub(super) fn decoded(&self) -> Option<std::sync::MutexGuard<'_, std::collections::HashMap<String, Entity>>> {
        // Only a cache of what the table holds: whatever a panic left is valid.
        Some(self.decoded.as_ref()?.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(super) fn get(&self, key: String) -> Result<Option<Entity>, StoreError> {
        if let Some(entity) = self.decoded().and_then(|d| d.get(&key).cloned()) {
            return Ok(Some(entity));
        }
        let found = load_entity(&self.table, &key)?;
        if let (Some(entity), Some(mut decoded)) = (&found, self.decoded())
            && decoded.len() < DECODED_MAX
        {
            decoded.insert(key, entity.clone());
        }
        Ok(found)
    }
}

/// Reads shared by read and write transactions.
pub(super) fn load_entity(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Entity>, StoreError> {
    match table.get(key).map_err(backend)? {
        Some(bytes) => decode(bytes.value(), || format!("entity {key}")).map(Some),
        None => Ok(None),
    }
}

pub(super) fn load_event(table: &impl ReadableTable<u64, &'static [u8]>, seq: u64) -> Result<Event, StoreError> {
    let bytes = table
        .get(seq)
        .map_err(backend)?
        .ok_or_else(|| StoreError::Corrupt { what: format!("event {seq}"), reason: "indexed but missing".into() })?;
    decode(bytes.value(), || format!("event {seq}"))
}

/// The seqs of one entity's events, newest first.
pub(super) fn history_seqs_rev<'a>(
    history: &'a impl ReadableTable<(&'static str, u64), ()>,
    key: &'a str,
) -> Result<impl Iterator<Item = Result<u64, StoreError>> + 'a, StoreError> {
    let range = history.range((key, 0)..=(key, u64::MAX)).map_err(backend)?;
    Ok(range.rev().map(|item| item.map(|(k, _)| k.value().1).map_err(backend)))
}

/// The next event seq.
pub(super) fn next_seq(events: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(events.last().map_err(backend)?.map_or(0, |(k, _)| k.value()) + 1)
}

pub(super) fn load_pins(
    pins: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    key: &str,
) -> Result<Vec<Pin>, StoreError> {
    let mut out = Vec::new();
    for item in pins.range((key, "")..).map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        if k.value().0 != key {
            break;
        }
        out.push(decode(v.value(), || format!("pin on {key}"))?);
    }
    Ok(out)
}

pub(super) fn load_lease(
    leases: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Lease>, StoreError> {
    match leases.get(key).map_err(backend)? {
        Some(v) => decode(v.value(), || format!("lease on {key}")).map(Some),
        None => Ok(None),
    }
}

/// Gives `visit` one entity's events newest first (see
/// [`ops::EntityHistory`]), from open event and history tables.
pub(super) fn newest_first(
    events: &impl ReadableTable<u64, &'static [u8]>,
    history: &impl ReadableTable<(&'static str, u64), ()>,
    entity: &EntityRef,
    visit: &mut dyn FnMut(Event) -> bool,
) -> Result<(), StoreError> {
    let key = entity.key();
    for seq in history_seqs_rev(history, &key)? {
        if !visit(load_event(events, seq?)?) {
            break;
        }
    }
    Ok(())
}

/// One entity's history as a read snapshot sees it.
pub(super) struct ReadHistory {
    pub(super) events: redb::ReadOnlyTable<u64, &'static [u8]>,
    pub(super) history: redb::ReadOnlyTable<(&'static str, u64), ()>,
}

impl ops::EntityHistory for ReadHistory {
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError> {
        newest_first(&self.events, &self.history, entity, visit)
    }
}

impl RedbStore {
    /// The entities table for a point read. Beginning a read transaction
    /// and opening a table cost more than the read itself (about half of
    /// `Store::get`, a fifth of the thread making wasm gets, measured with
    /// perf), so reads share one snapshot until the writer's next commit.
    ///
    /// Invariant: a read sees every commit answered before it started. The
    /// writer counts a commit and drops the shared snapshot before it
    /// answers anyone; a reader reads the count first and takes the shared
    /// snapshot only if it was taken at that same count, so a snapshot from
    /// before a commit is never handed to a reader who saw its answer. A
    /// snapshot pins the pages it sees only until the next commit drops it.
    /// Read-only stores (another process may write) always read afresh.
    pub(super) fn entities(&self) -> Result<Arc<PointReads>, StoreError> {
        let open = |shared| -> Result<_, StoreError> {
            Ok(Arc::new(PointReads::new(self.read()?.open_table(ENTITIES).map_err(backend)?, shared)))
        };
        let Some(w) = &self.writer else { return open(false) };
        let commits = w.shared.commits.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(s) = &*w.shared.snapshot()
            && s.commits == commits
        {
            return Ok(s.entities.clone());
        }
        let entities = open(true)?;
        let mut cached = w.shared.snapshot();
        // Not over a newer one another reader took meanwhile.
        if cached.as_ref().is_none_or(|s| s.commits < commits) {
            *cached = Some(Snapshot { commits, entities: entities.clone() });
        }
        Ok(entities)
    }

    pub(super) fn read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Db::ReadWrite(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
        .map_err(backend)
    }
}

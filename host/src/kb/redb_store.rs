//! The embedded default store, on redb.
//!
//! One redb file holds the event log, the projection, the per-entity history
//! index and the audit log, so a commit and its audit entry share one write
//! transaction. redb runs one write transaction at a time; reads use MVCC
//! snapshots and never wait for the writer.
//!
//! Where things are: the group-commit [`Writer`] (one thread, every pending
//! job in one transaction), the read-audit [`Tail`] (entries numbered on the
//! caller's thread, linked by the writer), [`Tx`] and [`Logged`] (what a job
//! sees of the transaction; every change is recorded), and, with exclusive
//! sharing, the write-ahead journal ([`super::journal`]) that makes each
//! batch durable with one sequential write instead of a durable redb commit.
//! Point reads share a snapshot and the entities decoded from it
//! ([`PointReads`]). The [`Store`] methods follow; the checks for a
//! damaged file (at open, and `concord check`) are in [`check`], and the
//! tests that need the private parts in `redb_store/tests.rs`.

use super::journal::{self, Changes, Deliver, Health, Journal, Op, Sync};
use super::model::{ActionRecord, ChangeRequest, Entity, EntityRef, Event, Lease, Pin, Value};
use super::ops::{self, audit_plan::AuditPlan};
use super::store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, Done, Guard, LeaseOutcome,
    READ_AUDIT_FLUSH, ReplayReport, Store, StoreError,
};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, ChainVerifier, GENESIS_HASH, Verification};
use redb::{
    ConcurrencyMode, Database, DatabaseError, Durability, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

mod check;
pub use check::{CheckReport, TableCheck};

/// seq -> event (JSON). The truth; append-only.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `kind/id` -> current entity (JSON). The projection of `EVENTS`.
const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
/// (`kind/id`, seq) -> (). Per-entity history index into `EVENTS`.
const HISTORY: TableDefinition<(&str, u64), ()> = TableDefinition::new("entity_history");
/// seq -> audit entry (JSON). Hash-chained, append-only.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// (agent, first seq) -> run. Audit index by agent. A run is the seqs one
/// index flush holds under one key (see [`Run`]).
const AUDIT_BY_AGENT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit_runs_by_agent");
/// (`kind/id`, first seq) -> run. Audit index by entity.
const AUDIT_BY_ENTITY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit_runs_by_entity");
/// (invocation, first seq) -> run. Audit index by invocation (and so by
/// trace).
const AUDIT_BY_INVOCATION: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("audit_runs_by_invocation");
/// (agent, entity, first seq) -> run: the index of the question "what did
/// this agent do to this entity", answered in time proportional to the
/// answer.
const AUDIT_BY_AGENT_ENTITY: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("audit_runs_by_agent_entity");

/// The audit indexes of layout versions 1 to 3, one row per (key, seq).
/// Kept only to apply a journal such a version left, and to delete them
/// when the layout is upgraded (see [`RedbStore::upgrade`]).
mod retired {
    use redb::TableDefinition;
    pub const AUDIT_BY_AGENT: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_agent");
    pub const AUDIT_BY_ENTITY: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_entity");
    pub const AUDIT_BY_INVOCATION: TableDefinition<(u64, u64), ()> = TableDefinition::new("audit_by_invocation");
    pub const AUDIT_BY_AGENT_ENTITY: TableDefinition<(&str, &str, u64), ()> =
        TableDefinition::new("audit_by_agent_entity");
}
/// Format metadata and counters (`schema_version`, `next_fence`).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (`kind/id`, field) -> pin (JSON).
const PINS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("pins");
/// `kind/id` -> lease (JSON).
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// action id -> action record (JSON). Every action ever recorded.
const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("actions");
/// action id -> (). The outbox: recorded, not yet delivered.
const OUTBOX: TableDefinition<u64, ()> = TableDefinition::new("outbox");
/// idempotency key -> action id.
const ACTION_KEYS: TableDefinition<&str, u64> = TableDefinition::new("action_keys");
/// request id -> change request (JSON).
const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("change_requests");
/// (agent, `kind/id`) -> the last event seq the agent has seen.
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_cursors");
/// Idempotency key -> when it was stored (ms, u64 little-endian) and the
/// request's record (the API's, opaque here). See [`Store::request_key`].
const REQUEST_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("request_keys");
/// (stored at ms, key) -> (). What expires first, for [`REQUEST_KEYS`].
const REQUEST_KEYS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("request_keys_by_time");
/// name -> bytes: state the host derives from the logs and keeps to save
/// work (the conflicts report's counts). See [`Store::host_state`].
const HOST_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("host_state");

/// Bumped whenever the table layout or an encoding changes.
///
/// 3: the audit indexes are written in bulk and cover the entries up to
/// `meta.audit_indexed` (see [`IndexRow`]).
/// 4: the audit indexes hold runs of seqs, not a row per seq (see [`Run`]).
/// 5: request keys (idempotency) and host state.
const SCHEMA_VERSION: u64 = 5;

/// What [`RedbStore::init`] found.
enum Layout {
    Created,
    Current,
    /// An older version, to upgrade once its journal is applied.
    Old(u64),
}

enum Db {
    ReadWrite(Arc<Database>),
    ReadOnly(ReadOnlyDatabase),
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Db,
    path: PathBuf,
    /// The group-commit writer; `None` when read-only.
    writer: Option<Writer>,
    /// Journal records applied at open (after an unclean stop).
    recovered: usize,
}

/// What a write job returns to its caller.
type Reply = Box<dyn Any + Send>;
/// A write job's body.
type Work = Box<dyn FnOnce(&Tx<'_>) -> Result<Reply, StoreError> + Send>;
/// Where a job's answer goes.
type Answer = Box<dyn FnOnce(Result<Reply, StoreError>) + Send>;

/// One operation for the writer: it runs inside a shared write transaction.
///
/// Invariant: a job that returns [`StoreError::Rejected`] has written
/// nothing (it checks before it writes), so the rest of its batch can
/// commit. Any other error, or a panic, rolls the whole batch back.
struct Job {
    work: Work,
    /// Whether the job's effects must be durable before it is answered.
    durable: bool,
    reply: Answer,
}

/// What the writer's queue carries.
enum Msg {
    Job(Job),
    /// Read-call audit entries are waiting (see [`Tail`]): write them within
    /// [`READ_AUDIT_FLUSH`], or at once when `now`.
    Nudge {
        now: bool,
    },
}

/// Group commit: one thread owns writing. It takes every job waiting, runs
/// them in order in one write transaction (so a later job sees an earlier
/// one's writes, exactly as if they ran one by one), commits once, and
/// answers each caller. A batch with any durable job is committed durably
/// (fsync) before anyone is answered. When fewer jobs are waiting than the
/// last batch had, it waits up to [`GATHER`] for the rest.
///
/// Read calls do not queue jobs at all: their audit entries are numbered
/// at once and wait in the [`Tail`]; every batch takes them in, and the
/// writer commits them durably within [`READ_AUDIT_FLUSH`] when no batch
/// comes by sooner.
struct Writer {
    jobs: Option<mpsc::Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<WriterShared>,
}

/// What the writer shares with the store handle: the audit tail, counters,
/// the snapshot point reads share, and the hold that lets a test queue up
/// jobs deterministically.
#[derive(Default)]
struct WriterShared {
    tail: std::sync::Mutex<Tail>,
    hold: std::sync::Mutex<()>,
    queued: std::sync::atomic::AtomicUsize,
    batches: std::sync::atomic::AtomicU64,
    jobs: std::sync::atomic::AtomicU64,
    /// Transactions committed since the open: a snapshot's age.
    commits: std::sync::atomic::AtomicU64,
    /// Batches begun since the open, counted before each takes in the
    /// read entries waiting in the tail and before it commits, so neither
    /// a reader nor `sync` can see a batch's effects (or miss its read
    /// entries from the tail) while this count lacks it (see
    /// [`RedbStore::all_durable`]).
    shown: std::sync::atomic::AtomicU64,
    /// The last of those batches known to be durable (with every one
    /// before it), and a wake-up for whoever waits for more (the API's
    /// streams). It only grows.
    durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// Jobs per write transaction.
    batch_sizes: BatchSizes,
    /// The journal's health and sync times, once it runs.
    journal: std::sync::OnceLock<Arc<Health>>,
    snapshot: std::sync::Mutex<Option<Snapshot>>,
    /// Tests: runs just before each batch's redb commit; an error makes the
    /// commit fail (see [`commit`]).
    #[cfg(test)]
    before_commit: std::sync::Mutex<Option<BeforeCommit>>,
}

/// The histogram of jobs per batch.
struct BatchSizes(crate::metrics::Histogram);

impl Default for BatchSizes {
    fn default() -> Self {
        Self(crate::metrics::Histogram::new(crate::metrics::BATCH_BOUNDS))
    }
}

#[cfg(test)]
type BeforeCommit = Box<dyn FnMut() -> Result<(), String> + Send>;

/// The entities table in a read transaction, shared by point reads until
/// the writer commits again (see [`RedbStore::entities`]).
struct Snapshot {
    /// [`WriterShared::commits`] when it was taken.
    commits: u64,
    entities: Arc<PointReads>,
}

/// A snapshot's entities table, and the entities decoded from it so far.
struct PointReads {
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    /// By key. A point read of an entity already read in this snapshot
    /// clones it instead of decoding its JSON again (the decoding was about
    /// two thirds of a wasm `kb.get`'s host call, measured with perf). It
    /// holds what the snapshot holds, so it goes with the snapshot, at the
    /// next commit; at most [`DECODED_MAX`] entities. `None` for a
    /// read-only store, whose reads do not share a snapshot.
    decoded: Option<std::sync::Mutex<std::collections::HashMap<String, Entity>>>,
}

/// The most entities a snapshot keeps decoded.
const DECODED_MAX: usize = 4096;

impl PointReads {
    /// `shared`: kept as the snapshot of later reads, so worth decoding for.
    fn new(table: redb::ReadOnlyTable<&'static str, &'static [u8]>, shared: bool) -> Self {
        Self { table, decoded: shared.then(Default::default) }
    }

    fn decoded(&self) -> Option<std::sync::MutexGuard<'_, std::collections::HashMap<String, Entity>>> {
        // Only a cache of what the table holds: whatever a panic left is valid.
        Some(self.decoded.as_ref()?.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn get(&self, key: String) -> Result<Option<Entity>, StoreError> {
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

impl WriterShared {
    /// See [`RedbStore::all_durable`].
    fn all_durable(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        // The tail first: an entry leaves it only into a batch already
        // counted in `shown`.
        self.tail().pending.is_empty() && *tokio::sync::watch::Sender::borrow(&self.durable) >= self.shown.load(SeqCst)
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        // Only a cache: whatever a panic left in it is still a snapshot.
        self.snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Nothing panics while holding the tail, but a poisoned lock must not
        // take the audit log down with it: the data is still consistent.
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The audit log's numbering, shared by every caller and the writer.
///
/// Invariant: every entry gets its seq under this lock, and a read-call
/// entry enters `pending` under the same lock as it gets its seq. The writer
/// takes `pending` under the lock too, before it numbers an entry of its
/// own. So the writer always holds every entry below the seq it writes
/// next, and links the hash chain strictly in seq order: numbering a read is
/// a few hundred nanoseconds for the caller, and the chain stays gap-free.
#[derive(Default)]
struct Tail {
    /// The seq the next entry gets.
    next_seq: u64,
    /// Read-call entries numbered but not yet in a transaction, in seq order.
    pending: Vec<Pending>,
}

/// A read-call entry waiting for the writer, with the read cursor move that
/// goes with it (a `get` moves the agent's cursor for `changes-since-read`).
struct Pending {
    /// Unsealed: the writer links it into the chain.
    entry: AuditEntry,
    cursor: Option<(String, String, u64)>,
}

/// Past this many waiting read entries, the writer is asked to write them
/// at once rather than at the deadline.
const FLUSH_AT: usize = 4096;
/// Past this many, a caller waits for the writer (backpressure), so memory
/// stays bounded when reads outrun the disk.
const MAX_PENDING: usize = 65_536;

/// The writer's side of the chain: the last hash it linked, what the
/// open transaction holds (to give back to [`Tail`] if it rolls back), and
/// the audit index rows not yet written (see [`IndexRow`]).
#[derive(Default)]
struct Chain {
    last_hash: String,
    /// The hash before the open transaction.
    committed_hash: String,
    in_txn: Vec<Written>,
    /// Index rows of the entries after `meta.audit_indexed`, in seq order.
    index: Vec<IndexRow>,
    /// How many of `index` are committed (the rest go if the batch rolls back).
    index_committed: usize,
    /// How many read entries the last batch took from the tail.
    last_pending: usize,
}

/// The keys one audit entry has in the four audit indexes.
///
/// The indexes are written in bulk, not with each entry: an entry's rows
/// wait here, and every checkpoint (or [`INDEX_FLUSH_AT`] entries, or every
/// batch without the journal) writes all that wait, each table's sorted, in
/// the same transaction as `meta.audit_indexed`, the last seq they cover.
/// Written with each batch they cost a copy of every index leaf a batch
/// touches (one per commit at 16 invocations on distinct entities, in
/// four tables); in bulk a leaf is copied once per flush.
///
/// Invariant: the indexes hold every entry up to `audit_indexed`, and a
/// query reads them only up to it; the entries after it (at most a flush's
/// worth) are read from the audit table itself (see `audit`). The entries
/// are durable with their batch either way, so nothing is lost in a crash:
/// the open rebuilds the rows of the entries after `audit_indexed`.
struct IndexRow {
    seq: u64,
    agent: String,
    invocation: u64,
    entities: Vec<String>,
}

impl IndexRow {
    fn of(entry: &AuditEntry) -> Self {
        IndexRow {
            seq: entry.seq,
            agent: entry.agent.clone(),
            invocation: entry.invocation,
            entities: entry.entities.clone(),
        }
    }
}

/// With the journal, the audit indexes are written at each checkpoint, or
/// sooner once this many entries wait: what bounds the entries a query
/// reads past the indexes.
const INDEX_FLUSH_AT: usize = 4096;

/// The last audit seq the indexes cover (see [`IndexRow`]).
const AUDIT_INDEXED: &str = "audit_indexed";

/// The next fencing token, in `meta`.
const NEXT_FENCE: &str = "next_fence";

enum Written {
    Read(Pending),
    /// A job's own entry.
    Own(AuditEntry),
}

/// A write transaction in a batch, with the audit chain. Jobs open tables
/// with [`Tx::open`], which records every change for the journal, and
/// append audit entries with [`append_audit_in`].
///
/// Invariant: jobs reach the transaction only through `open`; the
/// [`Logged`] table it returns gives out no `&mut` redb table, so no change
/// can bypass the journal (a change missing from it would be lost at a
/// crash, while later ones were kept).
struct Tx<'a> {
    txn: &'a WriteTransaction,
    shared: &'a WriterShared,
    chain: RefCell<&'a mut Chain>,
    /// The batch's changes, when the journal makes it durable.
    changes: Option<&'a RefCell<Changes>>,
    tables: Tables<'a>,
}

impl<'a> Tx<'a> {
    /// A transaction outside the writer's batches (the layout upgrade):
    /// its changes are not journaled, so it must commit durably.
    fn unjournaled(txn: &'a WriteTransaction, shared: &'a WriterShared, chain: &'a mut Chain) -> Self {
        Tx { txn, shared, chain: RefCell::new(chain), changes: None, tables: Tables::default() }
    }

    /// Opens a table for the job; its changes go to the journal.
    fn open<K: Key + 'static, V: redb::Value + 'static>(
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
    fn cached<'s, K: Key + 'static, V: redb::Value + 'static>(
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
    fn take_pending(&self) -> Result<(), StoreError> {
        // Room for as many as last time, allocated outside the lock:
        // callers then push without regrowing it.
        let room = Vec::with_capacity(self.chain.borrow().last_pending);
        let pending = std::mem::replace(&mut self.shared.tail().pending, room);
        self.chain.borrow_mut().last_pending = pending.len();
        self.write_reads(pending)
    }

    /// Links and writes read entries (in seq order), with their cursor moves.
    fn write_reads(&self, reads: Vec<Pending>) -> Result<(), StoreError> {
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
struct Logged<'t, 'c, K: Key + 'static, V: redb::Value + 'static> {
    table: redb::Table<'t, K, V>,
    log: Option<(&'c RefCell<Changes>, u8)>,
}

impl<K: Key + 'static, V: redb::Value + 'static> Logged<'_, '_, K, V> {
    fn insert<'k, 'v>(
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

    fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<(), redb::StorageError> {
        let removed = self.table.remove(key.borrow())?.is_some();
        if removed && let Some((changes, table)) = self.log {
            changes.borrow_mut().remove(table, K::as_bytes(key.borrow()).as_ref());
        }
        Ok(())
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

/// A key or value type seen as its raw bytes, under the name, width and
/// order of `T`: recovery writes a journal's bytes back into a table
/// without decoding them.
#[derive(Debug)]
struct Raw<T>(std::marker::PhantomData<T>);

impl<T: redb::Value + 'static> redb::Value for Raw<T> {
    type SelfType<'a>
        = &'a [u8]
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;
    const NICHE: Option<&'static [u8]> = T::NICHE;

    fn fixed_width() -> Option<usize> {
        T::fixed_width()
    }

    fn from_bytes<'a>(data: &'a [u8]) -> &'a [u8]
    where
        Self: 'a,
    {
        data
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a &'b [u8]) -> &'a [u8]
    where
        Self: 'b,
    {
        value
    }

    fn type_name() -> redb::TypeName {
        T::type_name()
    }
}

impl<T: Key + 'static> Key for Raw<T> {
    fn compare(data1: &[u8], data2: &[u8]) -> std::cmp::Ordering {
        T::compare(data1, data2)
    }

    fn separator<'a>(left: &'a [u8], right: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        T::separator(left, right)
    }

    fn min_encoded_key() -> Option<std::borrow::Cow<'static, [u8]>> {
        T::min_encoded_key()
    }
}

/// Applies one journal operation to `def`, as raw bytes.
fn raw_op<K: Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
    op: &Op<'_>,
) -> Result<(), StoreError> {
    let raw: TableDefinition<Raw<K>, Raw<V>> = TableDefinition::new(def.name());
    let mut table = txn.open_table(raw).map_err(backend)?;
    match op {
        Op::Insert { key, value, .. } => table.insert(*key, *value).map(drop),
        Op::Remove { key, .. } => table.remove(*key).map(drop),
    }
    .map_err(backend)
}

/// The tables a batch may change, numbered for the journal (append only:
/// a record names its tables by these numbers), with the [`Tx`] accessor
/// that opens each once per batch.
macro_rules! journaled {
    (
        $($id:literal => $def:ident, $slot:ident: $k:ty, $v:ty;)*
        retired: $($rid:literal => $rdef:path;)*
    ) => {
        fn table_id(name: &str) -> Option<u8> {
            $(if $def.name() == name {
                return Some($id);
            })*
            None
        }

        fn apply_op(txn: &WriteTransaction, op: &Op<'_>) -> Result<(), StoreError> {
            let (Op::Insert { table, .. } | Op::Remove { table, .. }) = op;
            match table {
                $($id => raw_op(txn, $def, op),)*
                $($rid => raw_op(txn, $rdef, op),)*
                other => Err(StoreError::Backend(format!("the journal names table {other}, which this concord does not know"))),
            }
        }

        /// The batch's open tables: each is opened on first use and stays
        /// open to the end of the batch (opening a redb table is a lookup,
        /// and each one open adds a root update to the commit).
        #[derive(Default)]
        struct Tables<'a> {
            $($slot: RefCell<Option<Logged<'a, 'a, $k, $v>>>,)*
        }

        impl<'a> Tx<'a> {
            $(
                #[track_caller]
                fn $slot(&self) -> Result<std::cell::RefMut<'_, Logged<'a, 'a, $k, $v>>, redb::TableError> {
                    self.cached(&self.tables.$slot, $def)
                }
            )*
        }
    };
}

journaled! {
    0 => EVENTS, events: u64, &'static [u8];
    1 => ENTITIES, entities: &'static str, &'static [u8];
    2 => HISTORY, history: (&'static str, u64), ();
    3 => AUDIT, audit: u64, &'static [u8];
    8 => META, meta: &'static str, u64;
    9 => PINS, pin_table: (&'static str, &'static str), &'static [u8];
    10 => LEASES, leases: &'static str, &'static [u8];
    11 => ACTIONS, actions: u64, &'static [u8];
    12 => OUTBOX, outbox: u64, ();
    13 => ACTION_KEYS, action_keys: &'static str, u64;
    14 => REQUESTS, requests: u64, &'static [u8];
    15 => CURSORS, cursors: (&'static str, &'static str), u64;
    16 => AUDIT_BY_AGENT, audit_by_agent: (&'static str, u64), &'static [u8];
    17 => AUDIT_BY_ENTITY, audit_by_entity: (&'static str, u64), &'static [u8];
    18 => AUDIT_BY_INVOCATION, audit_by_invocation: (u64, u64), &'static [u8];
    19 => AUDIT_BY_AGENT_ENTITY, audit_by_agent_entity: (&'static str, &'static str, u64), &'static [u8];
    20 => REQUEST_KEYS, request_keys: &'static str, &'static [u8];
    21 => REQUEST_KEYS_BY_TIME, request_keys_by_time: (u64, &'static str), ();
    22 => HOST_STATE, host_state: &'static str, &'static [u8];
    // Layout versions 1 to 3: a journal they left may name these; the
    // upgrade that follows its recovery deletes them.
    retired:
    4 => retired::AUDIT_BY_AGENT;
    5 => retired::AUDIT_BY_ENTITY;
    6 => retired::AUDIT_BY_INVOCATION;
    7 => retired::AUDIT_BY_AGENT_ENTITY;
}

/// Writes an audit entry and its index rows.
/// Writes an audit entry (`stored`: its JSON, from
/// [`AuditEntry::link_encoded`]); its index rows wait in `index` (see
/// [`IndexRow`]).
fn insert_audit(tx: &Tx<'_>, index: &mut Vec<IndexRow>, entry: &AuditEntry, stored: &[u8]) -> Result<(), StoreError> {
    tx.audit().map_err(backend)?.insert(entry.seq, stored).map_err(backend)?;
    index.push(IndexRow::of(entry));
    Ok(())
}

/// Writes the index runs of `rows` (in seq order) and moves
/// `meta.audit_indexed` to the last of them.
fn flush_index(tx: &Tx<'_>, rows: &[IndexRow]) -> Result<(), StoreError> {
    let Some(last) = rows.last() else { return Ok(()) };
    let keys = IndexKeys::of(rows);
    insert_runs(tx.audit_by_agent().map_err(backend)?, keys.agent, |agent, first| (agent, first))?;
    insert_runs(tx.audit_by_invocation().map_err(backend)?, keys.invocation, |inv, first| (inv, first))?;
    insert_runs(tx.audit_by_entity().map_err(backend)?, keys.entity, |entity, first| (entity, first))?;
    insert_runs(tx.audit_by_agent_entity().map_err(backend)?, keys.agent_entity, |(agent, entity), first| {
        (agent, entity, first)
    })?;
    tx.meta().map_err(backend)?.insert(AUDIT_INDEXED, last.seq).map_err(backend)?;
    Ok(())
}

/// Groups an index's (key, seq) pairs into runs and writes them, each
/// under `row_key(key, first seq)`.
fn insert_runs<'k, P: Ord + Copy, K: Key + 'static>(
    mut table: std::cell::RefMut<'_, Logged<'_, '_, K, &'static [u8]>>,
    pairs: Vec<(P, u64)>,
    row_key: impl Fn(P, u64) -> K::SelfType<'k>,
) -> Result<(), StoreError> {
    for (key, first, run) in Run::group(pairs) {
        table.insert(row_key(key, first), run.as_slice()).map_err(backend)?;
    }
    Ok(())
}

/// The (key, seq) pairs of some index rows, one list per index, in seq
/// order. An entity an entry names twice is indexed once, as the tables of
/// one row per (key, seq) did: a run holds each seq once.
struct IndexKeys<'r> {
    agent: Vec<(&'r str, u64)>,
    invocation: Vec<(u64, u64)>,
    entity: Vec<(&'r str, u64)>,
    agent_entity: Vec<((&'r str, &'r str), u64)>,
}

impl<'r> IndexKeys<'r> {
    fn of(rows: &'r [IndexRow]) -> Self {
        let mut keys = IndexKeys {
            agent: Vec::with_capacity(rows.len()),
            invocation: Vec::with_capacity(rows.len()),
            entity: Vec::with_capacity(rows.len()),
            agent_entity: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            keys.agent.push((r.agent.as_str(), r.seq));
            keys.invocation.push((r.invocation, r.seq));
            for (i, e) in r.entities.iter().enumerate() {
                if r.entities[..i].contains(e) {
                    continue;
                }
                keys.entity.push((e.as_str(), r.seq));
                keys.agent_entity.push(((r.agent.as_str(), e.as_str()), r.seq));
            }
        }
        keys
    }
}

/// A run of an audit index: ascending seqs indexed under one key, stored
/// as one row keyed by (key, first seq), whose value is the seqs as
/// LEB128 varints, each the difference from the one before (the first from
/// zero).
///
/// A flush writes one run per key it holds (up to [`Run::MAX`] seqs), so
/// its cost follows the keys it touches, not the entries: a flush of 4,096
/// reads by one agent of one entity is four rows, not 16,384. Runs never
/// overlap: each seq is flushed once.
struct Run;

impl Run {
    /// The most seqs in one run, so a query that wants only the newest few
    /// decodes little more than it returns. (Small in tests, so that their
    /// queries cross runs.)
    const MAX: usize = if cfg!(test) { 4 } else { 512 };

    /// Groups `pairs` (in seq order) by key into runs: (key, first seq,
    /// encoded run), in key order.
    fn group<K: Ord + Copy>(mut pairs: Vec<(K, u64)>) -> Vec<(K, u64, Vec<u8>)> {
        // Stable: each key's seqs stay ascending.
        pairs.sort_by_key(|p| p.0);
        let mut runs = Vec::new();
        for same in pairs.chunk_by(|a, b| a.0 == b.0) {
            for chunk in same.chunks(Run::MAX) {
                runs.push((chunk[0].0, chunk[0].1, Run::encode(chunk.iter().map(|p| p.1))));
            }
        }
        runs
    }

    fn encode(seqs: impl Iterator<Item = u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0;
        for seq in seqs {
            let mut d = seq - prev;
            prev = seq;
            loop {
                let byte = (d & 0x7f) as u8;
                d >>= 7;
                if d == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// The seqs of a run, ascending; a malformed one is an error naming
    /// the index it was read from.
    fn decode(bytes: &[u8], index: &str) -> Result<Vec<u64>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            what: format!("a run of the audit index {index}"),
            reason: "it does not decode".into(),
        };
        let mut seqs = Vec::with_capacity(bytes.len());
        let (mut prev, mut d, mut shift) = (0u64, 0u64, 0u32);
        for &b in bytes {
            // Past 64 bits: too long, or a last byte with more than the
            // one bit left.
            if shift > 63 || (shift == 63 && b & 0x7e != 0) {
                return Err(corrupt());
            }
            d |= u64::from(b & 0x7f) << shift;
            if b & 0x80 != 0 {
                shift += 7;
                continue;
            }
            prev = prev.checked_add(d).ok_or_else(corrupt)?;
            seqs.push(prev);
            (d, shift) = (0, 0);
        }
        if shift != 0 {
            return Err(corrupt());
        }
        Ok(seqs)
    }
}

/// Counters of the group-commit writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Write transactions committed (or rolled back).
    pub batches: u64,
    /// Jobs run in them.
    pub jobs: u64,
}

/// While alive, the writer takes no new batch; jobs queue up. For tests
/// that need a batch of known content (see [`RedbStore::hold_writes`]).
#[must_use]
pub struct WriteHold<'a>(
    #[expect(dead_code, reason = "held for its Drop, which releases the writer")] std::sync::MutexGuard<'a, ()>,
);

impl std::fmt::Debug for WriteHold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHold")
    }
}

/// The most jobs one transaction takes.
const MAX_BATCH: usize = 512;
/// The longest the writer waits for a batch to fill up to the size of the
/// last one (with the journal, while it runs the jobs it has). Short next to a durable commit (about 1 ms here), which a
/// larger batch shares.
const GATHER: std::time::Duration = std::time::Duration::from_micros(200);

/// The writer's side of the journal (see [`journal`]), when it is in use.
struct Journaling {
    syncer: mpsc::Sender<Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
    health: Arc<Health>,
    /// The id the next record gets: ids are consecutive.
    next_id: u64,
    checkpointed_at: std::time::Instant,
    /// Journal bytes since the last checkpoint.
    since_checkpoint: usize,
    /// Whether a batch committed since the last checkpoint.
    dirty: bool,
    /// The size of the last record.
    last_record: usize,
    /// The current cycle's epoch (see [`journal`]).
    epoch: u64,
}

/// A fresh journal epoch. Randomness failing is not a reason to stop
/// writing: the time, in nanoseconds, is unique enough across cycles.
fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    }
}

/// How often the writer checkpoints while batches come: a durable redb
/// commit, after which the journal starts over. Longer means fewer (but
/// larger) checkpoints; the journal holds at most this much to recover.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// ... or after this many journal bytes, whichever comes first.
const CHECKPOINT_BYTES: usize = 32 << 20;
/// In `meta`: the id of the last journal record this state of the store
/// holds (see [`journal`]).
const JOURNAL_APPLIED: &str = "journal_applied";

fn writer_loop(
    db: Arc<Database>,
    queue: mpsc::Receiver<Msg>,
    shared: Arc<WriterShared>,
    mut chain: Chain,
    mut journal: Option<Journaling>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Instant;
    // Since when read entries have waited in the tail (or, without the
    // journal, a non-durable commit has waited to be made durable).
    let mut dirty_since: Option<Instant> = None;
    // Jobs in the last batch: how many to wait for (see GATHER).
    let mut last_batch = 1;
    loop {
        let checkpoint_due = journal.as_ref().filter(|j| j.dirty).map(|j| j.checkpointed_at + CHECKPOINT_EVERY);
        // After a journal failure nothing is written any more: no deadline,
        // just refuse the jobs that come.
        let stopped = journal.as_ref().is_some_and(|j| j.health.failure().is_some());
        let deadline = match stopped {
            true => None,
            false => [dirty_since.map(|since| since + READ_AUDIT_FLUSH), checkpoint_due].into_iter().flatten().min(),
        };
        let first = match deadline {
            Some(deadline) => match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) => msg,
                Err(mpsc::RecvTimeoutError::Timeout) => Msg::Nudge { now: true },
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match queue.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        let hold = shared.hold.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut batch, mut flush) = (Vec::new(), false);
        let mut take = |msg: Msg, batch: &mut Vec<Job>| match msg {
            Msg::Job(job) => batch.push(job),
            Msg::Nudge { now } => {
                flush |= now;
            }
        };
        take(first, &mut batch);
        // Take what is waiting. If fewer jobs came than the last batch had,
        // the others are likely on their way (their callers were answered
        // together, a moment ago): wait up to GATHER for them, so batches
        // stay as large as the concurrency instead of alternating small and
        // large. One caller alone never waits (its last batch was 1). With
        // the journal the writer does not wait idle: it runs what it has
        // and takes the others into the same batch as they come (`more`).
        let gather_until = Instant::now() + GATHER;
        let stream = journal.is_some();
        while batch.len() < MAX_BATCH {
            let msg = match queue.try_recv() {
                Ok(msg) => msg,
                Err(_) if stream || batch.is_empty() || batch.len() >= last_batch => break,
                Err(_) => match queue.recv_timeout(gather_until.saturating_duration_since(Instant::now())) {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            take(msg, &mut batch);
        }
        let want = if batch.is_empty() { 0 } else { last_batch };
        last_batch = batch.len();
        drop(hold);
        if !shared.tail().pending.is_empty() {
            dirty_since.get_or_insert_with(Instant::now);
        }
        let checkpoint = journal.as_ref().is_some_and(|j| {
            j.dirty && (j.checkpointed_at.elapsed() >= CHECKPOINT_EVERY || j.since_checkpoint >= CHECKPOINT_BYTES)
        });
        if batch.is_empty() && !flush && !checkpoint {
            // Only "entries are waiting": they go with the next batch, or
            // at the deadline.
            continue;
        }
        shared.queued.fetch_sub(batch.len(), SeqCst);
        shared.batches.fetch_add(1, SeqCst);
        shared.jobs.fetch_add(batch.len() as u64, SeqCst);
        let durable = flush || batch.iter().any(|j| j.durable);
        let mut taken = batch.len();
        let more = || -> Option<Job> {
            while stream && taken < want.min(MAX_BATCH) {
                // A test holding the writer gets its jobs together, in the
                // next batch.
                let _held = match shared.hold.try_lock() {
                    Ok(guard) => guard,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return None,
                };
                let msg = match queue.try_recv() {
                    Ok(msg) => msg,
                    Err(_) => queue.recv_timeout(gather_until.saturating_duration_since(Instant::now())).ok()?,
                };
                // A nudge asks for a batch, and this is one.
                if let Msg::Job(job) = msg {
                    taken += 1;
                    shared.queued.fetch_sub(1, SeqCst);
                    shared.jobs.fetch_add(1, SeqCst);
                    return Some(job);
                }
            }
            None
        };
        let committed = run_batch(&db, &shared, &mut chain, batch, more, durable, journal.as_mut(), checkpoint);
        last_batch = taken;
        if taken > 0 {
            shared.batch_sizes.0.observe(taken as f64);
        }
        // With the journal every committed batch is on its way to disk.
        let on_disk = committed && (durable || journal.is_some());
        dirty_since = if on_disk && shared.tail().pending.is_empty() {
            None
        } else if committed {
            // Not durable yet, or entries arrived meanwhile: in time.
            Some(dirty_since.unwrap_or_else(Instant::now))
        } else {
            // The batch failed (its entries are back in the tail): retry
            // after a full interval, not at once, or a lasting failure
            // would spin.
            Some(Instant::now())
        };
        if !committed
            && checkpoint
            && let Some(j) = journal.as_mut()
        {
            j.checkpointed_at = Instant::now();
        }
    }
    // Closed: everything left is written, and redb is checkpointed, so the
    // next open has nothing to recover.
    let checkpoint = journal.is_some();
    run_batch(&db, &shared, &mut chain, Vec::new(), || None, true, journal.as_mut(), checkpoint);
    if let Some(mut j) = journal {
        let thread = j.thread.take();
        drop(j);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A job's answer, and whether it waits for the batch to be durable.
type Outcome = (Answer, bool, Option<Result<Reply, StoreError>>);

/// Runs one batch in one transaction: `batch`, then the jobs `more` gives
/// (the writer's gathering, overlapped with the work), with the read
/// entries waiting in the tail. Returns whether it committed.
///
/// With the journal, the transaction commits non-durably (a `checkpoint`
/// commits durably instead) and its changes go to the syncer, which
/// answers the durable jobs once they are on disk; without it, a batch
/// with a durable job is a durable commit, answered here.
#[expect(clippy::too_many_arguments, reason = "the writer loop's state, passed apart")]
fn run_batch(
    db: &Database,
    shared: &WriterShared,
    chain: &mut Chain,
    batch: Vec<Job>,
    mut more: impl FnMut() -> Option<Job>,
    durable: bool,
    journal: Option<&mut Journaling>,
    checkpoint: bool,
) -> bool {
    let fail_all = |batch: Vec<Outcome>, why: &str| {
        for (reply, _, own) in batch {
            let answer = match own {
                Some(Err(e)) => Err(e),
                _ => Err(StoreError::Backend(format!("the write batch was rolled back: {why}"))),
            };
            reply(answer);
        }
    };
    if let Some(why) = journal.as_ref().and_then(|j| j.health.failure()) {
        let why = format!("writes are stopped since the journal failed ({why}); restart the host to recover");
        fail_all(batch.into_iter().map(|j| (j.reply, j.durable, None)).collect(), &why);
        return false;
    }
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot begin a write transaction: {e}");
            fail_all(batch.into_iter().map(|j| (j.reply, j.durable, None)).collect(), &e.to_string());
            return false;
        }
    };
    // Counted before the batch takes anything from the tail (its jobs do,
    // first thing) and before redb shows it to readers: from then on
    // `sync` knows there is something to wait for. A batch that rolls
    // back leaves the count ahead of what is durable, which only sends
    // `sync` the slow way until a later batch is marked.
    let shown = shared.shown.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let mut durable_commit = if journal.is_some() { checkpoint } else { durable };
    if !durable_commit && let Err(e) = txn.set_durability(Durability::None) {
        tracing::warn!("committing durably: {e}");
        durable_commit = true;
    }
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut failed: Option<String> = None;
    let mut flushed = false;
    // Sized like the last record: growing it is a copy of everything so far.
    let changes = RefCell::new(Changes::with_capacity(journal.as_ref().map_or(0, |j| j.last_record)));
    {
        let tx = Tx {
            txn: &txn,
            shared,
            chain: RefCell::new(&mut *chain),
            changes: journal.is_some().then_some(&changes),
            tables: Tables::default(),
        };
        // The batch's jobs, then those `more` gives while it is open (none
        // once one has failed: they wait for the next batch).
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next().or_else(|| if failed.is_none() { more() } else { None }) {
            if failed.is_some() {
                results.push((job.reply, job.durable, None));
                continue;
            }
            let work = job.work;
            // Reads made before this job was sent come before it (a
            // `changes-since-read` sees the cursor its agent's `get` moved).
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tx.take_pending()?;
                work(&tx)
            }));
            let own = match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(StoreError::Rejected(m))) => Err(StoreError::Rejected(m)),
                Ok(Err(e)) => {
                    failed = Some(e.to_string());
                    Err(e)
                }
                Err(_) => {
                    failed = Some("a store operation panicked".into());
                    Err(StoreError::Backend("a store operation panicked".into()))
                }
            };
            results.push((job.reply, job.durable, Some(own)));
        }
        if failed.is_none()
            && let Err(e) = tx.take_pending()
        {
            failed = Some(e.to_string());
        }
        // The audit indexes: with every batch without the journal; with
        // it, at checkpoints or once enough wait (see IndexRow).
        let flush = {
            let chain = tx.chain.borrow();
            !chain.index.is_empty() && (journal.is_none() || checkpoint || chain.index.len() >= INDEX_FLUSH_AT)
        };
        if failed.is_none() && flush {
            let chain = tx.chain.borrow();
            match flush_index(&tx, &chain.index) {
                Ok(()) => flushed = true,
                Err(e) => failed = Some(e.to_string()),
            }
        }
    }
    let changes = journal.is_some().then(|| changes.into_inner());
    // The journal record's id, and what this state of redb holds of the
    // journal (written in the same transaction, so they always agree).
    let record_id = match (&journal, &changes) {
        (Some(j), Some(c)) if !c.is_empty() => Some(j.next_id),
        _ => None,
    };
    if failed.is_none()
        && let Some(j) = &journal
        && (record_id.is_some() || checkpoint)
    {
        let applied = record_id.unwrap_or(j.next_id - 1);
        let written = txn.open_table(META).map_err(backend).and_then(|mut meta| {
            meta.insert(JOURNAL_APPLIED, applied).map_err(backend)?;
            Ok(())
        });
        if let Err(e) = written {
            failed = Some(e.to_string());
        }
    }
    // The record is sealed before the commit, so a batch too large for one
    // (4 GiB) is rolled back rather than committed unjournaled.
    let mut record = None;
    if failed.is_none()
        && !checkpoint
        && let (Some(j), Some(c), Some(id)) = (&journal, changes, record_id)
    {
        record = c.seal(id, j.epoch);
        if record.is_none() {
            failed = Some("the batch is too large for one journal record (4 GiB)".into());
        }
    }
    if let Some(why) = failed {
        drop(txn);
        roll_back(shared, chain, &why);
        fail_all(results, &why);
        return false;
    }
    // The record goes to the syncer before the redb commit, so that its
    // write and sync overlap that commit (a third of the writer's time for
    // one caller alone); the replies follow once the commit is done.
    let record_len = record.as_ref().map(Vec::len);
    let mut journaled = false;
    if let (Some(j), Some(bytes), Some(id)) = (journal.as_deref(), record, record_id) {
        if j.syncer.send(Sync::Record { id, bytes }).is_err() {
            // Nothing of this batch reached the syncer: a plain roll-back.
            let why = "the journal's syncer has stopped";
            tracing::error!("{why}");
            j.health.fail(why.into());
            roll_back(shared, chain, why);
            fail_all(results, why);
            return false;
        }
        journaled = true;
    }
    if let Err(e) = commit(txn, shared) {
        tracing::error!("a write batch did not commit: {e}");
        let why = match journal.as_deref() {
            Some(j) if journaled => {
                // Its record may reach the disk all the same, and a restart
                // would apply it: nothing may be written on top of a state
                // that is not known.
                let why = format!(
                    "the write batch did not commit ({e}), but its journal record may be on disk already, so a restart may apply it: no further writes are accepted; restart the host, then check whether this write is there"
                );
                j.health.fail(why.clone());
                why
            }
            _ => e,
        };
        roll_back(shared, chain, &why);
        fail_all(results, &why);
        return false;
    }
    // Before anyone is answered: a caller that reads after its commit
    // returns must not get the shared snapshot from before it. Dropping
    // the old one also lets redb reuse the pages it pinned.
    shared.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    drop(shared.snapshot().take());
    chain.committed_hash.clone_from(&chain.last_hash);
    chain.in_txn.clear();
    if flushed {
        chain.index.clear();
    }
    chain.index_committed = chain.index.len();
    let Some(j) = journal else {
        if durable_commit {
            mark_durable(&shared.durable, shown);
        }
        for (reply, _, answer) in results {
            if let Some(answer) = answer {
                reply(answer);
            }
        }
        return true;
    };
    // Non-durable jobs are answered now; durable ones once the syncer has
    // the record on disk (or, after a checkpoint, at once: redb has it).
    // The first reply the syncer delivers marks the batch durable, for
    // `sync` and the streams.
    let durable_mark = shared.durable.clone();
    let mut deferred: Vec<Deliver> = vec![Box::new(move |synced: Result<(), String>| {
        if synced.is_ok() {
            mark_durable(&durable_mark, shown);
        }
    })];
    for (reply, durable, answer) in results {
        match answer {
            Some(answer) if durable => deferred.push(Box::new(move |synced: Result<(), String>| {
                reply(synced.map_err(|why| {
                    StoreError::Backend(format!(
                        "the journal could not be written ({why}); this write may not be durable, and no further writes are accepted: restart the host"
                    ))
                }).and(answer));
            })),
            Some(answer) => reply(answer),
            None => {}
        }
    }
    // This batch's record, or the last one before it: the replies need
    // every record up to it on disk.
    let after = record_id.unwrap_or(j.next_id - 1);
    if record_id.is_some() {
        j.next_id += 1;
    }
    let message = if checkpoint {
        j.checkpointed_at = std::time::Instant::now();
        j.since_checkpoint = 0;
        j.dirty = false;
        // The syncer starts over at the first byte: a new cycle.
        j.epoch = new_epoch();
        Sync::Checkpoint { through: after, deliver: deferred }
    } else {
        if let Some(len) = record_len {
            j.last_record = len;
            j.since_checkpoint += len;
            j.dirty = true;
        }
        Sync::Replies { after, deliver: deferred }
    };
    if j.syncer.send(message).is_err() {
        // Its replies are dropped with the message (their callers get "the
        // writer has stopped"), and nothing more may be written.
        tracing::error!("the journal's syncer has stopped");
        j.health.fail("the journal's syncer has stopped".into());
    }
    true
}

/// Records that batch `shown` (and every one before it) is durable, and
/// wakes whoever waits for more. Batches become durable in order, and the
/// mark only grows.
fn mark_durable(durable: &tokio::sync::watch::Sender<u64>, shown: u64) {
    durable.send_if_modified(|d| {
        let newer = shown > *d;
        if newer {
            *d = shown;
        }
        newer
    });
}

/// Commits a batch's transaction. Tests can make it fail first
/// ([`WriterShared::before_commit`]), which drops the transaction: a
/// roll-back, as after a failed commit.
fn commit(txn: WriteTransaction, shared: &WriterShared) -> Result<(), String> {
    #[cfg(test)]
    if let Some(hook) = shared.before_commit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
        hook()?;
    }
    #[cfg(not(test))]
    let _ = shared;
    txn.commit().map_err(|e| e.to_string())
}

/// After a rolled-back batch, gives its audit entries back to the tail, in
/// front of what arrived since, so the chain stays gap-free: read entries
/// as they were, and each job's own entry marked [`Decision::Fault`], since
/// nothing it did was written. The next batch writes them.
fn roll_back(shared: &WriterShared, chain: &mut Chain, why: &str) {
    use crate::audit::Decision;
    chain.last_hash.clone_from(&chain.committed_hash);
    chain.index.truncate(chain.index_committed);
    let mut back: Vec<Pending> = chain
        .in_txn
        .drain(..)
        .map(|w| match w {
            Written::Read(p) => p,
            Written::Own(mut entry) => {
                entry.decision = Decision::Fault;
                entry.outcome = format!("nothing was written: the write batch was rolled back ({why})");
                Pending { entry, cursor: None }
            }
        })
        .collect();
    let mut tail = shared.tail();
    back.append(&mut tail.pending);
    tail.pending = back;
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has drained it and made
        // everything durable.
        if let Some(mut w) = self.writer.take() {
            drop(w.jobs.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if matches!(self.db, Db::ReadWrite(_)) {
            let _ = std::fs::remove_file(pid_path(&self.path));
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The file beside the store that names the process holding it.
fn pid_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => {
            let pid = std::fs::read_to_string(pid_path(path)).ok().and_then(|s| s.trim().parse().ok());
            StoreError::InUse { path: path.to_path_buf(), pid }
        }
        DatabaseError::Storage(e) => StoreError::Open {
            path: path.to_path_buf(),
            reason: format!(
                "{e}; the file is damaged or is not a Concord knowledge base. Restore it from a backup, or move it away to start empty (nothing was changed)"
            ),
        },
        other => StoreError::Open { path: path.to_path_buf(), reason: other.to_string() },
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(backend)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { what: what(), reason: e.to_string() })
}

/// Whether other processes may read the store while one writes it.
///
/// This is redb's [`ConcurrencyMode`], and it has a price: in shared mode
/// every read transaction and every commit also takes byte-range file
/// locks (measured here: a point read 1.2 µs → 6.3 µs, a durable commit
/// 0.53 ms → 0.80 ms; see BENCHMARKS.md). Every process that opens the
/// file at the same time must use the same setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// The writer has the file to itself; read-only opens wait until it
    /// closes (they get [`StoreError::InUse`]). The default.
    #[default]
    Exclusive,
    /// Read-only opens (the CLI's read commands) work while a host writes.
    SharedReads,
}

impl Sharing {
    fn mode(self) -> ConcurrencyMode {
        match self {
            Sharing::Exclusive => ConcurrencyMode::ExclusiveWriter,
            Sharing::SharedReads => ConcurrencyMode::SingleWriter,
        }
    }
}

impl RedbStore {
    /// Opens the store for writing, exclusively (see [`Sharing`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Sharing::Exclusive)
    }

    /// Opens the store for writing, creating the file (and its folder) if
    /// needed.
    pub fn open_with(path: &Path, sharing: Sharing) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        // Before redb opens the file for writing (it trusts a file it closed
        // cleanly; a damaged page could make a read panic).
        let verified = sharing == Sharing::Exclusive && Self::verify_before_writing(path)?;
        let shown = path.display().to_string();
        // Whether redb had to repair the file: the last writer did not close it.
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = Database::builder()
            .set_concurrency_mode(sharing.mode())
            // Recovery after an unclean stop (a crash, a kill) is normal and
            // checksummed; it is never silent.
            .set_repair_callback({
                let repaired = repaired.clone();
                move |session| {
                    repaired.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!("{shown} was not closed cleanly; recovering ({:.0}%)", session.progress() * 100.0);
                }
            })
            .create(path)
            .map_err(|e| open_error(path, e))?;
        // Name this process as the holder, for the "already in use" error
        // another process gets (redb's lock itself does not say who).
        let _ = std::fs::write(pid_path(path), std::process::id().to_string());
        let db = Arc::new(db);
        let mut store = Self { db: Db::ReadWrite(db.clone()), path: path.to_path_buf(), writer: None, recovered: 0 };
        let layout = store.init()?;
        let created = matches!(layout, Layout::Created);
        let unclean = repaired.load(std::sync::atomic::Ordering::SeqCst);
        if created {
            // A journal beside a store created just now belongs to a store
            // that was removed without it: kept, but out of the way.
            let old = journal::journal_path(path);
            if old.exists() {
                let mut aside = old.as_os_str().to_owned();
                aside.push(".orphaned");
                std::fs::rename(&old, &aside).map_err(|e| StoreError::Open {
                    path: path.to_path_buf(),
                    reason: format!("cannot move the old journal {} aside: {e}", old.display()),
                })?;
                tracing::warn!(
                    "{} was left by a store that no longer exists; moved to {}",
                    old.display(),
                    std::path::Path::new(&aside).display()
                );
            }
        }
        let journal = store.recover(&db, sharing, unclean)?;
        if let Layout::Old(old) = layout {
            store.upgrade(old)?;
        }
        // redb's repair of a file not closed cleanly verified every page too.
        if !verified && !unclean {
            store.read_every_record()?;
        }
        // The chain continues from the last entry on disk, and the index
        // rows of the entries after the indexes' reach wait again.
        let (next_seq, last_hash, index) = {
            let txn = store.read()?;
            let audit = txn.open_table(AUDIT).map_err(backend)?;
            let (next_seq, last_hash) = match audit.last().map_err(backend)? {
                Some((k, v)) => {
                    let seq = k.value();
                    let last: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
                    (seq + 1, last.hash)
                }
                None => (1, GENESIS_HASH.to_string()),
            };
            let mut index = Vec::new();
            for item in audit.range(audit_indexed(&txn)? + 1..).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let seq = k.value();
                index.push(IndexRow::of(&decode(v.value(), || format!("audit entry {seq}"))?));
            }
            (next_seq, last_hash, index)
        };
        let (jobs, queue) = mpsc::channel();
        let shared = Arc::new(WriterShared::default());
        shared.tail().next_seq = next_seq;
        let index_committed = index.len();
        let chain = Chain {
            committed_hash: last_hash.clone(),
            last_hash,
            in_txn: Vec::new(),
            index,
            index_committed,
            last_pending: 0,
        };
        let cannot_start = |what: &str, e: std::io::Error| StoreError::Open {
            path: path.to_path_buf(),
            reason: format!("cannot start the {what}: {e}"),
        };
        let journaling = match journal {
            Some((file, next_id)) => {
                let (syncer, records) = mpsc::channel();
                let health = Arc::new(Health::default());
                let for_syncer = health.clone();
                let _ = shared.journal.set(health.clone());
                let thread = std::thread::Builder::new()
                    .name("concord-syncer".into())
                    .spawn(move || journal::syncer_loop(file, records, for_syncer, next_id - 1))
                    .map_err(|e| cannot_start("journal's syncer", e))?;
                Some(Journaling {
                    syncer,
                    thread: Some(thread),
                    health,
                    next_id,
                    checkpointed_at: std::time::Instant::now(),
                    since_checkpoint: 0,
                    dirty: false,
                    last_record: 0,
                    epoch: new_epoch(),
                })
            }
            None => None,
        };
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("concord-writer".into())
            .spawn(move || writer_loop(db, queue, for_thread, chain, journaling))
            .map_err(|e| cannot_start("writer", e))?;
        store.writer = Some(Writer { jobs: Some(jobs), thread: Some(thread), shared });
        Ok(store)
    }

    /// Opens an existing store read-only, for the inspection commands.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_read_only_with(path, Sharing::Exclusive)
    }

    /// Like [`RedbStore::open_read_only`]; with [`Sharing::SharedReads`] it
    /// works while a host (opened the same way) writes.
    pub fn open_read_only_with(path: &Path, sharing: Sharing) -> Result<Self, StoreError> {
        let store = Self::open_read_only_unchecked(path, sharing)?;
        store.read_table_ends()?;
        Ok(store)
    }

    /// A read-only open that reads no table (for [`RedbStore::check`],
    /// which reads them all).
    fn open_read_only_unchecked(path: &Path, sharing: Sharing) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let db = Database::builder()
            .set_concurrency_mode(sharing.mode())
            .open_read_only(path)
            .map_err(|e| match e {
                // Only a writer may repair, and recover the journal. A host
                // that stopped without closing leaves its pid file; with
                // none, the last host closed the file, and what redb wants
                // repaired is damage done since (a file cut short, say).
                DatabaseError::RepairAborted if pid_path(path).exists() => StoreError::Open {
                    path: path.to_path_buf(),
                    reason: "the last host using it stopped without closing it; start a host on it once to recover it (`concord serve`; the read commands then go through it)".into(),
                },
                DatabaseError::RepairAborted => StoreError::Open {
                    path: path.to_path_buf(),
                    reason: "the file is damaged: the last host closed it cleanly, and it has changed since (cut short or overwritten). Restore it from a backup, or move it away to start empty; `concord run` or `concord serve` on it names the damage and changes nothing".into(),
                },
                e => open_error(path, e),
            })?;
        let store = Self { db: Db::ReadOnly(db), path: path.to_path_buf(), writer: None, recovered: 0 };
        store.check_schema_version()?;
        let waiting = journal::read_unapplied(path, store.journal_applied()?)?.len();
        if waiting > 0 {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "the last host using it stopped without closing it, and {waiting} committed batches wait in its journal ({}); start a host on it once to recover them (`concord serve`; the read commands then go through it)",
                    journal::journal_path(path).display()
                ),
            });
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many committed batches the open recovered from the journal
    /// (non-zero only after the last host stopped without closing).
    pub fn recovered_batches(&self) -> usize {
        self.recovered
    }

    /// The id of the last journal record the store holds (0 if none).
    fn journal_applied(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(JOURNAL_APPLIED).map_err(backend)?.map_or(0, |v| v.value()))
    }

    /// Applies the journal records the store lacks (after an unclean stop),
    /// durably, in one transaction. With exclusive sharing, returns the
    /// journal, open for the writer, and the id its next record gets.
    ///
    /// A store that was not closed cleanly (`unclean`) and has used the
    /// journal is refused if the journal is gone: the commits acknowledged
    /// since its last checkpoint are only there, and opening without them
    /// must be a decision, not an accident of copying one file.
    fn recover(
        &mut self,
        db: &Database,
        sharing: Sharing,
        unclean: bool,
    ) -> Result<Option<(Journal, u64)>, StoreError> {
        let applied = self.journal_applied()?;
        let journal_file = journal::journal_path(&self.path);
        if unclean && applied > 0 && !journal_file.exists() {
            return Err(StoreError::Open {
                path: self.path.clone(),
                reason: format!(
                    "it was not closed cleanly, and its journal {} is missing: the commits acknowledged since its last checkpoint (up to half a second before the stop) are only in that file. Put the journal back beside the store (nothing was changed); to open the store without them, create an empty file at that path",
                    journal_file.display()
                ),
            });
        }
        let (journal, records) = match sharing {
            Sharing::Exclusive => {
                let (journal, records) = Journal::recover(&self.path, applied)?;
                (Some(journal), records)
            }
            // Not used in this mode; only what an exclusive host left.
            Sharing::SharedReads => (None, journal::read_unapplied(&self.path, applied)?),
        };
        let last = records.last().map_or(applied, |r| r.id);
        if !records.is_empty() {
            let damaged = |reason: String| StoreError::Open {
                path: self.path.clone(),
                reason: format!(
                    "its journal is damaged ({reason}); restore the store and its journal from a backup (nothing was changed)"
                ),
            };
            let txn = db.begin_write().map_err(backend)?;
            for record in &records {
                for op in record.ops().map_err(|e| damaged(format!("batch {}: {e}", record.id)))? {
                    apply_op(&txn, &op)?;
                }
            }
            txn.open_table(META).map_err(backend)?.insert(JOURNAL_APPLIED, last).map_err(backend)?;
            txn.commit().map_err(backend)?;
            tracing::warn!(
                "{} was not closed cleanly; recovered {} committed batches from its journal",
                self.path.display(),
                records.len()
            );
            self.recovered = records.len();
        }
        Ok(journal.map(|j| (j, last + 1)))
    }

    /// Holds the writer: jobs queue up until the hold is dropped, then run
    /// as one batch. A test hook, to make a group commit's content exact.
    pub fn hold_writes(&self) -> Option<WriteHold<'_>> {
        let w = self.writer.as_ref()?;
        Some(WriteHold(w.shared.hold.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }

    /// Jobs sent to the writer and not yet taken into a batch.
    pub fn queued_writes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.shared.queued.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::SeqCst;
        self.writer.as_ref().map_or_else(WriterStats::default, |w| WriterStats {
            batches: w.shared.batches.load(SeqCst),
            jobs: w.shared.jobs.load(SeqCst),
        })
    }

    /// Creates every table, so readers never meet a missing one, and records
    /// (or checks) the layout version.
    fn init(&self) -> Result<Layout, StoreError> {
        let txn = self.write()?;
        let mut layout = Layout::Current;
        {
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(ENTITIES).map_err(backend)?;
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(AUDIT).map_err(backend)?;
            txn.open_table(AUDIT_BY_AGENT).map_err(backend)?;
            txn.open_table(AUDIT_BY_ENTITY).map_err(backend)?;
            txn.open_table(AUDIT_BY_INVOCATION).map_err(backend)?;
            txn.open_table(AUDIT_BY_AGENT_ENTITY).map_err(backend)?;
            txn.open_table(PINS).map_err(backend)?;
            txn.open_table(LEASES).map_err(backend)?;
            txn.open_table(ACTIONS).map_err(backend)?;
            txn.open_table(OUTBOX).map_err(backend)?;
            txn.open_table(ACTION_KEYS).map_err(backend)?;
            txn.open_table(REQUESTS).map_err(backend)?;
            txn.open_table(CURSORS).map_err(backend)?;
            txn.open_table(REQUEST_KEYS).map_err(backend)?;
            txn.open_table(REQUEST_KEYS_BY_TIME).map_err(backend)?;
            txn.open_table(HOST_STATE).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let found = meta.get("schema_version").map_err(backend)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(backend)?;
                    layout = Layout::Created;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                // Upgraded by `upgrade`, after the journal such a version
                // may have left is applied.
                Some(old @ 1..SCHEMA_VERSION) => layout = Layout::Old(old),
                Some(v) => return Err(self.version_mismatch(v)),
            }
        }
        txn.commit().map_err(backend)?;
        Ok(layout)
    }

    /// Brings a layout of an older version (1 to 4) to this one, in one
    /// transaction: a crash leaves the old version, upgraded again at the
    /// next open. The tables version 5 added are created by [`init`](Self::init)
    /// before this runs. Versions 1 to 3 also had audit indexes of a row
    /// per seq (version 1 lacked the one by agent and entity): they are
    /// deleted, and the runs rebuilt from the log, a chunk of entries at a
    /// time.
    fn upgrade(&self, old: u64) -> Result<(), StoreError> {
        const CHUNK: usize = 65_536;
        let txn = self.write()?;
        if old >= 4 {
            txn.open_table(META).map_err(backend)?.insert("schema_version", SCHEMA_VERSION).map_err(backend)?;
            txn.commit().map_err(backend)?;
            tracing::info!("{}: upgraded the layout from version {old} to {SCHEMA_VERSION}", self.path.display());
            return Ok(());
        }
        {
            txn.delete_table(retired::AUDIT_BY_AGENT).map_err(backend)?;
            txn.delete_table(retired::AUDIT_BY_ENTITY).map_err(backend)?;
            txn.delete_table(retired::AUDIT_BY_INVOCATION).map_err(backend)?;
            txn.delete_table(retired::AUDIT_BY_AGENT_ENTITY).map_err(backend)?;
            let (shared, mut chain) = (WriterShared::default(), Chain::default());
            let tx = Tx::unjournaled(&txn, &shared, &mut chain);
            let audit = txn.open_table(AUDIT).map_err(backend)?;
            let (mut rows, mut n) = (Vec::with_capacity(CHUNK), 0u64);
            for item in audit.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let seq = k.value();
                rows.push(IndexRow::of(&decode(v.value(), || format!("audit entry {seq}"))?));
                if rows.len() == CHUNK {
                    flush_index(&tx, &rows)?;
                    n += rows.len() as u64;
                    rows.clear();
                }
            }
            flush_index(&tx, &rows)?;
            n += rows.len() as u64;
            tx.meta().map_err(backend)?.insert("schema_version", SCHEMA_VERSION).map_err(backend)?;
            tracing::info!(
                "{}: upgraded the layout from version {old} to {SCHEMA_VERSION} ({n} audit entries indexed)",
                self.path.display()
            );
        }
        txn.commit().map_err(backend)
    }

    fn check_schema_version(&self) -> Result<(), StoreError> {
        let damaged = |e: &dyn std::fmt::Display| self.damaged(e);
        let txn = self.read().map_err(|e| damaged(&e))?;
        let meta = match txn.open_table(META) {
            Ok(m) => m,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(StoreError::Open {
                    path: self.path.clone(),
                    reason: "not a Concord knowledge base".into(),
                });
            }
            Err(e) => return Err(damaged(&e)),
        };
        match meta.get("schema_version").map_err(|e| damaged(&e))?.map(|v| v.value()) {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(old @ 1..SCHEMA_VERSION) => Err(StoreError::Open {
                path: self.path.clone(),
                reason: format!(
                    "its layout is version {old}, and read commands need version {SCHEMA_VERSION}; start a host on it once (`concord serve`) to upgrade it in place"
                ),
            }),
            Some(v) => Err(self.version_mismatch(v)),
            None => Err(StoreError::Open { path: self.path.clone(), reason: "not a Concord knowledge base".into() }),
        }
    }

    fn version_mismatch(&self, found: u64) -> StoreError {
        StoreError::Open {
            path: self.path.clone(),
            reason: format!("its layout version is {found}, this concord reads version {SCHEMA_VERSION}"),
        }
    }

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
    fn entities(&self) -> Result<Arc<PointReads>, StoreError> {
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

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Db::ReadWrite(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
        .map_err(backend)
    }

    fn write(&self) -> Result<WriteTransaction, StoreError> {
        match &self.db {
            Db::ReadWrite(db) => db.begin_write().map_err(backend),
            Db::ReadOnly(_) => Err(StoreError::ReadOnly),
        }
    }
}

/// Reads shared by read and write transactions.
fn load_entity(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Entity>, StoreError> {
    match table.get(key).map_err(backend)? {
        Some(bytes) => decode(bytes.value(), || format!("entity {key}")).map(Some),
        None => Ok(None),
    }
}

fn load_event(table: &impl ReadableTable<u64, &'static [u8]>, seq: u64) -> Result<Event, StoreError> {
    let bytes = table
        .get(seq)
        .map_err(backend)?
        .ok_or_else(|| StoreError::Corrupt { what: format!("event {seq}"), reason: "indexed but missing".into() })?;
    decode(bytes.value(), || format!("event {seq}"))
}

/// The seqs of one entity's events, newest first.
fn history_seqs_rev<'a>(
    history: &'a impl ReadableTable<(&'static str, u64), ()>,
    key: &'a str,
) -> Result<impl Iterator<Item = Result<u64, StoreError>> + 'a, StoreError> {
    let range = history.range((key, 0)..=(key, u64::MAX)).map_err(backend)?;
    Ok(range.rev().map(|item| item.map(|(k, _)| k.value().1).map_err(backend)))
}

/// Appends an audit entry inside a batch's write transaction: numbers it
/// (after the read entries waiting in the tail, which go in first) and
/// links it into the chain.
fn append_audit_in(tx: &Tx<'_>, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
    let (seq, pending) = {
        let mut tail = tx.shared.tail();
        let seq = tail.next_seq;
        tail.next_seq += 1;
        (seq, std::mem::take(&mut tail.pending))
    };
    tx.write_reads(pending)?;
    let mut chain = tx.chain.borrow_mut();
    let mut entry = AuditEntry::unsealed(draft, seq, at_ms);
    let stored = entry.link_encoded(&chain.last_hash);
    insert_audit(tx, &mut chain.index, &entry, &stored)?;
    chain.last_hash.clone_from(&entry.hash);
    chain.in_txn.push(Written::Own(entry.clone()));
    Ok(entry)
}

/// The last audit seq the indexes cover (see [`IndexRow`]).
fn audit_indexed(txn: &ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(backend)?;
    Ok(meta.get(AUDIT_INDEXED).map_err(backend)?.map_or(0, |v| v.value()))
}

/// The next event seq.
fn next_seq(events: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(events.last().map_err(backend)?.map_or(0, |(k, _)| k.value()) + 1)
}

fn load_pins(
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

fn load_lease(
    leases: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Lease>, StoreError> {
    match leases.get(key).map_err(backend)? {
        Some(v) => decode(v.value(), || format!("lease on {key}")).map(Some),
        None => Ok(None),
    }
}

impl RedbStore {
    /// Runs `work` on the writer, in a (shared) write transaction, and waits
    /// for its answer: after the batch's durable commit when `durable`.
    fn run<T: Send + 'static>(
        &self,
        durable: bool,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(durable, work, move |result| {
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| StoreError::Backend("the writer has stopped".into()))?
    }

    /// Sends `work` to the writer; `done` gets its answer (on the writer's
    /// or the syncer's thread), after the batch's durable commit when
    /// `durable`. Never waits.
    fn submit<T: Send + 'static>(
        &self,
        durable: bool,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let stopped = || StoreError::Backend("the writer has stopped".into());
        let Some((writer, jobs)) = self.writer.as_ref().and_then(|w| Some((w, w.jobs.as_ref()?))) else {
            return done(Err(StoreError::ReadOnly));
        };
        let work = Box::new(move |tx: &Tx<'_>| work(tx).map(|v| Box::new(v) as Reply));
        let reply: Answer = Box::new(move |answer: Result<Reply, StoreError>| {
            done(answer.and_then(|value| {
                value
                    .downcast::<T>()
                    .map(|v| *v)
                    .map_err(|_| StoreError::Backend("the writer answered with the wrong type".into()))
            }))
        });
        writer.shared.queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Err(mpsc::SendError(Msg::Job(job))) = jobs.send(Msg::Job(Job { work, durable, reply })) {
            writer.shared.queued.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            (job.reply)(Err(stopped()));
        }
    }

    /// Numbers a read-call entry and leaves it for the writer (see [`Tail`]).
    fn push_read(&self, draft: AuditDraft, cursor: Option<(String, String, u64)>) -> Result<u64, StoreError> {
        let writer = self.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let at_ms = super::model::now_ms();
        let (seq, waiting) = {
            let mut tail = writer.shared.tail();
            let seq = tail.next_seq;
            tail.next_seq += 1;
            tail.pending.push(Pending { entry: AuditEntry::unsealed(draft, seq, at_ms), cursor });
            (seq, tail.pending.len())
        };
        // One nudge when the tail stops being empty starts the writer's
        // deadline; one more asks for the write at once when it grows long.
        if waiting == 1 || waiting == FLUSH_AT {
            let nudge = Msg::Nudge { now: waiting == FLUSH_AT };
            if let Some(jobs) = &writer.jobs {
                jobs.send(nudge).map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
            }
        }
        if waiting >= MAX_PENDING {
            self.settle()?;
        }
        Ok(seq)
    }

    /// Whether everything readers may see, and every audit entry numbered,
    /// is durable already: nothing waits in the tail, and the last batch
    /// shown to readers is marked durable.
    fn all_durable(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.shared.all_durable())
    }

    /// Waits until every read entry numbered so far is written (visible to
    /// this process's reads; durable within [`READ_AUDIT_FLUSH`]). Audit
    /// queries call this first, so a caller always reads its own entries.
    fn settle(&self) -> Result<(), StoreError> {
        match &self.writer {
            Some(w) if !w.shared.tail().pending.is_empty() => self.run(false, |_| Ok(())),
            _ => Ok(()),
        }
    }
}

/// Gives `take` the seqs in `seqs` that one key's runs of an index hold,
/// in order (`forward`) or newest first, until it returns false. `open(lo,
/// hi)` ranges over the key's runs whose first seq is in `lo..=hi`; a run
/// holds only seqs at or after its first, so a forward walk starts at the
/// run holding `seqs.start` (the last to begin at or before it).
fn walk_runs<'t, K: Key + 'static>(
    open: impl Fn(u64, u64) -> Result<redb::Range<'t, K, &'static [u8]>, StoreError>,
    seqs: std::ops::Range<u64>,
    forward: bool,
    index: &str,
    mut take: impl FnMut(u64) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let last = seqs.end - 1;
    if forward {
        let begin = match open(0, seqs.start)?.next_back() {
            Some(item) => Run::decode(item.map_err(backend)?.1.value(), index)?.first().copied().unwrap_or(0),
            None => 0,
        };
        for item in open(begin, last)? {
            let (_, run) = item.map_err(backend)?;
            for seq in Run::decode(run.value(), index)? {
                if seq > last {
                    return Ok(());
                }
                if seq >= seqs.start && !take(seq)? {
                    return Ok(());
                }
            }
        }
    } else {
        for item in open(0, last)?.rev() {
            let (_, run) = item.map_err(backend)?;
            for seq in Run::decode(run.value(), index)?.into_iter().rev() {
                if seq < seqs.start {
                    return Ok(());
                }
                if seq <= last && !take(seq)? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Gives `visit` one entity's events newest first (see
/// [`ops::EntityHistory`]), from open event and history tables.
fn newest_first(
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
struct ReadHistory {
    events: redb::ReadOnlyTable<u64, &'static [u8]>,
    history: redb::ReadOnlyTable<(&'static str, u64), ()>,
}

impl ops::EntityHistory for ReadHistory {
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError> {
        newest_first(&self.events, &self.history, entity, visit)
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
        let mut pins = self.pin_table().map_err(backend)?;
        let pinned = pins.get((key.as_str(), field)).map_err(backend)?.is_some();
        if pinned {
            pins.remove((key.as_str(), field)).map_err(backend)?;
        }
        Ok(pinned)
    }

    fn lease(&self, entity: &EntityRef) -> Result<Option<Lease>, StoreError> {
        load_lease(&*self.leases().map_err(backend)?, &entity.key())
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.entity.key();
        self.leases().map_err(backend)?.insert(key.as_str(), encode(lease)?.as_slice()).map_err(backend)
    }

    fn remove_lease(&self, entity: &EntityRef) -> Result<(), StoreError> {
        self.leases().map_err(backend)?.remove(entity.key().as_str()).map_err(backend)
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

    fn pending_actions(&self) -> Result<u64, StoreError> {
        self.outbox().map_err(backend)?.len().map_err(backend)
    }

    fn insert_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.actions().map_err(backend)?.insert(record.id, encode(record)?.as_slice()).map_err(backend)?;
        self.action_keys().map_err(backend)?.insert(record.idempotency_key.as_str(), record.id).map_err(backend)?;
        self.outbox().map_err(backend)?.insert(record.id, ()).map_err(backend)
    }

    fn deliver_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        self.actions().map_err(backend)?.insert(record.id, encode(record)?.as_slice()).map_err(backend)?;
        self.outbox().map_err(backend)?.remove(record.id).map_err(backend)
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

    fn append_audit(&self, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
        append_audit_in(self, draft, at_ms)
    }
}

impl Store for RedbStore {
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        self.entities()?.get(entity.key())
    }

    fn sync_then(&self, done: Done<()>) {
        if self.all_durable() {
            return done(Ok(()));
        }
        // A durable job that does nothing: its batch takes in the tail, and
        // it is answered once that batch, and so every one before it, is on
        // disk.
        self.submit(true, |_| Ok(()), done);
    }

    fn health(&self) -> Result<(), String> {
        let Some(w) = &self.writer else { return Ok(()) };
        if w.thread.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            return Err("the store's writer has stopped".into());
        }
        match w.shared.journal.get().and_then(|h| h.failure()) {
            Some(why) => Err(format!("writes are stopped since the journal failed ({why}); restart the host")),
            None => Ok(()),
        }
    }

    fn stats(&self) -> crate::metrics::StoreStats {
        let Some(w) = &self.writer else { return Default::default() };
        crate::metrics::StoreStats {
            batch_size: Some(w.shared.batch_sizes.0.snapshot()),
            sync_latency: w.shared.journal.get().map(|h| h.sync_latency.snapshot()),
            queued: w.shared.queued.load(std::sync::atomic::Ordering::Relaxed) as u64,
        }
    }

    fn durable_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.writer {
            Some(w) => w.shared.durable.subscribe(),
            // Nothing more becomes durable through a read-only store.
            None => tokio::sync::watch::Sender::new(0).subscribe(),
        }
    }

    fn get_at(&self, entity: &EntityRef, at: AtPoint) -> Result<Option<Entity>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let seqs = history.range((key.as_str(), 0)..=(key.as_str(), u64::MAX)).map_err(backend)?;
        ops::reads::state_at(seqs.map(|item| load_event(&events, item.map_err(backend)?.0.value().1)), at)
    }

    fn history(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let start = after_seq.saturating_add(1);
        let mut out = Vec::new();
        for item in history.range((key.as_str(), start)..=(key.as_str(), u64::MAX)).map_err(backend)?.take(limit) {
            let (k, _) = item.map_err(backend)?;
            out.push(load_event(&events, k.value().1)?);
        }
        Ok(out)
    }

    fn list(&self, kind: Option<&str>, after: Option<&str>, limit: usize) -> Result<Vec<Entity>, StoreError> {
        let txn = self.read()?;
        let entities = txn.open_table(ENTITIES).map_err(backend)?;
        // Keys are `kind/id`, and `0` sorts right after `/`: a kind's
        // entities are the keys from `kind/` up to `kind0`.
        let (low, high) = match kind {
            Some(k) => (format!("{k}/"), Some(format!("{k}0"))),
            None => (String::new(), None),
        };
        let start = match after {
            Some(a) if a >= low.as_str() => std::ops::Bound::Excluded(a.to_string()),
            _ => std::ops::Bound::Included(low),
        };
        let end = match high {
            Some(h) => std::ops::Bound::Excluded(h),
            None => std::ops::Bound::Unbounded,
        };
        let bounds: (std::ops::Bound<&str>, std::ops::Bound<&str>) =
            (start.as_ref().map(String::as_str), end.as_ref().map(String::as_str));
        let mut out = Vec::new();
        for item in entities.range::<&str>(bounds).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            out.push(decode(v.value(), || format!("entity {}", k.value()))?);
        }
        Ok(out)
    }

    fn history_back(&self, entity: &EntityRef, before_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let mut out = Vec::new();
        for item in history.range((key.as_str(), 0)..(key.as_str(), before_seq)).map_err(backend)?.rev().take(limit) {
            let (k, _) = item.map_err(backend)?;
            out.push(load_event(&events, k.value().1)?);
        }
        Ok(out)
    }

    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let snapshot = ReadHistory {
            events: txn.open_table(EVENTS).map_err(backend)?,
            history: txn.open_table(HISTORY).map_err(backend)?,
        };
        ops::reads::recent(&snapshot, entity, since_ms)
    }

    fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        match events.get(seq).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("event {seq}")).map(Some),
            None => Ok(None),
        }
    }

    fn events(&self, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        for item in events.range(after_seq.saturating_add(1)..).map_err(backend)?.take(limit) {
            let (k, v) = item.map_err(backend)?;
            let seq = k.value();
            out.push(decode(v.value(), || format!("event {seq}"))?);
        }
        Ok(out)
    }

    fn commit(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::commit::commit(tx, request, guard, audit))
    }

    fn commit_then(
        &self,
        request: CommitRequest,
        guard: Guard,
        audit: Auditor<CommitOutcome>,
        done: super::store::Done<(CommitOutcome, AuditEntry)>,
    ) {
        self.submit(true, move |tx| ops::commit::commit(tx, request, guard, audit), done)
    }

    fn act(
        &self,
        request: ActRequest,
        guard: Guard,
        audit: Auditor<ActOutcome>,
    ) -> Result<(ActOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::act::act(tx, request, guard, audit))
    }

    fn pending_actions(&self, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let txn = self.read()?;
        let outbox = txn.open_table(OUTBOX).map_err(backend)?;
        let actions = txn.open_table(ACTIONS).map_err(backend)?;
        let mut out = Vec::new();
        for item in outbox.iter().map_err(backend)?.take(limit) {
            let id = item.map_err(backend)?.0.value();
            let bytes = actions.get(id).map_err(backend)?.ok_or_else(|| StoreError::Corrupt {
                what: format!("action {id}"),
                reason: "in the outbox but missing".into(),
            })?;
            out.push(decode(bytes.value(), || format!("action {id}"))?);
        }
        drop((outbox, actions, txn));
        // A batch is visible to reads a moment before the journal has it
        // on disk; a side effect must never outrun its record. A durable
        // no-op is answered only once every batch before it is on disk.
        if !out.is_empty() && self.writer.is_some() {
            self.run(true, |_| Ok(()))?;
        }
        Ok(out)
    }

    fn actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        let txn = self.read()?;
        let actions = txn.open_table(ACTIONS).map_err(backend)?;
        let mut out = Vec::new();
        for item in actions.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let id = k.value();
            out.push(decode(v.value(), || format!("action {id}"))?);
        }
        Ok(out)
    }

    fn mark_delivered(&self, id: u64, at_ms: u64) -> Result<(), StoreError> {
        self.run(true, move |tx| ops::act::mark_delivered(tx, id, at_ms))
    }

    fn lease(
        &self,
        actor: Actor,
        entity: EntityRef,
        ttl_ms: u64,
        now_ms: u64,
        audit: Auditor<LeaseOutcome>,
    ) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::leases::lease(tx, actor, entity, ttl_ms, now_ms, audit))
    }

    fn release(
        &self,
        actor: Actor,
        entity: EntityRef,
        token: u64,
        audit: Auditor<bool>,
    ) -> Result<(bool, AuditEntry), StoreError> {
        let now = super::model::now_ms();
        self.run(true, move |tx| ops::leases::release(tx, actor, entity, token, now, audit))
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
        self.run(true, move |tx| ops::leases::renew(tx, actor, entity, token, ttl_ms, now_ms, audit))
    }

    fn break_lease(
        &self,
        entity: EntityRef,
        at_ms: u64,
        audit: Auditor<Lease>,
    ) -> Result<(Lease, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::leases::break_lease(tx, entity, at_ms, audit))
    }

    fn live_lease(&self, entity: &EntityRef, now_ms: u64) -> Result<Option<Lease>, StoreError> {
        let txn = self.read()?;
        Ok(load_lease(&txn.open_table(LEASES).map_err(backend)?, &entity.key())?.filter(|l| l.is_live(now_ms)))
    }

    fn request_change(
        &self,
        request: ChangeRequest,
        actor: Actor,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(ChangeRequest, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::requests::request_change(tx, request, actor, at_ms, audit))
    }

    fn change_requests(&self, after: u64, limit: usize) -> Result<Vec<ChangeRequest>, StoreError> {
        let txn = self.read()?;
        let requests = txn.open_table(REQUESTS).map_err(backend)?;
        let mut out = Vec::new();
        for item in requests.range(after.saturating_add(1)..).map_err(backend)?.take(limit) {
            let (id, v) = item.map_err(backend)?;
            out.push(decode(v.value(), || format!("change request {}", id.value()))?);
        }
        Ok(out)
    }

    fn expire_change_request(
        &self,
        id: u64,
        reason: String,
        at_ms: u64,
        audit: Auditor<Event>,
    ) -> Result<(Event, AuditEntry), StoreError> {
        self.run(true, move |tx| ops::requests::expire_change_request(tx, id, reason, at_ms, audit))
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
        self.run(true, move |tx| ops::requests::resolve_change(tx, id, actor, applied, reason, at_ms, audit))
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
        self.run(true, move |tx| ops::pins::pin(tx, entity, fields, by, reason, at_ms, audit))
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
        self.run(true, move |tx| ops::pins::unpin(tx, entity, fields, by, reason, at_ms, audit))
    }

    fn pins(&self, entity: &EntityRef) -> Result<Vec<Pin>, StoreError> {
        let txn = self.read()?;
        load_pins(&txn.open_table(PINS).map_err(backend)?, &entity.key())
    }

    fn changes_since_read(
        &self,
        agent: String,
        entity: EntityRef,
        audit: Auditor<Vec<Event>>,
    ) -> Result<(Vec<Event>, AuditEntry), StoreError> {
        let now = super::model::now_ms();
        self.run(true, move |tx| ops::reads::changes_since_read(tx, agent, entity, now, audit))
    }

    fn record_read(&self, agent: String, key: String, seq: u64, draft: AuditDraft) -> Result<u64, StoreError> {
        // A read has no effect to protect: its entry (and the cursor move)
        // waits in the tail for the next batch, durable within
        // READ_AUDIT_FLUSH.
        self.push_read(draft, Some((agent, key, seq)))
    }

    fn replay(&self) -> Result<ReplayReport, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let entities = txn.open_table(ENTITIES).map_err(backend)?;
        let events = events.iter().map_err(backend)?.map(|item| {
            let (k, v) = item.map_err(backend)?;
            decode(v.value(), || format!("event {}", k.value()))
        });
        let stored = entities.iter().map_err(backend)?.map(|item| {
            let (k, v) = item.map_err(backend)?;
            let key = k.value().to_string();
            let entity = decode(v.value(), || format!("entity {key}"))?;
            Ok((key, entity))
        });
        ops::reads::replay(events, stored)
    }

    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.run(true, move |txn| append_audit_in(txn, draft, super::model::now_ms()))
    }

    fn append_read_audit(&self, draft: AuditDraft) -> Result<u64, StoreError> {
        self.push_read(draft, None)
    }

    fn audit_entry(&self, seq: u64) -> Result<Option<AuditEntry>, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        match audit.get(seq).map_err(backend)? {
            Some(v) => decode(v.value(), || format!("audit entry {seq}")).map(Some),
            None => Ok(None),
        }
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let seqs = filter.seqs();
        let forward = filter.forward();
        let mut out = Vec::new();
        if seqs.is_empty() || limit == 0 {
            return Ok(out);
        }
        // Every match is pushed in the reading direction; backward reads
        // are put back in order at the end.
        let done = |mut out: Vec<AuditEntry>| {
            if !forward {
                out.reverse();
            }
            Ok(out)
        };
        let scan = |range: std::ops::Range<u64>, out: &mut Vec<AuditEntry>| -> Result<(), StoreError> {
            if range.is_empty() {
                return Ok(());
            }
            let items = audit.range(range).map_err(backend)?;
            let mut step = |item: Result<(redb::AccessGuard<'_, u64>, redb::AccessGuard<'_, &[u8]>), _>| {
                let (k, v) = item.map_err(backend)?;
                let seq = k.value();
                let entry: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
                if filter.matches(&entry) {
                    out.push(entry);
                }
                Ok::<bool, StoreError>(out.len() < limit)
            };
            if forward {
                for item in items {
                    if !step(item)? {
                        break;
                    }
                }
            } else {
                for item in items.rev() {
                    if !step(item)? {
                        break;
                    }
                }
            }
            Ok(())
        };
        let take = |seq: u64, out: &mut Vec<AuditEntry>| -> Result<bool, StoreError> {
            let Some(bytes) = audit.get(seq).map_err(backend)? else {
                return Err(StoreError::Corrupt {
                    what: format!("audit entry {seq}"),
                    reason: "indexed but missing".into(),
                });
            };
            let entry: AuditEntry = decode(bytes.value(), || format!("audit entry {seq}"))?;
            if filter.matches(&entry) {
                out.push(entry);
            }
            Ok(out.len() < limit)
        };
        let plan = ops::audit_plan::plan(filter);
        if plan == AuditPlan::Log {
            scan(seqs, &mut out)?;
            return done(out);
        }
        // The newest entries, past the indexes' reach, come from the log
        // itself (at most a flush's worth; see IndexRow); the others from
        // the indexes, so no entry is counted twice. Backward reads take
        // the newest first, forward reads the indexed ones first.
        let indexed = audit_indexed(&txn)?;
        let past = seqs.start.max(indexed.saturating_add(1))..seqs.end;
        let in_index = seqs.start..seqs.end.min(indexed.saturating_add(1));
        if !forward {
            scan(past.clone(), &mut out)?;
            if out.len() >= limit {
                return done(out);
            }
        }
        let single = |table: TableDefinition<(&str, u64), &[u8]>, key: &str, out: &mut Vec<AuditEntry>| {
            let index = txn.open_table(table).map_err(backend)?;
            let open = |lo: u64, hi: u64| index.range((key, lo)..=(key, hi)).map_err(backend);
            walk_runs(open, in_index.clone(), forward, table.name(), |seq| take(seq, out))
        };
        match plan {
            AuditPlan::Log => {}
            AuditPlan::Invocations(invocations) => {
                let index = txn.open_table(AUDIT_BY_INVOCATION).map_err(backend)?;
                let mut found = Vec::new();
                for inv in invocations {
                    let open = |lo: u64, hi: u64| index.range((inv, lo)..=(inv, hi)).map_err(backend);
                    walk_runs(open, in_index.clone(), true, AUDIT_BY_INVOCATION.name(), |seq| {
                        found.push(seq);
                        Ok(true)
                    })?;
                }
                found.sort_unstable();
                if !forward {
                    found.reverse();
                }
                for seq in found {
                    if !take(seq, &mut out)? {
                        return done(out);
                    }
                }
            }
            AuditPlan::AgentEntity { agent, entity } => {
                let index = txn.open_table(AUDIT_BY_AGENT_ENTITY).map_err(backend)?;
                let open = |lo: u64, hi: u64| index.range((agent, entity, lo)..=(agent, entity, hi)).map_err(backend);
                walk_runs(open, in_index.clone(), forward, AUDIT_BY_AGENT_ENTITY.name(), |seq| take(seq, &mut out))?;
            }
            AuditPlan::Agent(agent) => single(AUDIT_BY_AGENT, agent, &mut out)?,
            AuditPlan::Entity(entity) => single(AUDIT_BY_ENTITY, entity, &mut out)?,
        }
        if forward && out.len() < limit {
            scan(past, &mut out)?;
        }
        done(out)
    }

    fn request_key(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.read()?;
        let keys = txn.open_table(REQUEST_KEYS).map_err(backend)?;
        let Some(v) = keys.get(key).map_err(backend)? else { return Ok(None) };
        let bytes = v.value();
        let (at, record) = bytes.split_at_checked(8).ok_or_else(|| StoreError::Corrupt {
            what: format!("request key {key}"),
            reason: format!("{} bytes, less than its 8-byte time", bytes.len()),
        })?;
        let at = u64::from_le_bytes(at.try_into().map_err(backend)?);
        Ok(Some((at, record.to_vec())))
    }

    fn put_request_key(
        &self,
        key: String,
        at_ms: u64,
        record: Vec<u8>,
        expire_before_ms: u64,
    ) -> Result<(), StoreError> {
        self.run(true, move |tx| {
            let mut keys = tx.request_keys().map_err(backend)?;
            let mut by_time = tx.request_keys_by_time().map_err(backend)?;
            let expired: Vec<(u64, String)> = by_time
                .range((0, "")..(expire_before_ms, ""))
                .map_err(backend)?
                .take(super::store::EXPIRED_PER_PUT)
                .map(|item| item.map(|(k, _)| (k.value().0, k.value().1.to_string())).map_err(backend))
                .collect::<Result<_, _>>()?;
            for (at, old) in &expired {
                by_time.remove((*at, old.as_str())).map_err(backend)?;
                // Only if it was not stored again since.
                let stored_at = keys
                    .get(old.as_str())
                    .map_err(backend)?
                    .and_then(|v| v.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes));
                if stored_at == Some(*at) {
                    keys.remove(old.as_str()).map_err(backend)?;
                }
            }
            let previous = keys
                .get(key.as_str())
                .map_err(backend)?
                .and_then(|v| v.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes));
            if let Some(previous) = previous {
                by_time.remove((previous, key.as_str())).map_err(backend)?;
            }
            let mut value = Vec::with_capacity(8 + record.len());
            value.extend_from_slice(&at_ms.to_le_bytes());
            value.extend_from_slice(&record);
            keys.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            by_time.insert((at_ms, key.as_str()), ()).map_err(backend)?;
            Ok(())
        })
    }

    fn host_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let state = txn.open_table(HOST_STATE).map_err(backend)?;
        Ok(state.get(name).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn put_host_state(&self, name: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.run(true, move |tx| {
            tx.host_state().map_err(backend)?.insert(name.as_str(), value.as_slice()).map_err(backend)?;
            Ok(())
        })
    }

    fn verify_audit(&self) -> Result<Verification, StoreError> {
        self.settle()?;
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let mut chain = ChainVerifier::default();
        for item in audit.iter().map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let seq = k.value();
            let entry: AuditEntry = match serde_json::from_slice(v.value()) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(Verification::Broken {
                        seq,
                        problem: format!("the entry does not decode: {e} (edited)"),
                    });
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
}

#[cfg(test)]
mod tests;

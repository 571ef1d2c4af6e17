//! The tables of a Concord redb file, the layout version and its upgrades,
//! and the journal's numbering of the tables a batch may change.
//!
//! Invariant: a table's journal number never changes and is never reused
//! (a journal left by an older layout names tables by these numbers).

use super::*;

/// seq -> event (JSON). The truth; append-only.
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// `kind/id` -> current entity (JSON). The projection of `EVENTS`.
pub(super) const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");

/// (`kind/id`, seq) -> (). Per-entity history index into `EVENTS`.
pub(super) const HISTORY: TableDefinition<(&str, u64), ()> = TableDefinition::new("entity_history");

/// seq -> audit entry (JSON). Hash-chained, append-only.
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// (agent, first seq) -> run. Audit index by agent. A run is the seqs one
/// index flush holds under one key (see [`Run`]).
pub(super) const AUDIT_BY_AGENT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit_runs_by_agent");

/// (`kind/id`, first seq) -> run. Audit index by entity.
pub(super) const AUDIT_BY_ENTITY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit_runs_by_entity");

/// (invocation, first seq) -> run. Audit index by invocation (and so by
/// trace).
pub(super) const AUDIT_BY_INVOCATION: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("audit_runs_by_invocation");

/// (agent, entity, first seq) -> run: the index of the question "what did
/// this agent do to this entity", answered in time proportional to the
/// answer.
pub(super) const AUDIT_BY_AGENT_ENTITY: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("audit_runs_by_agent_entity");

/// The audit indexes of layout versions 1 to 3, one row per (key, seq).
/// Kept only to apply a journal such a version left, and to delete them
/// when the layout is upgraded (see [`RedbStore::upgrade`]).
pub(super) mod retired {
    use redb::TableDefinition;
    pub const AUDIT_BY_AGENT: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_agent");
    pub const AUDIT_BY_ENTITY: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_entity");
    pub const AUDIT_BY_INVOCATION: TableDefinition<(u64, u64), ()> = TableDefinition::new("audit_by_invocation");
    pub const AUDIT_BY_AGENT_ENTITY: TableDefinition<(&str, &str, u64), ()> =
        TableDefinition::new("audit_by_agent_entity");
}

/// Format metadata and counters (`schema_version`, `next_fence`).
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// (`kind/id`, field) -> pin (JSON).
pub(super) const PINS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("pins");

/// `kind/id` -> lease (JSON).
pub(super) const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");

/// action id -> action record (JSON). Every action ever recorded.
pub(super) const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("actions");

/// action id -> (). The outbox: recorded, not yet delivered.
pub(super) const OUTBOX: TableDefinition<u64, ()> = TableDefinition::new("outbox");

/// idempotency key -> action id.
pub(super) const ACTION_KEYS: TableDefinition<&str, u64> = TableDefinition::new("action_keys");

/// request id -> change request (JSON).
pub(super) const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("change_requests");

/// (agent, `kind/id`) -> the last event seq the agent has seen.
pub(super) const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_cursors");

/// Idempotency key -> when it was stored (ms, u64 little-endian) and the
/// request's record (the API's, opaque here). See [`Store::request_key`].
pub(super) const REQUEST_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("request_keys");

/// (stored at ms, key) -> (). What expires first, for [`REQUEST_KEYS`].
pub(super) const REQUEST_KEYS_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("request_keys_by_time");

/// name -> bytes: state the host derives from the logs and keeps to save
/// work (the conflicts report's counts). See [`Store::host_state`].
pub(super) const HOST_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("host_state");

/// Bumped whenever the table layout or an encoding changes.
///
/// 3: the audit indexes are written in bulk and cover the entries up to
/// `meta.audit_indexed` (see [`IndexRow`]).
/// 4: the audit indexes hold runs of seqs, not a row per seq (see [`Run`]).
/// 5: request keys (idempotency) and host state.
pub(super) const SCHEMA_VERSION: u64 = 5;

/// What [`RedbStore::init`] found.
pub(super) enum Layout {
    Created,
    Current,
    /// An older version, to upgrade once its journal is applied.
    Old(u64),
}

/// The last audit seq the indexes cover (see [`IndexRow`]).
pub(super) const AUDIT_INDEXED: &str = "audit_indexed";

/// The next fencing token, in `meta`.
pub(super) const NEXT_FENCE: &str = "next_fence";

/// A key or value type seen as its raw bytes, under the name, width and
/// order of `T`: recovery writes a journal's bytes back into a table
/// without decoding them.
#[derive(Debug)]
pub(super) struct Raw<T>(std::marker::PhantomData<T>);

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
pub(super) fn raw_op<K: Key + 'static, V: redb::Value + 'static>(
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
        pub(super) fn table_id(name: &str) -> Option<u8> {
            $(if $def.name() == name {
                return Some($id);
            })*
            None
        }

        pub(super) fn apply_op(txn: &WriteTransaction, op: &Op<'_>) -> Result<(), StoreError> {
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
        pub(super) struct Tables<'a> {
            $($slot: RefCell<Option<Logged<'a, 'a, $k, $v>>>,)*
        }

        impl<'a> Tx<'a> {
            $(
                #[track_caller]
                pub(super) fn $slot(&self) -> Result<std::cell::RefMut<'_, Logged<'a, 'a, $k, $v>>, redb::TableError> {
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

/// In `meta`: the id of the last journal record this state of the store
/// holds (see [`journal`]).
pub(super) const JOURNAL_APPLIED: &str = "journal_applied";

impl RedbStore {
    /// Creates every table, so readers never meet a missing one, and records
    /// (or checks) the layout version.
    pub(super) fn init(&self) -> Result<Layout, OpenError> {
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
    pub(super) fn upgrade(&self, old: u64) -> Result<(), OpenError> {
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
        Ok(txn.commit().map_err(backend)?)
    }

    pub(super) fn check_schema_version(&self) -> Result<(), OpenError> {
        let damaged = |e: &dyn std::fmt::Display| self.damaged(e);
        let txn = self.read().map_err(|e| damaged(&e))?;
        let meta = match txn.open_table(META) {
            Ok(m) => m,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(OpenError::Cannot {
                    path: self.path.clone(),
                    reason: "not a Concord knowledge base".into(),
                });
            }
            Err(e) => return Err(damaged(&e)),
        };
        match meta.get("schema_version").map_err(|e| damaged(&e))?.map(|v| v.value()) {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(old @ 1..SCHEMA_VERSION) => Err(OpenError::Cannot {
                path: self.path.clone(),
                reason: format!(
                    "its layout is version {old}, and read commands need version {SCHEMA_VERSION}; start a host on it once (`concord serve`) to upgrade it in place"
                ),
            }),
            Some(v) => Err(self.version_mismatch(v)),
            None => Err(OpenError::Cannot { path: self.path.clone(), reason: "not a Concord knowledge base".into() }),
        }
    }

    pub(super) fn version_mismatch(&self, found: u64) -> OpenError {
        OpenError::Cannot {
            path: self.path.clone(),
            reason: format!("its layout version is {found}, this concord reads version {SCHEMA_VERSION}"),
        }
    }
}

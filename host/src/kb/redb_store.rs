//! The embedded default store, on redb.
//!
//! One redb file holds the event log, the projection, the per-entity history
//! index and the audit log, so a commit and its audit entry share one
//! durable write transaction. redb runs one write transaction at a time;
//! reads use MVCC snapshots and never wait for the writer.

use super::model::{Conflict, Entity, EntityRef, Event, EventKind, Expect, FieldChange};
use super::store::{CommitOutcome, CommitRequest, Store, StoreError};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, ChainVerifier, GENESIS_HASH, Verification};
use redb::{
    ConcurrencyMode, Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// seq -> event (JSON). The truth; append-only.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `kind/id` -> current entity (JSON). The projection of `EVENTS`.
const ENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
/// (`kind/id`, seq) -> (). Per-entity history index into `EVENTS`.
const HISTORY: TableDefinition<(&str, u64), ()> = TableDefinition::new("entity_history");
/// seq -> audit entry (JSON). Hash-chained, append-only.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// (agent, seq) -> (). Audit index by agent.
const AUDIT_BY_AGENT: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_agent");
/// (`kind/id`, seq) -> (). Audit index by entity.
const AUDIT_BY_ENTITY: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_entity");
/// Format metadata.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bumped whenever the table layout or an encoding changes.
const SCHEMA_VERSION: u64 = 1;

enum Db {
    ReadWrite(Database),
    ReadOnly(ReadOnlyDatabase),
}

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Db,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.to_path_buf() },
        other => StoreError::Open { path: path.to_path_buf(), reason: other.to_string() },
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(backend)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { what: what(), reason: e.to_string() })
}

impl RedbStore {
    /// Opens the store for writing, creating the file (and its folder) if
    /// needed. Other processes may open it read-only at the same time.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let store = Self { db: Db::ReadWrite(db), path: path.to_path_buf() };
        store.init()?;
        Ok(store)
    }

    /// Opens an existing store read-only, for the inspection commands. Works
    /// while a host has it open for writing.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path)
            .map_err(|e| open_error(path, e))?;
        let store = Self { db: Db::ReadOnly(db), path: path.to_path_buf() };
        store.check_schema_version()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates every table, so readers never meet a missing one, and records
    /// (or checks) the layout version.
    fn init(&self) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(ENTITIES).map_err(backend)?;
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(AUDIT).map_err(backend)?;
            txn.open_table(AUDIT_BY_AGENT).map_err(backend)?;
            txn.open_table(AUDIT_BY_ENTITY).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let found = meta.get("schema_version").map_err(backend)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(backend)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(v) => return Err(self.version_mismatch(v)),
            }
        }
        txn.commit().map_err(backend)
    }

    fn check_schema_version(&self) -> Result<(), StoreError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(|e| StoreError::Open {
            path: self.path.clone(),
            reason: format!("not a Concord knowledge base ({e})"),
        })?;
        match meta.get("schema_version").map_err(backend)?.map(|v| v.value()) {
            Some(SCHEMA_VERSION) => Ok(()),
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

fn build_conflict(
    events: &impl ReadableTable<u64, &'static [u8]>,
    history: &impl ReadableTable<(&'static str, u64), ()>,
    entity: &EntityRef,
    expected: Expect,
    current: Option<&Entity>,
) -> Result<Conflict, StoreError> {
    let Some(current) = current else {
        return Ok(Conflict {
            entity: entity.clone(),
            expected,
            current_version: None,
            changed_by: String::new(),
            changed_at_ms: 0,
            changed_fields: vec![],
            events_since: vec![],
        });
    };
    let since = match expected {
        Expect::Absent => 0,
        Expect::Version(v) => v,
    };
    // Walk back from the newest event until the expected version: every
    // field changed on the way is reported; the newest events are carried.
    let mut changed = BTreeSet::new();
    let mut carried = Vec::new();
    let key = entity.key();
    for seq in history_seqs_rev(history, &key)? {
        let event = load_event(events, seq?)?;
        if event.version <= since {
            break;
        }
        changed.extend(event.changes.iter().map(|c| c.name.clone()));
        if carried.len() < Conflict::MAX_EVENTS {
            carried.push(event);
        }
    }
    carried.reverse();
    Ok(Conflict {
        entity: entity.clone(),
        expected,
        current_version: Some(current.version),
        changed_by: current.updated_by.clone(),
        changed_at_ms: current.updated_at_ms,
        changed_fields: changed.into_iter().collect(),
        events_since: carried,
    })
}

/// Appends an audit entry inside an open write transaction.
fn append_audit_in(txn: &WriteTransaction, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
    let mut audit = txn.open_table(AUDIT).map_err(backend)?;
    let (seq, prev) = match audit.last().map_err(backend)? {
        Some((k, v)) => {
            let seq = k.value();
            let prev: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
            (seq + 1, prev.hash)
        }
        None => (1, GENESIS_HASH.to_string()),
    };
    let entry = AuditEntry::seal(draft, seq, at_ms, &prev);
    audit.insert(seq, encode(&entry)?.as_slice()).map_err(backend)?;
    txn.open_table(AUDIT_BY_AGENT).map_err(backend)?.insert((entry.agent.as_str(), seq), ()).map_err(backend)?;
    let mut by_entity = txn.open_table(AUDIT_BY_ENTITY).map_err(backend)?;
    for e in &entry.entities {
        by_entity.insert((e.as_str(), seq), ()).map_err(backend)?;
    }
    Ok(entry)
}

impl Store for RedbStore {
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(ENTITIES).map_err(backend)?;
        load_entity(&table, &entity.key())
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

    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        let txn = self.read()?;
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let key = entity.key();
        let mut out = Vec::new();
        for seq in history_seqs_rev(&history, &key)? {
            let event = load_event(&events, seq?)?;
            if event.at_ms < since_ms || out.len() >= 1000 {
                break;
            }
            out.push(event);
        }
        out.reverse();
        Ok(out)
    }

    fn commit(
        &self,
        request: &CommitRequest,
        audit: &dyn Fn(&CommitOutcome) -> AuditDraft,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError> {
        let txn = self.write()?;
        let outcome = {
            let mut entities = txn.open_table(ENTITIES).map_err(backend)?;
            let mut events = txn.open_table(EVENTS).map_err(backend)?;
            let mut history = txn.open_table(HISTORY).map_err(backend)?;

            // Check every expectation before applying anything: all or none.
            let mut current = Vec::with_capacity(request.writes.len());
            let mut conflict = None;
            for w in &request.writes {
                let cur = load_entity(&entities, &w.entity.key())?;
                let holds = match (w.expect, &cur) {
                    (Expect::Absent, None) => true,
                    (Expect::Version(v), Some(e)) => e.version == v,
                    _ => false,
                };
                if !holds {
                    conflict = Some(build_conflict(&events, &history, &w.entity, w.expect, cur.as_ref())?);
                    break;
                }
                current.push(cur);
            }

            match conflict {
                Some(c) => CommitOutcome::Conflict(c),
                None => {
                    let mut seq = events.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
                    let mut versions = Vec::with_capacity(request.writes.len());
                    let mut new_events = Vec::with_capacity(request.writes.len());
                    for (w, cur) in request.writes.iter().zip(current) {
                        seq += 1;
                        let (kind, version, mut fields) = match cur {
                            None => (EventKind::Created, 1, Default::default()),
                            Some(e) => (EventKind::Updated, e.version + 1, e.fields),
                        };
                        let mut changes = Vec::new();
                        for (name, value) in &w.set {
                            let before = fields.insert(name.clone(), value.clone());
                            if before.as_ref() != Some(value) {
                                changes.push(FieldChange { name: name.clone(), before, after: Some(value.clone()) });
                            }
                        }
                        for name in &w.unset {
                            if let Some(before) = fields.remove(name) {
                                changes.push(FieldChange { name: name.clone(), before: Some(before), after: None });
                            }
                        }
                        let key = w.entity.key();
                        let event = Event {
                            seq,
                            at_ms: request.at_ms,
                            agent: request.agent.clone(),
                            entity: w.entity.clone(),
                            version,
                            kind,
                            changes,
                            reason: request.reason.clone(),
                            invocation: request.invocation,
                        };
                        let entity = Entity {
                            entity: w.entity.clone(),
                            version,
                            fields,
                            updated_at_ms: request.at_ms,
                            updated_by: request.agent.clone(),
                        };
                        events.insert(seq, encode(&event)?.as_slice()).map_err(backend)?;
                        history.insert((key.as_str(), seq), ()).map_err(backend)?;
                        entities.insert(key.as_str(), encode(&entity)?.as_slice()).map_err(backend)?;
                        versions.push(version);
                        new_events.push(event);
                    }
                    CommitOutcome::Committed { versions, events: new_events }
                }
            }
        };
        // The audit entry rides in the same transaction: a commit is never
        // durable without its entry, nor the entry without the commit.
        let entry = append_audit_in(&txn, audit(&outcome), request.at_ms)?;
        txn.commit().map_err(backend)?;
        Ok((outcome, entry))
    }

    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
        let txn = self.write()?;
        let entry = append_audit_in(&txn, draft, super::model::now_ms())?;
        txn.commit().map_err(backend)?;
        Ok(entry)
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.read()?;
        let audit = txn.open_table(AUDIT).map_err(backend)?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
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
        // Newest first through the narrowest index, then put back in order.
        let index = match (&filter.agent, &filter.entity) {
            (Some(agent), _) => Some((AUDIT_BY_AGENT, agent.as_str())),
            (None, Some(entity)) => Some((AUDIT_BY_ENTITY, entity.as_str())),
            (None, None) => None,
        };
        match index {
            Some((table, key)) => {
                let index = txn.open_table(table).map_err(backend)?;
                for item in index.range((key, 0)..=(key, u64::MAX)).map_err(backend)?.rev() {
                    let (k, _) = item.map_err(backend)?;
                    if !take(k.value().1, &mut out)? {
                        break;
                    }
                }
            }
            None => {
                for item in audit.iter().map_err(backend)?.rev() {
                    let (k, v) = item.map_err(backend)?;
                    let seq = k.value();
                    let entry: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
                    if filter.matches(&entry) {
                        out.push(entry);
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    fn verify_audit(&self) -> Result<Verification, StoreError> {
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

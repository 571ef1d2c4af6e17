//! The embedded default store, on redb: storage and transactions only (the
//! rules are in [`crate::kb::ops`], over this backend's [`tx::Tx`]).
//!
//! One redb file holds the event log, the projection, the per-entity history
//! index and the audit log, so a commit and its audit entry share one write
//! transaction. redb runs one write transaction at a time; reads use MVCC
//! snapshots and never wait for the writer.
//!
//! | file | what it holds |
//! |---|---|
//! | `schema.rs` | the tables, the layout version, its creation and upgrades, the journal's table numbers |
//! | `open.rs` | opening, the open errors, crash recovery from the journal |
//! | `writer.rs` | the group-commit writer: one thread, every waiting job in one transaction; where a batch is made durable |
//! | `journal.rs` | the write-ahead journal that makes a batch durable with one sequential write |
//! | `tx.rs` | a batch's transaction as the rules see it ([`crate::kb::ops::Txn`]); every change is recorded for the journal |
//! | `audit_log.rs` | the audit numbering: read-call entries numbered on the caller's thread, linked by the writer |
//! | `audit_index.rs` | the audit indexes (runs of seqs, written in bulk) and the queries over them |
//! | `reads.rs` | snapshot reads: point reads sharing decoded entities, and history walks |
//! | `store.rs` | the [`Store`] methods, each a transaction over the rules or a snapshot read |
//! | `check.rs` | the checks for a damaged file, at open and in `concord check` |
//! | `tests/` | the tests that need the private parts, by topic (writer, recovery, reads, audit, schema) |

mod audit_index;
mod audit_log;
mod check;
mod journal;
mod open;
mod reads;
mod schema;
mod store;
mod tx;
mod writer;

pub use check::{CheckReport, TableCheck};
pub use open::OpenError;

use self::{audit_index::*, audit_log::*, open::*, reads::*, schema::*, tx::*, writer::*};
use super::ops::{self, audit_plan::AuditPlan};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, GENESIS_HASH, Verification};
use crate::kb::model::{ActionRecord, ChangeRequest, Entity, EntityRef, Event, Lease, Pin, Value};
use crate::kb::store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, Done, Guard, LeaseOutcome,
    READ_AUDIT_FLUSH, ReplayReport, Store, StoreError,
};
use journal::{Changes, Deliver, Health, Journal, Op, Sync};
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

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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
    /// closes (they get [`OpenError::InUse`]). The default.
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
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;

//! The storage boundary. Everything durable goes through [`Store`], so that
//! another backend (PostgreSQL, for several hosts) fits behind the same trait.

use super::model::{Conflict, Entity, EntityRef, Event, Write};
use crate::audit::{AuditDraft, AuditEntry, AuditFilter, Verification};
use std::path::PathBuf;

/// A storage failure. These are host faults, not agent mistakes: the runtime
/// turns them into a trap of the invocation that hit them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the knowledge base {path} is already open in another process; stop that `concord run` first")]
    InUse { path: PathBuf },
    #[error("the knowledge base {path} does not exist yet; run `concord run` to create it")]
    Missing { path: PathBuf },
    #[error("cannot open the knowledge base {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the knowledge base is open read-only")]
    ReadOnly,
    #[error("storage error: {0}")]
    Backend(String),
    #[error("stored record {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
}

/// One atomic commit, already checked by policy.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub agent: String,
    pub invocation: u64,
    pub reason: String,
    pub writes: Vec<Write>,
    pub at_ms: u64,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// All writes applied; the new version of each, in write order.
    Committed { versions: Vec<u64>, events: Vec<Event> },
    /// The first write whose expectation failed; nothing was applied.
    Conflict(Conflict),
}

/// Durable state: the event log, its projection, and the audit log.
///
/// Invariants every implementation keeps:
/// - events are append-only, numbered from 1 without gaps;
/// - the projection and history index change in the same transaction as the
///   events that caused them;
/// - a commit's audit entry is written in the same transaction as the commit
///   (or, for a refused commit, alone);
/// - audit entries are numbered from 1 without gaps and hash-chained.
pub trait Store: Send + Sync + 'static {
    /// The current state of an entity.
    fn get(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError>;

    /// Events of one entity with `seq > after_seq`, oldest first.
    fn history(&self, entity: &EntityRef, after_seq: u64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Events of one entity at or after `since_ms`, oldest first.
    fn recent(&self, entity: &EntityRef, since_ms: u64) -> Result<Vec<Event>, StoreError>;

    /// Checks every write's expectation against the current state and applies
    /// all of them, or none. `audit` builds the entry from the outcome; it is
    /// committed in the same transaction.
    fn commit(
        &self,
        request: &CommitRequest,
        audit: &dyn Fn(&CommitOutcome) -> AuditDraft,
    ) -> Result<(CommitOutcome, AuditEntry), StoreError>;

    /// Appends one audit entry on its own.
    fn append_audit(&self, draft: AuditDraft) -> Result<AuditEntry, StoreError>;

    /// Audit entries matching a filter, oldest first.
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the audit hash chain.
    fn verify_audit(&self) -> Result<Verification, StoreError>;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}

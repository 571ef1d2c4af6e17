//! The knowledge base: entities, events, versions, and where they are stored.
//!
//! - [`model`]: the data types (entities, values, events, writes, conflicts).
//! - [`store`]: the [`Store`] trait every backend implements.
//! - [`redb_store`]: the embedded default backend.

mod journal;
pub mod model;
pub(crate) mod ops;
pub mod redb_store;
pub mod store;

pub use model::{
    ActionRecord, ChangeRequest, Conflict, Denial, Entity, EntityRef, Event, EventKind, Expect, FieldChange, Fields,
    Lease, Pin, Value, Write, now_ms, parse_time,
};
pub use redb_store::{CheckReport, RedbStore, Sharing, TableCheck, WriteHold, WriterStats};
pub use store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, Guard, GuardInput, LeaseOutcome,
    ReplayReport, Store, StoreError,
};

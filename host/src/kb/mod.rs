//! The knowledge base: entities, events, versions, and where they are stored.
//!
//! - [`model`]: the data types (entities, values, events, writes, conflicts).
//! - [`store`]: the [`Store`] trait every backend implements.
//! - [`ops`]: the rules every backend shares (commit checks, conflicts,
//!   fencing, pins, events, replay, audit query plans).
//! - [`backend`]: which backend `[kb]` names, opened as a [`Store`].
//! - [`redb`]: the embedded default backend.

pub mod backend;
pub mod model;
pub mod ops;
pub mod redb;
pub mod store;

pub use backend::{Access, Backend, OpenError, check, open};
pub use model::{
    ActionRecord, ChangeRequest, Conflict, Denial, Entity, EntityRef, Event, EventKind, Expect, FieldChange, Fields,
    Lease, Pin, Value, Write, now_ms, parse_time,
};
pub use redb::{CheckReport, RedbStore, Sharing, TableCheck};
pub use store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, Guard, GuardInput, LeaseOutcome,
    ReplayReport, Store, StoreError,
};

//! The knowledge base: entities, events, versions, and where they are stored.
//!
//! Every type is reachable by one path, `concord::kb::NAME`; the files
//! behind them:
//! - `model.rs`: the data types (entities, values, events, writes, conflicts).
//! - `store.rs`: the [`Store`] contract every backend implements.
//! - `backend.rs`: which backend `[kb]` names ([`Backend`]), opened as a
//!   [`Store`] by [`open`].
//! - [`ops`]: the rules every backend shares (commit checks, conflicts,
//!   fencing, pins, events, replay, audit query plans), over a backend's
//!   transaction ([`ops::Txn`]).
//! - [`redb`]: the embedded default backend.
//! - [`postgres`]: PostgreSQL, for several hosts on one database.

mod backend;
mod model;
pub mod ops;
pub mod postgres;
pub mod redb;
mod store;

pub use backend::{Access, Backend, OpenError, check, open};
pub use model::{
    ActionRecord, ChangeRequest, Conflict, Denial, Entity, EntityRef, Event, EventKind, Expect, FieldChange, Fields,
    Lease, Pin, Value, Write, now_ms, parse_time,
};
pub use store::{
    ActOutcome, ActRequest, Actor, AtPoint, Auditor, CommitOutcome, CommitRequest, DeliveryFailure, Done,
    EXPIRED_PER_PUT, Extras, Guard, GuardInput, Import, LeaseOutcome, READ_AUDIT_FLUSH, ReplayReport, Store,
    StoreError,
};

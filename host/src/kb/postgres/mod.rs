//! The PostgreSQL backend: several hosts on one database server, each rule
//! holding across them. Storage and transactions only; the rules are in
//! [`crate::kb::ops`], over this backend's [`tx::PgTx`].
//!
//! Every writing transaction, on every host, first locks the one row of
//! `concord_head` (`FOR UPDATE`): that is the cluster's serialization
//! point. So what a rule reads in a transaction is what that transaction
//! commits over; event and audit seqs are handed out under the lock, so
//! they are gap-free, global, and become visible in commit order (a reader
//! by position never skips one); and the audit hash chain is one chain
//! across hosts. Each host's writer puts every job waiting for it into one
//! PostgreSQL transaction (group commit); a job that is refused has written
//! nothing (the rules check before they write), so it leaves the others be.
//!
//! | file | what it holds |
//! |---|---|
//! | `open.rs` | the connection options, opening, the open errors (they name the server, never the password) |
//! | `schema.rs` | the tables and the versioned migrations; a database written by a newer Concord is refused |
//! | `writer.rs` | the group-commit writer: this host's waiting jobs in one transaction after the lock; a commit whose outcome the connection lost is settled by its batch id |
//! | `tx.rs` | a batch's transaction as the rules see it ([`crate::kb::ops::Txn`]) |
//! | `reads.rs` | reads outside a transaction, on the pool; blocking on the backend's runtime from any thread |
//! | `store.rs` | the [`Store`] methods: each effect a writer job over the rules, each read a query |
//! | `audit.rs` | audit queries |
//! | `check.rs` | `concord check`: every record read and decoded |

mod audit;
mod check;
mod open;
mod reads;
mod schema;
mod store;
mod tx;
mod writer;

pub use open::{OpenError, PgOptions, describe};
pub use schema::SCHEMA_VERSION;

use crate::kb::store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The PostgreSQL-backed [`Store`](crate::kb::Store).
pub struct PgStore {
    /// The backend's own threads: the connections' I/O, the listener.
    /// `None` only while dropping (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    /// The runtime's handle, for the calls that wait on it.
    handle: tokio::runtime::Handle,
    pool: deadpool_postgres::Pool,
    /// The server as the errors name it: `host:port/dbname as user`.
    server: String,
    /// The group-commit writer; `None` when read-only.
    writer: Option<writer::Writer>,
    /// Bumped when this host's writer commits, and when another host's
    /// does (a `NOTIFY` from its transaction): the API's streams wait on it.
    durable: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The writer first: it answers what it holds, then stops.
        drop(self.writer.take());
        // A runtime may not be dropped on an async thread (the host drops
        // its store wherever its last handle goes); this may.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL failure as a [`StoreError`], naming the server.
fn backend(server: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("PostgreSQL at {server}: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { what: what(), reason: e.to_string() })
}

/// A seq, id or time as PostgreSQL's `bigint`.
fn int(n: u64) -> i64 {
    // Seqs, ids and times in ms stay far below 2^63; a bound given as
    // u64::MAX (no bound) becomes the largest bigint.
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `bigint` read back.
fn uint(n: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt { what: what(), reason: format!("negative ({n})") })
}

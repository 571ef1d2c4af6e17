//! Which backend holds the knowledge base: chosen by `[kb]` in
//! `concord.toml`, opened here. The host and the CLI open a store only
//! through [`open`] and check one through [`check`], and see it only as a
//! [`Store`]: no backend is named outside `kb`.

use super::postgres::{self, PgOptions, PgStore};
use super::redb::{self, CheckReport, RedbStore, Sharing};
use super::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// A configured backend, and where its data is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The embedded default: one redb file (and its journal beside it).
    Redb { path: PathBuf, sharing: Sharing },
    /// A PostgreSQL server, shared by any number of hosts.
    Postgres(PgOptions),
}

/// What the opener means to do with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A host, or an operator command that writes: creates the store if it
    /// does not exist yet, recovers it after a crash, upgrades its layout.
    ReadWrite,
    /// A read command: changes nothing, and fails if there is no store.
    ReadOnly,
}

/// Why a store did not open: each backend's own reasons.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Redb(#[from] redb::OpenError),
    #[error(transparent)]
    Postgres(#[from] postgres::OpenError),
}

/// Opens the configured store.
pub fn open(backend: &Backend, access: Access) -> Result<Arc<dyn Store>, OpenError> {
    Ok(match (backend, access) {
        (Backend::Redb { path, sharing }, Access::ReadWrite) => Arc::new(RedbStore::open_with(path, *sharing)?),
        (Backend::Redb { path, sharing }, Access::ReadOnly) => {
            Arc::new(RedbStore::open_read_only_with(path, *sharing)?)
        }
        (Backend::Postgres(options), access) => Arc::new(PgStore::open(options, access)?),
    })
}

/// Reads every record of the configured store once and reports damage
/// (`concord check`). Changes nothing; on redb it needs the host stopped.
pub fn check(backend: &Backend) -> Result<CheckReport, OpenError> {
    match backend {
        Backend::Redb { path, .. } => Ok(RedbStore::check(path)?),
        Backend::Postgres(options) => Ok(PgStore::check(options)?),
    }
}

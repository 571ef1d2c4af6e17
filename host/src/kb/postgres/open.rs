//! Opening a PostgreSQL store: the connection options, the first
//! connection (which creates or checks the schema), the pool, the writer
//! and the listener. The open errors ([`OpenError`]) name the server as
//! `host:port/dbname as user`: never the URL, which may hold a password.

use super::reads::block;
use super::{PgStore, schema, writer};
use crate::kb::Access;
use crate::kb::store::StoreError;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// `[kb] backend = "postgres"`: where the server is, and how many
/// connections this host keeps for reads (the writer and the listener have
/// one each besides).
#[derive(Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/dbname` (or the key=value form).
    pub url: String,
    pub pool: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgOptions").field("server", &describe(&self.url)).field("pool", &self.pool).finish()
    }
}

/// How long a connection attempt may take before the server counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a PostgreSQL store did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(
        "the PostgreSQL URL in [kb] url (or CONCORD_PG_URL) is not valid: {reason}; write it as postgres://USER:PASSWORD@HOST:5432/DBNAME"
    )]
    BadUrl { reason: String },
    #[error(
        "cannot reach PostgreSQL at {server}: {reason}; check that the server is running and that [kb] url (or CONCORD_PG_URL) names it"
    )]
    Unreachable { server: String, reason: String },
    #[error("PostgreSQL at {server} refused the connection: {reason}; {hint}")]
    Refused { server: String, reason: String, hint: &'static str },
    #[error(
        "the database at {server} was written by a newer Concord (schema version {found}; this build knows versions up to {supported}); run that newer concord, or point [kb] url at another database"
    )]
    Newer { server: String, found: u32, supported: u32 },
    #[error(
        "the database at {server} has {}; this build needs version {supported}: start a host on it once (`concord run` or `concord serve`), which creates and migrates it",
        if *.found == 0 { "no Concord schema".to_string() } else { format!("Concord schema version {found}") }
    )]
    NotMigrated { server: String, found: u32, supported: u32 },
    /// A failure while creating or migrating the schema.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The server a URL names, as errors and logs show it: never its password.
pub fn describe(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(config) => describe_config(&config),
        Err(_) => "(an invalid URL)".into(),
    }
}

pub(super) fn describe_config(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    match config.get_user() {
        Some(user) => format!("{host}:{port}/{db} as {user}"),
        None => format!("{host}:{port}/{db}"),
    }
}

/// A connection failure as an [`OpenError`]: refused (with what to check),
/// or unreachable.
pub(super) fn connect_error(server: &str, e: &tokio_postgres::Error) -> OpenError {
    let reason = message(e);
    let refused = |hint| OpenError::Refused { server: server.to_string(), reason: reason.clone(), hint };
    match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            refused("check the user and password in [kb] url (or CONCORD_PG_URL)")
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            refused("create the database first (`createdb NAME`), or name an existing one in [kb] url")
        }
        // Starting up, shutting down, or a connection failure: it is not
        // there for now, rather than refusing this host.
        Some(c) if c.code().starts_with("57P") || c.code().starts_with("08") => {
            OpenError::Unreachable { server: server.to_string(), reason }
        }
        Some(_) => refused("see the server's log for why"),
        None => OpenError::Unreachable { server: server.to_string(), reason },
    }
}

/// What went wrong, in the server's words where it gave some.
pub(super) fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            // "error connecting to server: Connection refused (os error 111)"
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s = format!("{s}: {inner}");
                source = inner.source();
            }
            s
        }
    }
}

impl PgStore {
    /// Opens the store: for [`Access::ReadWrite`], creates or migrates the
    /// schema and starts this host's writer; for [`Access::ReadOnly`],
    /// checks that the schema is this build's.
    pub fn open(options: &PgOptions, access: Access) -> Result<Self, OpenError> {
        let mut config =
            tokio_postgres::Config::from_str(&options.url).map_err(|e| OpenError::BadUrl { reason: e.to_string() })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("concord");
        let server = describe_config(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("concord-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the PostgreSQL client's threads: {e}")))?;
        {
            let (config, server) = (config.clone(), server.clone());
            block(rt.handle(), async move {
                let client = writer::connect(&config, &server).await?;
                match access {
                    Access::ReadWrite => schema::migrate(&client, &server).await,
                    Access::ReadOnly => schema::expect_current(&client, &server).await,
                }
            })
            .map_err(|e| OpenError::Store(StoreError::Backend(e)))??;
        }
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(options.pool.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot set up the connection pool for {server}: {e}")))?;
        let durable = tokio::sync::watch::Sender::new(0);
        let writer = match access {
            Access::ReadWrite => {
                writer::listen(rt.handle(), config.clone(), server.clone(), durable.clone());
                Some(writer::Writer::start(rt.handle().clone(), config, server.clone(), durable.clone())?)
            }
            Access::ReadOnly => None,
        };
        let handle = rt.handle().clone();
        Ok(PgStore { rt: Some(rt), handle, pool, server, writer, durable })
    }

    /// The server, as errors name it (`host:port/dbname as user`).
    pub fn server(&self) -> &str {
        &self.server
    }
}

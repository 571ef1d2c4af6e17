//! The tables, and the versioned migrations that create them.
//!
//! `concord_schema` holds one row per migration applied. A host applies the
//! missing ones at open, under a transaction-scoped advisory lock, so two
//! hosts starting together migrate once; a database whose newest migration
//! is past this build's is refused, naming both versions. A migration is
//! never edited once released: a change is a new entry in [`MIGRATIONS`].
//!
//! Records are stored as the same JSON as on redb (`body bytea`), so that
//! `concord migrate` copies them unchanged; the columns beside them are
//! what the queries select and order by. Keys are `COLLATE "C"`: the byte
//! order redb's keys have, which `Store::list` pages by.

use super::open::OpenError;
use crate::kb::store::StoreError;

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The advisory lock key migrations run under ("concord" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6f6e_636f_7264;

/// Each migration, in order: version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: the knowledge base.
    r#"
    -- The serialization point: every writing transaction locks this row
    -- first. It also holds the fencing token counter.
    CREATE TABLE concord_head (
        id integer PRIMARY KEY CHECK (id = 1),
        next_fence bigint NOT NULL
    );
    INSERT INTO concord_head (id, next_fence) VALUES (1, 1);

    CREATE TABLE concord_events (
        seq bigint PRIMARY KEY,
        entity text COLLATE "C" NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX concord_events_by_entity ON concord_events (entity, seq);

    CREATE TABLE concord_entities (
        key text COLLATE "C" PRIMARY KEY,
        body bytea NOT NULL
    );

    CREATE TABLE concord_pins (
        entity text COLLATE "C" NOT NULL,
        field text COLLATE "C" NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (entity, field)
    );

    CREATE TABLE concord_leases (
        entity text COLLATE "C" PRIMARY KEY,
        body bytea NOT NULL
    );

    CREATE TABLE concord_actions (
        id bigint PRIMARY KEY,
        idempotency_key text NOT NULL UNIQUE,
        pending boolean NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX concord_outbox ON concord_actions (id) WHERE pending;

    CREATE TABLE concord_change_requests (
        id bigint PRIMARY KEY,
        body bytea NOT NULL
    );

    CREATE TABLE concord_read_cursors (
        agent text COLLATE "C" NOT NULL,
        entity text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (agent, entity)
    );

    CREATE TABLE concord_audit (
        seq bigint PRIMARY KEY,
        at_ms bigint NOT NULL,
        agent text NOT NULL,
        invocation bigint NOT NULL,
        call text NOT NULL,
        decision text NOT NULL,
        entities text[] NOT NULL,
        body bytea NOT NULL
    );
    CREATE INDEX concord_audit_by_agent ON concord_audit (agent, seq);
    CREATE INDEX concord_audit_by_invocation ON concord_audit (invocation, seq);
    CREATE INDEX concord_audit_by_entity ON concord_audit USING gin (entities);

    CREATE TABLE concord_request_keys (
        key text PRIMARY KEY,
        at_ms bigint NOT NULL,
        record bytea NOT NULL
    );
    CREATE INDEX concord_request_keys_by_time ON concord_request_keys (at_ms);

    CREATE TABLE concord_host_state (
        name text PRIMARY KEY,
        value bytea NOT NULL
    );

    -- One row per committed batch, written in the batch's transaction: a
    -- writer that lost its connection while committing looks its batch up
    -- to learn whether it committed (rows older than an hour go).
    CREATE TABLE concord_batches (
        id text PRIMARY KEY,
        at_ms bigint NOT NULL
    );
    "#,
    // 2: outbox claims, so that one host at a time delivers an action.
    r#"
    ALTER TABLE concord_actions ADD COLUMN claimed_until bigint NOT NULL DEFAULT 0;
    "#,
    // 3: schedule fires, claimed once per cluster.
    r#"
    CREATE TABLE concord_schedule_fires (
        name text NOT NULL,
        due_ms bigint NOT NULL,
        PRIMARY KEY (name, due_ms)
    );
    "#,
];

fn failed(server: &str, what: &str, e: &tokio_postgres::Error) -> OpenError {
    OpenError::Store(StoreError::Backend(format!("PostgreSQL at {server}: {what}: {}", super::open::message(e))))
}

/// The newest migration applied (0: none, or no Concord schema at all).
async fn applied(client: &impl tokio_postgres::GenericClient, server: &str) -> Result<u32, OpenError> {
    let exists = client
        .query_one("SELECT to_regclass('concord_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| failed(server, "reading the schema version", &e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM concord_schema", &[])
        .await
        .map_err(|e| failed(server, "reading the schema version", &e))?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

/// Creates the schema or brings it up to [`SCHEMA_VERSION`].
pub(super) async fn migrate(client: &tokio_postgres::Client, server: &str) -> Result<(), OpenError> {
    let fail = |what: &'static str| move |e: tokio_postgres::Error| failed(server, what, &e);
    client.batch_execute("BEGIN").await.map_err(fail("starting the migration"))?;
    let result = async {
        client.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(fail("locking"))?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS concord_schema (version integer PRIMARY KEY, applied_ms bigint NOT NULL)",
            )
            .await
            .map_err(fail("creating concord_schema"))?;
        let found = applied(client, server).await?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::Newer { server: server.to_string(), found, supported: SCHEMA_VERSION });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i32 + 1;
            client.batch_execute(sql).await.map_err(|e| failed(server, &format!("migration {version}"), &e))?;
            let now = super::int(crate::kb::model::now_ms());
            client
                .execute("INSERT INTO concord_schema (version, applied_ms) VALUES ($1, $2)", &[&version, &now])
                .await
                .map_err(fail("recording a migration"))?;
            tracing::info!(server, version, "PostgreSQL schema migrated");
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(fail("committing the migration")),
        Err(e) => {
            // Nothing of a failed migration stays.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// For a read-only open: the schema must be exactly this build's.
pub(super) async fn expect_current(client: &tokio_postgres::Client, server: &str) -> Result<(), OpenError> {
    let found = applied(client, server).await?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => {
            Err(OpenError::Newer { server: server.to_string(), found, supported: SCHEMA_VERSION })
        }
        std::cmp::Ordering::Less => {
            Err(OpenError::NotMigrated { server: server.to_string(), found, supported: SCHEMA_VERSION })
        }
    }
}

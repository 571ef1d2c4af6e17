//! The baseline of the `service` benchmark: what a team would write by
//! hand instead of Concord. A plain axum service doing the same
//! read-check-write natively on SQLite (WAL, `synchronous=FULL`): read the
//! row's version, update it on that version, append an audit row, in one
//! transaction, and answer with the new version.
//!
//! `sqlite_service DB_PATH` listens on 127.0.0.1 (a free port), prints
//! `listening ADDR` and serves until killed. `POST /invoke/{id}` is one
//! read-check-write of counter `id` (created on first use).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections, one per blocking request at a time (writers still queue on
/// SQLite's write lock, as they would in any such service).
struct Pool {
    path: String,
    idle: Mutex<Vec<Connection>>,
}

fn connect(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(60))?;
    Ok(conn)
}

impl Pool {
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let taken = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let mut conn = match taken {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let result = f(&mut conn);
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn);
        result
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Read, check, write, audit: one immediate transaction.
fn read_check_write(conn: &mut Connection, id: &str) -> rusqlite::Result<i64> {
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: Option<(i64, i64)> = txn
        .prepare_cached("SELECT n, version FROM counters WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let version = match found {
        Some((n, version)) => {
            let changed = txn
                .prepare_cached("UPDATE counters SET n = ?1, version = version + 1 WHERE id = ?2 AND version = ?3")?
                .execute(params![n + 1, id, version])?;
            if changed != 1 {
                return Err(rusqlite::Error::QueryReturnedNoRows);
            }
            version + 1
        }
        None => {
            txn.prepare_cached("INSERT INTO counters (id, n, version) VALUES (?1, 0, 1)")?.execute(params![id])?;
            1
        }
    };
    let args = serde_json::json!({ "entity": id, "expect": version - 1 }).to_string();
    txn.prepare_cached(
        "INSERT INTO audit (at_ms, agent, entity, call, args, outcome) VALUES (?1, 'bench', ?2, 'kb.commit', ?3, ?4)",
    )?
    .execute(params![now_ms(), id, args, format!("version {version}")])?;
    txn.commit()?;
    Ok(version)
}

async fn invoke(State(pool): State<Arc<Pool>>, Path(id): Path<String>) -> (StatusCode, String) {
    let done = tokio::task::spawn_blocking(move || pool.with(|c| read_check_write(c, &id))).await;
    match done {
        Ok(Ok(version)) => (StatusCode::OK, format!("{{\"outcome\":\"ok\",\"version\":{version}}}")),
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("{{\"error\":\"{e}\"}}")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{{\"error\":\"{e}\"}}")),
    }
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: sqlite_service DB_PATH"))?;
    let conn = connect(&path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS counters (id TEXT PRIMARY KEY, n INTEGER NOT NULL, version INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS audit (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, agent TEXT NOT NULL,
             entity TEXT NOT NULL, call TEXT NOT NULL, args TEXT NOT NULL, outcome TEXT NOT NULL);
         CREATE INDEX IF NOT EXISTS audit_by_entity ON audit (entity, seq);",
    )?;
    let pool = Arc::new(Pool { path, idle: Mutex::new(vec![conn]) });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let app = axum::Router::new().route("/invoke/{id}", post(invoke)).with_state(pool);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

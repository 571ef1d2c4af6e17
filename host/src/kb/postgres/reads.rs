//! Reads outside a transaction, on the pool, and the one way any thread
//! waits for the backend's runtime ([`block`]).

use super::writer::{Job, pg_error, unavailable};
use super::{PgStore, backend, decode, int};
use crate::kb::model::{EntityRef, Event};
use crate::kb::ops;
use crate::kb::store::StoreError;
use std::future::Future;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// A query parameter, owned, so the query can run on the backend's runtime.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// Runs `fut` on the backend's runtime and waits for its result, from any
/// thread: a plain one, a blocking one, or an async one of the host's
/// runtime (which is told first, with `block_in_place`, so that its other
/// tasks move to another thread meanwhile). `Err` if the runtime stopped.
pub(super) fn block<T: Send + 'static>(
    rt: &Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    waiting(move || rx.recv().map_err(|_| "the PostgreSQL client's threads have stopped".to_string()))
}

/// Runs `wait`, which blocks, telling the host's runtime first when this
/// is one of its async threads (`block_in_place`), so that its other tasks
/// move to another thread meanwhile. Elsewhere nothing else needs the
/// thread (a current-thread runtime waits here as for any blocking call).
fn waiting<T>(wait: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

impl PgStore {
    /// Runs one query on a pooled connection.
    pub(super) fn query(&self, sql: impl Into<String>, params: Vec<Param>) -> Result<Vec<Row>, StoreError> {
        let (pool, server, sql) = (self.pool.clone(), self.server.clone(), sql.into());
        block(&self.handle, async move {
            let client = pool.get().await.map_err(|e| pool_error(&server, e))?;
            let statement = client.prepare_cached(&sql).await.map_err(|e| pg_error(&server, &e))?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            client.query(&statement, &refs).await.map_err(|e| pg_error(&server, &e))
        })
        .map_err(StoreError::Backend)?
    }

    /// The `body` column of each row, decoded.
    pub(super) fn bodies<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        params: Vec<Param>,
        what: impl Fn(&Row) -> String,
    ) -> Result<Vec<T>, StoreError> {
        self.bodies_of(sql, params, what)
    }

    /// [`PgStore::bodies`] of a query built at run time.
    pub(super) fn bodies_of<T: serde::de::DeserializeOwned>(
        &self,
        sql: impl Into<String>,
        params: Vec<Param>,
        what: impl Fn(&Row) -> String,
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?.iter().map(|r| decode(r.get::<_, &[u8]>("body"), || what(r))).collect()
    }

    /// Runs `work` in a batch of the writer and waits for its answer.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&super::tx::PgTx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(work, move |r| {
            let _ = tx.send(r);
        });
        waiting(move || rx.recv().map_err(|_| StoreError::Backend("the store's writer has stopped".into())))?
    }

    /// Queues `work` for the writer; `done` gets its result once its batch
    /// has committed (or failed).
    pub(super) fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&super::tx::PgTx<'_>) -> Result<T, StoreError> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let Some(writer) = &self.writer else { return done(Err(StoreError::ReadOnly)) };
        let job: Job = Box::new(move |tx| match tx.map(work) {
            Some(Ok(value)) => {
                (true, Box::new(move |committed: Result<(), StoreError>| done(committed.map(|()| value))))
            }
            Some(Err(e)) => (false, Box::new(move |_| done(Err(e)))),
            None => (
                false,
                Box::new(move |why: Result<(), StoreError>| done(why.and(Err(StoreError::Backend("not run".into()))))),
            ),
        });
        writer.send(job);
    }
}

fn pool_error(server: &str, e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(server, &e),
        deadpool_postgres::PoolError::Timeout(_) => unavailable(server, "no connection within the pool's wait"),
        other => backend(server, format!("no connection: {other}")),
    }
}

/// One entity's history read on the pool, page by page, newest first.
pub(super) struct PoolHistory<'a>(pub(super) &'a PgStore);

/// How many events one page of a walk reads.
const PAGE: i64 = 256;

impl ops::EntityHistory for PoolHistory<'_> {
    fn events_newest_first(&self, entity: &EntityRef, visit: &mut dyn FnMut(Event) -> bool) -> Result<(), StoreError> {
        let key = entity.key();
        let mut before = i64::MAX;
        loop {
            let rows = self.0.query(
                "SELECT seq, body FROM concord_events WHERE entity = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                vec![Box::new(key.clone()), Box::new(before), Box::new(PAGE)],
            )?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                before = row.get(0);
                if !visit(decode(row.get::<_, &[u8]>(1), || format!("event {before}"))?) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// Every row of a table in key order, read a page at a time: for replay,
/// verification and export, which must not hold a whole store in memory.
/// `sql` takes the last key read as `$1` and the page size as `$2`, and
/// selects the key (a bigint) first.
pub(super) struct Pages<'a> {
    store: &'a PgStore,
    sql: &'static str,
    after: i64,
    page: std::vec::IntoIter<Row>,
    done: bool,
}

impl<'a> Pages<'a> {
    pub(super) fn new(store: &'a PgStore, sql: &'static str, after: u64) -> Self {
        Pages { store, sql, after: int(after), page: Vec::new().into_iter(), done: false }
    }
}

impl Iterator for Pages<'_> {
    type Item = Result<Row, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.page.next() {
            self.after = row.get(0);
            return Some(Ok(row));
        }
        if self.done {
            return None;
        }
        match self.store.query(self.sql, vec![Box::new(self.after), Box::new(1024i64)]) {
            Ok(rows) => {
                self.done = rows.len() < 1024;
                self.page = rows.into_iter();
                let row = self.page.next()?;
                self.after = row.get(0);
                Some(Ok(row))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

//! The group-commit writer: one thread per host, with its own connection.
//! It takes every job waiting for it, opens one transaction, locks the
//! cluster's head row (the serialization point: see the module docs), runs
//! each job, and commits. Jobs are answered only after
//! the commit: an answered effect is durable on the server.
//!
//! If the connection is lost while committing, the outcome is unknown to
//! the writer; the batch's id, inserted in the same transaction, settles
//! it: the writer reconnects and looks the id up before it answers anyone,
//! so no job is told "failed" for a commit that happened, or the reverse.

use super::open::{OpenError, connect_error, message};
use super::tx::{Conn, Heads, PgTx};
use super::{backend, int};
use crate::kb::store::StoreError;
use crate::metrics::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// The most jobs in one transaction.
const MAX_BATCH: usize = 512;

/// How long the writer keeps trying to learn a lost commit's outcome.
const SETTLE_FOR: Duration = Duration::from_secs(30);

/// Batch rows older than this are deleted (a lookup needs only the last
/// few seconds'); one batch in [`PRUNE_EVERY`] does it.
const BATCH_ROWS_KEPT_MS: u64 = 3_600_000;
const PRUNE_EVERY: u64 = 1024;

/// Delivers a job's result, given whether its batch committed.
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A job: given the batch's transaction, runs and says whether it
/// succeeded (its writes stay) and how to answer; given `None` (its batch
/// failed before it ran), only how to answer.
pub(super) type Job = Box<dyn FnOnce(Option<&PgTx<'_>>) -> (bool, Answer) + Send>;

/// What the store and the writer thread share.
pub(super) struct Shared {
    pub(super) queued: AtomicUsize,
    pub(super) batch_sizes: Histogram,
    /// How long each batch's commit took (the server's sync among it).
    pub(super) commit_latency: Histogram,
    /// Why the last batch failed to reach the server, until one succeeds.
    pub(super) failure: Mutex<Option<String>>,
}

pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(super) shared: Arc<Shared>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue stops the thread once it has answered every job.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection, or why the server refused or could not be reached.
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    server: &str,
) -> Result<tokio_postgres::Client, OpenError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| connect_error(server, &e))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away; the
        // client's next call then fails and the owner reconnects.
        let _ = connection.await;
    });
    Ok(client)
}

impl Writer {
    pub(super) fn start(
        handle: Handle,
        config: tokio_postgres::Config,
        server: String,
        durable: tokio::sync::watch::Sender<u64>,
    ) -> Result<Self, OpenError> {
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            batch_sizes: Histogram::new(BATCH_BOUNDS),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
            failure: Mutex::new(None),
        });
        let (jobs, queue) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("concord-pg-writer".into())
                .spawn(move || {
                    WriterThread { handle, config, server, shared, durable, conn: None, batches: 0 }.run(queue)
                })
                .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Writer { jobs: Some(jobs), thread: Some(thread), shared })
    }

    /// Queues a job; if the writer has stopped, answers it at once.
    pub(super) fn send(&self, job: Job) {
        self.shared.queued.fetch_add(1, Relaxed);
        let Some(jobs) = &self.jobs else { return };
        if let Err(mpsc::SendError(job)) = jobs.send(job) {
            self.shared.queued.fetch_sub(1, Relaxed);
            let (_, answer) = job(None);
            answer(Err(StoreError::Backend("the store's writer has stopped".into())));
        }
    }

    pub(super) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

struct WriterThread {
    handle: Handle,
    config: tokio_postgres::Config,
    server: String,
    shared: Arc<Shared>,
    durable: tokio::sync::watch::Sender<u64>,
    conn: Option<Conn>,
    batches: u64,
}

/// How a batch ended.
enum Ended {
    Committed,
    /// Nothing of it was applied.
    NotApplied(StoreError),
}

impl WriterThread {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Relaxed);
            self.shared.batch_sizes.observe(batch.len() as f64);
            self.batch(batch);
        }
    }

    fn fail(&self, why: &StoreError) {
        *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.to_string());
    }

    /// The writer's connection, made anew if it was lost.
    fn conn(&mut self) -> Result<&Conn, StoreError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            let (config, server) = (self.config.clone(), self.server.clone());
            let client = self
                .handle
                .block_on(async move {
                    let client = connect(&config, &server).await?;
                    // A commit is answered only once the server has it on
                    // disk, whatever the server's default.
                    client
                        .batch_execute("SET synchronous_commit = on")
                        .await
                        .map_err(|e| StoreError::Backend(message(&e)))?;
                    Ok::<_, OpenError>(client)
                })
                .map_err(|e| match e {
                    OpenError::Unreachable { reason, .. } => unavailable(&self.server, &reason),
                    other => StoreError::Backend(other.to_string()),
                })?;
            self.conn = Some(Conn::new(client, self.handle.clone(), self.server.clone()));
        }
        self.conn.as_ref().ok_or_else(|| StoreError::Backend("no connection".into()))
    }

    fn batch(&mut self, jobs: Vec<Job>) {
        let mut id = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut id) {
            return answer_all(jobs, &StoreError::Backend(format!("no randomness for a batch id: {e}")));
        }
        let id = hex::encode(id);
        let started = Instant::now();
        let prune = self.batches % PRUNE_EVERY == PRUNE_EVERY - 1;
        let (answers, ended) = match self.conn() {
            Ok(conn) => run_batch(conn, jobs, &id, prune),
            Err(e) => {
                self.fail(&e);
                return answer_all(jobs, &e);
            }
        };
        self.batches += 1;
        let ended = match ended {
            Ok(ended) => ended,
            // The commit's outcome is unknown: find out before answering.
            Err(lost) => self.settle(&id, lost),
        };
        match ended {
            Ended::Committed => {
                *self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.shared.commit_latency.observe(started.elapsed().as_secs_f64());
                self.durable.send_modify(|n| *n += 1);
                for (_, answer) in answers {
                    answer(Ok(()));
                }
            }
            Ended::NotApplied(why) => {
                self.fail(&why);
                for (_, answer) in answers {
                    answer(Err(why.clone()));
                }
            }
        }
    }

    /// Whether batch `id` committed, asked over a new connection until the
    /// server answers (for at most [`SETTLE_FOR`]).
    fn settle(&mut self, id: &str, lost: StoreError) -> Ended {
        let deadline = Instant::now() + SETTLE_FOR;
        loop {
            self.conn = None;
            let found = self.conn().and_then(|c| {
                c.query("SELECT 1 FROM concord_batches WHERE id = $1", &[&id]).map(|rows| !rows.is_empty())
            });
            match found {
                Ok(true) => return Ended::Committed,
                Ok(false) => {
                    return Ended::NotApplied(StoreError::Unavailable(format!(
                        "the connection to PostgreSQL at {} was lost while committing ({lost}); nothing was applied: retry",
                        self.server
                    )));
                }
                Err(e) if Instant::now() >= deadline => {
                    return Ended::NotApplied(StoreError::Backend(format!(
                        "the connection to PostgreSQL at {} was lost while committing ({lost}), and whether the commit happened could not be learned in {}s ({e}): check `concord history` before retrying",
                        self.server,
                        SETTLE_FOR.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Answers every job of a batch that did not run.
fn answer_all(jobs: Vec<Job>, why: &StoreError) {
    for job in jobs {
        let (_, answer) = job(None);
        answer(Err(why.clone()));
    }
}

/// Runs a batch in one transaction. `Ok(ended)` if its outcome is known;
/// `Err` if the connection failed at the commit, when it is not.
#[allow(clippy::type_complexity)]
fn run_batch(conn: &Conn, jobs: Vec<Job>, id: &str, prune: bool) -> (Vec<(bool, Answer)>, Result<Ended, StoreError>) {
    let mut answers = Vec::with_capacity(jobs.len());
    // The lock with the BEGIN: one round trip.
    let fence =
        conn.simple_rows("BEGIN; SELECT next_fence FROM concord_head WHERE id = 1 FOR UPDATE").and_then(|rows| {
            let row = rows.first().ok_or_else(|| StoreError::Corrupt {
                what: "concord_head".into(),
                reason: "its row is missing".into(),
            })?;
            row.get(0).and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| StoreError::Corrupt {
                what: "concord_head.next_fence".into(),
                reason: format!("{:?} is not a counter", row.get(0)),
            })
        });
    let fence = match fence {
        Ok(fence) => fence,
        Err(e) => {
            let _ = conn.simple("ROLLBACK");
            for job in jobs {
                answers.push(job(None));
            }
            return (answers, Ok(Ended::NotApplied(e)));
        }
    };
    let _ = conn.take_failed();
    let tx = PgTx::new(conn, Heads::new(fence));
    // No savepoint per job (it would cost a round trip each): the rules
    // check everything before they write anything (see `kb::ops`), so a
    // job that fails has written nothing, and the batch goes on without it.
    // If it did write, or the server failed one of its statements (which
    // aborts the transaction), nothing of the batch may commit: every job
    // is answered as not applied.
    let mut ok_any = false;
    let mut broken: Option<StoreError> = None;
    for job in jobs {
        if broken.is_some() {
            answers.push(job(None));
            continue;
        }
        let (saved, writes) = (tx.heads(), conn.writes());
        let (ok, answer) = job(Some(&tx));
        answers.push((ok, answer));
        if ok {
            ok_any = true;
        } else if conn.take_failed() || conn.writes() != writes {
            broken = Some(if conn.client.is_closed() {
                unavailable(conn.server(), "the connection was lost")
            } else {
                StoreError::Backend(
                    "another operation in the same transaction failed at the server; nothing of it was applied: retry"
                        .into(),
                )
            });
        } else {
            tx.restore(saved);
        }
    }
    if let Some(e) = broken {
        let _ = conn.simple("ROLLBACK");
        return (answers, Ok(Ended::NotApplied(e)));
    }
    if !ok_any {
        // Every job failed, none wrote: each answers with its own error.
        return match conn.simple("ROLLBACK") {
            Ok(()) => (answers, Ok(Ended::Committed)),
            Err(e) => (answers, Ok(Ended::NotApplied(e))),
        };
    }
    let now = crate::kb::model::now_ms();
    let heads = tx.heads();
    drop(tx);
    // The rest in one round trip: the fence counter, the batch's id, the
    // wake-up for the other hosts (delivered at commit), and the commit.
    let mut end = String::with_capacity(256);
    if heads.fence != fence {
        end.push_str(&format!("UPDATE concord_head SET next_fence = {} WHERE id = 1;", int(heads.fence)));
    }
    if prune {
        end.push_str(&format!(
            "DELETE FROM concord_batches WHERE at_ms < {};",
            int(now.saturating_sub(BATCH_ROWS_KEPT_MS))
        ));
    }
    // `id` is hex: nothing to quote.
    end.push_str(&format!(
        "INSERT INTO concord_batches (id, at_ms) VALUES ('{id}', {}); NOTIFY concord_changes; COMMIT",
        int(now)
    ));
    match conn.simple(&end) {
        Ok(()) => (answers, Ok(Ended::Committed)),
        Err(e) if conn.client.is_closed() => (answers, Err(e)),
        Err(e) => {
            // The server refused a statement: the transaction is aborted,
            // and a ROLLBACK ends it. (If even that fails, ask by the id.)
            match conn.simple("ROLLBACK") {
                Ok(()) => (answers, Ok(Ended::NotApplied(e))),
                Err(_) => (answers, Err(e)),
            }
        }
    }
}

/// Wakes this host's streams when another host commits: a `LISTEN` on its
/// own connection, made again whenever it is lost. Only a wake-up: what a
/// stream reads, it reads by seq, so a missed notification loses nothing
/// (and each reconnect wakes the streams once, for what came meanwhile).
pub(super) fn listen(
    handle: &Handle,
    config: tokio_postgres::Config,
    server: String,
    durable: tokio::sync::watch::Sender<u64>,
) {
    use futures_util::StreamExt as _;
    handle.spawn(async move {
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, mut connection)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    // Notifications come only to whoever polls the
                    // connection's messages.
                    let poller = tokio::spawn(async move {
                        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(Ok(message)) = messages.next().await {
                            if matches!(message, tokio_postgres::AsyncMessage::Notification(_)) && tx.send(()).is_err()
                            {
                                break;
                            }
                        }
                    });
                    match client.batch_execute("LISTEN concord_changes").await {
                        Ok(()) => {
                            durable.send_modify(|n| *n += 1);
                            while rx.recv().await.is_some() {
                                durable.send_modify(|n| *n += 1);
                            }
                        }
                        Err(e) => tracing::warn!(server, "cannot LISTEN for other hosts' commits: {}", message(&e)),
                    }
                    poller.abort();
                }
                Err(e) => tracing::warn!(server, "cannot connect to listen for other hosts' commits: {}", message(&e)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// A PostgreSQL error as a [`StoreError`]: [`StoreError::Unavailable`]
/// when the server is gone or going (a lost connection, a refused one, a
/// shutdown), so that callers retry; a storage fault otherwise.
pub(super) fn pg_error(server: &str, e: &tokio_postgres::Error) -> StoreError {
    if lost(e) { unavailable(server, &message(e)) } else { backend(server, message(e)) }
}

/// Whether the error says the connection or the server is gone: closed,
/// an I/O failure, or SQLSTATE class 08 (connection exception) or 57P
/// (the server shutting down, crashed, or not accepting connections yet).
fn lost(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if inner.is::<std::io::Error>() {
            return true;
        }
        source = inner.source();
    }
    e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

pub(super) fn unavailable(server: &str, why: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "PostgreSQL at {server} is unreachable ({why}); nothing was applied: retry shortly (the host reconnects on its own)"
    ))
}

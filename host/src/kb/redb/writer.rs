//! The group-commit writer, where a batch is made durable.
//!
//! One thread owns writing: it takes every waiting job, runs them in order
//! in one write transaction, commits once, and answers each caller, after
//! the journal has the batch on disk when any job needs it durable.

use super::*;

/// What a write job returns to its caller.
pub(super) type Reply = Box<dyn Any + Send>;

/// A write job's body.
pub(super) type Work = Box<dyn FnOnce(&Tx<'_>) -> Result<Reply, StoreError> + Send>;

/// Where a job's answer goes.
pub(super) type Answer = Box<dyn FnOnce(Result<Reply, StoreError>) + Send>;

/// One operation for the writer: it runs inside a shared write transaction.
///
/// Invariant: a job that returns [`StoreError::Rejected`] has written
/// nothing (it checks before it writes), so the rest of its batch can
/// commit. Any other error, or a panic, rolls the whole batch back.
pub(super) struct Job {
    pub(super) work: Work,
    /// Whether the job's effects must be durable before it is answered.
    pub(super) durable: bool,
    pub(super) reply: Answer,
}

/// What the writer's queue carries.
pub(super) enum Msg {
    Job(Job),
    /// Read-call audit entries are waiting (see [`Tail`]): write them within
    /// [`READ_AUDIT_FLUSH`], or at once when `now`.
    Nudge {
        now: bool,
    },
}

/// Group commit: one thread owns writing. It takes every job waiting, runs
/// them in order in one write transaction (so a later job sees an earlier
/// one's writes, exactly as if they ran one by one), commits once, and
/// answers each caller. A batch with any durable job is committed durably
/// (fsync) before anyone is answered. When fewer jobs are waiting than the
/// last batch had, it waits up to [`GATHER`] for the rest.
///
/// Read calls do not queue jobs at all: their audit entries are numbered
/// at once and wait in the [`Tail`]; every batch takes them in, and the
/// writer commits them durably within [`READ_AUDIT_FLUSH`] when no batch
/// comes by sooner.
pub(super) struct Writer {
    pub(super) jobs: Option<mpsc::Sender<Msg>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    pub(super) shared: Arc<WriterShared>,
}

/// What the writer shares with the store handle: the audit tail, counters,
/// the snapshot point reads share, and the hold that lets a test queue up
/// jobs deterministically.
#[derive(Default)]
pub(super) struct WriterShared {
    pub(super) tail: std::sync::Mutex<Tail>,
    pub(super) hold: std::sync::Mutex<()>,
    pub(super) queued: std::sync::atomic::AtomicUsize,
    pub(super) batches: std::sync::atomic::AtomicU64,
    pub(super) jobs: std::sync::atomic::AtomicU64,
    /// Transactions committed since the open: a snapshot's age.
    pub(super) commits: std::sync::atomic::AtomicU64,
    /// Batches begun since the open, counted before each takes in the
    /// read entries waiting in the tail and before it commits, so neither
    /// a reader nor `sync` can see a batch's effects (or miss its read
    /// entries from the tail) while this count lacks it (see
    /// [`RedbStore::all_durable`]).
    pub(super) shown: std::sync::atomic::AtomicU64,
    /// The last of those batches known to be durable (with every one
    /// before it), and a wake-up for whoever waits for more (the API's
    /// streams). It only grows.
    pub(super) durable: Arc<tokio::sync::watch::Sender<u64>>,
    /// Jobs per write transaction.
    pub(super) batch_sizes: BatchSizes,
    /// The journal's health and sync times, once it runs.
    pub(super) journal: std::sync::OnceLock<Arc<Health>>,
    pub(super) snapshot: std::sync::Mutex<Option<Snapshot>>,
    /// Tests: runs just before each batch's redb commit; an error makes the
    /// commit fail (see [`commit`]).
    #[cfg(test)]
    pub(super) before_commit: std::sync::Mutex<Option<BeforeCommit>>,
}

/// The histogram of jobs per batch.
pub(super) struct BatchSizes(pub(super) crate::metrics::Histogram);

impl Default for BatchSizes {
    fn default() -> Self {
        Self(crate::metrics::Histogram::new(crate::metrics::BATCH_BOUNDS))
    }
}

#[cfg(test)]
pub(super) type BeforeCommit = Box<dyn FnMut() -> Result<(), String> + Send>;

impl WriterShared {
    /// See [`RedbStore::all_durable`].
    pub(super) fn all_durable(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        // The tail first: an entry leaves it only into a batch already
        // counted in `shown`.
        self.tail().pending.is_empty() && *tokio::sync::watch::Sender::borrow(&self.durable) >= self.shown.load(SeqCst)
    }

    pub(super) fn snapshot(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        // Only a cache: whatever a panic left in it is still a snapshot.
        self.snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // Nothing panics while holding the tail, but a poisoned lock must not
        // take the audit log down with it: the data is still consistent.
        self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counters of the group-commit writer (for tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct WriterStats {
    /// Write transactions committed (or rolled back).
    pub(super) batches: u64,
    /// Jobs run in them.
    pub(super) jobs: u64,
}

/// While alive, the writer takes no new batch; jobs queue up. For tests
/// that need a batch of known content (see [`RedbStore::hold_writes`]).
#[cfg(test)]
#[must_use]
pub(super) struct WriteHold<'a>(
    #[expect(dead_code, reason = "held for its Drop, which releases the writer")] std::sync::MutexGuard<'a, ()>,
);

#[cfg(test)]
impl std::fmt::Debug for WriteHold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHold")
    }
}

/// The most jobs one transaction takes.
pub(super) const MAX_BATCH: usize = 512;

/// The longest the writer waits for a batch to fill up to the size of the
/// last one (with the journal, while it runs the jobs it has). Short next to a durable commit (about 1 ms here), which a
/// larger batch shares.
pub(super) const GATHER: std::time::Duration = std::time::Duration::from_micros(200);

/// The writer's side of the journal (see [`journal`]), when it is in use.
pub(super) struct Journaling {
    pub(super) syncer: mpsc::Sender<Sync>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
    pub(super) health: Arc<Health>,
    /// The id the next record gets: ids are consecutive.
    pub(super) next_id: u64,
    pub(super) checkpointed_at: std::time::Instant,
    /// Journal bytes since the last checkpoint.
    pub(super) since_checkpoint: usize,
    /// Whether a batch committed since the last checkpoint.
    pub(super) dirty: bool,
    /// The size of the last record.
    pub(super) last_record: usize,
    /// The current cycle's epoch (see [`journal`]).
    pub(super) epoch: u64,
}

/// A fresh journal epoch. Randomness failing is not a reason to stop
/// writing: the time, in nanoseconds, is unique enough across cycles.
pub(super) fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    }
}

/// How often the writer checkpoints while batches come: a durable redb
/// commit, after which the journal starts over. Longer means fewer (but
/// larger) checkpoints; the journal holds at most this much to recover.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// ... or after this many journal bytes, whichever comes first.
pub(super) const CHECKPOINT_BYTES: usize = 32 << 20;

pub(super) fn writer_loop(
    db: Arc<Database>,
    queue: mpsc::Receiver<Msg>,
    shared: Arc<WriterShared>,
    mut chain: Chain,
    mut journal: Option<Journaling>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Instant;
    // Since when read entries have waited in the tail (or, without the
    // journal, a non-durable commit has waited to be made durable).
    let mut dirty_since: Option<Instant> = None;
    // Jobs in the last batch: how many to wait for (see GATHER).
    let mut last_batch = 1;
    loop {
        let checkpoint_due = journal.as_ref().filter(|j| j.dirty).map(|j| j.checkpointed_at + CHECKPOINT_EVERY);
        // After a journal failure nothing is written any more: no deadline,
        // just refuse the jobs that come.
        let stopped = journal.as_ref().is_some_and(|j| j.health.failure().is_some());
        let deadline = match stopped {
            true => None,
            false => [dirty_since.map(|since| since + READ_AUDIT_FLUSH), checkpoint_due].into_iter().flatten().min(),
        };
        let first = match deadline {
            Some(deadline) => match queue.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) => msg,
                Err(mpsc::RecvTimeoutError::Timeout) => Msg::Nudge { now: true },
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match queue.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        let hold = shared.hold.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut batch, mut flush) = (Vec::new(), false);
        let mut take = |msg: Msg, batch: &mut Vec<Job>| match msg {
            Msg::Job(job) => batch.push(job),
            Msg::Nudge { now } => {
                flush |= now;
            }
        };
        take(first, &mut batch);
        // Take what is waiting. If fewer jobs came than the last batch had,
        // the others are likely on their way (their callers were answered
        // together, a moment ago): wait up to GATHER for them, so batches
        // stay as large as the concurrency instead of alternating small and
        // large. One caller alone never waits (its last batch was 1). With
        // the journal the writer does not wait idle: it runs what it has
        // and takes the others into the same batch as they come (`more`).
        let gather_until = Instant::now() + GATHER;
        let stream = journal.is_some();
        while batch.len() < MAX_BATCH {
            let msg = match queue.try_recv() {
                Ok(msg) => msg,
                Err(_) if stream || batch.is_empty() || batch.len() >= last_batch => break,
                Err(_) => match queue.recv_timeout(gather_until.saturating_duration_since(Instant::now())) {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            take(msg, &mut batch);
        }
        let want = if batch.is_empty() { 0 } else { last_batch };
        last_batch = batch.len();
        drop(hold);
        if !shared.tail().pending.is_empty() {
            dirty_since.get_or_insert_with(Instant::now);
        }
        let checkpoint = journal.as_ref().is_some_and(|j| {
            j.dirty && (j.checkpointed_at.elapsed() >= CHECKPOINT_EVERY || j.since_checkpoint >= CHECKPOINT_BYTES)
        });
        if batch.is_empty() && !flush && !checkpoint {
            // Only "entries are waiting": they go with the next batch, or
            // at the deadline.
            continue;
        }
        shared.queued.fetch_sub(batch.len(), SeqCst);
        shared.batches.fetch_add(1, SeqCst);
        shared.jobs.fetch_add(batch.len() as u64, SeqCst);
        let durable = flush || batch.iter().any(|j| j.durable);
        let mut taken = batch.len();
        let more = || -> Option<Job> {
            while stream && taken < want.min(MAX_BATCH) {
                // A test holding the writer gets its jobs together, in the
                // next batch.
                let _held = match shared.hold.try_lock() {
                    Ok(guard) => guard,
                    Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return None,
                };
                let msg = match queue.try_recv() {
                    Ok(msg) => msg,
                    Err(_) => queue.recv_timeout(gather_until.saturating_duration_since(Instant::now())).ok()?,
                };
                // A nudge asks for a batch, and this is one.
                if let Msg::Job(job) = msg {
                    taken += 1;
                    shared.queued.fetch_sub(1, SeqCst);
                    shared.jobs.fetch_add(1, SeqCst);
                    return Some(job);
                }
            }
            None
        };
        let committed = run_batch(&db, &shared, &mut chain, batch, more, durable, journal.as_mut(), checkpoint);
        last_batch = taken;
        if taken > 0 {
            shared.batch_sizes.0.observe(taken as f64);
        }
        // With the journal every committed batch is on its way to disk.
        let on_disk = committed && (durable || journal.is_some());
        dirty_since = if on_disk && shared.tail().pending.is_empty() {
            None
        } else if committed {
            // Not durable yet, or entries arrived meanwhile: in time.
            Some(dirty_since.unwrap_or_else(Instant::now))
        } else {
            // The batch failed (its entries are back in the tail): retry
            // after a full interval, not at once, or a lasting failure
            // would spin.
            Some(Instant::now())
        };
        if !committed
            && checkpoint
            && let Some(j) = journal.as_mut()
        {
            j.checkpointed_at = Instant::now();
        }
    }
    // Closed: everything left is written, and redb is checkpointed, so the
    // next open has nothing to recover.
    let checkpoint = journal.is_some();
    run_batch(&db, &shared, &mut chain, Vec::new(), || None, true, journal.as_mut(), checkpoint);
    if let Some(mut j) = journal {
        let thread = j.thread.take();
        drop(j);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A job's answer, and whether it waits for the batch to be durable.
pub(super) type Outcome = (Answer, bool, Option<Result<Reply, StoreError>>);

/// Runs one batch in one transaction: `batch`, then the jobs `more` gives
/// (the writer's gathering, overlapped with the work), with the read
/// entries waiting in the tail. Returns whether it committed.
///
/// With the journal, the transaction commits non-durably (a `checkpoint`
/// commits durably instead) and its changes go to the syncer, which
/// answers the durable jobs once they are on disk; without it, a batch
/// with a durable job is a durable commit, answered here.
#[expect(clippy::too_many_arguments, reason = "the writer loop's state, passed apart")]
pub(super) fn run_batch(
    db: &Database,
    shared: &WriterShared,
    chain: &mut Chain,
    batch: Vec<Job>,
    mut more: impl FnMut() -> Option<Job>,
    durable: bool,
    journal: Option<&mut Journaling>,
    checkpoint: bool,
) -> bool {
    let fail_all = |batch: Vec<Outcome>, why: &str| {
        for (reply, _, own) in batch {
            let answer = match own {
                Some(Err(e)) => Err(e),
                _ => Err(StoreError::Backend(format!("the write batch was rolled back: {why}"))),
            };
            reply(answer);
        }
    };
    if let Some(why) = journal.as_ref().and_then(|j| j.health.failure()) {
        let why = format!("writes are stopped since the journal failed ({why}); restart the host to recover");
        fail_all(batch.into_iter().map(|j| (j.reply, j.durable, None)).collect(), &why);
        return false;
    }
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot begin a write transaction: {e}");
            fail_all(batch.into_iter().map(|j| (j.reply, j.durable, None)).collect(), &e.to_string());
            return false;
        }
    };
    // Counted before the batch takes anything from the tail (its jobs do,
    // first thing) and before redb shows it to readers: from then on
    // `sync` knows there is something to wait for. A batch that rolls
    // back leaves the count ahead of what is durable, which only sends
    // `sync` the slow way until a later batch is marked.
    let shown = shared.shown.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let mut durable_commit = if journal.is_some() { checkpoint } else { durable };
    if !durable_commit && let Err(e) = txn.set_durability(Durability::None) {
        tracing::warn!("committing durably: {e}");
        durable_commit = true;
    }
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut failed: Option<String> = None;
    let mut flushed = false;
    // Sized like the last record: growing it is a copy of everything so far.
    let changes = RefCell::new(Changes::with_capacity(journal.as_ref().map_or(0, |j| j.last_record)));
    {
        let tx = Tx {
            txn: &txn,
            shared,
            chain: RefCell::new(&mut *chain),
            changes: journal.is_some().then_some(&changes),
            tables: Tables::default(),
        };
        // The batch's jobs, then those `more` gives while it is open (none
        // once one has failed: they wait for the next batch).
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next().or_else(|| if failed.is_none() { more() } else { None }) {
            if failed.is_some() {
                results.push((job.reply, job.durable, None));
                continue;
            }
            let work = job.work;
            // Reads made before this job was sent come before it (a
            // `changes-since-read` sees the cursor its agent's `get` moved).
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tx.take_pending()?;
                work(&tx)
            }));
            let own = match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(StoreError::Rejected(m))) => Err(StoreError::Rejected(m)),
                Ok(Err(e)) => {
                    failed = Some(e.to_string());
                    Err(e)
                }
                Err(_) => {
                    failed = Some("a store operation panicked".into());
                    Err(StoreError::Backend("a store operation panicked".into()))
                }
            };
            results.push((job.reply, job.durable, Some(own)));
        }
        if failed.is_none()
            && let Err(e) = tx.take_pending()
        {
            failed = Some(e.to_string());
        }
        // The audit indexes: with every batch without the journal; with
        // it, at checkpoints or once enough wait (see IndexRow).
        let flush = {
            let chain = tx.chain.borrow();
            !chain.index.is_empty() && (journal.is_none() || checkpoint || chain.index.len() >= INDEX_FLUSH_AT)
        };
        if failed.is_none() && flush {
            let chain = tx.chain.borrow();
            match flush_index(&tx, &chain.index) {
                Ok(()) => flushed = true,
                Err(e) => failed = Some(e.to_string()),
            }
        }
    }
    let changes = journal.is_some().then(|| changes.into_inner());
    // The journal record's id, and what this state of redb holds of the
    // journal (written in the same transaction, so they always agree).
    let record_id = match (&journal, &changes) {
        (Some(j), Some(c)) if !c.is_empty() => Some(j.next_id),
        _ => None,
    };
    if failed.is_none()
        && let Some(j) = &journal
        && (record_id.is_some() || checkpoint)
    {
        let applied = record_id.unwrap_or(j.next_id - 1);
        let written = txn.open_table(META).map_err(backend).and_then(|mut meta| {
            meta.insert(JOURNAL_APPLIED, applied).map_err(backend)?;
            Ok(())
        });
        if let Err(e) = written {
            failed = Some(e.to_string());
        }
    }
    // The record is sealed before the commit, so a batch too large for one
    // (4 GiB) is rolled back rather than committed unjournaled.
    let mut record = None;
    if failed.is_none()
        && !checkpoint
        && let (Some(j), Some(c), Some(id)) = (&journal, changes, record_id)
    {
        record = c.seal(id, j.epoch);
        if record.is_none() {
            failed = Some("the batch is too large for one journal record (4 GiB)".into());
        }
    }
    if let Some(why) = failed {
        drop(txn);
        roll_back(shared, chain, &why);
        fail_all(results, &why);
        return false;
    }
    // The record goes to the syncer before the redb commit, so that its
    // write and sync overlap that commit (a third of the writer's time for
    // one caller alone); the replies follow once the commit is done.
    let record_len = record.as_ref().map(Vec::len);
    let mut journaled = false;
    if let (Some(j), Some(bytes), Some(id)) = (journal.as_deref(), record, record_id) {
        if j.syncer.send(Sync::Record { id, bytes }).is_err() {
            // Nothing of this batch reached the syncer: a plain roll-back.
            let why = "the journal's syncer has stopped";
            tracing::error!("{why}");
            j.health.fail(why.into());
            roll_back(shared, chain, why);
            fail_all(results, why);
            return false;
        }
        journaled = true;
    }
    if let Err(e) = commit(txn, shared) {
        tracing::error!("a write batch did not commit: {e}");
        let why = match journal.as_deref() {
            Some(j) if journaled => {
                // Its record may reach the disk all the same, and a restart
                // would apply it: nothing may be written on top of a state
                // that is not known.
                let why = format!(
                    "the write batch did not commit ({e}), but its journal record may be on disk already, so a restart may apply it: no further writes are accepted; restart the host, then check whether this write is there"
                );
                j.health.fail(why.clone());
                why
            }
            _ => e,
        };
        roll_back(shared, chain, &why);
        fail_all(results, &why);
        return false;
    }
    // Before anyone is answered: a caller that reads after its commit
    // returns must not get the shared snapshot from before it. Dropping
    // the old one also lets redb reuse the pages it pinned.
    shared.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    drop(shared.snapshot().take());
    chain.committed_hash.clone_from(&chain.last_hash);
    chain.in_txn.clear();
    if flushed {
        chain.index.clear();
    }
    chain.index_committed = chain.index.len();
    let Some(j) = journal else {
        if durable_commit {
            mark_durable(&shared.durable, shown);
        }
        for (reply, _, answer) in results {
            if let Some(answer) = answer {
                reply(answer);
            }
        }
        return true;
    };
    // Non-durable jobs are answered now; durable ones once the syncer has
    // the record on disk (or, after a checkpoint, at once: redb has it).
    // The first reply the syncer delivers marks the batch durable, for
    // `sync` and the streams.
    let durable_mark = shared.durable.clone();
    let mut deferred: Vec<Deliver> = vec![Box::new(move |synced: Result<(), String>| {
        if synced.is_ok() {
            mark_durable(&durable_mark, shown);
        }
    })];
    for (reply, durable, answer) in results {
        match answer {
            Some(answer) if durable => deferred.push(Box::new(move |synced: Result<(), String>| {
                reply(synced.map_err(|why| {
                    StoreError::Backend(format!(
                        "the journal could not be written ({why}); this write may not be durable, and no further writes are accepted: restart the host"
                    ))
                }).and(answer));
            })),
            Some(answer) => reply(answer),
            None => {}
        }
    }
    // This batch's record, or the last one before it: the replies need
    // every record up to it on disk.
    let after = record_id.unwrap_or(j.next_id - 1);
    if record_id.is_some() {
        j.next_id += 1;
    }
    let message = if checkpoint {
        j.checkpointed_at = std::time::Instant::now();
        j.since_checkpoint = 0;
        j.dirty = false;
        // The syncer starts over at the first byte: a new cycle.
        j.epoch = new_epoch();
        Sync::Checkpoint { through: after, deliver: deferred }
    } else {
        if let Some(len) = record_len {
            j.last_record = len;
            j.since_checkpoint += len;
            j.dirty = true;
        }
        Sync::Replies { after, deliver: deferred }
    };
    if j.syncer.send(message).is_err() {
        // Its replies are dropped with the message (their callers get "the
        // writer has stopped"), and nothing more may be written.
        tracing::error!("the journal's syncer has stopped");
        j.health.fail("the journal's syncer has stopped".into());
    }
    true
}

/// Records that batch `shown` (and every one before it) is durable, and
/// wakes whoever waits for more. Batches become durable in order, and the
/// mark only grows.
pub(super) fn mark_durable(durable: &tokio::sync::watch::Sender<u64>, shown: u64) {
    durable.send_if_modified(|d| {
        let newer = shown > *d;
        if newer {
            *d = shown;
        }
        newer
    });
}

/// Commits a batch's transaction. Tests can make it fail first
/// ([`WriterShared::before_commit`]), which drops the transaction: a
/// roll-back, as after a failed commit.
pub(super) fn commit(txn: WriteTransaction, shared: &WriterShared) -> Result<(), String> {
    #[cfg(test)]
    if let Some(hook) = shared.before_commit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
        hook()?;
    }
    #[cfg(not(test))]
    let _ = shared;
    txn.commit().map_err(|e| e.to_string())
}

/// After a rolled-back batch, gives its audit entries back to the tail, in
/// front of what arrived since, so the chain stays gap-free: read entries
/// as they were, and each job's own entry marked [`Decision::Fault`], since
/// nothing it did was written. The next batch writes them.
pub(super) fn roll_back(shared: &WriterShared, chain: &mut Chain, why: &str) {
    use crate::audit::Decision;
    chain.last_hash.clone_from(&chain.committed_hash);
    chain.index.truncate(chain.index_committed);
    let mut back: Vec<Pending> = chain
        .in_txn
        .drain(..)
        .map(|w| match w {
            Written::Read(p) => p,
            Written::Own(mut entry) => {
                entry.decision = Decision::Fault;
                entry.outcome = format!("nothing was written: the write batch was rolled back ({why})");
                Pending { entry, cursor: None }
            }
        })
        .collect();
    let mut tail = shared.tail();
    back.append(&mut tail.pending);
    tail.pending = back;
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has drained it and made
        // everything durable.
        if let Some(mut w) = self.writer.take() {
            drop(w.jobs.take());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if matches!(self.db, Db::ReadWrite(_)) {
            let _ = std::fs::remove_file(pid_path(&self.path));
        }
    }
}

impl RedbStore {
    /// Holds the writer: jobs queue up until the hold is dropped, then run
    /// as one batch. A test hook, to make a group commit's content exact.
    #[cfg(test)]
    pub(super) fn hold_writes(&self) -> Option<WriteHold<'_>> {
        let w = self.writer.as_ref()?;
        Some(WriteHold(w.shared.hold.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }

    /// Jobs sent to the writer and not yet taken into a batch.
    #[cfg(test)]
    pub(super) fn queued_writes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.shared.queued.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The writer's counters.
    #[cfg(test)]
    pub(super) fn writer_stats(&self) -> WriterStats {
        use std::sync::atomic::Ordering::SeqCst;
        self.writer.as_ref().map_or_else(WriterStats::default, |w| WriterStats {
            batches: w.shared.batches.load(SeqCst),
            jobs: w.shared.jobs.load(SeqCst),
        })
    }

    pub(super) fn write(&self) -> Result<WriteTransaction, StoreError> {
        match &self.db {
            Db::ReadWrite(db) => db.begin_write().map_err(backend),
            Db::ReadOnly(_) => Err(StoreError::ReadOnly),
        }
    }

    /// Runs `work` on the writer, in a (shared) write transaction, and waits
    /// for its answer: after the batch's durable commit when `durable`.
    pub(super) fn run<T: Send + 'static>(
        &self,
        durable: bool,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(durable, work, move |result| {
            let _ = reply.send(result);
        });
        answer.recv().map_err(|_| StoreError::Backend("the writer has stopped".into()))?
    }

    /// Sends `work` to the writer; `done` gets its answer (on the writer's
    /// or the syncer's thread), after the batch's durable commit when
    /// `durable`. Never waits.
    pub(super) fn submit<T: Send + 'static>(
        &self,
        durable: bool,
        work: impl FnOnce(&Tx<'_>) -> Result<T, StoreError> + Send + 'static,
        done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
    ) {
        let stopped = || StoreError::Backend("the writer has stopped".into());
        let Some((writer, jobs)) = self.writer.as_ref().and_then(|w| Some((w, w.jobs.as_ref()?))) else {
            return done(Err(StoreError::ReadOnly));
        };
        let work = Box::new(move |tx: &Tx<'_>| work(tx).map(|v| Box::new(v) as Reply));
        let reply: Answer = Box::new(move |answer: Result<Reply, StoreError>| {
            done(answer.and_then(|value| {
                value
                    .downcast::<T>()
                    .map(|v| *v)
                    .map_err(|_| StoreError::Backend("the writer answered with the wrong type".into()))
            }))
        });
        writer.shared.queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Err(mpsc::SendError(Msg::Job(job))) = jobs.send(Msg::Job(Job { work, durable, reply })) {
            writer.shared.queued.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            (job.reply)(Err(stopped()));
        }
    }

    /// Whether everything readers may see, and every audit entry numbered,
    /// is durable already: nothing waits in the tail, and the last batch
    /// shown to readers is marked durable.
    pub(super) fn all_durable(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.shared.all_durable())
    }

    /// Waits until every read entry numbered so far is written (visible to
    /// this process's reads; durable within [`READ_AUDIT_FLUSH`]). Audit
    /// queries call this first, so a caller always reads its own entries.
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        match &self.writer {
            Some(w) if !w.shared.tail().pending.is_empty() => self.run(false, |_| Ok(())),
            _ => Ok(()),
        }
    }
}

//! The write-ahead journal in front of redb: what makes a commit durable.
//!
//! A durable redb commit writes every B-tree page the transaction touched,
//! scattered over the file, before one `fdatasync`; a Concord commit touches
//! eight trees, so that is about 1.2 ms on this project's reference disk
//! (BENCHMARKS.md). The journal turns it into one sequential write:
//!
//! - The writer records every table change a batch made, in order, as one
//!   journal record, and hands it to a syncer thread, which appends the
//!   records to this file and `fdatasync`s them, many batches per sync
//!   when they queue up. Meanwhile the writer commits the batch to redb
//!   *non-durably* (redb keeps the pages in memory), then hands the
//!   syncer the batch's replies. A reply goes out once its record is on
//!   disk *and* its batch is committed in redb: acknowledged still means
//!   on disk, and a caller answered can read what it wrote. Should that
//!   redb commit fail after the record was handed over, the record may
//!   reach the disk anyway, so the outcome is unknown until a restart
//!   applies (or does not find) it: the writer stops accepting writes and
//!   tells the batch's callers exactly that.
//! - Every second or so the writer *checkpoints*: it commits a batch to
//!   redb durably, which carries every batch before it, and the journal
//!   starts over at its first byte.
//! - Every batch also records, in redb's `meta` table, the id of its record
//!   (`journal_applied`). Whatever state of redb survives a crash (the last
//!   checkpoint), that value says which records it already holds, so
//!   opening the store applies exactly the records after it
//!   ([`Journal::recover`]).
//!
//! The file is overwritten in place rather than appended to: an overwrite
//! of blocks already allocated needs no file-system metadata in its sync
//! (measured here: a 4 KiB append + `fdatasync` 400 µs, an overwrite
//! 170 µs). A record that does not fit grows the file by [`GROW`] first.
//!
//! Record layout, little-endian: `b"CJ2"` + byte 0, payload length (u32),
//! id (u64), epoch (u64), CRC-32 of id, epoch and payload (u32), then the
//! payload: a
//! sequence of operations, `1 table key-len key value-len value` for an
//! insert and `2 table key-len key` for a removal (lengths u32). A record
//! is valid if it is whole, its checksum holds, its id follows the one
//! before it and its epoch is the first record's; reading stops at the
//! first that is not (a torn last write, or older records left behind by a
//! restart at the first byte). The epoch is a random number drawn at every
//! restart at the first byte (each checkpoint and each open): ids alone
//! would not tell a new record from an old one past a torn write, which was
//! never applied, and so can carry a higher id than the records that
//! overwrite its cycle.
//!
//! Not used when the store is shared with reading processes
//! ([`super::Sharing::SharedReads`]): redb refuses non-durable commits in
//! that mode, since another process could not see them, so each batch is
//! a durable redb commit there.

use crate::kb::store::StoreError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

const MAGIC: [u8; 4] = *b"CJ2\0";
const HEADER: usize = 28;
/// How much the file grows at a time (zeros written ahead, so that later
/// overwrites need no metadata).
pub(super) const GROW: u64 = 4 << 20;
/// The file's first size.
const INITIAL: u64 = 1 << 20;

const INSERT: u8 = 1;
const REMOVE: u8 = 2;

/// The file beside the store that holds its journal.
pub(super) fn journal_path(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// One batch's table changes, as the writer records them: the record's
/// payload, after room for its header (filled in by [`Changes::seal`], so
/// sealing copies nothing).
pub(super) struct Changes {
    bytes: Vec<u8>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Changes {
    /// Room for `payload` bytes without growing.
    pub(super) fn with_capacity(payload: usize) -> Self {
        let mut bytes = Vec::with_capacity(HEADER + payload);
        bytes.resize(HEADER, 0);
        Self { bytes }
    }

    pub(super) fn insert(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.bytes.push(INSERT);
        self.bytes.push(table);
        put_slice(&mut self.bytes, key);
        put_slice(&mut self.bytes, value);
    }

    pub(super) fn remove(&mut self, table: u8, key: &[u8]) {
        self.bytes.push(REMOVE);
        self.bytes.push(table);
        put_slice(&mut self.bytes, key);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.len() == HEADER
    }

    /// The record for these changes under `id`, in the cycle `epoch`.
    /// `None` if the payload is too large for a record (4 GiB).
    pub(super) fn seal(mut self, id: u64, epoch: u64) -> Option<Vec<u8>> {
        let (header, payload) = self.bytes.split_at_mut(HEADER);
        let len = u32::try_from(payload.len()).ok()?;
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..16].copy_from_slice(&id.to_le_bytes());
        header[16..24].copy_from_slice(&epoch.to_le_bytes());
        header[24..28].copy_from_slice(&checksum(id, epoch, payload).to_le_bytes());
        Some(self.bytes)
    }
}

fn put_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn checksum(id: u64, epoch: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&epoch.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// One table change read back from a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op<'a> {
    Insert { table: u8, key: &'a [u8], value: &'a [u8] },
    Remove { table: u8, key: &'a [u8] },
}

/// A valid record read back from the file.
#[derive(Debug)]
pub(super) struct Record {
    pub id: u64,
    /// The cycle (since a checkpoint or an open) the record was written in.
    epoch: u64,
    payload: Vec<u8>,
}

impl Record {
    /// Its operations, in the order the batch made them.
    pub(super) fn ops(&self) -> Result<Vec<Op<'_>>, String> {
        let mut ops = Vec::new();
        let mut rest = self.payload.as_slice();
        while let Some((&kind, tail)) = rest.split_first() {
            let (&table, tail) = tail.split_first().ok_or("an operation without a table")?;
            let (key, tail) = take_slice(tail)?;
            rest = match kind {
                INSERT => {
                    let (value, tail) = take_slice(tail)?;
                    ops.push(Op::Insert { table, key, value });
                    tail
                }
                REMOVE => {
                    ops.push(Op::Remove { table, key });
                    tail
                }
                other => return Err(format!("an operation of unknown kind {other}")),
            };
        }
        Ok(ops)
    }
}

fn take_slice(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or("a truncated length")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("a truncated key or value".into());
    }
    Ok(rest.split_at(len))
}

/// Reads the valid records from the start of `data` (see the module docs).
fn read_records(data: &[u8]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + HEADER) {
        if header[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let id = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let epoch = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        let sum = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
        let Some(payload) = data.get(at + HEADER..at + HEADER + len) else { break };
        if checksum(id, epoch, payload) != sum || out.last().is_some_and(|r| r.id + 1 != id || r.epoch != epoch) {
            break;
        }
        out.push(Record { id, epoch, payload: payload.to_vec() });
        at += HEADER + len;
    }
    out
}

/// The journal file, on the syncer's side.
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    offset: u64,
    /// Bytes allocated (written with zeros or records).
    allocated: u64,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("cannot {what} the journal {}: {e}", path.display()))
}

impl Journal {
    /// Opens (creating) the store's journal and returns the records that
    /// `applied` (redb's `journal_applied`) does not yet cover, in order.
    ///
    /// Refuses a journal whose records skip over ids after `applied`: the
    /// batches in between would be lost.
    pub(super) fn recover(store: &Path, applied: u64) -> Result<(Self, Vec<Record>), super::OpenError> {
        let path = journal_path(store);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "open", e))?;
        let data = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
        let pending = unapplied(&path, read_records(&data), applied)?;
        let mut journal = Journal { file, path, offset: 0, allocated: data.len() as u64 };
        if journal.allocated < INITIAL {
            journal.grow_to(INITIAL)?;
        }
        Ok((journal, pending))
    }

    /// Writes zeros up to `size`, and syncs them (and the new length).
    fn grow_to(&mut self, size: u64) -> Result<(), StoreError> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        let mut at = self.allocated;
        while at < size {
            let n = CHUNK.min((size - at) as usize);
            self.file.write_all_at(&zeros[..n], at).map_err(|e| io_error(&self.path, "grow", e))?;
            at += n as u64;
        }
        self.file.sync_all().map_err(|e| io_error(&self.path, "sync", e))?;
        self.allocated = at;
        Ok(())
    }

    /// Writes records at the current position and syncs them.
    fn write(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let len: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self.offset + len > self.allocated {
            // Grown ahead of time, so that the write below overwrites
            // allocated blocks; the zeros also end the valid records.
            let size = (self.offset + len).div_ceil(GROW) * GROW;
            self.grow_to(size)?;
        }
        #[cfg(test)]
        if failing::is(&self.path) {
            return Err(io_error(&self.path, "sync", std::io::Error::other("injected by a test")));
        }
        for record in records {
            self.file.write_all_at(record, self.offset).map_err(|e| io_error(&self.path, "write", e))?;
            self.offset += record.len() as u64;
        }
        self.file.sync_data().map_err(|e| io_error(&self.path, "sync", e))
    }
}

/// The records of the store's journal that `applied` does not cover, read
/// without creating or opening the file for writing (read-only opens, and
/// opens that do not use the journal, only recover or count them).
pub(super) fn read_unapplied(store: &Path, applied: u64) -> Result<Vec<Record>, super::OpenError> {
    let path = journal_path(store);
    match std::fs::read(&path) {
        Ok(data) => unapplied(&path, read_records(&data), applied),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(&path, "read", e).into()),
    }
}

fn unapplied(path: &Path, records: Vec<Record>, applied: u64) -> Result<Vec<Record>, super::OpenError> {
    let pending: Vec<Record> = records.into_iter().filter(|r| r.id > applied).collect();
    match pending.first() {
        Some(first) if first.id != applied + 1 => Err(super::OpenError::Cannot {
            path: path.to_path_buf(),
            reason: format!(
                "the journal's first unapplied batch is {}, but the store holds batches up to {applied}: batches in between are missing, so the journal is damaged. Restore the store and its journal from a backup",
                first.id
            ),
        }),
        _ => Ok(pending),
    }
}

/// A reply the syncer sends once what came before it is durable.
pub(super) type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What the writer sends the syncer, in batch order.
pub(super) enum Sync {
    /// A batch's record, sent before the batch commits in redb, so that
    /// writing and syncing it overlaps that commit.
    Record { id: u64, bytes: Vec<u8> },
    /// The replies of a batch now committed in redb, each to be delivered
    /// once every record up to `after` is durable. Never before the commit:
    /// a caller answered must be able to read what it wrote.
    Replies { after: u64, deliver: Vec<Deliver> },
    /// The batch was a checkpoint: redb holds everything through record
    /// `through` durably, so the records still queued need not be written,
    /// and the journal starts over at its first byte.
    Checkpoint { through: u64, deliver: Vec<Deliver> },
}

/// The journal's state shared with the writer.
pub(super) struct Health {
    /// Set once a write or sync failed: nothing may be written after it.
    failed: Mutex<Option<String>>,
    /// How long each write-and-sync of records took.
    pub(super) sync_latency: crate::metrics::Histogram,
}

impl Default for Health {
    fn default() -> Self {
        Self { failed: Mutex::default(), sync_latency: crate::metrics::Histogram::new(crate::metrics::LATENCY_BOUNDS) }
    }
}

impl Health {
    pub(super) fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(super) fn fail(&self, why: String) {
        self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(why);
    }
}

/// The syncer's loop: takes every message waiting, writes their records
/// with one sync, then delivers the replies that waited for them. Replies
/// whose records are durable already (synced in an earlier round, or held
/// by a checkpoint) go first, without waiting for this round's sync.
/// `synced` is the last record id durable at the start (what redb holds).
///
/// A failed write or sync stops the journal for good (see [`Health`]):
/// after a failed `fdatasync` the kernel may have dropped the pages, so
/// retrying could acknowledge data that is not on disk.
pub(super) fn syncer_loop(mut journal: Journal, queue: mpsc::Receiver<Sync>, health: Arc<Health>, mut synced: u64) {
    while let Ok(first) = queue.recv() {
        let mut records = Vec::new();
        // The id of the last record in `records`.
        let mut last = synced;
        // Replies durable already, and replies that wait for `records`
        // (with the record each waits for).
        let mut ready: Vec<Deliver> = Vec::new();
        let mut waiting: Vec<(u64, Deliver)> = Vec::new();
        let mut take = |msg: Sync, records: &mut Vec<Vec<u8>>, journal: &mut Journal| match msg {
            Sync::Record { id, bytes } => {
                records.push(bytes);
                last = id;
            }
            Sync::Replies { after, deliver } if after <= synced => ready.extend(deliver),
            Sync::Replies { after, deliver } => waiting.extend(deliver.into_iter().map(|d| (after, d))),
            Sync::Checkpoint { through, deliver } => {
                // redb holds everything so far durably.
                records.clear();
                synced = synced.max(through);
                last = last.max(through);
                ready.extend(waiting.drain(..).map(|(_, d)| d));
                ready.extend(deliver);
                journal.offset = 0;
            }
        };
        take(first, &mut records, &mut journal);
        while let Ok(msg) = queue.try_recv() {
            take(msg, &mut records, &mut journal);
        }
        for deliver in ready {
            deliver(Ok(()));
        }
        let outcome = match health.failure() {
            Some(why) => Err(why),
            None if records.is_empty() => Ok(()),
            None => {
                let started = std::time::Instant::now();
                let written = journal.write(&records);
                health.sync_latency.observe(started.elapsed().as_secs_f64());
                written
            }
            .map_err(|e| {
                let why = e.to_string();
                tracing::error!("{why}; no further writes are accepted (restart to recover what was acknowledged)");
                health.fail(why.clone());
                why
            }),
        };
        if outcome.is_ok() {
            synced = synced.max(last);
        }
        for (after, deliver) in waiting {
            // Every record is sent before the replies that wait for it, so
            // `after` is synced by now unless the journal failed; never
            // acknowledge a record that is not on disk, whatever happened.
            let answer = match &outcome {
                Ok(()) if after > synced => Err(format!("journal record {after} was never written")),
                other => other.clone(),
            };
            deliver(answer);
        }
    }
}

/// Tests: journals whose writes fail (by path, since tests run side by
/// side), as a disk that fails a write or an `fdatasync` would.
#[cfg(test)]
pub(super) mod failing {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(in crate::kb) fn set(path: &Path, fail: bool) {
        let mut paths = PATHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        paths.retain(|p| p != path);
        if fail {
            paths.push(path.to_path_buf());
        }
    }

    pub(super) fn is(path: &Path) -> bool {
        PATHS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|p| p == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, ops: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        record_in(1, id, ops)
    }

    fn record_in(epoch: u64, id: u64, ops: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
        let mut c = Changes::default();
        for (k, v) in ops {
            match v {
                Some(v) => c.insert(3, k, v),
                None => c.remove(3, k),
            }
        }
        c.seal(id, epoch).expect("small")
    }

    #[test]
    fn records_read_back_in_order_and_stop_at_damage() {
        let mut data = Vec::new();
        data.extend(record(7, &[(b"a", Some(b"1")), (b"b", None)]));
        data.extend(record(8, &[(b"c", Some(b""))]));
        let third = record(9, &[(b"d", Some(b"4"))]);
        // Torn: only part of the third record reached the disk.
        data.extend(&third[..third.len() - 1]);
        let records = read_records(&data);
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(
            records[0].ops().unwrap(),
            [Op::Insert { table: 3, key: b"a", value: b"1" }, Op::Remove { table: 3, key: b"b" }]
        );

        // A flipped bit fails the checksum; an id out of sequence is an
        // older record left behind, not a continuation.
        let mut flipped = record(7, &[(b"a", Some(b"1"))]);
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(read_records(&flipped).is_empty());
        let mut stale = record(7, &[]);
        stale.extend(record(3, &[(b"x", Some(b"y"))]));
        assert_eq!(read_records(&stale).len(), 1);
    }

    /// Power lost while records 4 and 5 were written: 4 torn, 5 whole.
    /// Recovery applies up to 3, and the next cycle writes a new 4 that
    /// happens to end where the old 5 begins. The old 5 has the next id
    /// and a valid checksum, but it was never applied and rests on a state
    /// that no longer exists: its epoch (the old cycle's) stops the read.
    #[test]
    fn a_record_left_from_an_earlier_cycle_is_not_read_even_with_the_next_id() {
        let mut data = record_in(7, 4, &[(b"new", Some(b"4"))]);
        data.extend(record_in(3, 5, &[(b"old", Some(b"5"))]));
        let records = read_records(&data);
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), [4]);
    }

    /// The syncer's reply rule, in one round (every message queued before
    /// it starts): replies whose record is durable already go out before
    /// the write, replies waiting for a record only after it is on disk, a
    /// record never sent is never acknowledged, and a checkpoint releases
    /// what waits without writing it.
    #[test]
    fn replies_wait_for_their_record_and_no_longer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("kb.redb");
        let path = journal_path(&store);
        type Seen = Vec<(&'static str, Result<(), String>, usize)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        // Each reply notes how many records were on disk when it went out.
        let reply = |label: &'static str| -> Deliver {
            let (path, seen) = (path.clone(), seen.clone());
            Box::new(move |result| {
                let on_disk = read_records(&std::fs::read(&path).expect("journal")).len();
                seen.lock().expect("seen").push((label, result, on_disk));
            })
        };
        let run = |messages: Vec<Sync>, synced: u64| {
            let (journal, _) = Journal::recover(&store, synced).expect("journal");
            let (queue, messages_in) = mpsc::channel();
            for m in messages {
                queue.send(m).expect("queued");
            }
            drop(queue);
            syncer_loop(journal, messages_in, Arc::new(Health::default()), synced);
            std::mem::take(&mut *seen.lock().expect("seen"))
        };

        let first = run(
            vec![
                Sync::Record { id: 1, bytes: record(1, &[(b"a", Some(b"1"))]) },
                Sync::Replies { after: 1, deliver: vec![reply("waits for 1")] },
                Sync::Replies { after: 0, deliver: vec![reply("durable already")] },
                Sync::Replies { after: 7, deliver: vec![reply("never sent")] },
            ],
            0,
        );
        assert_eq!(first[0], ("durable already", Ok(()), 0));
        assert_eq!(first[1], ("waits for 1", Ok(()), 1));
        assert_eq!(first[2].0, "never sent");
        assert!(first[2].1.as_ref().is_err_and(|e| e.contains("record 7 was never written")), "{first:?}");

        let checkpoint = run(
            vec![
                Sync::Record { id: 2, bytes: record(2, &[(b"b", Some(b"2"))]) },
                Sync::Replies { after: 2, deliver: vec![reply("waits for 2")] },
                Sync::Checkpoint { through: 2, deliver: vec![reply("checkpoint")] },
            ],
            1,
        );
        let labels: Vec<_> = checkpoint.iter().map(|(l, r, _)| (*l, r.clone())).collect();
        assert_eq!(labels, [("waits for 2", Ok(())), ("checkpoint", Ok(()))]);
        // Record 2 was not written: redb holds it.
        assert_eq!(read_records(&std::fs::read(&path).expect("journal")).iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_gap_after_what_redb_holds_is_refused() {
        let mut data = record(4, &[(b"a", Some(b"1"))]);
        data.extend(record(5, &[(b"a", Some(b"2"))]));
        let path = Path::new("kb.redb.journal");
        assert_eq!(unapplied(path, read_records(&data), 4).unwrap().len(), 1);
        assert_eq!(unapplied(path, read_records(&data), 9).unwrap().len(), 0);
        let err = unapplied(path, read_records(&data), 2).unwrap_err().to_string();
        assert!(err.contains("batches in between are missing"), "{err}");
    }
}

//! Reading a store file for damage, at three depths.
//!
//! - Every open of a read-only store (each `concord` read command) reads
//!   each table's first and last records: the root and the two edge paths of
//!   every B-tree, a few pages. redb itself has already refused a truncated
//!   file (its length no longer matches the layout in its header) and one
//!   whose header is damaged.
//! - A host's open (for writing) verifies every page's checksum first, as
//!   `concord check` does, so that nothing is written on top of a damaged
//!   tree (a file not closed cleanly is repaired by redb instead, which
//!   verifies them itself). With `shared_reads`, where another process may
//!   be writing the file, it reads every record instead.
//! - `concord check` ([`RedbStore::check`]) runs redb's integrity check,
//!   which verifies the checksum of every page, and then reads every record
//!   and decodes the events, entities, audit entries and audit index runs.
//!
//! redb trusts a file it closed cleanly: a page damaged since (a wrong page
//! type, say) can make a read panic inside redb, a walk included (its
//! documented limit; see `Builder::set_check_integrity_on_open`). Its
//! integrity check reports such damage as an error instead, but it commits
//! and may repair, so `check` runs it on [`ReadThrough`]: the file read
//! through, every write kept in memory. Only once every checksum holds does
//! it walk the records.
//!
//! Opening read-only used to read every record too: 1.5 s for a store of a
//! million events (544 MiB), at every `concord get` (BENCHMARKS.md).

use super::OpenError;
use super::{
    ACTION_KEYS, ACTIONS, AUDIT, AUDIT_BY_AGENT, AUDIT_BY_AGENT_ENTITY, AUDIT_BY_ENTITY, AUDIT_BY_INVOCATION, CURSORS,
    ENTITIES, EVENTS, HISTORY, HOST_STATE, LEASES, META, OUTBOX, PINS, REQUEST_KEYS, REQUEST_KEYS_BY_TIME, REQUESTS,
    RedbStore, Run,
};
use crate::audit::AuditEntry;
use crate::kb::model::{Entity, Event};
use redb::{Key, ReadTransaction, ReadableTable, TableDefinition, TableHandle};
use std::path::Path;

/// At most this many problems are listed per table; the rest are counted.
const LISTED: usize = 10;

/// What [`RedbStore::check`] found in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    pub table: String,
    /// The records read (up to the first unreadable page, if any).
    pub records: u64,
    /// What is wrong, the first [`LISTED`] things.
    pub problems: Vec<String>,
    /// How many more problems there were.
    pub unlisted: u64,
}

/// What [`RedbStore::check`] found, table by table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub tables: Vec<TableCheck>,
}

impl TableCheck {
    fn note(&mut self, problem: String) {
        if self.problems.len() < LISTED {
            self.problems.push(problem);
        } else {
            self.unlisted += 1;
        }
    }
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(|t| t.problems.is_empty())
    }

    /// Records read in all.
    pub fn records(&self) -> u64 {
        self.tables.iter().map(|t| t.records).sum()
    }
}

/// How a table's values are checked beyond being readable.
#[derive(Clone, Copy)]
enum Decode {
    Nothing,
    Event,
    Entity,
    AuditEntry,
    /// An audit index's runs of seqs.
    Run,
}

/// Does something with each table of the current layout.
trait Visit {
    fn visit<K: Key + 'static, V: redb::Value + 'static>(&mut self, def: TableDefinition<K, V>, decode: Decode);
}

/// Every table of the current layout, once each.
fn every_table(v: &mut impl Visit) {
    v.visit(EVENTS, Decode::Event);
    v.visit(ENTITIES, Decode::Entity);
    v.visit(HISTORY, Decode::Nothing);
    v.visit(AUDIT, Decode::AuditEntry);
    v.visit(AUDIT_BY_AGENT, Decode::Run);
    v.visit(AUDIT_BY_ENTITY, Decode::Run);
    v.visit(AUDIT_BY_INVOCATION, Decode::Run);
    v.visit(AUDIT_BY_AGENT_ENTITY, Decode::Run);
    v.visit(META, Decode::Nothing);
    v.visit(PINS, Decode::Nothing);
    v.visit(LEASES, Decode::Nothing);
    v.visit(ACTIONS, Decode::Nothing);
    v.visit(OUTBOX, Decode::Nothing);
    v.visit(ACTION_KEYS, Decode::Nothing);
    v.visit(REQUESTS, Decode::Nothing);
    v.visit(CURSORS, Decode::Nothing);
    v.visit(REQUEST_KEYS, Decode::Nothing);
    v.visit(REQUEST_KEYS_BY_TIME, Decode::Nothing);
    v.visit(HOST_STATE, Decode::Nothing);
}

/// Reads every record of every table; with `decode`, also decodes them.
/// With `stop`, skips the tables after the first one with a problem.
struct Walk<'t> {
    txn: &'t ReadTransaction,
    decode: bool,
    stop: bool,
    tables: Vec<TableCheck>,
}

impl Walk<'_> {
    fn damaged(&self) -> bool {
        self.tables.iter().any(|t| !t.problems.is_empty())
    }
}

impl Visit for Walk<'_> {
    fn visit<K: Key + 'static, V: redb::Value + 'static>(&mut self, def: TableDefinition<K, V>, decode: Decode) {
        if self.stop && self.damaged() {
            return;
        }
        let mut check = TableCheck { table: def.name().to_string(), records: 0, problems: vec![], unlisted: 0 };
        let table = self.txn.open_table(def).map_err(redb::Error::from);
        let iter = match table.as_ref().map_err(ToString::to_string).and_then(|t| t.iter().map_err(|e| e.to_string())) {
            Ok(iter) => iter,
            Err(e) => {
                check.note(format!("cannot be read: {e}"));
                self.tables.push(check);
                return;
            }
        };
        for item in iter {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    let after = check.records;
                    check.note(format!("unreadable after record {after}: {e}"));
                    break;
                }
            };
            check.records += 1;
            let problem = match (self.decode, decode) {
                (false, _) | (_, Decode::Nothing) => None,
                (true, d) => decoded(d, def.name(), K::as_bytes(&k.value()).as_ref(), V::as_bytes(&v.value()).as_ref()),
            };
            if let Some(problem) = problem {
                let at = check.records;
                check.note(format!("record {at}: {problem}"));
            }
        }
        self.tables.push(check);
    }
}

/// What is wrong with one record of `table`, if anything. `key` is the
/// record's key as redb stores it (for the entities table, the key text).
fn decoded(decode: Decode, table: &str, key: &[u8], value: &[u8]) -> Option<String> {
    fn json<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
        serde_json::from_slice(value).map_err(|e| format!("does not decode ({e})"))
    }
    let result = match decode {
        Decode::Nothing => Ok(()),
        Decode::Event => json::<Event>(value).map(drop),
        Decode::AuditEntry => json::<AuditEntry>(value).map(drop),
        Decode::Run => Run::decode(value, table).map(drop).map_err(|e| e.to_string()),
        Decode::Entity => json::<Entity>(value).and_then(|e| match e.entity.key() {
            k if k.as_bytes() == key => Ok(()),
            k => Err(format!("holds {k} under the key {}", String::from_utf8_lossy(key))),
        }),
    };
    result.err()
}

/// Reads each table's first and last records.
struct Ends<'t> {
    txn: &'t ReadTransaction,
    first_problem: Option<String>,
}

impl Visit for Ends<'_> {
    fn visit<K: Key + 'static, V: redb::Value + 'static>(&mut self, def: TableDefinition<K, V>, _: Decode) {
        if self.first_problem.is_some() {
            return;
        }
        let read = || -> Result<(), redb::Error> {
            let table = self.txn.open_table(def)?;
            let mut iter = table.iter()?;
            iter.next().transpose()?;
            iter.next_back().transpose()?;
            Ok(())
        };
        if let Err(e) = read() {
            self.first_problem = Some(format!("table {}: {e}", def.name()));
        }
    }
}

/// Verifies the checksum of every page of the file at `path` (redb's
/// integrity check, on a [`ReadThrough`] view, so the file never changes):
/// `Some(problem)` if one does not hold. The file must be closed cleanly,
/// and held (a read-only redb handle) so that no host writes it meanwhile.
fn verify_pages(path: &Path) -> Result<Option<String>, OpenError> {
    let unreadable = |e: std::io::Error| OpenError::Cannot { path: path.to_path_buf(), reason: e.to_string() };
    let pages = ReadThrough::new(std::fs::File::open(path).map_err(unreadable)?).map_err(unreadable)?;
    let verified = redb::Database::builder().create_with_backend(pages).and_then(|mut db| db.check_integrity());
    Ok(match verified {
        Ok(true) => None,
        Ok(false) => Some("redb's integrity check failed: a page does not match its checksum".to_string()),
        Err(e) => Some(format!("redb's integrity check failed: {e}")),
    })
}

/// The error for a damaged file.
fn damaged_at(path: &Path, e: &dyn std::fmt::Display) -> OpenError {
    OpenError::Cannot {
        path: path.to_path_buf(),
        reason: format!(
            "the file is damaged ({e}). Restore it from a backup, or move it away to start empty (nothing was changed)"
        ),
    }
}

impl RedbStore {
    /// Verifies every page's checksum, then reads every record of the store
    /// once and decodes the events, entities, audit entries and audit index
    /// runs (`concord check`). Changes nothing. Needs the host stopped.
    pub fn check(path: &Path) -> Result<CheckReport, OpenError> {
        // Exclusive, whatever `shared_reads` says: a host writing meanwhile
        // would look like damage. The handle keeps a host from starting.
        let store = Self::open_read_only_unchecked(path, super::Sharing::Exclusive).map_err(|e| match e {
            OpenError::InUse { path, pid } => OpenError::Cannot {
                path,
                reason: format!(
                    "a host is using it{}; stop that `concord run` first: `concord check` reads a file no host is writing",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                ),
            },
            e => e,
        })?;
        if let Some(problem) = verify_pages(path)? {
            // Walking a damaged tree could panic: the page check is the report.
            let pages = TableCheck { table: "pages".into(), records: 0, problems: vec![problem], unlisted: 0 };
            return Ok(CheckReport { tables: vec![pages] });
        }
        let txn = store.read()?;
        let mut walk = Walk { txn: &txn, decode: true, stop: false, tables: Vec::new() };
        every_table(&mut walk);
        Ok(CheckReport { tables: walk.tables })
    }

    /// For a host's open, before it opens the file for writing: verifies
    /// every page's checksum if the file was closed cleanly and nothing else
    /// has it open. Returns whether it did; if not, redb's repair at the
    /// open verifies them itself (a file not closed cleanly), or the open
    /// reports why it cannot open the file.
    pub(super) fn verify_before_writing(path: &Path) -> Result<bool, OpenError> {
        if !path.exists() {
            return Ok(false);
        }
        // Held while the check runs: no host can start writing meanwhile.
        let Ok(held) = redb::Database::builder().open_read_only(path) else { return Ok(false) };
        let problem = verify_pages(path)?;
        drop(held);
        match problem {
            Some(problem) => Err(damaged_at(path, &problem)),
            None => Ok(true),
        }
    }

    /// For a host's open: every record readable, or the error that names
    /// the first problem.
    pub(super) fn read_every_record(&self) -> Result<(), OpenError> {
        let txn = self.read().map_err(|e| self.damaged(&e))?;
        let mut walk = Walk { txn: &txn, decode: false, stop: true, tables: Vec::new() };
        every_table(&mut walk);
        match walk.tables.iter().find_map(|t| t.problems.first().map(|p| format!("table {}: {p}", t.table))) {
            Some(problem) => Err(self.damaged(&problem)),
            None => Ok(()),
        }
    }

    /// For a read-only open: each table's first and last records readable.
    pub(super) fn read_table_ends(&self) -> Result<(), OpenError> {
        let txn = self.read().map_err(|e| self.damaged(&e))?;
        let mut ends = Ends { txn: &txn, first_problem: None };
        every_table(&mut ends);
        match ends.first_problem {
            Some(problem) => Err(self.damaged(&format!("{problem}; `concord check` lists every damaged table"))),
            None => Ok(()),
        }
    }

    /// The error for a damaged file.
    pub(super) fn damaged(&self, e: &dyn std::fmt::Display) -> OpenError {
        damaged_at(&self.path, e)
    }
}

/// A store file as redb's integrity check sees it: reads come from the file
/// (or from what was written), writes stay in memory, in blocks, so the file
/// never changes.
#[derive(Debug)]
struct ReadThrough {
    file: std::fs::File,
    state: std::sync::Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// File bytes at or past this offset read as zeros (the file was cut
    /// there, then maybe grown again).
    file_until: u64,
    /// Blocks written, whole.
    blocks: std::collections::HashMap<u64, Box<[u8]>>,
}

const BLOCK: u64 = 4096;

impl ReadThrough {
    fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let overlay = Overlay { len, file_until: len, blocks: Default::default() };
        Ok(Self { file, state: std::sync::Mutex::new(overlay) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Block `n` as it stands, from the overlay or the file.
    fn block(&self, overlay: &Overlay, n: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(b) = overlay.blocks.get(&n) {
            out.copy_from_slice(b);
            return Ok(());
        }
        out.fill(0);
        let start = n * BLOCK;
        let end = (start + BLOCK).min(overlay.file_until);
        if end > start {
            self.file.read_exact_at(&mut out[..(end - start) as usize], start)?;
        }
        Ok(())
    }
}

impl redb::StorageBackend for ReadThrough {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.state().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let overlay = self.state();
        if offset + out.len() as u64 > overlay.len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        let (first, last) = (offset / BLOCK, (offset + out.len() as u64).div_ceil(BLOCK));
        if (first..last).all(|n| !overlay.blocks.contains_key(&n)) {
            // Nothing written there (the check writes little): one read.
            use std::os::unix::fs::FileExt;
            let from_file = overlay.file_until.saturating_sub(offset).min(out.len() as u64) as usize;
            self.file.read_exact_at(&mut out[..from_file], offset)?;
            out[from_file..].fill(0);
            return Ok(());
        }
        let mut block = vec![0u8; BLOCK as usize];
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let within = (at % BLOCK) as usize;
            self.block(&overlay, at / BLOCK, &mut block)?;
            let n = (BLOCK as usize - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut overlay = self.state();
        if len < overlay.len {
            overlay.file_until = overlay.file_until.min(len);
            // The block the cut falls in keeps only what is before it.
            let cut = len / BLOCK;
            if !len.is_multiple_of(BLOCK) {
                let mut block = vec![0u8; BLOCK as usize];
                self.block(&overlay, cut, &mut block)?;
                block[(len % BLOCK) as usize..].fill(0);
                overlay.blocks.insert(cut, block.into_boxed_slice());
            }
            overlay.blocks.retain(|n, _| *n * BLOCK < len);
        }
        overlay.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut overlay = self.state();
        if offset + data.len() as u64 > overlay.len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "write past the end"));
        }
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (n_block, within) = (at / BLOCK, (at % BLOCK) as usize);
            let mut block = vec![0u8; BLOCK as usize];
            self.block(&overlay, n_block, &mut block)?;
            let n = (BLOCK as usize - within).min(data.len() - done);
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            overlay.blocks.insert(n_block, block.into_boxed_slice());
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ReadThrough;
    use redb::StorageBackend;

    /// Writes, cuts and growth land in memory and read back like a file's;
    /// the file itself never changes.
    #[test]
    fn read_through_keeps_every_change_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).expect("write");
        let pages = ReadThrough::new(std::fs::File::open(&path).expect("open")).expect("backend");
        let mut model = original.clone();
        let read_all = |len: usize| {
            let mut out = vec![0u8; len];
            pages.read(0, &mut out).expect("read");
            out
        };
        let read = |offset: u64, len: usize| {
            let mut out = vec![0u8; len];
            pages.read(offset, &mut out).expect("read");
            out
        };
        // Straight from the file.
        assert_eq!(read(100, 9000), original[100..9100]);
        // Across a block boundary.
        pages.write(4000, &[7u8; 200]).expect("write");
        model[4000..4200].fill(7);
        assert_eq!(read_all(10_000), model);
        // Cut inside a block, then grown: what was cut reads as zeros.
        pages.set_len(5000).expect("cut");
        pages.set_len(9000).expect("grow");
        model.truncate(5000);
        model.resize(9000, 0);
        assert_eq!(pages.len().expect("len"), 9000);
        assert_eq!(read_all(9000), model);
        // A block nothing was written to, past the cut: zeros, not the file.
        assert_eq!(read(8192, 808), vec![0u8; 808]);
        let mut past = [0u8; 2];
        pages.read(8999, &mut past).expect_err("past the end");
        assert_eq!(std::fs::read(&path).expect("read"), original, "the file is unchanged");
    }
}

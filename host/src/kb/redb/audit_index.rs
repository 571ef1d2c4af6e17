//! The audit indexes (by agent, entity, agent and entity, invocation), kept
//! as runs of seqs written in bulk, and the audit query that reads them by
//! the rules' plan ([`ops::audit_plan`]).

use super::*;

/// The keys one audit entry has in the four audit indexes.
///
/// The indexes are written in bulk, not with each entry: an entry's rows
/// wait here, and every checkpoint (or [`INDEX_FLUSH_AT`] entries, or every
/// batch without the journal) writes all that wait, each table's sorted, in
/// the same transaction as `meta.audit_indexed`, the last seq they cover.
/// Written with each batch they cost a copy of every index leaf a batch
/// touches (one per commit at 16 invocations on distinct entities, in
/// four tables); in bulk a leaf is copied once per flush.
///
/// Invariant: the indexes hold every entry up to `audit_indexed`, and a
/// query reads them only up to it; the entries after it (at most a flush's
/// worth) are read from the audit table itself (see `audit`). The entries
/// are durable with their batch either way, so nothing is lost in a crash:
/// the open rebuilds the rows of the entries after `audit_indexed`.
pub(super) struct IndexRow {
    pub(super) seq: u64,
    pub(super) agent: String,
    pub(super) invocation: u64,
    pub(super) entities: Vec<String>,
}

impl IndexRow {
    pub(super) fn of(entry: &AuditEntry) -> Self {
        IndexRow {
            seq: entry.seq,
            agent: entry.agent.clone(),
            invocation: entry.invocation,
            entities: entry.entities.clone(),
        }
    }
}

/// With the journal, the audit indexes are written at each checkpoint, or
/// sooner once this many entries wait: what bounds the entries a query
/// reads past the indexes.
pub(super) const INDEX_FLUSH_AT: usize = 4096;

/// Writes an audit entry and its index rows.
/// Writes an audit entry (`stored`: its JSON, from
/// [`AuditEntry::link_encoded`]); its index rows wait in `index` (see
/// [`IndexRow`]).
pub(super) fn insert_audit(
    tx: &Tx<'_>,
    index: &mut Vec<IndexRow>,
    entry: &AuditEntry,
    stored: &[u8],
) -> Result<(), StoreError> {
    tx.audit().map_err(backend)?.insert(entry.seq, stored).map_err(backend)?;
    index.push(IndexRow::of(entry));
    Ok(())
}

/// Writes the index runs of `rows` (in seq order) and moves
/// `meta.audit_indexed` to the last of them.
pub(super) fn flush_index(tx: &Tx<'_>, rows: &[IndexRow]) -> Result<(), StoreError> {
    let Some(last) = rows.last() else { return Ok(()) };
    let keys = IndexKeys::of(rows);
    insert_runs(tx.audit_by_agent().map_err(backend)?, keys.agent, |agent, first| (agent, first))?;
    insert_runs(tx.audit_by_invocation().map_err(backend)?, keys.invocation, |inv, first| (inv, first))?;
    insert_runs(tx.audit_by_entity().map_err(backend)?, keys.entity, |entity, first| (entity, first))?;
    insert_runs(tx.audit_by_agent_entity().map_err(backend)?, keys.agent_entity, |(agent, entity), first| {
        (agent, entity, first)
    })?;
    tx.meta().map_err(backend)?.insert(AUDIT_INDEXED, last.seq).map_err(backend)?;
    Ok(())
}

/// Groups an index's (key, seq) pairs into runs and writes them, each
/// under `row_key(key, first seq)`.
pub(super) fn insert_runs<'k, P: Ord + Copy, K: Key + 'static>(
    mut table: std::cell::RefMut<'_, Logged<'_, '_, K, &'static [u8]>>,
    pairs: Vec<(P, u64)>,
    row_key: impl Fn(P, u64) -> K::SelfType<'k>,
) -> Result<(), StoreError> {
    for (key, first, run) in Run::group(pairs) {
        table.insert(row_key(key, first), run.as_slice()).map_err(backend)?;
    }
    Ok(())
}

/// The (key, seq) pairs of some index rows, one list per index, in seq
/// order. An entity an entry names twice is indexed once, as the tables of
/// one row per (key, seq) did: a run holds each seq once.
pub(super) struct IndexKeys<'r> {
    pub(super) agent: Vec<(&'r str, u64)>,
    pub(super) invocation: Vec<(u64, u64)>,
    pub(super) entity: Vec<(&'r str, u64)>,
    pub(super) agent_entity: Vec<((&'r str, &'r str), u64)>,
}

impl<'r> IndexKeys<'r> {
    pub(super) fn of(rows: &'r [IndexRow]) -> Self {
        let mut keys = IndexKeys {
            agent: Vec::with_capacity(rows.len()),
            invocation: Vec::with_capacity(rows.len()),
            entity: Vec::with_capacity(rows.len()),
            agent_entity: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            keys.agent.push((r.agent.as_str(), r.seq));
            keys.invocation.push((r.invocation, r.seq));
            for (i, e) in r.entities.iter().enumerate() {
                if r.entities[..i].contains(e) {
                    continue;
                }
                keys.entity.push((e.as_str(), r.seq));
                keys.agent_entity.push(((r.agent.as_str(), e.as_str()), r.seq));
            }
        }
        keys
    }
}

/// A run of an audit index: ascending seqs indexed under one key, stored
/// as one row keyed by (key, first seq), whose value is the seqs as
/// LEB128 varints, each the difference from the one before (the first from
/// zero).
///
/// A flush writes one run per key it holds (up to [`Run::MAX`] seqs), so
/// its cost follows the keys it touches, not the entries: a flush of 4,096
/// reads by one agent of one entity is four rows, not 16,384. Runs never
/// overlap: each seq is flushed once.
pub(super) struct Run;

impl Run {
    /// The most seqs in one run, so a query that wants only the newest few
    /// decodes little more than it returns. (Small in tests, so that their
    /// queries cross runs.)
    const MAX: usize = if cfg!(test) { 4 } else { 512 };

    /// Groups `pairs` (in seq order) by key into runs: (key, first seq,
    /// encoded run), in key order.
    pub(super) fn group<K: Ord + Copy>(mut pairs: Vec<(K, u64)>) -> Vec<(K, u64, Vec<u8>)> {
        // Stable: each key's seqs stay ascending.
        pairs.sort_by_key(|p| p.0);
        let mut runs = Vec::new();
        for same in pairs.chunk_by(|a, b| a.0 == b.0) {
            for chunk in same.chunks(Run::MAX) {
                runs.push((chunk[0].0, chunk[0].1, Run::encode(chunk.iter().map(|p| p.1))));
            }
        }
        runs
    }

    pub(super) fn encode(seqs: impl Iterator<Item = u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = 0;
        for seq in seqs {
            let mut d = seq - prev;
            prev = seq;
            loop {
                let byte = (d & 0x7f) as u8;
                d >>= 7;
                if d == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// The seqs of a run, ascending; a malformed one is an error naming
    /// the index it was read from.
    pub(super) fn decode(bytes: &[u8], index: &str) -> Result<Vec<u64>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            what: format!("a run of the audit index {index}"),
            reason: "it does not decode".into(),
        };
        let mut seqs = Vec::with_capacity(bytes.len());
        let (mut prev, mut d, mut shift) = (0u64, 0u64, 0u32);
        for &b in bytes {
            // Past 64 bits: too long, or a last byte with more than the
            // one bit left.
            if shift > 63 || (shift == 63 && b & 0x7e != 0) {
                return Err(corrupt());
            }
            d |= u64::from(b & 0x7f) << shift;
            if b & 0x80 != 0 {
                shift += 7;
                continue;
            }
            prev = prev.checked_add(d).ok_or_else(corrupt)?;
            seqs.push(prev);
            (d, shift) = (0, 0);
        }
        if shift != 0 {
            return Err(corrupt());
        }
        Ok(seqs)
    }
}

/// The last audit seq the indexes cover (see [`IndexRow`]).
pub(super) fn audit_indexed(txn: &ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(backend)?;
    Ok(meta.get(AUDIT_INDEXED).map_err(backend)?.map_or(0, |v| v.value()))
}

/// Gives `take` the seqs in `seqs` that one key's runs of an index hold,
/// in order (`forward`) or newest first, until it returns false. `open(lo,
/// hi)` ranges over the key's runs whose first seq is in `lo..=hi`; a run
/// holds only seqs at or after its first, so a forward walk starts at the
/// run holding `seqs.start` (the last to begin at or before it).
pub(super) fn walk_runs<'t, K: Key + 'static>(
    open: impl Fn(u64, u64) -> Result<redb::Range<'t, K, &'static [u8]>, StoreError>,
    seqs: std::ops::Range<u64>,
    forward: bool,
    index: &str,
    mut take: impl FnMut(u64) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let last = seqs.end - 1;
    if forward {
        let begin = match open(0, seqs.start)?.next_back() {
            Some(item) => Run::decode(item.map_err(backend)?.1.value(), index)?.first().copied().unwrap_or(0),
            None => 0,
        };
        for item in open(begin, last)? {
            let (_, run) = item.map_err(backend)?;
            for seq in Run::decode(run.value(), index)? {
                if seq > last {
                    return Ok(());
                }
                if seq >= seqs.start && !take(seq)? {
                    return Ok(());
                }
            }
        }
    } else {
        for item in open(0, last)?.rev() {
            let (_, run) = item.map_err(backend)?;
            for seq in Run::decode(run.value(), index)?.into_iter().rev() {
                if seq < seqs.start {
                    return Ok(());
                }
                if seq <= last && !take(seq)? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

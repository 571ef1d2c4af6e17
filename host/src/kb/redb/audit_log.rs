//! The audit log's numbering and chain: read-call entries get their seq on
//! the caller's thread and wait in the [`Tail`]; the writer links every
//! entry into the hash chain, strictly in seq order.

use super::*;

/// The audit log's numbering, shared by every caller and the writer.
///
/// Invariant: every entry gets its seq under this lock, and a read-call
/// entry enters `pending` under the same lock as it gets its seq. The writer
/// takes `pending` under the lock too, before it numbers an entry of its
/// own. So the writer always holds every entry below the seq it writes
/// next, and links the hash chain strictly in seq order: numbering a read is
/// a few hundred nanoseconds for the caller, and the chain stays gap-free.
#[derive(Default)]
pub(super) struct Tail {
    /// The seq the next entry gets.
    pub(super) next_seq: u64,
    /// Read-call entries numbered but not yet in a transaction, in seq order.
    pub(super) pending: Vec<Pending>,
}

/// A read-call entry waiting for the writer, with the read cursor move that
/// goes with it (a `get` moves the agent's cursor for `changes-since-read`).
pub(super) struct Pending {
    /// Unsealed: the writer links it into the chain.
    pub(super) entry: AuditEntry,
    pub(super) cursor: Option<(String, String, u64)>,
}

/// Past this many waiting read entries, the writer is asked to write them
/// at once rather than at the deadline.
pub(super) const FLUSH_AT: usize = 4096;

/// Past this many, a caller waits for the writer (backpressure), so memory
/// stays bounded when reads outrun the disk.
pub(super) const MAX_PENDING: usize = 65_536;

/// The writer's side of the chain: the last hash it linked, what the
/// open transaction holds (to give back to [`Tail`] if it rolls back), and
/// the audit index rows not yet written (see [`IndexRow`]).
#[derive(Default)]
pub(super) struct Chain {
    pub(super) last_hash: String,
    /// The hash before the open transaction.
    pub(super) committed_hash: String,
    pub(super) in_txn: Vec<Written>,
    /// Index rows of the entries after `meta.audit_indexed`, in seq order.
    pub(super) index: Vec<IndexRow>,
    /// How many of `index` are committed (the rest go if the batch rolls back).
    pub(super) index_committed: usize,
    /// How many read entries the last batch took from the tail.
    pub(super) last_pending: usize,
}

pub(super) enum Written {
    Read(Pending),
    /// A job's own entry.
    Own(AuditEntry),
}

/// Appends an audit entry inside a batch's write transaction: numbers it
/// (after the read entries waiting in the tail, which go in first) and
/// links it into the chain.
pub(super) fn append_audit_in(tx: &Tx<'_>, draft: AuditDraft, at_ms: u64) -> Result<AuditEntry, StoreError> {
    let (seq, pending) = {
        let mut tail = tx.shared.tail();
        let seq = tail.next_seq;
        tail.next_seq += 1;
        (seq, std::mem::take(&mut tail.pending))
    };
    tx.write_reads(pending)?;
    let mut chain = tx.chain.borrow_mut();
    let mut entry = AuditEntry::unsealed(draft, seq, at_ms);
    let stored = entry.link_encoded(&chain.last_hash);
    insert_audit(tx, &mut chain.index, &entry, &stored)?;
    chain.last_hash.clone_from(&entry.hash);
    chain.in_txn.push(Written::Own(entry.clone()));
    Ok(entry)
}

impl RedbStore {
    /// Numbers a read-call entry and leaves it for the writer (see [`Tail`]).
    pub(super) fn push_read(
        &self,
        draft: AuditDraft,
        cursor: Option<(String, String, u64)>,
    ) -> Result<u64, StoreError> {
        let writer = self.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let at_ms = crate::kb::model::now_ms();
        let (seq, waiting) = {
            let mut tail = writer.shared.tail();
            let seq = tail.next_seq;
            tail.next_seq += 1;
            tail.pending.push(Pending { entry: AuditEntry::unsealed(draft, seq, at_ms), cursor });
            (seq, tail.pending.len())
        };
        // One nudge when the tail stops being empty starts the writer's
        // deadline; one more asks for the write at once when it grows long.
        if waiting == 1 || waiting == FLUSH_AT {
            let nudge = Msg::Nudge { now: waiting == FLUSH_AT };
            if let Some(jobs) = &writer.jobs {
                jobs.send(nudge).map_err(|_| StoreError::Backend("the writer has stopped".into()))?;
            }
        }
        if waiting >= MAX_PENDING {
            self.settle()?;
        }
        Ok(seq)
    }
}

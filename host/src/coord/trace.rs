//! Causation chains: which invocations one invocation's chain holds (what
//! caused it, and everything it caused), for `concord audit --trace` and
//! `GET /v1/audit/trace/{id}`.

use crate::audit::{AuditFilter, calls};
use crate::kb::{Store, StoreError};
use std::collections::BTreeSet;

/// Why a chain could not be found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("there is no invocation {0} (see `concord audit --call invocation.start`)")]
    NoSuchInvocation(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many audit entries one page of the forward scan reads.
const PAGE: usize = 4096;

/// The invocations in `id`'s causation chain: its root (followed up
/// through each start entry's causation: an invocation's id is the seq of
/// its start entry), and every invocation the root caused, transitively,
/// with the cascade steps stopped at the depth limit (whose seq stands in
/// for the invocation they never got), and the schedule fire that started
/// the root, if one did.
///
/// Descendants always start after their root, so only the log from the
/// root on is read.
pub fn chain(store: &dyn Store, id: u64) -> Result<BTreeSet<u64>, TraceError> {
    let start = store.audit_entry(id)?.filter(|e| e.call == calls::INVOCATION_START);
    let Some(mut at) = start else { return Err(TraceError::NoSuchInvocation(id)) };
    // A chain is at most 64 deep; the bound guards against a log that loops.
    for _ in 0..=64 {
        let Some(parent) = at.causation else { break };
        match store.audit_entry(parent)? {
            Some(p) if p.call == calls::INVOCATION_START && p.seq < at.seq => at = p,
            _ => break,
        }
    }
    let root = at.seq;
    let mut set = BTreeSet::from([root]);
    // A root a schedule started names its fire (a host entry, which stands
    // for itself in the set): the trace shows what caused it.
    if let Some(fire) = at.causation
        && let Some(e) = store.audit_entry(fire)?
        && e.call == calls::SCHEDULE_FIRE
    {
        set.insert(e.invocation);
    }
    let mut after = root;
    loop {
        let page = store.audit(&AuditFilter { after: Some(after), limit: Some(PAGE), ..Default::default() })?;
        for e in &page {
            let caused = matches!(e.call.as_str(), calls::INVOCATION_START | calls::CASCADE_STOPPED);
            if caused && e.causation.is_some_and(|c| set.contains(&c)) {
                set.insert(e.invocation);
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.seq,
            _ => return Ok(set),
        }
    }
}

//! Change requests that nobody answers expire.
//!
//! A handoff (`coord.request-change`) waits for its owner's
//! `resolve-change`. An owner that never answers (it ignores the message,
//! it traps, it is removed) would leave the requester waiting forever, so a
//! request open for `limits.change_request_ttl_ms` is closed as expired:
//! declined, with a `change_resolved` event by `host` on its entity (detail
//! `"expired": true`), which the requester sees in the entity's history and
//! in `changes-since-read`, and an audit entry (agent `host`, call
//! `change.expired`, the owner as the other party).
//!
//! [`expire`] runs at start and every few seconds in `concord serve`; a
//! script (`concord run`) sweeps at its start. Requests are numbered in the order they were
//! asked, so it walks them from a cursor kept in the store's host state
//! (every request at or below it is closed) and stops at the first open
//! one that is not old enough: each run reads only what is new or open.

use crate::audit::{AuditDraft, Decision, HOST, calls};
use crate::kb::{Event, Store, StoreError};

/// The host state entry that holds the cursor.
const CURSOR: &str = "change_requests.closed_through";

/// Requests read per page.
const PAGE: usize = 256;

/// Closes every open change request asked at or before `now_ms - ttl_ms`.
/// Returns the expiry events, oldest first.
pub fn expire(store: &dyn Store, ttl_ms: u64, now_ms: u64) -> Result<Vec<Event>, StoreError> {
    let mut cursor = match store.host_state(CURSOR)? {
        Some(bytes) => u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            what: format!("host state `{CURSOR}`"),
            reason: format!("{} bytes, not 8", bytes.len()),
        })?),
        None => 0,
    };
    let start = cursor;
    let mut expired = Vec::new();
    'pages: loop {
        let page = store.change_requests(cursor, PAGE)?;
        let full = page.len() == PAGE;
        for r in page {
            if r.applied.is_none() {
                let asked_at = store.event(r.id)?.map_or(0, |e| e.at_ms);
                if asked_at.saturating_add(ttl_ms) > now_ms {
                    break 'pages;
                }
                let reason = format!(
                    "expired: {} did not resolve it within {ttl_ms} ms (limits.change_request_ttl_ms)",
                    r.owner
                );
                let draft = host_draft(&r.entity.key(), &r.owner, r.id);
                let audit = Box::new(move |e: &Event| {
                    let mut d = draft.clone();
                    d.outcome = format!("{} (event {})", d.outcome, e.seq);
                    d
                });
                match store.expire_change_request(r.id, reason, now_ms, audit) {
                    Ok((event, _)) => expired.push(event),
                    // Its owner answered meanwhile: closed either way.
                    Err(StoreError::Rejected(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            cursor = r.id;
        }
        if !full {
            break;
        }
    }
    if cursor != start {
        store.put_host_state(CURSOR.into(), cursor.to_le_bytes().to_vec())?;
    }
    Ok(expired)
}

fn host_draft(entity: &str, owner: &str, id: u64) -> AuditDraft {
    AuditDraft {
        agent: HOST.into(),
        digest: String::new(),
        invocation: None,
        call: calls::CHANGE_EXPIRED.into(),
        entities: vec![entity.to_string()],
        args: serde_json::json!({ "request": id }).to_string(),
        arg_bytes: 0,
        decision: Decision::Allowed,
        rule: None,
        peer: Some(owner.to_string()),
        fields: Vec::new(),
        causation: None,
        outcome: format!("change request {id} to {owner} expired unresolved"),
        duration_us: 0,
    }
}

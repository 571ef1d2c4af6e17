//! Leases and fencing: who may hold an entity, and whether a write's token
//! is still the current one.

use super::{Txn, audited};
use crate::audit::AuditEntry;
use crate::kb::model::{Denial, EntityRef, Lease};
use crate::kb::store::{Actor, Auditor, LeaseOutcome, StoreError};

/// The lease check for a write (`fence` given) or an action (no fence):
/// a write with a fence needs that very lease, live and held by its agent;
/// anything else is refused while another agent holds a live lease.
pub fn lease_denial(
    lease: Option<&Lease>,
    entity: &EntityRef,
    agent: &str,
    fence: Option<u64>,
    now: u64,
) -> Option<Denial> {
    let live = lease.filter(|l| l.is_live(now));
    match (fence, live) {
        (Some(token), Some(l)) if l.token == token && l.holder == agent => None,
        (Some(token), live) => {
            Some(Denial::StaleFence { entity: entity.clone(), token, current: live.map(|l| l.token) })
        }
        (None, Some(l)) if l.holder != agent => {
            Some(Denial::Leased { entity: entity.clone(), holder: l.holder.clone(), expires_at_ms: l.expires_at_ms })
        }
        (None, _) => None,
    }
}

/// Grants a lease with a new token unless another agent holds a live one.
/// The holder asking again gets a new lease with a new token.
pub fn lease(
    tx: &dyn Txn,
    actor: Actor,
    entity: EntityRef,
    ttl_ms: u64,
    now_ms: u64,
    audit: Auditor<LeaseOutcome>,
) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
    audited(tx, now_ms, audit, move |tx| {
        let outcome = match tx.lease(&entity)?.filter(|l| l.is_live(now_ms) && l.holder != actor.name) {
            Some(l) => {
                LeaseOutcome::Denied(Denial::Leased { entity, holder: l.holder, expires_at_ms: l.expires_at_ms })
            }
            None => {
                let lease = Lease {
                    token: tx.next_fence()?,
                    entity,
                    holder: actor.name,
                    expires_at_ms: now_ms.saturating_add(ttl_ms),
                };
                tx.put_lease(&lease)?;
                LeaseOutcome::Granted(lease)
            }
        };
        Ok(outcome)
    })
}

/// Releases the lease if `token` is its token and the actor holds it.
pub fn release(
    tx: &dyn Txn,
    actor: Actor,
    entity: EntityRef,
    token: u64,
    at_ms: u64,
    audit: Auditor<bool>,
) -> Result<(bool, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let released = tx.lease(&entity)?.is_some_and(|l| l.token == token && l.holder == actor.name);
        if released {
            tx.remove_lease(&entity)?;
        }
        Ok(released)
    })
}

/// Extends the actor's live lease with this token, keeping the token (the
/// fences it gave out stay good); a stale fence otherwise.
pub fn renew(
    tx: &dyn Txn,
    actor: Actor,
    entity: EntityRef,
    token: u64,
    ttl_ms: u64,
    now_ms: u64,
    audit: Auditor<LeaseOutcome>,
) -> Result<(LeaseOutcome, AuditEntry), StoreError> {
    audited(tx, now_ms, audit, move |tx| {
        let outcome = match tx.lease(&entity)?.filter(|l| l.is_live(now_ms)) {
            Some(mut l) if l.token == token && l.holder == actor.name => {
                l.expires_at_ms = now_ms.saturating_add(ttl_ms);
                tx.put_lease(&l)?;
                LeaseOutcome::Granted(l)
            }
            live => LeaseOutcome::Denied(Denial::StaleFence { entity, token, current: live.map(|l| l.token) }),
        };
        Ok(outcome)
    })
}

/// An operator's break of the live lease, whoever holds it; rejected
/// (writing nothing) when none is live.
pub fn break_lease(
    tx: &dyn Txn,
    entity: EntityRef,
    at_ms: u64,
    audit: Auditor<Lease>,
) -> Result<(Lease, AuditEntry), StoreError> {
    audited(tx, at_ms, audit, move |tx| {
        let Some(lease) = tx.lease(&entity)?.filter(|l| l.is_live(at_ms)) else {
            return Err(StoreError::Rejected(format!(
                "{entity} holds no live lease: nothing to break (see `concord get {entity}`)"
            )));
        };
        tx.remove_lease(&entity)?;
        Ok(lease)
    })
}

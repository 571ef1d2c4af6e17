//! Leases: `coord.lease`, `coord.renew` (one path, the same bounds) and
//! `coord.release`. Denials and fencing are decided by the store.

use super::{Caller, Gate, HostFault, WriteError, elapsed_us, mark_denial, mark_refusal};
use crate::audit::{self, calls};
use crate::kb::{EntityRef, Lease, LeaseOutcome, now_ms};
use serde_json::json;

impl Gate {
    pub async fn lease(
        &self,
        caller: &Caller,
        entity: EntityRef,
        ttl_ms: u64,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        self.lease_call(caller, entity, ttl_ms, None).await
    }

    /// `coord.renew`: extends the caller's live lease, keeping its token.
    pub async fn renew(
        &self,
        caller: &Caller,
        entity: EntityRef,
        token: u64,
        ttl_ms: u64,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        self.lease_call(caller, entity, ttl_ms, Some(token)).await
    }

    /// `coord.lease` (`renew` none) and `coord.renew`: one path, so that
    /// both check the same bounds and are audited alike.
    async fn lease_call(
        &self,
        caller: &Caller,
        entity: EntityRef,
        ttl_ms: u64,
        renew: Option<u64>,
    ) -> Result<Result<Lease, WriteError>, HostFault> {
        let call = if renew.is_some() { calls::RENEW } else { calls::LEASE };
        let started = self.enter(caller, call).await?;
        let max_outcome = self.settings.load().config.limits.audit_arg_bytes;
        let args = match renew {
            Some(token) => json!({ "entity": entity.key(), "token": token, "ttl_ms": ttl_ms }),
            None => json!({ "entity": entity.key(), "ttl_ms": ttl_ms }),
        };
        let mut draft = self.draft(caller, call, vec![entity.key()], args);
        if let Err(refusal) = self.settings.load().policy.check_lease(
            &caller.agent,
            &entity,
            ttl_ms,
            self.settings.load().config.limits.lease_max_ms,
        ) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }
        let actor = caller.actor();
        let (outcome, entry) = self
            .blocking(move |s| {
                let audit = Box::new(move |o: &LeaseOutcome| {
                    let mut d = draft;
                    d.duration_us = elapsed_us(started);
                    match o {
                        LeaseOutcome::Granted(l) => {
                            d.outcome = format!(
                                "{} token {} until {} ms",
                                if renew.is_some() { "renewed" } else { "granted" },
                                l.token,
                                l.expires_at_ms
                            );
                        }
                        LeaseOutcome::Denied(denial) => mark_denial(&mut d, denial),
                    }
                    d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                    d
                });
                match renew {
                    Some(token) => s.renew(actor, entity, token, ttl_ms, now_ms(), audit),
                    None => s.lease(actor, entity, ttl_ms, now_ms(), audit),
                }
            })
            .await?;
        self.count_entry(&entry);
        Ok(match outcome {
            LeaseOutcome::Granted(l) => Ok(l),
            LeaseOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }

    pub async fn release(&self, caller: &Caller, entity: EntityRef, token: u64) -> Result<bool, HostFault> {
        let started = self.enter(caller, calls::RELEASE).await?;
        let draft =
            self.draft(caller, calls::RELEASE, vec![entity.key()], json!({ "entity": entity.key(), "token": token }));
        let actor = caller.actor();
        let (released, entry) = self
            .blocking(move |s| {
                s.release(
                    actor,
                    entity,
                    token,
                    Box::new(move |released: &bool| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        d.outcome = if *released {
                            "released".into()
                        } else {
                            "not the live lease's token; nothing released".into()
                        };
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        Ok(released)
    }
}

//! `coord.act`: a guarded action into the outbox, if the version it was
//! based on still holds and no rule defers it; rate-limited per agent.

use super::{
    Caller, Gate, HostFault, MAX_IDEMPOTENCY_KEY, WriteError, elapsed_us, mark_conflict, mark_denial, mark_refusal,
};
use crate::audit::{self, Decision, calls};
use crate::kb::{ActOutcome, ActRequest, Denial, EntityRef, now_ms};
use crate::policy::Refusal;
use serde_json::json;

impl Gate {
    /// Records a guarded action in the outbox, if its version still holds
    /// and no rule defers it.
    pub async fn act(
        &self,
        caller: &Caller,
        kind: String,
        payload: String,
        entity: EntityRef,
        based_on: u64,
        key: Option<String>,
    ) -> Result<Result<u64, WriteError>, HostFault> {
        let started = self.enter(caller, calls::ACT).await?;
        // One snapshot of the settings for the whole call (see [`Settings`]).
        let now = self.settings.load_full();
        let max_outcome = now.config.limits.audit_arg_bytes;
        let args = json!({ "kind": kind, "entity": entity.key(), "based_on": based_on, "idempotency_key": key, "payload": payload });
        let mut draft = self.draft(caller, calls::ACT, vec![entity.key()], args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        let problem = if kind.trim().is_empty() {
            Some("an action needs a kind, such as `email.send`".to_string())
        } else if !crate::policy::schema::valid_action_kind(&kind) {
            Some(format!(
                "action kind {:?} is not 1 to {} ASCII letters, digits, `.`, `_` or `-` (such as `email.send`)",
                crate::policy::schema::shorten(&kind),
                crate::policy::schema::MAX_ACTION_KIND
            ))
        } else if key.as_ref().is_some_and(|k| {
            k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(crate::policy::schema::deceptive)
        }) {
            Some(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes of visible characters (it is printed with the action)"
            ))
        } else if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
            Some(format!("the action payload is not JSON: {e}"))
        } else {
            now.policy.check_read(&entity).err().map(|r| r.to_string())
        };
        if let Some(problem) = problem {
            draft.decision = Decision::Invalid;
            draft.rule = Some("schema".into());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        // Who may ask for this kind, then the agent's rate: a bound is "not
        // now" (deferred), naming its key.
        if let Err(refusal) = now.policy.check_action(&caller.agent, &entity, &kind) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }
        let at_ms = now_ms();
        // The outbox's bound is checked by the store, in the transaction
        // that records (see `ActRequest::max_pending`).
        let admitted = match self.rate.admit(&caller.agent, at_ms) {
            Ok(a) => a,
            Err((key, reason)) => {
                let denial = Denial::Rule { entity: entity.clone(), rule: key.into(), defer: true, reason };
                mark_denial(&mut draft, &denial);
                self.record(draft, started)?;
                return Ok(Err(WriteError::Denied(Box::new(denial))));
            }
        };
        let request = ActRequest {
            actor: caller.actor(),
            entity,
            based_on,
            kind,
            payload,
            idempotency_key: key,
            at_ms,
            max_pending: now.config.limits.max_pending_actions,
        };
        let (rules, agent) = (now.config.rules.clone(), caller.agent.clone());
        let (outcome, entry) = self
            .blocking(move |s| {
                let guard = Box::new(move |input: &crate::kb::GuardInput<'_>| rules.evaluate(&agent, input));
                s.act(
                    request,
                    guard,
                    Box::new(move |outcome: &ActOutcome| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        match outcome {
                            ActOutcome::Recorded(a) => {
                                d.outcome = format!("recorded action {} ({}, key {})", a.id, a.kind, a.idempotency_key);
                            }
                            ActOutcome::Conflict(c) => mark_conflict(&mut d, c),
                            ActOutcome::Denied(denial) => mark_denial(&mut d, denial),
                        }
                        d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        // Only a new record keeps its place: a repeated key answers with
        // the first action, recorded before; a refusal records nothing. (A
        // fault above drops `admitted`, which gives its place back too.)
        if let ActOutcome::Recorded(a) = &outcome
            && a.recorded_at_ms == at_ms
            && a.invocation == caller.invocation
        {
            admitted.keep();
        }
        Ok(match outcome {
            ActOutcome::Recorded(a) => Ok(a.id),
            ActOutcome::Conflict(c) => Err(WriteError::Conflict(Box::new(c))),
            ActOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }
}

//! `kb.commit`: ownership and schema checked here, then versions, pins,
//! leases, fences and rules decided by the store in the writing
//! transaction, on the one settings snapshot the call took at its start.

use super::{Caller, Gate, HostFault, WriteError, elapsed_us, mark_conflict, mark_denial, mark_refusal};
use crate::audit::{self, calls};
use crate::kb::{CommitOutcome, CommitRequest, EventKind, StoreError, Write, now_ms};
use crate::policy::Refusal;
use serde_json::json;

impl Gate {
    pub async fn commit(
        &self,
        caller: &Caller,
        writes: Vec<Write>,
        reason: String,
    ) -> Result<Result<Vec<u64>, WriteError>, HostFault> {
        let started = self.enter(caller, calls::COMMIT).await?;
        // One snapshot of the settings for the whole call (see [`Settings`]).
        let now = self.settings.load_full();
        let max_outcome = now.config.limits.audit_arg_bytes;
        let entities: Vec<String> = writes.iter().map(|w| w.entity.key()).collect();
        let args = json!({
            "reason": reason,
            "writes": writes.iter().map(|w| json!({
                "entity": w.entity.key(),
                "expect": w.expect.to_string(),
                "set": w.set.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
                "unset": w.unset,
                "fence": w.fence,
            })).collect::<Vec<_>>(),
        });
        let mut draft = self.draft(caller, calls::COMMIT, entities, args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        let mut written: Vec<String> =
            writes.iter().flat_map(|w| w.set.iter().map(|(n, _)| n.clone()).chain(w.unset.iter().cloned())).collect();
        written.sort();
        written.dedup();
        draft.fields = written;

        if let Err(refusal) = now.policy.check_commit(&caller.agent, &writes) {
            mark_refusal(&mut draft, &refusal);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(refusal)));
        }

        let request = CommitRequest {
            actor: caller.actor(),
            reason,
            writes,
            at_ms: now_ms(),
            by_human: false,
            kind: EventKind::Updated,
        };
        let (rules, agent) = (now.config.rules.clone(), caller.agent.clone());
        let guard = Box::new(move |input: &crate::kb::GuardInput<'_>| rules.evaluate(&agent, input));
        // Answered by the store's writer when the commit is durable: no
        // thread waits for it meanwhile.
        let (done, answer) = tokio::sync::oneshot::channel();
        self.store.commit_then(
            request,
            guard,
            Box::new(move |outcome: &CommitOutcome| {
                let mut d = draft;
                d.duration_us = elapsed_us(started);
                match outcome {
                    CommitOutcome::Committed { versions, events } => {
                        d.outcome = events
                            .iter()
                            .zip(versions)
                            .map(|(e, v)| format!("{}@{v} (event {})", e.entity, e.seq))
                            .collect::<Vec<_>>()
                            .join(", ");
                        d.outcome.insert_str(0, "committed ");
                    }
                    CommitOutcome::Conflict(c) => mark_conflict(&mut d, c),
                    CommitOutcome::Denied(denial) => mark_denial(&mut d, denial),
                }
                d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                d
            }),
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        let (outcome, entry) =
            answer.await.map_err(|_| StoreError::Backend("the store dropped a commit unanswered".into()))??;
        self.count_entry(&entry);
        self.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
        Ok(match outcome {
            CommitOutcome::Committed { versions, events } => {
                caller.follow(|f| f.events.extend(events));
                Ok(versions)
            }
            CommitOutcome::Conflict(c) => Err(WriteError::Conflict(Box::new(c))),
            CommitOutcome::Denied(d) => Err(WriteError::Denied(Box::new(d))),
        })
    }
}

//! Handoffs: `coord.request-change` (to a loaded agent that could apply
//! it) and `coord.resolve-change` (by that owner, once).

use super::{Caller, Gate, HostFault, WriteError, elapsed_us};
use crate::audit::{self, Decision, calls};
use crate::kb::{ChangeRequest, EntityRef, Event, Value, Write, now_ms};
use crate::policy::Refusal;
use serde_json::json;

impl Gate {
    /// Records a handoff: `owner` is asked to change fields it may write.
    pub async fn request_change(
        &self,
        caller: &Caller,
        owner: String,
        entity: EntityRef,
        proposed: Vec<(String, Value)>,
        reason: String,
    ) -> Result<Result<u64, WriteError>, HostFault> {
        let started = self.enter(caller, calls::REQUEST_CHANGE).await?;
        let args = json!({
            "owner": owner, "entity": entity.key(), "reason": reason,
            "proposed": proposed.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(),
        });
        let mut draft = self.draft(caller, calls::REQUEST_CHANGE, vec![entity.key()], args);
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(why))));
        }
        draft.peer = Some(owner.clone());
        // A request must reach someone who can act on it: a loaded agent
        // (not `host`, a human, or a name nobody runs), with something to do.
        let agents = self.agents.load();
        let nobody = if !agents.contains(&owner) {
            let loaded: Vec<&str> = agents.iter().map(String::as_str).collect();
            Some((
                RULE_REQUEST_OWNER,
                format!(
                    "`{}` is not a loaded agent, so nobody would answer this change request: address the agent that \
                 owns the fields (loaded: {})",
                    audit::bounded(owner.clone(), 64),
                    loaded.join(", ")
                ),
            ))
        } else if proposed.is_empty() {
            Some((
                RULE_REQUEST_PROPOSED,
                format!("a change request proposes at least one field for {owner} to set; this one proposes none"),
            ))
        } else {
            None
        };
        if let Some((rule, problem)) = nobody {
            draft.decision = Decision::Invalid;
            draft.rule = Some(rule.into());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        // The owner must be able to apply what is proposed: the same checks
        // as the owner's own commit would get.
        let as_owner = Write {
            entity: entity.clone(),
            expect: crate::kb::Expect::Absent,
            set: proposed.clone(),
            unset: vec![],
            fence: None,
        };
        if let Err(refusal) = self.settings.load().policy.check_commit(&owner, std::slice::from_ref(&as_owner)) {
            let problem = format!("{owner} cannot apply this change request: {refusal}");
            draft.decision = Decision::Invalid;
            draft.rule = Some(refusal.rule());
            draft.outcome.clone_from(&problem);
            self.record(draft, started)?;
            return Ok(Err(WriteError::Refused(Refusal::Invalid(problem))));
        }
        let request = ChangeRequest {
            id: 0,
            from: caller.agent.clone(),
            owner,
            entity,
            proposed,
            reason,
            applied: None,
            resolution: None,
        };
        let actor = caller.actor();
        let (stored, entry) = self
            .blocking(move |s| {
                let owner = request.owner.clone();
                s.request_change(
                    request,
                    actor,
                    now_ms(),
                    Box::new(move |event: &Event| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        d.outcome = format!("change request {} to {owner} (event {})", event.seq, event.seq);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        let id = stored.id;
        caller.follow(|f| f.requests.push(stored));
        Ok(Ok(id))
    }

    /// Records the owner's decision on a change request.
    pub async fn resolve_change(
        &self,
        caller: &Caller,
        request: u64,
        applied: bool,
        reason: String,
    ) -> Result<Result<(), String>, HostFault> {
        let started = self.enter(caller, calls::RESOLVE_CHANGE).await?;
        let max_outcome = self.settings.load().config.limits.audit_arg_bytes;
        let args = json!({ "request": request, "applied": applied, "reason": reason });
        let mut draft = self.draft(caller, calls::RESOLVE_CHANGE, vec![], args);
        // The reason is stored with the request: bounded like every other
        // call's arguments.
        if let Some(why) = self.oversize(&mut draft) {
            self.record(draft, started)?;
            return Ok(Err(why));
        }
        let actor = caller.actor();
        let (result, entry) = self
            .blocking(move |s| {
                s.resolve_change(
                    request,
                    actor,
                    applied,
                    reason,
                    now_ms(),
                    Box::new(move |r: &Result<ChangeRequest, String>| {
                        let mut d = draft;
                        d.duration_us = elapsed_us(started);
                        match r {
                            Ok(req) => {
                                d.entities = vec![req.entity.key()];
                                d.peer = Some(req.from.clone());
                                d.outcome = format!(
                                    "change request {request} from {} {}",
                                    req.from,
                                    if applied { "applied" } else { "declined" }
                                );
                            }
                            Err(e) => {
                                d.decision = Decision::Invalid;
                                d.rule = Some(RULE_RESOLVE.into());
                                d.outcome.clone_from(e);
                            }
                        }
                        d.outcome = audit::bounded(std::mem::take(&mut d.outcome), max_outcome);
                        d
                    }),
                )
            })
            .await?;
        self.count_entry(&entry);
        Ok(result.map(|_| ()))
    }
}

/// The rules a change request is refused by, as the audit names them.
const RULE_REQUEST_OWNER: &str = "change request: the owner is a loaded agent";
const RULE_REQUEST_PROPOSED: &str = "change request: at least one field proposed";
const RULE_RESOLVE: &str = "change request: resolved once, by its owner, while open";

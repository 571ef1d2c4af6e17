//! Cascades: what an invocation's committed changes and change requests
//! cause next.
//!
//! A committed change that matches a subscription invokes the subscriber
//! with the event (`event` messages); a change request invokes the owner
//! (`change_request` messages). Each follow-up carries its causation (the
//! invocation that caused it) and its depth; the host stops a chain at
//! `limits.max_cascade_depth` and audits the stop, naming the chain.

use crate::gate::FollowUps;
use crate::kb::Event;
use crate::policy::config::Subscription;
use crate::runtime::Message;
use serde_json::json;

/// An invocation the dispatcher will run because another one caused it.
#[derive(Debug, Clone)]
pub struct FollowUp {
    pub agent: String,
    pub message: Message,
}

fn event_json(e: &Event) -> serde_json::Value {
    json!({
        "seq": e.seq,
        "agent": e.agent,
        "entity": e.entity.key(),
        "version": e.version,
        "kind": e.kind.as_str(),
        "reason": e.reason,
        "changes": e.changes.iter().map(|c| json!({
            "name": c.name,
            "before": c.before.as_ref().map(crate::kb::Value::to_json),
            "after": c.after.as_ref().map(crate::kb::Value::to_json),
        })).collect::<Vec<_>>(),
    })
}

/// The invocations an invocation's follow-ups call for, in order: change
/// requests first (they were asked for explicitly), then subscriptions.
/// An agent is not invoked for its own changes.
pub fn follow_ups(followups: &FollowUps, subscriptions: &[Subscription]) -> Vec<FollowUp> {
    let mut out = Vec::new();
    for r in &followups.requests {
        let proposed: serde_json::Map<_, _> = r.proposed.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
        out.push(FollowUp {
            agent: r.owner.clone(),
            message: Message {
                kind: "change_request".into(),
                entity: Some(r.entity.clone()),
                body: json!({ "request": r.id, "from": r.from, "proposed": proposed, "reason": r.reason }).to_string(),
            },
        });
    }
    for e in followups.events.iter().filter(|e| e.kind.changes_state()) {
        for s in subscriptions {
            let matches = s.kind == e.entity.kind
                && s.agent != e.agent
                && (s.fields.is_empty() || e.changes.iter().any(|c| s.fields.contains(&c.name)));
            if matches {
                out.push(FollowUp {
                    agent: s.agent.clone(),
                    message: Message {
                        kind: "event".into(),
                        entity: Some(e.entity.clone()),
                        body: json!({ "event": event_json(e) }).to_string(),
                    },
                });
            }
        }
    }
    out
}

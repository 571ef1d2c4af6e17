//! Operator commands: human pins, reverts and lease breaks. They write as `human:NAME`,
//! through the same store transactions (events, projection, audit) as agents.

use crate::audit::{AuditDraft, Decision, calls};
use crate::kb::{
    ActionRecord, Actor, CommitOutcome, CommitRequest, EntityRef, Event, EventKind, Expect, Lease, Store, StoreError,
    Value, Write, now_ms,
};
use crate::policy::schema::{FieldType, Schema};
use serde_json::json;

fn human_draft(by: &str, call: &str, entity: &EntityRef, args: serde_json::Value, fields: Vec<String>) -> AuditDraft {
    human_draft_of(by, call, vec![entity.key()], args, fields)
}

/// The audit draft of an operator command by `human:{by}` on `entities`.
pub(crate) fn human_draft_of(
    by: &str,
    call: &str,
    entities: Vec<String>,
    args: serde_json::Value,
    fields: Vec<String>,
) -> AuditDraft {
    AuditDraft {
        agent: format!("human:{by}"),
        digest: String::new(),
        invocation: None,
        call: call.into(),
        entities,
        args: args.to_string(),
        arg_bytes: 0,
        decision: Decision::Allowed,
        rule: None,
        peer: None,
        fields,
        causation: None,
        outcome: String::new(),
        duration_us: 0,
    }
}

/// Parses `field=value` against the schema: the value is read as the
/// field's declared type (`null` for null).
pub fn parse_assignment(schema: &Schema, entity: &EntityRef, text: &str) -> Result<(String, Value), String> {
    let (field, raw) =
        text.split_once('=').ok_or_else(|| format!("`{text}` is not FIELD=VALUE (e.g. status=active)"))?;
    let kind = schema.check_ref(entity)?;
    let def = kind.fields.get(field).ok_or_else(|| {
        let known: Vec<&str> = kind.fields.keys().map(String::as_str).collect();
        format!("kind `{}` has no field `{field}` (fields: {})", entity.kind, known.join(", "))
    })?;
    let bad = |what: &str| format!("`{raw}` is not {what}, the type of {}.{field}", entity.kind);
    let value = match (def.ty, raw) {
        (_, "null") => Value::Null,
        (FieldType::Text, _) => Value::Text(raw.to_string()),
        (FieldType::Integer, _) => Value::Integer(raw.parse().map_err(|_| bad("an integer"))?),
        (FieldType::Float, _) => Value::Float(raw.parse().map_err(|_| bad("a float"))?),
        (FieldType::Boolean, _) => Value::Boolean(raw.parse().map_err(|_| bad("a boolean (true/false)"))?),
        (FieldType::Json, _) => {
            serde_json::from_str::<serde_json::Value>(raw).map_err(|_| bad("JSON"))?;
            Value::Json(raw.to_string())
        }
    };
    def.ty.check(&value)?;
    Ok((field.to_string(), value))
}

pub fn pin(
    store: &dyn Store,
    entity: &EntityRef,
    fields: &[(String, Value)],
    by: &str,
    reason: &str,
) -> Result<Event, StoreError> {
    let names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
    let args = json!({ "set": fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>(), "reason": reason });
    let draft = human_draft(by, calls::PIN, entity, args, names);
    let audit = Box::new(move |e: &Event| {
        let mut d = draft.clone();
        d.outcome = format!("pinned {} at version {} (event {})", d.fields.join(", "), e.version, e.seq);
        d
    });
    let (event, _) = store.pin(entity.clone(), fields.to_vec(), by.into(), reason.into(), now_ms(), audit)?;
    Ok(event)
}

pub fn unpin(
    store: &dyn Store,
    entity: &EntityRef,
    fields: &[String],
    by: &str,
    reason: &str,
) -> Result<Event, StoreError> {
    let draft = human_draft(by, calls::UNPIN, entity, json!({ "fields": fields, "reason": reason }), fields.to_vec());
    let audit = Box::new(move |e: &Event| {
        let mut d = draft.clone();
        d.outcome = format!("unpinned {} (event {})", d.fields.join(", "), e.seq);
        d
    });
    let (event, _) = store.unpin(entity.clone(), fields.to_vec(), by.into(), reason.into(), now_ms(), audit)?;
    Ok(event)
}

/// Breaks the entity's live lease, whoever holds it: for a holder that is
/// stuck or gone. Its fencing token goes stale, so a write it still makes
/// with the token is refused. Refused if no lease is live.
pub fn break_lease(store: &dyn Store, entity: &EntityRef, by: &str, reason: &str) -> Result<Lease, StoreError> {
    let draft = human_draft(by, calls::BREAK_LEASE, entity, json!({ "reason": reason }), Vec::new());
    let audit = Box::new(move |l: &Lease| {
        let mut d = draft.clone();
        d.peer = Some(l.holder.clone());
        d.outcome = format!("broke {}'s lease (token {}, live until {} ms)", l.holder, l.token, l.expires_at_ms);
        d
    });
    let (lease, _) = store.break_lease(entity.clone(), now_ms(), audit)?;
    Ok(lease)
}

/// Puts action `id` back in the outbox from the dead letter, as
/// `human:{by}`, audited.
pub fn retry_action(store: &dyn Store, id: u64, by: &str, reason: &str) -> Result<ActionRecord, StoreError> {
    let draft = human_draft_of(by, calls::ACTION_RETRY, vec![], json!({ "action": id, "reason": reason }), Vec::new());
    let audit = Box::new(move |a: &ActionRecord| {
        let mut d = draft.clone();
        d.entities = vec![a.entity.key()];
        d.outcome = format!(
            "action {} ({}, key {}) back in the outbox; its last error: {}",
            a.id,
            a.kind,
            a.idempotency_key,
            a.last_error.as_deref().unwrap_or("none")
        );
        d
    });
    let (action, _) = store.retry_action(id, now_ms(), audit)?;
    Ok(action)
}

/// Undoes event `seq` by appending a compensating event that sets every
/// field it changed back to its value before. Refuses, naming them, if later
/// events changed any of those fields (they depend on it), unless `force`.
pub fn revert(store: &dyn Store, seq: u64, by: &str, reason: &str, force: bool) -> Result<Event, StoreError> {
    let event = store.event(seq)?.ok_or_else(|| StoreError::Rejected(format!("there is no event {seq}")))?;
    if !event.kind.changes_state() {
        return Err(StoreError::Rejected(format!(
            "event {seq} is `{}`: it changed no fields, so there is nothing to revert",
            event.kind.as_str()
        )));
    }
    let touched: Vec<&str> = event.changes.iter().map(|c| c.name.as_str()).collect();
    let later: Vec<Event> = store
        .history(&event.entity, seq, usize::MAX)?
        .into_iter()
        .filter(|e| e.kind.changes_state() && e.changes.iter().any(|c| touched.contains(&c.name.as_str())))
        .collect();
    if !later.is_empty() && !force {
        let list: Vec<String> = later
            .iter()
            .map(|e| {
                let fields: Vec<&str> =
                    e.changes.iter().map(|c| c.name.as_str()).filter(|n| touched.contains(n)).collect();
                format!("event {} by {} ({})", e.seq, e.agent, fields.join(", "))
            })
            .collect();
        return Err(StoreError::Rejected(format!(
            "later events depend on event {seq}: {}; reverting would overwrite them. Revert those first, or pass --force",
            list.join("; ")
        )));
    }
    let current =
        store.get(&event.entity)?.ok_or_else(|| StoreError::Rejected(format!("{} no longer exists", event.entity)))?;
    let mut write = Write {
        entity: event.entity.clone(),
        expect: Expect::Version(current.version),
        set: vec![],
        unset: vec![],
        fence: None,
    };
    for c in &event.changes {
        match &c.before {
            Some(v) => write.set.push((c.name.clone(), v.clone())),
            None => write.unset.push(c.name.clone()),
        }
    }
    let request = CommitRequest {
        actor: Actor { name: format!("human:{by}"), invocation: 0 },
        reason: format!("revert of event {seq}: {reason}"),
        writes: vec![write],
        at_ms: now_ms(),
        by_human: true,
        kind: EventKind::Reverted,
    };
    let fields = touched.iter().map(|s| s.to_string()).collect();
    let draft = human_draft(
        by,
        calls::REVERT,
        &event.entity,
        json!({ "event": seq, "reason": reason, "force": force }),
        fields,
    );
    let audit = Box::new(move |o: &CommitOutcome| {
        let mut d = draft.clone();
        match o {
            CommitOutcome::Committed { events, .. } => {
                d.outcome = format!("reverted event {seq} as event {}", events.first().map_or(0, |e| e.seq));
            }
            CommitOutcome::Conflict(c) => {
                d.decision = Decision::Conflict;
                d.outcome = c.to_string();
            }
            CommitOutcome::Denied(x) => {
                d.decision = Decision::Denied;
                d.outcome = x.to_string();
            }
        }
        d
    });
    let (outcome, _) = store.commit(request, Box::new(|_| None), audit)?;
    match outcome {
        CommitOutcome::Committed { mut events, .. } => {
            events.pop().ok_or_else(|| StoreError::Backend("a committed revert produced no event".into()))
        }
        CommitOutcome::Conflict(c) => {
            Err(StoreError::Rejected(format!("the entity changed while reverting; try again ({c})")))
        }
        CommitOutcome::Denied(d) => Err(StoreError::Rejected(d.to_string())),
    }
}

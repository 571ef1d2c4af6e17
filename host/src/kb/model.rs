//! The knowledge base's data model, independent of any storage backend and of
//! the generated WIT bindings (the runtime converts at the boundary).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Names one entity: `kind/id`, such as `customer/acme`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityRef {
    pub kind: String,
    pub id: String,
}

impl EntityRef {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self { kind: kind.into(), id: id.into() }
    }

    /// The storage key, `kind/id`. Kinds may not contain `/` (the config
    /// refuses it), so the key is unambiguous even when the id contains one.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind, self.id)
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

impl std::str::FromStr for EntityRef {
    type Err = String;

    /// Parses `kind/id`. Both parts must be non-empty.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((kind, id)) if !kind.is_empty() && !id.is_empty() => Ok(Self::new(kind, id)),
            _ => Err(format!("`{s}` is not an entity reference: expected `kind/id`, such as `customer/acme`")),
        }
    }
}

/// A field value. Mirrors the WIT `value` variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
    /// JSON text; validated when committed.
    Json(String),
}

impl Value {
    /// The value as plain JSON, for display and export (not for round-trips:
    /// `Text("1")` and `Integer(1)` render differently, but `Json("1")` and
    /// `Integer(1)` do not).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => (*b).into(),
            Value::Integer(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            Value::Text(s) => s.clone().into(),
            Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Json(s) => f.write_str(s),
        }
    }
}

/// Fields by name. A `BTreeMap` so that every encoding is canonical.
pub type Fields = BTreeMap<String, Value>;

/// The current state of one entity: the projection of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub entity: EntityRef,
    pub version: u64,
    pub fields: Fields,
    pub updated_at_ms: u64,
    pub updated_by: String,
    /// The seq of the event that produced this version.
    pub seq: u64,
}

impl Entity {
    /// Applies a state-changing event: the one projection rule, used both
    /// when committing and when replaying, so the two cannot disagree.
    /// Events that do not change state leave the entity as it is.
    pub fn apply(current: Option<Entity>, event: &Event) -> Option<Entity> {
        if !event.kind.changes_state() {
            return current;
        }
        Entity::apply_owned(current, event.clone())
    }

    /// [`Entity::apply`], taking the event's strings and values instead of
    /// copying them (replay applies a million events).
    pub fn apply_owned(current: Option<Entity>, event: Event) -> Option<Entity> {
        if !event.kind.changes_state() {
            return current;
        }
        let mut fields = current.map(|e| e.fields).unwrap_or_default();
        for c in event.changes {
            match c.after {
                Some(v) => fields.insert(c.name, v),
                None => fields.remove(&c.name),
            };
        }
        Some(Entity {
            entity: event.entity,
            version: event.version,
            fields,
            updated_at_ms: event.at_ms,
            updated_by: event.agent,
            seq: event.seq,
        })
    }
}

/// One field's change inside an event; `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldChange {
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What an event records. `Created`, `Updated`, `Pinned` and `Reverted`
/// change fields and bump the version; the others record what happened
/// around the entity without changing it (their `version` is the entity's
/// version at the time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    /// A human set and pinned fields.
    Pinned,
    /// A human released pinned fields.
    Unpinned,
    /// A compensating change that undoes an earlier event.
    Reverted,
    /// A guarded action was recorded in the outbox.
    ActionRecorded,
    /// An agent asked a field's owner for a change (handoff).
    ChangeRequested,
    /// The owner applied or declined a change request.
    ChangeResolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Pinned => "pinned",
            EventKind::Unpinned => "unpinned",
            EventKind::Reverted => "reverted",
            EventKind::ActionRecorded => "action_recorded",
            EventKind::ChangeRequested => "change_requested",
            EventKind::ChangeResolved => "change_resolved",
        }
    }

    /// Whether events of this kind change fields (and bump the version).
    pub fn changes_state(self) -> bool {
        matches!(self, EventKind::Created | EventKind::Updated | EventKind::Pinned | EventKind::Reverted)
    }
}

/// One entry of the event log: a committed change to one entity, or a
/// record of what happened around it (see [`EventKind`]). Events are the
/// truth; entities are derived from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub agent: String,
    pub entity: EntityRef,
    pub version: u64,
    pub kind: EventKind,
    pub changes: Vec<FieldChange>,
    pub reason: String,
    pub invocation: u64,
    /// Kind-specific details as JSON text (the action, the change request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The entity must not exist.
    Absent,
    /// The entity must be at exactly this version.
    Version(u64),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => f.write_str("absent"),
            Expect::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// One entity's part of a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub entity: EntityRef,
    pub expect: Expect,
    pub set: Vec<(String, Value)>,
    pub unset: Vec<String>,
    /// A lease's fencing token; a stale one is refused.
    #[serde(default)]
    pub fence: Option<u64>,
}

/// A write's expectation did not hold, and what happened instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub entity: EntityRef,
    pub expected: Expect,
    pub current_version: Option<u64>,
    /// The agents that changed the entity since the expected version, most
    /// recent first, comma-separated.
    pub changed_by: String,
    pub changed_at_ms: u64,
    pub changed_fields: Vec<String>,
    /// Oldest first, at most [`Conflict::MAX_EVENTS`].
    pub events_since: Vec<Event>,
}

impl Conflict {
    /// How many events a conflict carries; `history` has the rest.
    pub const MAX_EVENTS: usize = 32;
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.current_version {
            None => write!(f, "{} does not exist (expected {})", self.entity, self.expected),
            Some(v) => {
                write!(f, "{} is at version {v}, not {}: changed by {}", self.entity, self.expected, self.changed_by)?;
                if !self.changed_fields.is_empty() {
                    write!(f, " (fields: {})", self.changed_fields.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a time as `--since`, `--until` and the API's `since`/`until`
/// take it: ms since the epoch, or an age (`30s`, `10m`, `2h`, `7d`)
/// counted back from now.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a time: use ms since the epoch, or an age like 30s, 10m, 2h, 7d"))?;
    let unit_ms = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use s, m, h or d")),
    };
    Ok(now_ms().saturating_sub(n.saturating_mul(unit_ms)))
}

/// A field a human pinned: agent writes to it are refused until unpinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pin {
    pub field: String,
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
    /// The event that pinned it.
    pub seq: u64,
}

/// A lease on an entity: while it is live, only its holder may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub entity: EntityRef,
    pub holder: String,
    /// Strictly increasing across all leases, restarts included.
    pub token: u64,
    pub expires_at_ms: u64,
}

impl Lease {
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Why a write or an action was refused by a guard (rule, pin or lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Denial {
    /// A coordination rule matched. `defer` means "not now, try later";
    /// deny means "not this".
    Rule { entity: EntityRef, rule: String, defer: bool, reason: String },
    /// A human pinned the field.
    Pinned { entity: EntityRef, field: String, by: String, reason: String },
    /// Another agent holds a live lease on the entity.
    Leased { entity: EntityRef, holder: String, expires_at_ms: u64 },
    /// The write's fencing token is expired or superseded.
    StaleFence { entity: EntityRef, token: u64, current: Option<u64> },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Rule { entity, rule, defer: true, reason } => {
                write!(f, "deferred by rule `{rule}` on {entity}: {reason}")
            }
            Denial::Rule { entity, rule, defer: false, reason } => {
                write!(f, "denied by rule `{rule}` on {entity}: {reason}")
            }
            Denial::Pinned { entity, field, by, reason } => {
                write!(f, "{entity}.{field} is pinned by {by}: {reason}")
            }
            Denial::Leased { entity, holder, expires_at_ms } => {
                write!(f, "{entity} is leased by {holder} until {expires_at_ms} ms")
            }
            Denial::StaleFence { entity, token, current: Some(c) } => {
                write!(f, "fencing token {token} for {entity} is superseded (current lease token {c})")
            }
            Denial::StaleFence { entity, token, current: None } => {
                write!(f, "fencing token {token} for {entity} has expired (no live lease)")
            }
        }
    }
}

/// A side effect an agent asked for, recorded in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionRecord {
    /// Outbox id, increasing.
    pub id: u64,
    /// What to do, such as `email.send`.
    pub kind: String,
    /// JSON text.
    pub payload: String,
    pub entity: EntityRef,
    /// The entity version the decision rested on.
    pub based_on: u64,
    pub agent: String,
    pub invocation: u64,
    /// Sinks deliver each key at most once.
    pub idempotency_key: String,
    pub recorded_at_ms: u64,
    pub delivered_at_ms: Option<u64>,
    /// Deliveries tried and failed so far (a sink with retries; see
    /// [`crate::outbox::Retry`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Why the last delivery failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not to be tried again before this (ms since the epoch); 0: now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_attempt_ms: u64,
    /// Set when the last attempt failed: the action left the outbox for the
    /// dead letter, until an operator retries it (`concord actions retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at_ms: Option<u64>,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A handoff: one agent asks the owner of some fields to change them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeRequest {
    /// The seq of the `change_requested` event.
    pub id: u64,
    pub from: String,
    pub owner: String,
    pub entity: EntityRef,
    pub proposed: Vec<(String, Value)>,
    pub reason: String,
    /// `None` while open; then whether the owner applied it.
    pub applied: Option<bool>,
    pub resolution: Option<String>,
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn ages_and_epochs_parse() {
        assert_eq!(parse_time("1234"), Ok(1234));
        let t = parse_time("10m").expect("age");
        assert!(now_ms() - t >= 600_000);
        assert!(parse_time("10y").is_err());
        assert!(parse_time("soon").is_err());
    }
}

//! The knowledge base's data model, independent of any storage backend and of
//! the generated WIT bindings (the runtime converts at the boundary).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Names one entity: `kind/id`, such as `customer/acme`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// One field's change inside an event; `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What an event did to its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Created,
    Updated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
        }
    }
}

/// One committed change to one entity. Events are the truth; entities are
/// derived from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// A write's expectation did not hold, and what happened instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub entity: EntityRef,
    pub expected: Expect,
    pub current_version: Option<u64>,
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
                write!(
                    f,
                    "{} is at version {v}, not {}: changed by {} at {} ms",
                    self.entity, self.expected, self.changed_by, self.changed_at_ms
                )?;
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

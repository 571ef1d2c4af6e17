//! Write Concord agents in Rust.
//!
//! The bindings are generated from `wit/` (the single source of truth) by
//! `wit-bindgen`; this crate adds a few helpers so that agents read like
//! their decisions. An agent is a `cdylib` crate built for `wasm32-wasip2`:
//!
//! ```ignore
//! use concord_agent::{Handler, Message};
//!
//! struct Hello;
//! impl Handler for Hello {
//!     fn handle(message: Message) -> Result<String, String> {
//!         concord_agent::info(&format!("got {}", message.kind));
//!         Ok("said hello".into())
//!     }
//! }
//! concord_agent::export!(Hello);
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "agent",
    pub_export_macro: true,
    default_bindings_module: "concord_agent",
});

pub use concord::agent::types::{
    Conflict, Deferral, Entity, EntityRef, Event, Expect, Field, FieldChange, Forbidden, LeaseGrant, Leased, Message,
    Pinned, StaleFence, Value, Write, WriteError,
};
pub use concord::agent::{coord, kb, log};

pub mod http;
pub mod model;
pub use exports::concord::agent::handler::Guest as Handler;

/// `kind/id` as an [`EntityRef`].
pub fn entity(kind: &str, id: &str) -> EntityRef {
    EntityRef { kind: kind.into(), id: id.into() }
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

impl Entity {
    pub fn reference(&self) -> EntityRef {
        entity(&self.kind, &self.id)
    }

    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|f| f.name == name).map(|f| &f.value)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.field(name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn integer(&self, name: &str) -> Option<i64> {
        match self.field(name) {
            Some(Value::Integer(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn float(&self, name: &str) -> Option<f64> {
        match self.field(name) {
            Some(Value::Float(f)) => Some(*f),
            _ => None,
        }
    }
}

impl Write {
    /// A write that creates `entity`; it fails with a conflict if it exists.
    pub fn create(entity: EntityRef) -> Write {
        Write { entity, expect: Expect::Absent, set: vec![], unset: vec![], fence: None }
    }

    /// A write based on what was read: it fails with a conflict if the entity
    /// changed since.
    pub fn update(read: &Entity) -> Write {
        Write {
            entity: read.reference(),
            expect: Expect::Version(read.version),
            set: vec![],
            unset: vec![],
            fence: None,
        }
    }

    pub fn set(mut self, name: &str, value: Value) -> Write {
        self.set.push(Field { name: name.into(), value });
        self
    }

    pub fn unset(mut self, name: &str) -> Write {
        self.unset.push(name.into());
        self
    }

    /// Carries a lease's fencing token.
    pub fn fenced(mut self, token: u64) -> Write {
        self.fence = Some(token);
        self
    }
}

impl Message {
    /// The body as JSON (`{}` if it does not parse; the host checks it does).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| serde_json::json!({}))
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
            Value::Json(s) => f.write_str(s),
        }
    }
}

/// Who last changed `field` of `entity`, from its history: "who was here?"
pub fn who_set(entity: &EntityRef, field: &str) -> Option<String> {
    // `recent` with an unbounded window gives the newest events (up to 1000).
    let events = kb::recent(entity, u64::MAX).ok()?;
    events.iter().rev().find(|e| e.changes.iter().any(|c| c.name == field)).map(|e| e.agent.clone())
}

/// Explains a refused commit in one sentence.
pub fn describe(error: &WriteError) -> String {
    match error {
        WriteError::Conflict(c) => {
            let now = c.current_version.map_or_else(|| "does not exist".to_string(), |v| format!("is at version {v}"));
            let fields =
                if c.changed_fields.is_empty() { String::new() } else { format!(" ({})", c.changed_fields.join(", ")) };
            format!("conflict: {} {now}; last changed by {}{fields}", c.entity, c.changed_by)
        }
        // `coord.lease` by an agent that writes none of the entity's fields.
        WriteError::Forbidden(f) if f.field == "*" => format!(
            "forbidden: {} may not lease {}: it writes none of its fields; those who may lease it: {} \
             (more are granted in `[kinds.{}] leases`)",
            f.agent,
            f.entity,
            f.writers.join(", "),
            f.entity.kind
        ),
        // `coord.act` of a kind this agent may not request.
        WriteError::Forbidden(f) if f.field.starts_with("action:") => format!(
            "forbidden: {} may not request action `{}` on {}; {}",
            f.agent,
            &f.field["action:".len()..],
            f.entity,
            if f.writers.is_empty() {
                "the kind is not declared under [actions.kinds] in concord.toml".to_string()
            } else {
                format!("who may: {}", f.writers.join(", "))
            }
        ),
        WriteError::Forbidden(f) => {
            format!(
                "forbidden: {} may not write {}.{}; it belongs to {}",
                f.agent,
                f.entity,
                f.field,
                f.writers.join(", ")
            )
        }
        WriteError::Deferred(d) => format!("deferred by rule `{}` on {}: {}", d.rule, d.entity, d.reason),
        WriteError::Denied(d) => format!("denied by rule `{}` on {}: {}", d.rule, d.entity, d.reason),
        WriteError::Pinned(p) => format!("pinned: {}.{} is pinned by {}: {}", p.entity, p.field, p.by, p.reason),
        WriteError::Leased(l) => format!("leased: {} is leased by {} until {} ms", l.entity, l.holder, l.expires_at_ms),
        WriteError::StaleFence(f) => match f.current {
            Some(c) => format!("stale fence: token {} for {} is superseded by {c}", f.token, f.entity),
            None => format!("stale fence: token {} for {} has expired, or was released or broken", f.token, f.entity),
        },
        WriteError::Invalid(m) => format!("invalid: {m}"),
    }
}

impl Message {
    /// A field of the message body, as JSON.
    pub fn body_field(&self, name: &str) -> serde_json::Value {
        self.body_json().get(name).cloned().unwrap_or(serde_json::Value::Null)
    }
}

/// A JSON value as a field [`Value`]: strings, integers, floats, booleans
/// and null map to the matching variant; arrays and objects to `json`.
pub fn value_of_json(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => {
            n.as_i64().map_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0)), Value::Integer)
        }
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

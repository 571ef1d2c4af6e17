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
    Conflict, Entity, EntityRef, Event, Expect, Field, FieldChange, Forbidden, Message, Value, Write, WriteError,
};
pub use concord::agent::{kb, log};
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
        Write { entity, expect: Expect::Absent, set: vec![], unset: vec![] }
    }

    /// A write based on what was read: it fails with a conflict if the entity
    /// changed since.
    pub fn update(read: &Entity) -> Write {
        Write { entity: read.reference(), expect: Expect::Version(read.version), set: vec![], unset: vec![] }
    }

    pub fn set(mut self, name: &str, value: Value) -> Write {
        self.set.push(Field { name: name.into(), value });
        self
    }

    pub fn unset(mut self, name: &str) -> Write {
        self.unset.push(name.into());
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

/// Explains a refused commit in one sentence.
pub fn describe(error: &WriteError) -> String {
    match error {
        WriteError::Conflict(c) => {
            let now = c.current_version.map_or_else(|| "does not exist".to_string(), |v| format!("is at version {v}"));
            let fields =
                if c.changed_fields.is_empty() { String::new() } else { format!(" ({})", c.changed_fields.join(", ")) };
            format!("conflict: {} {now}; last changed by {}{fields}", c.entity, c.changed_by)
        }
        WriteError::Forbidden(f) => {
            format!(
                "forbidden: {} may not write {}.{}; it belongs to {}",
                f.agent,
                f.entity,
                f.field,
                f.writers.join(", ")
            )
        }
        WriteError::Invalid(m) => format!("invalid: {m}"),
    }
}

pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

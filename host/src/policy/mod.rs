//! Policy: what an agent may do, decided before the store is touched.
//!
//! - [`config`]: `concord.toml`, parsed and validated whole.
//! - [`schema`]: kinds, typed fields, and the ownership map.
//! - [`rules`]: coordination rules (CEL conditions, defer or deny).
//!
//! [`Policy::check_commit`] is where ownership is enforced: every commit of
//! every agent passes through it (via [`crate::gate::Gate`]) before the store
//! sees it. Versions (conflicts) are checked later, by the store, inside the
//! write transaction.

pub mod config;
pub mod rules;
pub mod schema;

use crate::kb::{EntityRef, Write};
use schema::Schema;
use std::collections::BTreeSet;

/// A field an agent may not write, and who may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    pub entity: EntityRef,
    pub field: String,
    pub agent: String,
    /// The agents that may write the field.
    pub writers: Vec<String>,
    /// How the rule reads: `owned by sales`, `writable by sales, support`.
    pub rule: String,
}

/// Why policy refused a commit. The commit is refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A field the agent may not write.
    #[error("{} may not write {}.{}: the field is {}", .0.agent, .0.entity, .0.field, .0.rule)]
    Forbidden(Box<Forbidden>),
    /// A schema violation or malformed request.
    #[error("{0}")]
    Invalid(String),
}

impl Refusal {
    /// The rule that decided, as recorded in the audit.
    pub fn rule(&self) -> String {
        match self {
            Refusal::Forbidden(f) => format!("ownership: {}.{} is {}", f.entity.kind, f.field, f.rule),
            Refusal::Invalid(_) => "schema".into(),
        }
    }
}

/// The most writes one commit may carry.
pub const MAX_WRITES_PER_COMMIT: usize = 1024;

/// The config's rules, ready for cheap checks at call time.
#[derive(Debug, Clone)]
pub struct Policy {
    schema: Schema,
}

impl Policy {
    pub fn new(schema: Schema) -> Self {
        Self { schema }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Checks an entity reference for a read.
    pub fn check_read(&self, entity: &EntityRef) -> Result<(), Refusal> {
        self.schema.check_ref(entity).map(|_| ()).map_err(Refusal::Invalid)
    }

    /// Checks a whole commit: shape, schema and ownership. Returns the first
    /// problem found, in write order and field order.
    pub fn check_commit(&self, agent: &str, writes: &[Write]) -> Result<(), Refusal> {
        if writes.is_empty() {
            return Err(Refusal::Invalid("a commit needs at least one write".into()));
        }
        if writes.len() > MAX_WRITES_PER_COMMIT {
            return Err(Refusal::Invalid(format!(
                "a commit may carry at most {MAX_WRITES_PER_COMMIT} writes; this one has {}",
                writes.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for (i, w) in writes.iter().enumerate() {
            let kind = self.schema.check_ref(&w.entity).map_err(|e| Refusal::Invalid(format!("write {i}: {e}")))?;
            if !seen.insert(&w.entity) {
                return Err(Refusal::Invalid(format!(
                    "write {i}: {} appears twice in one commit; merge the writes into one",
                    w.entity
                )));
            }
            let mut touched = BTreeSet::new();
            let names = w.set.iter().map(|(n, v)| (n, Some(v))).chain(w.unset.iter().map(|n| (n, None)));
            for (name, value) in names {
                if !touched.insert(name) {
                    return Err(Refusal::Invalid(format!(
                        "write {i}: field `{name}` of {} is set or unset more than once",
                        w.entity
                    )));
                }
                let def = kind.fields.get(name).ok_or_else(|| {
                    let known: Vec<&str> = kind.fields.keys().map(String::as_str).collect();
                    Refusal::Invalid(format!(
                        "write {i}: unknown field `{}` of kind `{}` (declared fields: {})",
                        schema::shorten(name),
                        w.entity.kind,
                        known.join(", ")
                    ))
                })?;
                // Ownership before the value's type: "not yours" is the
                // answer that matters, whatever was written.
                if !def.writers.allows(agent) {
                    return Err(Refusal::Forbidden(Box::new(Forbidden {
                        entity: w.entity.clone(),
                        field: name.clone(),
                        agent: agent.to_string(),
                        writers: def.writers.names(),
                        rule: def.writers.describe(),
                    })));
                }
                if let Some(value) = value {
                    def.ty
                        .check(value)
                        .map_err(|e| Refusal::Invalid(format!("write {i}: field `{name}` of {}: {e}", w.entity)))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::{Expect, Value};
    use std::path::Path;

    fn policy() -> Policy {
        let c = config::Config::parse(
            "[kinds.customer.fields]\nstatus = { type = \"text\", writers = [\"sales\", \"support\"] }\n\
             deal_stage = { type = \"text\", owner = \"sales\" }\nscore = { type = \"float\", owner = \"support\" }\n\
             meta = { type = \"json\", owner = \"product\" }\n",
            Path::new("t.toml"),
            Path::new("."),
        )
        .expect("valid config");
        Policy::new(c.schema)
    }

    fn write(field: &str, value: Value) -> Write {
        Write {
            entity: EntityRef::new("customer", "acme"),
            expect: Expect::Version(1),
            set: vec![(field.into(), value)],
            unset: vec![],
            fence: None,
        }
    }

    #[test]
    fn owner_and_shared_writers_may_write() {
        let p = policy();
        p.check_commit("sales", &[write("deal_stage", Value::Text("x".into()))]).expect("owner");
        p.check_commit("support", &[write("status", Value::Text("x".into()))]).expect("shared");
    }

    #[test]
    fn non_owner_is_forbidden_and_told_who_owns() {
        let e = policy().check_commit("product", &[write("deal_stage", Value::Text("x".into()))]).unwrap_err();
        match &e {
            Refusal::Forbidden(f) => {
                assert_eq!(f.field, "deal_stage");
                assert_eq!(f.writers, ["sales".to_string()]);
            }
            other => panic!("expected forbidden, got {other:?}"),
        }
        assert_eq!(e.rule(), "ownership: customer.deal_stage is owned by sales");
    }

    #[test]
    fn unset_is_ownership_checked_too() {
        let mut w = write("status", Value::Null);
        w.set.clear();
        w.unset.push("deal_stage".into());
        assert!(matches!(policy().check_commit("support", &[w]), Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn schema_violations_are_invalid() {
        let p = policy();
        for (w, needle) in [
            (write("deal_stage", Value::Integer(3)), "expected text, got integer"),
            (write("nope", Value::Null), "unknown field `nope`"),
            (write("score", Value::Float(f64::NAN)), "not a finite float"),
            (write("meta", Value::Json("{oops".into())), "does not parse"),
        ] {
            let owner = if needle.contains("float") { "support" } else { "product" };
            let owner = if needle.contains("text") || needle.contains("nope") { "sales" } else { owner };
            match p.check_commit(owner, &[w]) {
                Err(Refusal::Invalid(m)) => {
                    assert!(m.contains(needle), "{m} should contain {needle}")
                }
                other => panic!("expected invalid ({needle}), got {other:?}"),
            }
        }
        let mut w = write("status", Value::Null);
        w.entity.kind = "vendor".into();
        match p.check_commit("sales", &[w]) {
            Err(Refusal::Invalid(m)) => assert!(m.contains("unknown entity kind `vendor`"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.check_commit("sales", &[]), Err(Refusal::Invalid(_))));
        let w = write("status", Value::Null);
        assert!(matches!(p.check_commit("sales", &[w.clone(), w]), Err(Refusal::Invalid(m)) if m.contains("twice")));
    }
}

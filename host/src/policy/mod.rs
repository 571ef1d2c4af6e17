//! Policy: what an agent may do, decided before the store is touched.
//!
//! - [`config`]: `concord.toml`, parsed and validated whole.
//! - [`schema`]: kinds, typed fields, and the ownership map.
//! - [`rules`]: coordination rules (CEL conditions, defer or deny);
//!   [`condition`]: a condition checked at start against what it can see.
//! - [`rate`]: how many actions an agent may record per minute and hour.
//! - [`reload`]: a config reload against the config in force: what needs a
//!   restart, and what changed.
//! - [`server`]: `[server]`, how `concord serve` listens and what it takes on.
//! - [`sink`]: `[actions] sink`, where recorded actions are delivered.
//! - [`outbound`]: the origins an agent may reach over HTTP (`[agents.NAME]
//!   http`); [`secrets`]: the values the host adds to those requests;
//!   [`grants`]: `[agents.NAME]`, `[secrets]` and `[models]` as configured;
//!   [`tokens`]: the model tokens each agent spent today.
//!
//! [`Policy::check_commit`] is where ownership is enforced: every commit of
//! every agent passes through it (via [`crate::gate::Gate`]) before the store
//! sees it. Versions (conflicts) are checked later, by the store, inside the
//! write transaction.

pub mod condition;
pub mod config;
pub mod grants;
pub mod outbound;
pub mod rate;
pub mod reload;
pub mod rules;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod sink;
pub mod tokens;

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

/// `field` of a [`Forbidden`] lease: the agent may write no field of the
/// entity, and `writers` are the agents that may lease it.
pub const ANY_FIELD: &str = "*";

/// How `field` of a [`Forbidden`] action names it: `action:KIND`, with
/// `writers` the agents that may request the kind.
pub const ACTION_PREFIX: &str = "action:";

impl Forbidden {
    fn describe(&self) -> String {
        if self.field == ANY_FIELD {
            format!("{} may not lease {}: {}", self.agent, self.entity, self.rule)
        } else if let Some(kind) = self.field.strip_prefix(ACTION_PREFIX) {
            format!("{} may not request action `{kind}` on {}: the kind is {}", self.agent, self.entity, self.rule)
        } else {
            format!("{} may not write {}.{}: the field is {}", self.agent, self.entity, self.field, self.rule)
        }
    }
}

/// Why policy refused a commit. The commit is refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A field the agent may not write.
    #[error("{}", .0.describe())]
    Forbidden(Box<Forbidden>),
    /// A schema violation or malformed request.
    #[error("{0}")]
    Invalid(String),
}

impl Refusal {
    /// The rule that decided, as recorded in the audit.
    pub fn rule(&self) -> String {
        match self {
            Refusal::Forbidden(f) if f.field.starts_with(ACTION_PREFIX) => format!("actions: {}", f.field),
            Refusal::Forbidden(f) if f.field == ANY_FIELD => {
                format!("lease: {} may lease {}", f.writers.join(", "), f.entity.kind)
            }
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

    /// Checks a lease request (`coord.lease`, `coord.renew`): a sane entity,
    /// a TTL within `max_ms` (`limits.lease_max_ms`: a lease blocks every
    /// other writer, so none is open-ended), and an agent with a stake in
    /// the entity ([`schema::KindDef::may_lease`]).
    pub fn check_lease(&self, agent: &str, entity: &EntityRef, ttl_ms: u64, max_ms: u64) -> Result<(), Refusal> {
        let kind = self.schema.check_ref(entity).map_err(Refusal::Invalid)?;
        if ttl_ms > max_ms {
            return Err(Refusal::Invalid(format!(
                "a lease's ttl-ms is at most {max_ms} (limits.lease_max_ms); {ttl_ms} was asked: \
                 take a shorter lease and renew it (coord.renew) while the work goes on"
            )));
        }
        if !kind.may_lease(agent) {
            let lessees = kind.lessees();
            return Err(Refusal::Forbidden(Box::new(Forbidden {
                entity: entity.clone(),
                field: ANY_FIELD.into(),
                agent: agent.to_string(),
                rule: format!(
                    "it writes no field of `{k}`, and a lease would stop those who do ({}); \
                     to grant it leases, add it to `[kinds.{k}] leases`",
                    lessees.join(", "),
                    k = entity.kind
                ),
                writers: lessees,
            })));
        }
        Ok(())
    }

    /// Checks that `agent` may ask for an action of `kind` on `entity`:
    /// the kind is declared in `[actions.kinds]` with the agent among those
    /// who may. Denied by default, as fields are.
    pub fn check_action(&self, agent: &str, entity: &EntityRef, kind: &str) -> Result<(), Refusal> {
        self.schema.check_ref(entity).map_err(Refusal::Invalid)?;
        let allowed = self.schema.actions.get(kind);
        if allowed.is_some_and(|a| a.iter().any(|x| x == agent)) {
            return Ok(());
        }
        let rule = match allowed {
            Some(who) => format!("requested only by {}", who.join(", ")),
            None => format!(
                "not declared: add `\"{}\" = [\"{agent}\"]` under `[actions.kinds]` in concord.toml to allow it",
                kind.escape_debug()
            ),
        };
        Err(Refusal::Forbidden(Box::new(Forbidden {
            entity: entity.clone(),
            field: format!("{ACTION_PREFIX}{kind}"),
            agent: agent.to_string(),
            writers: allowed.cloned().unwrap_or_default(),
            rule,
        })))
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

/// Property tests: commit validation never panics, and its verdict agrees
/// with a plain oracle. `PROPTEST_CASES` sets how many (`just fuzz` runs
/// many more).
#[cfg(test)]
mod props {
    use super::*;
    use crate::kb::{Expect, Value};
    use proptest::prelude::*;
    use std::path::Path;

    const CONFIG: &str = "[kinds.customer.fields]\n\
        status = { type = \"text\", writers = [\"sales\", \"support\"] }\n\
        deal_stage = { type = \"text\", owner = \"sales\" }\n\
        open_tickets = { type = \"integer\", owner = \"support\" }\n\
        score = { type = \"float\", owner = \"support\" }\n\
        vip = { type = \"boolean\", owner = \"sales\" }\n\
        usage = { type = \"json\", owner = \"product\" }\n\
        [kinds.ticket.fields]\n\
        title = { type = \"text\", owner = \"support\" }\n";

    fn policy() -> Policy {
        Policy::new(config::Config::parse(CONFIG, Path::new("t.toml"), Path::new(".")).expect("valid").schema)
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>().prop_map(Value::Float),
            ".{0,12}".prop_map(Value::Text),
            prop_oneof![Just("{}".to_string()), Just("[1,2]".to_string()), ".{0,8}"].prop_map(Value::Json),
        ]
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("status"),
            Just("deal_stage"),
            Just("open_tickets"),
            Just("score"),
            Just("vip"),
            Just("usage"),
            Just("title"),
            Just("nope"),
            Just("")
        ]
        .prop_map(String::from)
    }

    fn write() -> impl Strategy<Value = Write> {
        (
            prop_oneof![Just("customer"), Just("ticket"), Just("vendor"), Just("")],
            prop_oneof![Just("acme".to_string()), Just("globex".to_string()), ".{0,3}"],
            proptest::collection::vec((field(), value()), 0..4),
            proptest::collection::vec(field(), 0..2),
        )
            .prop_map(|(kind, id, set, unset)| Write {
                entity: EntityRef::new(kind, id),
                expect: Expect::Version(1),
                set,
                unset,
                fence: None,
            })
    }

    /// What the verdict must be, computed the plain way.
    fn oracle(policy: &Policy, agent: &str, writes: &[Write]) -> &'static str {
        if writes.is_empty() {
            return "invalid";
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in writes {
            let Ok(kind) = policy.schema().check_ref(&w.entity) else { return "invalid" };
            if !seen.insert(w.entity.clone()) {
                return "invalid";
            }
            let mut names = std::collections::BTreeSet::new();
            let all = w.set.iter().map(|(n, v)| (n, Some(v))).chain(w.unset.iter().map(|n| (n, None)));
            for (name, value) in all {
                if !names.insert(name.clone()) {
                    return "invalid";
                }
                let Some(def) = kind.fields.get(name) else { return "invalid" };
                if !def.writers.allows(agent) {
                    return "forbidden";
                }
                if let Some(v) = value
                    && def.ty.check(v).is_err()
                {
                    return "invalid";
                }
            }
        }
        "ok"
    }

    proptest! {
        #[test]
        fn commit_validation_agrees_with_the_oracle(
            agent in prop_oneof![Just("sales"), Just("support"), Just("product"), Just("nobody")],
            writes in proptest::collection::vec(write(), 0..4),
        ) {
            let policy = policy();
            let verdict = match policy.check_commit(agent, &writes) {
                Ok(()) => "ok",
                Err(Refusal::Forbidden(f)) => {
                    prop_assert!(!f.writers.iter().any(|w| w == agent), "forbidden names a writer that is the agent");
                    "forbidden"
                }
                Err(Refusal::Invalid(m)) => {
                    prop_assert!(!m.is_empty());
                    "invalid"
                }
            };
            prop_assert_eq!(verdict, oracle(&policy, agent, &writes));
        }

        #[test]
        fn the_config_parser_never_panics_and_points_inside_the_file(text in ".{0,400}") {
            if let Err(e) = config::Config::parse(&text, Path::new("f.toml"), Path::new(".")) {
                prop_assert!(e.line.is_none_or(|l| l >= 1 && l <= text.lines().count() + 1), "line {:?}", e.line);
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn mutated_configs_never_panic(cut in 0usize..1000, insert in ".{0,6}", at in 0usize..1000) {
            let base = include_str!("../../../concord.toml");
            let mut text: String = base.chars().collect();
            let cut = cut.min(text.len());
            let at = at.min(text.len());
            if text.is_char_boundary(cut) && text.is_char_boundary(at) {
                let (a, b) = if cut < at { (cut, at) } else { (at, cut) };
                text.replace_range(a..(a + (b - a).min(8)), &insert);
                if let Err(e) = config::Config::parse(&text, Path::new("f.toml"), Path::new(".")) {
                    prop_assert!(e.line.is_none_or(|l| l >= 1 && l <= text.lines().count() + 1));
                }
            }
        }
    }
}

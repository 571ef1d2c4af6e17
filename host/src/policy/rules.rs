//! Coordination rules: "Support first during active tickets", "Product
//! defers to Support during escalations", "everyone defers to a human
//! override".
//!
//! Each rule has a subject (which agents, and which written fields or action
//! kinds), a condition in CEL (the Common Expression Language, evaluated by
//! the `cel` crate) and an effect: `defer` ("not now, try later") or `deny`.
//! Rules are compiled once when the config loads; a rule that does not
//! compile stops the start. The store evaluates them inside the write
//! transaction, so the decision and the write see the same state.
//!
//! # Variables a condition can use
//! - `entity`: the entity's fields, as a map (absent fields are absent: use
//!   `has(entity.open_tickets)` before reading one that may be missing);
//! - `version`: the entity's version (0 if it does not exist yet);
//! - `agent`: the agent acting; `action`: the action kind, or `""` for a
//!   write; `fields`: the fields being written (empty for an action);
//! - `pins`: the names of the entity's pinned fields;
//! - `recent`: the entity's events in the last five minutes, oldest first,
//!   each a map with `agent`, `kind`, `fields` (changed field names),
//!   `reason` and `age_ms`;
//! - `now_ms`: the time, in ms since the epoch.
//!
//! A condition is checked at start against these variables and the schema
//! (`condition`). One that still fails to evaluate at run time (a type
//! error, a field an entity lacks read without `has()`) fails closed: the
//! rule refuses with its effect, and the refusal names the rule and the
//! error, so a broken `deny` rule never lets a write through.

use crate::kb::{Denial, GuardInput, Value as KbValue, now_ms};
use cel::{Context, Program, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub when: String,
    program: Program,
    /// Empty: every agent.
    pub agents: Vec<String>,
    /// Written fields it applies to (`*`: any).
    pub fields: Vec<String>,
    /// Action kinds it applies to (`*`: any).
    pub actions: Vec<String>,
    pub defer: bool,
    pub reason: String,
    pub enabled: bool,
    /// Where it is declared in the config.
    pub line: usize,
    /// Whether the condition reads `recent` (which costs a history read).
    needs_recent: bool,
}

impl Rule {
    /// Compiles a rule's condition. `Err` carries the CEL parser's message.
    #[expect(clippy::too_many_arguments, reason = "a plain constructor of the config's fields")]
    pub fn new(
        name: String,
        when: String,
        agents: Vec<String>,
        fields: Vec<String>,
        actions: Vec<String>,
        defer: bool,
        reason: String,
        enabled: bool,
        line: usize,
    ) -> Result<Rule, String> {
        let program = Program::compile(&when).map_err(|e| e.to_string())?;
        let needs_recent = program.references().has_variable("recent");
        Ok(Rule { name, when, program, agents, fields, actions, defer, reason, enabled, line, needs_recent })
    }

    /// Checks the condition against the variables it can see and the
    /// schema's fields (see `condition`).
    pub(crate) fn check(&self, schema: &super::schema::Schema) -> Result<(), String> {
        super::condition::check(&self.program, schema)
    }

    /// Whether the rule's subject covers this write or action.
    fn covers(&self, agent: &str, input: &GuardInput<'_>) -> bool {
        if !self.enabled || !(self.agents.is_empty() || self.agents.iter().any(|a| a == agent)) {
            return false;
        }
        let any = |list: &[String], name: &str| list.iter().any(|x| x == "*" || x == name);
        match (input.action, self.fields.is_empty() && self.actions.is_empty()) {
            (_, true) => true,
            (Some(kind), false) => any(&self.actions, kind),
            (None, false) => input.fields.iter().any(|f| any(&self.fields, f)),
        }
    }
}

/// Every rule of the config, in declaration order. The first that matches
/// decides.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

fn cel_of(v: &KbValue) -> Value {
    match v {
        KbValue::Null => Value::Null,
        KbValue::Boolean(b) => Value::Bool(*b),
        KbValue::Integer(i) => Value::Int(*i),
        KbValue::Float(f) => Value::Float(*f),
        KbValue::Text(s) => Value::String(Arc::new(s.clone())),
        KbValue::Json(s) => {
            serde_json::from_str(s).map_or_else(|_| Value::String(Arc::new(s.clone())), |j| cel_of_json(&j))
        }
    }
}

fn cel_of_json(j: &serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            n.as_i64().map_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN)), Value::Int)
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(cel_of_json).collect())),
        serde_json::Value::Object(o) => {
            let m: HashMap<String, Value> = o.iter().map(|(k, v)| (k.clone(), cel_of_json(v))).collect();
            Value::Map(m.into())
        }
    }
}

fn strings<'a>(items: impl Iterator<Item = &'a str>) -> Value {
    Value::List(Arc::new(items.map(|s| Value::String(Arc::new(s.to_string()))).collect()))
}

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The first enabled rule that covers this write or action and whose
    /// condition holds, as a denial.
    pub fn evaluate(&self, agent: &str, input: &GuardInput<'_>) -> Option<Denial> {
        let covering: Vec<&Rule> = self.rules.iter().filter(|r| r.covers(agent, input)).collect();
        if covering.is_empty() {
            return None;
        }
        let ctx = Self::context(agent, input, covering.iter().any(|r| r.needs_recent));
        for rule in covering {
            let failed = match rule.program.execute(&ctx) {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Bool(false)) => continue,
                Ok(other) => Some(format!("it gave {other:?}, not a boolean")),
                Err(e) => Some(e.to_string()),
            };
            // Fails closed: a rule that cannot decide refuses, saying why,
            // rather than let through what it may exist to stop.
            let reason = match failed {
                None => rule.reason.clone(),
                Some(why) => {
                    tracing::warn!(rule = %rule.name, "rule condition failed on {}: {why}; refused", input.entity);
                    format!(
                        "the rule's condition could not be evaluated on {} ({why}), so the host refuses: \
                         fix `when` in concord.toml (guard a field an entity may lack with has())",
                        input.entity
                    )
                }
            };
            return Some(Denial::Rule {
                entity: input.entity.clone(),
                rule: rule.name.clone(),
                defer: rule.defer,
                reason,
            });
        }
        None
    }

    fn context(agent: &str, input: &GuardInput<'_>, with_recent: bool) -> Context<'static, 'static> {
        let mut ctx = Context::default();
        let fields: HashMap<String, Value> =
            input.current.map(|e| e.fields.iter().map(|(k, v)| (k.clone(), cel_of(v))).collect()).unwrap_or_default();
        let now = now_ms();
        let events = if with_recent { (input.recent)() } else { Vec::new() };
        let recent: Vec<Value> = events
            .iter()
            .map(|e| {
                let m: HashMap<String, Value> = HashMap::from([
                    ("agent".to_string(), Value::String(Arc::new(e.agent.clone()))),
                    ("kind".to_string(), Value::String(Arc::new(e.kind.as_str().to_string()))),
                    ("fields".to_string(), strings(e.changes.iter().map(|c| c.name.as_str()))),
                    ("reason".to_string(), Value::String(Arc::new(e.reason.clone()))),
                    ("age_ms".to_string(), Value::Int(i64::try_from(now.saturating_sub(e.at_ms)).unwrap_or(i64::MAX))),
                ]);
                Value::Map(m.into())
            })
            .collect();
        ctx.add_variable_from_value("entity", Value::Map(fields.into()));
        ctx.add_variable_from_value(
            "version",
            Value::Int(input.current.map_or(0, |e| i64::try_from(e.version).unwrap_or(i64::MAX))),
        );
        ctx.add_variable_from_value("agent", Value::String(Arc::new(agent.to_string())));
        ctx.add_variable_from_value("action", Value::String(Arc::new(input.action.unwrap_or("").to_string())));
        ctx.add_variable_from_value("fields", strings(input.fields.iter().copied()));
        ctx.add_variable_from_value("pins", strings(input.pins.iter().map(|p| p.field.as_str())));
        ctx.add_variable_from_value("recent", Value::List(Arc::new(recent)));
        ctx.add_variable_from_value("now_ms", Value::Int(i64::try_from(now).unwrap_or(i64::MAX)));
        ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::{Entity, EntityRef, Pin};

    fn rule(when: &str, agents: &[&str], fields: &[&str], actions: &[&str]) -> Rule {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect();
        Rule::new("r".into(), when.into(), s(agents), s(fields), s(actions), true, "because".into(), true, 1)
            .expect("compiles")
    }

    fn acme(open_tickets: Option<i64>) -> Entity {
        let mut fields = crate::kb::Fields::new();
        fields.insert("status".into(), KbValue::Text("active".into()));
        if let Some(n) = open_tickets {
            fields.insert("open_tickets".into(), KbValue::Integer(n));
        }
        Entity {
            entity: EntityRef::new("customer", "acme"),
            version: 3,
            fields,
            updated_at_ms: 0,
            updated_by: "x".into(),
            seq: 3,
        }
    }

    fn check(rules: &Rules, agent: &str, e: &Entity, fields: Vec<&str>, action: Option<&str>, pins: &[Pin]) -> bool {
        let input = GuardInput { entity: &e.entity, current: Some(e), fields, action, pins, recent: &Vec::new };
        rules.evaluate(agent, &input).is_some()
    }

    #[test]
    fn the_support_first_rule_defers_sales_status_writes_and_upsells_only() {
        let rules = Rules::new(vec![rule(
            "has(entity.open_tickets) && entity.open_tickets > 0",
            &["sales"],
            &["status"],
            &["email.upsell"],
        )]);
        let busy = acme(Some(2));
        assert!(check(&rules, "sales", &busy, vec!["status"], None, &[]));
        assert!(check(&rules, "sales", &busy, vec![], Some("email.upsell"), &[]));
        assert!(!check(&rules, "sales", &busy, vec!["deal_stage"], None, &[]), "other fields are not covered");
        assert!(!check(&rules, "support", &busy, vec!["status"], None, &[]), "other agents are not covered");
        assert!(!check(&rules, "sales", &acme(Some(0)), vec!["status"], None, &[]), "no open tickets");
        assert!(!check(&rules, "sales", &acme(None), vec!["status"], None, &[]), "has() guards a missing field");
    }

    #[test]
    fn pins_and_disabled_rules() {
        let mut r = rule("size(pins) > 0", &[], &[], &["*"]);
        let pin = Pin { field: "status".into(), by: "alice".into(), reason: "r".into(), at_ms: 0, seq: 1 };
        let rules = Rules::new(vec![rule("size(pins) > 0", &[], &[], &["*"])]);
        assert!(check(&rules, "product", &acme(None), vec![], Some("anything"), std::slice::from_ref(&pin)));
        assert!(!check(&rules, "product", &acme(None), vec![], Some("anything"), &[]));
        r.enabled = false;
        let rules = Rules::new(vec![r]);
        assert!(!check(&rules, "product", &acme(None), vec![], Some("anything"), &[pin]));
    }

    #[test]
    fn recent_events_are_read_only_when_a_rule_uses_them() {
        let e = acme(Some(1));
        let reads = std::cell::Cell::new(0);
        let recent = || {
            reads.set(reads.get() + 1);
            vec![]
        };
        let input = GuardInput {
            entity: &e.entity,
            current: Some(&e),
            fields: vec!["status"],
            action: None,
            pins: &[],
            recent: &recent,
        };
        Rules::new(vec![rule("entity.open_tickets > 0", &[], &[], &[])]).evaluate("sales", &input);
        assert_eq!(reads.get(), 0);
        Rules::new(vec![rule("size(recent) == 0", &[], &[], &[])]).evaluate("sales", &input);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_failing_condition_fails_closed_naming_the_rule_and_the_error() {
        // `open_tickets` read without has(), on an entity that lacks it.
        let rules = Rules::new(vec![rule("entity.open_tickets > 0", &[], &[], &[])]);
        let e = acme(None);
        let input = GuardInput {
            entity: &e.entity,
            current: Some(&e),
            fields: vec!["status"],
            action: None,
            pins: &[],
            recent: &Vec::new,
        };
        match rules.evaluate("sales", &input) {
            Some(Denial::Rule { rule, reason, .. }) => {
                assert_eq!(rule, "r");
                assert!(reason.contains("could not be evaluated") && reason.contains("open_tickets"), "{reason}");
            }
            other => panic!("refused, not {other:?}"),
        }
        // And a condition that is not a boolean.
        let rules = Rules::new(vec![rule("version", &[], &[], &[])]);
        assert!(check(&rules, "sales", &acme(Some(1)), vec!["status"], None, &[]));
        // A condition that holds or does not is not touched.
        assert!(!check(
            &Rules::new(vec![rule("version > 100", &[], &[], &[])]),
            "sales",
            &e,
            vec!["status"],
            None,
            &[]
        ));
        assert!(
            Rule::new("bad".into(), "entity.(".into(), vec![], vec![], vec![], true, String::new(), true, 1).is_err()
        );
    }
}

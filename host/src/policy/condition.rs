//! A rule's CEL condition, checked at start against what it can see.
//!
//! CEL itself resolves names only when it evaluates, so a typo (`sise(pins)`,
//! `entity.stauts`) compiles, and at run time fails to evaluate. A `deny`
//! rule that cannot be evaluated must not let the write through, and the
//! host does refuse then (see `rules`); but a typo is best caught before
//! the host starts. [`check`] walks the parsed condition and refuses:
//! - a variable that is not one of [`VARIABLES`] (names a comprehension
//!   binds, such as `e` in `recent.exists(e, ...)`, are its own);
//! - a function that the CEL standard library does not declare, globally
//!   or as a method;
//! - `entity.FIELD` where no kind declares `FIELD`.
//!
//! What it cannot see: a field of an event in `recent` (a map built at run
//! time), an index such as `entity['status']`, and a type mismatch (CEL is
//! dynamically typed here). Those still fail closed at run time.

use super::schema::Schema;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, ExecutionError, Program};
use std::collections::BTreeSet;

/// The variables a condition can use (bound by `Rules::context`).
pub const VARIABLES: [&str; 8] = ["entity", "version", "agent", "action", "fields", "pins", "recent", "now_ms"];

/// Type names CEL lets a condition use as values (`type(x) == string`).
const TYPE_NAMES: [&str; 10] = ["bool", "bytes", "double", "int", "list", "map", "null_type", "string", "type", "uint"];

#[derive(Default)]
struct Found<'a> {
    variables: BTreeSet<&'a str>,
    functions: BTreeSet<&'a str>,
    entity_fields: BTreeSet<&'a str>,
}

/// Checks a compiled condition; `Err` says what is unknown and what is
/// known instead.
pub fn check(program: &Program, schema: &Schema) -> Result<(), String> {
    let mut found = Found::default();
    walk(program.expression(), &mut Vec::new(), &mut found);
    if let Some(v) = found.variables.iter().find(|v| !VARIABLES.contains(v) && !TYPE_NAMES.contains(v)) {
        return Err(format!("it uses `{v}`, which is not a variable a condition can see ({})", VARIABLES.join(", ")));
    }
    if let Some(f) = found.functions.iter().find(|f| !declared(f)) {
        return Err(format!(
            "it calls `{f}`, which is not a CEL function (such as size, has, contains, startsWith, exists, all)"
        ));
    }
    let declared_fields: BTreeSet<&str> =
        schema.kinds.values().flat_map(|k| k.fields.keys()).map(String::as_str).collect();
    if let Some(field) = found.entity_fields.iter().find(|f| !declared_fields.contains(*f)) {
        let known: Vec<&str> = declared_fields.iter().copied().collect();
        return Err(format!(
            "it reads `entity.{field}`, and no kind declares a field `{field}` (fields: {})",
            known.join(", ")
        ));
    }
    Ok(())
}

/// Collects the free variables, the functions called and the fields read
/// as `entity.FIELD`. `bound` holds the names comprehensions bind.
fn walk<'a>(e: &'a IdedExpr, bound: &mut Vec<&'a str>, found: &mut Found<'a>) {
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            // `@`-names are the parser's own (a macro's accumulator).
            if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                found.variables.insert(name);
            }
        }
        Expr::Select(select) => {
            if let Expr::Ident(root) = &select.operand.expr
                && root == "entity"
                && !bound.contains(&"entity")
            {
                found.entity_fields.insert(&select.field);
            }
            walk(&select.operand, bound, found);
        }
        Expr::Call(call) => {
            // Operators are calls too (`_&&_`, `!_`, `@in`): only names a
            // user writes are checked.
            if call.func_name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                found.functions.insert(&call.func_name);
            }
            if let Some(target) = &call.target {
                walk(target, bound, found);
            }
            for arg in &call.args {
                walk(arg, bound, found);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, found);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v) = &c.iter_var2 {
                bound.push(v);
            }
            bound.push(&c.accu_var);
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(part, bound, found);
            }
            bound.truncate(depth);
        }
        Expr::List(list) => list.elements.iter().for_each(|x| walk(x, bound, found)),
        Expr::Map(map) => map.entries.iter().for_each(|x| walk_entry(&x.expr, bound, found)),
        Expr::Struct(s) => s.entries.iter().for_each(|x| walk_entry(&x.expr, bound, found)),
    }
}

fn walk_entry<'a>(entry: &'a EntryExpr, bound: &mut Vec<&'a str>, found: &mut Found<'a>) {
    match entry {
        EntryExpr::StructField(f) => walk(&f.value, bound, found),
        EntryExpr::MapEntry(m) => {
            walk(&m.key, bound, found);
            walk(&m.value, bound, found);
        }
    }
}

/// Whether the CEL standard library declares `name`, as a function or a
/// method. The `cel` crate keeps its declarations private, so this asks
/// the evaluator: a call of an undeclared name fails as an undeclared
/// reference to it, while a declared one called with no arguments fails as
/// a missing overload instead.
fn declared(name: &str) -> bool {
    let ctx = Context::default();
    let undeclared = |source: String| match Program::compile(&source).map(|p| p.execute(&ctx)) {
        Ok(Err(ExecutionError::UndeclaredReference(n))) => n.as_str() == name,
        _ => false,
    };
    !(undeclared(format!("{name}()")) && undeclared(format!("''.{name}()")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::{FieldDef, FieldType, KindDef, Writers};

    fn schema() -> Schema {
        let field = |ty| FieldDef { ty, writers: Writers::Owner("a".into()), line: 1 };
        let fields =
            [("status".to_string(), field(FieldType::Text)), ("open_tickets".into(), field(FieldType::Integer))];
        Schema {
            kinds: [("customer".to_string(), KindDef { fields: fields.into(), leases: Vec::new() })].into(),
            ..Schema::default()
        }
    }

    fn checked(when: &str) -> Result<(), String> {
        check(&Program::compile(when).expect("compiles"), &schema())
    }

    #[test]
    fn the_example_conditions_pass() {
        for when in [
            "has(entity.open_tickets) && entity.open_tickets > 0",
            "has(entity.status) && entity.status == 'at_risk'",
            "size(pins) > 0",
            "recent.exists(e, e.agent != agent && 'status' in e.fields && e.age_ms < 60000)",
            "action.startsWith('email.') && now_ms > 0 && version >= 1 && fields.all(f, f != 'x')",
            "type(entity.status) == string && int('3') == 3 && entity.status.contains('risk')",
            "[1, 2].map(x, x * 2).size() == 2 && {'a': agent}['a'] == agent",
        ] {
            assert_eq!(checked(when), Ok(()), "{when}");
        }
    }

    #[test]
    fn typos_are_named() {
        let e = checked("sise(pins) > 0").unwrap_err();
        assert!(e.contains("`sise`"), "{e}");
        let e = checked("entity.status.startWith('a')").unwrap_err();
        assert!(e.contains("`startWith`"), "{e}");
        let e = checked("has(entity.stauts) && entity.stauts == 'x'").unwrap_err();
        assert!(e.contains("`entity.stauts`") && e.contains("open_tickets, status"), "{e}");
        let e = checked("agnt == 'sales'").unwrap_err();
        assert!(e.contains("`agnt`") && e.contains("entity, version"), "{e}");
        // A comprehension's variable is bound only inside it.
        let e = checked("recent.exists(e, e.agent == agent) && e.agent == 'x'").unwrap_err();
        assert!(e.contains("`e`"), "{e}");
    }
}

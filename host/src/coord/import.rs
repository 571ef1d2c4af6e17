//! Bringing data in and out: `concord import` / `POST /v1/entities:import`
//! and `concord export` / `GET /v1/entities`.
//!
//! An import writes as an operator (`human:NAME`), through the same store
//! transaction as every commit: the schema is checked for every row, each
//! row names the version it expects (or that the entity is absent, the
//! default), and a batch is all or nothing. Every problem names the row's
//! line in its file.
//!
//! Two formats:
//! - JSON lines: `{"entity": "customer/acme", "fields": {"name": "Acme"},
//!   "expect": "absent" | VERSION}`. The lines `concord export` writes
//!   (which also carry `version`, `updated_at_ms` and `updated_by`, ignored
//!   here) import as they are into a knowledge base without those entities.
//! - CSV with a header row: `entity`, optionally `expect`, then one column
//!   per field, each cell read as the field's declared type (as `concord pin`
//!   reads `FIELD=VALUE`); an empty cell leaves the field out.

use crate::audit::{Decision, calls};
use crate::kb::{
    Actor, CommitOutcome, CommitRequest, Entity, EntityRef, Event, EventKind, Expect, Store, StoreError, Value, Write,
    now_ms,
};
use crate::policy::MAX_WRITES_PER_COMMIT;
use crate::policy::schema::{FieldType, Schema};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The most rows one batch (one commit) takes.
pub const MAX_BATCH: usize = MAX_WRITES_PER_COMMIT;

/// One row to import, checked against the schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its line in the file it came from (1-based), for errors.
    pub line: usize,
    pub entity: EntityRef,
    pub expect: Expect,
    pub fields: Vec<(String, Value)>,
}

/// A row as JSON: the JSON-lines format, and the API's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRow {
    /// `kind/id`.
    pub entity: String,
    /// The fields, as plain JSON values of their declared types.
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// `"absent"` (the default: the entity must not exist yet) or the
    /// version the entity must be at.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub expect: Option<serde_json::Value>,
    /// The row's line in its file, for errors (the CLI sends it).
    #[serde(default)]
    pub line: Option<usize>,
    /// What `concord export` also writes; ignored.
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub version: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub updated_at_ms: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub updated_by: Option<serde_json::Value>,
}

/// One row that cannot be imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowError {
    pub line: usize,
    pub problem: String,
}

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Rows that do not fit the schema or the format: nothing was written.
    #[error("{}", describe_rows(.0))]
    Rows(Vec<RowError>),
    /// A row's expectation did not hold when the batch was committed:
    /// nothing of the batch was written.
    #[error("line {line}: {detail}; nothing of this batch was written")]
    Conflict { line: usize, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn describe_rows(rows: &[RowError]) -> String {
    let mut s = format!("{} row(s) cannot be imported (nothing was written):", rows.len());
    for r in rows.iter().take(50) {
        s.push_str(&format!("\n  line {}: {}", r.line, r.problem));
    }
    if rows.len() > 50 {
        s.push_str(&format!("\n  ... and {} more", rows.len() - 50));
    }
    s
}

/// Reads a cell (CSV) or a command-line value as a field's type (`null`
/// for null).
pub fn parse_cell(ty: FieldType, raw: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("`{raw}` is not {what}");
    let value = match (ty, raw) {
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
    ty.check(&value)?;
    Ok(value)
}

/// Reads a plain JSON value as a field's type: the inverse of
/// [`Value::to_json`] for that type.
pub fn from_json(ty: FieldType, json: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let value = match (ty, json) {
        (_, J::Null) => Value::Null,
        (FieldType::Text, J::String(s)) => Value::Text(s.clone()),
        (FieldType::Integer, J::Number(n)) if n.as_i64().is_some() => Value::Integer(n.as_i64().unwrap_or(0)),
        (FieldType::Float, J::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (FieldType::Boolean, J::Bool(b)) => Value::Boolean(*b),
        (FieldType::Json, other) => Value::Json(other.to_string()),
        (ty, other) => return Err(format!("{other} is not {}", ty.article())),
    };
    ty.check(&value)?;
    Ok(value)
}

/// Checks one raw row against the schema.
pub fn check_row(schema: &Schema, raw: &RawRow, line: usize) -> Result<Row, RowError> {
    let err = |problem: String| RowError { line, problem };
    let entity: EntityRef = raw.entity.parse().map_err(|e: String| err(format!("field `entity`: {e}")))?;
    let kind = schema.check_ref(&entity).map_err(|e| err(format!("field `entity`: {e}")))?;
    let expect = match &raw.expect {
        None => Expect::Absent,
        Some(serde_json::Value::String(s)) if s == "absent" => Expect::Absent,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Expect::Version(n),
            _ => return Err(err(format!("field `expect`: {v} is not \"absent\" or a version (1 or more)"))),
        },
    };
    if raw.fields.is_empty() {
        return Err(err(format!("{entity} has no `fields` to import")));
    }
    let mut fields = Vec::with_capacity(raw.fields.len());
    for (name, json) in &raw.fields {
        let def = kind.fields.get(name).ok_or_else(|| {
            let known: Vec<&str> = kind.fields.keys().map(String::as_str).collect();
            err(format!("kind `{}` has no field `{name}` (fields: {})", entity.kind, known.join(", ")))
        })?;
        let value = from_json(def.ty, json).map_err(|e| err(format!("field `{name}`: {e}")))?;
        fields.push((name.clone(), value));
    }
    Ok(Row { line, entity, expect, fields })
}

/// Parses a JSON-lines file into raw rows with their lines (blank lines
/// and lines starting with `#` are skipped). Every bad line is reported.
pub fn parse_jsonl(text: &str) -> Result<Vec<RawRow>, Vec<RowError>> {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match serde_json::from_str::<RawRow>(t) {
            Ok(mut row) => {
                row.line = Some(i + 1);
                rows.push(row);
            }
            Err(e) => errors.push(RowError {
                line: i + 1,
                problem: format!(
                    "not an import row ({e}); a row is {{\"entity\": \"kind/id\", \"fields\": {{...}}, \"expect\": \"absent\" | VERSION}}"
                ),
            }),
        }
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

/// Parses a CSV file (header `entity`, optional `expect`, then fields)
/// into raw rows, reading each cell as its field's declared type.
pub fn parse_csv(text: &str, schema: &Schema) -> Result<Vec<RawRow>, Vec<RowError>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let one = |line: usize, problem: String| vec![RowError { line, problem }];
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| one(1, format!("cannot read the header: {e}")))?
        .iter()
        .map(String::from)
        .collect();
    if header.first().map(String::as_str) != Some("entity") {
        return Err(one(1, "the first column must be `entity` (then `expect`, optionally, then one per field)".into()));
    }
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                errors.push(RowError { line, problem: format!("not a CSV row: {e}") });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let entity = record.get(0).unwrap_or_default().to_string();
        let mut row = RawRow {
            entity: entity.clone(),
            fields: serde_json::Map::new(),
            expect: None,
            line: Some(line),
            version: None,
            updated_at_ms: None,
            updated_by: None,
        };
        let kind = entity.parse::<EntityRef>().ok().and_then(|e| schema.kinds.get(&e.kind));
        for (name, cell) in header.iter().zip(record.iter()).skip(1) {
            if cell.is_empty() {
                continue;
            }
            if name == "expect" {
                row.expect = Some(match cell.parse::<u64>() {
                    Ok(n) => n.into(),
                    Err(_) => cell.into(),
                });
                continue;
            }
            // Typed by the schema here; a field or kind it does not know
            // is named by `check_row`.
            let typed = kind.and_then(|k| k.fields.get(name)).map(|def| parse_cell(def.ty, cell));
            match typed {
                Some(Ok(v)) => {
                    row.fields.insert(name.clone(), v.to_json());
                }
                Some(Err(e)) => errors.push(RowError { line, problem: format!("column `{name}`: {e}") }),
                None => {
                    row.fields.insert(name.clone(), cell.into());
                }
            }
        }
        rows.push(row);
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

/// Checks every raw row; all are checked, and every problem reported.
pub fn check_rows(schema: &Schema, raw: &[RawRow]) -> Result<Vec<Row>, ImportError> {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    let mut seen: HashMap<EntityRef, usize> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let line = r.line.unwrap_or(i + 1);
        match check_row(schema, r, line) {
            Ok(row) => {
                if let Some(first) = seen.insert(row.entity.clone(), line) {
                    errors.push(RowError {
                        line,
                        problem: format!("{} is on line {first} too; merge the two rows", row.entity),
                    });
                }
                rows.push(row);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(rows) } else { Err(ImportError::Rows(errors)) }
}

/// Writes one batch of checked rows as `human:{by}`, all or nothing.
/// Returns the events, in row order.
pub fn import(store: &dyn Store, rows: &[Row], by: &str, source: &str) -> Result<Vec<Event>, ImportError> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    if rows.len() > MAX_BATCH {
        return Err(ImportError::Rows(vec![RowError {
            line: rows[MAX_BATCH].line,
            problem: format!("a batch takes at most {MAX_BATCH} rows; split the import (`concord import` does)"),
        }]));
    }
    let writes: Vec<Write> = rows
        .iter()
        .map(|r| Write {
            entity: r.entity.clone(),
            expect: r.expect,
            set: r.fields.clone(),
            unset: vec![],
            fence: None,
        })
        .collect();
    let mut fields: Vec<String> = rows.iter().flat_map(|r| r.fields.iter().map(|(n, _)| n.clone())).collect();
    fields.sort();
    fields.dedup();
    let (first, last) = (rows[0].line, rows[rows.len() - 1].line);
    let args = serde_json::json!({ "source": source, "rows": rows.len(), "lines": format!("{first}-{last}") });
    let draft =
        super::operator::human_draft_of(by, calls::IMPORT, rows.iter().map(|r| r.entity.key()).collect(), args, fields);
    let (n, label) = (rows.len(), source.to_string());
    let audit = Box::new(move |o: &CommitOutcome| {
        let mut d = draft.clone();
        match o {
            CommitOutcome::Committed { events, .. } => {
                let seqs = (events.first().map_or(0, |e| e.seq), events.last().map_or(0, |e| e.seq));
                d.outcome = format!("imported {n} rows from {label} (events {}-{})", seqs.0, seqs.1);
            }
            CommitOutcome::Conflict(c) => {
                d.decision = Decision::Conflict;
                d.rule = Some("version".into());
                d.outcome = format!("nothing imported: {c}");
            }
            CommitOutcome::Denied(x) => {
                d.decision = Decision::Denied;
                d.outcome = format!("nothing imported: {x}");
            }
        }
        d
    });
    let request = CommitRequest {
        actor: Actor { name: format!("human:{by}"), invocation: 0 },
        reason: format!("import from {source}"),
        writes,
        at_ms: now_ms(),
        by_human: true,
        kind: EventKind::Updated,
    };
    let (outcome, _) = store.commit(request, Box::new(|_| None), audit)?;
    match outcome {
        CommitOutcome::Committed { events, .. } => Ok(events),
        CommitOutcome::Conflict(c) => {
            let line = rows.iter().find(|r| r.entity == c.entity).map_or(0, |r| r.line);
            let detail = match c.current_version {
                Some(v) if c.expected == Expect::Absent => {
                    format!("{} exists already (version {v}); give `\"expect\": {v}` to update it", c.entity)
                }
                _ => c.to_string(),
            };
            Err(ImportError::Conflict { line, detail })
        }
        CommitOutcome::Denied(d) => Err(ImportError::Store(StoreError::Rejected(d.to_string()))),
    }
}

/// An entity as `concord get --json`, `concord export` and the API show it:
/// its fields as plain JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityView {
    /// `kind/id`.
    pub entity: String,
    pub version: u64,
    pub updated_at_ms: u64,
    pub updated_by: String,
    /// Field values as plain JSON.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The live lease on the entity, if there is one (in `get`'s view of
    /// the present only; never in an export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::kb::Lease>,
    /// Its pinned fields: who pinned each and why (in the API's view of
    /// the present only; never in an export).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<crate::kb::Pin>,
}

impl EntityView {
    pub fn of(e: &Entity) -> Self {
        EntityView {
            entity: e.entity.key(),
            version: e.version,
            updated_at_ms: e.updated_at_ms,
            updated_by: e.updated_by.clone(),
            fields: e.fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect(),
            lease: None,
            pins: vec![],
        }
    }

    /// The entity back, its values typed by `schema` (a field the schema
    /// does not know is typed by its JSON: a string is text). `seq` is not
    /// carried by the view: it is 0.
    pub fn into_entity(self, schema: &Schema) -> Result<Entity, String> {
        let entity: EntityRef = self.entity.parse()?;
        let kind = schema.kinds.get(&entity.kind);
        let mut fields = crate::kb::Fields::new();
        for (name, json) in self.fields {
            let ty = kind.and_then(|k| k.fields.get(&name)).map(|d| d.ty).unwrap_or(match &json {
                serde_json::Value::String(_) => FieldType::Text,
                serde_json::Value::Bool(_) => FieldType::Boolean,
                serde_json::Value::Number(n) if n.is_i64() => FieldType::Integer,
                serde_json::Value::Number(_) => FieldType::Float,
                _ => FieldType::Json,
            });
            let value = from_json(ty, &json).map_err(|e| format!("{}.{name}: {e}", entity))?;
            fields.insert(name, value);
        }
        Ok(Entity {
            entity,
            version: self.version,
            fields,
            updated_at_ms: self.updated_at_ms,
            updated_by: self.updated_by,
            seq: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;
    use std::path::Path;

    fn schema() -> Schema {
        let text = "[kinds.customer.fields]\nname = { type = \"text\", owner = \"s\" }\nvalue = { type = \"integer\", owner = \"s\" }\nscore = { type = \"float\", owner = \"s\" }\ntags = { type = \"json\", owner = \"s\" }\nvip = { type = \"boolean\", owner = \"s\" }\n";
        Config::parse(text, Path::new("c.toml"), Path::new(".")).expect("config").schema
    }

    #[test]
    fn jsonl_and_csv_rows_are_typed_by_the_schema() {
        let s = schema();
        let jsonl = "# customers\n{\"entity\":\"customer/a\",\"fields\":{\"name\":\"A\",\"value\":3,\"tags\":[1],\"vip\":true}}\n\n{\"entity\":\"customer/b\",\"fields\":{\"score\":1.5},\"expect\":4}\n";
        let rows = check_rows(&s, &parse_jsonl(jsonl).expect("parses")).expect("fits");
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].expect, Expect::Absent);
        assert!(rows[0].fields.contains(&("tags".into(), Value::Json("[1]".into()))));
        assert_eq!((rows[1].line, rows[1].expect), (4, Expect::Version(4)));
        let csv = "entity,expect,name,value,vip\ncustomer/a,,\"A, Inc\",3,true\ncustomer/b,2,B,,false\n";
        let rows = check_rows(&s, &parse_csv(csv, &s).expect("parses")).expect("fits");
        assert_eq!(rows[0].line, 2);
        assert!(rows[0].fields.contains(&("name".into(), Value::Text("A, Inc".into()))));
        assert!(rows[0].fields.contains(&("value".into(), Value::Integer(3))));
        assert_eq!(rows[1].expect, Expect::Version(2));
        assert_eq!(rows[1].fields.len(), 2, "an empty cell leaves the field out");
    }

    #[test]
    fn every_bad_row_is_named_by_its_line() {
        let s = schema();
        let jsonl = "{\"entity\":\"customer/a\",\"fields\":{\"value\":\"three\"}}\n{\"entity\":\"vendor/x\",\"fields\":{\"name\":\"X\"}}\n{\"entity\":\"customer/a\",\"fields\":{\"nmae\":\"A\"}}\n{\"entity\":\"customer/c\",\"fields\":{\"name\":\"C\"},\"expect\":0}\n{\"entity\":\"customer/d\",\"fields\":{\"name\":\"D\"}}\n{\"entity\":\"customer/d\",\"fields\":{\"name\":\"D\"}}\n";
        let Err(ImportError::Rows(errors)) = check_rows(&s, &parse_jsonl(jsonl).expect("parses")) else {
            panic!("refused")
        };
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 6], "{errors:?}");
        assert!(errors[0].problem.contains("field `value`") && errors[0].problem.contains("integer"), "{errors:?}");
        assert!(errors[1].problem.contains("unknown entity kind `vendor`"), "{errors:?}");
        assert!(errors[2].problem.contains("no field `nmae`"), "{errors:?}");
        assert!(errors[4].problem.contains("line 5 too"), "{errors:?}");
        let errors = parse_jsonl("{\"entity\":\"customer/a\",\"fieldz\":{}}\nnot json\n").expect_err("bad lines");
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![1, 2]);
        let errors = parse_csv("name,entity\nA,customer/a\n", &s).expect_err("bad header");
        assert!(errors[0].problem.contains("first column must be `entity`"), "{errors:?}");
        let errors = parse_csv("entity,value\ncustomer/a,x\n", &s).expect_err("bad cell");
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn a_view_types_back_into_the_entity() {
        let s = schema();
        let mut fields = crate::kb::Fields::new();
        fields.insert("name".into(), Value::Text("1".into()));
        fields.insert("value".into(), Value::Integer(1));
        fields.insert("score".into(), Value::Float(2.0));
        fields.insert("tags".into(), Value::Json("{\"a\":[1,2]}".into()));
        let e = Entity {
            entity: EntityRef::new("customer", "a"),
            version: 3,
            fields,
            updated_at_ms: 9,
            updated_by: "s".into(),
            seq: 0,
        };
        assert_eq!(EntityView::of(&e).into_entity(&s).expect("typed"), e);
    }
}

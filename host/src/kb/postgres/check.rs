//! `concord check` on PostgreSQL: the server guards its own pages (its
//! checksums, `amcheck`), so this reads every record Concord stored and
//! decodes it, table by table, and checks that each stored seq or id is
//! the one its record claims. Changes nothing; a host may be running.

use super::reads::Pages;
use super::{PgOptions, PgStore};
use crate::kb::Access;
use crate::kb::redb::{CheckReport, TableCheck};

/// At most this many problems are listed per table; the rest are counted.
const LISTED: usize = 10;

/// Tables keyed by a bigint, read page by page: (table, the query).
const PAGED: &[(&str, &str)] = &[
    ("concord_events", "SELECT seq, body FROM concord_events WHERE seq > $1 ORDER BY seq LIMIT $2"),
    ("concord_audit", "SELECT seq, body FROM concord_audit WHERE seq > $1 ORDER BY seq LIMIT $2"),
    ("concord_actions", "SELECT id, body FROM concord_actions WHERE id > $1 ORDER BY id LIMIT $2"),
    ("concord_change_requests", "SELECT id, body FROM concord_change_requests WHERE id > $1 ORDER BY id LIMIT $2"),
];

/// Tables keyed by text, read whole (they hold one row per entity).
const WHOLE: &[(&str, &str)] = &[
    ("concord_entities", "SELECT key, body FROM concord_entities"),
    ("concord_pins", "SELECT entity || '.' || field, body FROM concord_pins"),
    ("concord_leases", "SELECT entity, body FROM concord_leases"),
];

struct Tally(TableCheck);

impl Tally {
    fn new(table: &str) -> Self {
        Tally(TableCheck { table: table.into(), records: 0, problems: vec![], unlisted: 0 })
    }

    fn problem(&mut self, p: String) {
        if self.0.problems.len() < LISTED {
            self.0.problems.push(p);
        } else {
            self.0.unlisted += 1;
        }
    }
}

/// What the record claims its key is, if the table's records carry one.
fn claimed(table: &str, body: &serde_json::Value) -> Option<i64> {
    let field = match table {
        "concord_events" | "concord_audit" => "seq",
        "concord_actions" | "concord_change_requests" => "id",
        _ => return None,
    };
    body.get(field).and_then(serde_json::Value::as_i64)
}

/// Decodes one record as the type its table holds.
fn decodes(table: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    use crate::audit::AuditEntry;
    use crate::kb::model::{ActionRecord, ChangeRequest, Entity, Event, Lease, Pin};
    fn as_json<T: serde::de::DeserializeOwned + serde::Serialize>(bytes: &[u8]) -> Result<serde_json::Value, String> {
        let value: T = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        serde_json::to_value(&value).map_err(|e| e.to_string())
    }
    match table {
        "concord_events" => as_json::<Event>(bytes),
        "concord_audit" => as_json::<AuditEntry>(bytes),
        "concord_actions" => as_json::<ActionRecord>(bytes),
        "concord_change_requests" => as_json::<ChangeRequest>(bytes),
        "concord_entities" => as_json::<Entity>(bytes),
        "concord_pins" => as_json::<Pin>(bytes),
        _ => as_json::<Lease>(bytes),
    }
}

impl PgStore {
    /// Reads and decodes every record (see the module docs).
    pub fn check(options: &PgOptions) -> Result<CheckReport, super::OpenError> {
        let store = PgStore::open(options, Access::ReadOnly)?;
        let mut tables = Vec::new();
        for (table, sql) in PAGED {
            let mut tally = Tally::new(table);
            for row in Pages::new(&store, sql, 0) {
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        tally.problem(format!("reading stopped: {e}"));
                        break;
                    }
                };
                tally.0.records += 1;
                let key: i64 = row.get(0);
                match decodes(table, row.get::<_, &[u8]>(1)) {
                    Ok(value) => match claimed(table, &value) {
                        Some(claim) if claim != key => {
                            tally.problem(format!("row {key} holds the record of {claim} (moved)"))
                        }
                        _ => {}
                    },
                    Err(e) => tally.problem(format!("row {key} does not decode: {e}")),
                }
            }
            tables.push(tally.0);
        }
        for (table, sql) in WHOLE {
            let mut tally = Tally::new(table);
            match store.query(*sql, vec![]) {
                Ok(rows) => {
                    for row in rows {
                        tally.0.records += 1;
                        let key: String = row.get(0);
                        if let Err(e) = decodes(table, row.get::<_, &[u8]>(1)) {
                            tally.problem(format!("{key} does not decode: {e}"));
                        }
                    }
                }
                Err(e) => tally.problem(format!("cannot read it: {e}")),
            }
            tables.push(tally.0);
        }
        Ok(CheckReport { tables })
    }
}

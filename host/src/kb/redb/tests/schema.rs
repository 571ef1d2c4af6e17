//! The layout: damaged records named by `check`, upgrades of older layouts
//! and the journals they left.

use super::*;

/// `check` decodes every record: a value that does not decode, an
/// entity under another's key and an audit index run cut short are each
/// named with their table and record, and the rest reads clean.
#[test]
fn check_names_every_record_that_does_not_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    for c in 1..=3 {
        count_up(&store, c, 2);
    }
    drop(store);
    let clean = RedbStore::check(&path).expect("check");
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!(clean.tables.len(), 19);
    assert!(clean.records() > 6 + 3 + 6, "{clean:?}");

    let store = RedbStore::open(&path).expect("store");
    let c1 = store.get(&EntityRef { kind: "c".into(), id: "1".into() }).expect("get").expect("exists");
    let txn = store.write().expect("write");
    {
        txn.open_table(EVENTS).expect("events").insert(2, b"{not json".as_slice()).expect("insert");
        let c1 = serde_json::to_vec(&c1).expect("json");
        txn.open_table(ENTITIES).expect("entities").insert("c/2", c1.as_slice()).expect("insert");
        txn.open_table(AUDIT_BY_AGENT).expect("runs").insert(("x", 1), [0x81u8].as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
    drop(store);
    let report = RedbStore::check(&path).expect("check");
    let problems: Vec<String> =
        report.tables.iter().flat_map(|t| t.problems.iter().map(move |p| format!("{}: {p}", t.table))).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("events: record 2: does not decode"), "{problems:?}");
    assert_eq!(problems[1], "entities: record 2: holds c/1 under the key c/2");
    assert!(problems[2].starts_with("audit_runs_by_agent: record "), "{problems:?}");
    assert_eq!(report.records(), clean.records() + 1, "every record was read, the new run too");
}

/// Turns the store at `path` (holding `log`) into a file of layout
/// version `old`, as that version wrote it: without the tables of
/// version 5; before version 4, an index row per seq (and none by
/// agent and entity in version 1), no runs.
fn make_layout(path: &Path, old: u64, log: &[AuditEntry]) {
    let db = Database::create(path).expect("db");
    let txn = db.begin_write().expect("write");
    txn.delete_table(REQUEST_KEYS).expect("delete");
    txn.delete_table(REQUEST_KEYS_BY_TIME).expect("delete");
    txn.delete_table(HOST_STATE).expect("delete");
    if old == 4 {
        txn.open_table(META).expect("meta").insert("schema_version", old).expect("version");
        return txn.commit().expect("commit");
    }
    txn.delete_table(AUDIT_BY_AGENT).expect("delete");
    txn.delete_table(AUDIT_BY_ENTITY).expect("delete");
    txn.delete_table(AUDIT_BY_INVOCATION).expect("delete");
    txn.delete_table(AUDIT_BY_AGENT_ENTITY).expect("delete");
    for e in log {
        txn.open_table(retired::AUDIT_BY_AGENT).expect("t").insert((e.agent.as_str(), e.seq), ()).expect("row");
        txn.open_table(retired::AUDIT_BY_INVOCATION).expect("t").insert((e.invocation, e.seq), ()).expect("row");
        for k in &e.entities {
            txn.open_table(retired::AUDIT_BY_ENTITY).expect("t").insert((k.as_str(), e.seq), ()).expect("row");
            if old > 1 {
                let mut t = txn.open_table(retired::AUDIT_BY_AGENT_ENTITY).expect("t");
                t.insert((e.agent.as_str(), k.as_str(), e.seq), ()).expect("row");
            }
        }
    }
    let mut meta = txn.open_table(META).expect("meta");
    meta.insert("schema_version", old).expect("version");
    if old < 3 {
        meta.remove(AUDIT_INDEXED).expect("before version 3");
    }
    drop(meta);
    txn.commit().expect("commit");
}

/// A version-3 store with a journal record that version wrote (an
/// audit entry, its rows in the old indexes, `audit_indexed`): the
/// record is applied to the old tables first, then the upgrade builds
/// the runs from the whole log, that entry included.
#[test]
fn a_journal_left_by_an_older_layout_is_applied_before_the_upgrade() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    for i in 0..10u64 {
        let mut d = draft(["a", "b"][i as usize % 2], "kb.get");
        d.entities = vec![format!("k/{}", i % 2 + 1)];
        store.append_read_audit(d).expect("read");
    }
    let log = all(&store);
    drop(store);
    make_layout(&path, 3, &log);
    let applied = {
        let db = Database::create(&path).expect("db");
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        meta.get(JOURNAL_APPLIED).expect("get").map_or(0, |v| v.value())
    };
    // Entry 11, linked to the chain, as version 3 journaled it: the
    // entry, a row per index (tables 4-7 then), and the indexes' reach.
    let mut entry = AuditEntry::unsealed(
        AuditDraft { entities: vec!["k/2".into()], invocation: Some(4), ..draft("a", "kb.get") },
        11,
        1,
    );
    let stored = entry.link_encoded(&log[9].hash);
    let mut changes = Changes::with_capacity(0);
    let bytes = |v: &[u8]| v.to_vec();
    changes.insert(table_id(AUDIT.name()).expect("audit"), &bytes(&11u64.to_le_bytes()), &stored);
    changes.insert(4, &<(&str, u64) as redb::Value>::as_bytes(&("a", 11)), &[]);
    changes.insert(5, &<(&str, u64) as redb::Value>::as_bytes(&("k/2", 11)), &[]);
    changes.insert(6, &<(u64, u64) as redb::Value>::as_bytes(&(4, 11)), &[]);
    changes.insert(7, &<(&str, &str, u64) as redb::Value>::as_bytes(&("a", "k/2", 11)), &[]);
    changes.insert(table_id(META.name()).expect("meta"), AUDIT_INDEXED.as_bytes(), &11u64.to_le_bytes());
    let record = changes.seal(applied + 1, 7).expect("a record");
    std::fs::write(journal::journal_path(&path), [record, vec![0; 4096]].concat()).expect("journal");

    let store = RedbStore::open(&path).expect("recovered and upgraded");
    assert_eq!(store.recovered_batches(), 1);
    assert_eq!(all(&store).iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 11, .. }));
    let by = |agent: &str, entity: &str| {
        let filter = AuditFilter { agent: Some(agent.into()), entity: Some(entity.into()), ..Default::default() };
        store.audit(&filter).expect("audit").iter().map(|e| e.seq).collect::<Vec<_>>()
    };
    assert_eq!(by("a", "k/2"), vec![11], "the journaled entry is in the runs");
    assert_eq!(by("a", "k/1"), vec![1, 3, 5, 7, 9]);
    drop(store);
    let db = Database::create(&path).expect("db");
    let txn = db.begin_read().expect("read");
    assert_eq!(audit_indexed(&txn).expect("reach"), 11);
    let tables: Vec<String> = txn.list_tables().expect("tables").map(|t| t.name().to_string()).collect();
    assert!(!tables.iter().any(|t| t == retired::AUDIT_BY_AGENT.name()), "{tables:?}");
}

/// A file of layout version 1, 2 or 3 (an index row per seq; version
/// 1 without the index by agent and entity) is refused by read
/// commands with what to do, and upgraded in place when a host opens
/// it: the old indexes deleted, the runs built from the log.
#[test]
fn older_layouts_are_upgraded_in_place() {
    for old in 1..SCHEMA_VERSION {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kb.redb");
        let store = RedbStore::open(&path).expect("store");
        for i in 0..30u64 {
            let mut d = draft(["a", "b", "c"][i as usize % 3], "kb.get");
            d.entities = [vec!["k/1".into()], vec!["k/2".into(), "k/1".into()], vec![]][i as usize % 3].clone();
            d.invocation = Some(i % 4);
            store.append_read_audit(d).expect("read");
        }
        let log = all(&store);
        drop(store);
        make_layout(&path, old, &log);
        let err = RedbStore::open_read_only(&path).expect_err("an old layout is refused read-only");
        assert!(err.to_string().contains(&format!("version {old}")), "{err}");
        assert!(err.to_string().contains("start a host on it once"), "{err}");
        let store = RedbStore::open(&path).expect("upgraded");
        assert_queries_match_the_log(&store);
        drop(store);
        let store = RedbStore::open_read_only(&path).expect("the current version now");
        assert_queries_match_the_log(&store);
        drop(store);
        let db = Database::create(&path).expect("db");
        let txn = db.begin_read().expect("read");
        let tables: Vec<String> = txn.list_tables().expect("tables").map(|t| t.name().to_string()).collect();
        for added in [REQUEST_KEYS.name(), REQUEST_KEYS_BY_TIME.name(), HOST_STATE.name()] {
            assert!(tables.iter().any(|t| t == added), "{added} is created (version {old})");
        }
        for gone in [retired::AUDIT_BY_AGENT.name(), retired::AUDIT_BY_ENTITY.name()] {
            assert!(!tables.iter().any(|t| t == gone), "{gone} is deleted (version {old})");
        }
        assert!(!tables.iter().any(|t| t == retired::AUDIT_BY_INVOCATION.name()));
        assert!(!tables.iter().any(|t| t == retired::AUDIT_BY_AGENT_ENTITY.name()));
        let meta = txn.open_table(META).expect("meta");
        assert_eq!(meta.get("schema_version").expect("get").map(|v| v.value()), Some(SCHEMA_VERSION));
        assert_eq!(audit_indexed(&txn).expect("reach"), 30, "every entry is in the runs");
    }
}

//! The audit log and its indexes: bounded read tails, index runs, and
//! queries past the indexes' reach.

use super::*;

/// Reads faster than the writer: past MAX_PENDING the reader waits, so
/// memory stays bounded, and nothing is lost.
#[test]
fn a_flood_of_reads_is_bounded_and_complete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    let n = MAX_PENDING as u64 + 5_000;
    for _ in 0..n {
        store.append_read_audit(draft("reader", "kb.get")).expect("read");
        assert!(store.writer.as_ref().expect("writer").shared.tail().pending.len() <= MAX_PENDING);
    }
    drop(store);
    let store = RedbStore::open_read_only(&path).expect("reopen");
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries, .. } if entries == n));
}

/// The audit indexes are written in bulk (see IndexRow): a query
/// reads the indexes up to `audit_indexed` and the log after it, so it
/// neither misses the entries not indexed yet nor counts twice runs
/// that reach past `audit_indexed` (which a flush, writing both in one
/// transaction, never leaves); and a host indexes what is missing.
#[test]
fn audit_queries_read_past_the_indexes_reach() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    for i in 0..60u64 {
        let mut d = draft(["a", "b", "c"][i as usize % 3], "kb.get");
        d.entities = match i % 4 {
            0 => vec!["k/1".into()],
            1 => vec!["k/2".into(), "k/1".into()],
            2 => vec![],
            _ if i % 8 == 3 => vec!["k/2".into(), "k/2".into()],
            _ => vec!["k/2".into()],
        };
        d.invocation = Some(i % 5);
        store.append_read_audit(d).expect("read");
    }
    drop(store);
    // (the reach, the seqs in the index by agent)
    let indexed = |path: &Path| {
        let db = Database::create(path).expect("db");
        let txn = db.begin_read().expect("read");
        let index = txn.open_table(AUDIT_BY_AGENT).expect("index");
        let n: usize = index
            .iter()
            .expect("iter")
            .map(|run| Run::decode(run.expect("run").1.value(), "test").expect("decodes").len())
            .sum();
        (audit_indexed(&txn).expect("meta"), n)
    };
    assert_eq!(indexed(&path), (60, 60), "a clean close indexes everything");
    // The indexes' reach says 30, and runs hold entries up to `keep`:
    // past the reach (40), or exactly to it, as a crash leaves it.
    let cut = |keep: u64| {
        let db = Database::create(&path).expect("db");
        let txn = db.begin_write().expect("write");
        txn.open_table(META).expect("meta").insert(AUDIT_INDEXED, 30).expect("reach");
        keep_up_to(&txn, AUDIT_BY_AGENT, keep);
        keep_up_to(&txn, AUDIT_BY_ENTITY, keep);
        keep_up_to(&txn, AUDIT_BY_INVOCATION, keep);
        keep_up_to(&txn, AUDIT_BY_AGENT_ENTITY, keep);
        txn.commit().expect("commit");
    };
    cut(40);
    assert_eq!(indexed(&path), (30, 40));
    assert_queries_match_the_log(&RedbStore::open_read_only(&path).expect("read-only"));
    cut(30);
    assert_eq!(indexed(&path), (30, 30));
    assert_queries_match_the_log(&RedbStore::open_read_only(&path).expect("read-only"));
    // A host takes the rows of 31..=60 up again and writes them.
    let store = RedbStore::open(&path).expect("reopen");
    assert_queries_match_the_log(&store);
    drop(store);
    assert_eq!(indexed(&path), (60, 60));
    assert_queries_match_the_log(&RedbStore::open_read_only(&path).expect("read-only"));
}

/// Drops the seqs past `max` from every run of an index.
fn keep_up_to<K: Key + 'static>(txn: &WriteTransaction, def: TableDefinition<K, &'static [u8]>, max: u64) {
    let raw: TableDefinition<Raw<K>, &[u8]> = TableDefinition::new(def.name());
    let mut table = txn.open_table(raw).expect("index");
    let runs: Vec<(Vec<u8>, Vec<u8>)> = table
        .iter()
        .expect("iter")
        .map(|item| {
            let (k, v) = item.expect("run");
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect();
    for (key, run) in runs {
        let kept: Vec<u64> = Run::decode(&run, "test").expect("run").into_iter().filter(|s| *s <= max).collect();
        if kept.is_empty() {
            table.remove(key.as_slice()).expect("remove");
        } else {
            table.insert(key.as_slice(), Run::encode(kept.into_iter()).as_slice()).expect("insert");
        }
    }
}

#[test]
fn runs_group_by_key_and_round_trip() {
    let pairs = vec![("b", 1), ("a", 2), ("b", 3), ("a", 5), ("b", 200), ("b", 70_000), ("b", u64::MAX - 1)];
    let runs = Run::group(pairs);
    let decoded: Vec<(&str, u64, Vec<u64>)> =
        runs.iter().map(|(k, first, run)| (*k, *first, Run::decode(run, "test").expect("decodes"))).collect();
    // Key order; each key's seqs ascending, at most Run::MAX (4 in
    // tests) per run, each run keyed by its first seq.
    assert_eq!(
        decoded,
        vec![("a", 2, vec![2, 5]), ("b", 1, vec![1, 3, 200, 70_000]), ("b", u64::MAX - 1, vec![u64::MAX - 1]),]
    );
    assert_eq!(runs[0].2, vec![2, 3], "deltas from zero, one byte each when small");
    // A truncated varint, and one too long for a u64, are refused.
    let err = Run::decode(&[0x81], "audit_runs_by_agent").expect_err("truncated");
    assert!(err.to_string().contains("audit_runs_by_agent"), "{err}");
    Run::decode(&[0xff; 11], "x").expect_err("too long");
    Run::decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01], "x").expect_err("overflows");
}

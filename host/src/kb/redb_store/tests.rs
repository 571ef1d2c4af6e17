//! The redb store's own tests: its tables, the group-commit writer and
//! journal, recovery, the audit index runs and the snapshot reads, through
//! its private parts (the end-to-end behaviour is in `tests/e2e`).

use super::*;
use crate::audit::Decision;
use crate::kb::model::{Conflict, EventKind, Expect};
use crate::kb::ops::commit::CONFLICT_WALK;

fn draft(agent: &str, call: &str) -> AuditDraft {
    AuditDraft {
        agent: agent.into(),
        digest: String::new(),
        invocation: Some(0),
        call: call.into(),
        entities: vec!["k/1".into()],
        args: "{}".into(),
        arg_bytes: 2,
        decision: Decision::Allowed,
        rule: None,
        peer: None,
        fields: vec![],
        causation: None,
        outcome: String::new(),
        duration_us: 0,
    }
}

fn all(store: &RedbStore) -> Vec<AuditEntry> {
    store.audit(&AuditFilter::default()).expect("audit")
}

/// Reads numbered on many threads while commits number their own
/// entries on the writer: the chain is linked in seq order, gap-free.
#[test]
fn reads_and_commits_interleave_into_one_intact_chain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("kb.redb")).expect("store"));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    if t % 2 == 0 && i % 10 == 0 {
                        store.append_audit(draft("writer", "kb.commit")).expect("durable entry");
                    } else {
                        store.append_read_audit(draft("reader", "kb.get")).expect("read entry");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let entries = all(&store);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=1800).collect::<Vec<_>>());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 1800, .. }));
}

/// A batch that rolls back gives its entries back: the reads it took in
/// are written by the next batch, its own entry is kept as a `fault`
/// (nothing of it was written), and the chain has no gap.
#[test]
fn a_rolled_back_batch_keeps_the_chain_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    let read = store.append_read_audit(draft("reader", "kb.get")).expect("read");
    let failed = store.run(true, |tx| {
        tx.cursors().map_err(backend)?.insert(("reader", "k/1"), 99).map_err(backend)?;
        append_audit_in(tx, draft("writer", "kb.commit"), 1)?;
        Err::<(), _>(StoreError::Backend("the disk said no".into()))
    });
    assert!(failed.is_err());
    let after = store.append_read_audit(draft("reader", "kb.get")).expect("read");
    let entries = all(&store);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![read, read + 1, after]);
    assert_eq!(after, read + 2, "the rolled-back entry keeps its number");
    let fault = &entries[1];
    assert_eq!((fault.agent.as_str(), fault.decision), ("writer", Decision::Fault));
    assert!(fault.outcome.contains("the disk said no"), "{}", fault.outcome);
    assert_eq!(entries[0].decision, Decision::Allowed);
    // The job's own write went with the rollback.
    let cursor = store
        .read()
        .expect("read")
        .open_table(CURSORS)
        .expect("cursors")
        .get(("reader", "k/1"))
        .expect("get")
        .map(|v| v.value());
    assert_eq!(cursor, None);
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 3, .. }));
    drop(store);
    let store = RedbStore::open(&path).expect("reopen");
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 3, .. }));
}

/// Commits `n` updates of counter `c/{i}` (versions 1..=n), each
/// answered, so each durable.
fn count_up(store: &RedbStore, counter: u32, n: u64) {
    let entity = EntityRef { kind: "c".into(), id: counter.to_string() };
    for v in 0..n {
        let request = CommitRequest {
            actor: Actor { name: "counter".into(), invocation: 1 },
            reason: "count".into(),
            writes: vec![super::super::model::Write {
                entity: entity.clone(),
                expect: if v == 0 { Expect::Absent } else { Expect::Version(v) },
                set: vec![("n".into(), Value::Integer(v as i64 + 1))],
                unset: vec![],
                fence: None,
            }],
            at_ms: 1,
            by_human: false,
            kind: EventKind::Updated,
        };
        let (outcome, _) =
            store.commit(request, Box::new(|_| None), Box::new(|_| draft("counter", "kb.commit"))).expect("commit");
        assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
    }
}

/// Point reads share one snapshot (see `RedbStore::entities`), and a
/// commit ends it before it is answered: a read after a commit sees
/// it, and no snapshot outlives the commit after it (pinning pages).
#[test]
fn point_reads_share_a_snapshot_until_the_next_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("kb.redb")).expect("store");
    let shared = &store.writer.as_ref().expect("writer").shared;
    for counter in [1, 2] {
        let entity = EntityRef { kind: "c".into(), id: counter.to_string() };
        assert!(store.get(&entity).expect("get").is_none());
        let before = store.entities().expect("snapshot");
        assert!(Arc::ptr_eq(&before, &store.entities().expect("snapshot")), "reads share the snapshot");
        count_up(&store, counter, 1);
        assert!(shared.snapshot().is_none(), "the commit dropped the snapshot");
        let version = store.get(&entity).expect("get").map(|e| e.version);
        assert_eq!(version, Some(1), "a read sees the commit answered before it");
        assert!(!Arc::ptr_eq(&before, &store.entities().expect("snapshot")));
    }
    // An entity decoded in one snapshot is not what the next one reads.
    let one = EntityRef { kind: "c".into(), id: "1".into() };
    let read = |store: &RedbStore| store.get(&one).expect("get").map(|e| e.version);
    assert_eq!((read(&store), read(&store)), (Some(1), Some(1)));
    let kept = store.entities().expect("snapshot").decoded().is_some_and(|d| d.contains_key("c/1"));
    assert!(kept, "the second read was a clone");
    commit_counter(&store, "1", Expect::Version(1)).expect("commit");
    assert_eq!(read(&store), Some(2), "a read sees the commit answered before it, not the decoded entity");
}

/// The audit chain is intact and the projection is what the events give.
fn assert_consistent(store: &RedbStore) {
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { .. }));
    assert_eq!(store.replay().expect("replay").differences, Vec::<String>::new());
}

/// A commit of counter `c/{id}` at `expect`, as `count_up` makes them.
fn counter_commit(id: &str, expect: Expect) -> CommitRequest {
    CommitRequest {
        actor: Actor { name: "counter".into(), invocation: 1 },
        reason: "count".into(),
        writes: vec![super::super::model::Write {
            entity: EntityRef { kind: "c".into(), id: id.into() },
            expect,
            set: vec![("n".into(), Value::Integer(1))],
            unset: vec![],
            fence: None,
        }],
        at_ms: 1,
        by_human: false,
        kind: EventKind::Updated,
    }
}

/// Commits [`counter_commit`] with no guard.
fn commit_counter(store: &RedbStore, id: &str, expect: Expect) -> Result<(CommitOutcome, AuditEntry), StoreError> {
    store.commit(counter_commit(id, expect), Box::new(|_| None), Box::new(|_| draft("counter", "kb.commit")))
}

/// Waits until the journal file holds `marker` (a record naming it has
/// been written), or fails after 10 s.
fn wait_for_journaled(path: &Path, marker: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let data = std::fs::read(journal::journal_path(path)).unwrap_or_default();
        if data.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no journal record names {marker}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A batch's record is written while redb commits it (the overlap),
/// but its caller is answered only once that commit is done: a caller
/// answered can always read what it wrote.
#[test]
fn a_commit_is_answered_once_its_record_is_on_disk_and_redb_holds_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    let (entered, in_commit) = mpsc::channel();
    let (go, release) = mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release);
    *store.writer.as_ref().expect("writer").shared.before_commit.lock().expect("hook") = Some(Box::new(move || {
        let _ = entered.send(());
        let _ = release.lock().expect("release").recv_timeout(std::time::Duration::from_secs(10));
        Ok(())
    }));
    let (answer, answered) = mpsc::channel();
    store.commit_then(
        counter_commit("overlap-marker", Expect::Absent),
        Box::new(|_| None),
        Box::new(|_| draft("counter", "kb.commit")),
        Box::new(move |result| {
            let _ = answer.send(result);
        }),
    );
    in_commit.recv_timeout(std::time::Duration::from_secs(10)).expect("the batch reaches its commit");
    // The record is written while the commit waits: the sync overlaps it.
    wait_for_journaled(&path, "overlap-marker");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(answered.try_recv().is_err(), "answered before redb committed the batch");
    go.send(()).expect("release the commit");
    let (outcome, _) = answered.recv_timeout(std::time::Duration::from_secs(10)).expect("answered").expect("committed");
    assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
    let entity = EntityRef { kind: "c".into(), id: "overlap-marker".into() };
    assert_eq!(store.get(&entity).expect("get").map(|e| e.version), Some(1));
}

/// If redb fails to commit a batch whose record already went to the
/// journal, the outcome is unknown until a restart: the callers are told
/// so, nothing more is written, and the restart applies the record.
#[test]
fn a_batch_journaled_but_not_committed_stops_writes_until_a_restart_applies_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    count_up(&store, 1, 1);
    let for_hook = path.clone();
    *store.writer.as_ref().expect("writer").shared.before_commit.lock().expect("hook") = Some(Box::new(move || {
        // Deterministic: the record is written before the commit fails.
        wait_for_journaled(&for_hook, "unknown-marker");
        Err("injected commit failure".into())
    }));
    let err = commit_counter(&store, "unknown-marker", Expect::Absent).expect_err("the commit failed").to_string();
    assert!(err.contains("injected commit failure") && err.contains("may be on disk already"), "{err}");
    assert!(err.contains("restart the host, then check whether this write is there"), "{err}");
    *store.writer.as_ref().expect("writer").shared.before_commit.lock().expect("hook") = None;
    let refused = commit_counter(&store, "2", Expect::Absent).expect_err("writes are stopped").to_string();
    assert!(refused.contains("writes are stopped") && refused.contains("restart the host"), "{refused}");
    drop(store);

    let store = RedbStore::open(&path).expect("restart");
    assert!(store.recovered_batches() > 0, "the record came from the journal");
    let entity = EntityRef { kind: "c".into(), id: "unknown-marker".into() };
    assert_eq!(store.get(&entity).expect("get").map(|e| e.version), Some(1), "the restart applied it");
    assert_eq!(store.get(&EntityRef { kind: "c".into(), id: "2".into() }).expect("get"), None);
    assert_consistent(&store);
    count_up(&store, 3, 2);
}

/// A journal that cannot be written (a failed write or `fdatasync`)
/// acknowledges nothing more: the commit waiting for it is told it may
/// not be durable, every later write is refused until a restart, reads
/// go on, and the restart has every commit that was acknowledged. (The
/// one told "may not be durable" may be there too: redb keeps its
/// in-memory commit when the store is closed cleanly.)
#[test]
fn a_failed_journal_sync_acknowledges_nothing_and_stops_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    count_up(&store, 1, 2);
    journal::failing::set(&journal::journal_path(&path), true);
    let err = commit_counter(&store, "1", Expect::Version(2)).expect_err("not acknowledged").to_string();
    assert!(err.contains("the journal could not be written") && err.contains("injected by a test"), "{err}");
    assert!(err.contains("may not be durable") && err.contains("restart the host"), "{err}");
    journal::failing::set(&journal::journal_path(&path), false);
    let refused = commit_counter(&store, "1", Expect::Version(2)).expect_err("writes are stopped").to_string();
    assert!(refused.contains("writes are stopped since the journal failed"), "{refused}");
    assert!(store.get(&EntityRef { kind: "c".into(), id: "1".into() }).expect("reads go on").is_some());
    drop(store);

    let store = RedbStore::open(&path).expect("restart");
    let version = store.get(&EntityRef { kind: "c".into(), id: "1".into() }).expect("get").map(|e| e.version);
    assert!(version >= Some(2), "an acknowledged commit was lost: {version:?}");
    assert_consistent(&store);
    count_up(&store, 2, 2);
}

/// Replay rebuilds the projection from the events and reports every way
/// the stored one differs: a changed entity, a missing one, one no
/// event creates, and one stored under another entity's key.
#[test]
fn replay_reports_every_difference_from_the_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("kb.redb")).expect("store");
    for c in 1..=4 {
        count_up(&store, c, 3);
    }
    assert_eq!(store.replay().expect("replay"), ReplayReport { events: 12, entities: 4, differences: vec![] });
    let entity = |c: &str| store.get(&EntityRef { kind: "c".into(), id: c.into() }).expect("get").expect("exists");
    let (mut changed, mut moved) = (entity("1"), entity("3"));
    changed.fields.insert("n".into(), Value::Integer(99));
    changed.version = 7;
    moved.entity.id = "4".into();
    let mut unborn = entity("2");
    unborn.entity.id = "9".into();
    let txn = store.write().expect("write");
    {
        let mut table = txn.open_table(ENTITIES).expect("entities");
        let bytes = |e: &Entity| serde_json::to_vec(e).expect("json");
        table.insert("c/1", bytes(&changed).as_slice()).expect("insert");
        table.remove("c/2").expect("remove");
        table.insert("c/3", bytes(&moved).as_slice()).expect("insert");
        table.insert("c/9", bytes(&unborn).as_slice()).expect("insert");
    }
    txn.commit().expect("commit");
    let report = store.replay().expect("replay");
    assert_eq!((report.events, report.entities), (12, 4));
    assert_eq!(
        report.differences,
        [
            "c/1: the projection has version 7 by counter, the events give version 3 by counter",
            "c/3: the projection stores c/4 under this key",
            "c/9: in the projection (version 3) but no event creates it",
            "c/2: the events give version 3, but the projection lacks it",
            "c/3: the events give version 3, but the projection lacks it",
        ]
    );
}

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

/// The child half of `acknowledged_commits_survive_a_crash`: it commits,
/// and dies without closing the store (no checkpoint, no redb close).
#[test]
#[ignore = "the child process of acknowledged_commits_survive_a_crash, which runs it"]
fn crash_child() {
    let Some(path) = std::env::var_os("CONCORD_CRASH_CHILD") else { return };
    let store = RedbStore::open(Path::new(&path)).expect("store");
    std::thread::scope(|scope| {
        for c in 0..4 {
            let store = &store;
            scope.spawn(move || count_up(store, c, 100));
        }
    });
    std::process::abort();
}

/// Every answered commit survives a crash: the journal is replayed on
/// open, the audit chain and the projection agree with it, read-only
/// opens refuse until then, and the store without its journal is
/// refused rather than opened short. (Torn and stale records: the
/// journal's own tests.)
#[test]
fn acknowledged_commits_survive_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    // Created and closed cleanly first: the child's batches are then
    // all in the journal, after a checkpoint.
    count_up(&RedbStore::open(&path).expect("store"), 9, 1);
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "kb::redb_store::tests::crash_child", "--ignored", "--test-threads", "1"])
        .env("CONCORD_CRASH_CHILD", &path)
        .output()
        .expect("run the child");
    assert!(!child.status.success(), "the child aborts: {}", String::from_utf8_lossy(&child.stderr));
    // A copy of the store without its journal is refused, until an
    // empty journal says "open it without them".
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&path, &copy).expect("copy the store alone");
    let refused = RedbStore::open(&copy).expect_err("no journal after an unclean stop");
    assert!(refused.to_string().contains("journal") && refused.to_string().contains("is missing"), "{refused}");
    std::fs::write(journal::journal_path(&copy), b"").expect("empty journal");
    let without = RedbStore::open(&copy).expect("opens without the journal's commits");
    assert_eq!(without.recovered_batches(), 0);
    drop(without);

    let refused = RedbStore::open_read_only(&path).expect_err("read-only open before recovery");
    assert!(refused.to_string().contains("start a host on it once"), "{refused}");
    let store = RedbStore::open(&path).expect("recover");
    assert!(store.recovered_batches() > 0, "the child's commits came from the journal");
    for c in 0..4 {
        let entity = store.get(&EntityRef { kind: "c".into(), id: c.to_string() }).expect("get").expect("exists");
        assert_eq!((entity.version, entity.fields.get("n")), (100, Some(&Value::Integer(100))));
    }
    assert_eq!(store.replay().expect("replay").differences, Vec::<String>::new());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 401, .. }));
    // The index rows the child had not written yet are rebuilt; a
    // query finds every entry either way.
    let by_agent = AuditFilter { agent: Some("counter".into()), ..Default::default() };
    assert_eq!(store.audit(&by_agent).expect("audit").len(), 401);
    // And it goes on from there; the next open has nothing to recover.
    count_up(&store, 4, 3);
    drop(store);
    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.recovered_batches(), 0);
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 404, .. }));
}

/// A journal found beside a store that does not exist yet (the store
/// was removed without it) is moved aside, kept and never applied: the
/// new store opens empty, and the next open does not trip over it.
#[test]
fn a_journal_left_without_its_store_is_moved_aside() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    count_up(&RedbStore::open(&path).expect("store"), 1, 3);
    let left = b"the old store's journal".to_vec();
    std::fs::write(journal::journal_path(&path), &left).expect("journal");
    std::fs::remove_file(&path).expect("remove the store alone");
    let store = RedbStore::open(&path).expect("a new store");
    let aside = dir.path().join("kb.redb.journal.orphaned");
    assert_eq!(std::fs::read(&aside).expect("moved aside"), left);
    assert_eq!(store.recovered_batches(), 0);
    assert_eq!(store.get(&EntityRef { kind: "c".into(), id: "1".into() }).expect("get"), None);
    count_up(&store, 2, 2);
    drop(store);
    let store = RedbStore::open(&path).expect("reopen");
    let entity = store.get(&EntityRef { kind: "c".into(), id: "2".into() }).expect("get").expect("exists");
    assert_eq!(entity.version, 2);
    assert_eq!(std::fs::read(&aside).expect("still there"), left);
}

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

/// Every index-backed query (agent, entity, both, invocation, trace;
/// with and without a limit) against a filter over the whole log.
fn assert_queries_match_the_log(store: &RedbStore) {
    let log = all(store);
    let mut filters = Vec::new();
    for limit in [None, Some(3)] {
        for agent in [None, Some("a"), Some("b")] {
            for entity in [None, Some("k/1"), Some("k/2")] {
                filters.push(AuditFilter {
                    agent: agent.map(Into::into),
                    entity: entity.map(Into::into),
                    limit,
                    ..Default::default()
                });
            }
        }
        filters.push(AuditFilter { invocation: Some(2), limit, ..Default::default() });
        filters.push(AuditFilter { trace: Some([1, 3].into()), limit, ..Default::default() });
    }
    // Each also as a page: forward from a cursor, back from one, or
    // between two, on either side of the indexes' reach (30 in the
    // test below) and across it.
    let cursors = [(None, None), (Some(10), None), (Some(29), None), (Some(45), None), (None, Some(31))];
    let cursors = cursors.into_iter().chain([(None, Some(50)), (Some(12), Some(40)), (Some(40), Some(41))]);
    let filters: Vec<AuditFilter> = cursors
        .flat_map(|(after, before)| filters.iter().map(move |f| AuditFilter { after, before, ..f.clone() }))
        .collect();
    for filter in filters {
        let mut expected: Vec<u64> = log.iter().filter(|e| filter.matches(e)).map(|e| e.seq).collect();
        match (filter.limit, filter.forward()) {
            (Some(limit), true) => expected.truncate(limit),
            (Some(limit), false) => expected = expected.split_off(expected.len().saturating_sub(limit)),
            (None, _) => {}
        }
        let found: Vec<u64> = store.audit(&filter).expect("audit").iter().map(|e| e.seq).collect();
        assert_eq!(found, expected, "{filter:?}");
    }
}

/// `sync` answers once everything readers can see is durable: after
/// it, a kill loses nothing that was read (here: an audit entry only
/// numbered, and a commit's effects), and with nothing waiting it
/// answers at once.
#[test]
fn sync_waits_until_what_was_shown_is_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    let sync = |store: &RedbStore| {
        let (tx, rx) = mpsc::channel();
        store.sync_then(Box::new(move |r| tx.send(r).expect("send")));
        rx.recv().expect("answered").expect("synced");
    };
    let mut changes = store.durable_changes();
    let seen = *changes.borrow_and_update();
    store.append_read_audit(draft("a", "kb.get")).expect("read");
    assert!(!store.all_durable(), "an entry in the tail is not durable yet");
    sync(&store);
    assert!(store.all_durable());
    assert!(changes.has_changed().expect("open"), "the wake-up fired");
    assert!(*changes.borrow() > seen);
    sync(&store);
    // While a batch that took read entries from the tail runs (here:
    // a job of it asks), nothing counts as durable yet, though the
    // tail is empty.
    let shared = store.writer.as_ref().expect("writer").shared.clone();
    store.append_read_audit(draft("a", "kb.get")).expect("read");
    let during = store.run(false, move |_| Ok(shared.all_durable())).expect("job");
    assert!(!during, "a batch under way, holding the tail's entries, is not durable");
    sync(&store);
    // What a kill leaves: the journal and the file, as they are.
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&path, &copy).expect("copy");
    std::fs::copy(journal::journal_path(&path), journal::journal_path(&copy)).expect("copy journal");
    drop(store);
    let restarted = RedbStore::open(&copy).expect("reopens");
    assert_eq!(all(&restarted).len(), 2, "the synced entries survived");
}

/// A conflict's explanation walks back a bounded number of events: a
/// write far behind costs the writer no walk through the whole
/// history (an entity of 600 versions, refused against version 1,
/// names only who changed it in the newest `CONFLICT_WALK` events).
#[test]
fn a_conflict_far_behind_walks_back_a_bounded_way() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("kb.redb")).expect("store");
    let mut expect = Expect::Absent;
    for i in 0..600u64 {
        let mut request = counter_commit("1", expect);
        request.actor.name = if i < 300 { "old".into() } else { "new".into() };
        let (outcome, _) =
            store.commit(request, Box::new(|_| None), Box::new(|_| draft("x", "kb.commit"))).expect("commit");
        let CommitOutcome::Committed { versions, .. } = outcome else { panic!("{outcome:?}") };
        expect = Expect::Version(versions[0]);
    }
    let started = std::time::Instant::now();
    let (outcome, _) = commit_counter(&store, "1", Expect::Version(1)).expect("commit");
    let CommitOutcome::Conflict(c) = outcome else { panic!("{outcome:?}") };
    assert_eq!(c.current_version, Some(600));
    assert_eq!(c.changed_by, "new", "only the newest {CONFLICT_WALK} events are walked");
    assert_eq!(c.events_since.len(), Conflict::MAX_EVENTS);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Request keys are kept until they expire, each put forgets a few
/// expired ones, and a key stored again is not forgotten by its old
/// time.
#[test]
fn request_keys_expire_a_few_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("kb.redb")).expect("store");
    for i in 0..40u64 {
        store.put_request_key(format!("k{i}"), 1000 + i, format!("r{i}").into_bytes(), 0).expect("put");
    }
    assert_eq!(store.request_key("k3").expect("get"), Some((1003, b"r3".to_vec())));
    // k0 is stored again later: its old time no longer expires it.
    store.put_request_key("k0".into(), 5000, b"again".to_vec(), 0).expect("put");
    store.put_request_key("new".into(), 6000, b"n".to_vec(), 1030).expect("put");
    let left = (0..40).filter(|i| store.request_key(&format!("k{i}")).expect("get").is_some()).count();
    assert_eq!(left, 40 - super::super::store::EXPIRED_PER_PUT, "one put forgets a bounded number");
    assert_eq!(store.request_key("k0").expect("get"), Some((5000, b"again".to_vec())));
    for _ in 0..4 {
        store.put_request_key("new".into(), 6000, b"n".to_vec(), 1030).expect("put");
    }
    let left: Vec<u64> = (0..40).filter(|i| store.request_key(&format!("k{i}")).expect("get").is_some()).collect();
    assert_eq!(left, [0].into_iter().chain(30..40).collect::<Vec<_>>(), "everything stored before 1030 is gone");
    store.put_host_state("x".into(), b"state".to_vec()).expect("put");
    assert_eq!(store.host_state("x").expect("get"), Some(b"state".to_vec()));
    assert_eq!(store.host_state("y").expect("get"), None);
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

//! The journal: acknowledged means on disk, a failed sync stops writes, and
//! a crash loses nothing that was answered.

use super::*;

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
        .args(["--exact", "kb::redb::tests::recovery::crash_child", "--ignored", "--test-threads", "1"])
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

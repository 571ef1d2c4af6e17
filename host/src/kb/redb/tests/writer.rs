//! The group-commit writer: batches, roll-backs, the chain across reads and
//! commits, and sync.

use super::*;

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

/// A commit of `status` on `entity`, audited as a conflict when it is one.
fn batch_commit(store: &RedbStore, entity: &str, expect: Expect, status: &str) -> CommitOutcome {
    let request = CommitRequest {
        actor: Actor { name: "tester".into(), invocation: 0 },
        reason: "test".into(),
        writes: vec![crate::kb::model::Write {
            entity: entity.parse::<EntityRef>().expect("ref"),
            expect,
            set: vec![("status".into(), Value::Text(status.into()))],
            unset: vec![],
            fence: None,
        }],
        at_ms: crate::kb::model::now_ms(),
        by_human: false,
        kind: EventKind::Updated,
    };
    let audit = Box::new(|o: &CommitOutcome| {
        let mut d = draft("tester", "kb.commit");
        if matches!(o, CommitOutcome::Conflict(_)) {
            d.decision = Decision::Conflict;
        }
        d
    });
    store.commit(request, Box::new(|_| None), audit).expect("store works").0
}

/// 16 commits racing on one entity, and 16 on distinct entities, queued and
/// then run as a single batch: exactly one of the racing commits wins, the
/// others get the conflict they would get one by one, and every distinct
/// commit applies. One durable transaction did it all.
#[test]
fn a_batch_decides_conflicts_exactly_as_one_by_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("kb.redb")).expect("store"));
    assert!(matches!(batch_commit(&store, "customer/acme", Expect::Absent, "new"), CommitOutcome::Committed { .. }));
    let before = store.writer_stats();

    let hold = store.hold_writes().expect("a writable store");
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                if i < 16 {
                    batch_commit(&store, "customer/acme", Expect::Version(1), &format!("racer {i}"))
                } else {
                    batch_commit(&store, &format!("customer/c{i}"), Expect::Absent, "new")
                }
            })
        })
        .collect();
    while store.queued_writes() < 32 {
        std::thread::yield_now();
    }
    drop(hold);
    let outcomes: Vec<CommitOutcome> = threads.into_iter().map(|t| t.join().expect("thread")).collect();

    let after = store.writer_stats();
    assert_eq!(after.batches - before.batches, 1, "one transaction for all 32 commits");
    assert_eq!(after.jobs - before.jobs, 32);

    let racers = &outcomes[..16];
    let winners = racers.iter().filter(|o| matches!(o, CommitOutcome::Committed { .. })).count();
    assert_eq!(winners, 1, "exactly one racing commit applies");
    for o in racers {
        if let CommitOutcome::Conflict(c) = o {
            assert_eq!(c.current_version, Some(2), "the loser sees the winner's version, as one by one");
            assert_eq!(c.changed_fields, ["status"]);
        }
    }
    assert!(outcomes[16..].iter().all(|o| matches!(o, CommitOutcome::Committed { versions, .. } if versions == &[1])));

    let events = store.events(0, 1000).expect("events");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=18).collect::<Vec<_>>(),
        "1 + 1 + 16 events, no gaps"
    );
    assert!(store.replay().expect("replay").differences.is_empty());
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 33, .. }));
}

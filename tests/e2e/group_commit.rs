//! Group commit: concurrent commits share one durable transaction, and
//! behave exactly as they would one by one.

use concord::audit::{AuditDraft, Decision, Verification};
use concord::kb::{
    Actor, CommitOutcome, CommitRequest, EntityRef, EventKind, Expect, RedbStore, Store, Value, Write, now_ms,
};
use std::sync::Arc;

fn draft() -> AuditDraft {
    AuditDraft {
        agent: "tester".into(),
        digest: String::new(),
        invocation: Some(0),
        call: "kb.commit".into(),
        entities: vec![],
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

fn commit(store: &RedbStore, entity: &str, expect: Expect, status: &str) -> CommitOutcome {
    let request = CommitRequest {
        actor: Actor { name: "tester".into(), invocation: 0 },
        reason: "test".into(),
        writes: vec![Write {
            entity: entity.parse::<EntityRef>().expect("ref"),
            expect,
            set: vec![("status".into(), Value::Text(status.into()))],
            unset: vec![],
            fence: None,
        }],
        at_ms: now_ms(),
        by_human: false,
        kind: EventKind::Updated,
    };
    store
        .commit(
            request,
            Box::new(|_| None),
            Box::new(|o: &CommitOutcome| {
                let mut d = draft();
                if matches!(o, CommitOutcome::Conflict(_)) {
                    d.decision = Decision::Conflict;
                }
                d
            }),
        )
        .expect("store works")
        .0
}

/// 16 commits racing on one entity, and 16 on distinct entities, queued and
/// then run as a single batch: exactly one of the racing commits wins, the
/// others get the conflict they would get one by one, and every distinct
/// commit applies. One durable transaction did it all.
#[test]
fn a_batch_decides_conflicts_exactly_as_one_by_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(RedbStore::open(&dir.path().join("kb.redb")).expect("store"));
    assert!(matches!(commit(&store, "customer/acme", Expect::Absent, "new"), CommitOutcome::Committed { .. }));
    let before = store.writer_stats();

    let hold = store.hold_writes().expect("a writable store");
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                if i < 16 {
                    commit(&store, "customer/acme", Expect::Version(1), &format!("racer {i}"))
                } else {
                    commit(&store, &format!("customer/c{i}"), Expect::Absent, "new")
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

/// Read-call audit entries are in the chain at once, and durable shortly
/// after (or with the next durable commit): after the store is closed and
/// reopened, every one is there.
#[test]
fn read_audit_entries_become_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kb.redb");
    let store = RedbStore::open(&path).expect("store");
    for _ in 0..50 {
        store.append_read_audit(draft()).expect("append");
    }
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 50, .. }));
    drop(store);
    let store = RedbStore::open(&path).expect("reopen");
    assert!(matches!(store.verify_audit().expect("verify"), Verification::Intact { entries: 50, .. }));
}

//! The redb store's own tests: its tables, the group-commit writer and
//! journal, recovery, the audit index runs and the snapshot reads, through
//! its private parts, by topic (the end-to-end behaviour is in `tests/e2e`).
//! This file holds what the topics share.

use super::*;
use crate::audit::Decision;
use crate::kb::model::{Conflict, EventKind, Expect};
use crate::kb::ops::commit::CONFLICT_WALK;

mod audit;
mod reads;
mod recovery;
mod schema;
mod writer;

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

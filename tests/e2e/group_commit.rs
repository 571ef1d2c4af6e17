//! Group commit: read-call audit entries join the chain at once and become
//! durable with the batches. (That a batch decides conflicts exactly as one
//! by one is the redb backend's own test: `kb::redb::tests::writer`.)

use concord::audit::{AuditDraft, Decision, Verification};
use concord::kb::Store;
use concord::kb::redb::RedbStore;

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

//! Snapshot reads, replay, and the rules as this backend runs them
//! (bounded conflict walks, request-key expiry).

use super::*;

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
    assert_eq!(left, 40 - crate::kb::store::EXPIRED_PER_PUT, "one put forgets a bounded number");
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

//! One conformance suite for every knowledge-base backend, written against
//! the [`Store`] contract alone: a backend passes it or it is not a
//! backend. Each check takes a fresh, empty store from the backend's
//! opener; [`backends!`] runs every check on every backend (redb and
//! PostgreSQL; a new backend adds one line there).
//!
//! The checks drive the store as the gate does (requests, guards and
//! auditors), with no agent and no policy in between, so that a failure
//! names the store's rule that broke.

use concord::audit::{AuditDraft, AuditEntry, AuditFilter, Decision, Verification};
use concord::kb::{
    ActOutcome, ActRequest, Actor, AtPoint, ChangeRequest, CommitOutcome, CommitRequest, Denial, EntityRef, EventKind,
    Expect, Guard, LeaseOutcome, Store, Value, Write,
};

/// Runs every check on each backend: `backends!(name => opener, ...)`,
/// where the opener gives a fresh store and whatever keeps it alive.
macro_rules! backends {
    ($($backend:ident => $open:expr),* $(,)?) => {
        $(mod $backend {
            backends!(@checks $open;
                versions_and_explained_conflicts,
                a_commit_is_atomic_across_entities,
                a_refusal_is_audited_and_writes_nothing,
                pins_hold_against_agents_but_not_humans,
                leases_fence_writes_and_tokens_only_grow,
                an_idempotency_key_records_one_action,
                failed_deliveries_count_then_dead_letter_then_retry,
                change_requests_are_answered_once_by_their_owner,
                the_audit_is_one_gap_free_chain_and_queries_find_it,
                replay_rebuilds_the_projection,
                history_recent_state_at_and_read_cursors,
            );
        })*
    };
    (@checks $open:expr; $($check:ident),* $(,)?) => {
        $(#[test]
        fn $check() {
            let (store, _keep) = $open();
            super::$check(&*store);
        })*
    };
}

backends! {
    redb => || {
        let dir = tempfile::tempdir().expect("a temp dir");
        let backend = concord::kb::Backend::Redb {
            path: dir.path().join("kb.redb"),
            sharing: concord::kb::redb::Sharing::Exclusive,
        };
        let store = concord::kb::open(&backend, concord::kb::Access::ReadWrite).expect("a fresh redb store");
        (store, dir)
    },
    postgres => || {
        let server = concord_pg_server::PgServer::shared();
        let options = concord::kb::postgres::PgOptions { url: server.fresh_database(), pool: 4 };
        let backend = concord::kb::Backend::Postgres(options);
        let store = concord::kb::open(&backend, concord::kb::Access::ReadWrite).expect("a fresh PostgreSQL store");
        (store, server)
    },
}

pub(crate) const T0: u64 = 1_700_000_000_000;

pub(crate) fn acme() -> EntityRef {
    EntityRef::new("customer", "acme")
}

pub(crate) fn globex() -> EntityRef {
    EntityRef::new("customer", "globex")
}

pub(crate) fn actor(name: &str, invocation: u64) -> Actor {
    Actor { name: name.into(), invocation }
}

pub(crate) fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub(crate) fn set(entity: EntityRef, expect: Expect, fields: &[(&str, &str)]) -> Write {
    Write {
        entity,
        expect,
        set: fields.iter().map(|(n, v)| (n.to_string(), text(v))).collect(),
        unset: vec![],
        fence: None,
    }
}

pub(crate) fn draft(
    agent: &str,
    invocation: u64,
    call: &str,
    decision: Decision,
    entities: &[&EntityRef],
) -> AuditDraft {
    AuditDraft {
        agent: agent.into(),
        digest: String::new(),
        invocation: Some(invocation),
        call: call.into(),
        entities: entities.iter().map(|e| e.key()).collect(),
        args: "{}".into(),
        arg_bytes: 2,
        decision,
        rule: None,
        peer: None,
        fields: vec![],
        causation: None,
        outcome: String::new(),
        duration_us: 0,
    }
}

pub(crate) fn allow() -> Guard {
    Box::new(|_| None)
}

/// A commit by `agent`, audited as the gate audits it: the decision follows
/// the outcome.
pub(crate) fn commit(store: &dyn Store, agent: &str, writes: Vec<Write>, at_ms: u64) -> (CommitOutcome, AuditEntry) {
    commit_guarded(store, agent, writes, at_ms, allow())
}

fn commit_guarded(
    store: &dyn Store,
    agent: &str,
    writes: Vec<Write>,
    at_ms: u64,
    guard: Guard,
) -> (CommitOutcome, AuditEntry) {
    let entities: Vec<EntityRef> = writes.iter().map(|w| w.entity.clone()).collect();
    let who = agent.to_string();
    let request = CommitRequest {
        actor: actor(agent, 1),
        reason: format!("{agent} writes"),
        writes,
        at_ms,
        by_human: false,
        kind: EventKind::Updated,
    };
    store
        .commit(
            request,
            guard,
            Box::new(move |outcome| {
                let decision = match outcome {
                    CommitOutcome::Committed { .. } => Decision::Allowed,
                    CommitOutcome::Conflict(_) => Decision::Conflict,
                    CommitOutcome::Denied(Denial::Pinned { .. }) => Decision::Pinned,
                    CommitOutcome::Denied(Denial::Leased { .. } | Denial::StaleFence { .. }) => Decision::Leased,
                    CommitOutcome::Denied(_) => Decision::Forbidden,
                };
                draft(&who, 1, "kb.commit", decision, &entities.iter().collect::<Vec<_>>())
            }),
        )
        .expect("the store answers a commit")
}

pub(crate) fn versions(outcome: &CommitOutcome) -> Vec<u64> {
    match outcome {
        CommitOutcome::Committed { versions, .. } => versions.clone(),
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Creates Acme (version 1, status active) as `support`.
fn create_acme(store: &dyn Store) {
    let (outcome, _) = commit(store, "support", vec![set(acme(), Expect::Absent, &[("status", "active")])], T0);
    assert_eq!(versions(&outcome), [1]);
}

fn field(store: &dyn Store, entity: &EntityRef, name: &str) -> Option<Value> {
    store.get(entity).expect("a read").and_then(|e| e.fields.get(name).cloned())
}

fn versions_and_explained_conflicts(store: &dyn Store) {
    create_acme(store);
    let (outcome, _) =
        commit(store, "support", vec![set(acme(), Expect::Version(1), &[("status", "at_risk")])], T0 + 1_000);
    assert_eq!(versions(&outcome), [2]);

    // Sales read version 1 and writes on it: the conflict says who changed
    // what since, and carries the event.
    let (outcome, entry) =
        commit(store, "sales", vec![set(acme(), Expect::Version(1), &[("note", "upsell")])], T0 + 2_000);
    let CommitOutcome::Conflict(c) = outcome else { panic!("expected a conflict, got {outcome:?}") };
    assert_eq!(c.entity, acme());
    assert_eq!(c.expected, Expect::Version(1));
    assert_eq!(c.current_version, Some(2));
    assert_eq!(c.changed_by, "support");
    assert_eq!(c.changed_fields, ["status"]);
    assert_eq!(c.events_since.len(), 1, "{c:?}");
    assert_eq!(c.events_since[0].version, 2);
    assert_eq!(entry.decision, Decision::Conflict);
    assert_eq!(store.get(&acme()).expect("read").map(|e| e.version), Some(2), "nothing applied");

    // Creating what exists is a conflict too, and so is updating what does not.
    let (outcome, _) = commit(store, "sales", vec![set(acme(), Expect::Absent, &[("a", "b")])], T0 + 3_000);
    assert!(matches!(outcome, CommitOutcome::Conflict(ref c) if c.current_version == Some(2)), "{outcome:?}");
    let (outcome, _) = commit(store, "sales", vec![set(globex(), Expect::Version(1), &[("a", "b")])], T0 + 3_000);
    assert!(matches!(outcome, CommitOutcome::Conflict(ref c) if c.current_version.is_none()), "{outcome:?}");
}

fn a_commit_is_atomic_across_entities(store: &dyn Store) {
    create_acme(store);
    // The second write's expectation fails: neither is applied.
    let writes = vec![
        set(acme(), Expect::Version(1), &[("status", "churned")]),
        set(globex(), Expect::Version(4), &[("status", "active")]),
    ];
    let (outcome, _) = commit(store, "support", writes, T0 + 1_000);
    assert!(matches!(outcome, CommitOutcome::Conflict(ref c) if c.entity == globex()), "{outcome:?}");
    assert_eq!(field(store, &acme(), "status"), Some(text("active")));
    assert_eq!(store.get(&globex()).expect("read"), None);
    assert_eq!(store.events(0, 100).expect("events").len(), 1, "only the creation is in the log");

    // Both hold: both are applied, as consecutive events.
    let writes = vec![
        set(acme(), Expect::Version(1), &[("status", "churned")]),
        set(globex(), Expect::Absent, &[("status", "active")]),
    ];
    let (outcome, entry) = commit(store, "support", writes, T0 + 2_000);
    let CommitOutcome::Committed { versions, events } = outcome else { panic!("expected a commit") };
    assert_eq!(versions, [2, 1]);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(entry.entities, ["customer/acme", "customer/globex"]);
}

fn a_refusal_is_audited_and_writes_nothing(store: &dyn Store) {
    create_acme(store);
    // An ownership rule, as the gate's guard would apply it.
    let owner_only: Guard = Box::new(|input| {
        input.fields.contains(&"status").then(|| Denial::Rule {
            entity: input.entity.clone(),
            rule: "ownership: customer.status is owned by support".into(),
            defer: false,
            reason: "only support writes status".into(),
        })
    });
    let before = store.audit(&AuditFilter::default()).expect("audit").len();
    let (outcome, entry) = commit_guarded(
        store,
        "sales",
        vec![set(acme(), Expect::Version(1), &[("status", "churned")])],
        T0 + 1_000,
        owner_only,
    );
    assert!(matches!(outcome, CommitOutcome::Denied(Denial::Rule { ref rule, .. }) if rule.starts_with("ownership")));
    assert_eq!(entry.decision, Decision::Forbidden);
    assert_eq!(entry.agent, "sales");
    let audit = store.audit(&AuditFilter::default()).expect("audit");
    assert_eq!(audit.len(), before + 1, "the refusal's entry, and only it");
    assert_eq!(audit.last(), Some(&entry));
    assert_eq!(field(store, &acme(), "status"), Some(text("active")));
    assert_eq!(store.events(0, 100).expect("events").len(), 1);

    // The guard sees the recent events it asks for, as of the transaction.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(0));
    let counted = seen.clone();
    let counting: Guard = Box::new(move |input| {
        *counted.lock().expect("lock") = (input.recent)().len();
        None
    });
    commit_guarded(store, "sales", vec![set(acme(), Expect::Version(1), &[("note", "hi")])], T0 + 2_000, counting);
    assert_eq!(*seen.lock().expect("lock"), 1, "the creation, within the recent window");
}

fn pins_hold_against_agents_but_not_humans(store: &dyn Store) {
    create_acme(store);
    let pin_audit = Box::new(|_: &concord::kb::Event| draft("human:alice", 0, "pin", Decision::Allowed, &[]));
    let (event, _) = store
        .pin(acme(), vec![("status".into(), text("active"))], "alice".into(), "CEO call".into(), T0 + 1_000, pin_audit)
        .expect("pin");
    assert_eq!(event.kind, EventKind::Pinned);
    assert_eq!(event.version, 2);
    let pins = store.pins(&acme()).expect("pins");
    assert_eq!(pins.len(), 1);
    assert_eq!((pins[0].field.as_str(), pins[0].by.as_str(), pins[0].seq), ("status", "alice", event.seq));

    let (outcome, entry) =
        commit(store, "support", vec![set(acme(), Expect::Version(2), &[("status", "at_risk")])], T0 + 2_000);
    let CommitOutcome::Denied(Denial::Pinned { field, by, reason, .. }) = outcome else {
        panic!("expected a pin refusal, got {outcome:?}")
    };
    assert_eq!((field.as_str(), by.as_str(), reason.as_str()), ("status", "alice", "CEO call"));
    assert_eq!(entry.decision, Decision::Pinned);
    // Other fields stay writable.
    let (outcome, _) =
        commit(store, "support", vec![set(acme(), Expect::Version(2), &[("note", "called")])], T0 + 2_000);
    assert_eq!(versions(&outcome), [3]);

    // Unpinning what is not pinned is refused and writes nothing.
    let unpin_audit = || Box::new(|_: &concord::kb::Event| draft("human:alice", 0, "unpin", Decision::Allowed, &[]));
    let events = store.events(0, 100).expect("events").len();
    assert!(store.unpin(acme(), vec!["note".into()], "alice".into(), "x".into(), T0, unpin_audit()).is_err());
    assert_eq!(store.events(0, 100).expect("events").len(), events);
    store
        .unpin(acme(), vec!["status".into()], "alice".into(), "done".into(), T0 + 3_000, unpin_audit())
        .expect("unpin");
    assert!(store.pins(&acme()).expect("pins").is_empty());
    let (outcome, _) =
        commit(store, "support", vec![set(acme(), Expect::Version(3), &[("status", "at_risk")])], T0 + 4_000);
    assert_eq!(versions(&outcome), [4]);
    // Pinning needs an entity.
    let missing = store.pin(
        globex(),
        vec![],
        "alice".into(),
        "x".into(),
        T0,
        Box::new(|_| draft("h", 0, "pin", Decision::Allowed, &[])),
    );
    assert!(missing.is_err());
}

fn leases_fence_writes_and_tokens_only_grow(store: &dyn Store) {
    create_acme(store);
    let lease = |agent: &str, at: u64| {
        store
            .lease(actor(agent, 1), acme(), 10_000, at, Box::new(|_| draft("a", 1, "kb.lease", Decision::Allowed, &[])))
            .expect("lease")
            .0
    };
    let LeaseOutcome::Granted(first) = lease("support", T0) else { panic!("a free entity is leased") };
    assert_eq!(first.holder, "support");
    let LeaseOutcome::Denied(Denial::Leased { holder, .. }) = lease("sales", T0 + 1) else {
        panic!("a live lease keeps others out")
    };
    assert_eq!(holder, "support");
    assert_eq!(store.live_lease(&acme(), T0 + 1).expect("live").map(|l| l.token), Some(first.token));

    // A write under the lease carries its fence; without it another agent is refused.
    let mut fenced = set(acme(), Expect::Version(1), &[("status", "at_risk")]);
    fenced.fence = Some(first.token);
    let (outcome, _) = commit(store, "support", vec![fenced.clone()], T0 + 2);
    assert_eq!(versions(&outcome), [2]);
    let (outcome, _) = commit(store, "sales", vec![set(acme(), Expect::Version(2), &[("note", "x")])], T0 + 3);
    assert!(matches!(outcome, CommitOutcome::Denied(Denial::Leased { .. })), "{outcome:?}");

    // Renewal keeps the token; after expiry the next holder gets a greater
    // one, and the old fence is stale.
    let renewed = store
        .renew(
            actor("support", 1),
            acme(),
            first.token,
            10_000,
            T0 + 5_000,
            Box::new(|_| draft("a", 1, "kb.renew", Decision::Allowed, &[])),
        )
        .expect("renew")
        .0;
    assert!(
        matches!(renewed, LeaseOutcome::Granted(ref l) if l.token == first.token && l.expires_at_ms == T0 + 15_000)
    );
    let LeaseOutcome::Granted(second) = lease("sales", T0 + 20_000) else { panic!("an expired lease is free") };
    assert!(second.token > first.token, "fencing tokens grow: {} then {}", first.token, second.token);
    let mut stale = fenced;
    stale.expect = Expect::Version(2);
    let (outcome, entry) = commit(store, "support", vec![stale], T0 + 20_001);
    assert!(
        matches!(outcome, CommitOutcome::Denied(Denial::StaleFence { token, current: Some(c), .. }) if token == first.token && c == second.token),
        "{outcome:?}"
    );
    assert_eq!(entry.decision, Decision::Leased);

    // Release needs the holder and the token; a break needs a live lease.
    let release = |agent: &str, token: u64| {
        store
            .release(actor(agent, 1), acme(), token, Box::new(|_| draft("a", 1, "kb.release", Decision::Allowed, &[])))
            .expect("release")
            .0
    };
    assert!(!release("support", second.token));
    assert!(release("sales", second.token));

    // A holder's own old token is stale too, once it holds a newer lease.
    let LeaseOutcome::Granted(third) = lease("support", T0 + 20_003) else { panic!("a released lease is free") };
    assert!(third.token > second.token);
    let mut old = set(acme(), Expect::Version(2), &[("status", "churned")]);
    old.fence = Some(first.token);
    let (outcome, _) = commit(store, "support", vec![old], T0 + 20_004);
    assert!(
        matches!(outcome, CommitOutcome::Denied(Denial::StaleFence { current: Some(c), .. }) if c == third.token),
        "{outcome:?}"
    );
    assert!(release("support", third.token));
    let broke =
        store.break_lease(acme(), T0 + 20_002, Box::new(|_| draft("h", 0, "lease.break", Decision::Allowed, &[])));
    assert!(broke.is_err(), "nothing live to break");
}

fn an_idempotency_key_records_one_action(store: &dyn Store) {
    create_acme(store);
    let act = |key: Option<&str>, based_on: u64, at: u64| {
        let request = ActRequest {
            actor: actor("sales", 1),
            entity: acme(),
            based_on,
            kind: "email".into(),
            payload: "{\"to\":\"acme\"}".into(),
            idempotency_key: key.map(String::from),
            at_ms: at,
            max_pending: 2,
        };
        store.act(request, allow(), Box::new(|_| draft("sales", 1, "act", Decision::Allowed, &[]))).expect("act").0
    };
    let ActOutcome::Recorded(first) = act(Some("welcome-acme"), 1, T0) else { panic!("recorded") };
    let ActOutcome::Recorded(again) = act(Some("welcome-acme"), 1, T0 + 1) else { panic!("answered") };
    assert_eq!(first, again, "the same key is the same action");
    assert_eq!(store.actions().expect("actions").len(), 1);
    let ActOutcome::Recorded(second) = act(None, 1, T0 + 2) else { panic!("recorded") };
    assert_eq!(second.idempotency_key, format!("action-{}", second.id));
    assert!(second.id > first.id);

    // The outbox is bounded; a stale version is a conflict.
    assert!(matches!(act(None, 1, T0 + 3), ActOutcome::Denied(Denial::Rule { defer: true, .. })));
    assert!(matches!(act(None, 7, T0 + 3), ActOutcome::Conflict(_)));

    let pending: Vec<u64> = store.pending_actions(10).expect("pending").iter().map(|a| a.id).collect();
    assert_eq!(pending, [first.id, second.id]);
    store.mark_delivered(first.id, T0 + 10).expect("delivered");
    store.mark_delivered(first.id, T0 + 20).expect("delivered twice is harmless");
    let pending: Vec<u64> = store.pending_actions(10).expect("pending").iter().map(|a| a.id).collect();
    assert_eq!(pending, [second.id]);
    let delivered = store.actions().expect("actions").into_iter().find(|a| a.id == first.id).expect("kept");
    assert_eq!(delivered.delivered_at_ms, Some(T0 + 10), "the first delivery's time stays");
    // Each recorded action is an event on its entity.
    let recorded = store.history(&acme(), 0, 100).expect("history");
    assert_eq!(recorded.iter().filter(|e| e.kind == EventKind::ActionRecorded).count(), 2);
}

fn failed_deliveries_count_then_dead_letter_then_retry(store: &dyn Store) {
    use concord::kb::DeliveryFailure;
    create_acme(store);
    let request = ActRequest {
        actor: actor("sales", 1),
        entity: acme(),
        based_on: 1,
        kind: "email".into(),
        payload: "{}".into(),
        idempotency_key: Some("k".into()),
        at_ms: T0,
        max_pending: 10,
    };
    let ActOutcome::Recorded(action) =
        store.act(request, allow(), Box::new(|_| draft("sales", 1, "act", Decision::Allowed, &[]))).expect("act").0
    else {
        panic!("recorded")
    };
    let host_draft = |_: &concord::kb::ActionRecord| draft("host", 0, "action.delivery-failed", Decision::Failed, &[]);
    // The second failure is the last; the store counts, and decides.
    let fail = |at: u64| DeliveryFailure {
        at_ms: at,
        error: format!("503 at {at}"),
        max_attempts: 2,
        backoff_ms: 100,
        max_backoff_ms: 1000,
    };
    let (once, _) = store.delivery_failed(action.id, fail(T0 + 1), Box::new(host_draft)).expect("failed");
    assert_eq!((once.attempts, once.next_attempt_ms, once.dead_at_ms), (1, T0 + 101, None));
    let pending = store.pending_actions(10).expect("pending");
    assert_eq!(pending.len(), 1, "a failed action stays in the outbox");
    assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (1, Some("503 at 1700000000001")));
    let (dead, _) = store.delivery_failed(action.id, fail(T0 + 2), Box::new(host_draft)).expect("dead");
    assert_eq!((dead.attempts, dead.dead_at_ms), (2, Some(T0 + 2)));
    assert!(store.pending_actions(10).expect("pending").is_empty(), "the dead letter is out of the outbox");
    assert!(store.delivery_failed(action.id, fail(T0 + 3), Box::new(host_draft)).is_err(), "not in the outbox");
    let retry_draft =
        |_: &concord::kb::ActionRecord| draft("human:alice", 0, "human.action-retry", Decision::Allowed, &[]);
    let (back, entry) = store.retry_action(action.id, T0 + 4, Box::new(retry_draft)).expect("retried");
    assert_eq!((back.attempts, back.dead_at_ms, back.next_attempt_ms), (0, None, 0));
    assert_eq!(back.last_error.as_deref(), Some("503 at 1700000000002"), "the last error stays on the record");
    assert_eq!(entry.agent, "human:alice");
    assert_eq!(store.pending_actions(10).expect("pending").len(), 1, "back in the outbox");
    let err = store.retry_action(action.id, T0 + 5, Box::new(retry_draft)).expect_err("not dead");
    assert!(err.to_string().contains("not in the dead letter"), "{err}");
    assert!(store.retry_action(999, T0 + 5, Box::new(retry_draft)).is_err(), "no such action");
    let calls: Vec<String> = store.audit(&AuditFilter::default()).expect("audit").into_iter().map(|e| e.call).collect();
    assert_eq!(calls.iter().filter(|c| *c == "action.delivery-failed").count(), 2, "each failure audited: {calls:?}");
}

fn change_requests_are_answered_once_by_their_owner(store: &dyn Store) {
    create_acme(store);
    let request = ChangeRequest {
        id: 0,
        from: "sales".into(),
        owner: "support".into(),
        entity: acme(),
        proposed: vec![("status".into(), text("active"))],
        reason: "they renewed".into(),
        applied: None,
        resolution: None,
    };
    let (stored, _) = store
        .request_change(
            request,
            actor("sales", 1),
            T0,
            Box::new(|_| draft("sales", 1, "kb.request-change", Decision::Allowed, &[])),
        )
        .expect("request");
    let asked = store.event(stored.id).expect("event").expect("the request is an event");
    assert_eq!(asked.kind, EventKind::ChangeRequested);
    assert_eq!(asked.changes[0].before, Some(text("active")));
    assert_eq!(store.change_requests(0, 10).expect("requests"), std::slice::from_ref(&stored));

    let resolve = |who: &str| {
        store
            .resolve_change(
                stored.id,
                actor(who, 2),
                true,
                "done".into(),
                T0 + 1,
                Box::new(|_| draft("x", 2, "kb.resolve-change", Decision::Allowed, &[])),
            )
            .expect("resolve")
            .0
    };
    assert!(resolve("sales").is_err(), "only the owner answers");
    let answered = resolve("support").expect("the owner answers");
    assert_eq!((answered.applied, answered.resolution.as_deref()), (Some(true), Some("done")));
    assert!(resolve("support").is_err(), "once");
    let expired = store.expire_change_request(
        stored.id,
        "too late".into(),
        T0 + 2,
        Box::new(|_| draft("host", 0, "expire", Decision::Allowed, &[])),
    );
    assert!(expired.is_err(), "a closed request does not expire");
    let kinds: Vec<EventKind> = store.history(&acme(), 0, 10).expect("history").iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Created, EventKind::ChangeRequested, EventKind::ChangeResolved]);
}

fn the_audit_is_one_gap_free_chain_and_queries_find_it(store: &dyn Store) {
    create_acme(store);
    let read = store.append_read_audit(draft("sales", 7, "kb.get", Decision::Allowed, &[&acme()])).expect("read audit");
    commit(store, "sales", vec![set(globex(), Expect::Absent, &[("status", "active")])], T0 + 1);
    store.append_audit(AuditDraft::host("host.stop", "", serde_json::json!({}), "stopped".into())).expect("host entry");
    for i in 0..20 {
        store.append_read_audit(draft("support", 8, "kb.log", Decision::Allowed, &[])).expect("log");
        if i % 5 == 0 {
            commit(
                store,
                "support",
                vec![set(EntityRef::new("ticket", i.to_string()), Expect::Absent, &[("n", "1")])],
                T0 + 2,
            );
        }
    }
    let all = store.audit(&AuditFilter::default()).expect("audit");
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    assert_eq!(all.iter().find(|e| e.seq == read).map(|e| e.call.as_str()), Some("kb.get"));
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "entry {} links to {}", pair[1].seq, pair[0].seq);
    }
    assert!(
        matches!(store.verify_audit().expect("verify"), Verification::Intact { entries, .. } if entries == all.len() as u64)
    );
    assert_eq!(store.audit_entry(read).expect("entry").as_ref(), all.iter().find(|e| e.seq == read));

    // Queries return exactly the matches, oldest first, paged both ways.
    let filter = |f: AuditFilter| store.audit(&f).expect("query").iter().map(|e| e.seq).collect::<Vec<_>>();
    let expect = |pred: &dyn Fn(&AuditEntry) -> bool| all.iter().filter(|e| pred(e)).map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        filter(AuditFilter { agent: Some("sales".into()), ..Default::default() }),
        expect(&|e| e.agent == "sales")
    );
    assert_eq!(
        filter(AuditFilter { entity: Some("customer/acme".into()), ..Default::default() }),
        expect(&|e| e.entities.iter().any(|x| x == "customer/acme"))
    );
    assert_eq!(
        filter(AuditFilter {
            agent: Some("support".into()),
            entity: Some("customer/acme".into()),
            ..Default::default()
        }),
        expect(&|e| e.agent == "support" && e.entities.iter().any(|x| x == "customer/acme"))
    );
    assert_eq!(filter(AuditFilter { invocation: Some(8), ..Default::default() }), expect(&|e| e.invocation == 8));
    assert_eq!(
        filter(AuditFilter { trace: Some([7, 8].into()), ..Default::default() }),
        expect(&|e| e.invocation == 7 || e.invocation == 8)
    );
    let logs = expect(&|e| e.call == "kb.log");
    assert_eq!(
        filter(AuditFilter { call: Some("kb.log".into()), limit: Some(3), ..Default::default() }),
        logs[logs.len() - 3..]
    );
    let after = logs[2];
    assert_eq!(
        filter(AuditFilter {
            invocation: Some(8),
            call: Some("kb.log".into()),
            after: Some(after),
            limit: Some(2),
            ..Default::default()
        }),
        logs[3..5]
    );
}

fn replay_rebuilds_the_projection(store: &dyn Store) {
    create_acme(store);
    commit(store, "support", vec![set(acme(), Expect::Version(1), &[("status", "at_risk")])], T0 + 1);
    commit(store, "sales", vec![set(globex(), Expect::Absent, &[("status", "active")])], T0 + 2);
    let mut unset = set(acme(), Expect::Version(2), &[]);
    unset.unset = vec!["status".into()];
    commit(store, "support", vec![unset], T0 + 3);
    let report = store.replay().expect("replay");
    assert_eq!((report.events, report.entities), (4, 2));
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert_eq!(field(store, &acme(), "status"), None, "unset");
    assert_eq!(store.list(Some("customer"), None, 10).expect("list").len(), 2);
    assert_eq!(store.list(None, Some("customer/acme"), 10).expect("list").len(), 1, "a page after a key");
}

fn history_recent_state_at_and_read_cursors(store: &dyn Store) {
    create_acme(store);
    for (v, status) in [(1, "at_risk"), (2, "churned"), (3, "active")] {
        commit(store, "support", vec![set(acme(), Expect::Version(v), &[("status", status)])], T0 + v * 60_000);
    }
    let seqs = |events: Vec<concord::kb::Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.history(&acme(), 0, 10).expect("history")), [1, 2, 3, 4]);
    assert_eq!(seqs(store.history(&acme(), 2, 10).expect("history")), [3, 4]);
    assert_eq!(seqs(store.history_back(&acme(), 4, 2).expect("back")), [3, 2]);
    assert_eq!(seqs(store.recent(&acme(), T0 + 120_000).expect("recent")), [3, 4]);

    let at = |point| store.get_at(&acme(), point).expect("at").and_then(|e| e.fields.get("status").cloned());
    assert_eq!(at(AtPoint::Seq(2)), Some(text("at_risk")));
    assert_eq!(at(AtPoint::Time(T0 + 150_000)), Some(text("churned")));
    assert_eq!(store.get_at(&acme(), AtPoint::Time(T0 - 1)).expect("at"), None, "before it existed");

    // A read moves the agent's cursor; changes-since-read gives what came after.
    store
        .record_read("sales".into(), acme().key(), 2, draft("sales", 3, "kb.get", Decision::Allowed, &[&acme()]))
        .expect("read");
    let since = || {
        store
            .changes_since_read(
                "sales".into(),
                acme(),
                Box::new(|_| draft("sales", 3, "kb.changes-since-read", Decision::Allowed, &[])),
            )
            .expect("since")
            .0
    };
    assert_eq!(seqs(since()), [3, 4]);
    assert_eq!(seqs(since()), Vec::<u64>::new(), "the cursor moved");
    commit(store, "support", vec![set(acme(), Expect::Version(4), &[("note", "x")])], T0 + 300_000);
    assert_eq!(seqs(since()), [5]);
    assert_eq!(store.event(5).expect("event").map(|e| e.agent), Some("support".into()));
    assert_eq!(store.event(6).expect("event"), None);
}

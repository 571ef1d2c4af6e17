//! `concord conflicts`: where agents get in each other's way, with the audit
//! and event sequence numbers to look at.
//!
//! The report is kept up to date rather than recomputed: a [`Tracker`]
//! counts each audit entry and event once, in seq order, and remembers how
//! far it got. The host keeps one ([`crate::Host::conflicts`]), catches it
//! up before each report (only the entries written since the last one),
//! and stores it in the knowledge base now and then (host state
//! [`STATE_NAME`]), so a restart or a read command starts from there
//! instead of from the first entry. Everything in it is derived from the
//! logs: dropping it only costs a recount.

use crate::audit::{AuditEntry, AuditFilter, Decision, calls};
use crate::kb::{EntityRef, Event, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Under this name the tracker is kept in the store's host state.
pub const STATE_NAME: &str = "conflicts";

/// A tally keeps the seqs of its first this many entries (its count is
/// exact): enough to go and look, bounded however long the log grows.
pub const MAX_SEQS: usize = 100;

/// The longest ping-pong window a report can be asked for: the tracker
/// keeps every put-back at most this far apart.
pub const MAX_WINDOW_MS: u64 = 24 * 3_600_000;

/// How far back, in one entity's events, a change looks for the change of
/// the same field before it.
const LOOK_BACK: usize = 64;

/// Put-backs kept per entity, field and pair of agents.
const MAX_PUT_BACKS: usize = 4096;

/// (entity, field) pairs whose last change is remembered in memory; past
/// it the memory is dropped and the store is asked again.
const MAX_LAST_CHANGES: usize = 65_536;

/// A count with the sequence numbers behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tally {
    pub count: usize,
    /// Audit seqs (or event seqs, for ping-pongs), oldest first: the first
    /// [`MAX_SEQS`] of `count`.
    pub seqs: Vec<u64>,
}

impl Tally {
    fn add(&mut self, seq: u64) {
        self.count += 1;
        if self.seqs.len() < MAX_SEQS {
            self.seqs.push(seq);
        }
    }
}

/// A field flipped back and forth between two agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PingPong {
    pub entity: String,
    pub field: String,
    pub agents: (String, String),
    /// How many times one agent put back the other's change.
    pub flips: usize,
    /// The events involved.
    pub events: Vec<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// Refusals by (agent, the other party, decision).
    pub by_pair: BTreeMap<String, Tally>,
    /// Refusals by entity and decision.
    pub by_entity: BTreeMap<String, Tally>,
    /// Refusals by field and decision.
    pub by_field: BTreeMap<String, Tally>,
    /// Agents that acted on a stale version (a conflict on a commit or an
    /// action), per agent.
    pub stale: BTreeMap<String, Tally>,
    pub ping_pongs: Vec<PingPong>,
    /// Cascades stopped at the depth limit (audit seqs of the stops).
    pub stopped_cascades: Tally,
    /// The deepest chain seen: its invocations, root first.
    pub deepest_chain: Vec<u64>,
    /// Refusal rate per agent: refused calls / write-like calls.
    pub refusal_rate: BTreeMap<String, (usize, usize)>,
    /// Every refusal in the log by decision (`invalid` included), for the
    /// run summary.
    pub refused: BTreeMap<String, usize>,
    /// The last audit entry and event the report counts.
    pub through_audit: u64,
    pub through_event: u64,
}

/// One put-back: an agent set a field back to its value before another
/// agent's change, `gap_ms` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PutBack {
    gap_ms: u64,
    changed: u64,
    put_back: u64,
}

/// The last change of one field of one entity, remembered between events.
#[derive(Debug, Clone)]
struct LastChange {
    seq: u64,
    at_ms: u64,
    agent: String,
    before: Option<crate::kb::Value>,
}

/// The conflicts report, counted incrementally (see the module docs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tracker {
    /// The last audit seq and event seq counted.
    audit_seq: u64,
    event_seq: u64,
    by_pair: BTreeMap<String, Tally>,
    by_entity: BTreeMap<String, Tally>,
    by_field: BTreeMap<String, Tally>,
    stale: BTreeMap<String, Tally>,
    refusal_rate: BTreeMap<String, (usize, usize)>,
    refused: BTreeMap<String, usize>,
    stopped: Tally,
    /// The deepest chain's depth and its last invocation (the earliest of
    /// equally deep ones).
    deepest: Option<(u32, u64)>,
    /// Put-backs by entity, field and pair of agents (in name order).
    put_backs: BTreeMap<String, Vec<PutBack>>,
    /// Audit entries and events counted since the tracker was last stored.
    #[serde(skip)]
    unsaved: u64,
    /// Caches, rebuilt from the store when missing.
    #[serde(skip)]
    depths: HashMap<u64, u32>,
    #[serde(skip)]
    last_changes: HashMap<(String, String), LastChange>,
}

/// The key of a put-back list: entity, field and agents, NUL-separated
/// (none of them can hold a NUL: the schema and the agent names refuse it).
fn put_back_key(entity: &str, field: &str, a: &str, b: &str) -> String {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    format!("{entity}\0{field}\0{a}\0{b}")
}

/// Audit entries and events read per page while catching up.
const PAGE: usize = 4096;

/// Catching up stores the tracker once it has counted this many more.
const SAVE_EVERY: u64 = 16_384;

impl Tracker {
    /// The tracker stored in `store`, or a new one if none is (or the
    /// stored one does not decode: it is only derived data, recounted).
    pub fn load(store: &dyn Store) -> Result<Tracker, StoreError> {
        Ok(match store.host_state(STATE_NAME)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("the stored conflicts report does not decode ({e}); counting it again");
                Tracker::default()
            }),
            None => Tracker::default(),
        })
    }

    /// Stores the tracker in `store` (host state, durable).
    pub fn save(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(self).map_err(|e| StoreError::Backend(e.to_string()))?;
        store.put_host_state(STATE_NAME.into(), bytes)?;
        self.unsaved = 0;
        Ok(())
    }

    /// Whether it has counted enough since it was last stored to be worth
    /// storing again.
    pub fn worth_saving(&self) -> bool {
        self.unsaved >= SAVE_EVERY
    }

    /// Counts every audit entry and event written since the last call.
    pub fn catch_up(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        loop {
            let filter = AuditFilter { after: Some(self.audit_seq), limit: Some(PAGE), ..Default::default() };
            let page = store.audit(&filter)?;
            for e in &page {
                self.add_audit(store, e)?;
            }
            if page.len() < PAGE {
                break;
            }
        }
        loop {
            let page = store.events(self.event_seq, PAGE)?;
            for e in &page {
                self.add_event(store, e)?;
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(())
    }

    fn add_audit(&mut self, store: &dyn Store, e: &AuditEntry) -> Result<(), StoreError> {
        if e.seq <= self.audit_seq {
            return Ok(());
        }
        self.audit_seq = e.seq;
        self.unsaved += 1;
        if e.decision.is_refusal() {
            *self.refused.entry(e.decision.as_str().to_string()).or_default() += 1;
        }
        if e.call == calls::INVOCATION_START
            && let Some(parent) = e.causation
        {
            let depth = self.depth_of(store, parent)? + 1;
            self.depths.insert(e.invocation, depth);
            if self.deepest.is_none_or(|(d, _)| depth > d) {
                self.deepest = Some((depth, e.invocation));
            }
        }
        if matches!(e.call.as_str(), calls::COMMIT | calls::ACT | calls::LEASE) {
            let rate = self.refusal_rate.entry(e.agent.clone()).or_default();
            rate.1 += 1;
            if e.decision.is_refusal() {
                rate.0 += 1;
            }
        }
        if e.decision == Decision::Stopped {
            self.stopped.add(e.seq);
            return Ok(());
        }
        if !e.decision.is_refusal() || e.decision == Decision::Invalid {
            return Ok(());
        }
        let peer = e.peer.as_deref().unwrap_or("-");
        self.by_pair.entry(format!("{} vs {peer}: {}", e.agent, e.decision)).or_default().add(e.seq);
        for entity in &e.entities {
            self.by_entity.entry(format!("{entity}: {}", e.decision)).or_default().add(e.seq);
        }
        for f in &e.fields {
            self.by_field.entry(format!("{f}: {}", e.decision)).or_default().add(e.seq);
        }
        if e.decision == Decision::Conflict {
            self.stale.entry(e.agent.clone()).or_default().add(e.seq);
        }
        Ok(())
    }

    /// How deep in its cascade an invocation is (0 for a trigger's): from
    /// memory, or by following its causation through the audit (an
    /// invocation's id is the seq of its start entry).
    fn depth_of(&mut self, store: &dyn Store, invocation: u64) -> Result<u32, StoreError> {
        if let Some(d) = self.depths.get(&invocation) {
            return Ok(*d);
        }
        let (mut depth, mut at) = (0u32, invocation);
        // A chain is at most 64 deep (limits.max_cascade_depth); the bound
        // only guards against a log that loops.
        while depth <= 64 {
            match store.audit_entry(at)?.and_then(|e| e.causation) {
                Some(parent) => {
                    depth += 1;
                    at = parent;
                }
                None => break,
            }
        }
        if self.depths.len() >= MAX_LAST_CHANGES {
            self.depths.clear();
        }
        self.depths.insert(invocation, depth);
        Ok(depth)
    }

    fn add_event(&mut self, store: &dyn Store, b: &Event) -> Result<(), StoreError> {
        if b.seq <= self.event_seq {
            return Ok(());
        }
        self.event_seq = b.seq;
        self.unsaved += 1;
        if !b.kind.changes_state() {
            return Ok(());
        }
        let key = b.entity.key();
        for c in &b.changes {
            let slot = (key.clone(), c.name.clone());
            let previous = match self.last_changes.get(&slot) {
                Some(last) => Some(last.clone()),
                None => last_change(store, &b.entity, &c.name, b.seq)?,
            };
            if let Some(a) = previous
                && a.agent != b.agent
                && c.after == a.before
                && b.at_ms.saturating_sub(a.at_ms) <= MAX_WINDOW_MS
            {
                let list = self.put_backs.entry(put_back_key(&key, &c.name, &a.agent, &b.agent)).or_default();
                if list.len() < MAX_PUT_BACKS {
                    let gap_ms = b.at_ms.saturating_sub(a.at_ms);
                    list.push(PutBack { gap_ms, changed: a.seq, put_back: b.seq });
                }
            }
            if self.last_changes.len() >= MAX_LAST_CHANGES {
                self.last_changes.clear();
            }
            let last = LastChange { seq: b.seq, at_ms: b.at_ms, agent: b.agent.clone(), before: c.before.clone() };
            self.last_changes.insert(slot, last);
        }
        Ok(())
    }

    /// The report as of what has been counted. A ping-pong is a field put
    /// back to its previous value by another agent within `window_ms`, at
    /// least twice between the same two agents.
    pub fn report(&self, store: &dyn Store, window_ms: u64) -> Result<Report, StoreError> {
        let mut ping_pongs = Vec::new();
        for (key, list) in &self.put_backs {
            let within: Vec<&PutBack> = list.iter().filter(|p| p.gap_ms <= window_ms).collect();
            if within.len() < 2 {
                continue;
            }
            let mut parts = key.split('\0');
            let (entity, field, a, b) = (parts.next(), parts.next(), parts.next(), parts.next());
            let (Some(entity), Some(field), Some(a), Some(b)) = (entity, field, a, b) else { continue };
            let events: BTreeSet<u64> = within.iter().flat_map(|p| [p.changed, p.put_back]).collect();
            ping_pongs.push(PingPong {
                entity: entity.into(),
                field: field.into(),
                agents: (a.into(), b.into()),
                flips: within.len(),
                events: events.into_iter().collect(),
            });
        }
        let mut deepest_chain = Vec::new();
        if let Some((_, leaf)) = self.deepest {
            deepest_chain.push(leaf);
            let mut at = leaf;
            while deepest_chain.len() <= 65 {
                match store.audit_entry(at)?.and_then(|e| e.causation) {
                    Some(parent) if !deepest_chain.contains(&parent) => {
                        deepest_chain.push(parent);
                        at = parent;
                    }
                    _ => break,
                }
            }
            deepest_chain.reverse();
        }
        Ok(Report {
            by_pair: self.by_pair.clone(),
            by_entity: self.by_entity.clone(),
            by_field: self.by_field.clone(),
            stale: self.stale.clone(),
            ping_pongs,
            stopped_cascades: self.stopped.clone(),
            deepest_chain,
            refusal_rate: self.refusal_rate.clone(),
            refused: self.refused.clone(),
            through_audit: self.audit_seq,
            through_event: self.event_seq,
        })
    }
}

/// The change of `field` before event `before_seq` on `entity`, looking
/// back at most [`LOOK_BACK`] of its events.
fn last_change(
    store: &dyn Store,
    entity: &EntityRef,
    field: &str,
    before_seq: u64,
) -> Result<Option<LastChange>, StoreError> {
    for e in store.history_back(entity, before_seq, LOOK_BACK)? {
        if !e.kind.changes_state() {
            continue;
        }
        if let Some(c) = e.changes.iter().find(|c| c.name == field) {
            return Ok(Some(LastChange {
                seq: e.seq,
                at_ms: e.at_ms,
                agent: e.agent.clone(),
                before: c.before.clone(),
            }));
        }
    }
    Ok(None)
}

/// The whole report, counted from the first entry (without a stored
/// tracker). For a live host, [`crate::Host::conflicts`] is cheaper.
pub fn analyze(store: &dyn Store, window_ms: u64) -> Result<Report, StoreError> {
    let mut tracker = Tracker::default();
    tracker.catch_up(store)?;
    tracker.report(store, window_ms)
}

/// The report from the tracker stored in `store`, caught up (for read
/// commands, which cannot store it back).
pub fn stored(store: &dyn Store, window_ms: u64) -> Result<Report, StoreError> {
    let mut tracker = Tracker::load(store)?;
    tracker.catch_up(store)?;
    tracker.report(store, window_ms)
}

/// Checks a requested ping-pong window.
pub fn check_window(window_ms: u64) -> Result<u64, String> {
    if window_ms > MAX_WINDOW_MS {
        return Err(format!(
            "a ping-pong window of {window_ms} ms is longer than the {MAX_WINDOW_MS} ms (24 h) the report keeps; ask for less"
        ));
    }
    Ok(window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditDraft;

    fn start(invocation: u64, causation: Option<u64>) -> AuditEntry {
        let draft = AuditDraft {
            agent: "a".into(),
            digest: String::new(),
            invocation: Some(invocation),
            call: calls::INVOCATION_START.into(),
            entities: vec![],
            arg_bytes: 0,
            args: String::new(),
            decision: Decision::Allowed,
            rule: None,
            peer: None,
            fields: vec![],
            causation,
            outcome: String::new(),
            duration_us: 0,
        };
        AuditEntry::unsealed(draft, invocation, 0)
    }

    /// Of equally deep chains the earliest is kept, and a deeper one
    /// replaces it (depths come from memory here: every parent was seen).
    #[test]
    fn the_deepest_chain_is_the_earliest_of_equals() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::kb::redb::RedbStore::open(&dir.path().join("kb.redb")).expect("store");
        let mut t = Tracker::default();
        for (i, c) in [(1, None), (2, Some(1)), (3, None), (4, Some(3))] {
            t.add_audit(&store, &start(i, c)).expect("count");
        }
        assert_eq!(t.deepest, Some((1, 2)), "of two of depth 1, the first");
        for (i, c) in [(5, None), (6, Some(5)), (7, Some(6))] {
            t.add_audit(&store, &start(i, c)).expect("count");
        }
        assert_eq!(t.deepest, Some((2, 7)), "the deepest wins");
    }

    /// Sets `customer/acme.status` as `agent`, on whatever version it is.
    fn set_status(store: &crate::kb::redb::RedbStore, agent: &str, status: &str, at_ms: u64) {
        use crate::kb::{Actor, CommitRequest, EventKind, Expect, Value, Write};
        let entity = EntityRef::new("customer", "acme");
        let expect = store.get(&entity).expect("get").map_or(Expect::Absent, |e| Expect::Version(e.version));
        let request = CommitRequest {
            actor: Actor { name: agent.into(), invocation: 1 },
            reason: "flip".into(),
            writes: vec![Write {
                entity,
                expect,
                set: vec![("status".into(), Value::Text(status.into()))],
                unset: vec![],
                fence: None,
            }],
            at_ms,
            by_human: false,
            kind: EventKind::Updated,
        };
        let audit = {
            let agent = agent.to_string();
            Box::new(move |_: &crate::kb::CommitOutcome| AuditDraft {
                agent,
                ..start(0, None).into_draft(calls::COMMIT)
            })
        };
        store.commit(request, Box::new(|_| None), audit).expect("commit");
    }

    impl AuditEntry {
        fn into_draft(self, call: &str) -> AuditDraft {
            AuditDraft {
                agent: self.agent,
                digest: self.digest,
                invocation: Some(1),
                call: call.into(),
                entities: vec!["customer/acme".into()],
                arg_bytes: 0,
                args: String::new(),
                decision: Decision::Allowed,
                rule: None,
                peer: None,
                fields: vec!["status".into()],
                causation: None,
                outcome: String::new(),
                duration_us: 0,
            }
        }
    }

    /// A tracker caught up in steps, stored and loaded in between, reports
    /// exactly what one count from the first entry does: refusals, rates,
    /// put-backs by window, and the deepest chain.
    #[test]
    fn a_tracker_counted_in_steps_reports_what_a_full_count_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::kb::redb::RedbStore::open(&dir.path().join("kb.redb")).expect("store");
        let mut tracker = Tracker::default();
        let refusal = |agent: &str, decision: Decision, peer: &str| AuditDraft {
            agent: agent.into(),
            decision,
            peer: Some(peer.into()),
            ..start(0, None).into_draft(calls::COMMIT)
        };
        for round in 0..3u64 {
            let t = round * 100_000;
            // sales and support flip status back and forth, 1 s apart.
            set_status(&store, "sales", "active", t);
            set_status(&store, "support", "at_risk", t + 1000);
            set_status(&store, "sales", "active", t + 2000);
            set_status(&store, "support", "at_risk", t + 3000);
            store.append_read_audit(refusal("sales", Decision::Conflict, "support")).expect("audit");
            store.append_read_audit(refusal("product", Decision::Deferred, "rule:x")).expect("audit");
            store.append_read_audit(refusal("product", Decision::Invalid, "-")).expect("audit");
            let root = store.append_read_audit(start(0, None).into_draft(calls::INVOCATION_START)).expect("audit");
            let mut child = AuditDraft { causation: Some(root), ..start(0, None).into_draft(calls::INVOCATION_START) };
            child.invocation = None;
            let child = store.append_read_audit(child).expect("audit");
            if round == 1 {
                let mut grandchild = start(0, None).into_draft(calls::INVOCATION_START);
                (grandchild.invocation, grandchild.causation) = (None, Some(child));
                store.append_read_audit(grandchild).expect("audit");
            }
            tracker.catch_up(&store).expect("catch up");
            tracker.save(&store).expect("save");
            tracker = Tracker::load(&store).expect("load");
        }
        for window in [500, 1000, 2500, 600_000] {
            let full = analyze(&store, window).expect("full count");
            let stepped = tracker.report(&store, window).expect("report");
            assert_eq!(stepped, full, "window {window}");
        }
        let r = tracker.report(&store, 600_000).expect("report");
        assert_eq!(r.refused.get("conflict"), Some(&3));
        assert_eq!(r.refused.get("invalid"), Some(&3), "counted for the summary");
        assert!(!r.by_pair.keys().any(|k| k.contains("invalid")), "not a conflict between agents");
        assert_eq!(r.by_pair["sales vs support: conflict"].count, 3);
        assert_eq!(r.deepest_chain.len(), 3, "the round with a grandchild: {:?}", r.deepest_chain);
        let pp = &r.ping_pongs;
        assert_eq!(pp.len(), 1, "{pp:?}");
        assert_eq!(pp[0].agents, ("sales".to_string(), "support".to_string()));
        assert_eq!(tracker.report(&store, 999).expect("report").ping_pongs, vec![], "1 s apart is outside 999 ms");
        let rounds = analyze(&store, 600_000).expect("full");
        // Within a round: 2 put-backs; across rounds 100 s apart too.
        assert!(rounds.ping_pongs[0].flips >= 6, "{:?}", rounds.ping_pongs);
    }

    #[test]
    fn tallies_count_everything_and_keep_the_first_seqs() {
        let mut t = Tally::default();
        for seq in 1..=(MAX_SEQS as u64 + 50) {
            t.add(seq);
        }
        assert_eq!(t.count, MAX_SEQS + 50);
        assert_eq!(t.seqs.len(), MAX_SEQS);
        assert_eq!(t.seqs.first(), Some(&1));
    }

    #[test]
    fn windows_longer_than_kept_are_refused() {
        assert_eq!(check_window(600_000), Ok(600_000));
        let e = check_window(MAX_WINDOW_MS + 1).expect_err("too long");
        assert!(e.contains("24 h"), "{e}");
    }
}

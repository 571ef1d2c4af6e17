//! `concord conflicts`: where agents get in each other's way, with the audit
//! and event sequence numbers to look at.

use crate::audit::{AuditEntry, AuditFilter, Decision, calls};
use crate::kb::{Event, Store, StoreError, Value};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A count with the sequence numbers behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub count: usize,
    /// Audit seqs (or event seqs, for ping-pongs), oldest first.
    pub seqs: Vec<u64>,
}

impl Tally {
    fn add(&mut self, seq: u64) {
        self.count += 1;
        self.seqs.push(seq);
    }
}

/// A field flipped back and forth between two agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
}

/// Analyses the audit and the event log. A ping-pong is a field put back
/// to its previous value by another agent within `window_ms`, at least
/// twice between the same two agents.
pub fn analyze(store: &dyn Store, window_ms: u64) -> Result<Report, StoreError> {
    let audit = store.audit(&AuditFilter::default())?;
    let mut r = Report::default();
    for e in &audit {
        if matches!(e.call.as_str(), calls::COMMIT | calls::ACT | calls::LEASE) {
            let rate = r.refusal_rate.entry(e.agent.clone()).or_default();
            rate.1 += 1;
            if e.decision.is_refusal() {
                rate.0 += 1;
            }
        }
        if e.decision == Decision::Stopped {
            r.stopped_cascades.add(e.seq);
            continue;
        }
        if !e.decision.is_refusal() || e.decision == Decision::Invalid {
            continue;
        }
        let peer = e.peer.clone().unwrap_or_else(|| "-".into());
        r.by_pair.entry(format!("{} vs {peer}: {}", e.agent, e.decision)).or_default().add(e.seq);
        for entity in &e.entities {
            r.by_entity.entry(format!("{entity}: {}", e.decision)).or_default().add(e.seq);
        }
        for f in &e.fields {
            r.by_field.entry(format!("{f}: {}", e.decision)).or_default().add(e.seq);
        }
        if e.decision == Decision::Conflict {
            r.stale.entry(e.agent.clone()).or_default().add(e.seq);
        }
    }
    r.deepest_chain = deepest_chain(&audit);
    r.ping_pongs = ping_pongs(&store.events(0, usize::MAX)?, window_ms);
    Ok(r)
}

fn deepest_chain(audit: &[AuditEntry]) -> Vec<u64> {
    let parent: HashMap<u64, u64> = audit
        .iter()
        .filter(|e| e.call == calls::INVOCATION_START)
        .filter_map(|e| e.causation.map(|c| (e.invocation, c)))
        .collect();
    // In seq order, so that of equally deep chains the earliest is shown,
    // the same one every time.
    let mut starts: Vec<u64> = parent.keys().copied().collect();
    starts.sort_unstable();
    let mut best = vec![];
    for start in starts {
        let mut chain = vec![start];
        let mut at = start;
        while let Some(&p) = parent.get(&at) {
            if chain.contains(&p) {
                break;
            }
            chain.push(p);
            at = p;
        }
        if chain.len() > best.len() {
            best = chain;
        }
    }
    best.reverse();
    best
}

/// One change of one field: the event, the value before and after.
type Change<'a> = (&'a Event, Option<&'a Value>, Option<&'a Value>);

fn ping_pongs(events: &[Event], window_ms: u64) -> Vec<PingPong> {
    // Per (entity, field): the changes in order.
    let mut changes: BTreeMap<(String, String), Vec<Change<'_>>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind.changes_state()) {
        for c in &e.changes {
            changes.entry((e.entity.key(), c.name.clone())).or_default().push((e, c.before.as_ref(), c.after.as_ref()));
        }
    }
    let mut out = vec![];
    for ((entity, field), list) in changes {
        let mut flips: BTreeMap<(String, String), (usize, BTreeSet<u64>)> = BTreeMap::new();
        for pair in list.windows(2) {
            let ((a, a_before, _), (b, _, b_after)) = (pair[0], pair[1]);
            let put_back = a.agent != b.agent && b_after == a_before && b.at_ms.saturating_sub(a.at_ms) <= window_ms;
            if put_back {
                let key = if a.agent < b.agent {
                    (a.agent.clone(), b.agent.clone())
                } else {
                    (b.agent.clone(), a.agent.clone())
                };
                let entry = flips.entry(key).or_default();
                entry.0 += 1;
                entry.1.extend([a.seq, b.seq]);
            }
        }
        for (agents, (n, seqs)) in flips {
            if n >= 2 {
                out.push(PingPong {
                    entity: entity.clone(),
                    field: field.clone(),
                    agents,
                    flips: n,
                    events: seqs.into_iter().collect(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditDraft, Decision};

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

    /// Of equally deep chains the earliest is reported, whatever the
    /// hash map's order (the demo's output is the same at every run).
    #[test]
    fn the_deepest_chain_is_the_earliest_of_equals() {
        let audit: Vec<AuditEntry> =
            [(1, None), (2, Some(1)), (3, None), (4, Some(3)), (5, None), (6, Some(5)), (7, Some(6))]
                .into_iter()
                .map(|(i, c)| start(i, c))
                .collect();
        assert_eq!(deepest_chain(&audit), vec![5, 6, 7], "the deepest wins");
        for _ in 0..20 {
            assert_eq!(deepest_chain(&audit[..4]), vec![1, 2], "of two of depth 2, the first");
        }
    }
}

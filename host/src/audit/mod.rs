//! The audit log: one entry for every host call, hash-chained.
//!
//! Entries are appended by the store (see [`crate::kb::Store`]) so that a
//! commit's entry lands in the same transaction as the commit itself. This
//! module owns the entry format, the chain hash and the query filter.
//!
//! # Hash format
//! `hash = hex(sha256(json))`, where `json` is the entry serialized by
//! `serde_json` with every field except `hash`, in declaration order (the
//! order of [`AuditEntry`]'s fields). `prev_hash` of the first entry is 64
//! zeros. Any edit, deletion or reordering breaks the chain at that entry.

pub mod checkpoint;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// What the host decided about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call was allowed and carried out.
    Allowed,
    /// An ownership rule refused it.
    Forbidden,
    /// A version expectation did not hold.
    Conflict,
    /// Schema violation or malformed request.
    Invalid,
    /// The agent ran but reported an error.
    Failed,
    /// The invocation trapped: a wasm trap, fuel or time exhausted, memory
    /// limit hit, or an instantiation failure.
    Trapped,
    /// A coordination rule deferred it ("not now").
    Deferred,
    /// A coordination rule denied it.
    Denied,
    /// A human pin refused it.
    Pinned,
    /// Another agent's lease, or a stale fencing token, refused it.
    Leased,
    /// A cascade hit its depth limit and was not run.
    Stopped,
    /// The host failed to carry the call out (its write batch was rolled
    /// back after a store error); nothing of it was written.
    Fault,
}

impl Decision {
    pub const ALL: [Decision; 12] = [
        Self::Allowed,
        Self::Forbidden,
        Self::Conflict,
        Self::Invalid,
        Self::Failed,
        Self::Trapped,
        Self::Deferred,
        Self::Denied,
        Self::Pinned,
        Self::Leased,
        Self::Stopped,
        Self::Fault,
    ];

    /// Whether the host refused the call (as opposed to allowing it, or the
    /// agent failing on its own).
    pub fn is_refusal(self) -> bool {
        !matches!(self, Self::Allowed | Self::Failed | Self::Trapped | Self::Fault)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Forbidden => "forbidden",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Failed => "failed",
            Self::Trapped => "trapped",
            Self::Deferred => "deferred",
            Self::Denied => "denied",
            Self::Pinned => "pinned",
            Self::Leased => "leased",
            Self::Stopped => "stopped",
            Self::Fault => "fault",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|d| d.as_str()).collect();
            format!("unknown outcome `{s}`: use one of {}", all.join(", "))
        })
    }
}

/// The names of the calls the audit records.
pub mod calls {
    pub const INVOCATION_START: &str = "invocation.start";
    pub const INVOCATION_END: &str = "invocation.end";
    pub const GET: &str = "kb.get";
    pub const COMMIT: &str = "kb.commit";
    pub const HISTORY: &str = "kb.history";
    pub const RECENT: &str = "kb.recent";
    pub const LOG: &str = "log.log";
    pub const ACT: &str = "coord.act";
    pub const REQUEST_CHANGE: &str = "coord.request-change";
    pub const RESOLVE_CHANGE: &str = "coord.resolve-change";
    pub const LEASE: &str = "coord.lease";
    pub const RENEW: &str = "coord.renew";
    pub const RELEASE: &str = "coord.release";
    pub const CHANGES: &str = "coord.changes-since-read";
    /// An outbound HTTP request (`wasi:http`), checked and sent by the host.
    pub const HTTP: &str = "http.request";
    /// A chat completion from a model of `[models]`, asked by the host.
    pub const MODEL: &str = "model.complete";
    /// The models an agent may call.
    pub const MODEL_GRANTED: &str = "model.granted";
    /// A cascade step that was not run (depth limit).
    pub const CASCADE_STOPPED: &str = "cascade.stopped";
    /// Host lifecycle (agent `host`; the digest is the config's sha256).
    pub const HOST_START: &str = "host.start";
    pub const HOST_STOP: &str = "host.stop";
    pub const CONFIG_CHANGED: &str = "config.changed";
    /// A config reload put in force, or refused (`concord serve`).
    pub const CONFIG_RELOADED: &str = "config.reloaded";
    pub const CONFIG_REFUSED: &str = "config.refused";
    /// Hot reload of the agents folder: args name the agent, its file, and
    /// the `old` and `new` sha256.
    pub const AGENT_LOADED: &str = "agent.loaded";
    pub const AGENT_REPLACED: &str = "agent.replaced";
    pub const AGENT_REMOVED: &str = "agent.removed";
    pub const AGENT_REFUSED: &str = "agent.refused";
    /// A schedule fired (its seq is the causation of the invocation it
    /// starts), or a fire was skipped (overlap, or missed while down).
    pub const SCHEDULE_FIRE: &str = "schedule.fire";
    pub const SCHEDULE_SKIPPED: &str = "schedule.skipped";
    /// A delivery of an action failed (the HTTP sink; the last attempt
    /// moves it to the dead letter), and an operator's retry of one there.
    pub const ACTION_FAILED: &str = "action.delivery-failed";
    pub const ACTION_RETRY: &str = "human.action-retry";
    /// A change request closed by the host because nobody resolved it.
    pub const CHANGE_EXPIRED: &str = "change.expired";
    /// A new audit signing key (`concord audit keygen`).
    pub const KEY_ROTATED: &str = "audit.key";
    /// Operator commands.
    pub const PIN: &str = "human.pin";
    pub const UNPIN: &str = "human.unpin";
    pub const REVERT: &str = "human.revert";
    pub const IMPORT: &str = "human.import";
    pub const BREAK_LEASE: &str = "human.lease-break";
    /// A checkpoint of the chain was made for an operator (over the API).
    pub const CHECKPOINT: &str = "audit.checkpoint";
    /// A request to the API was refused: no valid token, or too low a role.
    pub const API_REFUSED: &str = "api.refused";
    /// Every call an agent itself can make (not the invocation bracket).
    pub const AGENT_CALLS: [&str; 15] = [
        GET,
        COMMIT,
        HISTORY,
        RECENT,
        LOG,
        ACT,
        REQUEST_CHANGE,
        RESOLVE_CHANGE,
        LEASE,
        RENEW,
        RELEASE,
        CHANGES,
        HTTP,
        MODEL,
        MODEL_GRANTED,
    ];
}

/// The agent name of host lifecycle entries.
pub const HOST: &str = "host";

/// The agent name of the API's own entries (refused requests).
pub const API: &str = "api";

/// An entry before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub agent: String,
    /// sha256 of the agent's component, hex.
    pub digest: String,
    /// The invocation's id; `None` for an `invocation.start` entry, whose
    /// own sequence number becomes the invocation id.
    pub invocation: Option<u64>,
    pub call: String,
    /// Entities the call touched, as `kind/id`.
    pub entities: Vec<String>,
    /// The call's arguments as JSON, bounded by `limits.audit_arg_bytes`.
    pub args: String,
    /// The size of the arguments before bounding (not stored).
    pub arg_bytes: usize,
    pub decision: Decision,
    /// The rule that decided, where one did (`ownership: …`, `version`, …).
    pub rule: Option<String>,
    /// The other party of a refusal: who changed the entity (conflict), who
    /// owns the field (forbidden), who pinned it or holds the lease.
    pub peer: Option<String>,
    /// The fields the decision is about: those written (commit), the one
    /// refused (forbidden, pinned), those changed since the expected version
    /// (conflict).
    pub fields: Vec<String>,
    /// The invocation that caused this one (a subscription or a handoff).
    pub causation: Option<u64>,
    /// A short, human-readable result.
    pub outcome: String,
    pub duration_us: u64,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Gap-free, starting at 1.
    pub seq: u64,
    pub at_ms: u64,
    pub agent: String,
    pub digest: String,
    pub invocation: u64,
    pub call: String,
    pub entities: Vec<String>,
    pub args: String,
    pub decision: Decision,
    pub rule: Option<String>,
    pub peer: Option<String>,
    pub fields: Vec<String>,
    pub causation: Option<u64>,
    pub outcome: String,
    pub duration_us: u64,
    pub prev_hash: String,
    pub hash: String,
}

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditDraft {
    /// A host lifecycle entry (start, stop, config change, key rotation).
    pub fn host(call: &str, config_digest: &str, args: serde_json::Value, outcome: String) -> AuditDraft {
        let args = args.to_string();
        AuditDraft {
            agent: HOST.into(),
            digest: config_digest.into(),
            invocation: None,
            call: call.into(),
            entities: vec![],
            arg_bytes: args.len(),
            args,
            decision: Decision::Allowed,
            rule: None,
            peer: None,
            fields: vec![],
            causation: None,
            outcome,
            duration_us: 0,
        }
    }
}

impl AuditEntry {
    /// Places a draft in the chain after `prev_hash`.
    pub fn seal(draft: AuditDraft, seq: u64, at_ms: u64, prev_hash: &str) -> AuditEntry {
        let mut entry = Self::unsealed(draft, seq, at_ms);
        entry.link(prev_hash);
        entry
    }

    /// A numbered entry not linked into the chain yet: its hashes are empty
    /// until [`link`](Self::link). (Read-call entries wait like this for the
    /// writer, which links every entry in seq order.)
    pub fn unsealed(draft: AuditDraft, seq: u64, at_ms: u64) -> AuditEntry {
        AuditEntry {
            seq,
            at_ms,
            agent: draft.agent,
            digest: draft.digest,
            invocation: draft.invocation.unwrap_or(seq),
            call: draft.call,
            entities: draft.entities,
            args: draft.args,
            decision: draft.decision,
            rule: draft.rule,
            peer: draft.peer,
            fields: draft.fields,
            causation: draft.causation,
            outcome: draft.outcome,
            duration_us: draft.duration_us,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Links the entry after the one whose hash is `prev_hash`.
    pub fn link(&mut self, prev_hash: &str) {
        prev_hash.clone_into(&mut self.prev_hash);
        self.hash = self.compute_hash();
    }

    /// [`link`](Self::link), and the entry as it is stored: exactly
    /// `serde_json::to_vec(self)`, built from the bytes just hashed rather
    /// than serialized a second time (the writer does this for every
    /// entry).
    pub fn link_encoded(&mut self, prev_hash: &str) -> Vec<u8> {
        prev_hash.clone_into(&mut self.prev_hash);
        let mut json = self.hashed_json();
        self.hash = hex_digest(&Sha256::digest(&json));
        // `hash` is the last field of AuditEntry and the only one the hashed
        // form lacks; hex needs no escaping.
        json.pop(); // the closing brace
        json.extend_from_slice(b",\"hash\":\"");
        json.extend_from_slice(self.hash.as_bytes());
        json.extend_from_slice(b"\"}");
        json
    }

    /// The hash this entry should carry (see the module docs).
    pub fn compute_hash(&self) -> String {
        hex_digest(&Sha256::digest(self.hashed_json()))
    }

    /// The JSON the hash is taken of: every field but `hash`, in order.
    fn hashed_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Hashed<'a> {
            seq: u64,
            at_ms: u64,
            agent: &'a str,
            digest: &'a str,
            invocation: u64,
            call: &'a str,
            entities: &'a [String],
            args: &'a str,
            decision: Decision,
            rule: &'a Option<String>,
            peer: &'a Option<String>,
            fields: &'a [String],
            causation: Option<u64>,
            outcome: &'a str,
            duration_us: u64,
            prev_hash: &'a str,
        }
        // Sized for the whole entry (with `hash`, which link_encoded adds):
        // growing it from serde_json's default would copy it three times.
        let strings = self.agent.len() + self.call.len() + self.args.len() + self.outcome.len();
        let mut json = Vec::with_capacity(512 + strings + 16 * (self.entities.len() + self.fields.len()));
        let written = serde_json::to_writer(
            &mut json,
            &Hashed {
                seq: self.seq,
                at_ms: self.at_ms,
                agent: &self.agent,
                digest: &self.digest,
                invocation: self.invocation,
                call: &self.call,
                entities: &self.entities,
                args: &self.args,
                decision: self.decision,
                rule: &self.rule,
                peer: &self.peer,
                fields: &self.fields,
                causation: self.causation,
                outcome: &self.outcome,
                duration_us: self.duration_us,
                prev_hash: &self.prev_hash,
            },
        );
        // Serializing plain strings and integers into a Vec cannot fail.
        debug_assert!(written.is_ok());
        json
    }
}

/// Lowercase hex, as `hex::encode` writes it, without building the string a
/// char at a time (the writer does this for every audit entry).
fn hex_digest(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Which entries `concord audit` shows. Every set filter must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub agent: Option<String>,
    pub entity: Option<String>,
    pub call: Option<String>,
    pub decision: Option<Decision>,
    pub invocation: Option<u64>,
    /// Entries of this invocation and of every invocation it caused, and
    /// of the invocations that caused it (the whole causation chain).
    pub trace: Option<std::collections::BTreeSet<u64>>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only entries with a seq above this one: a cursor for reading
    /// forward. With it, `limit` keeps the *oldest* matches after it (the
    /// next page); the last one's seq is the next cursor.
    pub after: Option<u64>,
    /// Only entries with a seq below this one: a cursor for reading back
    /// (`limit` keeps the newest matches before it).
    pub before: Option<u64>,
    /// At most this many matches: the newest ones, or with `after` the
    /// oldest after it. Always returned oldest first.
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// The seqs the filter allows, as a half-open range.
    pub fn seqs(&self) -> std::ops::Range<u64> {
        self.after.map_or(1, |a| a.saturating_add(1))..self.before.unwrap_or(u64::MAX)
    }

    /// Whether the query reads forward from `after` (else back from the
    /// newest entry, or from `before`).
    pub fn forward(&self) -> bool {
        self.after.is_some()
    }

    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.seqs().contains(&e.seq)
            && self.agent.as_ref().is_none_or(|a| &e.agent == a)
            && self.entity.as_ref().is_none_or(|x| e.entities.iter().any(|y| y == x))
            && self.call.as_ref().is_none_or(|c| &e.call == c)
            && self.decision.is_none_or(|d| e.decision == d)
            && self.invocation.is_none_or(|i| e.invocation == i)
            && self.trace.as_ref().is_none_or(|t| t.contains(&e.invocation))
            && self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms <= t)
    }
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry links to the one before and hashes to what it claims.
    Intact { entries: u64, head: String },
    /// The first entry that is wrong, and how.
    Broken { seq: u64, problem: String },
}

/// Checks a run of entries, in order, starting from the genesis hash.
pub fn verify<I: IntoIterator<Item = AuditEntry>>(entries: I) -> Verification {
    let mut chain = ChainVerifier::default();
    for e in entries {
        if let Err(broken) = chain.push(&e) {
            return broken;
        }
    }
    chain.finish()
}

/// Verifies a chain one entry at a time, so a long log is never held whole.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: String,
    next_seq: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { prev: GENESIS_HASH.to_string(), next_seq: 1 }
    }
}

impl ChainVerifier {
    /// Checks the next entry; on failure returns the [`Verification::Broken`]
    /// to report.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), Verification> {
        let expected = self.next_seq;
        if e.seq != expected {
            let problem = if e.seq > expected {
                format!("entries {expected}..{} are missing (deleted)", e.seq - 1)
            } else {
                format!("sequence number {} appears after {} (reordered)", e.seq, expected - 1)
            };
            return Err(Verification::Broken { seq: expected, problem });
        }
        if e.prev_hash != self.prev {
            return Err(Verification::Broken {
                seq: e.seq,
                problem:
                    "prev_hash does not match the previous entry (an entry before it was edited, removed or reordered)"
                        .into(),
            });
        }
        if e.compute_hash() != e.hash {
            return Err(Verification::Broken {
                seq: e.seq,
                problem: "the entry's contents do not match its hash (edited)".into(),
            });
        }
        self.prev.clone_from(&e.hash);
        self.next_seq += 1;
        Ok(())
    }

    /// The seq the next entry must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn finish(self) -> Verification {
        Verification::Intact { entries: self.next_seq - 1, head: self.prev }
    }
}

/// Bounds a call's arguments for the audit, marking what was cut.
pub fn bounded(mut json: String, max: usize) -> String {
    let total = json.len();
    if cut_to(&mut json, max) {
        json.push_str(&format!("…(truncated, {total} bytes in all)"));
    }
    json
}

/// Cuts `text` to at most `max` bytes, at a character boundary. Returns
/// whether anything was cut.
pub(crate) fn cut_to(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(call: &str) -> AuditDraft {
        AuditDraft {
            agent: "sales".into(),
            digest: "ab".into(),
            invocation: Some(1),
            call: call.into(),
            entities: vec!["customer/acme".into()],
            args: "{}".into(),
            arg_bytes: 2,
            decision: Decision::Allowed,
            rule: None,
            peer: None,
            fields: vec![],
            causation: None,
            outcome: "ok".into(),
            duration_us: 3,
        }
    }

    /// The stored form `link_encoded` builds is serde's, byte for byte,
    /// whatever the strings hold.
    #[test]
    fn hex_digest_is_lowercase_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_digest(&bytes), hex::encode(&bytes));
        assert_eq!(hex_digest(&Sha256::digest(b"concord")), hex::encode(Sha256::digest(b"concord")));
    }

    #[test]
    fn link_encoded_is_the_serialized_entry() {
        let mut d = draft("kb.commit");
        d.args = "{\"quote\": \"\\\" \\n \u{7f} é 😀\"}".into();
        d.rule = Some("rule: \"x\"".into());
        d.peer = Some("support".into());
        d.fields = vec!["status".into(), "tab\t".into()];
        d.causation = Some(7);
        d.outcome = "line\nbreak".into();
        let mut entry = AuditEntry::unsealed(d, 42, 1234);
        let stored = entry.link_encoded(GENESIS_HASH);
        assert_eq!(entry.hash, entry.compute_hash());
        assert_eq!(String::from_utf8(stored).expect("utf-8"), serde_json::to_string(&entry).expect("json"));
    }

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let e = AuditEntry::seal(draft("kb.get"), seq, 1000 + seq, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert!(matches!(verify(chain(5)), Verification::Intact { entries: 5, .. }));
    }

    #[test]
    fn edits_deletions_and_reorders_are_found_at_the_first_bad_entry() {
        let mut c = chain(5);
        c[2].outcome = "edited".into();
        assert_eq!(verify(c).broken_seq(), Some(3));

        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(c).broken_seq(), Some(2));

        let mut c = chain(5);
        c.swap(1, 2);
        assert_eq!(verify(c).broken_seq(), Some(2));
    }

    #[test]
    fn bounded_marks_truncation_on_a_char_boundary() {
        assert_eq!(bounded("abc".into(), 10), "abc");
        let b = bounded("ééééé".into(), 3);
        assert!(b.starts_with('é') && b.contains("truncated, 10 bytes"), "{b}");
    }

    impl Verification {
        fn broken_seq(&self) -> Option<u64> {
            match self {
                Verification::Broken { seq, .. } => Some(*seq),
                Verification::Intact { .. } => None,
            }
        }
    }
}

//! The outbox dispatcher: delivers recorded actions to a sink.
//!
//! Actions are recorded by `coord.act` in the same transaction as their
//! event and audit entry, so a recorded action survives a crash. Delivery is
//! at-least-once: an action leaves the outbox only after the sink accepted
//! it, so a crash between the two delivers it again after the restart. Each
//! action carries an idempotency key, and the file sink writes each key at
//! most once, so at the sink it is exactly once per key.
//!
//! Sinks: a JSON-lines file and stdout (here), and an HTTP endpoint
//! ([`super::webhook`]), which POSTs each action with its key in a header.
//! A sink says how failures are retried ([`Sink::retry`]): the file and
//! stdout retry at every round; the HTTP sink backs off, and after its last
//! attempt moves the action to the dead letter, audited, where `concord
//! actions` shows it until an operator retries it. Actions are delivered in
//! order: one waiting out its backoff holds the ones after it.

use crate::audit::{AuditDraft, Decision, calls};
use crate::kb::{ActionRecord, DeliveryFailure, Store, StoreError, now_ms};
use crate::policy::config::SinkConfig;
use std::collections::HashSet;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A failed delivery. The action stays in the outbox and is tried again.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {reason}")]
pub struct SinkError {
    pub sink: String,
    pub reason: String,
}

/// Where actions go.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Delivers one action. Must be idempotent per `idempotency_key`
    /// where the sink can make it so.
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError>;

    /// How a failed delivery is tried again. By default, at the next round,
    /// for ever.
    fn retry(&self) -> Retry {
        Retry::EveryRound
    }

    /// The longest one delivery may take: claims on the outbox are sized
    /// by it (see [`deliver_pending`]).
    fn max_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Whether a trigger may wait for this sink's deliveries before it is
    /// answered (a local file: yes). A sink that waits on the network says
    /// no: a service delivers to it in the background instead, so that a
    /// slow receiver never holds a trigger's answer.
    fn inline(&self) -> bool {
        true
    }
}

/// How a sink's failed deliveries are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At the next delivery round, for ever (a file, stdout).
    EveryRound,
    /// After `base_ms`, doubling with each failure up to [`MAX_BACKOFF_MS`];
    /// the `max_attempts`-th failure moves the action to the dead letter.
    Backoff { max_attempts: u32, base_ms: u64 },
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// Opens the sink a config names; `secrets` are the config's, for a sink
/// that sends one (its value is read from the environment here).
pub fn open_sink(
    config: &SinkConfig,
    secrets: &std::collections::BTreeMap<String, crate::policy::secrets::SecretDef>,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match config {
        SinkConfig::Stdout => Box::new(StdoutSink),
        SinkConfig::File(path) => Box::new(JsonlSink::open(path)?),
        SinkConfig::Http(http) => Box::new(super::webhook::HttpSink::open(http, secrets)?),
    })
}

pub(super) fn line(action: &ActionRecord) -> String {
    serde_json::json!({
        "idempotency_key": action.idempotency_key,
        "action": action.id,
        "kind": action.kind,
        "entity": action.entity.key(),
        "based_on_version": action.based_on,
        "agent": action.agent,
        "invocation": action.invocation,
        "recorded_at_ms": action.recorded_at_ms,
        "payload": serde_json::from_str::<serde_json::Value>(&action.payload).unwrap_or_else(|_| action.payload.clone().into()),
    })
    .to_string()
}

/// Prints each delivery as a JSON line on stdout. It cannot remember what it
/// printed before a restart, so a redelivery prints again.
#[derive(Debug)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError> {
        // A closed stdout is a delivery that failed (the action stays in the
        // outbox), not a panic in the delivering thread.
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), "{}", line(action))
            .map_err(|e| SinkError { sink: "stdout".into(), reason: format!("cannot write: {e}") })
    }
}

/// Appends each delivery as a JSON line to a file, fsynced, writing each
/// idempotency key at most once (the keys already in the file are read when
/// it is opened).
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    delivered: Mutex<HashSet<String>>,
}

impl JsonlSink {
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let err = |reason: String| SinkError { sink: path.display().to_string(), reason };
        let mut delivered = HashSet::new();
        match std::fs::File::open(path) {
            Ok(f) => {
                for (i, l) in std::io::BufReader::new(f).lines().enumerate() {
                    let l = l.map_err(|e| err(format!("cannot read: {e}")))?;
                    if l.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(&l)
                        .map_err(|e| err(format!("line {} is not JSON ({e}); fix or move the file", i + 1)))?;
                    match v["idempotency_key"].as_str() {
                        Some(k) => delivered.insert(k.to_string()),
                        None => {
                            return Err(err(format!("line {} has no idempotency_key; fix or move the file", i + 1)));
                        }
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("cannot open: {e}"))),
        }
        Ok(Self { path: path.to_path_buf(), delivered: Mutex::new(delivered) })
    }
}

impl Sink for JsonlSink {
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError> {
        let err = |reason: String| SinkError { sink: self.path.display().to_string(), reason };
        let mut delivered = self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if delivered.contains(&action.idempotency_key) {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| err(format!("cannot open: {e}")))?;
        writeln!(f, "{}", line(action)).map_err(|e| err(format!("cannot write: {e}")))?;
        f.sync_data().map_err(|e| err(format!("cannot sync: {e}")))?;
        delivered.insert(action.idempotency_key.clone());
        Ok(())
    }
}

/// What one dispatch round did.
#[derive(Debug, Default)]
pub struct Delivery {
    pub delivered: Vec<ActionRecord>,
    /// Actions the sink refused; they stay in the outbox (or went to the
    /// dead letter: see `dead`).
    pub failed: Vec<(u64, SinkError)>,
    /// Actions this round moved to the dead letter.
    pub dead: Vec<u64>,
    /// When the head of the outbox is due again, if it waits out a backoff.
    pub retry_at_ms: Option<u64>,
}

/// How long a round's actions are this host's to deliver (see
/// [`Store::claim_pending_actions`]): longer than a round takes.
const CLAIM_MS: u64 = 60_000;

/// Delivers every pending action, oldest first. A sink failure stops the
/// round (later actions wait, so order is kept) and is reported.
pub fn deliver_pending(store: &dyn Store, sink: &dyn Sink) -> Result<Delivery, StoreError> {
    let mut out = Delivery::default();
    // A claim must outlast the deliveries it covers: claim as many as the
    // sink can take within [`CLAIM_MS`] at its slowest, at least one.
    let slowest = u64::try_from(sink.max_duration().as_millis()).unwrap_or(u64::MAX).max(1);
    let batch = usize::try_from((CLAIM_MS / slowest).clamp(1, 1024)).unwrap_or(1);
    let claim_ms = CLAIM_MS.max(slowest.saturating_mul(batch as u64)).saturating_add(CLAIM_MS);
    loop {
        let claimed = store.claim_pending_actions(batch, claim_ms)?;
        if claimed.is_empty() {
            return Ok(out);
        }
        let full = claimed.len() == batch;
        match deliver_batch(store, sink, &claimed, &mut out) {
            Ok(Some(stopped_at)) => {
                // This one and the ones after it are anyone's to try again.
                let rest: Vec<u64> = claimed[stopped_at..].iter().map(|a| a.id).collect();
                store.release_action_claims(&rest)?;
                return Ok(out);
            }
            Ok(None) if full => continue,
            Ok(None) => return Ok(out),
            Err(e) => {
                // A store failure: give every claim of the batch up (those
                // delivered already are out of the outbox) before saying so.
                let ids: Vec<u64> = claimed.iter().map(|a| a.id).collect();
                if let Err(release) = store.release_action_claims(&ids) {
                    tracing::warn!("the claims on actions {ids:?} stay until they run out: {release}");
                }
                return Err(e);
            }
        }
    }
}

/// Delivers a claimed batch in order. `Some(i)`: the round stops at the
/// `i`-th (a failure to retry later, or one still waiting out its backoff).
fn deliver_batch(
    store: &dyn Store,
    sink: &dyn Sink,
    claimed: &[ActionRecord],
    out: &mut Delivery,
) -> Result<Option<usize>, StoreError> {
    let retry = sink.retry();
    for (i, action) in claimed.iter().enumerate() {
        let now = now_ms();
        if action.next_attempt_ms > now {
            out.retry_at_ms = Some(action.next_attempt_ms);
            return Ok(Some(i));
        }
        let e = match sink.deliver(action) {
            Ok(()) => {
                store.mark_delivered(action.id, now_ms())?;
                out.delivered.push(action.clone());
                continue;
            }
            Err(e) => e,
        };
        let Retry::Backoff { max_attempts, base_ms } = retry else {
            tracing::warn!("action {} not delivered, will retry: {e}", action.id);
            out.failed.push((action.id, e));
            return Ok(Some(i));
        };
        let failure = DeliveryFailure {
            at_ms: now,
            error: e.to_string(),
            max_attempts,
            backoff_ms: base_ms,
            max_backoff_ms: MAX_BACKOFF_MS,
        };
        let error = failure.error.clone();
        let args = serde_json::json!({ "action": action.id, "key": action.idempotency_key });
        let audit = Box::new(move |r: &ActionRecord| {
            let attempt = r.attempts;
            let outcome = match r.dead_at_ms {
                Some(_) => format!(
                    "attempt {attempt} of {max_attempts} failed: {error}; action {} is in the dead letter (`concord actions retry {}`)",
                    r.id, r.id
                ),
                None => format!(
                    "attempt {attempt} of {max_attempts} failed: {error}; tried again in {} ms",
                    r.next_attempt_ms.saturating_sub(now)
                ),
            };
            let mut draft = AuditDraft::host(calls::ACTION_FAILED, "", args, outcome);
            draft.decision = Decision::Failed;
            draft.entities = vec![r.entity.key()];
            draft
        });
        let (record, _) = store.delivery_failed(action.id, failure, audit)?;
        out.failed.push((action.id, e));
        if record.dead_at_ms.is_some() {
            tracing::warn!("action {} not delivered after {} attempts: in the dead letter", action.id, record.attempts);
            out.dead.push(action.id);
            // The head left the outbox: the next one may go now.
            continue;
        }
        tracing::warn!(
            "action {} not delivered (attempt {} of {max_attempts}); will retry",
            action.id,
            record.attempts
        );
        out.retry_at_ms = Some(record.next_attempt_ms);
        return Ok(Some(i));
    }
    Ok(None)
}

//! The outbox dispatcher: delivers recorded actions to a sink.
//!
//! Actions are recorded by `coord.act` in the same transaction as their
//! event and audit entry, so a recorded action survives a crash. Delivery is
//! at-least-once: an action leaves the outbox only after the sink accepted
//! it, so a crash between the two delivers it again after the restart. Each
//! action carries an idempotency key, and the file sink writes each key at
//! most once, so at the sink it is exactly once per key.

use crate::kb::{ActionRecord, Store, StoreError, now_ms};
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

/// Where actions go. An HTTP webhook is one more implementation.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Delivers one action. Must be idempotent per `idempotency_key`
    /// where the sink can make it so.
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError>;
}

/// Opens the sink a config names.
pub fn open_sink(config: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match config {
        SinkConfig::Stdout => Box::new(StdoutSink),
        SinkConfig::File(path) => Box::new(JsonlSink::open(path)?),
    })
}

fn line(action: &ActionRecord) -> String {
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
    /// Actions the sink refused; they stay in the outbox.
    pub failed: Vec<(u64, SinkError)>,
}

/// How long a round's actions are this host's to deliver (see
/// [`Store::claim_pending_actions`]): longer than a round takes.
const CLAIM_MS: u64 = 60_000;

/// Delivers every pending action, oldest first. A sink failure stops the
/// round (later actions wait, so order is kept) and is reported.
pub fn deliver_pending(store: &dyn Store, sink: &dyn Sink) -> Result<Delivery, StoreError> {
    let mut out = Delivery::default();
    let claimed = store.claim_pending_actions(usize::MAX, CLAIM_MS)?;
    for (i, action) in claimed.iter().enumerate() {
        match sink.deliver(action) {
            Ok(()) => {
                store.mark_delivered(action.id, now_ms())?;
                out.delivered.push(action.clone());
            }
            Err(e) => {
                tracing::warn!("action {} not delivered, will retry: {e}", action.id);
                out.failed.push((action.id, e));
                // This one and the ones after it are anyone's to try again.
                let rest: Vec<u64> = claimed[i..].iter().map(|a| a.id).collect();
                store.release_action_claims(&rest)?;
                break;
            }
        }
    }
    Ok(out)
}

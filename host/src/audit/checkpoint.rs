//! Signed checkpoints of the audit chain.
//!
//! The hash chain shows that no entry was edited, removed or reordered, as
//! long as the chain itself is trusted. Someone able to rewrite the whole
//! database could rebuild a consistent chain, or cut off its tail. A
//! checkpoint defeats both: it records a sequence number and the head hash
//! at that point, signed with an Ed25519 key kept apart from the database.
//! Verifying against it proves that the log still extends what was signed.
//!
//! The signed message is the UTF-8 text
//! `concord-audit-checkpoint/v1\n{seq}\n{head}\n{at_ms}\n`.

use super::{AuditEntry, Verification};
use crate::kb::{Store, StoreError, now_ms};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A checkpoint, as written to its file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub seq: u64,
    /// The hash of entry `seq`.
    pub head: String,
    pub at_ms: u64,
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
    /// Ed25519 signature of the message in the module docs, hex.
    pub signature: String,
}

/// A key or checkpoint problem. Names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit chain is broken at entry {seq} ({problem}); a checkpoint is only signed over an intact chain")]
    Broken { seq: u64, problem: String },
    #[error("the audit log is empty: there is nothing to checkpoint")]
    Empty,
}

fn file_err(path: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::File { path: path.display().to_string(), reason: reason.into() }
}

fn message(seq: u64, head: &str, at_ms: u64) -> Vec<u8> {
    format!("concord-audit-checkpoint/v1\n{seq}\n{head}\n{at_ms}\n").into_bytes()
}

/// Creates a new signing key at `path` (readable by its owner only) and
/// returns its public key, hex. Refuses to replace an existing key unless
/// `force`.
pub fn generate_key(path: &Path, force: bool) -> Result<String, CheckpointError> {
    if path.exists() && !force {
        return Err(file_err(
            path,
            "a key already exists here; pass --force to replace it (old checkpoints stay verifiable with --public-key)",
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| file_err(path, format!("no randomness for a key: {e}")))?;
    let key = SigningKey::from_bytes(&secret);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_err(path, format!("cannot create the folder: {e}")))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| file_err(path, format!("cannot write: {e}")))?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(secret)).as_bytes())
        .map_err(|e| file_err(path, format!("cannot write: {e}")))?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Reads a signing key written by [`generate_key`].
pub fn load_key(path: &Path) -> Result<SigningKey, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        file_err(path, format!("cannot read the key: {e} (create one with `concord audit keygen --key FILE`)"))
    })?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| file_err(path, "not a Concord audit key (expected 64 hex digits)"))?;
    let secret: [u8; 32] =
        bytes.try_into().map_err(|_| file_err(path, "not a Concord audit key (expected 64 hex digits)"))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The public half of a key file, hex.
pub fn public_key(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().to_bytes())
}

/// Signs the current head of an intact chain.
pub fn create(store: &dyn Store, key: &SigningKey) -> Result<Checkpoint, CheckpointError> {
    let (seq, head) = head(store)?;
    Ok(sign(seq, head, now_ms(), key))
}

/// The last entry's seq and hash, once the whole chain is verified intact:
/// what a checkpoint signs. (Over the API, the host verifies and the
/// operator signs with a key that never leaves their machine.)
pub fn head(store: &dyn Store) -> Result<(u64, String), CheckpointError> {
    match store.verify_audit()? {
        Verification::Intact { entries: 0, .. } => Err(CheckpointError::Empty),
        Verification::Intact { entries, head } => Ok((entries, head)),
        Verification::Broken { seq, problem } => Err(CheckpointError::Broken { seq, problem }),
    }
}

/// Signs a head as of `at_ms`.
pub fn sign(seq: u64, head: String, at_ms: u64, key: &SigningKey) -> Checkpoint {
    let signature = key.sign(&message(seq, &head, at_ms));
    Checkpoint { seq, head, at_ms, public_key: public_key(key), signature: hex::encode(signature.to_bytes()) }
}

/// Reads a checkpoint file.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("not a checkpoint: {e}")))
}

/// Checks a checkpoint's signature (against `trusted`, a public key in hex,
/// when given), then that the log still extends it.
pub fn verify(store: &dyn Store, cp: &Checkpoint, trusted: Option<&str>) -> Result<Verification, CheckpointError> {
    let bad = |problem: String| Ok(Verification::Broken { seq: cp.seq, problem });
    if let Some(t) = trusted
        && !t.eq_ignore_ascii_case(&cp.public_key)
    {
        return bad(format!("the checkpoint is signed by key {}, not the trusted key {t}", cp.public_key));
    }
    let key = hex::decode(&cp.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let sig =
        hex::decode(&cp.signature).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).map(|b| Signature::from_bytes(&b));
    let (Some(key), Some(sig)) = (key, sig) else {
        return bad("the checkpoint's key or signature is malformed".into());
    };
    if key.verify(&message(cp.seq, &cp.head, cp.at_ms), &sig).is_err() {
        return bad("the checkpoint's signature does not match its contents (the checkpoint was altered)".into());
    }
    match store.verify_audit()? {
        Verification::Broken { seq, problem } => Ok(Verification::Broken { seq, problem }),
        Verification::Intact { entries, head } => {
            if entries < cp.seq {
                return Ok(Verification::Broken {
                    seq: entries + 1,
                    problem: format!(
                        "truncated: the log ends at entry {entries}, but the checkpoint covers entries up to {}",
                        cp.seq
                    ),
                });
            }
            let at: Option<AuditEntry> = store.audit_entry(cp.seq)?;
            match at {
                Some(e) if e.hash == cp.head => Ok(Verification::Intact { entries, head }),
                _ => bad(format!(
                    "rewritten: entry {} no longer has the hash the checkpoint signed; the chain was rebuilt",
                    cp.seq
                )),
            }
        }
    }
}

//! The audit cannot be quietly edited: tampering with the database, or with
//! an export, is caught, and a signed checkpoint catches a rebuilt or
//! truncated chain too.

use crate::common::{concord, demo_dir, root};
use concord::audit::AuditEntry;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs the demo in a temp folder and returns it.
fn demo() -> tempfile::TempDir {
    let dir = demo_dir();
    let o = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    dir
}

fn db(dir: &Path) -> PathBuf {
    dir.join("data/concord.redb")
}

/// Edits the audit table directly, as an attacker with the file would.
fn tamper(dir: &Path, f: impl FnOnce(&mut Vec<AuditEntry>)) {
    let database = redb::Database::create(db(dir)).expect("open the file");
    let mut entries: Vec<AuditEntry> = {
        let txn = database.begin_read().expect("read");
        let table = txn.open_table(AUDIT).expect("audit table");
        table
            .iter()
            .expect("iter")
            .map(|item| serde_json::from_slice(item.expect("entry").1.value()).expect("decodes"))
            .collect()
    };
    f(&mut entries);
    let txn = database.begin_write().expect("write");
    {
        let mut table = txn.open_table(AUDIT).expect("audit table");
        table.retain(|_, _| false).expect("clear");
        for (i, e) in entries.iter().enumerate() {
            let key = i as u64 + 1;
            table.insert(key, serde_json::to_vec(e).expect("encode").as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

/// Recomputes every hash, as an attacker rewriting the whole chain would.
fn rechain(entries: &mut [AuditEntry]) {
    let mut prev = concord::audit::GENESIS_HASH.to_string();
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        prev = e.hash.clone();
    }
}

fn verify(dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let o = concord(dir, &args);
    (o.status.code().unwrap_or(-1), out(&o))
}

#[test]
fn tampering_is_caught_at_the_first_bad_entry() {
    let dir = demo();
    let pristine = std::fs::read(db(dir.path())).expect("db");
    let restore = || std::fs::write(db(dir.path()), &pristine).expect("restore");

    let (code, text) = verify(dir.path(), &[]);
    assert_eq!(code, 0, "{text}");

    tamper(dir.path(), |e| e[4].outcome = "nothing to see here".into());
    let (code, text) = verify(dir.path(), &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at entry 5") && text.contains("edited"), "{text}");

    restore();
    tamper(dir.path(), |e| {
        e.remove(6);
    });
    let (code, text) = verify(dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(text.contains("BROKEN at entry 7"), "{text}");

    restore();
    tamper(dir.path(), |e| e.swap(2, 3));
    let (code, text) = verify(dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(text.contains("BROKEN at entry 3"), "{text}");
}

#[test]
fn a_signed_checkpoint_catches_a_rebuilt_or_truncated_chain() {
    let dir = demo();
    let keys = tempfile::tempdir().expect("key dir, apart from the data");
    let key = keys.path().join("audit.key");
    let key = key.to_str().expect("utf-8");
    let o = concord(dir.path(), &["audit", "keygen", "--key", key]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = concord(dir.path(), &["audit", "keygen", "--key", key]);
    assert_eq!(o.status.code(), Some(3), "an existing key is not replaced silently: {}", out(&o));
    let rotations = out(&concord(dir.path(), &["audit", "--call", "audit.key"]));
    assert!(rotations.contains("new audit signing key"), "the rotation is audited: {rotations}");
    let cp = keys.path().join("cp.json");
    let o = concord(dir.path(), &["audit", "checkpoint", "--key", key, "--out", cp.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let cp = cp.to_str().expect("utf-8");
    let pristine = std::fs::read(db(dir.path())).expect("db");

    let (code, text) = verify(dir.path(), &["--checkpoint", cp, "--key", key]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the log extends checkpoint"), "{text}");

    // Rebuild the chain after an edit: the plain check passes, the checkpoint does not.
    tamper(dir.path(), |e| {
        e[4].outcome = "nothing to see here".into();
        rechain(e);
    });
    assert_eq!(verify(dir.path(), &[]).0, 0, "a rebuilt chain is self-consistent");
    let (code, text) = verify(dir.path(), &["--checkpoint", cp, "--key", key]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("rewritten"), "{text}");

    // Cut off the tail: the prefix is intact, the checkpoint is not reached.
    std::fs::write(db(dir.path()), &pristine).expect("restore");
    tamper(dir.path(), |e| e.truncate(e.len() - 3));
    assert_eq!(verify(dir.path(), &[]).0, 0);
    let (code, text) = verify(dir.path(), &["--checkpoint", cp, "--key", key]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("truncated"), "{text}");

    // An altered checkpoint, or one signed by another key, is refused.
    std::fs::write(db(dir.path()), &pristine).expect("restore");
    let mut altered: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cp).expect("cp")).expect("json");
    altered["seq"] = serde_json::json!(altered["seq"].as_u64().expect("seq") - 1);
    let altered_path = keys.path().join("altered.json");
    std::fs::write(&altered_path, altered.to_string()).expect("write");
    let (code, text) = verify(dir.path(), &["--checkpoint", altered_path.to_str().expect("utf-8"), "--key", key]);
    assert_eq!(code, 1);
    assert!(text.contains("signature does not match"), "{text}");
    let other = keys.path().join("other.key");
    concord::audit::checkpoint::generate_key(&other, false).expect("key");
    let (code, text) = verify(dir.path(), &["--checkpoint", cp, "--key", other.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(text.contains("not the trusted key"), "{text}");
}

/// An export verifies with a program that knows only the documented format.
#[test]
fn an_export_verifies_independently() {
    let dir = demo();
    let export = dir.path().join("audit.jsonl");
    let o = concord(dir.path(), &["audit", "export", "--out", export.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let script = root().join("scripts/verify_audit_export.py");
    let run = |path: &Path| Command::new("python3").arg(&script).arg(path).output().expect("python3 runs");
    let o = run(&export);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("intact"), "{}", out(&o));

    let text = std::fs::read_to_string(&export).expect("export");
    let edited = text.replacen("\"decision\":\"conflict\"", "\"decision\":\"allowed\"", 1);
    assert_ne!(edited, text, "the demo has a conflict to hide");
    let bad = dir.path().join("edited.jsonl");
    std::fs::write(&bad, edited).expect("write");
    let o = run(&bad);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("do not match its hash"), "{}", out(&o));
}

/// A damaged or truncated database file is refused at open with a clear
/// error, never a panic, and left as it was.
#[test]
fn a_damaged_database_is_refused_at_open_and_left_alone() {
    let dir = demo();
    let path = db(dir.path());
    let good = std::fs::read(&path).expect("db");
    for (what, bytes) in [
        ("truncated", good[..good.len() / 3].to_vec()),
        ("garbage", b"this is not a database at all".repeat(100)),
        ("zeroed header", [vec![0u8; 4096], good[4096..].to_vec()].concat()),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        for args in [&["get", "customer/acme"][..], &["run", "--script", "acme.jsonl"][..]] {
            let o = concord(dir.path(), args);
            let text = out(&o);
            assert_eq!(o.status.code(), Some(3), "{what} / {args:?}: {text}");
            assert!(text.contains("cannot open the knowledge base"), "{what}: {text}");
            assert!(!text.contains("panicked"), "{what}: {text}");
        }
        assert_eq!(std::fs::read(&path).expect("db"), bytes, "{what}: the file was not repaired or changed");
    }
}

/// Read commands read only the ends of each table, so `concord check` is
/// what finds damage anywhere: with damaged pages in the audit table, redb's
/// integrity check (run on a copy-on-write view) reports it, `check` exits
/// 1 without a panic, a host refuses to start on the file, and the file is
/// left byte for byte.
#[test]
fn concord_check_finds_damaged_pages_and_changes_nothing() {
    let dir = demo();
    let path = db(dir.path());
    let o = concord(dir.path(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("no damage found"), "{}", out(&o));

    // Every 4 KiB leaf page holding a `kb.commit` audit entry (some are old
    // copies redb no longer uses) gets a page type that does not exist.
    let mut bytes = std::fs::read(&path).expect("db");
    let needle = br#""call":"kb.commit""#;
    let mut damaged = 0;
    for page in bytes.chunks_mut(4096) {
        if page[0] == 1 && page.windows(needle.len()).any(|w| w == needle) {
            page[0] = 0xee;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no page holds a kb.commit entry");
    std::fs::write(&path, &bytes).expect("write");

    let o = concord(dir.path(), &["check"]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("DAMAGED pages: redb's integrity check failed"), "{text}");
    assert!(text.contains("restore it from a backup"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    // A host verifies every page the same way before it writes.
    let o = concord(dir.path(), &["run", "--script", "acme.jsonl"]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(3), "{text}");
    assert!(text.contains("the file is damaged (redb's integrity check failed"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    // A read command checks only the tables' ends, so `audit` walks into a
    // damaged page, where redb panics (its documented limit): the command
    // stops with an error that sends to `concord check`, not a panic.
    let o = concord(dir.path(), &["audit", "--call", "kb.commit"]);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(5), "{text}");
    assert!(text.contains("run `concord check`"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(std::fs::read(&path).expect("db"), bytes, "the file was not repaired or changed");
}

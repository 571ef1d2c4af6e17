//! What changed in the agents folder since it was last looked at: the
//! part of hot reload that reads files (the swap itself is
//! [`super::Runtime::install`], the audit [`crate::Host::reload_agents`]).
//!
//! # A half-written file never loads
//! A file is taken only once it has *settled*: its last modification is at
//! least the settle time (`[agents] settle_ms`) old, and its size and
//! modification time are the same after its bytes were read as before. A
//! tool that writes in place (`cp`) keeps moving the modification time
//! while it writes, so its file is looked at again later; a tool that
//! writes elsewhere and renames (`cargo`, `mv`, most editors) brings in a
//! whole file at once. A file left half-written for good (the copy died) is
//! not a component, and is refused like any other bad file, while the old
//! version keeps serving.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A file's size and modification time: when both are as they were, its
/// bytes are taken to be too (and not read again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp { len: meta.len(), modified: meta.modified()? })
    }
}

/// What the folder held at a path when last looked at.
#[derive(Debug, Clone)]
struct Seen {
    /// `None` until the file has been read here (the files the host started
    /// with were read by the runtime's load).
    stamp: Option<Stamp>,
    digest: String,
}

/// A settled file whose bytes differ from what was last seen at its path,
/// or a file that is gone.
#[derive(Debug)]
pub enum FileChange {
    /// A new or changed `*.wasm`, read whole.
    Changed { path: PathBuf, bytes: Vec<u8>, digest: String },
    /// A `*.wasm` that was there is gone.
    Gone { path: PathBuf },
}

/// What one look at the folder found.
#[derive(Debug, Default)]
pub struct Scan {
    pub changes: Vec<FileChange>,
    /// Files still being written: look again after this long.
    pub again_after: Option<Duration>,
}

/// The agents folder as last seen.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    settle: Duration,
    seen: BTreeMap<PathBuf, Seen>,
}

impl Folder {
    /// A folder whose `*.wasm` files are known to hold `digests` (by path):
    /// what the host loaded at start.
    pub fn new(dir: &Path, settle: Duration, digests: impl IntoIterator<Item = (PathBuf, String)>) -> Folder {
        let seen = digests.into_iter().map(|(path, digest)| (path, Seen { stamp: None, digest })).collect();
        Folder { dir: dir.to_path_buf(), settle, seen }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long a file must stay unmodified from now on (a config reload
    /// can change `[agents] settle_ms`).
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// Looks at every `*.wasm` in the folder (at `now`) and returns the
    /// settled ones whose bytes changed, and those gone. A file is reported
    /// once per new content: looking again finds nothing until it changes
    /// again.
    pub fn scan(&mut self, now: SystemTime) -> std::io::Result<Scan> {
        let mut scan = Scan::default();
        let mut present = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "wasm") && path.is_file() {
                present.push(path);
            }
        }
        present.sort();
        for path in &present {
            let Ok(before) = Stamp::of(path) else { continue };
            if self.seen.get(path).is_some_and(|s| s.stamp == Some(before)) {
                continue;
            }
            let age = now.duration_since(before.modified).unwrap_or(Duration::ZERO);
            if age < self.settle {
                scan.again_after = Some(scan.again_after.map_or(self.settle - age, |d| d.min(self.settle - age)));
                continue;
            }
            let Ok(bytes) = std::fs::read(path) else { continue };
            if Stamp::of(path).ok() != Some(before) {
                // Written while it was read: not settled after all.
                scan.again_after = Some(self.settle);
                continue;
            }
            let digest = hex::encode(Sha256::digest(&bytes));
            let same = self.seen.get(path).is_some_and(|s| s.digest == digest);
            self.seen.insert(path.clone(), Seen { stamp: Some(before), digest: digest.clone() });
            if !same {
                scan.changes.push(FileChange::Changed { path: path.clone(), bytes, digest });
            }
        }
        let gone: Vec<PathBuf> = self.seen.keys().filter(|p| !present.contains(p)).cloned().collect();
        for path in gone {
            self.seen.remove(&path);
            scan.changes.push(FileChange::Gone { path });
        }
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_taken_once_settled_and_once_per_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut folder = Folder::new(dir.path(), Duration::from_millis(500), []);
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"one").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        let written = Stamp::of(&path).expect("stamp").modified;

        let young = folder.scan(written + Duration::from_millis(100)).expect("scan");
        assert!(young.changes.is_empty(), "a file modified 100 ms ago is not settled: {young:?}");
        assert_eq!(young.again_after, Some(Duration::from_millis(400)));

        let settled = folder.scan(written + Duration::from_secs(1)).expect("scan");
        assert!(
            matches!(&settled.changes[..], [FileChange::Changed { path: p, bytes, .. }] if *p == path && bytes == b"one"),
            "{settled:?}"
        );
        assert!(folder.scan(written + Duration::from_secs(2)).expect("scan").changes.is_empty(), "reported once");

        std::fs::remove_file(&path).expect("remove");
        let gone = folder.scan(written + Duration::from_secs(3)).expect("scan");
        assert!(matches!(&gone.changes[..], [FileChange::Gone { path: p }] if *p == path), "{gone:?}");
    }

    #[test]
    fn a_new_settle_time_applies_to_the_next_look() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut folder = Folder::new(dir.path(), Duration::from_millis(500), []);
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"one").expect("write");
        let written = Stamp::of(&path).expect("stamp").modified;
        assert!(folder.scan(written + Duration::from_millis(100)).expect("scan").changes.is_empty());
        folder.set_settle(Duration::from_millis(50));
        let settled = folder.scan(written + Duration::from_millis(100)).expect("scan");
        assert!(matches!(&settled.changes[..], [FileChange::Changed { .. }]), "{settled:?}");
    }

    #[test]
    fn a_file_with_the_digest_it_started_with_is_no_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, b"one").expect("write");
        let digest = hex::encode(Sha256::digest(b"one"));
        let mut folder = Folder::new(dir.path(), Duration::ZERO, [(path.clone(), digest)]);
        let later = SystemTime::now() + Duration::from_secs(1);
        assert!(folder.scan(later).expect("scan").changes.is_empty(), "touched, same bytes: no change");
        // Another length: on a file system with coarse times, the size
        // alone tells the write apart.
        std::fs::write(&path, b"three").expect("write");
        let changed = folder.scan(later + Duration::from_secs(1)).expect("scan");
        assert!(matches!(&changed.changes[..], [FileChange::Changed { .. }]), "{changed:?}");
    }
}

//! Opening a store: creating the file, taking it (exclusively or with shared
//! reads), checking it, and recovering the batches a crash left in the
//! journal. The open errors ([`OpenError`]) are this backend's alone.

use super::*;

/// Why a redb store did not open. Only the constructors return it: once
/// open, a store's failures are [`StoreError`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("the knowledge base {path} is already in use{}; let it finish or stop it first; to read, pin or revert while a host runs, run it as `concord serve`, which the CLI goes through", .pid.map(|p| format!(" by pid {p}")).unwrap_or_default())]
    InUse { path: PathBuf, pid: Option<u32> },
    #[error("the knowledge base {path} does not exist yet; run `concord run` to create it")]
    Missing { path: PathBuf },
    #[error("cannot open the knowledge base {path}: {reason}")]
    Cannot { path: PathBuf, reason: String },
    /// A storage failure while opening (reading the layout, recovering).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The file beside the store that names the process holding it.
pub(super) fn pid_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

pub(super) fn open_error(path: &Path, e: DatabaseError) -> OpenError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => {
            let pid = std::fs::read_to_string(pid_path(path)).ok().and_then(|s| s.trim().parse().ok());
            OpenError::InUse { path: path.to_path_buf(), pid }
        }
        DatabaseError::Storage(e) => OpenError::Cannot {
            path: path.to_path_buf(),
            reason: format!(
                "{e}; the file is damaged or is not a Concord knowledge base. Restore it from a backup, or move it away to start empty (nothing was changed)"
            ),
        },
        other => OpenError::Cannot { path: path.to_path_buf(), reason: other.to_string() },
    }
}

impl RedbStore {
    /// Opens the store for writing, exclusively (see [`Sharing`]).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_with(path, Sharing::Exclusive)
    }

    /// Opens the store for writing, creating the file (and its folder) if
    /// needed.
    pub fn open_with(path: &Path, sharing: Sharing) -> Result<Self, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OpenError::Cannot {
                path: path.to_path_buf(),
                reason: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        // Before redb opens the file for writing (it trusts a file it closed
        // cleanly; a damaged page could make a read panic).
        let verified = sharing == Sharing::Exclusive && Self::verify_before_writing(path)?;
        let shown = path.display().to_string();
        // Whether redb had to repair the file: the last writer did not close it.
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let db = Database::builder()
            .set_concurrency_mode(sharing.mode())
            // Recovery after an unclean stop (a crash, a kill) is normal and
            // checksummed; it is never silent.
            .set_repair_callback({
                let repaired = repaired.clone();
                move |session| {
                    repaired.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!("{shown} was not closed cleanly; recovering ({:.0}%)", session.progress() * 100.0);
                }
            })
            .create(path)
            .map_err(|e| open_error(path, e))?;
        // Name this process as the holder, for the "already in use" error
        // another process gets (redb's lock itself does not say who).
        let _ = std::fs::write(pid_path(path), std::process::id().to_string());
        let db = Arc::new(db);
        let mut store = Self { db: Db::ReadWrite(db.clone()), path: path.to_path_buf(), writer: None, recovered: 0 };
        let layout = store.init()?;
        let created = matches!(layout, Layout::Created);
        let unclean = repaired.load(std::sync::atomic::Ordering::SeqCst);
        if created {
            // A journal beside a store created just now belongs to a store
            // that was removed without it: kept, but out of the way.
            let old = journal::journal_path(path);
            if old.exists() {
                let mut aside = old.as_os_str().to_owned();
                aside.push(".orphaned");
                std::fs::rename(&old, &aside).map_err(|e| OpenError::Cannot {
                    path: path.to_path_buf(),
                    reason: format!("cannot move the old journal {} aside: {e}", old.display()),
                })?;
                tracing::warn!(
                    "{} was left by a store that no longer exists; moved to {}",
                    old.display(),
                    std::path::Path::new(&aside).display()
                );
            }
        }
        let journal = store.recover(&db, sharing, unclean)?;
        if let Layout::Old(old) = layout {
            store.upgrade(old)?;
        }
        // redb's repair of a file not closed cleanly verified every page too.
        if !verified && !unclean {
            store.read_every_record()?;
        }
        // The chain continues from the last entry on disk, and the index
        // rows of the entries after the indexes' reach wait again.
        let (next_seq, last_hash, index) = {
            let txn = store.read()?;
            let audit = txn.open_table(AUDIT).map_err(backend)?;
            let (next_seq, last_hash) = match audit.last().map_err(backend)? {
                Some((k, v)) => {
                    let seq = k.value();
                    let last: AuditEntry = decode(v.value(), || format!("audit entry {seq}"))?;
                    (seq + 1, last.hash)
                }
                None => (1, GENESIS_HASH.to_string()),
            };
            let mut index = Vec::new();
            for item in audit.range(audit_indexed(&txn)? + 1..).map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                let seq = k.value();
                index.push(IndexRow::of(&decode(v.value(), || format!("audit entry {seq}"))?));
            }
            (next_seq, last_hash, index)
        };
        let (jobs, queue) = mpsc::channel();
        let shared = Arc::new(WriterShared::default());
        shared.tail().next_seq = next_seq;
        let index_committed = index.len();
        let chain = Chain {
            committed_hash: last_hash.clone(),
            last_hash,
            in_txn: Vec::new(),
            index,
            index_committed,
            last_pending: 0,
        };
        let cannot_start = |what: &str, e: std::io::Error| OpenError::Cannot {
            path: path.to_path_buf(),
            reason: format!("cannot start the {what}: {e}"),
        };
        let journaling = match journal {
            Some((file, next_id)) => {
                let (syncer, records) = mpsc::channel();
                let health = Arc::new(Health::default());
                let for_syncer = health.clone();
                let _ = shared.journal.set(health.clone());
                let thread = std::thread::Builder::new()
                    .name("concord-syncer".into())
                    .spawn(move || journal::syncer_loop(file, records, for_syncer, next_id - 1))
                    .map_err(|e| cannot_start("journal's syncer", e))?;
                Some(Journaling {
                    syncer,
                    thread: Some(thread),
                    health,
                    next_id,
                    checkpointed_at: std::time::Instant::now(),
                    since_checkpoint: 0,
                    dirty: false,
                    last_record: 0,
                    epoch: new_epoch(),
                })
            }
            None => None,
        };
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("concord-writer".into())
            .spawn(move || writer_loop(db, queue, for_thread, chain, journaling))
            .map_err(|e| cannot_start("writer", e))?;
        store.writer = Some(Writer { jobs: Some(jobs), thread: Some(thread), shared });
        Ok(store)
    }

    /// Opens an existing store read-only, for the inspection commands.
    pub fn open_read_only(path: &Path) -> Result<Self, OpenError> {
        Self::open_read_only_with(path, Sharing::Exclusive)
    }

    /// Like [`RedbStore::open_read_only`]; with [`Sharing::SharedReads`] it
    /// works while a host (opened the same way) writes.
    pub fn open_read_only_with(path: &Path, sharing: Sharing) -> Result<Self, OpenError> {
        let store = Self::open_read_only_unchecked(path, sharing)?;
        store.read_table_ends()?;
        Ok(store)
    }

    /// A read-only open that reads no table (for [`RedbStore::check`],
    /// which reads them all).
    pub(super) fn open_read_only_unchecked(path: &Path, sharing: Sharing) -> Result<Self, OpenError> {
        if !path.exists() {
            return Err(OpenError::Missing { path: path.to_path_buf() });
        }
        let db = Database::builder()
            .set_concurrency_mode(sharing.mode())
            .open_read_only(path)
            .map_err(|e| match e {
                // Only a writer may repair, and recover the journal. A host
                // that stopped without closing leaves its pid file; with
                // none, the last host closed the file, and what redb wants
                // repaired is damage done since (a file cut short, say).
                DatabaseError::RepairAborted if pid_path(path).exists() => OpenError::Cannot {
                    path: path.to_path_buf(),
                    reason: "the last host using it stopped without closing it; start a host on it once to recover it (`concord serve`; the read commands then go through it)".into(),
                },
                DatabaseError::RepairAborted => OpenError::Cannot {
                    path: path.to_path_buf(),
                    reason: "the file is damaged: the last host closed it cleanly, and it has changed since (cut short or overwritten). Restore it from a backup, or move it away to start empty; `concord run` or `concord serve` on it names the damage and changes nothing".into(),
                },
                e => open_error(path, e),
            })?;
        let store = Self { db: Db::ReadOnly(db), path: path.to_path_buf(), writer: None, recovered: 0 };
        store.check_schema_version()?;
        let waiting = journal::read_unapplied(path, store.journal_applied()?)?.len();
        if waiting > 0 {
            return Err(OpenError::Cannot {
                path: path.to_path_buf(),
                reason: format!(
                    "the last host using it stopped without closing it, and {waiting} committed batches wait in its journal ({}); start a host on it once to recover them (`concord serve`; the read commands then go through it)",
                    journal::journal_path(path).display()
                ),
            });
        }
        Ok(store)
    }

    /// How many committed batches the open recovered from the journal
    /// (non-zero only after the last host stopped without closing).
    pub fn recovered_batches(&self) -> usize {
        self.recovered
    }

    /// The id of the last journal record the store holds (0 if none).
    pub(super) fn journal_applied(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(backend)?;
        Ok(meta.get(JOURNAL_APPLIED).map_err(backend)?.map_or(0, |v| v.value()))
    }

    /// Applies the journal records the store lacks (after an unclean stop),
    /// durably, in one transaction. With exclusive sharing, returns the
    /// journal, open for the writer, and the id its next record gets.
    ///
    /// A store that was not closed cleanly (`unclean`) and has used the
    /// journal is refused if the journal is gone: the commits acknowledged
    /// since its last checkpoint are only there, and opening without them
    /// must be a decision, not an accident of copying one file.
    pub(super) fn recover(
        &mut self,
        db: &Database,
        sharing: Sharing,
        unclean: bool,
    ) -> Result<Option<(Journal, u64)>, OpenError> {
        let applied = self.journal_applied()?;
        let journal_file = journal::journal_path(&self.path);
        if unclean && applied > 0 && !journal_file.exists() {
            return Err(OpenError::Cannot {
                path: self.path.clone(),
                reason: format!(
                    "it was not closed cleanly, and its journal {} is missing: the commits acknowledged since its last checkpoint (up to half a second before the stop) are only in that file. Put the journal back beside the store (nothing was changed); to open the store without them, create an empty file at that path",
                    journal_file.display()
                ),
            });
        }
        let (journal, records) = match sharing {
            Sharing::Exclusive => {
                let (journal, records) = Journal::recover(&self.path, applied)?;
                (Some(journal), records)
            }
            // Not used in this mode; only what an exclusive host left.
            Sharing::SharedReads => (None, journal::read_unapplied(&self.path, applied)?),
        };
        let last = records.last().map_or(applied, |r| r.id);
        if !records.is_empty() {
            let damaged = |reason: String| OpenError::Cannot {
                path: self.path.clone(),
                reason: format!(
                    "its journal is damaged ({reason}); restore the store and its journal from a backup (nothing was changed)"
                ),
            };
            let txn = db.begin_write().map_err(backend)?;
            for record in &records {
                for op in record.ops().map_err(|e| damaged(format!("batch {}: {e}", record.id)))? {
                    apply_op(&txn, &op)?;
                }
            }
            txn.open_table(META).map_err(backend)?.insert(JOURNAL_APPLIED, last).map_err(backend)?;
            txn.commit().map_err(backend)?;
            tracing::warn!(
                "{} was not closed cleanly; recovered {} committed batches from its journal",
                self.path.display(),
                records.len()
            );
            self.recovered = records.len();
        }
        Ok(journal.map(|j| (j, last + 1)))
    }
}

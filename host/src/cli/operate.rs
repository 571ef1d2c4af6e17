//! The operator commands: `pin`, `unpin`, `revert`, `import`, `export`.
//! They write as `human:NAME`, on the store, or through the running host
//! (which records its token's name).

use super::out::outln;
use super::source::{Access, Source};
use super::{Failure, format};
use crate::coord::import::{self, ImportError};
use crate::coord::operator;
use crate::kb::{EntityRef, Value};
use crate::policy::config::Config;
use std::io::Write as _;
use std::path::{Path, PathBuf};

fn names(fields: &[(String, Value)]) -> String {
    fields.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", ")
}

pub(super) fn pin(
    config_path: &Path,
    entity: &EntityRef,
    assignments: &[String],
    by: Option<String>,
    reason: &str,
) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    let fields = assignments
        .iter()
        .map(|a| operator::parse_assignment(&config.schema, entity, a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let source = Source::open(config, Access::Write)?;
    let by = source.by(by)?;
    let event = source.pin(entity, &fields, by, reason)?;
    outln!("pinned {} on {entity} (event {}, version {})", names(&fields), event.seq, event.version);
    Ok(0)
}

pub(super) fn unpin(
    config_path: &Path,
    entity: &EntityRef,
    fields: &[String],
    by: Option<String>,
    reason: &str,
) -> Result<u8, Failure> {
    let source = Source::open(Config::load(config_path)?, Access::Write)?;
    let by = source.by(by)?;
    let event = source.unpin(entity, fields, by, reason)?;
    outln!("unpinned {} on {entity} (event {})", fields.join(", "), event.seq);
    Ok(0)
}

/// `concord actions retry ID`.
pub(super) fn retry_action(config_path: &Path, id: u64, by: Option<String>, reason: &str) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    if reason.trim().is_empty() {
        return Err(Failure::usage("give a --reason: it is kept in the audit"));
    }
    let source = Source::open(config, Access::Write)?;
    let by = source.by(by)?;
    let action = source.retry_action(id, by, reason)?;
    outln!(
        "action {id} ({} for {}) is back in the outbox; it is delivered at the next round (a running host's, or the next start's)",
        action.kind,
        action.entity
    );
    Ok(0)
}

/// `concord lease break KIND/ID`.
pub(super) fn break_lease(
    config_path: &Path,
    entity: &EntityRef,
    by: Option<String>,
    reason: &str,
) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    config.schema.check_ref(entity).map_err(Failure::usage)?;
    if reason.trim().is_empty() {
        return Err(Failure::usage("give a --reason: it is kept in the audit"));
    }
    let source = Source::open(config, Access::Write)?;
    let by = source.by(by)?;
    let lease = source.break_lease(entity, by, reason)?;
    outln!(
        "broke {}'s lease on {entity} (token {}, which was live until {}); a write with that token is refused",
        lease.holder,
        lease.token,
        format::fmt_time(lease.expires_at_ms)
    );
    Ok(0)
}

pub(super) fn revert(
    config_path: &Path,
    seq: u64,
    by: Option<String>,
    reason: &str,
    force: bool,
) -> Result<u8, Failure> {
    let source = Source::open(Config::load(config_path)?, Access::Write)?;
    let by = source.by(by)?;
    let event = source.revert(seq, by, reason, force)?;
    outln!("reverted event {seq} with event {} ({} now at version {})", event.seq, event.entity, event.version);
    format::print_events(std::slice::from_ref(&event), false);
    Ok(0)
}

/// `concord import FILE`: every row is checked against the schema before
/// anything is written; then the rows go in batches, each all or nothing.
pub(super) fn import(config_path: &Path, file: &Path, by: Option<String>, batch: usize) -> Result<u8, Failure> {
    // Every row is imported whether or not anyone reads the progress.
    super::out::keep_going_when_closed();
    if batch == 0 || batch > import::MAX_BATCH {
        return Err(Failure::usage(format!("--batch is 1 to {}", import::MAX_BATCH)));
    }
    let config = Config::load(config_path)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure { code: 3, error: anyhow::anyhow!("cannot read {}: {e}", file.display()) })?;
    let label = file.display().to_string();
    let in_file = |e: ImportError| Failure { code: 3, error: anyhow::anyhow!("{label}: {e}") };
    let csv = file.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv"));
    let raw = if csv { import::parse_csv(&text, &config.schema) } else { import::parse_jsonl(&text) }
        .map_err(|rows| in_file(ImportError::Rows(rows)))?;
    let rows = import::check_rows(&config.schema, &raw).map_err(in_file)?;
    if rows.is_empty() {
        outln!("{label} holds no rows: nothing imported");
        return Ok(0);
    }
    let source = Source::open(config, Access::Write)?;
    let by = source.by(by)?;
    let source_name = file.file_name().map_or(label.clone(), |n| n.to_string_lossy().into_owned());
    let mut done = 0usize;
    for (raw, rows) in raw.chunks(batch).zip(rows.chunks(batch)) {
        let (first, last) = (rows[0].line, rows[rows.len() - 1].line);
        match source.import(raw, rows, by.clone(), &source_name) {
            Ok(events) => {
                done += events.len();
                let seqs = (events.first().map_or(0, |e| e.seq), events.last().map_or(0, |e| e.seq));
                outln!("imported lines {first}-{last}: {} entities (events {}-{})", events.len(), seqs.0, seqs.1);
            }
            Err(f) => {
                if done > 0 {
                    eprintln!("concord: {done} rows before line {first} were imported; lines {first} on were not");
                }
                return Err(Failure { code: f.code, error: f.error.context(format!("{label}: lines {first}-{last}")) });
            }
        }
    }
    outln!("imported {done} rows from {label}");
    Ok(0)
}

/// `concord export`: every entity's current state as JSON lines, in key
/// order, a page at a time.
pub(super) fn export(config_path: &Path, kind: Option<String>, out: Option<PathBuf>) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    if let Some(k) = &kind
        && !config.schema.kinds.contains_key(k)
    {
        let known: Vec<&str> = config.schema.kinds.keys().map(String::as_str).collect();
        return Err(Failure::usage(format!("unknown entity kind `{k}` (declared kinds: {})", known.join(", "))));
    }
    let source = Source::open(config, Access::Read)?;
    let mut sink: Box<dyn std::io::Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Failure { code: 3, error: anyhow::anyhow!("cannot write {}: {e}", path.display()) })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // A write error on stdout takes the path of every command's output
    // (`out`): a closed pipe ends the export quietly.
    let to_stdout = out.is_none();
    let written = |r: std::io::Result<()>| -> Result<(), Failure> {
        match r {
            Err(e) if to_stdout => super::out::stop(e),
            r => Ok(r?),
        }
    };
    let (mut after, mut n) = (None::<String>, 0usize);
    loop {
        let (page, next) = source.list(kind.as_deref(), after.as_deref())?;
        for view in &page {
            written(writeln!(sink, "{}", serde_json::to_string(view)?))?;
        }
        n += page.len();
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    written(sink.flush())?;
    if let Some(path) = out {
        outln!("{n} entities written to {}", path.display());
    }
    Ok(0)
}

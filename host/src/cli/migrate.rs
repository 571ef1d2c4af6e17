//! `concord migrate --from SRC --to DST`: a whole knowledge base copied
//! into an empty one, between any two backends (see `kb::ops::migrate`).

use super::Failure;
use super::out::outln;
use crate::kb::postgres::PgOptions;
use crate::kb::{self, Access, Backend, ops};

/// A store named on the command line: a PostgreSQL URL, or a redb file.
/// Any other URL is refused rather than taken for a file name.
fn location(flag: &str, text: &str) -> Result<Backend, Failure> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(Backend::Postgres(PgOptions { url: text.to_string(), pool: 2 }))
    } else if let Some((scheme, _)) = text.split_once("://") {
        Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "{flag}: `{scheme}://` is not a store Concord has: give a redb file (data/concord.redb) or a postgres:// URL"
            ),
        })
    } else {
        Ok(Backend::Redb { path: text.into(), sharing: kb::redb::Sharing::Exclusive })
    }
}

/// How a location is shown: a URL without its password.
fn shown(backend: &Backend) -> String {
    match backend {
        Backend::Redb { path, .. } => path.display().to_string(),
        Backend::Postgres(o) => format!("PostgreSQL at {}", kb::postgres::describe(&o.url)),
    }
}

pub(super) fn migrate(from: &str, to: &str) -> Result<u8, Failure> {
    let (source, target) = (location("--from", from)?, location("--to", to)?);
    if source == target {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "--from and --to name the same knowledge base ({}): name an empty target",
                shown(&source)
            ),
        });
    }
    if let Backend::Redb { path, .. } = &target
        && path.exists()
    {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "the target {} exists already: `concord migrate` copies into a new, empty store only (nothing was changed)",
                path.display()
            ),
        });
    }
    let started = std::time::Instant::now();
    let from_store = kb::open(&source, Access::ReadOnly)?;
    let to_store = kb::open(&target, Access::ReadWrite)?;
    outln!("concord: copying {} into {}", shown(&source), shown(&target));
    let copied = ops::migrate::copy(&*from_store, &*to_store)?;
    outln!(
        "copied {} events, {} entities, {} audit entries, {} pins, {} leases, {} actions ({} pending), {} change requests, {} read cursors in {:.1} s",
        copied.events,
        copied.entities,
        copied.audit,
        copied.pins,
        copied.leases,
        copied.actions,
        copied.pending_actions,
        copied.change_requests,
        copied.cursors,
        started.elapsed().as_secs_f64()
    );
    outln!(
        "checked: the audit verifies on the copy with the same head ({}), and the copy replays clean",
        copied.audit_head
    );
    Ok(0)
}

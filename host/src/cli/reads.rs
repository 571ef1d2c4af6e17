//! The read commands: `get`, `history`, `audit` (and `audit verify`,
//! `checkpoint`, `keygen`, `export`), `agents`, `replay`, `conflicts`,
//! `actions`. Each reads the store, or the running host's API, and prints
//! the same either way.

use super::args::{AuditAction, AuditArgs};
use super::client::segment;
use super::out::{out, outln};
use super::source::{Access, Source};
use super::{Failure, format};
use crate::audit::checkpoint;
use crate::audit::{AuditEntry, AuditFilter, Verification};
use crate::coord::conflicts;
use crate::kb::{AtPoint, EntityRef, Event};
use crate::policy::config::Config;
use crate::server::wire::{AgentList, AgentView};
use std::path::Path;

fn open(config: &Path, access: Access) -> Result<Source, Failure> {
    Source::open(Config::load(config)?, access)
}

/// Refuses an entity of a kind the schema does not declare, as the API
/// does (exit 3).
fn check_kind(source: &Source, entity: &EntityRef) -> Result<(), Failure> {
    source.config().schema.check_ref(entity).map(drop).map_err(|e| Failure { code: 3, error: anyhow::anyhow!(e) })
}

pub(super) fn get(config: &Path, entity: &EntityRef, at: Option<AtPoint>, json: bool) -> Result<u8, Failure> {
    let source = open(config, Access::Read)?;
    check_kind(&source, entity)?;
    match source.get(entity, at)? {
        Some(found) => {
            format::print_entity(&found, json);
            Ok(0)
        }
        None => Err(Failure::not_found(format!(
            "{entity} does not exist (see `concord history {entity}`, or check the id)"
        ))),
    }
}

pub(super) fn history(
    config: &Path,
    entity: &EntityRef,
    after: u64,
    limit: usize,
    json: bool,
    follow: bool,
) -> Result<u8, Failure> {
    let source = open(config, Access::Read)?;
    check_kind(&source, entity)?;
    let client = match (follow, source.client()) {
        (true, None) => return Err(needs_host("--follow")),
        (_, client) => client,
    };
    let events = source.history(entity, after, limit)?;
    if events.is_empty() && !json && !follow {
        return Err(Failure::not_found(format!("{entity} has no events after seq {after}")));
    }
    format::print_events(&events, json);
    if let Some(client) = client.filter(|_| follow) {
        let last = events.last().map_or(after, |e| e.seq);
        let path = format!("/v1/events?entity={}", segment(&entity.key()));
        client.follow(&path, last, |data| match serde_json::from_str::<Event>(data) {
            Ok(e) => {
                format::print_events(std::slice::from_ref(&e), json);
                true
            }
            Err(e) => {
                eprintln!("concord: an event that does not decode ({e}): {data}");
                true
            }
        })?;
    }
    Ok(0)
}

fn needs_host(what: &str) -> Failure {
    Failure {
        code: 3,
        error: anyhow::anyhow!(
            "{what} needs a running host to follow: start one with `concord serve` (nothing changes while none runs)"
        ),
    }
}

pub(super) fn audit(config_path: &Path, args: AuditArgs) -> Result<u8, Failure> {
    let access = match &args.action {
        Some(AuditAction::Keygen { .. }) => Access::Write,
        _ => Access::Read,
    };
    let source = open(config_path, access)?;
    match args.action {
        None => {}
        Some(AuditAction::Verify { checkpoint: None, .. }) => return Ok(report_verification(source.verify()?)),
        Some(AuditAction::Verify { checkpoint: Some(path), public_key, key }) => {
            let cp = checkpoint::read(&path)?;
            let trusted = match (public_key, key) {
                (Some(k), _) => Some(k),
                (None, Some(key)) => Some(checkpoint::public_key(&checkpoint::load_key(&key)?)),
                (None, None) => {
                    eprintln!("warning: no --public-key or --key given: the checkpoint's own key is trusted");
                    None
                }
            };
            let v = source.verify_checkpoint(&cp, trusted.as_deref())?;
            if matches!(v, Verification::Intact { .. }) {
                outln!("the log extends checkpoint {} (entry {}, signed by {})", path.display(), cp.seq, cp.public_key);
            }
            return Ok(report_verification(v));
        }
        Some(AuditAction::Keygen { key, force }) => {
            let public = checkpoint::generate_key(&key, force)?;
            source.record_key(&public, None)?;
            outln!(
                "wrote a new signing key to {} (public key {public}); keep it apart from {}",
                key.display(),
                source.config().kb_path.display()
            );
            return Ok(0);
        }
        Some(AuditAction::Checkpoint { key, out }) => {
            let cp = source.checkpoint(&checkpoint::load_key(&key)?, None)?;
            let text = serde_json::to_string_pretty(&cp)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    outln!("checkpoint of entry {} written to {}", cp.seq, path.display());
                }
                None => out!("{text}"),
            }
            return Ok(0);
        }
        Some(AuditAction::Export { out }) => {
            let entries = source.audit(&AuditFilter::default())?;
            let mut text = String::new();
            for e in &entries {
                text.push_str(&serde_json::to_string(e)?);
                text.push('\n');
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    outln!("{} entries written to {}", entries.len(), path.display());
                }
                None => out!("{text}"),
            }
            return Ok(0);
        }
    }
    if args.follow && source.client().is_none() {
        return Err(needs_host("`concord audit --follow`"));
    }
    let trace = match args.trace {
        Some(id) => Some(source.trace(id)?),
        None => None,
    };
    let filter = AuditFilter {
        agent: args.agent,
        entity: args.entity.map(|e| e.key()),
        call: args.call,
        decision: args.outcome,
        invocation: args.invocation,
        trace,
        since_ms: args.since,
        until_ms: args.until,
        after: None,
        before: None,
        limit: args.limit,
    };
    // The newest entry before the query: what lands while the query runs
    // is then either in its answer or after this point, never lost.
    let head = match source.client().filter(|_| args.follow) {
        Some(client) => {
            client.get::<crate::server::wire::AuditPage>("/v1/audit?limit=1")?.entries.last().map_or(0, |e| e.seq)
        }
        None => 0,
    };
    let entries = source.audit(&filter)?;
    format::print_audit(&entries, args.json);
    if let Some(client) = source.client().filter(|_| args.follow) {
        let after = entries.last().map_or(head, |e| e.seq.max(head));
        follow_audit(client, &filter, after, args.json)?;
    }
    Ok(0)
}

/// Prints the audit entries after seq `after` that match `filter`, as they come.
fn follow_audit(client: &super::client::Client, filter: &AuditFilter, after: u64, json: bool) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(v) = &filter.agent {
        query.push(format!("agent={}", segment(v)));
    }
    if let Some(v) = &filter.entity {
        query.push(format!("entity={}", segment(v)));
    }
    if let Some(v) = &filter.call {
        query.push(format!("call={}", segment(v)));
    }
    if let Some(v) = filter.decision {
        query.push(format!("outcome={}", v.as_str()));
    }
    if let Some(v) = filter.invocation {
        query.push(format!("invocation={v}"));
    }
    if let Some(v) = filter.since_ms {
        query.push(format!("since={v}"));
    }
    if let Some(v) = filter.until_ms {
        query.push(format!("until={v}"));
    }
    let path = format!("/v1/audit/stream?{}", query.join("&"));
    client.follow(&path, after, |data| {
        match serde_json::from_str::<AuditEntry>(data) {
            Ok(e) if filter.trace.as_ref().is_none_or(|t| t.contains(&e.invocation)) => {
                format::print_audit_rows(std::slice::from_ref(&e), json);
            }
            Ok(_) => {}
            Err(e) => eprintln!("concord: an audit entry that does not decode ({e}): {data}"),
        }
        true
    })?;
    Ok(())
}

fn report_verification(v: Verification) -> u8 {
    match v {
        Verification::Intact { entries, head } => {
            outln!("audit chain intact: {entries} entries, head {head}");
            0
        }
        Verification::Broken { seq, problem } => {
            outln!("audit chain BROKEN at entry {seq}: {problem}");
            1
        }
    }
}

pub(super) fn agents(config_path: &Path, json: bool) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    // A running host lists what it has loaded; otherwise the folder is
    // loaded here (compiled, or from the cache), as a host would.
    let source = Source::open(config.clone(), Access::Read);
    let list = match source.as_ref().ok().map(Source::agents) {
        Some(Ok(Some(list))) => list,
        Some(Err(e)) => return Err(e),
        _ => {
            let runtime =
                crate::runtime::Runtime::load(&config.agents_dir, config.pool_limits(), Some(&config.agents_cache))?;
            let agents = runtime.agents().iter().map(|a| AgentView::of(a, &config)).collect();
            AgentList { agents, refused: vec![] }
        }
    };
    format::print_agents(&list.agents, &list.refused, json);
    Ok(0)
}

pub(super) fn schedules(config_path: &Path, json: bool) -> Result<u8, Failure> {
    let list = open(config_path, Access::Read)?.schedules()?;
    format::print_schedules(&list, json);
    Ok(0)
}

pub(super) fn replay(config: &Path) -> Result<u8, Failure> {
    let report = open(config, Access::Read)?.replay()?;
    outln!("replayed {} events into {} entities", report.events, report.entities);
    if report.differences.is_empty() {
        outln!("the projection equals the replay");
        Ok(0)
    } else {
        for d in &report.differences {
            outln!("DIFFERS {d}");
        }
        Ok(1)
    }
}

pub(super) fn conflicts(config: &Path, window_ms: u64, json: bool) -> Result<u8, Failure> {
    let window_ms = conflicts::check_window(window_ms).map_err(Failure::usage)?;
    let report = open(config, Access::Read)?.conflicts(window_ms)?;
    format::print_conflicts(&report, json);
    Ok(0)
}

pub(super) fn actions(config: &Path, json: bool) -> Result<u8, Failure> {
    format::print_actions(&open(config, Access::Read)?.actions()?, json);
    Ok(0)
}

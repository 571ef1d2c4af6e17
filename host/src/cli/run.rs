//! `concord run` (play a script on a host of its own) and `concord check`.

use super::out::outln;
use super::{Failure, format};
use crate::coord::conflicts;
use crate::coord::script::{self, Script, StepReport};
use crate::host::Host;
use crate::policy::config::Config;
use crate::runtime::Outcome;
use std::path::Path;
use std::sync::Arc;

/// Refuses, naming the server, what needs the store to itself while
/// `concord serve` holds it.
fn refuse_if_served(config: &Config, what: &str) -> Result<(), Failure> {
    if let Some(client) = super::client::Client::find(&config.kb_path)? {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "cannot {what}: the knowledge base {} is held by `concord serve` at {}; stop it first (Ctrl-C, or SIGTERM), or trigger agents through it with `concord invoke`",
                config.kb_path.display(),
                client.base()
            ),
        });
    }
    Ok(())
}

/// `concord check`.
pub(super) fn check(config_path: &Path) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    refuse_if_served(&config, "check every page")?;
    let started = std::time::Instant::now();
    let report = crate::kb::check(&config.kb_backend())?;
    for table in &report.tables {
        for problem in &table.problems {
            outln!("DAMAGED {}: {problem}", table.table);
        }
        if table.unlisted > 0 {
            outln!("DAMAGED {}: and {} more problems", table.table, table.unlisted);
        }
    }
    outln!(
        "read {} records in {} tables in {:.1} s",
        report.records(),
        report.tables.len(),
        started.elapsed().as_secs_f64()
    );
    if report.is_clean() {
        outln!("no damage found");
        Ok(0)
    } else {
        outln!("the knowledge base is damaged: restore it from a backup (nothing was changed)");
        Ok(1)
    }
}

/// `concord run --script FILE`.
pub(super) fn script(config_path: &Path, script_path: &Path) -> Result<u8, Failure> {
    // A reader that goes away must not change how this ends (see `out`).
    super::out::keep_going_when_closed();
    let config = Config::load(config_path)?;
    refuse_if_served(&config, "play a script")?;
    // Parse the whole script before starting, so a bad line writes nothing.
    let script = if script_path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Script::parse(&text, Path::new("<stdin>"))?
    } else {
        Script::load(script_path)?
    };
    // Check the script against the agents before the store is opened.
    script.check(&config.schema, &crate::runtime::agent_names(&config.agents_dir)?)?;
    let host = Arc::new(Host::start(config)?);
    for w in host.warnings() {
        eprintln!("warning: {w}");
    }
    let names: Vec<String> = host.agents().iter().map(|a| format!("{} ({})", a.name, &a.digest[..12])).collect();
    outln!("concord: {} agents loaded: {}", names.len(), names.join(", "));
    outln!("concord: knowledge base {}", host.config().kb_path.display());
    outln!();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = runtime.block_on(script::run(host.clone(), &script, format::print_step))?;

    let ok = results.iter().filter(|i| i.outcome.is_ok()).count();
    let failed = results.iter().filter(|i| matches!(i.outcome, Outcome::Failed(_))).count();
    let trapped = results.iter().filter(|i| matches!(i.outcome, Outcome::Trapped(_) | Outcome::Stopped(_))).count();
    outln!();
    outln!("summary: {} invocations: {ok} ok, {failed} failed, {trapped} trapped", results.len());
    let report = host.conflicts(conflicts::MAX_WINDOW_MS)?;
    let counts: Vec<String> = report.refused.iter().map(|(d, n)| format!("{n} {d}")).collect();
    outln!(
        "         refused by the host in this knowledge base: {}",
        if counts.is_empty() { "nothing".to_string() } else { counts.join(", ") }
    );
    let actions = host.store().actions()?;
    let delivered = actions.iter().filter(|a| a.delivered_at_ms.is_some()).count();
    outln!("         actions: {} recorded, {delivered} delivered ({})", actions.len(), sink_name(&host.config()));
    outln!("         see `concord audit` for every call, `concord history KIND/ID` for every change");
    Ok(if failed + trapped == 0 { 0 } else { 1 })
}

fn sink_name(config: &Config) -> String {
    match &config.sink {
        crate::policy::config::SinkConfig::Stdout => "to stdout".into(),
        crate::policy::config::SinkConfig::File(p) => format!("to {}", p.display()),
        crate::policy::config::SinkConfig::Http(h) => format!("to {}", h.endpoint.url),
    }
}

impl StepReport {
    pub(super) fn line(&self) -> usize {
        match self {
            StepReport::Paused { line, .. } | StepReport::Finished { line, .. } => *line,
        }
    }
}

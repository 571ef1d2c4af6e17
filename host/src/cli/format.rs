//! Human-readable tables and JSON lines for the CLI.

use super::out::outln;
use crate::audit::AuditEntry;
use crate::coord::conflicts::Report;
use crate::coord::script::StepReport;
use crate::kb::ActionRecord;
use crate::kb::{Event, Value};
use crate::runtime::Outcome;
use crate::server::wire::AgentView;
use serde_json::json;

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (H. Hinnant), for days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

pub fn print_actions(actions: &[ActionRecord], as_json: bool) {
    if !as_json {
        outln!("{:>4}  {:<16} {:<16} {:<8} {:>7}  {:<24} key", "id", "kind", "entity", "agent", "version", "delivered");
    }
    for a in actions {
        if as_json {
            outln!("{}", serde_json::to_string(a).unwrap_or_default());
            continue;
        }
        let delivered = match (a.delivered_at_ms, a.dead_at_ms) {
            (Some(at), _) => fmt_time(at),
            (None, Some(_)) => "DEAD LETTER".to_string(),
            (None, None) if a.attempts > 0 => format!("pending, {} failed", a.attempts),
            (None, None) => "pending".to_string(),
        };
        outln!(
            "{:>4}  {:<16} {:<16} {:<8} {:>7}  {:<24} {}",
            a.id,
            a.kind,
            a.entity.key(),
            a.agent,
            a.based_on,
            delivered,
            visible(&a.idempotency_key)
        );
        // Why it is not delivered, and what to do.
        if a.delivered_at_ms.is_none()
            && let Some(error) = &a.last_error
        {
            match a.dead_at_ms {
                Some(at) => outln!(
                    "      dead since {} after {} attempts: {}; fix the receiver, then `concord actions retry {} --reason ...`",
                    fmt_time(at),
                    a.attempts,
                    visible(error),
                    a.id
                ),
                None => {
                    outln!("      last attempt failed: {}; next at {}", visible(error), fmt_time(a.next_attempt_ms))
                }
            }
        }
    }
}

pub fn print_conflicts(r: &Report, as_json: bool) {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    // The first 12 seqs, and how many more there are in all.
    let listed = |s: &[u64], count: usize| {
        let shown: Vec<String> = s.iter().take(12).map(u64::to_string).collect();
        let more = if count > shown.len() { format!(" (+{} more)", count - shown.len()) } else { String::new() };
        format!("{}{more}", shown.join(", "))
    };
    let seqs = |s: &[u64]| listed(s, s.len());
    let section = |title: &str, map: &std::collections::BTreeMap<String, crate::coord::conflicts::Tally>| {
        outln!("{title}:");
        if map.is_empty() {
            outln!("  none");
        }
        for (k, t) in map {
            outln!("  {k:<48} {:>4}   audit seqs {}", t.count, listed(&t.seqs, t.count));
        }
    };
    section("refusals by agent pair (agent vs the other party)", &r.by_pair);
    section("refusals by entity", &r.by_entity);
    section("refusals by field", &r.by_field);
    section("agents acting on stale versions (conflicts)", &r.stale);
    outln!("refusal rate per agent (refused / writes, actions and leases):");
    for (agent, (refused, total)) in &r.refusal_rate {
        outln!("  {agent:<10} {refused}/{total}");
    }
    outln!("ping-pongs (a field put back by another agent, twice or more):");
    if r.ping_pongs.is_empty() {
        outln!("  none");
    }
    for p in &r.ping_pongs {
        outln!(
            "  {}.{} between {} and {}: {} flips   events {}",
            p.entity,
            p.field,
            p.agents.0,
            p.agents.1,
            p.flips,
            seqs(&p.events)
        );
    }
    outln!("cascades:");
    outln!(
        "  stopped at the depth limit: {}   audit seqs {}",
        r.stopped_cascades.count,
        listed(&r.stopped_cascades.seqs, r.stopped_cascades.count)
    );
    if !r.deepest_chain.is_empty() {
        outln!(
            "  deepest chain: invocations {} (see `concord audit --trace {}`)",
            seqs(&r.deepest_chain),
            r.deepest_chain[0]
        );
    }
}

fn value(v: &Option<Value>) -> String {
    v.as_ref().map_or_else(|| "∅".to_string(), |v| visible(&v.to_string()).into_owned())
}

pub fn print_entity(found: &super::source::Found, as_json: bool) {
    let (e, lease) = (&found.entity, found.lease.as_ref());
    if as_json {
        let mut view = crate::coord::import::EntityView::of(e);
        view.lease = lease.cloned();
        view.pins = found.pins.clone();
        outln!("{}", serde_json::to_string(&view).unwrap_or_default());
        return;
    }
    outln!("{}  version {}  (updated by {} at {})", e.entity, e.version, e.updated_by, fmt_time(e.updated_at_ms));
    let width = e.fields.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &e.fields {
        // JSON as it parses (the same text however it was spaced, and
        // whether it was read from the store or through a running host).
        match v {
            Value::Json(_) => outln!("  {k:width$}  {}", visible(&v.to_json().to_string())),
            _ => outln!("  {k:width$}  {}", visible(&v.to_string())),
        }
    }
    for p in &found.pins {
        outln!(
            "pinned {} by human:{} at {}: \"{}\" (event {})",
            p.field,
            p.by,
            fmt_time(p.at_ms),
            visible(&clip(&p.reason, MAX_REASON_CHARS)),
            p.seq
        );
    }
    if let Some(l) = lease {
        outln!("leased by {} until {} (token {})", l.holder, fmt_time(l.expires_at_ms), l.token);
    }
}

pub fn print_events(events: &[Event], as_json: bool) {
    for e in events {
        if as_json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
            continue;
        }
        outln!(
            "#{:<5} {}  {:<8} {} v{} {}  \"{}\" (invocation {})",
            e.seq,
            fmt_time(e.at_ms),
            e.agent,
            e.entity,
            e.version,
            e.kind.as_str(),
            visible(&clip(&e.reason, MAX_REASON_CHARS)),
            e.invocation
        );
        for c in &e.changes {
            outln!("         {}: {} -> {}", c.name, value(&c.before), value(&c.after));
        }
    }
}

pub fn print_audit(entries: &[AuditEntry], as_json: bool) {
    if !as_json {
        outln!("{:>5}  {:<24} {:<11} {:>5}  {:<20} {:<9}  outcome", "seq", "time", "agent", "inv", "call", "decision");
    }
    print_audit_rows(entries, as_json);
}

/// Audit entries without the table's header (for `--follow`).
pub fn print_audit_rows(entries: &[AuditEntry], as_json: bool) {
    for e in entries {
        if as_json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
            continue;
        }
        let mut outcome = visible(&e.outcome.replace('\n', " ")).into_owned();
        if let Some(c) = e.causation
            && e.call == crate::audit::calls::INVOCATION_START
        {
            outcome = format!("{outcome} <- {c}");
        }
        // The rule goes first: it is what a reader scans for, and the
        // outcome may be cut.
        if let Some(rule) = &e.rule {
            outcome = format!("[{rule}] {outcome}");
        }
        if outcome.chars().count() > 140 {
            outcome = outcome.chars().take(139).collect::<String>() + "…";
        }
        outln!(
            "{:>5}  {:<24} {:<11} {:>5}  {:<20} {:<9}  {}",
            e.seq,
            fmt_time(e.at_ms),
            e.agent,
            e.invocation,
            e.call,
            e.decision.as_str(),
            outcome
        );
    }
}

pub fn print_agents(agents: &[AgentView], refused: &[crate::runtime::RefusedFile], as_json: bool) {
    for a in agents {
        let fields = &a.writes;
        if as_json {
            outln!(
                "{}",
                json!({
                    "name": a.name, "digest": a.digest, "path": a.path, "writes": fields, "loaded_at_ms": a.loaded_at_ms,
                    "http": a.http, "secrets": a.secrets, "models": a.models,
                })
            );
        } else {
            outln!("{:<10} sha256:{}  {}", a.name, a.digest, a.path.display());
            outln!("           loaded {}", fmt_time(a.loaded_at_ms));
            outln!("           writes: {}", if fields.is_empty() { "(nothing)".into() } else { fields.join(", ") });
            // Deny by default: an agent granted nothing beyond the
            // knowledge base shows no line for it.
            if !a.http.is_empty() {
                outln!("           may reach: {}", a.http.join(", "));
            }
            if !a.secrets.is_empty() {
                outln!("           secrets added: {}", a.secrets.join(", "));
            }
            if !a.models.is_empty() {
                outln!("           models: {}", a.models.join(", "));
            }
        }
    }
    for r in refused {
        if as_json {
            outln!("{}", json!({ "refused": r.path, "digest": r.digest, "reason": r.reason, "at_ms": r.at_ms }));
        } else {
            outln!("REFUSED    {} (sha256:{}) at {}", r.path.display(), r.digest, fmt_time(r.at_ms));
            outln!("           {}", visible(&r.reason));
        }
    }
}

pub fn print_schedules(list: &crate::server::wire::ScheduleList, as_json: bool) {
    if list.schedules.is_empty() && !as_json {
        outln!("no schedules: add [[schedules]] to the config (see the README's `concord.toml` reference)");
    }
    for s in &list.schedules {
        if as_json {
            outln!("{}", serde_json::to_string(s).unwrap_or_default());
            continue;
        }
        let target = s.entity.as_deref().map(|e| format!(" on {e}")).unwrap_or_default();
        outln!(
            "{:<16} {} -> {} {}{}  (catch_up = \"{}\")",
            s.name,
            s.when,
            s.agent,
            s.kind,
            target,
            s.catch_up.as_str()
        );
        let next = match s.next_fire_ms {
            Some(ms) => fmt_time(ms),
            None => "never".into(),
        };
        outln!("                 next:  {next}");
        match (s.state.last_fire_ms, &s.state.last_outcome) {
            (Some(at), outcome) => {
                let inv = s.state.last_invocation.map(|i| format!(" (invocation {i})")).unwrap_or_default();
                let outcome = outcome.as_deref().unwrap_or("unknown");
                outln!("                 last:  {}{inv}: {}", fmt_time(at), visible(outcome));
            }
            (None, _) => outln!("                 last:  never fired"),
        }
        if let Some(run) = s.running {
            outln!("                 running now: {run}");
        }
        outln!("                 fired {} time(s), skipped {}", s.state.fires, s.state.skipped);
    }
}

/// The most of an event's reason a table shows (`--json` has it whole): a
/// commit may carry up to `limits.max_call_bytes` of it.
const MAX_REASON_CHARS: usize = 500;

/// `s` cut to `max` characters, saying how much was left out.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let total = s.chars().count();
    if total <= max {
        return s.into();
    }
    format!("{}… ({} more characters; --json shows them)", s.chars().take(max).collect::<String>(), total - max).into()
}

/// Agent-supplied text as the terminal should show it: control,
/// bidirectional and invisible characters (an escape sequence, U+202E)
/// are printed as `\u{…}` escapes, so that nothing an agent writes can
/// move the cursor, recolour the screen or pass for other text.
pub fn visible(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(crate::policy::schema::deceptive) {
        return s.into();
    }
    s.chars()
        .map(|c| if crate::policy::schema::deceptive(c) { c.escape_unicode().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

pub fn print_step(step: &StepReport) {
    let line = match step.line() {
        0 => "end".to_string(),
        n => format!("line {n}"),
    };
    match step {
        StepReport::Paused { id, agent, call, note, .. } => {
            if let Some(note) = note {
                outln!("[{line:>8}] -- {note}");
            }
            outln!("[{line:>8}] {agent:<8} paused before {call} (trigger `{id}`; resumes later in the script)");
        }
        StepReport::Finished { note, invocation, .. } => {
            if let Some(note) = note {
                outln!("[{line:>8}] -- {note}");
            }
            let (tag, text) = match &invocation.outcome {
                Outcome::Ok(s) => ("ok", s),
                Outcome::Failed(s) => ("FAILED", s),
                Outcome::Trapped(s) => ("TRAPPED", s),
                Outcome::Stopped(s) => ("STOPPED", s),
            };
            outln!(
                "[{line:>8}] {:<8} invocation {:<4} {tag}: {}  ({} host calls)",
                invocation.agent,
                invocation.id,
                visible(text),
                invocation.host_calls
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_is_clipped_and_made_visible() {
        assert_eq!(clip("short", 10), "short");
        let long = "x".repeat(1000);
        assert!(clip(&long, 500).ends_with("… (500 more characters; --json shows them)"));
        assert_eq!(visible("a\u{1b}[2Jb\u{202e}c"), "a\\u{1b}[2Jb\\u{202e}c");
        assert_eq!(visible("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn times_format_as_utc() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(1_796_000_000_123), "2026-11-30T00:53:20.123Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}

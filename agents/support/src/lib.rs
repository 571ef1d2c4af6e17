//! The Support agent. Owns `open_tickets`, `last_interaction` and
//! `satisfaction_score`; shares `status` with Sales.
//!
//! Messages:
//! - `escalation` `{ticket, summary}`: opens a ticket, rates its severity
//!   and marks the customer `at_risk`. The severity comes from the `default`
//!   model when `concord.toml` declares one and grants it to Support
//!   (`[models.default]`, `[agents.support] models`); otherwise, or when the
//!   model is down or answers something else, from Support's own rule.
//! - `resolved` `{ticket, satisfaction}`: closes a ticket; with none left open
//!   the customer is `active` again.
//!
//! Each change is computed from a fresh read and committed against that
//! read's version; on a conflict Support re-reads and recomputes (a ticket
//! count is never blindly re-applied to a stale value).

use concord_agent::{Entity, Handler, Message, Value, Write, WriteError, describe, kb, model, warn};

struct Support;

const ATTEMPTS: usize = 5;

/// How bad an escalation is, and who said so.
struct Severity {
    level: &'static str,
    by: String,
}

const LEVELS: [&str; 3] = ["low", "medium", "high"];

/// Support's own rule: outages, data loss and security are high; anything
/// a customer calls urgent or blocking is medium; the rest low.
fn rule_severity(summary: &str) -> &'static str {
    let s = summary.to_lowercase();
    if ["outage", "down", "data loss", "breach", "security"].iter().any(|w| s.contains(w)) {
        "high"
    } else if ["urgent", "blocking", "escalat", "cannot"].iter().any(|w| s.contains(w)) {
        "medium"
    } else {
        "low"
    }
}

/// Asks the model when there is one; falls back to the rule, saying why.
fn severity(summary: &str) -> Severity {
    if !model::is_granted("default") {
        return Severity { level: rule_severity(summary), by: "rule".into() };
    }
    let asked =
        model::ask("You triage customer escalations. Answer with exactly one word: low, medium or high.", summary);
    match asked {
        Ok(answer) => {
            let word = answer.trim().trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
            match LEVELS.iter().find(|l| **l == word) {
                Some(level) => Severity { level, by: "the model".into() },
                None => {
                    warn(&format!("the model answered {answer:?}, not low, medium or high; using the rule"));
                    Severity { level: rule_severity(summary), by: "rule".into() }
                }
            }
        }
        // A budget spent, or a server down: the rule decides.
        Err(e) => {
            warn(&format!("{}; using the rule", model::describe(&e)));
            Severity { level: rule_severity(summary), by: "rule".into() }
        }
    }
}

/// What Support means to do, independent of the state it will apply to.
enum Plan {
    Escalation { ticket: String, summary: String, severity: Severity },
    Resolved { ticket: String, satisfaction: Option<f64> },
}

impl Plan {
    /// The write and its reason, computed from the customer as just read.
    fn apply(&self, c: &Entity) -> (Write, String) {
        let open = c.integer("open_tickets").unwrap_or(0);
        match self {
            Plan::Escalation { ticket, summary, severity } => {
                let open = open + 1;
                let w = Write::update(c)
                    .set("status", Value::Text("at_risk".into()))
                    .set("open_tickets", Value::Integer(open))
                    .set("last_interaction", Value::Text(format!("{ticket}: {summary}")));
                let rated = format!("severity {} by {}", severity.level, severity.by);
                (w, format!("escalation {ticket}: {summary} ({rated}); {open} ticket(s) open, customer at risk"))
            }
            Plan::Resolved { ticket, satisfaction } => {
                let open = (open - 1).max(0);
                let mut w = Write::update(c)
                    .set("open_tickets", Value::Integer(open))
                    .set("last_interaction", Value::Text(format!("{ticket}: resolved")));
                if open == 0 {
                    w = w.set("status", Value::Text("active".into()));
                }
                if let Some(s) = satisfaction {
                    w = w.set("satisfaction_score", Value::Float(*s));
                }
                let status = if open == 0 { "customer active again" } else { "still at risk" };
                (w, format!("ticket {ticket} resolved; {open} open, {status}"))
            }
        }
    }
}

impl Handler for Support {
    fn handle(message: Message) -> Result<String, String> {
        let target = message.entity.clone().ok_or("support needs an entity, such as customer/acme")?;
        let body = message.body_json();
        let ticket = body["ticket"].as_str().unwrap_or("?").to_string();
        let plan = match message.kind.as_str() {
            "escalation" => {
                let summary = body["summary"].as_str().unwrap_or("escalation").to_string();
                // Rated once, before the retries: a conflict re-reads the
                // customer, not the model.
                Plan::Escalation { ticket: ticket.clone(), severity: severity(&summary), summary }
            }
            "resolved" => Plan::Resolved { ticket: ticket.clone(), satisfaction: body["satisfaction"].as_f64() },
            other => {
                return Err(format!("support does not handle `{other}` messages (it handles escalation, resolved)"));
            }
        };
        for attempt in 1..=ATTEMPTS {
            let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
            let (w, why) = plan.apply(&customer);
            match kb::commit(&[w], &why) {
                Ok(v) => return Ok(format!("{why} ({target} version {})", v[0])),
                Err(e @ WriteError::Conflict(_)) => warn(&format!("attempt {attempt}: {}; re-reading", describe(&e))),
                // A human override or a rule holds this change back: report
                // it (a person will pick it up), do not fight it.
                Err(e @ (WriteError::Pinned(_) | WriteError::Deferred(_) | WriteError::Denied(_))) => {
                    return Ok(format!("not recorded: {} ({why})", describe(&e)));
                }
                Err(e) => return Err(describe(&e)),
            }
        }
        Err(format!("{target} kept changing under {ATTEMPTS} attempts; ticket {ticket} not recorded"))
    }
}

concord_agent::export!(Support);

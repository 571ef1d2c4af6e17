//! The Support agent. Owns `open_tickets`, `last_interaction` and
//! `satisfaction_score`; shares `status` with Sales.
//!
//! Messages:
//! - `escalation` `{ticket, summary}`: opens a ticket and marks the customer
//!   `at_risk`.
//! - `resolved` `{ticket, satisfaction}`: closes a ticket; with none left open
//!   the customer is `active` again.
//!
//! Each change is computed from a fresh read and committed against that
//! read's version; on a conflict Support re-reads and recomputes (a ticket
//! count is never blindly re-applied to a stale value).

use concord_agent::{Entity, Handler, Message, Value, Write, WriteError, describe, kb, warn};

struct Support;

const ATTEMPTS: usize = 5;

/// What Support means to do, independent of the state it will apply to.
enum Plan {
    Escalation { ticket: String, summary: String },
    Resolved { ticket: String, satisfaction: Option<f64> },
}

impl Plan {
    /// The write and its reason, computed from the customer as just read.
    fn apply(&self, c: &Entity) -> (Write, String) {
        let open = c.integer("open_tickets").unwrap_or(0);
        match self {
            Plan::Escalation { ticket, summary } => {
                let open = open + 1;
                let w = Write::update(c)
                    .set("status", Value::Text("at_risk".into()))
                    .set("open_tickets", Value::Integer(open))
                    .set("last_interaction", Value::Text(format!("{ticket}: {summary}")));
                (w, format!("escalation {ticket}: {summary}; {open} ticket(s) open, customer at risk"))
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
            "escalation" => Plan::Escalation {
                ticket: ticket.clone(),
                summary: body["summary"].as_str().unwrap_or("escalation").to_string(),
            },
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

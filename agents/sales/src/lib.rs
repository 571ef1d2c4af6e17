//! The Sales agent. Owns `deal_stage`, `contract_value` and `renewal_date`;
//! shares `status` with Support.
//!
//! Messages:
//! - `onboard` `{name, contract_value, renewal_date}`: creates the customer.
//! - `upsell` `{offer}`: offers an upsell, but only to an active customer
//!   with no open tickets. The offer is recorded by committing
//!   `deal_stage = "upsell_offered"` against the version the decision was
//!   made on; if the customer changed in between, the commit conflicts and
//!   Sales re-reads and reconsiders instead of sending anything.

use concord_agent::{Entity, Handler, Message, Value, Write, WriteError, describe, info, kb, warn};

struct Sales;

/// How many times Sales re-reads and reconsiders after a conflict.
const ATTEMPTS: usize = 3;

impl Handler for Sales {
    fn handle(message: Message) -> Result<String, String> {
        let target = message.entity.clone().ok_or("sales needs an entity, such as customer/acme")?;
        let body = message.body_json();
        match message.kind.as_str() {
            "onboard" => {
                let name = body["name"].as_str().unwrap_or(&target.id).to_string();
                let mut w = Write::create(target.clone())
                    .set("name", Value::Text(name.clone()))
                    .set("status", Value::Text("active".into()))
                    .set("deal_stage", Value::Text("closed_won".into()));
                if let Some(v) = body["contract_value"].as_i64() {
                    w = w.set("contract_value", Value::Integer(v));
                }
                if let Some(d) = body["renewal_date"].as_str() {
                    w = w.set("renewal_date", Value::Text(d.into()));
                }
                match kb::commit(&[w], "contract signed: onboarding") {
                    Ok(v) => Ok(format!("onboarded {name} as {target} (version {})", v[0])),
                    Err(WriteError::Conflict(c)) => Ok(format!(
                        "{target} already exists (version {:?}, by {}); nothing to do",
                        c.current_version, c.changed_by
                    )),
                    Err(e) => Err(describe(&e)),
                }
            }
            "upsell" => {
                let offer = body["offer"].as_str().unwrap_or("the next tier").to_string();
                for attempt in 1..=ATTEMPTS {
                    let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
                    if let Some(reason) = hold_reason(&customer) {
                        return Ok(format!(
                            "held the upsell of {offer} to {target} (version {}): {reason}",
                            customer.version
                        ));
                    }
                    let w = Write::update(&customer).set("deal_stage", Value::Text("upsell_offered".into()));
                    let why = format!(
                        "upsell: offering {offer}; customer active with no open tickets at version {}",
                        customer.version
                    );
                    match kb::commit(&[w], &why) {
                        Ok(v) => {
                            info(&format!("upsell email for {offer} queued to {target}"));
                            return Ok(format!(
                                "sent the upsell of {offer} to {target} (decided on version {}, now {})",
                                customer.version, v[0]
                            ));
                        }
                        Err(WriteError::Conflict(c)) => {
                            // Someone changed the customer after we read it: our
                            // decision may rest on stale facts. Re-read and decide again.
                            warn(&format!(
                                "attempt {attempt}: {}; re-reading before deciding",
                                describe(&WriteError::Conflict(c))
                            ));
                        }
                        Err(e) => return Err(describe(&e)),
                    }
                }
                Err(format!("{target} kept changing under {ATTEMPTS} attempts; upsell not sent"))
            }
            other => Err(format!("sales does not handle `{other}` messages (it handles onboard, upsell)")),
        }
    }
}

/// Why an upsell must not go out now, if it must not.
fn hold_reason(customer: &Entity) -> Option<String> {
    let status = customer.text("status").unwrap_or("unknown");
    if status != "active" {
        return Some(format!("status is {status} (last change by {})", customer.updated_by));
    }
    match customer.integer("open_tickets") {
        Some(n) if n > 0 => Some(format!("{n} support ticket(s) open")),
        _ => None,
    }
}

concord_agent::export!(Sales);

//! The Sales agent. Owns `deal_stage`, `contract_value` and `renewal_date`;
//! shares `status` with Support.
//!
//! Messages:
//! - `onboard` `{name, contract_value, renewal_date}`: creates the customer.
//! - `upsell` `{offer}`: emails an upsell offer, but only to an active
//!   customer with no open tickets. The email is a guarded action
//!   (`email.upsell`) naming the version the decision was made on; if the
//!   customer changed in between, the host refuses it with a conflict, and
//!   Sales re-reads and reconsiders instead of sending anything.
//! - `event` (subscription to `status`): puts the deal on hold while the
//!   customer is at risk, and takes it off hold when it is active again.
//! - `change_request` (a handoff from another agent): applies a proposed
//!   change to Sales's fields if the customer is healthy, else declines.

use concord_agent::{
    Entity, Handler, Message, Value, Write, WriteError, coord, describe, info, kb, value_of_json, warn,
};

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
                        "{target} already exists (version {}, last changed by {}); nothing to do",
                        c.current_version.map_or_else(|| "?".to_string(), |v| v.to_string()),
                        c.changed_by
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
                    let payload = serde_json::json!({
                        "to": customer.text("name").unwrap_or(&target.id),
                        "template": "upsell",
                        "offer": offer,
                    });
                    // The key makes a retried invocation send this email at most once.
                    let key = format!("upsell:{target}:{offer}:v{}", customer.version);
                    match coord::act("email.upsell", &payload.to_string(), &target, customer.version, Some(&key)) {
                        Ok(action) => {
                            // Record the deal stage too; if someone changed the
                            // customer meanwhile, the email still rests on a
                            // version that held when it was recorded.
                            let w = Write::update(&customer).set("deal_stage", Value::Text("upsell_offered".into()));
                            let note = match kb::commit(&[w], &format!("upsell of {offer} sent (action {action})")) {
                                Ok(_) => String::new(),
                                Err(e) => format!("; deal_stage not updated ({})", describe(&e)),
                            };
                            info(&format!("upsell email for {offer} queued to {target} (action {action})"));
                            return Ok(format!(
                                "sent the upsell of {offer} to {target} (action {action}, decided on version {}){note}",
                                customer.version
                            ));
                        }
                        Err(e @ WriteError::Conflict(_)) => {
                            // Someone changed the customer after we read it: our
                            // decision may rest on stale facts. Re-read and decide again.
                            warn(&format!("attempt {attempt}: {}; re-reading before deciding", describe(&e)));
                        }
                        Err(e @ (WriteError::Deferred(_) | WriteError::Denied(_))) => {
                            return Ok(format!("held the upsell of {offer} to {target}: {}", describe(&e)));
                        }
                        Err(e) => return Err(describe(&e)),
                    }
                }
                Err(format!("{target} kept changing under {ATTEMPTS} attempts; upsell not sent"))
            }
            "event" => {
                let changes = body["event"]["changes"].as_array().cloned().unwrap_or_default();
                let status = changes.iter().find(|c| c["name"] == "status").map(|c| c["after"].clone());
                let wanted = match status.as_ref().and_then(|s| s.as_str()) {
                    Some("at_risk") => "on_hold",
                    Some("active") => "closed_won",
                    _ => return Ok("no status change; nothing to do".into()),
                };
                for _ in 0..ATTEMPTS {
                    let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
                    let stage = customer.text("deal_stage").unwrap_or("");
                    if stage == wanted || (wanted == "closed_won" && stage != "on_hold") {
                        return Ok(format!("deal stage stays {stage}"));
                    }
                    let w = Write::update(&customer).set("deal_stage", Value::Text(wanted.into()));
                    let why = format!("customer is now {}", status.as_ref().and_then(|s| s.as_str()).unwrap_or("?"));
                    match kb::commit(&[w], &why) {
                        Ok(_) => return Ok(format!("deal stage {stage} -> {wanted}: {why}")),
                        Err(WriteError::Conflict(_)) => continue,
                        Err(e) => return Ok(format!("deal stage left at {stage}: {}", describe(&e))),
                    }
                }
                Err(format!("{target} kept changing; deal stage not updated"))
            }
            "change_request" => {
                let request = body["request"].as_u64().ok_or("change_request without a request id")?;
                let from = body["from"].as_str().unwrap_or("?").to_string();
                let proposed = body["proposed"].as_object().cloned().unwrap_or_default();
                for _ in 0..ATTEMPTS {
                    let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
                    if let Some(reason) = hold_reason(&customer) {
                        let why = format!("declined: {reason}");
                        coord::resolve_change(request, false, &why)?;
                        return Ok(format!("declined {from}'s change request {request}: {reason}"));
                    }
                    let mut w = Write::update(&customer);
                    for (name, value) in &proposed {
                        w = w.set(name, value_of_json(value));
                    }
                    let why = format!("applied change request {request} from {from}");
                    match kb::commit(&[w], &why) {
                        Ok(v) => {
                            coord::resolve_change(request, true, &format!("applied at version {}", v[0]))?;
                            return Ok(format!("{why} (version {})", v[0]));
                        }
                        Err(WriteError::Conflict(_)) => continue,
                        Err(e) => {
                            let why = format!("declined: {}", describe(&e));
                            coord::resolve_change(request, false, &why)?;
                            return Ok(format!("{from}'s change request {request} {why}"));
                        }
                    }
                }
                Err(format!("{target} kept changing; change request {request} left open"))
            }
            other => Err(format!(
                "sales does not handle `{other}` messages (it handles onboard, upsell, event, change_request)"
            )),
        }
    }
}

/// Why an upsell (or an expansion) must not go ahead now, if it must not.
fn hold_reason(customer: &Entity) -> Option<String> {
    let status = customer.text("status").unwrap_or("unknown");
    if status != "active" {
        let by = concord_agent::who_set(&customer.reference(), "status").unwrap_or_else(|| "?".into());
        return Some(format!("status is {status} (set by {by})"));
    }
    match customer.integer("open_tickets") {
        Some(n) if n > 0 => Some(format!("{n} support ticket(s) open")),
        _ => None,
    }
}

concord_agent::export!(Sales);

//! The Product agent. Owns `feature_requests`, `usage_metrics` and
//! `beta_programs`.
//!
//! Messages:
//! - `usage_report` `{active_users, feature_requests}`: records usage and
//!   requests.
//! - `expansion_signal` `{reason}`: Product thinks the customer is ready to
//!   expand and would like `deal_stage` changed. That field is Sales's: the
//!   host refuses the write (`forbidden`) and Product reports it, leaving the
//!   decision to Sales (the explicit handoff arrives with the coordination
//!   layer).

use concord_agent::{Handler, Message, Value, Write, WriteError, describe, kb};

struct Product;

impl Handler for Product {
    fn handle(message: Message) -> Result<String, String> {
        let target = message.entity.clone().ok_or("product needs an entity, such as customer/acme")?;
        let body = message.body_json();
        for attempt in 1..=3 {
            let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
            let (w, why) = match message.kind.as_str() {
                "usage_report" => {
                    let usage = serde_json::json!({ "active_users": body["active_users"] });
                    let requests = body.get("feature_requests").cloned().unwrap_or(serde_json::json!([]));
                    let w = Write::update(&customer)
                        .set("usage_metrics", Value::Json(usage.to_string()))
                        .set("feature_requests", Value::Json(requests.to_string()));
                    (w, format!("usage report: {} active users", body["active_users"]))
                }
                "expansion_signal" => {
                    let reason = body["reason"].as_str().unwrap_or("usage is growing").to_string();
                    let w = Write::update(&customer).set("deal_stage", Value::Text("expansion_candidate".into()));
                    (w, format!("expansion signal: {reason}"))
                }
                other => {
                    return Err(format!(
                        "product does not handle `{other}` messages (it handles usage_report, expansion_signal)"
                    ));
                }
            };
            match kb::commit(&[w], &why) {
                Ok(v) => return Ok(format!("{why} ({target} version {})", v[0])),
                Err(WriteError::Forbidden(f)) => {
                    return Ok(format!(
                        "not changed: {} belongs to {}; left for them to decide ({why})",
                        f.field,
                        f.writers.join(", ")
                    ));
                }
                Err(e @ WriteError::Conflict(_)) if attempt < 3 => concord_agent::warn(&describe(&e)),
                Err(e) => return Err(describe(&e)),
            }
        }
        Err(format!("{target} kept changing; nothing recorded"))
    }
}

concord_agent::export!(Product);

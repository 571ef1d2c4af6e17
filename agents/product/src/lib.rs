//! The Product agent. Owns `feature_requests`, `usage_metrics` and
//! `beta_programs`.
//!
//! Messages:
//! - `usage_report` `{active_users, feature_requests}`: records usage and
//!   requests.
//! - `expansion_signal` `{reason}`: Product thinks the customer is ready to
//!   expand, which would change `deal_stage`. That field is Sales's, so
//!   Product does not write it: it hands the change to Sales with
//!   `coord.request-change`, and Sales applies or declines it.

use concord_agent::{Field, Handler, Message, Value, Write, WriteError, coord, describe, kb};

struct Product;

impl Handler for Product {
    fn handle(message: Message) -> Result<String, String> {
        let target = message.entity.clone().ok_or("product needs an entity, such as customer/acme")?;
        let body = message.body_json();
        match message.kind.as_str() {
            "usage_report" => {
                for attempt in 1..=3 {
                    let customer = kb::get(&target)?.ok_or_else(|| format!("{target} does not exist"))?;
                    let usage = serde_json::json!({ "active_users": body["active_users"] });
                    let requests = body.get("feature_requests").cloned().unwrap_or(serde_json::json!([]));
                    let w = Write::update(&customer)
                        .set("usage_metrics", Value::Json(usage.to_string()))
                        .set("feature_requests", Value::Json(requests.to_string()));
                    let why = format!("usage report: {} active users", body["active_users"]);
                    match kb::commit(&[w], &why) {
                        Ok(v) => return Ok(format!("{why} ({target} version {})", v[0])),
                        Err(e @ (WriteError::Deferred(_) | WriteError::Denied(_))) => {
                            return Ok(format!("usage not recorded now: {}", describe(&e)));
                        }
                        Err(e @ WriteError::Conflict(_)) if attempt < 3 => concord_agent::warn(&describe(&e)),
                        Err(e) => return Err(describe(&e)),
                    }
                }
                Err(format!("{target} kept changing; nothing recorded"))
            }
            "expansion_signal" => {
                let reason = body["reason"].as_str().unwrap_or("usage is growing");
                let proposed = [Field { name: "deal_stage".into(), value: Value::Text("expansion_candidate".into()) }];
                match coord::request_change("sales", &target, &proposed, &format!("expansion signal: {reason}")) {
                    Ok(id) => Ok(format!("asked sales to move {target} to expansion_candidate (change request {id})")),
                    Err(e) => Err(describe(&e)),
                }
            }
            other => {
                Err(format!("product does not handle `{other}` messages (it handles usage_report, expansion_signal)"))
            }
        }
    }
}

concord_agent::export!(Product);

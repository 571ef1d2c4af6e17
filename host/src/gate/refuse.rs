//! How a refusal is written into its audit entry: the decision, the rule
//! that decided, and the other party. Every call's refusals go through
//! these, so that no call can refuse without naming its rule.

use crate::audit::{AuditDraft, Decision};
use crate::kb::{Conflict, Denial};
use crate::policy::Refusal;

/// Audits a conflict: who changed the entity, and which fields.
pub(super) fn mark_conflict(d: &mut AuditDraft, c: &Conflict) {
    d.decision = Decision::Conflict;
    d.rule = Some("version".into());
    d.peer = Some(c.changed_by.clone()).filter(|p| !p.is_empty());
    d.fields.clone_from(&c.changed_fields);
    d.outcome = c.to_string();
}

/// Audits a guard's denial: the decision, the rule, the other party.
pub(super) fn mark_denial(d: &mut AuditDraft, denial: &Denial) {
    let (decision, rule, peer) = match denial {
        Denial::Rule { rule, defer, .. } => (
            if *defer { Decision::Deferred } else { Decision::Denied },
            format!("rule: {rule}"),
            Some(format!("rule:{rule}")),
        ),
        Denial::Pinned { field, by, .. } => {
            d.fields = vec![field.clone()];
            (Decision::Pinned, format!("pin: {field} by {by}"), Some(format!("human:{by}")))
        }
        Denial::Leased { holder, .. } => (Decision::Leased, "lease".into(), Some(holder.clone())),
        Denial::StaleFence { .. } => (Decision::Leased, "fencing token".into(), None),
    };
    (d.decision, d.rule, d.peer) = (decision, Some(rule), peer);
    d.outcome = denial.to_string();
}

/// Records a policy refusal in its audit draft: the decision, the rule,
/// and for a forbidden field who may write it.
pub(super) fn mark_refusal(d: &mut AuditDraft, refusal: &Refusal) {
    d.decision = match refusal {
        Refusal::Forbidden(f) => {
            d.peer = Some(f.writers.join(","));
            d.fields = vec![f.field.clone()];
            Decision::Forbidden
        }
        Refusal::Invalid(_) => Decision::Invalid,
    };
    d.rule = Some(refusal.rule());
    d.outcome = refusal.to_string();
}

//! Audit queries: a filter becomes one `WHERE` over the indexed columns,
//! so `LIMIT` counts exactly the matches, in the filter's direction.

use super::reads::Param;
use super::{PgStore, int};
use crate::audit::{AuditEntry, AuditFilter};
use crate::kb::store::StoreError;

/// The entries matching `filter`, oldest first (see [`AuditFilter`]).
pub(super) fn query(store: &PgStore, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let seqs = filter.seqs();
    let limit = filter.limit.map_or(i64::MAX, |l| int(l as u64));
    if seqs.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let mut params: Vec<Param> = vec![Box::new(int(seqs.start)), Box::new(int(seqs.end))];
    let mut sql = String::from("SELECT seq, body FROM concord_audit WHERE seq >= $1 AND seq < $2");
    // `condition` has `$` where the parameter's number goes.
    let mut and = |condition: &str, value: Param| {
        params.push(value);
        sql.push_str(" AND ");
        sql.push_str(&condition.replace('$', &format!("${}", params.len())));
    };
    if let Some(agent) = &filter.agent {
        and("agent = $", Box::new(agent.clone()));
    }
    if let Some(entity) = &filter.entity {
        // `@>` (contains) is what the GIN index answers.
        and("entities @> $", Box::new(vec![entity.clone()]));
    }
    if let Some(call) = &filter.call {
        and("call = $", Box::new(call.clone()));
    }
    if let Some(decision) = filter.decision {
        and("decision = $", Box::new(decision.as_str()));
    }
    if let Some(invocation) = filter.invocation {
        and("invocation = $", Box::new(int(invocation)));
    }
    if let Some(trace) = &filter.trace {
        and("invocation = ANY($)", Box::new(trace.iter().map(|i| int(*i)).collect::<Vec<i64>>()));
    }
    if let Some(since) = filter.since_ms {
        and("at_ms >= $", Box::new(int(since)));
    }
    if let Some(until) = filter.until_ms {
        and("at_ms <= $", Box::new(int(until)));
    }
    let forward = filter.forward();
    params.push(Box::new(limit));
    sql.push_str(&format!(" ORDER BY seq {} LIMIT ${}", if forward { "ASC" } else { "DESC" }, params.len()));
    let mut out: Vec<AuditEntry> =
        store.bodies_of(sql, params, |r| format!("audit entry {}", r.get::<_, i64>("seq")))?;
    // The SQL is the filter; this is the filter's own word on it.
    out.retain(|e| filter.matches(e));
    if !forward {
        out.reverse();
    }
    Ok(out)
}

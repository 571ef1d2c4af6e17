//! Which index answers an audit query. A backend keeps an index of the
//! audit by agent, by entity, by agent and entity, and by invocation; the
//! plan names the narrowest that holds every match, and the backend reads
//! its candidates (every one still checked with [`AuditFilter::matches`]),
//! in the filter's direction, until `limit` matches.

use crate::audit::AuditFilter;

/// Where an audit query's candidates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditPlan<'f> {
    /// No index narrows it: the log itself, in the reading direction.
    Log,
    /// The entries of these invocations (one, or a trace's chain), merged
    /// in seq order: an invocation's index is the narrowest there is.
    Invocations(Vec<u64>),
    /// The agent-and-entity index: exactly the entries of both.
    AgentEntity { agent: &'f str, entity: &'f str },
    /// The agent's entries.
    Agent(&'f str),
    /// The entity's entries.
    Entity(&'f str),
}

/// The plan for `filter`.
pub fn plan(filter: &AuditFilter) -> AuditPlan<'_> {
    if let Some(invocation) = filter.invocation {
        return AuditPlan::Invocations(vec![invocation]);
    }
    if let Some(trace) = &filter.trace {
        return AuditPlan::Invocations(trace.iter().copied().collect());
    }
    match (filter.agent.as_deref(), filter.entity.as_deref()) {
        (Some(agent), Some(entity)) => AuditPlan::AgentEntity { agent, entity },
        (Some(agent), None) => AuditPlan::Agent(agent),
        (None, Some(entity)) => AuditPlan::Entity(entity),
        (None, None) => AuditPlan::Log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_narrowest_index_is_chosen() {
        let f = |agent: Option<&str>, entity: Option<&str>, invocation: Option<u64>| AuditFilter {
            agent: agent.map(String::from),
            entity: entity.map(String::from),
            invocation,
            ..Default::default()
        };
        assert_eq!(plan(&f(None, None, None)), AuditPlan::Log);
        assert_eq!(plan(&f(Some("sales"), None, None)), AuditPlan::Agent("sales"));
        assert_eq!(plan(&f(None, Some("customer/acme"), None)), AuditPlan::Entity("customer/acme"));
        assert_eq!(
            plan(&f(Some("sales"), Some("customer/acme"), None)),
            AuditPlan::AgentEntity { agent: "sales", entity: "customer/acme" }
        );
        assert_eq!(plan(&f(Some("sales"), Some("customer/acme"), Some(7))), AuditPlan::Invocations(vec![7]));
        let trace = AuditFilter { trace: Some([3, 1, 2].into()), agent: Some("sales".into()), ..Default::default() };
        assert_eq!(plan(&trace), AuditPlan::Invocations(vec![1, 2, 3]));
    }
}

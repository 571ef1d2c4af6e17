//! Restarting the host keeps the knowledge base and the audit.

use crate::common::{Env, onboard, text};
use concord::audit::{AuditFilter, Verification};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_kb_and_the_audit_and_continues_both() {
    let env = Env::new(&[("sales", "sales"), ("support", "support")]);
    onboard(&env, "acme").await;
    env.send("support", "escalation", "customer/acme", json!({"ticket": "T-1", "summary": "x"})).await;
    let entity = env.get("customer/acme").expect("acme");
    let audit = env.all_audit();

    let env = env.restart();
    assert_eq!(env.get("customer/acme"), Some(entity.clone()), "the projection survives");
    let after = env.all_audit();
    assert_eq!(after[..audit.len()], audit[..], "the audit survives, entry for entry");
    let lifecycle: Vec<&str> = after[audit.len()..].iter().map(|e| e.call.as_str()).collect();
    assert_eq!(lifecycle, [concord::audit::calls::HOST_STOP, concord::audit::calls::HOST_START]);
    let history = env.host.store().history(&"customer/acme".parse().expect("ref"), 0, 100).expect("history");
    assert_eq!(history.len(), 2);

    // Both logs continue where they stopped: no gaps, no reuse.
    env.send("support", "resolved", "customer/acme", json!({"ticket": "T-1"})).await;
    let after = env.get("customer/acme").expect("acme");
    assert_eq!(after.version, entity.version + 1);
    assert_eq!(text(&after, "status").as_deref(), Some("active"));
    let history = env.host.store().history(&"customer/acme".parse().expect("ref"), 0, 100).expect("history");
    assert_eq!(history.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let new = env.audit(AuditFilter::default());
    assert_eq!(new[..audit.len()], audit[..]);
    assert_eq!(new[audit.len()].seq, audit.len() as u64 + 1);
    assert!(!new.iter().any(|e| e.outcome.contains("without a stop entry")), "both stops were clean");
    assert!(matches!(env.host.store().verify_audit().expect("verify"), Verification::Intact { .. }));
}

/// A config change between runs is an audit entry, and so is a restart
/// after the previous run ended without a stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_change_between_runs_is_audited() {
    let env = Env::new(&[("sales", "sales")]);
    let path = env.dir.path().join("concord.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace("timeout_ms = 5_000", "timeout_ms = 6_000")).expect("edit");
    let env = env.restart();
    let changed =
        env.audit(AuditFilter { call: Some(concord::audit::calls::CONFIG_CHANGED.into()), ..Default::default() });
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert_eq!(changed[0].agent, concord::audit::HOST);
    assert_eq!(changed[0].digest, env.host.config().digest);
    let env = env.restart();
    let changed =
        env.audit(AuditFilter { call: Some(concord::audit::calls::CONFIG_CHANGED.into()), ..Default::default() });
    assert_eq!(changed.len(), 1, "an unchanged config is not reported again");
}

/// An owner or writer in the config that matches no loaded agent is a
/// warning at start, naming the file, the line and the agent.
#[test]
fn an_owner_without_an_agent_is_a_warning() {
    let env = Env::new(&[("sales", "sales"), ("support", "support")]);
    let warnings = env.host.warnings();
    let product: Vec<&String> = warnings.iter().filter(|w| w.contains("`product`")).collect();
    assert!(!product.is_empty(), "{warnings:#?}");
    assert!(product.iter().all(|w| w.contains("concord.toml:") && w.contains("not loaded")), "{warnings:#?}");
    assert!(!warnings.iter().any(|w| w.contains("`sales`")), "loaded agents are not warned about: {warnings:#?}");
}

/// Compiled components are cached on disk: a restart loads unchanged
/// agents without compiling them again.
#[test]
fn a_restart_does_not_recompile_unchanged_agents() {
    // A cache of its own (beside its store), not the tests' shared one.
    let shared = format!("cache_dir = {:?}\n", crate::common::cache_dir().display().to_string());
    let config = crate::common::config_text(crate::common::FAST_LIMITS).replace(&shared, "");
    let env = Env::with_config(&[("sales", "sales"), ("support", "probe")], &config);
    let (hits, misses) = env.host.runtime().cache_stats();
    assert_eq!((hits, misses), (0, 2), "first start compiles both");
    let env = env.restart();
    let (hits, misses) = env.host.runtime().cache_stats();
    assert_eq!((hits, misses), (2, 0), "the restart compiles nothing");
}

//! A config reload, compared with the config in force: what cannot change
//! while the host runs ([`needs_restart`]), and what did change, in words,
//! for the audit ([`changes`]).
//!
//! Live: the schema (kinds, fields, types, owners and writers, lease
//! grants, action kinds), the rules, the subscriptions, the schedules, the
//! agents' grants and secrets (each secret's value read again from the
//! host's environment, which nothing outside the process can change: a
//! new key needs a restart; a missing one refuses the reload) and the
//! limits (`memory_mib` only up to the size the instance pool was made
//! with, `[agents.NAME]` ones included). Not live, because something open
//! was made from them: the
//! store (`[kb]`), the agents folder (`agents.dir`, `agents.watch`), the
//! action sink, and everything under `[server]` (the listener, the tokens,
//! the queue).
//!
//! # Values in fields the new schema removes or retypes
//! Nothing stored is rewritten or dropped: events are the truth, and a
//! reload is not a migration. A removed field's values stay in the
//! projection and the history, and reads (`kb.get`, `concord get`) return
//! them as stored; no agent may set or unset it any more (it is an unknown
//! field), until a config declares it again. A retyped field keeps its
//! stored values in their old type until they are next written; every new
//! write must have the new type. A rule that reads such a field sees the
//! stored value.

use super::config::{Config, SinkConfig};
use std::collections::BTreeSet;

/// What differs between `old` and `new` that only a restart can apply,
/// as `key: old -> new`. `memory_ceiling`: the most linear memory the
/// running engine's pool gives an instance.
pub fn needs_restart(old: &Config, new: &Config, memory_ceiling: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{key} changed ({a} -> {b})"));
        }
    };
    differs("kb.path", old.kb_path.display().to_string(), new.kb_path.display().to_string());
    differs("kb.backend", format!("{:?}", old.kb_postgres), format!("{:?}", new.kb_postgres));
    differs("kb.shared_reads", format!("{:?}", old.kb_sharing), format!("{:?}", new.kb_sharing));
    differs("agents.dir", old.agents_dir.display().to_string(), new.agents_dir.display().to_string());
    differs("agents.cache_dir", old.agents_cache.display().to_string(), new.agents_cache.display().to_string());
    differs("agents.watch", old.agents_watch.to_string(), new.agents_watch.to_string());
    differs("actions.sink", sink(&old.sink), sink(&new.sink));
    let (a, b) = (&old.server, &new.server);
    differs("server.listen", a.listen.to_string(), b.listen.to_string());
    differs("server.tokens", format!("{:?}", a.tokens), format!("{:?}", b.tokens));
    differs("server.drain_ms", a.drain.as_millis().to_string(), b.drain.as_millis().to_string());
    differs("server.queue", a.queue.to_string(), b.queue.to_string());
    differs("server.max_body_bytes", a.max_body_bytes.to_string(), b.max_body_bytes.to_string());
    differs(
        "server.header_timeout_ms",
        a.header_timeout.as_millis().to_string(),
        b.header_timeout.as_millis().to_string(),
    );
    differs("server.body_timeout_ms", a.body_timeout.as_millis().to_string(), b.body_timeout.as_millis().to_string());
    differs(
        "server.idempotency_retention",
        a.idempotency_retention.as_secs().to_string(),
        b.idempotency_retention.as_secs().to_string(),
    );
    differs("server.breakpoints", a.breakpoints.to_string(), b.breakpoints.to_string());
    if new.limits.memory_bytes > memory_ceiling {
        out.push(format!(
            "limits.memory_mib rose to {} MiB, past the {} MiB the running host's instance pool was made for",
            new.limits.memory_bytes >> 20,
            memory_ceiling >> 20
        ));
    }
    for (agent, g) in &new.grants {
        if let Some(m) = g.memory_bytes.filter(|m| *m > memory_ceiling) {
            out.push(format!(
                "agents.{agent}.memory_mib is {} MiB, past the {} MiB the running host's instance pool was made for",
                m >> 20,
                memory_ceiling >> 20
            ));
        }
    }
    out
}

fn sink(s: &SinkConfig) -> String {
    match s {
        SinkConfig::File(p) => p.display().to_string(),
        SinkConfig::Stdout => "stdout".into(),
        SinkConfig::Http(h) => format!("{h:?}"),
    }
}

/// What `new` changes against `old`, one line each, in a stable order:
/// kinds and fields added, removed and retyped; owners and writers
/// changed; lease grants and action kinds; rules, subscriptions and
/// schedules added, removed and changed; limits.
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (os, ns) = (&old.schema, &new.schema);
    for (kind, def) in &ns.kinds {
        let Some(was) = os.kinds.get(kind) else {
            out.push(format!("kind {kind} added ({} fields)", def.fields.len()));
            continue;
        };
        for (field, f) in &def.fields {
            match was.fields.get(field) {
                None => out.push(format!("field {kind}.{field} added ({}, {})", f.ty.name(), f.writers.describe())),
                Some(w) => {
                    if w.ty != f.ty {
                        out.push(format!("field {kind}.{field} retyped ({} -> {})", w.ty.name(), f.ty.name()));
                    }
                    if w.writers != f.writers {
                        out.push(format!(
                            "field {kind}.{field} writers changed ({} -> {})",
                            w.writers.describe(),
                            f.writers.describe()
                        ));
                    }
                }
            }
        }
        for field in was.fields.keys().filter(|f| !def.fields.contains_key(*f)) {
            out.push(format!("field {kind}.{field} removed (its stored values stay, read-only)"));
        }
        if was.leases != def.leases {
            out.push(format!("kind {kind} lease grants changed ({:?} -> {:?})", was.leases, def.leases));
        }
    }
    for kind in os.kinds.keys().filter(|k| !ns.kinds.contains_key(*k)) {
        out.push(format!("kind {kind} removed (its entities stay, read-only)"));
    }
    if os.actions != ns.actions {
        out.push("action kinds changed ([actions.kinds])".into());
    }

    let rule_sig = |r: &super::rules::Rule| {
        format!("{}|{:?}|{:?}|{:?}|{}|{}|{}", r.when, r.agents, r.fields, r.actions, r.defer, r.reason, r.enabled)
    };
    let old_rules: std::collections::BTreeMap<&str, String> =
        old.rules.iter().map(|r| (r.name.as_str(), rule_sig(r))).collect();
    let new_rules: std::collections::BTreeMap<&str, String> =
        new.rules.iter().map(|r| (r.name.as_str(), rule_sig(r))).collect();
    named_changes(&mut out, "rule", &old_rules, &new_rules);

    let subs = |c: &Config| -> BTreeSet<String> {
        c.subscriptions.iter().map(|s| format!("{} on {} {:?}", s.agent, s.kind, s.fields)).collect()
    };
    let (a, b) = (subs(old), subs(new));
    for s in b.difference(&a) {
        out.push(format!("subscription added: {s}"));
    }
    for s in a.difference(&b) {
        out.push(format!("subscription removed: {s}"));
    }

    // Grants and secrets: names and origins only (a secret's value is not
    // in the config, and is read again at every reload).
    let grant_sig = |g: &super::grants::AgentGrant| {
        let http: Vec<String> = g.http.origins.iter().map(ToString::to_string).collect();
        format!(
            "http {} secrets {} models {} tokens {}/{} limits {:?}/{:?}/{:?}",
            http.join(", "),
            g.secrets.join(", "),
            g.models.join(", "),
            g.tokens_per_invocation,
            g.tokens_per_day,
            g.memory_bytes,
            g.fuel,
            g.timeout
        )
    };
    let old_grants = old.grants.iter().map(|(a, g)| (a.as_str(), grant_sig(g))).collect();
    let new_grants = new.grants.iter().map(|(a, g)| (a.as_str(), grant_sig(g))).collect();
    named_changes(&mut out, "grant of agent", &old_grants, &new_grants);
    let secret_sig = |s: &super::secrets::SecretDef| format!("{:?}", s);
    let old_secrets = old.secrets.iter().map(|(n, s)| (n.as_str(), secret_sig(s))).collect();
    let new_secrets = new.secrets.iter().map(|(n, s)| (n.as_str(), secret_sig(s))).collect();
    named_changes(&mut out, "secret", &old_secrets, &new_secrets);
    let model_sig = |m: &super::grants::ModelDef| format!("{m:?}");
    let old_models = old.models.iter().map(|(n, m)| (n.as_str(), model_sig(m))).collect();
    let new_models = new.models.iter().map(|(n, m)| (n.as_str(), model_sig(m))).collect();
    named_changes(&mut out, "model", &old_models, &new_models);

    let old_sched = old.schedules.iter().map(|s| (s.name.as_str(), s.signature())).collect();
    let new_sched = new.schedules.iter().map(|s| (s.name.as_str(), s.signature())).collect();
    named_changes(&mut out, "schedule", &old_sched, &new_sched);

    let (a, b) = (&old.limits, &new.limits);
    let limits = [
        ("memory_mib", (a.memory_bytes >> 20) as u64, (b.memory_bytes >> 20) as u64),
        ("fuel", a.fuel, b.fuel),
        ("timeout_ms", a.timeout.as_millis() as u64, b.timeout.as_millis() as u64),
        ("audit_arg_bytes", a.audit_arg_bytes as u64, b.audit_arg_bytes as u64),
        ("output_bytes", a.output_bytes as u64, b.output_bytes as u64),
        ("max_cascade_depth", a.max_cascade_depth.into(), b.max_cascade_depth.into()),
        ("max_host_calls", a.max_host_calls.into(), b.max_host_calls.into()),
        ("max_call_bytes", a.max_call_bytes as u64, b.max_call_bytes as u64),
        ("lease_max_ms", a.lease_max_ms, b.lease_max_ms),
        ("change_request_ttl_ms", a.change_request_ttl_ms, b.change_request_ttl_ms),
        ("actions.per_minute", a.actions_per_minute.into(), b.actions_per_minute.into()),
        ("actions.per_hour", a.actions_per_hour.into(), b.actions_per_hour.into()),
        ("actions.max_pending", a.max_pending_actions, b.max_pending_actions),
        ("max_http_requests", a.max_http_requests.into(), b.max_http_requests.into()),
        ("max_http_response_bytes", a.max_http_response_bytes as u64, b.max_http_response_bytes as u64),
        ("http_timeout_ms", a.http_timeout.as_millis() as u64, b.http_timeout.as_millis() as u64),
    ];
    for (key, was, now) in limits {
        if was != now {
            let key = if key.contains('.') { key.to_string() } else { format!("limits.{key}") };
            out.push(format!("{key} {was} -> {now}"));
        }
    }
    if old.agents_settle != new.agents_settle {
        out.push(format!("agents.settle_ms {} -> {}", old.agents_settle.as_millis(), new.agents_settle.as_millis()));
    }
    out
}

/// Things with a name: added, removed, or changed (their signature).
fn named_changes(
    out: &mut Vec<String>,
    what: &str,
    old: &std::collections::BTreeMap<&str, String>,
    new: &std::collections::BTreeMap<&str, String>,
) {
    for (name, sig) in new {
        match old.get(name) {
            None => out.push(format!("{what} {name} added")),
            Some(was) if was != sig => out.push(format!("{what} {name} changed")),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(format!("{what} {name} removed"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("c.toml"), Path::new("/base")).expect("valid")
    }

    const BASE: &str = "[kinds.customer.fields]\nstatus = { type = \"text\", owner = \"sales\" }\nnote = { type = \"text\", owner = \"support\" }\n";

    #[test]
    fn the_summary_names_fields_owners_rules_and_limits() {
        let old = parse(BASE);
        let new = parse(
            "[limits]\nfuel = 1000\n[kinds.customer.fields]\nstatus = { type = \"text\", owner = \"support\" }\n\
             score = { type = \"float\", owner = \"product\" }\n\
             [[rules]]\nname = \"calm\"\nwhen = \"true\"\neffect = \"defer\"\nreason = \"wait\"\n",
        );
        let c = changes(&old, &new);
        for want in [
            "field customer.score added (float, owned by product)",
            "field customer.status writers changed (owned by sales -> owned by support)",
            "field customer.note removed (its stored values stay, read-only)",
            "rule calm added",
            "limits.fuel 5000000000 -> 1000",
        ] {
            assert!(c.iter().any(|l| l == want), "missing {want:?} in {c:#?}");
        }
        assert!(changes(&old, &parse(BASE)).is_empty(), "the same config changes nothing");
    }

    #[test]
    fn the_store_the_listener_and_a_larger_pool_need_a_restart() {
        let old = parse(BASE);
        let new = parse(&format!("[kb]\npath = \"other.redb\"\n[server]\nlisten = \"127.0.0.1:9\"\n{BASE}"));
        let r = needs_restart(&old, &new, 64 << 20);
        assert!(r.iter().any(|l| l.starts_with("kb.path changed")), "{r:?}");
        assert!(r.iter().any(|l| l.starts_with("server.listen changed")), "{r:?}");
        let bigger = parse(&format!("[limits]\nmemory_mib = 128\n{BASE}"));
        assert!(needs_restart(&old, &bigger, 64 << 20).iter().any(|l| l.contains("memory_mib")));
        let smaller = parse(&format!("[limits]\nmemory_mib = 32\n{BASE}"));
        assert!(needs_restart(&old, &smaller, 64 << 20).is_empty(), "lowering memory applies live");
    }
}

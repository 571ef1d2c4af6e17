//! `concord.toml`: parsing and validation.
//!
//! A config is parsed and checked whole before anything uses it, so a bad
//! config is refused at start (with the file, the line and what to do) and
//! never half-applied.

use super::rules::{Rule, Rules};
use super::schema::{FieldDef, FieldType, KindDef, Schema, Writers};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// The default config file name, looked up in the current directory.
pub const DEFAULT_CONFIG: &str = "concord.toml";

/// A config that could not be loaded. Names the file, the line where known,
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Per-invocation sandbox limits, and the bounds on what the audit keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory an invocation may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wasm fuel (roughly, instructions) an invocation may burn.
    pub fuel: u64,
    /// Wall-clock time an invocation may take, enforced by epoch deadlines.
    pub timeout: Duration,
    /// How much of a call's arguments an audit entry keeps.
    pub audit_arg_bytes: usize,
    /// How much stdout+stderr an invocation may write before it is dropped.
    pub output_bytes: usize,
    /// How deep a chain of invocations caused by invocations may go
    /// (subscriptions, handoffs). The invocation a trigger starts is depth 0.
    pub max_cascade_depth: u32,
    /// Host calls one invocation may make; past it the invocation is
    /// trapped (a flooding agent stops itself, not the host).
    pub max_host_calls: u32,
    /// The largest arguments one host call may carry, in bytes (as JSON).
    pub max_call_bytes: usize,
    /// The longest lease one `coord.lease` or `coord.renew` grants, in ms.
    /// A lease blocks every other writer of its entity, so none may be
    /// open-ended: a holder that needs longer renews.
    pub lease_max_ms: u64,
    /// How long a change request may stay open: one its owner has not
    /// resolved by then expires, as an event on the entity that the
    /// requester sees.
    pub change_request_ttl_ms: u64,
    /// Actions one agent may record per minute and per hour (`[actions]
    /// per_minute`, `per_hour`); past them it is deferred.
    pub actions_per_minute: u32,
    pub actions_per_hour: u32,
    /// Undelivered actions the outbox holds at most (`[actions]
    /// max_pending`); past it a new action is deferred until the sink
    /// catches up.
    pub max_pending_actions: u64,
    /// Where `memory_bytes`, `fuel` and `timeout` were set, as their trap
    /// messages name them: `limits.memory_mib`, or an agent's own
    /// `agents.NAME.memory_mib` (see [`Config::limits_for`]).
    pub memory_key: String,
    pub fuel_key: String,
    pub timeout_key: String,
    /// Outbound HTTP requests one invocation may make; past it each is
    /// refused (audited).
    pub max_http_requests: u32,
    /// The largest response body an outbound request may bring back.
    pub max_http_response_bytes: usize,
    /// How long one outbound request may take, from its check to the last
    /// byte of its response.
    pub http_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            fuel: 5_000_000_000,
            timeout: Duration::from_secs(10),
            audit_arg_bytes: 2048,
            output_bytes: 64 << 10,
            max_cascade_depth: 4,
            max_host_calls: 10_000,
            max_call_bytes: 1 << 20,
            lease_max_ms: 60_000,
            change_request_ttl_ms: 3_600_000,
            actions_per_minute: 60,
            actions_per_hour: 1_000,
            max_pending_actions: 10_000,
            max_http_requests: 16,
            max_http_response_bytes: 4 << 20,
            http_timeout: Duration::from_secs(10),
            memory_key: "limits.memory_mib".into(),
            fuel_key: "limits.fuel".into(),
            timeout_key: "limits.timeout_ms".into(),
        }
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (or a label for inline text).
    pub file: PathBuf,
    /// sha256 of the config text, hex: host start entries in the audit carry
    /// it, so a config change between runs is visible.
    pub digest: String,
    /// The redb file of the knowledge base.
    pub kb_path: PathBuf,
    /// `[kb] shared_reads`: whether read commands may open the store while
    /// a host writes it (at a cost per read and per commit).
    pub kb_sharing: crate::kb::redb::Sharing,
    /// `[kb] backend = "postgres"`: the server, instead of the redb file.
    /// (`kb_path` still anchors the host's local files: its cache, its
    /// server file.)
    pub kb_postgres: Option<crate::kb::postgres::PgOptions>,
    /// Where the agents' `*.wasm` components are.
    pub agents_dir: PathBuf,
    /// `[agents] watch`: whether `concord serve` loads, replaces and removes
    /// agents as their files change (default true).
    pub agents_watch: bool,
    /// `[agents] settle_ms`: how long a changed file must stay unmodified
    /// before it is loaded (see [`crate::runtime::folder`]).
    pub agents_settle: Duration,
    /// `[agents] cache_dir`: where compiled components are kept between
    /// runs (default `cache/` beside the knowledge base).
    pub agents_cache: PathBuf,
    /// `[agents.NAME]`: what each agent is granted beyond the knowledge
    /// base (outbound HTTP, secrets). An agent not listed has nothing.
    pub grants: BTreeMap<String, super::grants::AgentGrant>,
    /// `[secrets.NAME]`: where each secret's value comes from and goes.
    pub secrets: BTreeMap<String, super::secrets::SecretDef>,
    /// `[models.NAME]`: the language models agents may be granted.
    pub models: BTreeMap<String, super::grants::ModelDef>,
    /// `[[schedules]]`: agents triggered by time.
    pub schedules: Vec<crate::coord::schedule::Schedule>,
    pub limits: Limits,
    pub schema: Schema,
    /// Coordination rules, compiled.
    pub rules: Arc<Rules>,
    /// Which agents are invoked on which committed changes.
    pub subscriptions: Vec<Subscription>,
    /// Where recorded actions are delivered.
    pub sink: SinkConfig,
    /// How `concord serve` runs (`[server]`).
    pub server: super::server::ServerConfig,
}

/// An agent invoked when a committed change matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub agent: String,
    /// The entity kind.
    pub kind: String,
    /// Changed fields that trigger it; empty: any change.
    pub fields: Vec<String>,
    pub line: usize,
}

pub use super::sink::{HttpSinkConfig, SinkConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    kb: RawKb,
    #[serde(default)]
    agents: super::grants::RawAgents,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    kinds: BTreeMap<Spanned<String>, Spanned<RawKind>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    subscriptions: Vec<Spanned<RawSubscription>>,
    #[serde(default)]
    actions: RawActions,
    #[serde(default)]
    server: super::server::RawServer,
    #[serde(default)]
    schedules: Vec<Spanned<RawSchedule>>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<super::grants::RawSecret>>,
    #[serde(default)]
    models: BTreeMap<Spanned<String>, Spanned<super::grants::RawModel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Spanned<String>,
    agent: Spanned<String>,
    kind: Spanned<String>,
    entity: Option<Spanned<String>>,
    body: Option<Spanned<toml::Value>>,
    every: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    catch_up: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    when: Spanned<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
    effect: Spanned<String>,
    reason: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    agent: String,
    kind: Spanned<String>,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActions {
    #[serde(default = "default_sink")]
    sink: String,
    /// Each action kind, with the agents that may request it.
    #[serde(default)]
    kinds: BTreeMap<Spanned<String>, Spanned<Vec<String>>>,
    per_minute: Option<Spanned<u64>>,
    per_hour: Option<Spanned<u64>>,
    max_pending: Option<Spanned<u64>>,
    /// For an HTTP sink.
    http: Option<Spanned<super::sink::RawHttpSink>>,
}

impl Default for RawActions {
    fn default() -> Self {
        Self {
            sink: default_sink(),
            kinds: BTreeMap::new(),
            per_minute: None,
            per_hour: None,
            max_pending: None,
            http: None,
        }
    }
}

fn default_sink() -> String {
    "data/actions.jsonl".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKb {
    #[serde(default = "default_kb_path")]
    path: String,
    #[serde(default)]
    shared_reads: bool,
    /// `redb` (the default) or `postgres`.
    backend: Option<Spanned<String>>,
    /// The PostgreSQL server (`postgres://…`); `CONCORD_PG_URL` wins over it.
    url: Option<Spanned<String>>,
    /// Connections this host keeps for reads.
    pool: Option<Spanned<usize>>,
}

impl Default for RawKb {
    fn default() -> Self {
        Self { path: default_kb_path(), shared_reads: false, backend: None, url: None, pool: None }
    }
}

/// The environment variable that names the PostgreSQL server, over `[kb] url`
/// (so that a password need not be in the file).
pub const PG_URL_ENV: &str = "CONCORD_PG_URL";

/// `[kb] pool` when not given.
const DEFAULT_PG_POOL: usize = 8;

impl RawKb {
    /// The PostgreSQL options, when `backend = "postgres"`.
    fn postgres(
        &self,
        err: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
    ) -> Result<Option<crate::kb::postgres::PgOptions>, ConfigError> {
        let backend = self.backend.as_ref().map_or("redb", |b| b.get_ref().as_str());
        let span = self.backend.as_ref().map(Spanned::span);
        match backend {
            "redb" => {
                if let Some(url) = &self.url {
                    return Err(err(
                        Some(url.span()),
                        "kb.url is for backend = \"postgres\"; the redb backend takes kb.path".into(),
                    ));
                }
                Ok(None)
            }
            "postgres" => {
                let url = match (std::env::var(PG_URL_ENV).ok().filter(|u| !u.is_empty()), &self.url) {
                    (Some(url), _) => url,
                    (None, Some(url)) => url.get_ref().clone(),
                    (None, None) => {
                        return Err(err(
                            span,
                            format!(
                                "backend = \"postgres\" needs the server: set kb.url = \"postgres://USER:PASSWORD@HOST:5432/DBNAME\", or {PG_URL_ENV}"
                            ),
                        ));
                    }
                };
                let pool = match &self.pool {
                    Some(p) if !(1..=256).contains(p.get_ref()) => {
                        return Err(err(Some(p.span()), "kb.pool is between 1 and 256 connections".into()));
                    }
                    Some(p) => *p.get_ref(),
                    None => DEFAULT_PG_POOL,
                };
                Ok(Some(crate::kb::postgres::PgOptions { url, pool }))
            }
            other => Err(err(
                span,
                format!("kb.backend `{other}` is not one Concord has: use \"redb\" (the default) or \"postgres\""),
            )),
        }
    }
}

fn default_kb_path() -> String {
    "data/concord.redb".into()
}

/// How long a changed agent file must rest before it loads, by default.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(500);

/// Where the agents are when `[agents] dir` is not given.
const DEFAULT_AGENTS_DIR: &str = "agents";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<Spanned<u64>>,
    fuel: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    audit_arg_bytes: Option<Spanned<u64>>,
    output_bytes: Option<Spanned<u64>>,
    max_cascade_depth: Option<Spanned<u64>>,
    max_host_calls: Option<Spanned<u64>>,
    max_call_bytes: Option<Spanned<u64>>,
    lease_max_ms: Option<Spanned<u64>>,
    change_request_ttl_ms: Option<Spanned<u64>>,
    max_http_requests: Option<Spanned<u64>>,
    max_http_response_bytes: Option<Spanned<u64>>,
    http_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    fields: BTreeMap<Spanned<String>, Spanned<RawField>>,
    /// Agents granted leases on the kind besides its writers.
    #[serde(default)]
    leases: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    #[serde(rename = "type")]
    ty: Spanned<String>,
    owner: Option<Spanned<String>>,
    writers: Option<Spanned<Vec<String>>>,
}

impl Config {
    /// The knowledge base's backend, as `[kb]` configures it: what
    /// [`crate::kb::open`] opens.
    pub fn kb_backend(&self) -> crate::kb::Backend {
        match &self.kb_postgres {
            Some(options) => crate::kb::Backend::Postgres(options.clone()),
            None => crate::kb::Backend::Redb { path: self.kb_path.clone(), sharing: self.kb_sharing },
        }
    }

    /// The sandbox limits of `agent`: `[limits]`, with its own
    /// `[agents.NAME]` memory, fuel and time where it sets them.
    pub fn limits_for(&self, agent: &str) -> Limits {
        let mut limits = self.limits.clone();
        if let Some(g) = self.grants.get(agent) {
            if let Some(m) = g.memory_bytes {
                limits.memory_bytes = m;
                limits.memory_key = format!("agents.{agent}.memory_mib");
            }
            if let Some(f) = g.fuel {
                limits.fuel = f;
                limits.fuel_key = format!("agents.{agent}.fuel");
            }
            if let Some(t) = g.timeout {
                limits.timeout = t;
                limits.timeout_key = format!("agents.{agent}.timeout_ms");
            }
        }
        limits
    }

    /// The most linear memory any agent may have: what the instance pool's
    /// slots are sized for.
    pub fn memory_ceiling(&self) -> usize {
        self.grants.values().filter_map(|g| g.memory_bytes).fold(self.limits.memory_bytes, usize::max)
    }

    /// `[limits]` with the memory of the hungriest agent: what an engine is
    /// made with ([`crate::Runtime::load`]).
    pub fn pool_limits(&self) -> Limits {
        Limits { memory_bytes: self.memory_ceiling(), ..self.limits.clone() }
    }

    /// Reads and validates a config file. Relative paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read the config: {e} (pass --config FILE, or create {DEFAULT_CONFIG})"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses config text. `file` labels errors; `base` resolves relative paths.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: file.to_path_buf(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| err(e.span(), e.message().trim_end().to_string()))?;

        let mut limits = Limits::default();
        let positive = |v: &Option<Spanned<u64>>, name: &str| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(s) if *s.get_ref() == 0 => {
                    Err(err(Some(s.span()), format!("limits.{name} must be greater than 0")))
                }
                Some(s) => Ok(Some(*s.get_ref())),
                None => Ok(None),
            }
        };
        let to_usize = |v: u64, span: Option<std::ops::Range<usize>>, name: &str| {
            usize::try_from(v).map_err(|_| err(span, format!("limits.{name} is too large for this machine")))
        };
        if let Some(mib) = positive(&raw.limits.memory_mib, "memory_mib")? {
            let span = raw.limits.memory_mib.as_ref().map(Spanned::span);
            if mib > 4096 {
                return Err(err(
                    span,
                    "limits.memory_mib is at most 4096 (a wasm32 memory cannot grow past 4 GiB)".into(),
                ));
            }
            limits.memory_bytes = to_usize(mib << 20, span, "memory_mib")?;
        }
        if let Some(fuel) = positive(&raw.limits.fuel, "fuel")? {
            limits.fuel = fuel;
        }
        if let Some(ms) = positive(&raw.limits.timeout_ms, "timeout_ms")? {
            limits.timeout = Duration::from_millis(ms);
        }
        if let Some(b) = positive(&raw.limits.audit_arg_bytes, "audit_arg_bytes")? {
            limits.audit_arg_bytes =
                to_usize(b, raw.limits.audit_arg_bytes.as_ref().map(Spanned::span), "audit_arg_bytes")?;
        }
        if let Some(b) = positive(&raw.limits.output_bytes, "output_bytes")? {
            limits.output_bytes = to_usize(b, raw.limits.output_bytes.as_ref().map(Spanned::span), "output_bytes")?;
        }

        if let Some(d) = positive(&raw.limits.max_cascade_depth, "max_cascade_depth")? {
            let span = raw.limits.max_cascade_depth.as_ref().map(Spanned::span);
            limits.max_cascade_depth = u32::try_from(d)
                .ok()
                .filter(|d| *d <= 64)
                .ok_or_else(|| err(span, "limits.max_cascade_depth is at most 64".into()))?;
        }

        if let Some(n) = positive(&raw.limits.max_host_calls, "max_host_calls")? {
            let span = raw.limits.max_host_calls.as_ref().map(Spanned::span);
            limits.max_host_calls =
                u32::try_from(n).map_err(|_| err(span, "limits.max_host_calls is at most 4294967295".into()))?;
        }
        if let Some(b) = positive(&raw.limits.max_call_bytes, "max_call_bytes")? {
            limits.max_call_bytes =
                to_usize(b, raw.limits.max_call_bytes.as_ref().map(Spanned::span), "max_call_bytes")?;
        }
        if let Some(ms) = positive(&raw.limits.lease_max_ms, "lease_max_ms")? {
            limits.lease_max_ms = ms;
        }
        if let Some(ms) = positive(&raw.limits.change_request_ttl_ms, "change_request_ttl_ms")? {
            limits.change_request_ttl_ms = ms;
        }
        if let Some(n) = positive(&raw.limits.max_http_requests, "max_http_requests")? {
            let span = raw.limits.max_http_requests.as_ref().map(Spanned::span);
            limits.max_http_requests = u32::try_from(n)
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| err(span, "limits.max_http_requests is at most 10000".into()))?;
        }
        if let Some(b) = positive(&raw.limits.max_http_response_bytes, "max_http_response_bytes")? {
            let span = raw.limits.max_http_response_bytes.as_ref().map(Spanned::span);
            if b > 1 << 30 {
                return Err(err(span, "limits.max_http_response_bytes is at most 1073741824 (1 GiB)".into()));
            }
            limits.max_http_response_bytes = to_usize(b, span, "max_http_response_bytes")?;
        }
        if let Some(ms) = positive(&raw.limits.http_timeout_ms, "http_timeout_ms")? {
            let span = raw.limits.http_timeout_ms.as_ref().map(Spanned::span);
            if ms > 600_000 {
                return Err(err(span, "limits.http_timeout_ms is at most 600000 (10 minutes)".into()));
            }
            limits.http_timeout = Duration::from_millis(ms);
        }
        for (value, name, target) in [
            (&raw.actions.per_minute, "per_minute", &mut limits.actions_per_minute),
            (&raw.actions.per_hour, "per_hour", &mut limits.actions_per_hour),
        ] {
            if let Some(v) = value {
                *target = u32::try_from(*v.get_ref()).ok().filter(|n| *n > 0).ok_or_else(|| {
                    err(Some(v.span()), format!("actions.{name} must be 1 to 4294967295 (actions per agent)"))
                })?;
            }
        }
        if let Some(v) = &raw.actions.max_pending {
            if *v.get_ref() == 0 {
                return Err(err(Some(v.span()), "actions.max_pending must be at least 1".into()));
            }
            limits.max_pending_actions = *v.get_ref();
        }

        let mut kinds = BTreeMap::new();
        for (name, kind) in raw.kinds {
            let span = name.span();
            let name = name.into_inner();
            check_name(&name).map_err(|why| err(Some(span.clone()), format!("kind `{name}`: {why}")))?;
            let kind = kind.into_inner();
            let leases = match kind.leases {
                Some(list) if list.get_ref().iter().any(|a| a.trim().is_empty()) => {
                    return Err(err(Some(list.span()), format!("kind `{name}`: `leases` lists an empty agent name")));
                }
                Some(list) => list.into_inner(),
                None => Vec::new(),
            };
            if kind.fields.is_empty() {
                return Err(err(Some(span), format!("kind `{name}` declares no fields: add `[kinds.{name}.fields]`")));
            }
            let mut fields = BTreeMap::new();
            for (field, def) in kind.fields {
                let fspan = field.span();
                let field = field.into_inner();
                check_name(&field).map_err(|why| err(Some(fspan.clone()), format!("field `{name}.{field}`: {why}")))?;
                let def = def.into_inner();
                let ty = FieldType::parse(def.ty.get_ref()).ok_or_else(|| {
                    err(
                        Some(def.ty.span()),
                        format!(
                            "field `{name}.{field}` has unknown type `{}`: use one of {}",
                            def.ty.get_ref(),
                            FieldType::NAMES.join(", ")
                        ),
                    )
                })?;
                let writers = match (def.owner, def.writers) {
                    (Some(owner), None) => {
                        let o = owner.get_ref().trim();
                        if o.is_empty() {
                            return Err(err(Some(owner.span()), format!("field `{name}.{field}` has an empty owner")));
                        }
                        Writers::Owner(o.to_string())
                    }
                    (None, Some(list)) => {
                        let span = list.span();
                        let list = list.into_inner();
                        if list.is_empty() || list.iter().any(|w| w.trim().is_empty()) {
                            return Err(err(
                                Some(span),
                                format!(
                                    "field `{name}.{field}`: `writers` must list at least one agent name, and no empty names"
                                ),
                            ));
                        }
                        Writers::Shared(list)
                    }
                    (Some(_), Some(list)) => {
                        return Err(err(
                            Some(list.span()),
                            format!("field `{name}.{field}` has both `owner` and `writers`: keep one"),
                        ));
                    }
                    (None, None) => {
                        return Err(err(
                            Some(fspan),
                            format!(
                                "field `{name}.{field}` has no `owner` and no `writers`: say who may write it, e.g. `owner = \"sales\"`"
                            ),
                        ));
                    }
                };
                fields.insert(field, FieldDef { ty, writers, line: line_of(text, fspan.start) });
            }
            kinds.insert(name, KindDef { fields, leases });
        }
        if kinds.is_empty() {
            return Err(err(None, "no entity kinds are declared: add at least one `[kinds.NAME.fields]` table".into()));
        }

        let mut actions = BTreeMap::new();
        for (kind, agents) in std::mem::take(&mut raw.actions.kinds) {
            let (span, kind) = (kind.span(), kind.into_inner());
            if !super::schema::valid_action_kind(&kind) {
                return Err(err(
                    Some(span),
                    format!(
                        "action kind `{kind}`: use 1 to 128 ASCII letters, digits, `.`, `_` or `-`, such as `email.upsell`"
                    ),
                ));
            }
            let (aspan, agents) = (agents.span(), agents.into_inner());
            if agents.is_empty() || agents.iter().any(|a| a.trim().is_empty()) {
                return Err(err(
                    Some(aspan),
                    format!("action kind `{kind}` must list the agents that may request it, with no empty names"),
                ));
            }
            actions.insert(kind, agents);
        }
        let schema = Schema { kinds, actions };

        let mut rules = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for r in raw.rules {
            let span = r.span();
            let r = r.into_inner();
            if !names.insert(r.name.clone()) {
                return Err(err(
                    Some(span),
                    format!("rule `{}` is declared twice; give each rule its own name", r.name),
                ));
            }
            let defer = match r.effect.get_ref().as_str() {
                "defer" => true,
                "deny" => false,
                other => {
                    return Err(err(
                        Some(r.effect.span()),
                        format!("rule `{}`: effect `{other}` is not `defer` or `deny`", r.name),
                    ));
                }
            };
            let when_span = r.when.span();
            let rule = Rule::new(
                r.name.clone(),
                r.when.into_inner(),
                r.agents,
                r.fields,
                r.actions,
                defer,
                r.reason,
                r.enabled,
                line_of(text, span.start),
            )
            .map_err(|e| {
                err(Some(when_span.clone()), format!("rule `{}`: the `when` condition is not valid CEL: {e}", r.name))
            })?;
            rule.check(&schema).map_err(|e| {
                err(Some(when_span), format!("rule `{}`: the `when` condition cannot be evaluated: {e}", r.name))
            })?;
            rules.push(rule);
        }

        let mut subscriptions = Vec::new();
        for sub in raw.subscriptions {
            let span = sub.span();
            let sub = sub.into_inner();
            let Some(kind) = schema.kinds.get(sub.kind.get_ref()) else {
                return Err(err(
                    Some(sub.kind.span()),
                    format!("subscription of `{}`: unknown kind `{}`", sub.agent, sub.kind.get_ref()),
                ));
            };
            if let Some(f) = sub.fields.iter().find(|f| !kind.fields.contains_key(*f)) {
                return Err(err(
                    Some(span),
                    format!("subscription of `{}`: kind `{}` has no field `{f}`", sub.agent, sub.kind.get_ref()),
                ));
            }
            subscriptions.push(Subscription {
                agent: sub.agent,
                kind: sub.kind.into_inner(),
                fields: sub.fields,
                line: line_of(text, span.start),
            });
        }

        let schedules = parse_schedules(raw.schedules, &schema, &err, text)?;

        let agents_settle = match &raw.agents.settle_ms {
            Some(ms) if *ms.get_ref() > 60_000 => {
                return Err(err(Some(ms.span()), "agents.settle_ms is at most 60000 (a minute)".into()));
            }
            Some(ms) => Duration::from_millis(*ms.get_ref()),
            None => DEFAULT_SETTLE,
        };

        let server = raw.server.parse(base).map_err(|(span, message)| err(Some(span), message))?;
        let secrets = super::grants::parse_secrets(raw.secrets).map_err(|(span, message)| err(Some(span), message))?;
        let models =
            super::grants::parse_models(raw.models, &secrets).map_err(|(span, message)| err(Some(span), message))?;
        let grants = super::grants::parse_grants(std::mem::take(&mut raw.agents.stanzas), &secrets, &models)
            .map_err(|(span, message)| err(Some(span), message))?;
        let kb_postgres = raw.kb.postgres(&err)?;

        let sink = super::sink::parse(&raw.actions.sink, raw.actions.http, base, &secrets)
            .map_err(|(span, message)| err(span, message))?;

        Ok(Config {
            file: file.to_path_buf(),
            digest: {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            },
            kb_path: base.join(&raw.kb.path),
            kb_sharing: if raw.kb.shared_reads {
                crate::kb::redb::Sharing::SharedReads
            } else {
                crate::kb::redb::Sharing::Exclusive
            },
            kb_postgres,
            agents_dir: base.join(raw.agents.dir.as_deref().unwrap_or(DEFAULT_AGENTS_DIR)),
            agents_watch: raw.agents.watch.unwrap_or(true),
            agents_settle,
            agents_cache: match &raw.agents.cache_dir {
                Some(dir) => base.join(dir),
                None => base.join(&raw.kb.path).parent().unwrap_or(base).join("cache"),
            },
            grants,
            secrets,
            models,
            schedules,
            limits,
            schema,
            rules: Arc::new(Rules::new(rules)),
            subscriptions,
            sink,
            server,
        })
    }
}

/// Checks `[[schedules]]`: names unique, the timing, the message. Agents
/// are checked against those loaded, at start and at each reload.
fn parse_schedules(
    raw: Vec<Spanned<RawSchedule>>,
    schema: &Schema,
    err: &dyn Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
    text: &str,
) -> Result<Vec<crate::coord::schedule::Schedule>, ConfigError> {
    use crate::coord::schedule::{CatchUp, Schedule, Timing};
    let mut out: Vec<Schedule> = Vec::new();
    for s in raw {
        let span = s.span();
        let s = s.into_inner();
        let (nspan, name) = (s.name.span(), s.name.into_inner());
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(err(
                Some(nspan),
                format!("schedule `{}`: a name is 1 to 64 ASCII letters, digits, `_` or `-`", name.escape_debug()),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(err(Some(nspan), format!("schedule `{name}` is declared twice; give each its own name")));
        }
        let named = |what: String| format!("schedule `{name}`: {what}");
        if s.agent.get_ref().trim().is_empty() {
            return Err(err(Some(s.agent.span()), named("`agent` is empty".into())));
        }
        if s.kind.get_ref().trim().is_empty() {
            return Err(err(Some(s.kind.span()), named("`kind` (the message's kind) is empty".into())));
        }
        let entity = match s.entity {
            Some(e) => {
                let (espan, e) = (e.span(), e.into_inner());
                let r: crate::kb::EntityRef = e.parse().map_err(|m: String| err(Some(espan.clone()), named(m)))?;
                schema.check_ref(&r).map_err(|m| err(Some(espan), named(m.to_string())))?;
                Some(r)
            }
            None => None,
        };
        let body = match s.body {
            None => "{}".to_string(),
            Some(b) => {
                let (bspan, b) = (b.span(), b.into_inner());
                match b {
                    toml::Value::String(json) => {
                        serde_json::from_str::<serde_json::Value>(&json).map_err(|e| {
                            err(Some(bspan), named(format!("`body` is not JSON: {e} (or write it as a TOML table)")))
                        })?;
                        json
                    }
                    other => serde_json::to_string(&other)
                        .map_err(|e| err(Some(bspan), named(format!("`body` cannot be JSON: {e}"))))?,
                }
            }
        };
        let timing_span = s.every.as_ref().or(s.cron.as_ref()).map_or(span.clone(), Spanned::span);
        let timing = Timing::parse(
            s.every.as_ref().map(|v| v.get_ref().as_str()),
            s.cron.as_ref().map(|v| v.get_ref().as_str()),
            s.timezone.as_ref().map(|v| v.get_ref().as_str()),
        )
        .map_err(|m| err(Some(timing_span), named(m)))?;
        let catch_up = match s.catch_up {
            None => CatchUp::Skip,
            Some(c) => match c.get_ref().as_str() {
                "skip" => CatchUp::Skip,
                "once" => CatchUp::Once,
                other => {
                    return Err(err(
                        Some(c.span()),
                        named(format!("`catch_up = {other:?}` is not \"skip\" or \"once\"")),
                    ));
                }
            },
        };
        out.push(Schedule {
            name,
            agent: s.agent.into_inner(),
            kind: s.kind.into_inner(),
            entity,
            body,
            timing,
            catch_up,
            line: line_of(text, span.start),
        });
    }
    Ok(out)
}

/// Kind and field names: ASCII letters, digits and `_`, starting with a
/// letter. Keeps `kind/id` keys unambiguous and names easy to type.
fn check_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => return Err("names must start with an ASCII letter"),
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("names may contain only ASCII letters, digits and `_`")
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;

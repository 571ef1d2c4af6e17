//! What the API sends and takes, beyond the knowledge base's own types
//! (entities as [`EntityView`], events, audit entries, actions and the
//! conflicts report go out as they are serialized everywhere else, so the
//! CLI's `--json` and the API agree). The CLI reads these back when it
//! talks to a running host.

use crate::audit::{AuditEntry, Verification};
use crate::kb::{ActionRecord, Event};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::coord::import::{EntityView, RawRow};

/// A trigger: `POST /v1/invoke/{agent}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// The message kind the agent handles, such as `upsell`.
    pub kind: String,
    /// The entity the message is about, as `kind/id`.
    #[serde(default)]
    pub entity: Option<String>,
    /// The message body: any JSON (default `{}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub body: Option<serde_json::Value>,
    /// A retried request with the same key, within the retention, gets the
    /// first answer and runs nothing. (Or the `Idempotency-Key` header.)
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Pause the invocation just before this host call (such as
    /// `coord.act`), until `POST /v1/invocations/{id}/resume`. Only when
    /// `[server] breakpoints = true`: for tests and exact scenarios.
    #[serde(default)]
    pub pause_before: Option<String>,
}

/// One invocation of a trigger's cascade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationView {
    pub invocation: u64,
    pub agent: String,
    /// The invocation that caused it.
    pub causation: Option<u64>,
    /// `ok`, `failed`, `trapped` or `stopped`.
    pub outcome: String,
    /// The agent's report (`ok`), its error (`failed`), or why it was
    /// stopped; bounded (see [`MAX_REPORT_BYTES`]).
    pub report: String,
    pub host_calls: u32,
}

/// The most of an agent's report an answer carries.
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// What a trigger did, or how far it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationAnswer {
    /// The invocation id (the seq of its `invocation.start` audit entry).
    pub invocation: u64,
    pub agent: String,
    /// `running`, `paused` (at `paused_before`), `done`, or `interrupted`
    /// (the host stopped before it ended).
    pub status: String,
    /// For `done`: `ok`, `failed`, `trapped` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_calls: Option<u32>,
    /// The invocations it caused (subscriptions, handoffs), in the order
    /// they ran.
    #[serde(default)]
    pub caused: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_before: Option<String>,
    /// Every invocation of the cascade, this one first.
    #[serde(default)]
    pub invocations: Vec<InvocationView>,
}

/// A page of audit entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// The cursor for the next page in the same direction: pass it as
    /// `after` (reading forward) or `before` (reading back). `None` when the
    /// page was not full.
    pub next: Option<u64>,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; `None` when the page was not full.
    pub next: Option<u64>,
}

/// A page of entities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityPage {
    pub entities: Vec<EntityView>,
    /// Pass as `after` for the next page; `None` when the page was not full.
    pub next: Option<String>,
}

/// A page of actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionPage {
    pub actions: Vec<ActionRecord>,
    /// Pass as `after` for the next page; `None` when the page was not full.
    pub next: Option<u64>,
}

/// A loaded agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentView {
    pub name: String,
    /// sha256 of its component, hex.
    pub digest: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// The fields it may write, as `kind.field`.
    pub writes: Vec<String>,
    /// When it was loaded, in ms since the epoch.
    #[serde(default)]
    pub loaded_at_ms: u64,
    /// The origins it may reach over HTTP (`[agents.NAME] http`).
    #[serde(default)]
    pub http: Vec<String>,
    /// The secrets the host adds to its requests, by name.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The models it may call.
    #[serde(default)]
    pub models: Vec<String>,
}

impl AgentView {
    /// A loaded agent, with what `config` lets it write and reach.
    pub fn of(agent: &crate::runtime::AgentInfo, config: &crate::Config) -> AgentView {
        let grant = config.grants.get(&agent.name).cloned().unwrap_or_default();
        AgentView {
            name: agent.name.clone(),
            digest: agent.digest.clone(),
            path: agent.path.clone(),
            writes: config.schema.writable_by(&agent.name),
            loaded_at_ms: agent.loaded_at_ms,
            http: grant.http.origins.iter().map(ToString::to_string).collect(),
            secrets: grant.secrets,
            models: grant.models,
        }
    }
}

/// The agents in service, and the files refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    /// Files of the agents folder that a running host refused to load,
    /// until they change or go (what served under their names goes on).
    #[serde(default)]
    pub refused: Vec<crate::runtime::RefusedFile>,
}

/// The schedules of the config in force, with what the store keeps of
/// each (`concord schedules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<crate::coord::schedule::ScheduleView>,
    /// The host's time when the list was made, in ms since the epoch: the
    /// schedules' clock, so `next_fire_ms` can be read against it.
    pub now_ms: u64,
}

/// The result of recomputing the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyView {
    pub intact: bool,
    /// Intact: how many entries, and the head hash.
    #[serde(default)]
    pub entries: u64,
    #[serde(default)]
    pub head: String,
    /// Broken: the first bad entry, and what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl From<Verification> for VerifyView {
    fn from(v: Verification) -> Self {
        match v {
            Verification::Intact { entries, head } => {
                VerifyView { intact: true, entries, head, broken_at: None, problem: None }
            }
            Verification::Broken { seq, problem } => VerifyView {
                intact: false,
                entries: 0,
                head: String::new(),
                broken_at: Some(seq),
                problem: Some(problem),
            },
        }
    }
}

impl From<VerifyView> for Verification {
    fn from(v: VerifyView) -> Self {
        if v.intact {
            Verification::Intact { entries: v.entries, head: v.head }
        } else {
            Verification::Broken { seq: v.broken_at.unwrap_or(0), problem: v.problem.unwrap_or_default() }
        }
    }
}

/// `POST /v1/audit/verify`: verify against a signed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub checkpoint: crate::audit::checkpoint::Checkpoint,
    /// The public key the checkpoint must be signed by (hex); without it
    /// the checkpoint's own key is trusted.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// A causation chain's invocations and their audit entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TraceView {
    pub invocations: Vec<u64>,
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page of entries; `None` at the end.
    pub next: Option<u64>,
}

/// Who acts, for an operator request on an open server (with tokens, the
/// token's name acts, and a different `by` is refused).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The fields to set and pin, as plain JSON values of their types.
    #[schema(value_type = Object)]
    pub set: serde_json::Map<String, serde_json::Value>,
    /// Why; shown to every agent that is refused.
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnpinRequest {
    pub fields: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakLeaseRequest {
    /// Why; kept in the audit.
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryActionRequest {
    /// Why; kept in the audit.
    pub reason: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    pub reason: String,
    /// Revert even though later events changed the same fields.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub by: Option<String>,
}

/// `POST /v1/entities:import`: one batch, all or nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub rows: Vec<RawRow>,
    /// Where the rows come from (a file name), for the audit.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
}

/// What an import batch wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportAnswer {
    pub imported: usize,
    pub events: Vec<Event>,
}

/// `POST /v1/audit/checkpoint`: the verified head, for the operator to sign
/// with a key that never leaves their machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// The public key that will sign it (hex), recorded in the audit.
    pub public_key: String,
    #[serde(default)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointHead {
    pub seq: u64,
    pub head: String,
    pub at_ms: u64,
}

/// `POST /v1/audit/keys`: a new signing key, recorded in the audit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub public_key: String,
    #[serde(default)]
    pub by: Option<String>,
}

/// An audit entry the API wrote for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recorded {
    /// Its seq.
    pub audit: u64,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub agents: usize,
}

/// The file beside the store that says a server holds it, and where: the
/// CLI reads it to go through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    pub pid: u32,
    /// An address the CLI can connect to (loopback for a wildcard listen).
    pub address: String,
    pub started_at_ms: u64,
    pub version: String,
}

/// `GET /v1/schema`: the declared kinds, each field's type and who may
/// write it, and the action kinds with the agents that may ask for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaView {
    pub kinds: std::collections::BTreeMap<String, KindView>,
    pub actions: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KindView {
    pub fields: std::collections::BTreeMap<String, FieldView>,
    /// Agents granted leases on the kind although they write none of it.
    pub leases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldView {
    /// `text`, `integer`, `float`, `boolean` or `json`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Who may write it: its one owner, or the agents sharing it.
    pub writers: Vec<String>,
    /// Whether several agents share it (no one owner).
    pub shared: bool,
}

impl From<&crate::policy::schema::Schema> for SchemaView {
    fn from(schema: &crate::policy::schema::Schema) -> Self {
        use crate::policy::schema::Writers;
        let kinds = schema
            .kinds
            .iter()
            .map(|(name, def)| {
                let fields = def
                    .fields
                    .iter()
                    .map(|(f, d)| {
                        let view = FieldView {
                            ty: d.ty.name().into(),
                            writers: d.writers.names(),
                            shared: matches!(d.writers, Writers::Shared(_)),
                        };
                        (f.clone(), view)
                    })
                    .collect();
                (name.clone(), KindView { fields, leases: def.leases.clone() })
            })
            .collect();
        SchemaView { kinds, actions: schema.actions.clone() }
    }
}

/// A page of change requests (handoffs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeRequestPage {
    pub requests: Vec<crate::kb::ChangeRequest>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<u64>,
}

/// `GET /v1/whoami`: who the request's token is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's name; `None` on an open server.
    pub name: Option<String>,
    /// `read`, `invoke` or `operator`.
    pub role: String,
    /// Whether the server runs without tokens (loopback only).
    pub open: bool,
}

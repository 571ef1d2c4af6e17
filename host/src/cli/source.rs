//! Where a command reads and writes: the store itself when no host holds
//! it, or the API of the `concord serve` that does. Both give the same
//! types back, so each command prints the same either way.

use super::Failure;
use super::client::{Client, segment};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditEntry, AuditFilter, Verification};
use crate::coord::conflicts::Report;
use crate::coord::import::{EntityView, RawRow, Row};
use crate::coord::{conflicts, import, operator};
use crate::kb::{self, ActionRecord, AtPoint, EntityRef, Event, Lease, ReplayReport, Store, Value};
use crate::policy::config::Config;
use crate::server::wire::{
    ActionPage, AgentList, AuditPage, BreakLeaseRequest, CheckpointHead, CheckpointRequest, EntityPage, EventPage,
    ImportAnswer, ImportRequest, KeyRequest, PinRequest, Recorded, RetryActionRequest, RevertRequest, ScheduleList,
    TraceView, UnpinRequest, VerifyRequest, VerifyView,
};
use std::collections::BTreeSet;

/// What a command needs of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The store, or the running host's API.
#[derive(Debug)]
pub enum Source {
    Local { config: Config, store: std::sync::Arc<dyn Store> },
    Remote { config: Config, client: Box<Client> },
}

/// Pages the CLI asks for at a time.
const PAGE: usize = 1000;

/// An entity as `concord get` shows it.
pub struct Found {
    pub entity: kb::Entity,
    pub lease: Option<Lease>,
    pub pins: Vec<crate::kb::Pin>,
}

impl Source {
    /// The running host if there is one, else the store (read-only for
    /// [`Access::Read`]).
    pub fn open(config: Config, access: Access) -> Result<Source, Failure> {
        if let Some(client) = Client::find(&config.kb_path)? {
            return Ok(Source::Remote { config, client: Box::new(client) });
        }
        let access = match access {
            Access::Read => kb::Access::ReadOnly,
            Access::Write => kb::Access::ReadWrite,
        };
        let store = kb::open(&config.kb_backend(), access)?;
        Ok(Source::Local { config, store })
    }

    pub fn config(&self) -> &Config {
        match self {
            Source::Local { config, .. } | Source::Remote { config, .. } => config,
        }
    }

    pub fn client(&self) -> Option<&Client> {
        match self {
            Source::Remote { client, .. } => Some(&**client),
            Source::Local { .. } => None,
        }
    }

    /// Who acts: on the store, `--by` (required); through a host, its
    /// token's name (or `--by` on an open host).
    pub fn by(&self, by: Option<String>) -> Result<Option<String>, Failure> {
        match (self, by) {
            (Source::Local { .. }, None) => Err(Failure::usage(
                "--by NAME is needed when no host is running: it is who acts, recorded as `human:NAME` (a running host records its token's name)",
            )),
            (_, by) => Ok(by),
        }
    }

    /// The entity (at `at`, or now), and its live lease when it is now.
    /// The entity (now, or at `at`), with its live lease and pins when it
    /// is read as it is now.
    pub fn get(&self, entity: &EntityRef, at: Option<AtPoint>) -> Result<Option<Found>, Failure> {
        match self {
            Source::Local { store, .. } => Ok(match at {
                Some(at) => store.get_at(entity, at)?.map(|e| Found { entity: e, lease: None, pins: vec![] }),
                None => match store.get(entity)? {
                    Some(e) => Some(Found {
                        entity: e,
                        lease: store.live_lease(entity, crate::kb::now_ms())?,
                        pins: store.pins(entity)?,
                    }),
                    None => None,
                },
            }),
            Source::Remote { config, client } => {
                let mut path = format!("/v1/entities/{}/{}", segment(&entity.kind), segment(&entity.id));
                if let Some(at) = at {
                    path.push_str(&format!(
                        "?at={}",
                        match at {
                            AtPoint::Seq(s) => s,
                            AtPoint::Time(t) => t,
                        }
                    ));
                }
                match client.get::<EntityView>(&path) {
                    Ok(mut view) => {
                        let (lease, pins) = (view.lease.take(), std::mem::take(&mut view.pins));
                        let entity = view.into_entity(&config.schema).map_err(anyhow::Error::msg)?;
                        Ok(Some(Found { entity, lease, pins }))
                    }
                    Err(super::client::ClientError::Refused(r)) if r.error == "not_found" => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    pub fn history(&self, entity: &EntityRef, after: u64, limit: usize) -> Result<Vec<Event>, Failure> {
        match self {
            Source::Local { store, .. } => Ok(store.history(entity, after, limit)?),
            Source::Remote { client, .. } => {
                let (mut out, mut cursor) = (Vec::new(), after);
                while out.len() < limit {
                    let n = (limit - out.len()).min(PAGE);
                    let path = format!(
                        "/v1/entities/{}/{}/history?after={cursor}&limit={n}",
                        segment(&entity.kind),
                        segment(&entity.id)
                    );
                    let page: EventPage = client.get(&path)?;
                    out.extend(page.events);
                    match page.next {
                        Some(next) => cursor = next,
                        None => break,
                    }
                }
                Ok(out)
            }
        }
    }

    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, Failure> {
        match self {
            Source::Local { store, .. } => Ok(store.audit(filter)?),
            Source::Remote { client, .. } => remote_audit(client, filter),
        }
    }

    /// An invocation's causation chain.
    pub fn trace(&self, id: u64) -> Result<BTreeSet<u64>, Failure> {
        match self {
            Source::Local { store, .. } => crate::coord::trace::chain(&**store, id).map_err(|e| match e {
                crate::coord::trace::TraceError::NoSuchInvocation(_) => Failure { code: 4, error: e.into() },
                crate::coord::trace::TraceError::Store(s) => Failure::from(s),
            }),
            Source::Remote { client, .. } => {
                let view: TraceView = client.get(&format!("/v1/audit/trace/{id}?limit=1"))?;
                Ok(view.invocations.into_iter().collect())
            }
        }
    }

    pub fn verify(&self) -> Result<Verification, Failure> {
        match self {
            Source::Local { store, .. } => Ok(store.verify_audit()?),
            Source::Remote { client, .. } => Ok(client.get::<VerifyView>("/v1/audit/verify")?.into()),
        }
    }

    pub fn verify_checkpoint(&self, cp: &Checkpoint, trusted: Option<&str>) -> Result<Verification, Failure> {
        match self {
            Source::Local { store, .. } => Ok(crate::audit::checkpoint::verify(&**store, cp, trusted)?),
            Source::Remote { client, .. } => {
                let req = VerifyRequest { checkpoint: cp.clone(), public_key: trusted.map(String::from) };
                Ok(client.post::<VerifyView>("/v1/audit/verify", &req)?.into())
            }
        }
    }

    /// Signs the verified head with `key` (which stays on this machine).
    pub fn checkpoint(&self, key: &ed25519_dalek::SigningKey, by: Option<String>) -> Result<Checkpoint, Failure> {
        match self {
            Source::Local { store, .. } => Ok(crate::audit::checkpoint::create(&**store, key)?),
            Source::Remote { client, .. } => {
                let public_key = crate::audit::checkpoint::public_key(key);
                let head: CheckpointHead =
                    client.post("/v1/audit/checkpoint", &CheckpointRequest { public_key, by })?;
                Ok(crate::audit::checkpoint::sign(head.seq, head.head, head.at_ms, key))
            }
        }
    }

    /// Records a new signing key in the audit.
    pub fn record_key(&self, public_key: &str, by: Option<String>) -> Result<(), Failure> {
        match self {
            Source::Local { store, config } => {
                store.append_audit(crate::audit::AuditDraft::host(
                    crate::audit::calls::KEY_ROTATED,
                    &config.digest,
                    serde_json::json!({ "public_key": public_key }),
                    format!("new audit signing key {public_key}"),
                ))?;
                Ok(())
            }
            Source::Remote { client, .. } => {
                let _: Recorded = client.post("/v1/audit/keys", &KeyRequest { public_key: public_key.into(), by })?;
                Ok(())
            }
        }
    }

    pub fn actions(&self) -> Result<Vec<ActionRecord>, Failure> {
        match self {
            Source::Local { store, .. } => Ok(store.actions()?),
            Source::Remote { client, .. } => {
                let (mut out, mut after) = (Vec::new(), 0);
                loop {
                    let page: ActionPage = client.get(&format!("/v1/actions?after={after}&limit={PAGE}"))?;
                    out.extend(page.actions);
                    match page.next {
                        Some(next) => after = next,
                        None => return Ok(out),
                    }
                }
            }
        }
    }

    pub fn conflicts(&self, window_ms: u64) -> Result<Report, Failure> {
        match self {
            Source::Local { store, .. } => Ok(conflicts::stored(&**store, window_ms)?),
            Source::Remote { client, .. } => Ok(client.get(&format!("/v1/conflicts?window_ms={window_ms}"))?),
        }
    }

    pub fn replay(&self) -> Result<ReplayReport, Failure> {
        match self {
            Source::Local { store, .. } => Ok(store.replay()?),
            Source::Remote { client, .. } => Ok(client.get("/v1/replay")?),
        }
    }

    /// The running host's agents (a stopped one has none loaded: `None`).
    /// The schedules: a running host's, or, with none, the config's with
    /// what the store kept of each (nothing runs then).
    pub fn schedules(&self) -> Result<ScheduleList, Failure> {
        match self {
            Source::Local { store, config } => {
                let now_ms = crate::kb::now_ms();
                let schedules =
                    crate::coord::schedule::views(&config.schedules, &**store, now_ms, &Default::default())?;
                Ok(ScheduleList { schedules, now_ms })
            }
            Source::Remote { client, .. } => Ok(client.get("/v1/schedules")?),
        }
    }

    pub fn agents(&self) -> Result<Option<AgentList>, Failure> {
        match self {
            Source::Local { .. } => Ok(None),
            Source::Remote { client, .. } => Ok(Some(client.get::<AgentList>("/v1/agents")?)),
        }
    }

    pub fn pin(
        &self,
        entity: &EntityRef,
        fields: &[(String, Value)],
        by: Option<String>,
        reason: &str,
    ) -> Result<Event, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(operator::pin(&**store, entity, fields, by.as_deref().unwrap_or_default(), reason)?)
            }
            Source::Remote { client, .. } => {
                let set = fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
                let path = format!("/v1/entities/{}/{}/pin", segment(&entity.kind), segment(&entity.id));
                Ok(client.post(&path, &PinRequest { set, reason: reason.into(), by })?)
            }
        }
    }

    pub fn unpin(
        &self,
        entity: &EntityRef,
        fields: &[String],
        by: Option<String>,
        reason: &str,
    ) -> Result<Event, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(operator::unpin(&**store, entity, fields, by.as_deref().unwrap_or_default(), reason)?)
            }
            Source::Remote { client, .. } => {
                let path = format!("/v1/entities/{}/{}/unpin", segment(&entity.kind), segment(&entity.id));
                Ok(client.post(&path, &UnpinRequest { fields: fields.to_vec(), reason: reason.into(), by })?)
            }
        }
    }

    pub fn retry_action(&self, id: u64, by: Option<String>, reason: &str) -> Result<ActionRecord, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(operator::retry_action(&**store, id, by.as_deref().unwrap_or_default(), reason)?)
            }
            Source::Remote { client, .. } => {
                Ok(client
                    .post(&format!("/v1/actions/{id}/retry"), &RetryActionRequest { reason: reason.into(), by })?)
            }
        }
    }

    pub fn break_lease(&self, entity: &EntityRef, by: Option<String>, reason: &str) -> Result<Lease, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(operator::break_lease(&**store, entity, by.as_deref().unwrap_or_default(), reason)?)
            }
            Source::Remote { client, .. } => {
                let path = format!("/v1/entities/{}/{}/lease/break", segment(&entity.kind), segment(&entity.id));
                Ok(client.post(&path, &BreakLeaseRequest { reason: reason.into(), by })?)
            }
        }
    }

    pub fn revert(&self, seq: u64, by: Option<String>, reason: &str, force: bool) -> Result<Event, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(operator::revert(&**store, seq, by.as_deref().unwrap_or_default(), reason, force)?)
            }
            Source::Remote { client, .. } => Ok(client
                .post(&format!("/v1/events/{seq}/revert"), &RevertRequest { reason: reason.into(), force, by })?),
        }
    }

    /// Imports one batch (rows checked already), all or nothing.
    pub fn import(
        &self,
        raw: &[RawRow],
        rows: &[Row],
        by: Option<String>,
        source: &str,
    ) -> Result<Vec<Event>, Failure> {
        match self {
            Source::Local { store, .. } => {
                Ok(import::import(&**store, rows, by.as_deref().unwrap_or_default(), source)?)
            }
            Source::Remote { client, .. } => {
                let req = ImportRequest { rows: raw.to_vec(), source: Some(source.into()), by };
                Ok(client.post::<ImportAnswer>("/v1/entities:import", &req)?.events)
            }
        }
    }

    /// A page of entities in key order, after `after`.
    pub fn list(&self, kind: Option<&str>, after: Option<&str>) -> Result<(Vec<EntityView>, Option<String>), Failure> {
        match self {
            Source::Local { store, .. } => {
                let found = store.list(kind, after, PAGE)?;
                let next = (found.len() == PAGE).then(|| found.last().map(|e| e.entity.key())).flatten();
                Ok((found.iter().map(EntityView::of).collect(), next))
            }
            Source::Remote { client, .. } => {
                let mut path = format!("/v1/entities?limit={PAGE}");
                if let Some(k) = kind {
                    path.push_str(&format!("&kind={}", segment(k)));
                }
                if let Some(a) = after {
                    path.push_str(&format!("&after={}", segment(a)));
                }
                let page: EntityPage = client.get(&path)?;
                Ok((page.entities, page.next))
            }
        }
    }
}

/// The audit through the API: the filter as query parameters, page by
/// page, with `concord audit`'s meaning of `--limit` (the newest N).
fn remote_audit(client: &Client, filter: &AuditFilter) -> Result<Vec<AuditEntry>, Failure> {
    if let Some(trace) = &filter.trace {
        // The chain's entries, then the rest of the filter here.
        let root = trace.first().copied().unwrap_or(0);
        let (mut all, mut after) = (Vec::new(), 0);
        loop {
            let view: TraceView = client.get(&format!("/v1/audit/trace/{root}?after={after}&limit={PAGE}"))?;
            all.extend(view.entries.into_iter().filter(|e| filter.matches(e)));
            match view.next {
                Some(n) => after = n,
                None => break,
            }
        }
        if let Some(limit) = filter.limit {
            all = all.split_off(all.len().saturating_sub(limit));
        }
        return Ok(all);
    }
    let mut query = Vec::new();
    let mut param = |k: &str, v: String| query.push(format!("{k}={}", segment(&v)));
    if let Some(v) = &filter.agent {
        param("agent", v.clone());
    }
    if let Some(v) = &filter.entity {
        param("entity", v.clone());
    }
    if let Some(v) = &filter.call {
        param("call", v.clone());
    }
    if let Some(v) = filter.decision {
        param("outcome", v.as_str().into());
    }
    if let Some(v) = filter.invocation {
        param("invocation", v.to_string());
    }
    if let Some(v) = filter.since_ms {
        param("since", v.to_string());
    }
    if let Some(v) = filter.until_ms {
        param("until", v.to_string());
    }
    let base = format!("/v1/audit?{}", query.join("&"));
    match filter.limit {
        // The newest N: back from the end, a page at a time.
        Some(limit) => {
            let (mut out, mut before) = (Vec::new(), None::<u64>);
            while out.len() < limit {
                let n = (limit - out.len()).min(PAGE);
                let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
                let page: AuditPage = client.get(&format!("{base}&limit={n}{cursor}"))?;
                let mut entries = page.entries;
                entries.append(&mut out);
                out = entries;
                match page.next {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            Ok(out)
        }
        // All of it: forward from the start.
        None => {
            let (mut out, mut after) = (Vec::new(), 0);
            loop {
                let page: AuditPage = client.get(&format!("{base}&limit={PAGE}&after={after}"))?;
                out.extend(page.entries);
                match page.next {
                    Some(a) => after = a,
                    None => return Ok(out),
                }
            }
        }
    }
}

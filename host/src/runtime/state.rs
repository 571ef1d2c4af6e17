//! Per-invocation state (the `T` of `wasmtime::Store<T>`) and the WIT host
//! functions. Each function converts WIT types and hands the call to the
//! [`Gate`]; nothing here decides policy or touches storage.

use super::bindings::concord::agent::{coord, kb, log, model as wit_model, types as wit};
use crate::gate::{Caller, Gate, WriteError};
use crate::kb::{self as model, EntityRef};
use crate::policy::Refusal;
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one invocation owns. Dropped with its store when the
/// invocation ends, so nothing survives to the next one.
pub(crate) struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) caller: Arc<Caller>,
    pub(crate) gate: Arc<Gate>,
    /// `wasi:http`: its context, and the hooks that send through the gate.
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) outbound: super::http::Outbound,
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl From<wit::EntityRef> for EntityRef {
    fn from(r: wit::EntityRef) -> Self {
        EntityRef { kind: r.kind, id: r.id }
    }
}

impl From<EntityRef> for wit::EntityRef {
    fn from(r: EntityRef) -> Self {
        wit::EntityRef { kind: r.kind, id: r.id }
    }
}

impl From<wit::Value> for model::Value {
    fn from(v: wit::Value) -> Self {
        match v {
            wit::Value::Null => model::Value::Null,
            wit::Value::Boolean(b) => model::Value::Boolean(b),
            wit::Value::Integer(i) => model::Value::Integer(i),
            wit::Value::Float(f) => model::Value::Float(f),
            wit::Value::Text(s) => model::Value::Text(s),
            wit::Value::Json(s) => model::Value::Json(s),
        }
    }
}

impl From<model::Value> for wit::Value {
    fn from(v: model::Value) -> Self {
        match v {
            model::Value::Null => wit::Value::Null,
            model::Value::Boolean(b) => wit::Value::Boolean(b),
            model::Value::Integer(i) => wit::Value::Integer(i),
            model::Value::Float(f) => wit::Value::Float(f),
            model::Value::Text(s) => wit::Value::Text(s),
            model::Value::Json(s) => wit::Value::Json(s),
        }
    }
}

impl From<wit::Expect> for model::Expect {
    fn from(e: wit::Expect) -> Self {
        match e {
            wit::Expect::Absent => model::Expect::Absent,
            wit::Expect::Version(v) => model::Expect::Version(v),
        }
    }
}

impl From<model::Expect> for wit::Expect {
    fn from(e: model::Expect) -> Self {
        match e {
            model::Expect::Absent => wit::Expect::Absent,
            model::Expect::Version(v) => wit::Expect::Version(v),
        }
    }
}

impl From<model::Entity> for wit::Entity {
    fn from(e: model::Entity) -> Self {
        wit::Entity {
            kind: e.entity.kind,
            id: e.entity.id,
            version: e.version,
            fields: e.fields.into_iter().map(|(name, value)| wit::Field { name, value: value.into() }).collect(),
            updated_at_ms: e.updated_at_ms,
            updated_by: e.updated_by,
        }
    }
}

impl From<model::Event> for wit::Event {
    fn from(e: model::Event) -> Self {
        wit::Event {
            seq: e.seq,
            at_ms: e.at_ms,
            agent: e.agent,
            entity: e.entity.into(),
            version: e.version,
            kind: e.kind.as_str().into(),
            changes: e
                .changes
                .into_iter()
                .map(|c| wit::FieldChange {
                    name: c.name,
                    before: c.before.map(Into::into),
                    after: c.after.map(Into::into),
                })
                .collect(),
            reason: e.reason,
            invocation: e.invocation,
            detail: e.detail,
        }
    }
}

impl From<model::Denial> for wit::WriteError {
    fn from(d: model::Denial) -> Self {
        match d {
            model::Denial::Rule { entity, rule, defer, reason } => {
                let d = wit::Deferral { entity: entity.into(), rule, reason };
                if defer { wit::WriteError::Deferred(d) } else { wit::WriteError::Denied(d) }
            }
            model::Denial::Pinned { entity, field, by, reason } => {
                wit::WriteError::Pinned(wit::Pinned { entity: entity.into(), field, by, reason })
            }
            model::Denial::Leased { entity, holder, expires_at_ms } => {
                wit::WriteError::Leased(wit::Leased { entity: entity.into(), holder, expires_at_ms })
            }
            model::Denial::StaleFence { entity, token, current } => {
                wit::WriteError::StaleFence(wit::StaleFence { entity: entity.into(), token, current })
            }
        }
    }
}

impl From<WriteError> for wit::WriteError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Conflict(c) => wit::WriteError::Conflict(wit::Conflict {
                entity: c.entity.into(),
                expected: c.expected.into(),
                current_version: c.current_version,
                changed_by: c.changed_by,
                changed_at_ms: c.changed_at_ms,
                changed_fields: c.changed_fields,
                events_since: c.events_since.into_iter().map(Into::into).collect(),
            }),
            WriteError::Refused(Refusal::Forbidden(f)) => {
                let f = *f;
                wit::WriteError::Forbidden(wit::Forbidden {
                    entity: f.entity.into(),
                    field: f.field,
                    agent: f.agent,
                    writers: f.writers,
                })
            }
            WriteError::Refused(Refusal::Invalid(message)) => wit::WriteError::Invalid(message),
            WriteError::Denied(d) => (*d).into(),
        }
    }
}

impl wit::Host for InvocationState {}

impl kb::Host for InvocationState {
    async fn get(&mut self, entity: wit::EntityRef) -> wasmtime::Result<Result<Option<wit::Entity>, String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let found = gate.get(&caller, entity.into()).await?;
        Ok(found.map(|e| e.map(Into::into)))
    }

    async fn commit(
        &mut self,
        writes: Vec<wit::Write>,
        reason: String,
    ) -> wasmtime::Result<Result<Vec<u64>, wit::WriteError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let writes = writes
            .into_iter()
            .map(|w| model::Write {
                entity: w.entity.into(),
                expect: w.expect.into(),
                set: w.set.into_iter().map(|f| (f.name, f.value.into())).collect(),
                unset: w.unset,
                fence: w.fence,
            })
            .collect();
        Ok(gate.commit(&caller, writes, reason).await?.map_err(Into::into))
    }

    async fn history(
        &mut self,
        entity: wit::EntityRef,
        after_seq: u64,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<wit::Event>, String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let events = gate.history(&caller, entity.into(), after_seq, limit).await?;
        Ok(events.map(|v| v.into_iter().map(Into::into).collect()))
    }

    async fn recent(
        &mut self,
        entity: wit::EntityRef,
        within_ms: u64,
    ) -> wasmtime::Result<Result<Vec<wit::Event>, String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let events = gate.recent(&caller, entity.into(), within_ms).await?;
        Ok(events.map(|v| v.into_iter().map(Into::into).collect()))
    }
}

impl coord::Host for InvocationState {
    async fn act(
        &mut self,
        kind: String,
        payload: String,
        entity: wit::EntityRef,
        based_on: u64,
        idempotency_key: Option<String>,
    ) -> wasmtime::Result<Result<u64, wit::WriteError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate.act(&caller, kind, payload, entity.into(), based_on, idempotency_key).await?.map_err(Into::into))
    }

    async fn request_change(
        &mut self,
        owner: String,
        entity: wit::EntityRef,
        proposed: Vec<wit::Field>,
        reason: String,
    ) -> wasmtime::Result<Result<u64, wit::WriteError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let proposed = proposed.into_iter().map(|f| (f.name, f.value.into())).collect();
        Ok(gate.request_change(&caller, owner, entity.into(), proposed, reason).await?.map_err(Into::into))
    }

    async fn resolve_change(
        &mut self,
        request: u64,
        applied: bool,
        reason: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate.resolve_change(&caller, request, applied, reason).await?)
    }

    async fn lease(
        &mut self,
        entity: wit::EntityRef,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<wit::LeaseGrant, wit::WriteError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate
            .lease(&caller, entity.into(), ttl_ms)
            .await?
            .map(|l| wit::LeaseGrant { token: l.token, expires_at_ms: l.expires_at_ms })
            .map_err(Into::into))
    }

    async fn renew(
        &mut self,
        entity: wit::EntityRef,
        token: u64,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<wit::LeaseGrant, wit::WriteError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate
            .renew(&caller, entity.into(), token, ttl_ms)
            .await?
            .map(|l| wit::LeaseGrant { token: l.token, expires_at_ms: l.expires_at_ms })
            .map_err(Into::into))
    }

    async fn release(&mut self, entity: wit::EntityRef, token: u64) -> wasmtime::Result<bool> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate.release(&caller, entity.into(), token).await?)
    }

    async fn changes_since_read(
        &mut self,
        entity: wit::EntityRef,
    ) -> wasmtime::Result<Result<Vec<wit::Event>, String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let events = gate.changes_since_read(&caller, entity.into()).await?;
        Ok(events.map(|v| v.into_iter().map(Into::into).collect()))
    }
}

impl log::Host for InvocationState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let name = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "concord::agent", "[{}] {message}", caller.agent)
            }
            log::Level::Debug => {
                tracing::debug!(target: "concord::agent", "[{}] {message}", caller.agent)
            }
            log::Level::Info => {
                tracing::info!(target: "concord::agent", "[{}] {message}", caller.agent)
            }
            log::Level::Warn => {
                tracing::warn!(target: "concord::agent", "[{}] {message}", caller.agent)
            }
            log::Level::Error => {
                tracing::error!(target: "concord::agent", "[{}] {message}", caller.agent)
            }
        }
        gate.log(&caller, name, &message).await?;
        Ok(())
    }
}

impl wit_model::Host for InvocationState {
    async fn granted(&mut self) -> wasmtime::Result<Vec<String>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        Ok(gate.model_granted(&caller).await?)
    }

    async fn complete(
        &mut self,
        request: wit_model::Request,
    ) -> wasmtime::Result<Result<wit_model::Completion, wit_model::ModelError>> {
        let (gate, caller) = (self.gate.clone(), self.caller.clone());
        let request = crate::gate::ModelRequest {
            model: request.model,
            messages: request
                .messages
                .into_iter()
                .map(|m| crate::gate::ChatMessage { role: m.role, content: m.content })
                .collect(),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
        };
        Ok(match gate.model_complete(&caller, request).await? {
            Ok(c) => Ok(wit_model::Completion {
                content: c.content,
                model: c.model,
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                finish_reason: c.finish_reason,
            }),
            Err(crate::gate::ModelError::Refused(why)) => Err(wit_model::ModelError::Refused(why)),
            Err(crate::gate::ModelError::Unavailable(why)) => Err(wit_model::ModelError::Unavailable(why)),
            Err(crate::gate::ModelError::Invalid(why)) => Err(wit_model::ModelError::Invalid(why)),
        })
    }
}

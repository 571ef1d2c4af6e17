//! Operators over HTTP: pin, unpin, revert, lease breaks, import, and the audit's
//! checkpoints and key rotations. The acting human is the token's name
//! (`human:NAME` in the events and the audit), never a name the request
//! gives; each goes through the same store transactions as `concord pin`
//! and friends, and its answer waits until it is durable.

use super::auth::acting_human;
use super::error::{ApiError, ErrorBody, Json, Path};
use super::state::App;
use super::tokens::Principal;
use super::wire::{
    BreakLeaseRequest, CheckpointHead, CheckpointRequest, ImportAnswer, ImportRequest, KeyRequest, PinRequest,
    Recorded, RetryActionRequest, RevertRequest, UnpinRequest,
};
use crate::audit::{AuditDraft, calls};
use crate::coord::{import, operator};
use crate::kb::{ActionRecord, Event, Lease, Value};
use axum::Extension;
use axum::extract::State;
use std::sync::Arc;

fn reason_of(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_reason",
            "give a `reason`: it is shown to every agent refused and kept in the audit",
        ));
    }
    if reason.len() > 4096 {
        return Err(ApiError::unprocessable("invalid_reason", "a `reason` is at most 4096 bytes"));
    }
    Ok(())
}

/// Set fields of an entity and pin them: agent writes to them are refused
/// until they are unpinned.
#[utoipa::path(post, path = "/v1/entities/{kind}/{id}/pin", tag = "operator",
    params(("kind" = String, Path, example = "customer"), ("id" = String, Path, example = "acme")),
    request_body = PinRequest,
    responses(
        (status = 200, description = "The pin's event", body = Event),
        (status = 409, description = "Refused (the entity does not exist, say)", body = ErrorBody),
        (status = 422, description = "A bad field or value", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pin(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path((kind, id)): Path<(String, String)>,
    Json(req): Json<PinRequest>,
) -> Result<Json<Event>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    let entity = app.entity(kind, id)?;
    reason_of(&req.reason)?;
    if req.set.is_empty() {
        return Err(ApiError::unprocessable("invalid_pin", "`set` names no field to pin"));
    }
    let policy = app.host.gate().policy();
    let schema = policy.schema();
    let def = schema.check_ref(&entity).map_err(|e| ApiError::unprocessable("invalid_entity", e))?;
    let mut fields: Vec<(String, Value)> = Vec::new();
    for (name, json) in &req.set {
        let field = def.fields.get(name).ok_or_else(|| {
            let known: Vec<&str> = def.fields.keys().map(String::as_str).collect();
            ApiError::unprocessable(
                "invalid_field",
                format!("kind `{}` has no field `{name}` (fields: {})", entity.kind, known.join(", ")),
            )
        })?;
        let value = import::from_json(field.ty, json)
            .map_err(|e| ApiError::unprocessable("invalid_value", format!("{}.{name}: {e}", entity.kind)))?;
        fields.push((name.clone(), value));
    }
    let event = app
        .blocking(move |app| Ok(operator::pin(app.host.store().as_ref(), &entity, &fields, &by, &req.reason)?))
        .await;
    Ok(Json(app.durable_result(event).await?))
}

/// Release pinned fields.
#[utoipa::path(post, path = "/v1/entities/{kind}/{id}/unpin", tag = "operator",
    params(("kind" = String, Path, example = "customer"), ("id" = String, Path, example = "acme")),
    request_body = UnpinRequest,
    responses(
        (status = 200, description = "The unpin's event", body = Event),
        (status = 409, description = "Refused (a field is not pinned, say)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn unpin(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path((kind, id)): Path<(String, String)>,
    Json(req): Json<UnpinRequest>,
) -> Result<Json<Event>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    let entity = app.entity(kind, id)?;
    reason_of(&req.reason)?;
    if req.fields.is_empty() {
        return Err(ApiError::unprocessable("invalid_unpin", "`fields` names no field to unpin"));
    }
    let event = app
        .blocking(move |app| Ok(operator::unpin(app.host.store().as_ref(), &entity, &req.fields, &by, &req.reason)?))
        .await;
    Ok(Json(app.durable_result(event).await?))
}

/// Break the entity's live lease, whoever holds it (a holder that is stuck
/// or gone). The holder's fencing token goes stale at once.
#[utoipa::path(post, path = "/v1/entities/{kind}/{id}/lease/break", tag = "operator",
    params(("kind" = String, Path, example = "customer"), ("id" = String, Path, example = "acme")),
    request_body = BreakLeaseRequest,
    responses(
        (status = 200, description = "The lease that was broken", body = Lease),
        (status = 409, description = "No lease is live on the entity", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn break_lease(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path((kind, id)): Path<(String, String)>,
    Json(req): Json<BreakLeaseRequest>,
) -> Result<Json<Lease>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    let entity = app.entity(kind, id)?;
    reason_of(&req.reason)?;
    let lease =
        app.blocking(move |app| Ok(operator::break_lease(app.host.store().as_ref(), &entity, &by, &req.reason)?)).await;
    Ok(Json(app.durable_result(lease).await?))
}

/// Put an action from the dead letter back in the outbox, its attempts
/// counted afresh; it is delivered at the next round.
#[utoipa::path(post, path = "/v1/actions/{id}/retry", tag = "operator",
    params(("id" = u64, Path, description = "The action (see /v1/actions)")),
    request_body = RetryActionRequest,
    responses(
        (status = 200, description = "The action, back in the outbox", body = ActionRecord),
        (status = 409, description = "No such action, or not in the dead letter", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retry_action(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<u64>,
    Json(req): Json<RetryActionRequest>,
) -> Result<Json<ActionRecord>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    reason_of(&req.reason)?;
    let action =
        app.blocking(move |app| Ok(operator::retry_action(app.host.store().as_ref(), id, &by, &req.reason)?)).await;
    let action = app.durable_result(action).await?;
    // Delivered now, not at the next trigger.
    let host = app.host.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = host.deliver_actions() {
            tracing::warn!("actions not delivered yet: {e}");
        }
    });
    Ok(Json(action))
}

/// Undo an event by appending a compensating one (history is never
/// edited). Refused, naming them, if later events changed the same fields,
/// unless `force`.
#[utoipa::path(post, path = "/v1/events/{seq}/revert", tag = "operator",
    params(("seq" = u64, Path, description = "The event to undo")),
    request_body = RevertRequest,
    responses(
        (status = 200, description = "The compensating event", body = Event),
        (status = 409, description = "Refused, and why", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn revert(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Path(seq): Path<u64>,
    Json(req): Json<RevertRequest>,
) -> Result<Json<Event>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    reason_of(&req.reason)?;
    let event = app
        .blocking(move |app| Ok(operator::revert(app.host.store().as_ref(), seq, &by, &req.reason, req.force)?))
        .await;
    Ok(Json(app.durable_result(event).await?))
}

/// Import one batch of entities, all or nothing: each row is checked
/// against the schema and names the version it expects (`absent` by
/// default).
#[utoipa::path(post, path = "/v1/entities:import", tag = "operator",
    request_body = ImportRequest,
    responses(
        (status = 200, description = "Imported: the events, in row order", body = ImportAnswer),
        (status = 409, description = "A row's expectation did not hold: nothing was written", body = ErrorBody),
        (status = 422, description = "Rows that do not fit: each named by its line, nothing written", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn import_rows(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<ImportRequest>,
) -> Result<Json<ImportAnswer>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    if req.rows.len() > import::MAX_BATCH {
        return Err(ApiError::unprocessable(
            "batch_too_large",
            format!("a batch takes at most {} rows; split it (`concord import` does)", import::MAX_BATCH),
        ));
    }
    let rows = import::check_rows(app.host.gate().policy().schema(), &req.rows).map_err(import_error)?;
    let source = req.source.unwrap_or_else(|| "the API".into());
    let events = app
        .blocking(move |app| import::import(app.host.store().as_ref(), &rows, &by, &source).map_err(import_error))
        .await;
    let events = app.durable_result(events).await?;
    Ok(Json(ImportAnswer { imported: events.len(), events }))
}

fn import_error(e: import::ImportError) -> ApiError {
    match e {
        import::ImportError::Rows(rows) => {
            let mut err = ApiError::unprocessable("invalid_rows", import::ImportError::Rows(rows.clone()).to_string());
            err.body.rows = rows;
            err
        }
        import::ImportError::Conflict { line, .. } => {
            let mut err = ApiError::conflict("conflict", e.to_string());
            err.body.rows = vec![import::RowError { line, problem: e.to_string() }];
            err
        }
        import::ImportError::Store(s) => s.into(),
    }
}

fn hex_key(key: &str) -> Result<(), ApiError> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_key", "`public_key` is an Ed25519 public key: 64 hex digits"))
    }
}

/// Verify the chain and give its head to sign: the operator signs it with
/// a key that never leaves their machine (`concord audit checkpoint`).
/// Recorded in the audit.
#[utoipa::path(post, path = "/v1/audit/checkpoint", tag = "operator",
    request_body = CheckpointRequest,
    responses(
        (status = 200, description = "The verified head", body = CheckpointHead),
        (status = 409, description = "The chain is broken or empty", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn checkpoint(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<CheckpointRequest>,
) -> Result<Json<CheckpointHead>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    hex_key(&req.public_key)?;
    let head = app
        .blocking(move |app| {
            let store = app.host.store();
            let (seq, head) = crate::audit::checkpoint::head(store.as_ref()).map_err(|e| match e {
                crate::audit::checkpoint::CheckpointError::Store(s) => ApiError::from(s),
                other => ApiError::conflict("not_checkpointable", other.to_string()),
            })?;
            let at_ms = crate::kb::now_ms();
            let mut draft = AuditDraft::host(
                calls::CHECKPOINT,
                &app.host.config().digest,
                serde_json::json!({ "seq": seq, "head": head, "public_key": req.public_key }),
                format!("checkpoint of entry {seq} handed to human:{by} to sign with key {}", req.public_key),
            );
            draft.agent = format!("human:{by}");
            store.append_audit(draft)?;
            Ok(CheckpointHead { seq, head, at_ms })
        })
        .await?;
    Ok(Json(app.durable(head).await?))
}

/// Record a new audit signing key (`concord audit keygen`).
#[utoipa::path(post, path = "/v1/audit/keys", tag = "operator",
    request_body = KeyRequest,
    responses((status = 200, description = "Recorded", body = Recorded)),
    security(("bearer" = [])))]
pub async fn key(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<KeyRequest>,
) -> Result<Json<Recorded>, ApiError> {
    let by = acting_human(&principal, req.by.as_deref())?;
    hex_key(&req.public_key)?;
    let entry = app
        .blocking(move |app| {
            let mut draft = AuditDraft::host(
                calls::KEY_ROTATED,
                &app.host.config().digest,
                serde_json::json!({ "public_key": req.public_key }),
                format!("new audit signing key {}", req.public_key),
            );
            draft.agent = format!("human:{by}");
            Ok(app.host.store().append_audit(draft)?)
        })
        .await?;
    Ok(Json(app.durable(Recorded { audit: entry.seq }).await?))
}

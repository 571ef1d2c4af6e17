//! Reads over HTTP, with the JSON the CLI's `--json` prints: entities,
//! histories, the audit (every filter of `concord audit`, paged by a seq
//! cursor), verification, traces, conflicts, actions, agents and replay.
//! Each answer waits until what it shows is durable.

use super::error::{ApiError, Json, Path, Query};
use super::state::App;
use super::wire::{
    ActionPage, AgentList, AgentView, AuditPage, ChangeRequestPage, EntityPage, EntityView, EventPage, ScheduleList,
    SchemaView, TraceView, VerifyRequest, VerifyView, WhoAmI,
};
use crate::audit::{AuditFilter, Decision};
use crate::coord::conflicts::{self, Report};
use crate::kb::{AtPoint, EntityRef, ReplayReport};
use axum::extract::State;
use serde::Deserialize;
use std::sync::Arc;

/// The most items one page holds.
pub const MAX_PAGE: usize = 1000;
/// A page's size when none is asked for.
pub const DEFAULT_PAGE: usize = 100;

fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(ApiError::unprocessable("invalid_limit", "`limit` must be at least 1")),
        Some(n) if n > MAX_PAGE => Err(ApiError::unprocessable(
            "invalid_limit",
            format!("`limit` is at most {MAX_PAGE}; page on with the `next` cursor"),
        )),
        Some(n) => Ok(n),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// The state after event SEQ, or at a time: ms since the epoch (13
    /// digits) or an age such as `10m`.
    pub at: Option<String>,
}

/// An entity's current state (or its state in the past).
#[utoipa::path(get, path = "/v1/entities/{kind}/{id}", tag = "read",
    params(("kind" = String, Path, example = "customer"), ("id" = String, Path, example = "acme"), AtQuery),
    responses(
        (status = 200, description = "The entity", body = EntityView),
        (status = 404, description = "It does not exist (then)", body = super::error::ErrorBody),
        (status = 422, description = "A bad entity or `at`", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn entity(
    State(app): State<Arc<App>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<AtQuery>,
) -> Result<Json<EntityView>, ApiError> {
    let e = app.entity(kind, id)?;
    let at: Option<AtPoint> = match &q.at {
        Some(s) => Some(s.parse().map_err(|m: String| ApiError::unprocessable("invalid_at", m))?),
        None => None,
    };
    let found = app
        .blocking(move |app| {
            let store = app.host.store();
            let found = match at {
                Some(at) => store.get_at(&e, at)?,
                None => store.get(&e)?,
            };
            let mut view = found.map(|f| EntityView::of(&f)).ok_or_else(|| {
                ApiError::not_found("not_found", format!("{e} does not exist (see its history, or check the id)"))
            })?;
            // Leases and pins are things of the present: shown only when no
            // `at` is.
            if at.is_none() {
                view.lease = store.live_lease(&e, crate::kb::now_ms())?;
                view.pins = store.pins(&e)?;
            }
            Ok(view)
        })
        .await?;
    Ok(Json(app.durable(found).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Only items after this cursor (an event seq, an action id).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// An entity's events: who changed which fields, when and why.
#[utoipa::path(get, path = "/v1/entities/{kind}/{id}/history", tag = "read",
    params(("kind" = String, Path, example = "customer"), ("id" = String, Path, example = "acme"), PageQuery),
    responses(
        (status = 200, description = "A page of its events, oldest first", body = EventPage),
        (status = 422, description = "A bad entity", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn history(
    State(app): State<Arc<App>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let e = app.entity(kind, id)?;
    let limit = page_size(q.limit)?;
    let after = q.after.unwrap_or(0);
    let events = app.blocking(move |app| Ok(app.host.store().history(&e, after, limit)?)).await?;
    let next = (events.len() == limit).then(|| events.last().map(|e| e.seq)).flatten();
    Ok(Json(app.durable(EventPage { events, next }).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only entities of this kind.
    pub kind: Option<String>,
    /// Only entities after this key (`kind/id`): the `next` of a page.
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Current entities in key order: `concord export`, a page at a time.
#[utoipa::path(get, path = "/v1/entities", tag = "read",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of entities", body = EntityPage),
        (status = 422, description = "An unknown kind", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn entities(State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> Result<Json<EntityPage>, ApiError> {
    let limit = page_size(q.limit)?;
    if let Some(k) = &q.kind
        && !app.host.gate().policy().schema().kinds.contains_key(k)
    {
        let policy = app.host.gate().policy();
        let known: Vec<&String> = policy.schema().kinds.keys().collect();
        return Err(ApiError::unprocessable(
            "invalid_kind",
            format!(
                "unknown entity kind `{k}` (declared kinds: {})",
                known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let page = app
        .blocking(move |app| {
            let found = app.host.store().list(q.kind.as_deref(), q.after.as_deref(), limit)?;
            let next = (found.len() == limit).then(|| found.last().map(|e| e.entity.key())).flatten();
            Ok(EntityPage { entities: found.iter().map(EntityView::of).collect(), next })
        })
        .await?;
    Ok(Json(app.durable(page).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only calls by this agent.
    pub agent: Option<String>,
    /// Only calls touching this entity (`kind/id`).
    pub entity: Option<String>,
    /// Only this call, such as `kb.commit`.
    pub call: Option<String>,
    /// Only this decision: allowed, forbidden, conflict, invalid, failed,
    /// trapped, deferred, denied, pinned, leased, stopped, fault.
    pub outcome: Option<String>,
    /// Only this invocation.
    pub invocation: Option<u64>,
    /// Only entries at or after this time (ms since the epoch, or an age
    /// such as `10m`).
    pub since: Option<String>,
    /// Only entries at or before this time.
    pub until: Option<String>,
    /// Read forward: entries after this seq, oldest first.
    pub after: Option<u64>,
    /// Read back: entries before this seq (the newest of them).
    pub before: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Turns audit query parameters into a filter (shared with the stream).
pub fn audit_filter(q: &AuditQuery) -> Result<AuditFilter, ApiError> {
    let time = |s: &Option<String>, name: &str| -> Result<Option<u64>, ApiError> {
        s.as_deref()
            .map(crate::kb::parse_time)
            .transpose()
            .map_err(|e| ApiError::unprocessable("invalid_time", format!("`{name}`: {e}")))
    };
    let decision: Option<Decision> = match &q.outcome {
        Some(s) => Some(s.parse().map_err(|e: String| ApiError::unprocessable("invalid_outcome", e))?),
        None => None,
    };
    if let Some(e) = &q.entity {
        e.parse::<EntityRef>().map_err(|m: String| ApiError::unprocessable("invalid_entity", m))?;
    }
    if q.after.is_some() && q.before.is_some_and(|b| q.after.is_some_and(|a| b <= a)) {
        return Err(ApiError::unprocessable("invalid_cursor", "`before` must be greater than `after`"));
    }
    Ok(AuditFilter {
        agent: q.agent.clone(),
        entity: q.entity.clone(),
        call: q.call.clone(),
        decision,
        invocation: q.invocation,
        trace: None,
        since_ms: time(&q.since, "since")?,
        until_ms: time(&q.until, "until")?,
        after: q.after,
        before: q.before,
        limit: None,
    })
}

/// Audit entries, oldest first: the newest page, or a page after (or
/// before) a seq cursor.
#[utoipa::path(get, path = "/v1/audit", tag = "read",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 422, description = "A bad filter", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn audit(State(app): State<Arc<App>>, Query(q): Query<AuditQuery>) -> Result<Json<AuditPage>, ApiError> {
    let mut filter = audit_filter(&q)?;
    let limit = page_size(q.limit)?;
    filter.limit = Some(limit);
    let forward = filter.forward();
    let entries = app.blocking(move |app| Ok(app.host.store().audit(&filter)?)).await?;
    let next = match (entries.len() == limit, forward) {
        (false, _) => None,
        (true, true) => entries.last().map(|e| e.seq),
        (true, false) => entries.first().map(|e| e.seq),
    };
    Ok(Json(app.durable(AuditPage { entries, next }).await?))
}

/// Recompute the audit hash chain.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "read",
    responses((status = 200, description = "Intact, or the first bad entry", body = VerifyView)),
    security(("bearer" = [])))]
pub async fn verify(State(app): State<Arc<App>>) -> Result<Json<VerifyView>, ApiError> {
    let _whole_log = app.whole_log.acquire().await.map_err(|e| ApiError::host(e.to_string()))?;
    let v = app.blocking(|app| Ok(app.host.store().verify_audit()?)).await?;
    Ok(Json(app.durable(VerifyView::from(v)).await?))
}

/// Recompute the chain and prove it still extends a signed checkpoint.
#[utoipa::path(post, path = "/v1/audit/verify", tag = "read",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Intact and extending it, or what is wrong", body = VerifyView),
        (status = 422, description = "A bad checkpoint", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn verify_checkpoint(
    State(app): State<Arc<App>>,
    Json(req): Json<VerifyRequest>,
) -> Result<Json<VerifyView>, ApiError> {
    let _whole_log = app.whole_log.acquire().await.map_err(|e| ApiError::host(e.to_string()))?;
    let v = app
        .blocking(move |app| {
            crate::audit::checkpoint::verify(app.host.store().as_ref(), &req.checkpoint, req.public_key.as_deref())
                .map_err(|e| match e {
                    crate::audit::checkpoint::CheckpointError::Store(s) => ApiError::from(s),
                    other => ApiError::unprocessable("invalid_checkpoint", other.to_string()),
                })
        })
        .await?;
    Ok(Json(app.durable(VerifyView::from(v)).await?))
}

/// Every entry of an invocation's causation chain: what caused it, and
/// everything it caused.
#[utoipa::path(get, path = "/v1/audit/trace/{id}", tag = "read",
    params(("id" = u64, Path, description = "An invocation of the chain"), PageQuery),
    responses(
        (status = 200, description = "The chain's invocations and a page of their entries", body = TraceView),
        (status = 404, description = "No such invocation", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn trace(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Query(q): Query<PageQuery>,
) -> Result<Json<TraceView>, ApiError> {
    let limit = page_size(q.limit)?;
    let _whole_log = app.whole_log.acquire().await.map_err(|e| ApiError::host(e.to_string()))?;
    let view = app
        .blocking(move |app| {
            let store = app.host.store();
            let set = crate::coord::trace::chain(store.as_ref(), id).map_err(|e| match e {
                crate::coord::trace::TraceError::NoSuchInvocation(_) => {
                    ApiError::not_found("unknown_invocation", e.to_string())
                }
                crate::coord::trace::TraceError::Store(s) => ApiError::from(s),
            })?;
            let filter = AuditFilter {
                trace: Some(set.clone()),
                after: Some(q.after.unwrap_or(0)),
                limit: Some(limit),
                ..Default::default()
            };
            let entries = store.audit(&filter)?;
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.seq)).flatten();
            Ok(TraceView { invocations: set.into_iter().collect(), entries, next })
        })
        .await?;
    Ok(Json(app.durable(view).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConflictsQuery {
    /// How close in time two changes must be to count as a ping-pong, in
    /// ms (default 600000, at most 86400000).
    pub window_ms: Option<u64>,
}

/// Who gets in whose way: refusals per agent pair, entity and field;
/// ping-pongs; stopped and deepest cascades; stale acts.
#[utoipa::path(get, path = "/v1/conflicts", tag = "read",
    params(ConflictsQuery),
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 422, description = "A bad window", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn conflicts(State(app): State<Arc<App>>, Query(q): Query<ConflictsQuery>) -> Result<Json<Report>, ApiError> {
    let window = conflicts::check_window(q.window_ms.unwrap_or(600_000))
        .map_err(|e| ApiError::unprocessable("invalid_window", e))?;
    let _one_at_a_time = app.conflicts_lock.lock().await;
    let report = app.blocking(move |app| Ok(app.host.conflicts(window)?)).await?;
    Ok(Json(app.durable(report).await?))
}

/// Recorded actions (the outbox) and their delivery, oldest first.
#[utoipa::path(get, path = "/v1/actions", tag = "read",
    params(PageQuery),
    responses((status = 200, description = "A page of actions", body = ActionPage)),
    security(("bearer" = [])))]
pub async fn actions(State(app): State<Arc<App>>, Query(q): Query<PageQuery>) -> Result<Json<ActionPage>, ApiError> {
    let limit = page_size(q.limit)?;
    let after = q.after.unwrap_or(0);
    let page = app
        .blocking(move |app| {
            let actions: Vec<_> =
                app.host.store().actions()?.into_iter().filter(|a| a.id > after).take(limit).collect();
            let next = (actions.len() == limit).then(|| actions.last().map(|a| a.id)).flatten();
            Ok(ActionPage { actions, next })
        })
        .await?;
    Ok(Json(app.durable(page).await?))
}

/// The agents in service: digest, load time, and the fields each may
/// write; and the files of the agents folder refused since they changed.
#[utoipa::path(get, path = "/v1/agents", tag = "read",
    responses((status = 200, description = "The agents", body = AgentList)),
    security(("bearer" = [])))]
pub async fn agents(State(app): State<Arc<App>>) -> Json<AgentList> {
    let config = app.host.config();
    let agents = app.host.agents().iter().map(|a| AgentView::of(a, &config)).collect();
    Json(AgentList { agents, refused: app.host.refused_agents() })
}

/// Who the token is and its role (the console shows it, and offers only
/// what the role may do; the API checks each request anyway).
#[utoipa::path(get, path = "/v1/whoami", tag = "read",
    responses((status = 200, description = "The token's name and role", body = WhoAmI)),
    security(("bearer" = [])))]
pub async fn whoami(
    State(app): State<Arc<App>>,
    axum::Extension(principal): axum::Extension<super::tokens::Principal>,
) -> Json<WhoAmI> {
    Json(WhoAmI { name: principal.name.clone(), role: principal.role.as_str().into(), open: app.tokens.is_open() })
}

/// The declared kinds: each field's type and who may write it (its owner,
/// or the agents sharing it), and the action kinds.
#[utoipa::path(get, path = "/v1/schema", tag = "read",
    responses((status = 200, description = "The schema of the config in force", body = SchemaView)),
    security(("bearer" = [])))]
pub async fn schema(State(app): State<Arc<App>>) -> Json<SchemaView> {
    Json(SchemaView::from(app.host.gate().policy().schema()))
}

/// Change requests an answer looks through at most, to fill a page of
/// matches: past it the page is short, and `next` says where to go on.
const REQUEST_SCAN: usize = 50_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestsQuery {
    /// Only requests about this entity (`kind/id`).
    pub entity: Option<String>,
    /// Only open requests (`true`) or only closed ones (`false`).
    pub open: Option<bool>,
    /// Only requests with ids (event seqs) above this.
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Change requests (handoffs), oldest first: who asked whom to change
/// what, and what the owner decided.
#[utoipa::path(get, path = "/v1/change-requests", tag = "read",
    params(RequestsQuery),
    responses(
        (status = 200, description = "A page of requests", body = ChangeRequestPage),
        (status = 422, description = "A bad entity", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn change_requests(
    State(app): State<Arc<App>>,
    Query(q): Query<RequestsQuery>,
) -> Result<Json<ChangeRequestPage>, ApiError> {
    let limit = page_size(q.limit)?;
    let entity = q.entity.as_deref().map(|s| app.entity_ref(s)).transpose()?;
    let page = app
        .blocking(move |app| {
            let store = app.host.store();
            let (mut requests, mut cursor, mut scanned) = (Vec::new(), q.after.unwrap_or(0), 0);
            loop {
                let round = store.change_requests(cursor, 256)?;
                let exhausted = round.len() < 256;
                for r in round {
                    cursor = r.id;
                    scanned += 1;
                    let open = r.applied.is_none();
                    if entity.as_ref().is_none_or(|e| *e == r.entity) && q.open.is_none_or(|o| o == open) {
                        requests.push(r);
                        if requests.len() == limit {
                            return Ok(ChangeRequestPage { requests, next: Some(cursor) });
                        }
                    }
                }
                if exhausted {
                    return Ok(ChangeRequestPage { requests, next: None });
                }
                if scanned >= REQUEST_SCAN {
                    return Ok(ChangeRequestPage { requests, next: Some(cursor) });
                }
            }
        })
        .await?;
    Ok(Json(app.durable(page).await?))
}

/// The schedules: each one's next fire, its last fire and that fire's
/// outcome, and a run under way.
#[utoipa::path(get, path = "/v1/schedules", tag = "read",
    responses((status = 200, description = "The schedules", body = ScheduleList)),
    security(("bearer" = [])))]
pub async fn schedules(State(app): State<Arc<App>>) -> Result<Json<ScheduleList>, ApiError> {
    let list = app
        .blocking(|app| {
            let now_ms = app.clock.now_ms();
            let running = app.live.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let schedules = crate::coord::schedule::views(
                &app.host.config().schedules,
                app.host.store().as_ref(),
                now_ms,
                &running,
            )?;
            Ok(ScheduleList { schedules, now_ms })
        })
        .await?;
    Ok(Json(list))
}

/// Rebuild the projection from the event log and compare (the check; it
/// changes nothing).
#[utoipa::path(get, path = "/v1/replay", tag = "read",
    responses((status = 200, description = "What the replay found", body = ReplayReport)),
    security(("bearer" = [])))]
pub async fn replay(State(app): State<Arc<App>>) -> Result<Json<ReplayReport>, ApiError> {
    let _whole_log = app.whole_log.acquire().await.map_err(|e| ApiError::host(e.to_string()))?;
    let report = app.blocking(|app| Ok(app.host.store().replay()?)).await?;
    Ok(Json(app.durable(report).await?))
}

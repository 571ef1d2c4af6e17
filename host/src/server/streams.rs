//! Server-Sent Events: `GET /v1/events` (committed events) and `GET
//! /v1/audit/stream` (audit entries), with the filters of their queries.
//!
//! Each SSE event's id is its seq. A client that reconnects with
//! `Last-Event-ID` (or `?after=`) gets every item after it, none twice and
//! none missed, across host restarts too: the stream reads the store from
//! the cursor on, then waits for more to become durable and reads again.
//! Like every answer, an item is sent only once it is durable (read, then
//! sync, then send), so a crash never takes back what a client saw.

use super::error::{ApiError, Query};
use super::reads::{AuditQuery, audit_filter};
use super::state::App;
use super::tokens::Principal;
use crate::audit::AuditFilter;
use crate::kb::Event;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Items read from the store per round.
const ROUND: usize = 256;

/// The cursor: `Last-Event-ID` (a reconnect) wins over `?after=`.
fn cursor(headers: &HeaderMap, after: Option<u64>) -> Result<u64, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "Last-Event-ID must be the seq of the last event received")
        }),
        None => Ok(after.unwrap_or(0)),
    }
}

/// What a stream reads next: the items after the cursor, up to `ROUND`,
/// and the new cursor (which may pass items that do not match).
type Read<T> = Box<dyn Fn(&App, u64) -> Result<(Vec<T>, u64), ApiError> + Send + Sync>;

struct Stream_<T> {
    app: Arc<App>,
    /// Who opened it: the stream ends once its token no longer holds.
    principal: Principal,
    _permit: tokio::sync::OwnedSemaphorePermit,
    read: Arc<Read<T>>,
    cursor: u64,
    ready: VecDeque<T>,
    durable: tokio::sync::watch::Receiver<u64>,
    name: &'static str,
    seq: fn(&T) -> u64,
}

/// An SSE stream of whatever `read` gives, live.
fn sse<T: serde::Serialize + Send + 'static>(
    app: Arc<App>,
    principal: Principal,
    cursor: u64,
    name: &'static str,
    seq: fn(&T) -> u64,
    read: Read<T>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let permit = app.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "too_many_streams",
            format!(
                "{} streams are open, the most this server keeps; close one, or try again later",
                super::state::MAX_STREAMS
            ),
            5,
        )
    })?;
    let durable = app.host.store().durable_changes();
    let mut shutdown = app.shutdown.subscribe();
    let state = Stream_ {
        app,
        principal,
        _permit: permit,
        read: Arc::new(read),
        cursor,
        ready: VecDeque::new(),
        durable,
        name,
        seq,
    };
    let items = stream::unfold(state, |mut s| async move {
        loop {
            if !s.app.tokens.still_valid(&s.principal) {
                // The token was removed or changed: what it opened ends.
                return None;
            }
            if let Some(item) = s.ready.pop_front() {
                let id = (s.seq)(&item);
                let event = match SseEvent::default().id(id.to_string()).event(s.name).json_data(&item) {
                    Ok(e) => e,
                    Err(e) => SseEvent::default().event("error").data(format!("cannot encode item {id}: {e}")),
                };
                return Some((Ok(event), s));
            }
            // Marked seen before reading, so a change that lands while we
            // read wakes the next wait.
            s.durable.borrow_and_update();
            let (read, at) = (s.read.clone(), s.cursor);
            let app = s.app.clone();
            let found = tokio::task::spawn_blocking(move || read(&app, at)).await;
            let (items, next) = match found {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    tracing::warn!("a stream stopped: {}", e.body.detail);
                    return None;
                }
                Err(e) => {
                    tracing::warn!("a stream stopped: {e}");
                    return None;
                }
            };
            if !items.is_empty() {
                // Read, then sync, then send.
                if let Err(e) = s.app.host.gate().sync().await {
                    tracing::warn!("a stream stopped: {e}");
                    return None;
                }
            }
            s.cursor = next;
            s.ready.extend(items);
            // Something to send, or the cursor moved (there may be more).
            if !s.ready.is_empty() || next > at {
                continue;
            }
            // Wait for new durable items, looking at the token now and
            // then: an idle stream must end too once its token is gone.
            loop {
                tokio::select! {
                    changed = s.durable.changed() => match changed {
                        Ok(()) => break,
                        Err(_) => return None,
                    },
                    _ = tokio::time::sleep(super::tokens::RECHECK) => {
                        if !s.app.tokens.still_valid(&s.principal) {
                            return None;
                        }
                    }
                }
            }
        }
    });
    // Ends when the server shuts down, so the drain need not wait for it.
    let items = items.take_until(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    Ok(Sse::new(items).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this entity (`kind/id`).
    pub entity: Option<String>,
    /// Only events of entities of this kind.
    pub kind: Option<String>,
    /// Only events made by this agent (or `human:NAME`).
    pub agent: Option<String>,
    /// Start after this event seq (`Last-Event-ID` wins when both are given).
    pub after: Option<u64>,
}

/// Committed events, live (Server-Sent Events; each id is the event's seq).
#[utoipa::path(get, path = "/v1/events", tag = "stream",
    params(EventsQuery),
    responses(
        (status = 200, description = "`event` items: each an event as JSON", content_type = "text/event-stream", body = String),
        (status = 422, description = "A bad filter", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(app): State<Arc<App>>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let at = cursor(&headers, q.after)?;
    let entity = q.entity.as_deref().map(|s| app.entity_ref(s)).transpose()?;
    if let Some(k) = &q.kind
        && !app.host.gate().policy().schema().kinds.contains_key(k)
    {
        return Err(ApiError::unprocessable("invalid_kind", format!("unknown entity kind `{k}`")));
    }
    let (kind, agent) = (q.kind, q.agent);
    let read: Read<Event> = Box::new(move |app, after| {
        let store = app.host.store();
        let page = match &entity {
            Some(e) => store.history(e, after, ROUND)?,
            None => store.events(after, ROUND)?,
        };
        let next = page.last().map_or(after, |e| e.seq);
        let matching = page
            .into_iter()
            .filter(|e| kind.as_ref().is_none_or(|k| &e.entity.kind == k))
            .filter(|e| agent.as_ref().is_none_or(|a| &e.agent == a))
            .collect();
        Ok((matching, next))
    });
    sse(app, principal, at, "event", |e: &Event| e.seq, read)
}

/// Audit entries, live (Server-Sent Events; each id is the entry's seq).
#[utoipa::path(get, path = "/v1/audit/stream", tag = "stream",
    params(AuditQuery),
    responses(
        (status = 200, description = "`audit` items: each an audit entry as JSON", content_type = "text/event-stream", body = String),
        (status = 422, description = "A bad filter", body = super::error::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn audit(
    State(app): State<Arc<App>>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let mut filter = audit_filter(&q)?;
    if q.before.is_some() {
        return Err(ApiError::unprocessable("invalid_cursor", "a stream reads forward: give `after`, not `before`"));
    }
    let at = cursor(&headers, q.after)?;
    filter.after = None;
    let read: Read<crate::audit::AuditEntry> = Box::new(move |app, after| {
        let store = app.host.store();
        // The newest seq first, then the matches up to it: a round that
        // finds none still moves the cursor past what it read, and never
        // past an entry it did not read.
        let head = store.audit(&AuditFilter { limit: Some(1), ..Default::default() })?.last().map_or(after, |e| e.seq);
        if head <= after {
            return Ok((vec![], after));
        }
        let page = AuditFilter {
            after: Some(after),
            before: Some(head.saturating_add(1)),
            limit: Some(ROUND),
            ..filter.clone()
        };
        let entries = store.audit(&page)?;
        let next = if entries.len() >= ROUND { entries.last().map_or(after, |e| e.seq) } else { head };
        Ok((entries, next))
    });
    sse(app, principal, at, "audit", |e: &crate::audit::AuditEntry| e.seq, read)
}

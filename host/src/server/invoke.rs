//! Triggers over HTTP: `POST /v1/invoke/{agent}`, `GET
//! /v1/invocations/{id}` and `POST /v1/invocations/{id}/resume`.
//!
//! - Each trigger runs in a task of its own, so a client that goes away
//!   never cuts an invocation short; the request waits for the task's
//!   answer (or, with `?wait=false`, only for the invocation id).
//! - Admission: a trigger takes a permit for the whole of its cascade.
//!   There are as many as the instance pool has slots plus `[server]
//!   queue`; past them the answer is 503 with `Retry-After`, at once.
//! - Idempotency keys: the first request with a key reserves it in the
//!   store (durably) before anything runs, and stores its answer (durably)
//!   before it is sent. A retry gets that answer and runs nothing; a
//!   concurrent duplicate waits for the first one's answer; a key whose
//!   first request was cut short by a host stop is answered 409.
//! - Every answer waits until what it shows is durable.

use super::error::{ApiError, Json, Path, Query};
use super::state::App;
use super::tokens::Principal;
use super::wire::{InvocationAnswer, InvocationView, InvokeRequest, MAX_REPORT_BYTES};
use crate::audit::{AuditFilter, Decision, calls};
use crate::gate::Breakpoint;
use crate::host::InvokeError;
use crate::kb::{EntityRef, now_ms};
use crate::runtime::{Invocation, Message, Origin};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

mod registry;

pub use registry::Registry;
use registry::{KeyInFlight, KeyRefusal, KeyState, Progress};

/// `?wait=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// `false`: answer 202 with the invocation id as soon as it starts (or
    /// pauses), and let it run on. Default `true`: answer when it and
    /// everything it caused are done.
    pub wait: Option<bool>,
}

/// What the store keeps under an idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyRecord {
    fingerprint: String,
    /// `None` while the first request runs.
    answer: Option<InvocationAnswer>,
    /// The first request failed before anything ran: the key is free again.
    #[serde(default)]
    void: bool,
}

const MAX_KEY: usize = 256;

/// Checks a request's shape and builds its message.
fn message_of(app: &App, agent: &str, req: &InvokeRequest) -> Result<Message, ApiError> {
    if app.host.runtime().agent(agent).is_none() {
        let known: Vec<String> = app.host.agents().into_iter().map(|a| a.name).collect();
        return Err(ApiError::not_found(
            "unknown_agent",
            format!("no agent named `{agent}` is loaded (loaded: {})", known.join(", ")),
        ));
    }
    let kind = req.kind.trim();
    if kind.is_empty() || kind.len() > 256 || kind.chars().any(crate::policy::schema::deceptive) {
        return Err(ApiError::unprocessable(
            "invalid_kind",
            "`kind` must be 1 to 256 characters without control, bidirectional or invisible characters, such as `upsell`",
        ));
    }
    let entity = req.entity.as_deref().map(|s| app.entity_ref(s)).transpose()?;
    let body = req.body.clone().unwrap_or_else(|| serde_json::json!({}));
    Ok(Message { kind: kind.to_string(), entity, body: body.to_string() })
}

/// The idempotency key, from the body or the `Idempotency-Key` header.
fn key_of(req: &InvokeRequest, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("invalid_key", "the Idempotency-Key header is not ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let key = match (&req.idempotency_key, header) {
        (Some(a), Some(b)) if *a != b => {
            return Err(ApiError::unprocessable(
                "invalid_key",
                "`idempotency_key` and the Idempotency-Key header differ: send one",
            ));
        }
        (Some(a), _) => Some(a.clone()),
        (None, b) => b,
    };
    if let Some(k) = &key
        && (k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control))
    {
        return Err(ApiError::unprocessable(
            "invalid_key",
            format!("an idempotency key is 1 to {MAX_KEY} characters without control characters"),
        ));
    }
    Ok(key)
}

/// What a request is, for telling a retry from a different request
/// that reuses its key.
fn fingerprint(agent: &str, message: &Message, pause_before: Option<&str>) -> String {
    use sha2::Digest;
    let canonical = serde_json::from_str::<serde_json::Value>(&message.body).map(|v| v.to_string()).unwrap_or_default();
    let entity = message.entity.as_ref().map(EntityRef::key).unwrap_or_default();
    let text = format!("{agent}\0{}\0{entity}\0{canonical}\0{}", message.kind, pause_before.unwrap_or(""));
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The answer of a finished trigger: its root first, then what it caused.
fn answer_of(invocations: &[Invocation]) -> Option<InvocationAnswer> {
    let root = invocations.first()?;
    let view = |i: &Invocation| InvocationView {
        invocation: i.id,
        agent: i.agent.clone(),
        causation: i.causation,
        outcome: i.outcome.as_str().into(),
        report: crate::audit::bounded(i.outcome.text().to_string(), MAX_REPORT_BYTES),
        host_calls: i.host_calls,
    };
    let views: Vec<InvocationView> = invocations.iter().map(view).collect();
    Some(InvocationAnswer {
        invocation: root.id,
        agent: root.agent.clone(),
        status: "done".into(),
        outcome: Some(views[0].outcome.clone()),
        report: Some(views[0].report.clone()),
        host_calls: Some(root.host_calls),
        caused: invocations[1..].iter().map(|i| i.id).collect(),
        paused_before: None,
        invocations: views,
    })
}

fn invoke_error(e: InvokeError) -> ApiError {
    match e {
        InvokeError::UnknownAgent { .. } => ApiError::not_found("unknown_agent", e.to_string()),
        InvokeError::BadMessage(m) => ApiError::unprocessable("invalid_message", m),
        InvokeError::Host(e) => e.into(),
        InvokeError::Fault(e) => e.into(),
    }
}

fn running(id: u64, agent: &str, paused_before: Option<String>) -> InvocationAnswer {
    InvocationAnswer {
        invocation: id,
        agent: agent.into(),
        status: if paused_before.is_some() { "paused" } else { "running" }.into(),
        outcome: None,
        report: None,
        host_calls: None,
        caused: vec![],
        paused_before,
        invocations: vec![],
    }
}

/// Answers with `status`, and the invocation id for the request's log line.
fn respond(status: StatusCode, answer: InvocationAnswer, replayed: bool) -> Response {
    let id = answer.invocation;
    let mut response = (status, Json(answer)).into_response();
    response.extensions_mut().insert(super::observe::InvocationId(id));
    if replayed {
        response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    response
}

/// Trigger an agent.
///
/// Runs the invocation and everything it causes. By default the answer
/// comes when all of it is done; with `?wait=false` it is a 202 with the
/// invocation id, and `GET /v1/invocations/{id}` gives the result.
#[utoipa::path(
    post,
    path = "/v1/invoke/{agent}",
    tag = "invoke",
    params(("agent" = String, Path, description = "The agent's name"), InvokeQuery),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "Done: what it and its cascade did", body = InvocationAnswer),
        (status = 202, description = "Started (or paused), running on", body = InvocationAnswer),
        (status = 404, description = "No such agent", body = super::error::ErrorBody),
        (status = 409, description = "The key's first request was interrupted", body = super::error::ErrorBody),
        (status = 422, description = "A bad request", body = super::error::ErrorBody),
        (status = 503, description = "Full: try again after Retry-After", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn invoke(
    State(app): State<Arc<App>>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path(agent): Path<String>,
    Query(query): Query<InvokeQuery>,
    headers: HeaderMap,
    Json(req): Json<InvokeRequest>,
) -> Result<Response, ApiError> {
    let wait = query.wait.unwrap_or(true);
    let message = message_of(&app, &agent, &req)?;
    let pause_before = match &req.pause_before {
        None => None,
        Some(_) if !app.config.breakpoints => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "breakpoints_off",
                "`pause_before` is for tests and exact scenarios: set `breakpoints = true` under [server] in concord.toml to allow it",
            ));
        }
        Some(call) if !calls::AGENT_CALLS.contains(&call.as_str()) => {
            return Err(ApiError::unprocessable(
                "invalid_pause",
                format!("`pause_before`: `{call}` is not a host call; use one of {}", calls::AGENT_CALLS.join(", ")),
            ));
        }
        Some(call) => Some(call.clone()),
    };
    let key = key_of(&req, &headers)?;
    let print = fingerprint(&agent, &message, pause_before.as_deref());
    let Some(key) = key else {
        return run(&app, agent, message, pause_before, principal, None, wait).await;
    };

    // A duplicate of a request in flight waits for the first one.
    let (tx, first) = {
        let mut keys = app.invocations.keys();
        match keys.get(&key) {
            Some(inflight) => (None, Some(inflight.clone())),
            None => {
                let (tx, rx) = watch::channel(KeyState::Waiting);
                keys.insert(key.clone(), KeyInFlight { fingerprint: print.clone(), state: rx });
                (Some(tx), None)
            }
        }
    };
    if let Some(first) = first {
        if first.fingerprint != print {
            return Err(reused(&key));
        }
        return duplicate(&app, first.state, wait).await;
    }
    let tx = tx.unwrap_or_else(|| watch::channel(KeyState::Waiting).0);
    // From here the key is ours: whatever happens, waiters get our answer
    // and the key leaves the in-flight map. So this part runs in a task of
    // its own: a client that goes away mid-way (while the key is reserved,
    // say) must not leave the key in flight forever.
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = keyed(&app, &key, &print, agent, message, pause_before, principal, wait, &tx).await;
        if !matches!(&*tx.borrow(), KeyState::Answered(_))
            && let Err(e) = &result
        {
            tx.send_replace(KeyState::Answered(Err(e.into())));
        }
        // A 202 (not waiting) leaves the key to the trigger's task, which
        // answers the waiters when it is done.
        if matches!(&*tx.borrow(), KeyState::Answered(_)) {
            app.invocations.keys().remove(&key);
        }
        let _ = answer.send(result);
    });
    answered.await.map_err(|_| ApiError::host("the keyed request's task ended without an answer"))?
}

fn reused(key: &str) -> ApiError {
    ApiError::unprocessable(
        "key_reused",
        format!(
            "idempotency key `{key}` was first used for a different request (another agent, kind, entity or body); use a new key"
        ),
    )
}

/// Answers a duplicate from the first request's progress.
async fn duplicate(app: &App, mut state: watch::Receiver<KeyState>, wait: bool) -> Result<Response, ApiError> {
    loop {
        let now = state.borrow_and_update().clone();
        match now {
            KeyState::Answered(Ok(answer)) => return Ok(respond(StatusCode::OK, *answer, true)),
            KeyState::Answered(Err(refusal)) => return Err(refusal.into()),
            KeyState::Started(id) if !wait => {
                let agent = app.invocations.watch(id).map(|(a, _, _)| a).unwrap_or_default();
                return Ok(respond(StatusCode::ACCEPTED, running(id, &agent, None), true));
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            return Err(ApiError::host("the first request with this idempotency key ended without an answer"));
        }
    }
}

/// Runs a keyed request: the store's record first, then the trigger.
#[expect(clippy::too_many_arguments, reason = "the request, taken apart")]
async fn keyed(
    app: &Arc<App>,
    key: &str,
    print: &str,
    agent: String,
    message: Message,
    pause_before: Option<String>,
    principal: Principal,
    wait: bool,
    tx: &watch::Sender<KeyState>,
) -> Result<Response, ApiError> {
    let retention = app.config.idempotency_retention.as_millis() as u64;
    let now = now_ms();
    let stored = {
        let key = key.to_string();
        app.blocking(move |app| Ok(app.host.store().request_key(&key)?)).await?
    };
    let live = stored.filter(|(at, _)| at.saturating_add(retention) > now);
    let record = match live {
        Some((at_ms, bytes)) => Some((
            at_ms,
            serde_json::from_slice::<KeyRecord>(&bytes)
                .map_err(|e| ApiError::host(format!("the record of idempotency key `{key}` does not decode: {e}")))?,
        )),
        None => None,
    };
    if let Some((at_ms, record)) = record.filter(|(_, r)| !r.void) {
        if record.fingerprint != print {
            return Err(reused(key));
        }
        return match record.answer {
            Some(answer) => {
                tx.send_replace(KeyState::Answered(Ok(Box::new(answer.clone()))));
                Ok(respond(StatusCode::OK, answer, true))
            }
            None => Err(ApiError::conflict(
                "interrupted",
                format!(
                    "the first request with idempotency key `{key}` (at {at_ms} ms) did not finish (the host stopped, or failed, while it ran), so nothing more runs for it; see what it did with `concord audit --since {at_ms}` (its invocation.start names the key), then retry with a new key"
                ),
            )),
        };
    }
    // Reserved, durably, before anything runs: a crash from here on leaves
    // a record that refuses to run the request again.
    let reservation = serde_json::to_vec(&KeyRecord { fingerprint: print.into(), answer: None, void: false })
        .map_err(|e| ApiError::host(e.to_string()))?;
    let admitted = admit(app)?;
    {
        let key = key.to_string();
        app.blocking(move |app| {
            Ok(app.host.store().put_request_key(key, now, reservation, now.saturating_sub(retention))?)
        })
        .await?;
    }
    let keyed =
        Keyed { app: app.clone(), key: key.to_string(), at_ms: now, fingerprint: print.to_string(), state: tx.clone() };
    start(app, admitted, agent, message, pause_before, principal, Some(keyed), wait).await
}

/// A trigger without a key.
async fn run(
    app: &Arc<App>,
    agent: String,
    message: Message,
    pause_before: Option<String>,
    principal: Principal,
    keyed: Option<Keyed>,
    wait: bool,
) -> Result<Response, ApiError> {
    let admitted = admit(app)?;
    start(app, admitted, agent, message, pause_before, principal, keyed, wait).await
}

/// A trigger let in: its admission permit, and its place in what a
/// shutdown's drain waits for (taken at once, so the drain also waits for
/// a keyed trigger still writing its reservation).
struct Admitted {
    permit: tokio::sync::OwnedSemaphorePermit,
    in_flight: InFlight,
}

/// Takes an admission permit, or answers 503 at once.
fn admit(app: &Arc<App>) -> Result<Admitted, ApiError> {
    if app.shutting_down() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the host is shutting down; try again on its next start",
            5,
        ));
    }
    let permit = app.admission.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "busy",
            format!(
                "{} triggers are running or waiting (the pool and `queue` under [server]); try again shortly",
                app.admission_total
            ),
            1,
        )
    })?;
    Ok(Admitted { permit, in_flight: InFlight::new(app.clone()) })
}

/// A trigger task in flight, for the shutdown's drain (see
/// [`App::until_idle`]).
struct InFlight(Arc<App>);

impl InFlight {
    fn new(app: Arc<App>) -> Self {
        app.task_started();
        InFlight(app)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.task_done();
    }
}

/// The key a trigger answers for. Dropped unanswered (its task went
/// away), it still answers the waiters and leaves the in-flight map, so a
/// retry is not kept waiting for nothing.
struct Keyed {
    app: Arc<App>,
    key: String,
    at_ms: u64,
    fingerprint: String,
    state: watch::Sender<KeyState>,
}

impl Drop for Keyed {
    fn drop(&mut self) {
        if matches!(&*self.state.borrow(), KeyState::Answered(_)) {
            return;
        }
        let refusal = KeyRefusal {
            status: StatusCode::CONFLICT,
            error: "interrupted".into(),
            detail: format!(
                "the first request with idempotency key `{}` ended without an answer; see the audit, and retry with a new key",
                self.key
            ),
            retry_after: None,
        };
        self.state.send_replace(KeyState::Answered(Err(refusal)));
        self.app.invocations.keys().remove(&self.key);
    }
}

/// Spawns the trigger's task and answers as `wait` asks.
#[expect(clippy::too_many_arguments, reason = "the request, taken apart")]
async fn start(
    app: &Arc<App>,
    admitted: Admitted,
    agent: String,
    message: Message,
    pause_before: Option<String>,
    principal: Principal,
    keyed: Option<Keyed>,
    wait: bool,
) -> Result<Response, ApiError> {
    let breakpoint = pause_before.as_deref().map(|c| Breakpoint::before(c, 1));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<InvocationAnswer, ApiError>>();
    let by = principal.name.as_ref().map_or_else(|| "http".to_string(), |n| format!("http:{n}"));
    // The id, once the start is audited, for the task's own end.
    let started_id: Arc<std::sync::OnceLock<u64>> = Arc::default();
    // Registered before the agent runs: the task can only mark it done
    // after this, and a status request finds it from its first moment.
    let on_start = {
        let key_state = keyed.as_ref().map(|k| k.state.clone());
        let (app, agent, bp, cell) = (app.clone(), agent.clone(), breakpoint.clone(), started_id.clone());
        move |id: u64| {
            let _ = cell.set(id);
            app.invocations.start(id, &agent, bp);
            if let Some(state) = key_state {
                state.send_if_modified(|s| {
                    let waiting = matches!(s, KeyState::Waiting);
                    if waiting {
                        *s = KeyState::Started(id);
                    }
                    waiting
                });
            }
            let _ = started_tx.send(id);
        }
    };
    let origin = Origin {
        by: Some(by),
        key: keyed.as_ref().map(|k| k.key.clone()),
        started: Some(Box::new(on_start)),
        cause: None,
    };
    let task = {
        let (app, agent, bp) = (app.clone(), agent.clone(), breakpoint.clone());
        async move {
            // Counted out however the task ends (a panic included), so a
            // shutdown's drain never waits for a task that is gone.
            let Admitted { permit, in_flight: _in_flight } = admitted;
            let result = app.host.trigger(&agent, message, bp, origin).await;
            drop(permit);
            let answer = match result {
                Ok(invocations) => match answer_of(&invocations) {
                    Some(a) => Ok(a),
                    None => Err(ApiError::host("a trigger ran no invocation")),
                },
                Err(e) => Err(invoke_error(e)),
            };
            // Durable before anyone learns of it: the invocations' own
            // entries, and what they read.
            let answer = match answer {
                Ok(a) => app.durable(a).await,
                Err(e) => Err(e),
            };
            match (&answer, started_id.get()) {
                (Ok(a), _) => app.invocations.set(a.invocation, Progress::Done(Box::new(a.clone()))),
                // Started, then a host fault: its status says so, and
                // nobody waits for it forever.
                (Err(e), Some(id)) => {
                    let mut a = running(*id, &agent, None);
                    a.status = "interrupted".into();
                    a.report = Some(e.body.detail.clone());
                    app.invocations.set(*id, Progress::Done(Box::new(a)));
                }
                (Err(_), None) => {}
            }
            if let Some(k) = keyed {
                finish_key(&app, k, &answer, started_id.get().is_some()).await;
            }
            let _ = done_tx.send(answer);
        }
    };
    tokio::spawn(task);
    let id = match started_rx.await {
        Ok(id) => id,
        // It never started (an unknown agent, a bad message, a host fault):
        // the task's answer says why.
        Err(_) => {
            return match done_rx.await {
                Ok(Ok(a)) => Ok(respond(StatusCode::OK, a, false)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ApiError::host("the trigger's task ended without an answer")),
            };
        }
    };
    let mut done_rx = done_rx;
    if let Some(bp) = &breakpoint {
        tokio::select! {
            () = bp.reached() => {
                let call = pause_before.clone().unwrap_or_default();
                app.invocations.set(id, Progress::Paused { call: call.clone() });
                let answer = app.durable(running(id, &agent, Some(call))).await?;
                return Ok(respond(StatusCode::ACCEPTED, answer, false));
            }
            done = &mut done_rx => return finished(done),
        }
    }
    if !wait {
        let answer = app.durable(running(id, &agent, None)).await?;
        return Ok(respond(StatusCode::ACCEPTED, answer, false));
    }
    finished(done_rx.await)
}

fn finished(
    done: Result<Result<InvocationAnswer, ApiError>, tokio::sync::oneshot::error::RecvError>,
) -> Result<Response, ApiError> {
    match done {
        Ok(Ok(a)) => Ok(respond(StatusCode::OK, a, false)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::host("the trigger's task ended without an answer")),
    }
}

/// Stores a keyed trigger's answer (durably) and gives it to the waiters.
/// A trigger that failed before it started frees its key again (nothing
/// ran); one that failed after keeps the reservation, which answers 409.
async fn finish_key(app: &Arc<App>, k: Keyed, answer: &Result<InvocationAnswer, ApiError>, started: bool) {
    let retention = app.config.idempotency_retention.as_millis() as u64;
    if answer.is_err() && !started {
        let record = KeyRecord { fingerprint: k.fingerprint.clone(), answer: None, void: true };
        if let Ok(bytes) = serde_json::to_vec(&record) {
            let (key, at) = (k.key.clone(), k.at_ms);
            let voided = app
                .blocking(move |app| {
                    Ok(app.host.store().put_request_key(key, at, bytes, now_ms().saturating_sub(retention))?)
                })
                .await;
            if let Err(e) = voided {
                tracing::error!("the reservation of idempotency key `{}` was not freed: {}", k.key, e.body.detail);
            }
        }
    }
    match answer {
        Ok(a) => {
            let record = KeyRecord { fingerprint: k.fingerprint.clone(), answer: Some(a.clone()), void: false };
            let stored = match serde_json::to_vec(&record) {
                Ok(bytes) => {
                    let (key, at) = (k.key.clone(), k.at_ms);
                    app.blocking(move |app| {
                        Ok(app.host.store().put_request_key(key, at, bytes, now_ms().saturating_sub(retention))?)
                    })
                    .await
                }
                Err(e) => Err(ApiError::host(e.to_string())),
            };
            if let Err(e) = stored {
                tracing::error!("the answer for idempotency key `{}` was not stored: {}", k.key, e.body.detail);
            }
            k.state.send_replace(KeyState::Answered(Ok(Box::new(a.clone()))));
        }
        Err(e) => {
            k.state.send_replace(KeyState::Answered(Err(e.into())));
        }
    }
    app.invocations.keys().remove(&k.key);
}

/// An invocation's status and result.
///
/// For triggers this server ran, from memory; for any other invocation,
/// from the audit (its report as the audit keeps it, bounded).
#[utoipa::path(
    get,
    path = "/v1/invocations/{id}",
    tag = "invoke",
    params(("id" = u64, Path, description = "The invocation id")),
    responses(
        (status = 200, description = "Its status, and its result when done", body = InvocationAnswer),
        (status = 404, description = "No such invocation", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn status(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    if let Some((agent, progress, _)) = app.invocations.watch(id) {
        let answer = match progress.borrow().clone() {
            Progress::Running => running(id, &agent, None),
            Progress::Paused { call } => running(id, &agent, Some(call)),
            Progress::Done(a) => *a,
        };
        return Ok(respond(StatusCode::OK, app.durable(answer).await?, false));
    }
    let answer = app.blocking(move |app| from_audit(app, id)).await?;
    Ok(respond(StatusCode::OK, app.durable(answer).await?, false))
}

/// An invocation's answer, rebuilt from its audit entries.
fn from_audit(app: &App, id: u64) -> Result<InvocationAnswer, ApiError> {
    let store = app.host.store();
    let missing = || ApiError::not_found("unknown_invocation", format!("there is no invocation {id}"));
    let start = store.audit_entry(id)?.filter(|e| e.call == calls::INVOCATION_START).ok_or_else(missing)?;
    let end = store
        .audit(&AuditFilter {
            invocation: Some(id),
            call: Some(calls::INVOCATION_END.into()),
            limit: Some(1),
            ..Default::default()
        })?
        .pop();
    let chain = crate::coord::trace::chain(store.as_ref(), id).map_err(|e| ApiError::host(e.to_string()))?;
    let caused: Vec<u64> = chain.into_iter().filter(|i| *i > id).collect();
    let Some(end) = end else {
        return Ok(InvocationAnswer { status: "interrupted".into(), caused, ..running(id, &start.agent, None) });
    };
    let outcome = match end.decision {
        Decision::Allowed => "ok",
        Decision::Failed => "failed",
        Decision::Stopped => "stopped",
        _ => "trapped",
    };
    let host_calls = serde_json::from_str::<serde_json::Value>(&end.args)
        .ok()
        .and_then(|v| v["host_calls"].as_u64())
        .and_then(|n| u32::try_from(n).ok());
    Ok(InvocationAnswer {
        invocation: id,
        agent: start.agent.clone(),
        status: "done".into(),
        outcome: Some(outcome.into()),
        report: Some(end.outcome.clone()),
        host_calls,
        caused,
        paused_before: None,
        invocations: vec![],
    })
}

/// Let a paused invocation go on, and wait for it.
///
/// Only for triggers started with `pause_before` (breakpoints on).
#[utoipa::path(
    post,
    path = "/v1/invocations/{id}/resume",
    tag = "invoke",
    params(("id" = u64, Path, description = "The paused invocation")),
    responses(
        (status = 200, description = "It went on and is done", body = InvocationAnswer),
        (status = 404, description = "No such paused invocation", body = super::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn resume(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    let Some((_, mut progress, Some(bp))) = app.invocations.watch(id) else {
        return Err(ApiError::not_found(
            "not_paused",
            format!("invocation {id} was not started with `pause_before` by this host"),
        ));
    };
    bp.release();
    loop {
        if let Progress::Done(a) = progress.borrow_and_update().clone() {
            return Ok(respond(StatusCode::OK, *a, false));
        }
        if progress.changed().await.is_err() {
            return Err(ApiError::host(format!("invocation {id} ended without an answer")));
        }
    }
}

//! `http.request`: an agent's outbound HTTP request (`wasi:http`), checked,
//! carried out and audited by the host.
//!
//! In order, before anything leaves the host: `limits.max_host_calls` and a
//! breakpoint, `limits.max_http_requests`, the URL (a user in it, a scheme
//! other than http or https), the agent's grant (`agents.NAME.http`, on the
//! normalised target, see [`crate::policy::outbound`]), and the body
//! (`limits.max_call_bytes`). Only then are the agent's secrets added (to
//! their own hosts) and the connection made, to the target as checked.
//!
//! The response is read whole, up to `limits.max_http_response_bytes`, and
//! the whole exchange is bounded by `limits.http_timeout_ms`. Redirects are
//! the agent's to follow: each hop is a request of its own, checked again.
//! Every request gets one audit entry (method, URL, the secrets added by
//! name, bytes out and in, status, duration), whatever its outcome; a
//! request the agent abandons is audited when it is dropped.

use super::{Caller, Gate, HostFault};
use crate::audit::{self, AuditDraft, Decision, calls};
use crate::policy::outbound::Target;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// What `send_request` answers: the response (read whole) and the
/// connection's remaining I/O.
pub type HttpSent =
    Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

/// An audit entry that is written exactly once: by [`Pending::finish`], or,
/// if the request is dropped before it finishes (the agent gave up on it,
/// or the invocation ended), when it is dropped.
struct Pending {
    gate: Arc<Gate>,
    draft: Option<AuditDraft>,
    started: Instant,
    secrets: Arc<crate::policy::secrets::Secrets>,
    /// Whether the request passed the checks: an abandoned one that did is
    /// audited as allowed, one that did not as invalid.
    checked: bool,
}

impl Pending {
    fn finish(mut self, decision: Decision, rule: Option<String>, outcome: String) {
        self.take(decision, rule, outcome);
    }

    /// Writes the entry now (a refusal in the checks, before the future).
    fn take(&mut self, decision: Decision, rule: Option<String>, outcome: String) {
        if let Some(mut draft) = self.draft.take() {
            draft.decision = decision;
            draft.rule = rule;
            draft.outcome = outcome;
            self.write(draft);
        }
    }

    fn write(&self, mut draft: AuditDraft) {
        // What a server echoes (an error text, say) could hold a secret.
        self.secrets.scrub(&mut draft.outcome);
        self.secrets.scrub(&mut draft.args);
        if let Err(e) = self.gate.record(draft, self.started) {
            tracing::error!("the audit entry of an outbound request was not written: {e}");
        }
    }

    fn args(&mut self) -> Option<&mut AuditDraft> {
        self.draft.as_mut()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut draft) = self.draft.take() {
            if self.checked {
                draft.outcome = "abandoned: the agent dropped the request before it finished".into();
            } else {
                draft.decision = Decision::Invalid;
                draft.outcome = "abandoned: the agent dropped the request before it was checked".into();
            }
            self.write(draft);
        }
    }
}

/// What the checks made of a request before it was sent.
struct Checked {
    target: Target,
    /// The secrets granted to the agent.
    granted: Vec<String>,
}

/// Methods the host does not send: `TRACE` echoes the request (with the
/// secrets the host added) back to the agent; `CONNECT` opens a tunnel
/// past the check.
const REFUSED_METHODS: [http::Method; 2] = [http::Method::TRACE, http::Method::CONNECT];

impl Gate {
    /// Checks, sends and audits one outbound request of `caller`'s. The
    /// error is what the agent's `wasi:http` future resolves to.
    ///
    /// Everything but the breakpoint and the body is decided here, when the
    /// agent hands the request over, before the future exists: an agent
    /// that drops the future at once (which aborts it, perhaps before its
    /// first poll) has been counted and checked, and its entry says so.
    pub fn http(
        self: Arc<Self>,
        caller: Arc<Caller>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> impl Future<Output = HttpSent> + Send + 'static {
        let settings = self.settings.load_full();
        let method = request.method().to_string();
        let url = request.uri().to_string();
        let draft = self.draft(&caller, calls::HTTP, vec![], json!({ "method": method, "url": url }));
        let mut pending = Pending {
            gate: self.clone(),
            draft: Some(draft),
            started: Instant::now(),
            secrets: settings.secrets.clone(),
            checked: false,
        };
        let checked = self.check_http(&caller, &settings, &request, &mut pending);
        async move {
            let checked = checked?;
            if let Some(bp) = &caller.breakpoint {
                bp.check(calls::HTTP).await;
            }
            pending.started = Instant::now();
            self.send_checked(caller, request, options, pending, settings, checked, method, url).await
        }
    }

    /// The checks, in order; a refusal is audited here.
    fn check_http(
        &self,
        caller: &Caller,
        settings: &super::Settings,
        request: &http::Request<WasiBody>,
        pending: &mut Pending,
    ) -> Result<Checked, HttpError> {
        match self.count_call(caller, calls::HTTP) {
            Ok(()) => {}
            // Past `limits.max_host_calls`, the count audited the refusal
            // (so this call's draft is dropped unwritten). A request answers
            // through its future and cannot trap: the runtime stops the
            // invocation at its next tick instead.
            Err(HostFault::Limit(why)) => {
                pending.draft = None;
                let _ = caller.halt.set(why.clone());
                return Err(HttpError::InternalError(Some(why)));
            }
            Err(e) => {
                pending.take(Decision::Fault, None, format!("failed: {e}"));
                return Err(HttpError::InternalError(Some(e.to_string())));
            }
        }
        let config = &settings.config;
        let limits = &config.limits;
        let n = caller.http_requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n > limits.max_http_requests {
            let why = format!(
                "request {n} refused: the limit is {} per invocation (limits.max_http_requests)",
                limits.max_http_requests
            );
            pending.take(Decision::Invalid, Some("limits.max_http_requests".into()), why);
            return Err(HttpError::HttpRequestDenied);
        }
        if REFUSED_METHODS.contains(request.method()) {
            let why = format!("refused: the host does not send {} requests", request.method());
            pending.take(Decision::Invalid, Some("http".into()), why);
            return Err(HttpError::HttpRequestMethodInvalid);
        }
        let uri = request.uri();
        let target = uri
            .scheme_str()
            .ok_or_else(|| "the request names no scheme".to_string())
            .and_then(|scheme| Target::parse(scheme, uri.authority().map_or("", |a| a.as_str())));
        let target = match target {
            Ok(t) => t,
            Err(why) => {
                pending.take(Decision::Invalid, Some("http".into()), format!("refused: {why}"));
                return Err(HttpError::HttpRequestUriInvalid);
            }
        };
        let grant = config.grants.get(&caller.agent);
        let rule = format!("agents.{}.http", caller.agent);
        if let Err(why) = grant.map(|g| &g.http).cloned().unwrap_or_default().check(&target) {
            let outcome = format!("refused before any connection: {why} in {rule}");
            pending.take(Decision::Forbidden, Some(rule), outcome);
            return Err(HttpError::HttpRequestDenied);
        }
        pending.checked = true;
        Ok(Checked { target, granted: grant.map(|g| g.secrets.clone()).unwrap_or_default() })
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_checked(
        self: Arc<Self>,
        caller: Arc<Caller>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        pending: Pending,
        settings: Arc<super::Settings>,
        checked: Checked,
        method: String,
        url: String,
    ) -> HttpSent {
        let mut pending = pending;
        let started = pending.started;
        let (config, secrets) = (&settings.config, settings.secrets.clone());
        let limits = &config.limits;
        let Checked { target, granted } = checked;
        let timeout = limits.http_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut parts, body) = request.into_parts();
        let body = match tokio::time::timeout_at(deadline, Limited::new(body, limits.max_call_bytes).collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) => {
                let (decision, rule, why) = match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => (
                        Decision::Invalid,
                        Some("limits.max_call_bytes".to_string()),
                        format!("refused: the body is over {} bytes (limits.max_call_bytes)", limits.max_call_bytes),
                    ),
                    Err(e) => (Decision::Allowed, None, format!("failed reading the agent's body: {e}")),
                };
                pending.finish(decision, rule, why);
                return Err(HttpError::HttpRequestBodySize(None));
            }
            Err(_) => {
                let why =
                    format!("timed out after {} ms writing the body (limits.http_timeout_ms)", timeout.as_millis());
                pending.finish(Decision::Allowed, Some("limits.http_timeout_ms".into()), why);
                return Err(HttpError::ConnectionWriteTimeout);
            }
        };
        let bytes_out = body.len();

        // Secrets go in after every check, and only to their own hosts.
        let mut added = vec![];
        for (name, header, value) in secrets.headers_for(&granted, &target) {
            parts.headers.insert(header.clone(), value.clone());
            added.push(name.to_string());
        }
        // Connect to the target as checked, never to the agent's spelling;
        // the `Host` header names it the same way (a virtual host must not
        // route `127.1` or `API.X.COM.` elsewhere than the check read it).
        parts.headers.insert(http::header::HOST, target.host_header());
        let uri = parts.uri.clone();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match format!("{}://{}{path}", target.scheme, target.authority()).parse() {
            Ok(u) => u,
            Err(e) => {
                pending.finish(Decision::Invalid, Some("http".into()), format!("refused: {e}"));
                return Err(HttpError::HttpRequestUriInvalid);
            }
        };
        if let Some(draft) = pending.args() {
            let args = json!({ "method": method, "url": url, "secrets": added, "bytes_out": bytes_out });
            draft.arg_bytes = args.to_string().len();
            draft.args = audit::bounded(args.to_string(), limits.audit_arg_bytes);
        }
        let request = http::Request::from_parts(parts, full(body));
        // Whether the agent asked for less time than the host allows: then a
        // timeout is the agent's, not `limits.http_timeout_ms`.
        let agent_shorter = options.is_some_and(|o| {
            [o.connect_timeout, o.first_byte_timeout, o.between_bytes_timeout]
                .into_iter()
                .flatten()
                .any(|d| d < timeout)
        });
        let options = clamp(options, timeout);

        let max_in = limits.max_http_response_bytes;
        match tokio::time::timeout_at(deadline, exchange(request, options, max_in)).await {
            Ok(Ok((parts, body, io))) => {
                let outcome = format!(
                    "{}: {bytes_out} bytes out, {} bytes in, in {} ms",
                    parts.status,
                    body.len(),
                    started.elapsed().as_millis()
                );
                self.metrics.http(&caller.agent, bytes_out, body.len());
                pending.finish(Decision::Allowed, None, outcome);
                // A server that echoes the request (its headers, a debug
                // page) must not hand the agent the secrets added to it.
                let (mut parts, body) = (parts, secrets.scrub_bytes(&added, body));
                for value in parts.headers.values_mut() {
                    if let Some(clean) = secrets.scrub_header(&added, value) {
                        *value = clean;
                    }
                }
                let response = http::Response::from_parts(parts, full(body));
                let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                    Box::new(async move { io.await.map_err(|e| HttpError::InternalError(Some(e.to_string())))? });
                Ok((response, io))
            }
            Ok(Err(e)) => {
                let (rule, why) = match &e {
                    HttpError::HttpResponseBodySize(_) => (
                        Some("limits.max_http_response_bytes".to_string()),
                        format!("the response is over {max_in} bytes (limits.max_http_response_bytes)"),
                    ),
                    HttpError::ConnectionTimeout
                    | HttpError::ConnectionReadTimeout
                    | HttpError::ConnectionWriteTimeout
                    | HttpError::HttpResponseTimeout
                        if !agent_shorter =>
                    {
                        (
                            Some("limits.http_timeout_ms".to_string()),
                            format!("{e} (within limits.http_timeout_ms, {} ms)", timeout.as_millis()),
                        )
                    }
                    e => (None, e.to_string()),
                };
                pending.finish(Decision::Allowed, rule, format!("failed: {why}"));
                Err(e)
            }
            Err(_) => {
                let why = format!("failed: no whole response in {} ms (limits.http_timeout_ms)", timeout.as_millis());
                pending.finish(Decision::Allowed, Some("limits.http_timeout_ms".into()), why);
                Err(HttpError::HttpResponseTimeout)
            }
        }
    }
}

/// What an exchange brought back: the response head, its body read whole,
/// and the connection's remaining I/O.
pub(crate) type Exchanged = (http::response::Parts, Bytes, tokio::task::JoinHandle<Result<(), HttpError>>);

/// Sends `request` (already checked) and reads the response whole, at most
/// `max_in` bytes of body. The caller bounds the time.
pub(crate) async fn exchange(
    request: http::Request<WasiBody>,
    options: RequestOptions,
    max_in: usize,
) -> Result<Exchanged, HttpError> {
    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
    // The connection's I/O runs beside the reading of the body.
    let io = tokio::spawn(io);
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_in).collect().await.map_err(|e| {
        match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => HttpError::HttpResponseBodySize(u64::try_from(max_in).ok()),
            Err(e) => match e.downcast::<HttpError>() {
                Ok(e) => *e,
                Err(e) => HttpError::InternalError(Some(e.to_string())),
            },
        }
    })?;
    Ok((parts, body.to_bytes(), io))
}

/// A body already read whole.
pub(crate) fn full(bytes: Bytes) -> WasiBody {
    Full::new(bytes).map_err(|never: std::convert::Infallible| -> HttpError { match never {} }).boxed_unsync()
}

/// The agent's own timeouts, none longer than the host's.
pub(crate) fn clamp(options: Option<RequestOptions>, timeout: Duration) -> RequestOptions {
    let o = options.unwrap_or_default();
    let at_most = |d: Option<Duration>| Some(d.map_or(timeout, |d| d.min(timeout)));
    RequestOptions {
        connect_timeout: at_most(o.connect_timeout),
        first_byte_timeout: at_most(o.first_byte_timeout),
        between_bytes_timeout: at_most(o.between_bytes_timeout),
    }
}

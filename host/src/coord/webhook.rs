//! The HTTP sink: each recorded action POSTed as JSON to one endpoint
//! (`[actions] sink = "https://…"`), with its idempotency key in the
//! `Idempotency-Key` header and, if configured, a secret's header.
//!
//! A 2xx answer is a delivery. Anything else (another status, no
//! connection, no answer within `timeout_ms`) is a failure, retried with
//! backoff (see [`crate::outbox::Retry`]); after `max_attempts` failures the
//! action goes to the dead letter. Delivery is at least once: a host that
//! dies between the receiver's answer and recording the delivery sends it
//! again after its restart, with the same key, for the receiver to dedupe.
//!
//! [`crate::outbox::deliver_pending`] calls [`Sink::deliver`] from a blocking
//! context, so the requests run on a thread of this sink's own, with a
//! small runtime, and each delivery waits for its answer.

use super::outbox::{Retry, Sink, SinkError, line};
use crate::kb::ActionRecord;
use crate::policy::config::HttpSinkConfig;
use crate::policy::secrets::{SecretDef, Secrets};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

/// The header that carries an action's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// How much of a receiver's error answer a failure quotes.
const QUOTE_BYTES: usize = 200;

type Job = (ActionRecord, mpsc::SyncSender<Result<(), String>>);

/// Delivers to one HTTP endpoint.
pub struct HttpSink {
    endpoint: String,
    retry: Retry,
    timeout: Duration,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink").field("endpoint", &self.endpoint).field("retry", &self.retry).finish()
    }
}

/// What the sink's thread needs for each request.
struct Endpoint {
    /// The URI connected to: the target as checked, and the path.
    uri: http::Uri,
    host: http::HeaderValue,
    secret: Option<(http::HeaderName, http::HeaderValue)>,
    /// The secret's value, to take out of what a receiver echoes.
    secrets: Secrets,
    timeout: Duration,
}

impl HttpSink {
    /// Reads the secret (if any) from the environment and starts the
    /// sink's thread.
    pub fn open(config: &HttpSinkConfig, secrets: &BTreeMap<String, SecretDef>) -> Result<HttpSink, SinkError> {
        let err = |reason: String| SinkError { sink: config.endpoint.url.clone(), reason };
        let resolved = Secrets::resolve(secrets, config.secret.iter(), |v| std::env::var(v).ok())
            .map_err(|e| err(e.to_string()))?;
        let secret = match &config.secret {
            None => None,
            Some(name) => {
                let (h, v) = resolved.header(name).ok_or_else(|| err(format!("secret `{name}` is not declared")))?;
                Some((h.clone(), v.clone()))
            }
        };
        let uri = config.endpoint.uri().parse().map_err(|e| err(format!("the URL does not parse: {e}")))?;
        let endpoint = Endpoint {
            uri,
            host: config.endpoint.target.host_header(),
            secret,
            secrets: resolved,
            timeout: config.timeout,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start its runtime: {e}")))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("concord-webhook".into())
            .spawn(move || {
                // Ends when the sink (the only sender) is dropped.
                while let Ok((action, answer)) = queue.recv() {
                    let _ = answer.send(runtime.block_on(post(&endpoint, &action)));
                }
            })
            .map_err(|e| err(format!("cannot start its thread: {e}")))?;
        Ok(HttpSink {
            endpoint: config.endpoint.url.clone(),
            retry: Retry::Backoff { max_attempts: config.max_attempts, base_ms: config.backoff_ms },
            timeout: config.timeout,
            jobs,
        })
    }
}

impl Sink for HttpSink {
    fn deliver(&self, action: &ActionRecord) -> Result<(), SinkError> {
        let err = |reason: String| SinkError { sink: self.endpoint.clone(), reason };
        let (answer, answered) = mpsc::sync_channel(1);
        self.jobs.send((action.clone(), answer)).map_err(|_| err("its thread has stopped".into()))?;
        answered.recv().map_err(|_| err("its thread stopped before answering".into()))?.map_err(err)
    }

    fn retry(&self) -> Retry {
        self.retry
    }

    fn inline(&self) -> bool {
        false
    }

    fn max_duration(&self) -> Duration {
        self.timeout
    }
}

/// One POST, read whole; a 2xx is a delivery.
async fn post(endpoint: &Endpoint, action: &ActionRecord) -> Result<(), String> {
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(endpoint.uri.clone())
        .header(http::header::HOST, endpoint.host.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_HEADER, action.idempotency_key.as_str());
    if let Some((name, value)) = &endpoint.secret {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(crate::gate::http::full(Bytes::from(line(action))))
        .map_err(|e| format!("the request cannot be built: {e}"))?;
    let options = crate::gate::http::clamp(None, endpoint.timeout);
    let sent = tokio::time::timeout(endpoint.timeout, crate::gate::http::exchange(request, options, 64 << 10)).await;
    match sent {
        Err(_) => Err(format!("no answer within {} ms (actions.http.timeout_ms)", endpoint.timeout.as_millis())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((parts, _, _))) if parts.status.is_success() => Ok(()),
        Ok(Ok((parts, body, _))) => {
            let mut text = String::from_utf8_lossy(&body).into_owned();
            // A receiver that echoes the request must not put the secret in
            // the record, the audit or the log. Scrubbed whole, then cut.
            endpoint.secrets.scrub(&mut text);
            if crate::audit::cut_to(&mut text, QUOTE_BYTES) {
                text.push('…');
            }
            Err(format!("answered {}: {text}", parts.status))
        }
    }
}

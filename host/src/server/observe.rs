//! Seeing what the server does: one log line per request, `GET /metrics`
//! (Prometheus text, from prometheus-client), `GET /healthz` and `GET
//! /readyz`.

use super::state::App;
use super::wire::Readiness;
use crate::audit::Decision;
use crate::metrics::HistogramSnapshot;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The invocation a response is about, for its log line.
#[derive(Debug, Clone, Copy)]
pub struct InvocationId(pub u64);

/// What a request's log line says, filled in as the request goes (the
/// auth layer adds the token's name).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Option<String>>>);

impl RequestLog {
    pub fn set_token(&self, name: Option<String>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = name;
    }

    fn token(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Requests by route and status.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

/// The middleware around every request: the log line, and the counts.
pub async fn log(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("(unmatched)".to_string(), |m| m.as_str().to_string());
    let info = RequestLog::default();
    request.extensions_mut().insert(info.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let invocation = response.extensions().get::<InvocationId>().map(|i| i.0);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "concord::http",
        "{method} {path} {status} {ms:.1}ms token={} invocation={}",
        info.token().as_deref().unwrap_or("-"),
        invocation.map_or("-".to_string(), |i| i.to_string()),
    );
    let mut requests = app.http.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *requests.entry((route, status)).or_default() += 1;
    response
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "observe",
    responses((status = 200, description = "The process is up", body = String, content_type = "text/plain")))]
pub async fn healthz() -> Response {
    // The pid lets the CLI tell this server from another one that took the
    // address a stopped one left in its server file.
    ([("concord-pid", std::process::id().to_string())], "ok\n").into_response()
}

/// The store is open and writable, the agents are loaded, and the server
/// is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "observe",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Readiness),
    ))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let agents = app.host.agents().len();
    let reason = if app.shutting_down() {
        Some("shutting down".to_string())
    } else if agents == 0 {
        Some("no agents are loaded".to_string())
    } else {
        app.host.store().health().err()
    };
    let status = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(Readiness { ready: reason.is_none(), reason, agents })).into_response()
}

/// Metrics, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "observe",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
    security(("bearer" = [])))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut registry = Registry::with_prefix("concord");
    registry.register_collector(Box::new(Collect(app.clone())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        return super::error::ApiError::host(format!("cannot encode the metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
}

/// Reads the host's counters at scrape time.
#[derive(Debug)]
struct Collect(Arc<App>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AgentOutcome {
    agent: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CallDecision {
    call: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AgentDecision {
    agent: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AgentDirection {
    agent: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: String,
}

fn outcome_name(d: Decision) -> &'static str {
    match d {
        Decision::Allowed => "ok",
        Decision::Failed => "failed",
        Decision::Stopped => "stopped",
        _ => "trapped",
    }
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}

impl prometheus_client::collector::Collector for Collect {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let app = &self.0;
        let gate = app.host.gate().metrics();

        let mut m = encoder.encode_descriptor(
            "invocations",
            "Invocations ended, by agent and outcome",
            None,
            MetricType::Counter,
        )?;
        for (agent, decision, n) in gate.invocations() {
            let labels = AgentOutcome { agent, outcome: outcome_name(decision).into() };
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        let mut m =
            encoder.encode_descriptor("host_calls", "Host calls, by call and decision", None, MetricType::Counter)?;
        for (call, decision, n) in gate.calls() {
            let labels = CallDecision { call: call.into(), decision: decision.as_str().into() };
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "refusals",
            "Calls the host refused (conflicts, deferrals, denials, ...), by agent and decision",
            None,
            MetricType::Counter,
        )?;
        for (agent, decision, n) in gate.refusals() {
            let labels = AgentDecision { agent, decision: decision.as_str().into() };
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "http_body",
            "Outbound HTTP body bytes of agents' requests, by agent and direction (sent, received)",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (agent, sent, received) in gate.http_bytes() {
            for (direction, n) in [("sent", sent), ("received", received)] {
                let labels = AgentDirection { agent: agent.clone(), direction: direction.into() };
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        histogram(
            &mut encoder,
            "commit_latency",
            "kb.commit, from the gate to its durable answer",
            Some(&Unit::Seconds),
            &gate.commit_latency.snapshot(),
        )?;
        let stats = app.host.store().stats();
        if let Some(h) = &stats.batch_size {
            histogram(&mut encoder, "batch_size", "Jobs per write transaction (group commit)", None, h)?;
        }
        if let Some(h) = &stats.sync_latency {
            histogram(&mut encoder, "journal_sync", "Write-ahead journal write and sync", Some(&Unit::Seconds), h)?;
        }
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        let waiting = app.host.runtime().waiting_for_slot() as i64;
        gauge(&mut encoder, "queue_depth", "Invocations waiting for a pool slot", waiting)?;
        gauge(&mut encoder, "store_queue_depth", "Jobs waiting for the store's writer", stats.queued as i64)?;
        let slots = app.host.runtime().slots_in_use() as i64;
        gauge(&mut encoder, "pool_slots_in_use", "Instance pool slots taken by invocations", slots)?;
        gauge(
            &mut encoder,
            "pool_slots",
            "Instance pool slots in all",
            i64::from(crate::runtime::MAX_LIVE_INVOCATIONS),
        )?;
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        let (hits, misses) = app.host.runtime().cache_stats();
        counter(
            &mut encoder,
            "component_cache_hits",
            "Components loaded from the compiled-component cache (at start and on hot reload)",
            hits as u64,
        )?;
        counter(
            &mut encoder,
            "component_cache_misses",
            "Components compiled because the cache had none",
            misses as u64,
        )?;
        let mut m = encoder.encode_descriptor(
            "http_requests",
            "API requests, by route and status",
            None,
            MetricType::Counter,
        )?;
        let requests = app.http.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for ((route, status), n) in requests {
            ConstCounter::new(n).encode(m.encode_family(&RouteStatus { route, status: status.to_string() })?)?;
        }
        Ok(())
    }
}

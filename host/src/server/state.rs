//! What every request handler shares: the host, the tokens, the triggers
//! in flight, and the server's own counters. Built once at start.

use super::error::ApiError;
use super::invoke::Registry;
use super::tokens::TokenSet;
use crate::Host;
use crate::policy::server::ServerConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Semaphore, watch};

/// The server's state, behind an `Arc` in every handler.
#[derive(Debug)]
pub struct App {
    pub host: Arc<Host>,
    pub config: ServerConfig,
    pub tokens: TokenSet,
    pub invocations: Registry,
    /// One permit per trigger that may be running or waiting: the pool,
    /// plus `[server] queue`. Past it, 503.
    pub admission: Arc<Semaphore>,
    /// The permits there are in all.
    pub admission_total: usize,
    /// Set when the server begins to shut down: streams end, `/readyz`
    /// says no, new triggers are refused.
    pub shutdown: watch::Sender<bool>,
    /// Triggers running, paused or waiting (spawned tasks not finished).
    pub in_flight: AtomicUsize,
    /// Wakes whoever waits for `in_flight` to reach 0.
    pub idle: tokio::sync::Notify,
    pub http: super::observe::HttpMetrics,
    pub refusals: super::auth::RefusalLimiter,
    /// The conflicts report is counted on the blocking pool, one at a time.
    pub conflicts_lock: tokio::sync::Mutex<()>,
    /// One permit per open stream (at most [`MAX_STREAMS`]).
    pub streams: Arc<Semaphore>,
    /// Reads of the whole log (replay, verification, traces) run a few at
    /// a time, so that they cannot take every blocking thread.
    pub whole_log: Semaphore,
    /// What the living host's loops share (see [`super::live`]).
    pub live: Arc<super::live::Signals>,
    /// The schedules' time ([`super::live::LiveOptions::clock`]).
    pub clock: crate::coord::schedule::Clock,
}

/// The most streams open at once; past it a stream is answered 503.
pub const MAX_STREAMS: usize = 256;

/// Whole-log reads at once.
pub const WHOLE_LOG_READS: usize = 2;

impl App {
    pub fn new(
        host: Arc<Host>,
        config: ServerConfig,
        tokens: TokenSet,
        clock: crate::coord::schedule::Clock,
    ) -> Arc<App> {
        let admission_total = crate::runtime::MAX_LIVE_INVOCATIONS as usize + config.queue;
        Arc::new(App {
            host,
            tokens,
            invocations: Registry::default(),
            admission: Arc::new(Semaphore::new(admission_total)),
            admission_total,
            shutdown: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            http: Default::default(),
            refusals: Default::default(),
            conflicts_lock: tokio::sync::Mutex::new(()),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            whole_log: Semaphore::new(WHOLE_LOG_READS),
            live: Arc::default(),
            clock,
            config,
        })
    }

    /// An entity reference the schema knows, from the path (`kind`, `id`).
    pub fn entity(&self, kind: String, id: String) -> Result<crate::kb::EntityRef, ApiError> {
        let e = crate::kb::EntityRef::new(kind, id);
        self.host
            .gate()
            .policy()
            .check_read(&e)
            .map_err(|r| ApiError::unprocessable("invalid_entity", r.to_string()))?;
        Ok(e)
    }

    /// An entity reference the schema knows, from `kind/id` text.
    pub fn entity_ref(&self, text: &str) -> Result<crate::kb::EntityRef, ApiError> {
        let e: crate::kb::EntityRef = text.parse().map_err(|m: String| ApiError::unprocessable("invalid_entity", m))?;
        self.entity(e.kind, e.id)
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs blocking store work off the async threads.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || f(&app)).await.map_err(|e| ApiError::host(format!("a task failed: {e}")))?
    }

    /// Waits until everything the host has shown is durable: every answer
    /// waits for this before it leaves (see the module docs of
    /// [`super`]).
    pub async fn durable<T>(&self, value: T) -> Result<T, ApiError> {
        self.host.gate().sync().await?;
        Ok(value)
    }

    /// [`App::durable`] for an answer either way: a refusal can show
    /// state too (the version a conflict names).
    pub async fn durable_result<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        self.host.gate().sync().await?;
        result
    }

    /// Counts a trigger task as started; [`App::task_done`] when it ends.
    pub fn task_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub fn task_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no trigger task runs.
    pub async fn until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

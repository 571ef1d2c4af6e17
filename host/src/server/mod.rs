//! `concord serve`: the host as a service, on tokio, hyper and axum.
//!
//! # Layout
//! - [`api`]: the routes, the role each needs, the OpenAPI document.
//! - [`invoke`]: triggers (`POST /v1/invoke/{agent}`), their status and
//!   resumption, admission and idempotency keys.
//! - [`reads`]: entities, histories, the audit, reports.
//! - [`streams`]: Server-Sent Events of events and audit entries.
//! - [`operator`]: pin, unpin, revert, import, checkpoints.
//! - [`auth`] and [`tokens`]: bearer tokens, roles, refusals audited.
//! - [`observe`]: the request log, `/metrics`, `/healthz`, `/readyz`.
//! - [`live`]: hot reload of the agents and the config, and schedules.
//! - [`console`]: the web console's assets, served at `/`.
//! - [`wire`]: what the API sends and takes (the CLI reads it back).
//! - [`error`]: every refusal as `{error, detail}`.
//! - here: listening, timeouts, the server file, graceful shutdown.
//!
//! # Nothing a crash can take back leaves the host
//! The store lets its own readers see a batch a moment before the batch is
//! on disk. Every answer therefore waits, after it has read what it shows
//! and before it is sent, until everything shown so far is durable
//! ([`crate::gate::Gate::sync`]): reads, stream items, invocation answers
//! and reports alike. That wait is at most one journal sync, shared by
//! everyone waiting, and nothing when nothing is in flight.
//!
//! # Shutdown
//! On [`Server::shutdown`] (SIGINT or SIGTERM for `concord serve`) the
//! server stops accepting, ends its streams and refuses new triggers;
//! triggers in flight finish, up to `[server] drain_ms`, and are then
//! stopped (audited as stopped) and answered. Then connections close,
//! the outbox is delivered, and the host stops (`host.stop` in the audit).

pub mod api;
pub mod auth;
pub mod console;
pub mod error;
pub mod invoke;
pub mod live;
pub mod observe;
pub mod operator;
pub mod reads;
pub mod state;
pub mod streams;
pub mod tokens;
pub mod wire;

use crate::Host;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use state::App;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error(
        "{addr} is not a loopback address, and no API tokens are configured: anyone who reaches it could act as an operator. Add `tokens = \"tokens.toml\"` under [server] in concord.toml and create tokens with `concord token add NAME --role ROLE`, or listen on 127.0.0.1"
    )]
    OpenOnNetwork { addr: SocketAddr },
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    #[error("cannot write {}: {reason}", path.display())]
    ServerFile { path: PathBuf, reason: String },
}

/// The file beside the store that names the server holding it (see
/// [`wire::ServerFile`]).
pub fn server_file_path(kb: &Path) -> PathBuf {
    let mut p = kb.as_os_str().to_owned();
    p.push(".server");
    PathBuf::from(p)
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    file: PathBuf,
    /// Watches the agents folder and the config file while it lives.
    _watcher: Option<notify::RecommendedWatcher>,
}

/// The address a client on this machine reaches a listen address at.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

impl Server {
    /// Listens on `listen` (port 0: any free port) and serves `host` until
    /// [`Server::shutdown`]. Refuses to run open (without tokens) on an
    /// address that is not loopback.
    pub async fn start(host: Arc<Host>, listen: SocketAddr) -> Result<Server, ServeError> {
        let watch = host.config().agents_watch;
        Self::start_with(host, listen, live::LiveOptions { clock: crate::coord::schedule::Clock::System, watch }).await
    }

    /// [`Server::start`], with the schedules' clock and the file watching
    /// given.
    pub async fn start_with(
        host: Arc<Host>,
        listen: SocketAddr,
        options: live::LiveOptions,
    ) -> Result<Server, ServeError> {
        let config = host.config().server.clone();
        let tokens = tokens::TokenSet::load(config.tokens.as_deref())?;
        if tokens.is_open() && !listen.ip().is_loopback() {
            return Err(ServeError::OpenOnNetwork { addr: listen });
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind { addr: listen, reason: e.to_string() })?;
        let addr = listener.local_addr().map_err(|e| ServeError::Bind { addr: listen, reason: e.to_string() })?;
        let file = server_file_path(&host.config().kb_path);
        let record = wire::ServerFile {
            pid: std::process::id(),
            address: reachable(addr).to_string(),
            started_at_ms: crate::kb::now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let text = serde_json::to_string(&record)
            .map_err(|e| ServeError::ServerFile { path: file.clone(), reason: e.to_string() })?;
        // With PostgreSQL, nothing else may have made the folder the local
        // files go in (`[kb] path`'s).
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| ServeError::ServerFile { path: file.clone(), reason: e.to_string() })?;
        }
        std::fs::write(&file, text + "\n")
            .map_err(|e| ServeError::ServerFile { path: file.clone(), reason: e.to_string() })?;
        let app = App::new(host, config, tokens, options.clock.clone());
        let (router, _) = api::router(app.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (living, watcher) = live::spawn(&app, &options, &stopped).await;
        let task = tokio::spawn(serve(listener, router, app.clone(), stopped, living));
        Ok(Server { addr, app, stop, task, file, _watcher: watcher })
    }

    /// Reads the config file again (as a change to it does; SIGHUP for
    /// `concord serve`): applied whole if valid, refused with its line if
    /// not (see [`crate::Host::reload_config`]).
    pub fn reload_config(&self) {
        self.app.live.config.notify_one();
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it runs without tokens.
    pub fn is_open(&self) -> bool {
        self.app.tokens.is_open()
    }

    /// How many tokens it accepts.
    pub fn tokens(&self) -> usize {
        self.app.tokens.len()
    }

    /// Begins the graceful shutdown (see the module docs).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the server has shut down: triggers drained (or
    /// stopped), connections closed, the outbox delivered. The host stops
    /// when its last handle is dropped.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!("the server's task failed: {e}");
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The accept loop, then the shutdown.
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    app: Arc<App>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    living: Vec<tokio::task::JoinHandle<()>>,
) {
    let mut builder = http1::Builder::new();
    // The head of each request (and the next one on a kept-alive
    // connection) must arrive in time: a client that connects and says
    // nothing, or trickles its headers, is dropped and holds nothing.
    builder.timer(TokioTimer::new()).header_read_timeout(app.config.header_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let warm = tokio::spawn(keep_reports_warm(app.clone(), stopped.clone()));
    let expiring = tokio::spawn(expire_change_requests(app.clone(), stopped.clone()));
    let retrying = tokio::spawn(retry_deliveries(app.clone(), stopped.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: the clients already
                        // connected go on; try again shortly.
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = router.clone().map_request(move |mut r: hyper::Request<Incoming>| {
                    r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    r.map(axum::body::Body::new)
                });
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection from {peer}: {e}");
                    }
                });
            }
            () = async { let _ = stopped.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    app.shutdown.send_replace(true);
    let drain = app.config.drain;
    tracing::info!("shutting down: waiting up to {} ms for invocations in flight", drain.as_millis());
    if tokio::time::timeout(drain, app.until_idle()).await.is_err() {
        let why = format!("the host is shutting down and server.drain_ms ({} ms) ran out", drain.as_millis());
        tracing::warn!("{why}; stopping what still runs");
        app.host.stop_invocations(&why);
        app.invocations.release_all();
        if tokio::time::timeout(Duration::from_secs(10), app.until_idle()).await.is_err() {
            tracing::error!("invocations did not stop within 10 s of being told to");
        }
    }
    // Their answers are on their way: let the connections send them.
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not close within 5 s; closing them");
    }
    let host = app.host.clone();
    match tokio::task::spawn_blocking(move || host.deliver_actions()).await {
        Ok(Ok(d)) if !d.failed.is_empty() => {
            tracing::warn!("{} action(s) not delivered; they stay in the outbox for the next start", d.failed.len());
        }
        Ok(Err(e)) => tracing::warn!("actions not delivered: {e}"),
        _ => {}
    }
    // They end at `stopped`, after the sweep or count under way; awaited so
    // that their handles on the host are gone once the server is, and
    // whoever started it has the host to itself.
    let _ = warm.await;
    let _ = expiring.await;
    let _ = retrying.await;
    for task in living {
        let _ = task.await;
    }
}

/// Delivers in the background: for a sink that waits on the network, when
/// a trigger ends (see [`crate::Host::deliver_in_background`]); for any
/// sink, when a failed delivery's backoff is over (see
/// [`crate::outbox::Retry`]). Ends at `stopped`, never mid-way.
async fn retry_deliveries(app: Arc<App>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    app.host.deliver_in_background();
    loop {
        tokio::select! {
            () = app.host.deliveries_wanted() => {}
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if app.host.delivery_retry_at().is_none_or(|at| at > crate::kb::now_ms()) {
                    continue;
                }
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
        let host = app.host.clone();
        match tokio::task::spawn_blocking(move || host.deliver_actions()).await {
            Ok(Err(e)) => tracing::warn!("actions not delivered yet: {e}"),
            Err(e) => tracing::warn!("the delivery task failed: {e}"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Closes change requests nobody resolved in time (see
/// [`crate::coord::expiry`]), every few seconds.
/// Ends at `stopped`, never mid-way: a sweep under way finishes first.
async fn expire_change_requests(app: Arc<App>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let host = app.host.clone();
        let expired = tokio::task::spawn_blocking(move || host.expire_change_requests(crate::kb::now_ms())).await;
        match expired {
            Ok(Ok(events)) if !events.is_empty() => {
                tracing::info!("{} change request(s) expired unresolved", events.len())
            }
            Ok(Err(e)) => tracing::warn!("expiring change requests: {e}"),
            _ => {}
        }
    }
}

/// Counts the conflicts report as the logs grow, so that a report (and
/// the stop) has little left to count.
/// Ends at `stopped`, never mid-way (as [`expire_change_requests`]).
async fn keep_reports_warm(app: Arc<App>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    loop {
        {
            let _one_at_a_time = app.conflicts_lock.lock().await;
            let host = app.host.clone();
            let counted = tokio::task::spawn_blocking(move || host.conflicts(0).map(drop)).await;
            if let Ok(Err(e)) = counted {
                tracing::warn!("counting the conflicts report: {e}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

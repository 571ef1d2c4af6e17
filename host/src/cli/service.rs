//! The service commands: `serve`, `invoke` (a trigger through the running
//! host) and `token` (the API's tokens).

use super::Failure;
use super::args::TokenAction;
use super::client::{Client, segment};
use super::out::outln;
use crate::host::Host;
use crate::policy::config::Config;
use crate::server::wire::{InvocationAnswer, InvokeRequest};
use crate::server::{ServeError, Server, tokens};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// `concord serve`: until SIGINT or SIGTERM; a second signal stops at once
/// (acknowledged commits are on disk already, in the journal).
pub(super) fn serve(config_path: &Path, listen: Option<SocketAddr>) -> Result<u8, Failure> {
    // A reader that goes away must not change how this ends (see `out`).
    super::out::keep_going_when_closed();
    let config = Config::load(config_path)?;
    let listen = listen.unwrap_or(config.server.listen);
    // Refused before anything loads or opens.
    if config.server.tokens.is_none() && !listen.ip().is_loopback() {
        return Err(ServeError::OpenOnNetwork { addr: listen }.into());
    }
    if let Some(client) = Client::find(&config.kb_path)? {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "the knowledge base {} is served already, by the host at {}; stop it first, or use that one",
                config.kb_path.display(),
                client.base()
            ),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Before the start, which compiles for seconds: a SIGHUP sent meanwhile
    // is a reload once serving, not the default action that kills the
    // process. (Ctrl-C keeps its default until then: nothing is served yet.)
    let mut hup = {
        let _in = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?
    };
    let host = Arc::new(Host::start(config)?);
    for w in host.warnings() {
        eprintln!("warning: {w}");
    }
    let served = runtime.block_on(async {
        let (mut term, mut int) = signals()?;
        let server = Server::start(host.clone(), listen).await?;
        let names: Vec<String> = host.agents().iter().map(|a| format!("{} ({})", a.name, &a.digest[..12])).collect();
        outln!("concord: serving http://{} ({} agents: {})", server.addr(), names.len(), names.join(", "));
        outln!("concord: knowledge base {}", host.config().kb_path.display());
        if server.is_open() {
            eprintln!(
                "warning: NO API TOKENS are configured: anyone who can reach {} may trigger agents and act as an operator. \
                 Fine for a demo on this machine; for anything else set `tokens = \"tokens.toml\"` under [server] \
                 and add tokens with `concord token add NAME --role ROLE`.",
                server.addr()
            );
        } else if server.tokens() == 0 {
            eprintln!(
                "warning: the tokens file has no tokens yet, so every request is refused; add one with `concord token add NAME --role operator`"
            );
        }
        outln!("concord: Ctrl-C (or SIGTERM) stops it gracefully; a second one stops at once");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // Checked whole and applied, or refused with its line (in
                // the log and the audit); the host goes on either way.
                _ = hup.recv() => {
                    eprintln!("concord: SIGHUP: reloading {}", config_path.display());
                    server.reload_config();
                }
            }
        }
        eprintln!("concord: shutting down: finishing the invocations in flight (again to stop at once)");
        server.shutdown();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            // Every acknowledged commit is in the journal already; the next
            // start recovers the rest.
            eprintln!("concord: stopping at once");
            std::process::exit(130);
        });
        server.wait().await;
        Ok::<(), Failure>(())
    });
    // Every task (and its handle on the host) goes with the runtime; then
    // the host stops: `host.stop` in the audit, the store checkpointed.
    drop(runtime);
    served?;
    match Arc::into_inner(host) {
        Some(host) => drop(host),
        None => tracing::error!("the host is still in use at the end of the shutdown"),
    }
    outln!("concord: stopped");
    Ok(0)
}

fn signals() -> Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
}

/// `concord invoke`: a trigger through the running host.
#[expect(clippy::too_many_arguments, reason = "the command's flags")]
pub(super) fn invoke(
    config_path: &Path,
    agent: &str,
    kind: &str,
    entity: Option<crate::kb::EntityRef>,
    body: Option<String>,
    key: Option<String>,
    wait: bool,
    json: bool,
) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    let body = match body {
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| Failure::usage(format!("--body is not JSON: {e}")))?,
        ),
        None => None,
    };
    let Some(client) = Client::find(&config.kb_path)? else {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "no host is running on {}: start one with `concord serve` (or play a script with `concord run --script`)",
                config.kb_path.display()
            ),
        });
    };
    let req = InvokeRequest {
        kind: kind.into(),
        entity: entity.map(|e| e.key()),
        body,
        idempotency_key: key,
        pause_before: None,
    };
    let path = format!("/v1/invoke/{}{}", segment(agent), if wait { "" } else { "?wait=false" });
    let answer: InvocationAnswer = client.post(&path, &req)?;
    if json {
        outln!("{}", serde_json::to_string(&answer)?);
    } else if answer.invocations.is_empty() {
        outln!("{:<8} invocation {:<4} {}", answer.agent, answer.invocation, answer.status);
    }
    let mut failed = false;
    for inv in &answer.invocations {
        let tag = match inv.outcome.as_str() {
            "ok" => "ok",
            other => {
                failed = true;
                match other {
                    "failed" => "FAILED",
                    "stopped" => "STOPPED",
                    _ => "TRAPPED",
                }
            }
        };
        if !json {
            let cause = inv.causation.map(|c| format!(" <- {c}")).unwrap_or_default();
            outln!(
                "{:<8} invocation {:<4} {tag}: {}  ({} host calls){cause}",
                inv.agent,
                inv.invocation,
                super::format::visible(&inv.report),
                inv.host_calls
            );
        }
    }
    Ok(u8::from(failed))
}

/// `concord token`.
pub(super) fn token(config_path: &Path, action: TokenAction) -> Result<u8, Failure> {
    let config = Config::load(config_path)?;
    let Some(path) = config.server.tokens.clone() else {
        return Err(Failure {
            code: 3,
            error: anyhow::anyhow!(
                "{}: no tokens file is configured: add `tokens = \"tokens.toml\"` under [server] (then restart `concord serve`, which runs open until then)",
                config.file.display()
            ),
        });
    };
    match action {
        TokenAction::Add { name, role } => {
            let token = tokens::add(&path, &name, role)?;
            // Shown once or not kept: a token nobody saw (stdout closed)
            // would be a credential no one holds.
            let shown = {
                use std::io::Write as _;
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{token}").and_then(|()| stdout.flush())
            };
            if let Err(e) = shown {
                tokens::remove(&path, &name)?;
                return Err(Failure {
                    code: 1,
                    error: anyhow::anyhow!(
                        "cannot print the new token ({e}), so it was not kept: run `concord token add` again with stdout open"
                    ),
                });
            }
            eprintln!(
                "token `{name}` ({role}) added to {}. It is shown this once; only its sha256 is kept. Use it as `Authorization: Bearer …`, or CONCORD_TOKEN for the CLI.",
                path.display()
            );
        }
        TokenAction::List => {
            let all = tokens::read(&path)?;
            if all.is_empty() {
                outln!("no tokens in {} (add one with `concord token add NAME --role ROLE`)", path.display());
            }
            for t in all {
                outln!("{:<16} {:<9} created {}", t.name, t.role, super::format::fmt_time(t.created_at_ms));
            }
        }
        TokenAction::Remove { name } => {
            if !tokens::remove(&path, &name)? {
                return Err(Failure::not_found(format!("there is no token named `{name}` in {}", path.display())));
            }
            outln!("removed token `{name}`; a running host refuses it within a second");
        }
    }
    Ok(0)
}

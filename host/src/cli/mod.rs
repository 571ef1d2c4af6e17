//! The `concord` command line. Uses `anyhow` at the edge; every error names
//! the thing involved and what to do.
//!
//! - [`args`]: the commands and their flags (clap).
//! - `source`: where a command reads and writes: the store, or the API of
//!   the `concord serve` that holds it (through `client`).
//! - `reads`, `operate`, `run`, `service`, `migrate`: the commands, by family.
//! - `build`, `scaffold`: `concord build` and `concord new`, for agent authors.
//! - `format`: tables and JSON lines; `out`: stdout, and what a closed
//!   pipe means (a read command ends quietly; `run` and `serve` go on).
//!
//! Exit codes: 0 success; 1 the work ran but something in it failed (an
//! invocation failed or trapped, the audit chain is broken, `check` found
//! damage); 2 bad usage;
//! 3 bad input (config, agents, script, store, a request the host refused);
//! 4 not found; 141 standard output closed before the command was done
//! (`| head`); 5 an internal fault (a panic on the main thread, such as
//! redb's on a page damaged behind its back: reported as an error that says
//! what to do). Each error type maps to its code by a `From` impl on
//! [`Failure`] below, so a new error type that reaches the edge without a
//! mapping does not compile.

mod args;
mod build;
mod client;
mod format;
mod migrate;
mod operate;
mod out;
mod reads;
mod run;
mod scaffold;
mod service;
mod source;

use args::{ActionsAction, Cli, Command, LeaseAction};
use clap::Parser;
use std::process::ExitCode;

/// An error with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad usage (exit 2).
    fn usage(message: impl Into<String>) -> Self {
        Failure { code: 2, error: anyhow::anyhow!(message.into()) }
    }

    /// Not found (exit 4).
    fn not_found(message: impl Into<String>) -> Self {
        Failure { code: 4, error: anyhow::anyhow!(message.into()) }
    }
}

/// Bad input (exit 3): what these errors name is the user's to fix (the
/// config, an agent file, a script, the store, a file to import, a token).
macro_rules! bad_input {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure { code: 3, error: e.into() }
            }
        }
    )*};
}

bad_input!(
    crate::policy::config::ConfigError,
    crate::runtime::LoadError,
    crate::host::StartError,
    crate::kb::StoreError,
    crate::kb::OpenError,
    crate::coord::script::ScriptError,
    crate::coord::outbox::SinkError,
    crate::audit::checkpoint::CheckpointError,
    crate::coord::import::ImportError,
    crate::server::ServeError,
    crate::server::tokens::TokenError,
);

/// A refusal of the running host maps as the API says ([`client::Refused::code`]);
/// a host that cannot be reached is a failure of the work (exit 1).
impl From<client::ClientError> for Failure {
    fn from(e: client::ClientError) -> Self {
        match e {
            client::ClientError::Refused(refused) => Failure { code: refused.code(), error: refused.into() },
            client::ClientError::Unreachable(error) => Failure { code: 1, error },
        }
    }
}

/// The work ran, and something in it failed (exit 1): a file it could not
/// read or write, output it could not encode, an invocation that could not
/// start (as before the mapping was typed), any other error.
macro_rules! failed {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure { code: 1, error: e.into() }
            }
        }
    )*};
}

failed!(anyhow::Error, std::io::Error, serde_json::Error, crate::host::InvokeError);

/// Runs the command line; the `concord` binary is just this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` shows what agents log; the per-invocation results are printed
    // on stdout already, so the host's own chatter stays at `warn`.
    // `serve` logs each request and what the host does.
    let default_level = match cli.command {
        Command::Run { .. } => "warn,concord::agent=info",
        Command::Serve { .. } => "info,hyper=warn",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let fault = catch_faults();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli))) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(f)) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
        Err(payload) if payload.is::<out::StdoutGone>() => {
            // The reader went away (`| head`): that ends a command quietly,
            // with the code a shell gives `cat` killed by SIGPIPE (128 + 13),
            // never 0: a verdict the reader did not see (`check`, `audit
            // verify`) must not pass for success. Any other write error is
            // named.
            match payload.downcast::<out::StdoutGone>().map(|gone| gone.0) {
                Ok(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: cannot write to standard output: {e}");
                    ExitCode::from(1)
                }
                _ => ExitCode::from(141),
            }
        }
        Err(_) => {
            let what = fault.lock().map(|m| m.clone()).unwrap_or_default().unwrap_or_else(|| "no message".into());
            eprintln!(
                "error: concord stopped on an internal fault: {what}\n\
                 If the store may be damaged (a disk fault, or the file changed while a host was writing it), \
                 run `concord check`: it reads every page and names what is damaged, and a read command changes nothing. \
                 Otherwise this is a bug in concord: please report it with the command you ran \
                 (RUST_BACKTRACE=1 shows where it happened)."
            );
            ExitCode::from(5)
        }
    }
}

/// Turns a panic on the main thread into an error line instead of Rust's
/// panic report. A read command checks only the ends of each table at open,
/// and redb trusts a file it closed cleanly: a page damaged since then makes
/// redb panic (`unreachable!()` in its cursor), which is its documented
/// limit. `main` catches that unwind and says what to do; this hook keeps
/// its message and place for that line. Panics on other threads (a host's
/// writer, tokio's workers) still get the default report; with
/// `RUST_BACKTRACE` set, a main-thread panic gets both.
fn catch_faults() -> &'static std::sync::Mutex<Option<String>> {
    static FAULT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let default = std::panic::take_hook();
    let verbose = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some("main") {
            return default(info);
        }
        if verbose {
            default(info);
        }
        let message = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
            (Some(s), _) => (*s).to_string(),
            (_, Some(s)) => s.clone(),
            _ => "no message".into(),
        };
        let place = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
        if let Ok(mut fault) = FAULT.lock() {
            *fault = Some(format!("{message}{place}"));
        }
    }));
    &FAULT
}

fn dispatch(cli: Cli) -> Result<u8, Failure> {
    let config = &cli.config;
    match cli.command {
        Command::Run { script } => run::script(config, &script),
        Command::Check => run::check(config),
        Command::Migrate { from, to } => migrate::migrate(&from, &to),
        Command::Serve { listen } => service::serve(config, listen),
        Command::New { name, lang } => scaffold::new(config, &name, lang),
        Command::Build { names, src, out } => build::build(config, &names, src, out),
        Command::Invoke { agent, kind, entity, body, key, no_wait, json } => {
            service::invoke(config, &agent, &kind, entity, body, key, !no_wait, json)
        }
        Command::Token { action } => service::token(config, action),
        Command::Get { entity, at, json } => reads::get(config, &entity, at, json),
        Command::History { entity, after, limit, json, follow } => {
            reads::history(config, &entity, after, limit, json, follow)
        }
        Command::Audit(args) => reads::audit(config, args),
        Command::Agents { json } => reads::agents(config, json),
        Command::Schedules { json } => reads::schedules(config, json),
        Command::Replay => reads::replay(config),
        Command::Conflicts { window_ms, json } => reads::conflicts(config, window_ms, json),
        Command::Actions { action: None, json } => reads::actions(config, json),
        Command::Actions { action: Some(ActionsAction::Retry { id, by, reason }), .. } => {
            operate::retry_action(config, id, by, &reason)
        }
        Command::Pin { entity, assignments, by, reason } => operate::pin(config, &entity, &assignments, by, &reason),
        Command::Unpin { entity, fields, by, reason } => operate::unpin(config, &entity, &fields, by, &reason),
        Command::Lease { action: LeaseAction::Break { entity, by, reason } } => {
            operate::break_lease(config, &entity, by, &reason)
        }
        Command::Revert { seq, by, reason, force } => operate::revert(config, seq, by, &reason, force),
        Command::Import { file, by, batch } => operate::import(config, &file, by, batch),
        Command::Export { kind, out } => operate::export(config, kind, out),
    }
}

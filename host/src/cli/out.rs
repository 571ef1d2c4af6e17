//! Standard output for the commands, and what a closed one means.
//!
//! A reader that stops early (`concord audit --json | head -3`) closes the
//! pipe. Rust ignores SIGPIPE, so `println!` would panic on the next line,
//! and a panic on the main thread is reported as an internal fault. The
//! commands print through [`outln!`] and [`out!`] instead:
//! - a read or operator command ends quietly: the write unwinds with a
//!   [`StdoutGone`] payload through `resume_unwind`, which skips the panic
//!   hook (no report, no backtrace); destructors run, so a store handle is
//!   closed as on any return, and `main` exits 141, as a shell reports a
//!   command killed by SIGPIPE (never 0: a verdict nobody read is no
//!   success);
//! - `run`, `serve`, `import` and `token add` keep going
//!   ([`keep_going_when_closed`]): their work must not depend on a reader,
//!   so once stdout is gone their output is dropped, and the script
//!   finishes, the host stops, every row is imported and the token is kept
//!   exactly as with a reader. (A new token printed to nobody is lost, as
//!   its file keeps only its digest: remove it and add another.)
//!
//! Any other write error (a full disk under `> file`) takes the same paths,
//! and `main` names it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a command stopped writing: the payload its unwind carries.
pub(crate) struct StdoutGone(pub(crate) std::io::Error);

/// Set by the commands whose work must not depend on a reader.
static KEEP_GOING: AtomicBool = AtomicBool::new(false);
/// Set once a write failed under [`KEEP_GOING`]; later output is dropped.
static GONE: AtomicBool = AtomicBool::new(false);

/// From now on a failed write drops the output instead of ending the
/// command. For `run` and `serve`.
pub(crate) fn keep_going_when_closed() {
    KEEP_GOING.store(true, Ordering::Relaxed);
}

/// Writes to stdout; see the module docs for what a failed write does.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let Err(e) = stdout.write_fmt(args) else { return };
    if KEEP_GOING.load(Ordering::Relaxed) {
        if !GONE.swap(true, Ordering::Relaxed) && e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!("cannot write to standard output ({e}); going on without it");
        }
        return;
    }
    drop(stdout);
    stop(e)
}

/// Ends the command for a failed write to stdout made outside [`write`]
/// (a buffered writer's), by the same path.
pub(crate) fn stop(e: std::io::Error) -> ! {
    std::panic::resume_unwind(Box::new(StdoutGone(e)))
}

/// `println!` for the commands (see [`write`]).
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for the commands (see [`write`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*)) };
}

pub(crate) use {out, outln};

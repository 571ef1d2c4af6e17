//! What a careless operator or a hostile agent could still do, and what the
//! host now does instead (issue 21). Each test runs the real binary or a
//! real compiled agent, and would fail if its hole came back.

use crate::common::{concord, demo_dir};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `concord` in `dir` with its stdout a pipe that nobody reads: the
/// read end is closed before the command starts, so its first write fails
/// as it does once `head` has had its lines. `RUST_BACKTRACE` is set, so a
/// panic anywhere would print its report.
fn with_stdout_closed(dir: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .current_dir(dir)
        .args(args)
        .env_remove("CONCORD_CONFIG")
        .env_remove("CONCORD_AUDIT_KEY")
        .env("RUST_BACKTRACE", "1")
        .env("CONCORD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("concord runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_closed_stdout_ends_a_read_command_quietly_and_never_changes_how_a_run_ends() {
    let dir = demo_dir();
    // The run's reader is gone from the start: the script still plays to
    // its end, and the store is closed as after any run.
    let run = with_stdout_closed(dir.path(), &["run", "--script", "acme.jsonl"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(!stderr(&run).contains("panicked"), "{}", stderr(&run));
    let ends = concord(dir.path(), &["audit", "--call", "invocation.end", "--json"]);
    assert_eq!(ends.status.code(), Some(0), "a read after the run: {}", String::from_utf8_lossy(&ends.stderr));
    assert_eq!(String::from_utf8_lossy(&ends.stdout).lines().count(), 13, "every trigger of the script ran");

    // Each read and operator family, with nobody reading: exit 0, nothing
    // on stderr (no internal-fault line, no panic report).
    for args in [
        &["audit", "--json"][..],
        &["audit"],
        &["history", "customer/acme"],
        &["get", "customer/acme", "--json"],
        &["conflicts"],
        &["export"],
        &["agents"],
    ] {
        let o = with_stdout_closed(dir.path(), args);
        assert_eq!(o.status.code(), Some(0), "concord {args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "concord {args:?} says nothing when its reader is gone");
    }
    // And the store is as it was: the chain verifies, nothing is marked open.
    let verify = concord(dir.path(), &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stderr));
}

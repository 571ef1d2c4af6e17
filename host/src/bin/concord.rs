//! The `concord` binary: see `concord --help`, or [`concord::main`].

fn main() -> std::process::ExitCode {
    concord::main()
}

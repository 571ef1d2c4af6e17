//! The `concord` binary: see `concord --help`, or [`concord::cli`].

fn main() -> std::process::ExitCode {
    concord::cli::main()
}

//! `cargo bench -p concord-bench [-- --quick] [-- --out DIR]`: see the
//! crate docs (`bench/src/lib.rs`) and BENCHMARKS.md.

fn main() -> anyhow::Result<()> {
    // The SQLite service baseline is a binary of this package: cargo
    // builds it for the bench and says where.
    concord_bench::main(std::path::Path::new(env!("CARGO_BIN_EXE_sqlite_service")))
}

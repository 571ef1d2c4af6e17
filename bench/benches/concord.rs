//! `cargo bench -p concord-bench [-- --quick] [-- --out DIR]`: see the
//! crate docs (`bench/src/lib.rs`) and BENCHMARKS.md.

fn main() -> anyhow::Result<()> {
    concord_bench::main()
}

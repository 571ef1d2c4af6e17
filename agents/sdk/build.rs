//! Rebuilds the bindings whenever the WIT changes: `wit_bindgen::generate!`
//! reads `wit/` at compile time, and cargo would not otherwise know that a
//! change there makes this crate stale.
fn main() {
    println!("cargo:rerun-if-changed=../../wit");
}

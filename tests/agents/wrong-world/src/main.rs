//! A WASI command: a real component, but not of the `concord:agent` world.
fn main() {
    println!("I am not a Concord agent");
}

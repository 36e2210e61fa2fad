//! Placeholder until the VM test of the C programs lands.
fn main() {}

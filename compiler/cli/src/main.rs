//! `veil`: compile transformer models to two-party programs and run them.
fn main() {}

//! Placeholder; the shop arrives with its issue.
fn main() {}

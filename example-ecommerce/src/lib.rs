//! The example shop as a library: its domain, services and scenario.

pub mod domain;

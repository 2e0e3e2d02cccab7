//! The example shop as a library: its domain, services, processes and
//! scenario. The `ecommerce` binary only parses its command line and runs
//! one of [`processes`].

pub mod app;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod processes;
pub mod runtime;
pub mod server;
pub mod views;

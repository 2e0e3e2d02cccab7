//! The example shop as a library: its domain, services and scenario.

pub mod app;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod views;

//! The HTTP services: a command API and a query API (axum, JSON).
//!
//! Every command response carries the position to wait for, in the body
//! (`position`) and the `Strata-Position` header; every query accepts a
//! minimum position (`?min_position=` or the `Strata-Min-Position` header)
//! and answers only once the view has applied it. Errors are JSON
//! `{"error": {"code", "message"}}` with the matching status; internal
//! errors are logged and the client gets a generic message.

use std::time::Duration;

use axum::Router;

mod commands;
mod errors;
mod ops;
mod queries;

pub use commands::{command_router, CommandResponse};
pub use errors::{ApiError, ApiJson};
pub use ops::{ops_router, GaugeSource, HealthCheck, Ops};
pub use queries::{query_router, QueryState, DEFAULT_PAGE, MAX_PAGE};

/// The header carrying a command's position.
pub const POSITION_HEADER: &str = "strata-position";
/// The header asking a query for a minimum position.
pub const MIN_POSITION_HEADER: &str = "strata-min-position";
/// The header carrying a command id (safe retries).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header carrying a correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Serves `router` on `listener` until `shutdown`, with the default
/// [`ServerLimits`](crate::server::ServerLimits) (header and idle
/// timeouts, a bound on requests in flight).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: strata::CancellationToken,
) -> std::io::Result<()> {
    crate::server::serve_with(
        listener,
        router,
        crate::server::ServerLimits::default(),
        shutdown,
    )
    .await
}

/// Waits a little for in-flight work on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
use tower_http::set_header::SetResponseHeaderLayer;

pub mod auth;
mod commands;
mod errors;
mod ops;
mod queries;

pub use auth::{Auth, Caller};
pub use commands::{command_router, CommandResponse};
pub use errors::{ApiError, ApiJson};
pub use ops::{operator_ops_router, ops_router, GaugeSource, HealthCheck, Ops};
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

/// Adds the security headers every page and API response carries: a
/// content security policy that allows only the page's own origin (no
/// script from elsewhere, no framing), `nosniff`, frame denial and no
/// referrer.
pub fn with_security_headers(router: Router) -> Router {
    use axum::http::{header, HeaderValue};
    router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

/// The page's and the APIs' content security policy.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Waits a little for in-flight work on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

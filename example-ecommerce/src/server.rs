//! Serving a router over TCP with the limits a service on a network needs.
//!
//! - **Header read timeout** ([`ServerLimits::header_timeout`]): a client
//!   has that long to send a request's headers. It also bounds how long an
//!   idle keep-alive connection stays open, since the wait for the next
//!   request is a wait for its headers (hyper starts the timer there).
//! - **Concurrent requests** ([`ServerLimits::max_requests`]): beyond the
//!   bound a request is answered at once with `503` and `Retry-After`
//!   instead of queueing. Live streams (`/live/...`) are long-lived and
//!   have their own caps (global and per client, see `live.rs`); `/health`
//!   and `/metrics` are always answered, so an overloaded service can
//!   still be watched.
//! - **Concurrent connections** ([`ServerLimits::max_connections`]): beyond
//!   it, new connections wait in the listen backlog until one closes.
//!
//! The peer's address reaches handlers as
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo) (per-client caps).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::http::ApiError;

/// Limits of a served router.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Longest wait for a request's headers, and so for the next request
    /// on an idle keep-alive connection (default 10 s).
    pub header_timeout: Duration,
    /// Most requests handled at once, live streams aside (default 1,024).
    pub max_requests: usize,
    /// Most open connections (default 10,000).
    pub max_connections: usize,
    /// What `Retry-After` says when the request bound is reached
    /// (default 1 s).
    pub retry_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            max_requests: 1_024,
            max_connections: 10_000,
            retry_after: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
struct Bound {
    permits: Arc<Semaphore>,
    retry_after: Duration,
}

/// Answers `503` with `Retry-After` when `max_requests` requests are in
/// flight. Not counted, and never refused by the bound: live streams, and
/// `/health` and `/metrics`, which operators and load balancers must be
/// able to read most of all when the service is overloaded (both are
/// cheap, and `/metrics` is for operators only).
async fn bound_requests(State(bound): State<Bound>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/live/") || path == "/health" || path == "/metrics" {
        return next.run(req).await;
    }
    let Ok(_permit) = bound.permits.try_acquire() else {
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry after the time in Retry-After",
        )
        .into_response();
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(bound.retry_after.as_secs().max(1)),
        );
        return resp;
    };
    next.run(req).await
}

/// `router` with the request bound of `limits` applied.
pub fn limited(router: Router, limits: &ServerLimits) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Bound {
            permits: Arc::new(Semaphore::new(limits.max_requests.max(1))),
            retry_after: limits.retry_after,
        },
        bound_requests,
    ))
}

/// Serves `router` on `listener` with `limits` until `shutdown`; then stops
/// accepting, lets requests in flight finish (at most
/// [`SHUTDOWN_GRACE`](crate::http::SHUTDOWN_GRACE)) and returns.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: strata::CancellationToken,
) -> std::io::Result<()> {
    let router = limited(router, &limits);
    // HTTP/1.1 only: the header timer starts as soon as a connection waits
    // for a request, where protocol detection would first wait unbounded.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    tower::ServiceExt::oneshot(router, req)
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(crate::http::SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after the shutdown grace; closing them");
        }
    }
    Ok(())
}

/// The peer of a request, when it came through [`serve_with`].
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

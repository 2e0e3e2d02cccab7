//! `/health` and `/metrics`, on every process.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::metrics::{Metrics, Sample};

/// Liveness and readiness.
pub type HealthCheck =
    Arc<dyn Fn() -> strata::BoxFuture<'static, Vec<(&'static str, bool)>> + Send + Sync>;
/// Extra gauges for `/metrics`.
pub type GaugeSource = Arc<dyn Fn() -> Vec<Sample> + Send + Sync>;

/// What both services share for operations.
#[derive(Clone)]
pub struct Ops {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Readiness checks (database, NATS).
    pub health: HealthCheck,
    /// Gauges to add to `/metrics`.
    pub gauges: GaugeSource,
}

impl Ops {
    /// These ops with `more` gauges after the ones they have.
    pub fn with_gauges(self, more: impl Fn() -> Vec<Sample> + Send + Sync + 'static) -> Ops {
        let gauges = self.gauges;
        Ops {
            gauges: Arc::new(move || {
                let mut samples = gauges();
                samples.extend(more());
                samples
            }),
            ..self
        }
    }
}

async fn health(State(ops): State<Ops>) -> Response {
    let checks = (ops.health)().await;
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|(k, ok)| (k.to_owned(), json!(if ok { "ok" } else { "unreachable" })))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": body }))).into_response()
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let text = ops.metrics.render(&(ops.gauges)());
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// `/health` and `/metrics` alone (for the relay, projector and process manager).
pub fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

async fn operator_only(
    caller: super::auth::Caller,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller.role(
        crate::domain::roles::OPERATOR,
        "read health and metrics here",
    ) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `/health` and `/metrics` on a public API: for operators only. The ops
/// listener ([`ops_router`], bound to a private address) serves them to
/// anyone who can reach it, such as a load balancer's health check.
pub fn operator_ops_router(ops: Ops) -> Router {
    ops_router(ops).route_layer(axum::middleware::from_fn(operator_only))
}

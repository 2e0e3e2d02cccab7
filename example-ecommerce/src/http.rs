//! The HTTP services: a command API and a query API (axum, JSON).
//!
//! Every command response carries the position to wait for, in the body
//! (`position`) and the `Strata-Position` header; every query accepts a
//! minimum position (`?min_position=` or the `Strata-Min-Position` header)
//! and answers only once the view has applied it. Errors are JSON
//! `{"error": {"code", "message"}}` with the matching status; internal
//! errors are logged and the client gets a generic message.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use strata::{
    CommandContext, CommandOutcome, EventStore, Position, QueryError, ViewReader, ViewStore,
};
use uuid::Uuid;

use crate::app::{LineRequest, Shop, ShopError};
use crate::metrics::{Metrics, Sample};

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

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    position: Option<Position>,
}

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            position: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(p) = self.position {
            body["position"] = json!(p.0);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(p) = self.position {
            if let Ok(v) = HeaderValue::from_str(&p.0.to_string()) {
                resp.headers_mut().insert(POSITION_HEADER, v);
            }
        }
        resp
    }
}

impl From<ShopError> for ApiError {
    fn from(e: ShopError) -> Self {
        match e {
            ShopError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            ShopError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ShopError::Rule(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rule_violated", m)
            }
            ShopError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ShopError::PaymentInProgress(m) => {
                ApiError::new(StatusCode::CONFLICT, "payment_in_progress", m)
            }
            ShopError::KeyReused(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                m,
            ),
            ShopError::PaymentDeclined { reason, outcome } => {
                let mut e = ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason);
                e.position = Some(outcome.position);
                e
            }
            ShopError::Unavailable(internal) => {
                tracing::error!(error = %internal, "command failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is unavailable; retry with the same Idempotency-Key",
                )
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotCaughtUp {
                view,
                requested,
                current,
            } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "not_caught_up",
                format!("view {view} has applied position {current}, not yet {requested}; retry"),
            ),
            other => {
                tracing::error!(error = %other, "query failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is unavailable",
                )
            }
        }
    }
}

/// `Json<T>` whose rejections are our JSON errors (400, 413, 415).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> ApiError {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "malformed_json",
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, r.body_text())
}

/// The principal commands run for. There is no authentication yet: every
/// request is `http`. Command ids derive from (principal, key), so keys
/// are already scoped per principal once there are several.
const PRINCIPAL: &str = "http";

/// The namespace of request fingerprints.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x8c1f_3a52_77d4_4e09_b6a8_1d2e_5f90_c3b7);

/// The request's `Idempotency-Key`, if any (a UUID).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<Uuid>, ApiError> {
    uuid_header(headers, IDEMPOTENCY_HEADER)
}

fn uuid_header(headers: &HeaderMap, name: &str) -> Result<Option<Uuid>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| Uuid::parse_str(s.trim()).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{name} must be a UUID"))),
    }
}

/// The command context from the request headers.
///
/// With an `Idempotency-Key`, the command id is derived from the key and
/// the principal ([`strata::client_command_id`]): a client can never spend
/// an id the process manager uses. `request` is what the request asks
/// (route, path parameters, body as parsed): its hash is the request's
/// fingerprint, so a repeat of the key with another request is refused.
fn context(headers: &HeaderMap, request: &impl Serialize) -> Result<CommandContext, ApiError> {
    let mut ctx = match idempotency_key(headers)? {
        Some(key) => {
            let canonical = serde_json::to_vec(request)
                .map_err(|e| ApiError::bad_request(format!("unreadable request: {e}")))?;
            CommandContext::from_client_key(PRINCIPAL, &key.hyphenated().to_string()).fingerprint(
                Uuid::new_v5(&FINGERPRINT_NAMESPACE, &canonical)
                    .simple()
                    .to_string(),
            )
        }
        None => CommandContext::new(),
    };
    if let Some(c) = uuid_header(headers, CORRELATION_HEADER)? {
        ctx = ctx.correlation_id(c);
    }
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        ctx.traceparent = Some(tp.chars().take(128).collect());
    }
    ctx.actor = Some(PRINCIPAL.into());
    Ok(ctx)
}

/// What a command answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The aggregate's stream.
    pub stream_id: String,
    /// Its version after the command.
    pub stream_version: u64,
    /// The position to wait for on the query side.
    pub position: u64,
    /// True when the Idempotency-Key had been seen: the first outcome.
    pub duplicate: bool,
    /// The order id, for a placed order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
}

fn accepted(outcome: CommandOutcome, order_id: Option<Uuid>) -> Response {
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let position = outcome.position.0;
    let mut resp = (
        status,
        Json(CommandResponse {
            stream_id: outcome.stream_id.to_string(),
            stream_version: outcome.stream_version,
            position,
            duplicate: outcome.duplicate,
            order_id,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    resp
}

fn parse_uuid(what: &str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| {
        ApiError::bad_request(format!(
            "{what} must be a UUID, got {:?}",
            s.chars().take(64).collect::<String>()
        ))
    })
}

fn quantity(q: i64) -> Result<u32, ApiError> {
    if (1..=1000).contains(&q) {
        Ok(q as u32)
    } else {
        Err(ApiError::bad_request(format!(
            "quantity must be 1 to 1000, got {q}"
        )))
    }
}

/// Liveness and readiness.
pub type HealthCheck =
    Arc<dyn Fn() -> strata::aggregate::BoxFuture<'static, Vec<(&'static str, bool)>> + Send + Sync>;
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

// ---- the command API ------------------------------------------------------

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    sku: String,
    name: String,
    price_cents: i64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    price_cents: i64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    quantity: i64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    sku: String,
    quantity: i64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    #[serde(default)]
    order_id: Option<Uuid>,
    customer_id: String,
    lines: Vec<LineBody>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn register<S: EventStore>(
    State(shop): State<Shop<S>>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    let ctx = context(&headers, &("register", &b))?;
    Ok(accepted(
        shop.register_product(&b.sku, &b.name, b.price_cents, ctx)
            .await?,
        None,
    ))
}

async fn change_price<S: EventStore>(
    State(shop): State<Shop<S>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PriceBody>,
) -> Result<Response, ApiError> {
    let ctx = context(&headers, &("change_price", &sku, &b))?;
    Ok(accepted(
        shop.change_price(&sku, b.price_cents, ctx).await?,
        None,
    ))
}

async fn discontinue<S: EventStore>(
    State(shop): State<Shop<S>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = context(&headers, &("discontinue", &sku))?;
    Ok(accepted(shop.discontinue(&sku, ctx).await?, None))
}

async fn restock<S: EventStore>(
    State(shop): State<Shop<S>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RestockBody>,
) -> Result<Response, ApiError> {
    let ctx = context(&headers, &("restock", &sku, &b))?;
    let q = if b.quantity > 0 && b.quantity <= 1_000_000 {
        b.quantity as u32
    } else {
        return Err(ApiError::bad_request(format!(
            "quantity must be 1 to 1000000, got {}",
            b.quantity
        )));
    };
    Ok(accepted(shop.restock(&sku, q, ctx).await?, None))
}

async fn place_order<S: EventStore>(
    State(shop): State<Shop<S>>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<OrderBody>,
) -> Result<Response, ApiError> {
    let ctx = context(&headers, &("place_order", &b))?;
    let lines = b
        .lines
        .iter()
        .map(|l| {
            Ok(LineRequest {
                sku: l.sku.clone(),
                quantity: quantity(l.quantity)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    // With an Idempotency-Key and no order id, the order id derives from
    // the key, so a retried request places the same order.
    let order_id = match (b.order_id, idempotency_key(&headers)?) {
        (Some(id), _) => id,
        (None, Some(key)) => Uuid::new_v5(&key, b"order"),
        (None, None) => Uuid::new_v5(&ctx.command_id, b"order"),
    };
    let outcome = shop
        .place_order(order_id, &b.customer_id, &lines, ctx)
        .await?;
    Ok(accepted(outcome, Some(order_id)))
}

async fn pay<S: EventStore>(
    State(shop): State<Shop<S>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let order_id = parse_uuid("order id", &id)?;
    let ctx = context(&headers, &("pay", order_id))?;
    Ok(accepted(shop.pay(order_id, ctx).await?, Some(order_id)))
}

async fn cancel<S: EventStore>(
    State(shop): State<Shop<S>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let order_id = parse_uuid("order id", &id)?;
    // The body is optional: `{}` or nothing cancels with a default reason.
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
    };
    let ctx = context(&headers, &("cancel", order_id, &body))?;
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled by the customer".to_owned());
    Ok(accepted(
        shop.cancel(order_id, &reason, ctx).await?,
        Some(order_id),
    ))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The command API.
pub fn command_router<S: EventStore>(shop: Shop<S>, ops: Ops) -> Router {
    Router::new()
        .route("/products", post(register::<S>))
        .route("/products/{sku}/price", post(change_price::<S>))
        .route("/products/{sku}/discontinue", post(discontinue::<S>))
        .route("/inventory/{sku}/restock", post(restock::<S>))
        .route("/orders", post(place_order::<S>))
        .route("/orders/{id}/pay", post(pay::<S>))
        .route("/orders/{id}/cancel", post(cancel::<S>))
        .with_state(shop)
        .merge(ops_router(ops))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

// ---- the query API ---------------------------------------------------------

/// What the query API reads.
pub struct QueryState<V> {
    /// Cached views.
    pub reader: ViewReader<V>,
    /// Change announcements (for live updates).
    pub feed: strata::ChangeFeed,
}

impl<V> Clone for QueryState<V> {
    fn clone(&self) -> Self {
        QueryState {
            reader: self.reader.clone(),
            feed: self.feed.clone(),
        }
    }
}

#[derive(Deserialize, Default)]
struct MinPosition {
    min_position: Option<String>,
}

/// A listing's query: a minimum position and a page.
#[derive(Deserialize, Default)]
struct ListQuery {
    min_position: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// Documents per page of a listing when the client names no limit.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page a client may ask for.
pub const MAX_PAGE: usize = 1_000;

fn min_position(q: &MinPosition, headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let raw = q.min_position.clone().or_else(|| {
        headers
            .get(MIN_POSITION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    match raw {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map(|p| Some(Position(p)))
            .map_err(|_| ApiError::bad_request("min_position must be a non-negative integer")),
    }
}

fn page_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(DEFAULT_PAGE),
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_PAGE}"
            ))),
        },
    }
}

fn page_after(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        Some(a) if a.is_empty() || a.len() > 256 => Err(ApiError::bad_request(
            "after must be a key from a page's next, 1 to 256 bytes",
        )),
        other => Ok(other),
    }
}

async fn one<V: ViewStore>(
    state: &QueryState<V>,
    view_name: &str,
    key: &str,
    min: Option<Position>,
) -> Result<Response, ApiError> {
    let read = state.reader.get(view_name, key, min).await?;
    match read.doc {
        Some(d) => Ok(Json(
            json!({ "data": d.doc, "position": d.position.0, "checkpoint": read.checkpoint.0 }),
        )
        .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {view_name} document {key:?}"),
        )),
    }
}

/// A page of a view: `{"data": [...], "next": key-or-null}`; pass `next`
/// back as `?after=` for the following page.
async fn many<V: ViewStore>(
    state: &QueryState<V>,
    view_name: &str,
    q: ListQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let min = min_position(
        &MinPosition {
            min_position: q.min_position,
        },
        headers,
    )?;
    let limit = page_limit(q.limit.as_deref())?;
    let after = page_after(q.after)?;
    let page = state
        .reader
        .list(view_name, after.as_deref(), limit, min)
        .await?;
    let data: Vec<Value> = page.docs.into_iter().map(|d| d.doc).collect();
    Ok(Json(json!({ "data": data, "next": page.next })).into_response())
}

async fn get_products<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Query(q): Query<ListQuery>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    many(&s, "catalog", q, &h).await
}

async fn get_product<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Path(sku): Path<String>,
    Query(q): Query<MinPosition>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    crate::domain::validate_sku(&sku).map_err(|e| ApiError::bad_request(e.to_string()))?;
    one(&s, "catalog", &sku, min_position(&q, &h)?).await
}

async fn get_order<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Path(id): Path<String>,
    Query(q): Query<MinPosition>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_uuid("order id", &id)?;
    one(&s, "order_details", &id.to_string(), min_position(&q, &h)?).await
}

async fn get_customer_orders<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Path(id): Path<String>,
    Query(q): Query<MinPosition>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    // The same rule the order applies when it is placed: characters, not
    // bytes, so every id that can be written can be read.
    if id.trim().is_empty() || id.chars().count() > crate::domain::order::MAX_CUSTOMER_ID_LEN {
        return Err(ApiError::bad_request(format!(
            "customer id must be 1 to {} characters",
            crate::domain::order::MAX_CUSTOMER_ID_LEN
        )));
    }
    let min = min_position(&q, &h)?;
    let read = s.reader.get("customer_orders", &id, min).await?;
    let Some(doc) = read.doc else {
        return Ok(Json(json!({ "data": { "customer_id": id, "orders": [] } })).into_response());
    };
    // Join each order's current status from the order details view.
    let mut data = doc.doc;
    if let Some(orders) = data.get_mut("orders").and_then(Value::as_array_mut) {
        for o in orders.iter_mut() {
            if let Some(oid) = o.get("order_id").and_then(Value::as_str).map(str::to_owned) {
                if let Ok(r) = s.reader.get("order_details", &oid, None).await {
                    if let Some(d) = r.doc {
                        o["status"] = d.doc["status"].clone();
                    }
                }
            }
        }
    }
    Ok(Json(json!({ "data": data, "checkpoint": read.checkpoint.0 })).into_response())
}

async fn get_low_stock<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Query(q): Query<ListQuery>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    many(&s, "low_stock", q, &h).await
}

async fn get_dashboard<V: ViewStore>(
    State(s): State<QueryState<V>>,
    Query(q): Query<ListQuery>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    many(&s, "sales_dashboard", q, &h).await
}

/// The query API. Its live streams end when `shutdown` is cancelled.
pub fn query_router<V: ViewStore>(
    state: QueryState<V>,
    ops: Ops,
    shutdown: strata::CancellationToken,
) -> Router {
    let live = crate::live::Live::new(state.clone(), crate::live::LiveConfig::default())
        .with_shutdown(shutdown);
    // `/metrics` also reports the live streams.
    let ops = {
        let (gauges, live) = (Arc::clone(&ops.gauges), live.clone());
        Ops {
            gauges: Arc::new(move || {
                let mut samples = gauges();
                samples.extend(live.samples());
                samples
            }),
            ..ops
        }
    };
    Router::new()
        .route("/products", get(get_products::<V>))
        .route("/products/{sku}", get(get_product::<V>))
        .route("/orders/{id}", get(get_order::<V>))
        .route("/customers/{id}/orders", get(get_customer_orders::<V>))
        .route("/low-stock", get(get_low_stock::<V>))
        .route("/dashboard", get(get_dashboard::<V>))
        .with_state(state)
        .merge(live.router())
        .merge(ops_router(ops))
        .fallback(not_found)
}

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

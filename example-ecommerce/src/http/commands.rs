//! The command API: one route per command; responses carry the position
//! to wait for; `Idempotency-Key` makes retries safe.

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use strata::{CommandContext, CommandOutcome, EventStore};
use uuid::Uuid;

use crate::app::{LineRequest, Shop};
use crate::domain::roles;

use super::auth::{guarded, identify, Auth, Caller, Needs};

use super::*;

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

/// The command context from the request headers, issued by `who`.
///
/// With an `Idempotency-Key`, the command id is derived from the key and
/// the principal ([`strata::client_command_id`]): a client can never spend
/// an id the process manager uses, nor one of another user. `request` is
/// what the request asks (route, path parameters, body as parsed): its
/// hash is the request's fingerprint, so a repeat of the key with another
/// request is refused.
fn context(
    who: &strata::Principal,
    headers: &HeaderMap,
    request: &impl Serialize,
) -> Result<CommandContext, ApiError> {
    let mut ctx = match idempotency_key(headers)? {
        Some(key) => {
            let canonical = serde_json::to_vec(request)
                .map_err(|e| ApiError::bad_request(format!("unreadable request: {e}")))?;
            CommandContext::from_client_key(&who.actor(), &key.hyphenated().to_string())
                .fingerprint(
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
    Ok(ctx.principal(who.clone()))
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

pub(crate) fn parse_uuid(what: &str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| {
        ApiError::bad_request(format!(
            "{what} must be a UUID, got {:?}",
            s.chars().take(64).collect::<String>()
        ))
    })
}

/// A quantity of 1 to `max` units.
fn quantity(q: i64, max: u32) -> Result<u32, ApiError> {
    if (1..=i64::from(max)).contains(&q) {
        Ok(q as u32)
    } else {
        Err(ApiError::bad_request(format!(
            "quantity must be 1 to {max}, got {q}"
        )))
    }
}

/// Most units of a line of an order.
const MAX_LINE_QUANTITY: u32 = 1_000;
/// Most units of one restock.
const MAX_RESTOCK_QUANTITY: u32 = 1_000_000;

/// The context of a catalog or stock command: `caller` must be staff
/// (`doing` says what, for the refusal); see [`context`].
fn staff_context(
    caller: &Caller,
    doing: &str,
    headers: &HeaderMap,
    request: &impl Serialize,
) -> Result<CommandContext, ApiError> {
    context(caller.role(roles::STAFF, doing)?, headers, request)
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
    /// Optional: the signed-in customer (anything else is refused).
    #[serde(default)]
    customer_id: Option<String>,
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
    caller: Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    let ctx = staff_context(&caller, "register products", &headers, &("register", &b))?;
    Ok(accepted(
        shop.register_product(&b.sku, &b.name, b.price_cents, ctx)
            .await?,
        None,
    ))
}

async fn change_price<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    Path(sku): Path<String>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PriceBody>,
) -> Result<Response, ApiError> {
    let ctx = staff_context(
        &caller,
        "change prices",
        &headers,
        &("change_price", &sku, &b),
    )?;
    Ok(accepted(
        shop.change_price(&sku, b.price_cents, ctx).await?,
        None,
    ))
}

async fn discontinue<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = staff_context(
        &caller,
        "discontinue products",
        &headers,
        &("discontinue", &sku),
    )?;
    Ok(accepted(shop.discontinue(&sku, ctx).await?, None))
}

async fn restock<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    Path(sku): Path<String>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RestockBody>,
) -> Result<Response, ApiError> {
    let ctx = staff_context(&caller, "restock", &headers, &("restock", &sku, &b))?;
    let q = quantity(b.quantity, MAX_RESTOCK_QUANTITY)?;
    Ok(accepted(shop.restock(&sku, q, ctx).await?, None))
}

async fn place_order<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<OrderBody>,
) -> Result<Response, ApiError> {
    let who = caller.role(roles::CUSTOMER, "place orders")?;
    // The customer is the token's subject. A body that names someone else
    // is refused rather than silently corrected.
    if let Some(named) = &b.customer_id {
        if named != who.subject() {
            return Err(ApiError::forbidden(
                "an order is placed in the signed-in customer's own name",
            ));
        }
    }
    let ctx = context(who, &headers, &("place_order", &b))?;
    let lines = b
        .lines
        .iter()
        .map(|l| {
            Ok(LineRequest {
                sku: l.sku.clone(),
                quantity: quantity(l.quantity, MAX_LINE_QUANTITY)?,
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
        .place_order(order_id, who.subject(), &lines, ctx)
        .await?;
    Ok(accepted(outcome, Some(order_id)))
}

async fn pay<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller.user()?;
    let order_id = parse_uuid("order id", &id)?;
    let ctx = context(who, &headers, &("pay", order_id))?;
    Ok(accepted(shop.pay(order_id, ctx).await?, Some(order_id)))
}

async fn cancel<S: EventStore>(
    State(shop): State<Shop<S>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = caller.user()?;
    let order_id = parse_uuid("order id", &id)?;
    // The body is optional: `{}` or nothing cancels with a default reason.
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
    };
    let ctx = context(who, &headers, &("cancel", order_id, &body))?;
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled by the customer".to_owned());
    Ok(accepted(
        shop.cancel(order_id, &reason, ctx).await?,
        Some(order_id),
    ))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The command API: every route needs a signed-in user (see
/// [`auth`](super::auth)); `/health` and `/metrics` are for operators
/// (the ops listener serves them openly).
pub fn command_router<S: EventStore>(shop: Shop<S>, ops: Ops, auth: Auth) -> Router {
    let catalog = Router::new()
        .route("/products", post(register::<S>))
        .route("/products/{sku}/price", post(change_price::<S>))
        .route("/products/{sku}/discontinue", post(discontinue::<S>))
        .route("/inventory/{sku}/restock", post(restock::<S>));
    let orders = Router::new()
        .route("/orders", post(place_order::<S>))
        .route("/orders/{id}/pay", post(pay::<S>))
        .route("/orders/{id}/cancel", post(cancel::<S>));
    let router = guarded(
        catalog,
        Needs::Role(roles::STAFF, "change the catalog and stock"),
    )
    .merge(guarded(orders, Needs::User))
    .with_state(shop)
    .merge(super::ops::operator_ops_router(ops))
    .fallback(not_found)
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::from_fn_with_state(auth, identify));
    super::with_security_headers(router)
}

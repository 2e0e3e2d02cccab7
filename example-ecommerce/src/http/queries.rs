//! The query API: views by name through the cached reader, with
//! `min_position` waits and paged listings.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use strata::{Position, ViewReader, ViewStore};

use super::auth::{identify, Auth, Caller};
use super::commands::{not_found, parse_uuid};
use super::*;

// ---- the query API ---------------------------------------------------------

/// What the query API reads.
pub struct QueryState<V> {
    /// Cached views.
    pub reader: ViewReader<V>,
    /// Change announcements: the reader should follow them
    /// ([`ViewReader::listen`]); live updates start that if nobody did.
    pub feed: strata::AnyChangeFeed,
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
    caller: &Caller,
    view_name: &str,
    key: &str,
    min: Option<Position>,
) -> Result<Response, ApiError> {
    // Refuse what the rule alone refuses before waiting or reading.
    caller.may_read(view_name, key, None)?;
    let read = state.reader.get(view_name, key, min).await?;
    caller.may_read(view_name, key, read.doc.as_ref().map(|d| &d.doc))?;
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
    caller: &Caller,
    view_name: &str,
    q: ListQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    caller.may_list(view_name)?;
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

/// `GET` of a listing of `view_name` (see [`many`]).
fn listing<V: ViewStore>(view_name: &'static str) -> MethodRouter<QueryState<V>> {
    get(
        move |State(s): State<QueryState<V>>,
              caller: Caller,
              Query(q): Query<ListQuery>,
              h: HeaderMap| async move { many(&s, &caller, view_name, q, &h).await },
    )
}

/// `GET` of one document of `view_name`, its key checked and made from
/// the path by `key` (see [`one`]).
fn single<V: ViewStore>(
    view_name: &'static str,
    key: fn(&str) -> Result<String, ApiError>,
) -> MethodRouter<QueryState<V>> {
    get(
        move |State(s): State<QueryState<V>>,
              caller: Caller,
              Path(raw): Path<String>,
              Query(q): Query<MinPosition>,
              h: HeaderMap| async move {
            let key = key(&raw)?;
            one(&s, &caller, view_name, &key, min_position(&q, &h)?).await
        },
    )
}

/// A product's key: its sku, checked.
fn sku_key(sku: &str) -> Result<String, ApiError> {
    crate::domain::validate_sku(sku).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(sku.to_owned())
}

/// An order's key: its id, a UUID.
fn order_key(id: &str) -> Result<String, ApiError> {
    Ok(parse_uuid("order id", id)?.to_string())
}

/// A customer's orders, oldest first, a page at a time (`limit`, and
/// `after` = a page's `next`), each with its current status:
/// `{"data": {"customer_id", "orders": [...]}, "next": cursor-or-null,
/// "checkpoint"}`. Read from `customer_order_history`, where each order
/// is a document of its own, so a page costs the same however many orders
/// the customer placed.
async fn get_customer_orders<V: ViewStore>(
    State(s): State<QueryState<V>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
    h: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::views::{history_prefix, CustomerOrderHistoryView, CustomerOrdersView};
    // The same rule the order applies when it is placed: characters, not
    // bytes, so every id that can be written can be read.
    if id.trim().is_empty() || id.chars().count() > crate::domain::order::MAX_CUSTOMER_ID_LEN {
        return Err(ApiError::bad_request(format!(
            "customer id must be 1 to {} characters",
            crate::domain::order::MAX_CUSTOMER_ID_LEN
        )));
    }
    caller.may_read(CustomerOrdersView::NAME, &id, None)?;
    let min = min_position(
        &MinPosition {
            min_position: q.min_position,
        },
        &h,
    )?;
    let limit = page_limit(q.limit.as_deref())?;
    let cursor = match q.after {
        None => String::new(),
        Some(a) if a.len() == 20 && a.bytes().all(|b| b.is_ascii_digit()) => a,
        Some(_) => {
            return Err(ApiError::bad_request(
                "after must be a page's next: 20 digits",
            ))
        }
    };
    let prefix = history_prefix(&id);
    let view = CustomerOrderHistoryView::NAME;
    // One more than a page, to know whether another follows; the listing
    // runs on into the next customer's orders, which are cut off.
    let page = s
        .reader
        .list(view, Some(&format!("{prefix}{cursor}")), limit + 1, min)
        .await?;
    let mut docs: Vec<strata::StoredDoc> = page
        .docs
        .into_iter()
        .take_while(|d| d.key.starts_with(&prefix))
        .collect();
    let next = if docs.len() > limit {
        docs.truncate(limit);
        docs.last().map(|d| d.key[prefix.len()..].to_owned())
    } else {
        None
    };
    let mut orders = Vec::with_capacity(docs.len());
    for d in docs {
        caller.may_read(view, &d.key, Some(&d.doc))?;
        let mut o = d.doc;
        if let Some(fields) = o.as_object_mut() {
            fields.remove("customer_id");
        }
        // Join the order's current status from the order details view.
        if let Some(oid) = o.get("order_id").and_then(Value::as_str).map(str::to_owned) {
            if let Ok(r) = s.reader.get("order_details", &oid, None).await {
                if let Some(details) = r.doc {
                    o["status"] = details.doc["status"].clone();
                }
            }
        }
        orders.push(o);
    }
    Ok(Json(json!({
        "data": { "customer_id": id, "orders": orders },
        "next": next,
        "checkpoint": s.reader.applied(view).0,
    }))
    .into_response())
}

/// The query API. Its live streams end when `shutdown` is cancelled.
/// Reads obey the read rules of `auth` ([`crate::views::access`]);
/// `/health` and `/metrics` are for operators.
pub fn query_router<V: ViewStore>(
    state: QueryState<V>,
    ops: Ops,
    auth: Auth,
    shutdown: strata::CancellationToken,
) -> Router {
    let live = crate::live::Live::new(state.clone(), crate::live::LiveConfig::default())
        .with_shutdown(shutdown)
        .with_auth(auth.clone());
    // `/metrics` also reports the live streams.
    let ops = {
        let live = live.clone();
        ops.with_gauges(move || live.samples())
    };
    let router = Router::new()
        .route("/products", listing::<V>("catalog"))
        .route("/products/{sku}", single::<V>("catalog", sku_key))
        .route("/orders/{id}", single::<V>("order_details", order_key))
        .route("/customers/{id}/orders", get(get_customer_orders::<V>))
        .route("/low-stock", listing::<V>("low_stock"))
        .route("/dashboard", listing::<V>("sales_dashboard"))
        .with_state(state)
        .merge(super::ops::operator_ops_router(ops))
        .layer(axum::middleware::from_fn_with_state(auth.clone(), identify))
        // The live routes identify their callers themselves.
        .merge(live.router())
        .merge(auth.sign_in_router())
        .fallback(not_found);
    with_security_headers(router)
}

//! The HTTP APIs without a socket (tower `oneshot`): bad input gets a clear
//! JSON error with the right status and changes nothing; responses carry
//! the position; idempotency keys work; the JSON shapes are pinned.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use example_ecommerce::app::Shop;
use example_ecommerce::domain::payment::PaymentGateway;
use example_ecommerce::http::{command_router, query_router, QueryState, POSITION_HEADER};
use example_ecommerce::metrics::Metrics;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata::{
    EventStore, InMemoryEventStore, InMemoryViewStore, Position, ReaderConfig, ViewReader,
};
use tower::ServiceExt;

mod support;

use support::{identity, ops};

/// Requests without an `Authorization` header are sent as `ada`, who here
/// holds every role: these tests are about input, positions and keys;
/// who may do what is tests/access.rs.
fn as_ada_by_default(router: Router) -> Router {
    let bearer = format!(
        "Bearer {}",
        identity().token("ada", &["customer", "staff", "operator"])
    );
    router.layer(axum::middleware::map_request(
        move |mut req: Request<Body>| {
            let bearer = bearer.clone();
            async move {
                if !req.headers().contains_key("authorization") {
                    req.headers_mut()
                        .insert("authorization", bearer.parse().unwrap());
                }
                req
            }
        },
    ))
}

/// The shop over `store`, charging through `gateway`, and its command
/// API (as Ada by default).
fn shop_api<S: EventStore>(store: S, gateway: PaymentGateway) -> (Shop<S>, Router) {
    let shop = Shop::new(store, gateway, Arc::new(Metrics::default()));
    let router = as_ada_by_default(command_router(shop.clone(), ops(), identity().auth()));
    (shop, router)
}

fn commands(store: &InMemoryEventStore) -> Router {
    shop_api(store.clone(), PaymentGateway::always_accepting()).1
}

/// The query API over `reader`, with an in-process change feed.
fn queries(reader: ViewReader<InMemoryViewStore>) -> Router {
    as_ada_by_default(query_router(
        QueryState {
            reader,
            feed: strata::AnyChangeFeed::in_process(),
        },
        ops(),
        identity().auth(),
        strata::CancellationToken::new(),
    ))
}

async fn call(router: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let position = resp
        .headers()
        .get(POSITION_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        position,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn seeded() -> (InMemoryEventStore, Router) {
    let store = InMemoryEventStore::new();
    let router = commands(&store);
    let (s, _, _) = call(
        &router,
        post(
            "/products",
            r#"{"sku":"MUG-01","name":"Mug","price_cents":1250}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = call(
        &router,
        post("/inventory/MUG-01/restock", r#"{"quantity":5}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    (store, router)
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let (store, router) = seeded().await;
    let head = store.head().await.unwrap();
    let big = format!(
        r#"{{"lines":[{{"sku":"MUG-01","quantity":1}}],"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            post("/orders", "{not json"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "missing field",
            post("/orders", r#"{"order_id":null}"#),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "unknown field",
            post("/orders", r#"{"lines":[],"coupon":"FREE"}"#),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "wrong type",
            post(
                "/orders",
                r#"{"lines":[{"sku":"MUG-01","quantity":"two"}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not JSON content",
            Request::post("/orders")
                .header("content-type", "text/plain")
                .body(Body::from("hi"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "oversized body",
            post("/orders", &big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "negative quantity",
            post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":-2}]}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "zero quantity",
            post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":0}]}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown sku",
            post("/orders", r#"{"lines":[{"sku":"NOPE-9","quantity":1}]}"#),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "invalid sku",
            post("/orders", r#"{"lines":[{"sku":"bad sku!","quantity":1}]}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "no lines",
            post("/orders", r#"{"lines":[]}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "someone else's name",
            post(
                "/orders",
                r#"{"customer_id":"bob","lines":[{"sku":"MUG-01","quantity":1}]}"#,
            ),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "invalid order id",
            post("/orders/not-a-uuid/pay", "{}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown order",
            post("/orders/6d0c4a7e-3f8b-4b8e-9d7e-2a1b3c4d5e6f/pay", "{}"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "invalid idempotency key",
            Request::post("/orders")
                .header("content-type", "application/json")
                .header("idempotency-key", "abc")
                .body(Body::from(r#"{"lines":[{"sku":"MUG-01","quantity":1}]}"#))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "negative price",
            post(
                "/products",
                r#"{"sku":"NEW-1","name":"New","price_cents":-5}"#,
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "duplicate product",
            post(
                "/products",
                r#"{"sku":"MUG-01","name":"Mug","price_cents":1250}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule_violated",
        ),
        (
            "restock unknown sku",
            post("/inventory/NOPE-9/restock", r#"{"quantity":5}"#),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "unknown route",
            post("/nope", "{}"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, req, status, code) in cases {
        let (s, _, body) = call(&router, req).await;
        assert_eq!(s, status, "{what}: {body}");
        assert_eq!(body["error"]["code"], json!(code), "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: a message"
        );
        assert_eq!(
            store.head().await.unwrap(),
            head,
            "{what}: the store is untouched"
        );
    }
    insta::assert_json_snapshot!("error_negative_quantity", {
        let (_, _, body) = call(
            &router,
            post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":-2}]}"#),
        )
        .await;
        body
    });
}

#[tokio::test]
async fn commands_answer_with_their_position_and_honour_idempotency_keys() {
    let (store, router) = seeded().await;
    let key = "0f6a2a64-2d5e-4a8b-8b8f-6a1a4f0f9e11";
    let req = || {
        Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"lines":[{"sku":"MUG-01","quantity":2}]}"#))
            .unwrap()
    };
    let (s, header, first) = call(&router, req()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        header.as_deref(),
        Some(first["position"].to_string().as_str())
    );
    insta::assert_json_snapshot!("order_placed_response", first, { ".order_id" => "[uuid]", ".stream_id" => "[stream]" });
    let (s, _, again) = call(&router, req()).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a repeat answers 200 with the first outcome"
    );
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["position"], first["position"]);
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(
        store.head().await.unwrap(),
        Position(first["position"].as_u64().unwrap())
    );
}

/// An order is placed without reading its (new) stream first. An order id
/// that names an existing order, sent by another customer or again by its
/// own (without an Idempotency-Key), is refused as the stored order
/// decides, and changes nothing.
#[tokio::test]
async fn an_order_id_already_taken_is_refused_and_changes_nothing() {
    let (store, router) = seeded().await;
    let order_id = "5b0c7d2e-1f3a-4c5d-9e8f-0a1b2c3d4e5f";
    let body = format!(r#"{{"order_id":"{order_id}","lines":[{{"sku":"MUG-01","quantity":1}}]}}"#);
    let (s, _, placed) = call(&router, post("/orders", &body)).await;
    assert_eq!(s, StatusCode::CREATED, "{placed}");
    let head = store.head().await.unwrap();

    let bob = format!("Bearer {}", identity().token("bob", &["customer"]));
    let as_bob = Request::post("/orders")
        .header("content-type", "application/json")
        .header("authorization", bob)
        .body(Body::from(body.clone()))
        .unwrap();
    // Each through a command API that holds nothing of the order (another
    // process): it presumes the stream new, and the append finds it is not.
    for (who, req) in [("bob", as_bob), ("ada again", post("/orders", &body))] {
        let (s, _, refused) = call(&commands(&store), req).await;
        assert!(s.is_client_error(), "{who}: {s} {refused}");
        assert!(refused["error"]["code"].is_string(), "{who}: {refused}");
    }
    assert_eq!(store.head().await.unwrap(), head, "nothing was appended");
    let stream = example_ecommerce::domain::order_stream(order_id.parse().unwrap());
    let events = store.read_stream(&stream, 1, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.actor.as_deref(), Some("user:ada"));
}

/// The query API's `/metrics` reports the live streams beside the cache.
#[tokio::test]
async fn query_metrics_report_live_streams() {
    let reader = ViewReader::new(InMemoryViewStore::new(), ReaderConfig::default());
    let router = queries(reader);
    let resp = router
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("strata_live_subscribers 0"), "{text}");
    assert!(text.contains("strata_live_connections 0"), "{text}");
}

#[tokio::test]
async fn queries_wait_for_a_position_and_say_when_they_cannot() {
    let views = InMemoryViewStore::new();
    let reader = ViewReader::new(
        views,
        ReaderConfig {
            max_wait: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let router = queries(reader);
    let (s, _, body) = call(
        &router,
        Request::get("/products/MUG-01?min_position=42")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"]["code"], json!("not_caught_up"));
    let (s, _, body) = call(
        &router,
        Request::get("/products/MUG-01?min_position=minus")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _, _) = call(
        &router,
        Request::get("/orders/xyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = call(
        &router,
        Request::get("/products/MUG-01")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, body) = call(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["ready"], json!(true));
}

/// U+0000 is valid JSON but no Postgres text can hold it: the store refuses
/// it before anything is queued, the API answers 400 naming the field, and
/// nothing changes.
#[tokio::test]
async fn a_nul_character_is_bad_input_and_changes_nothing() {
    let (store, router) = seeded().await;
    // A customer id is a token's subject: one with a NUL (or any control
    // character) is refused with the token.
    let mut req = post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":1}]}"#);
    let nul_customer = format!("Bearer {}", identity().token("a\u{0}b", &["customer"]));
    req.headers_mut()
        .insert("authorization", nul_customer.parse().unwrap());
    let (s, _, body) = call(&router, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    let order = placed_order(&router).await;
    let head = store.head().await.unwrap();
    for (path, body, field) in [
        (
            "/products".to_owned(),
            r#"{"sku":"CUP-01","name":"Cup\u0000","price_cents":900}"#,
            "name",
        ),
        (
            format!("/orders/{order}/cancel"),
            r#"{"reason":"no\u0000"}"#,
            "reason",
        ),
    ] {
        let (s, _, body) = call(&router, post(&path, body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], json!("bad_request"), "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("U+0000") && message.contains(field),
            "{message}"
        );
    }
    assert_eq!(store.head().await.unwrap(), head);
}

/// An order placed by the default caller; its id.
async fn placed_order(router: &Router) -> String {
    let (s, _, body) = call(
        router,
        post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":1}]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["order_id"].as_str().unwrap().to_owned()
}

/// Customer ids are counted in characters on the read side too, as when an
/// order is placed: a 64-character id of multi-byte characters is read,
/// 65 characters are refused.
#[tokio::test]
async fn customer_ids_are_counted_in_characters_when_read() {
    let router = queries(ViewReader::new(
        InMemoryViewStore::new(),
        ReaderConfig::default(),
    ));
    let id64 = "é".repeat(64);
    let (s, _, body) = call(
        &router,
        Request::get(format!("/customers/{}/orders", urlencode(&id64)))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["customer_id"], json!(id64));
    let (s, _, _) = call(
        &router,
        Request::get(format!("/customers/{}/orders", urlencode(&"é".repeat(65))))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A customer's orders come in pages from the order history, oldest
/// first, each with its current status, and only that customer's: keys of
/// customers whose ids share a beginning (or hold a `/`) stay apart.
#[tokio::test]
async fn a_customers_orders_come_in_pages() {
    use example_ecommerce::views::history_key;
    use strata::{DocChange, Documents, StoredDoc, Versions, ViewId};
    let views = InMemoryViewStore::new();
    let history = ViewId::new("customer_order_history", 1).unwrap();
    let details = ViewId::new("order_details", 1).unwrap();
    views.prepare(&history).await.unwrap();
    views.prepare(&details).await.unwrap();
    let mut placed = Vec::new();
    let mut statuses = Vec::new();
    let mut position = 0u64;
    for (customer, n) in [("ada", 5u64), ("ada/x", 2), ("adb", 2), ("ad", 1)] {
        for i in 0..n {
            position += 1;
            let order_id = uuid::Uuid::from_u128(u128::from(position));
            placed.push(DocChange::Put(StoredDoc {
                key: history_key(customer, Position(position)),
                doc: json!({
                    "customer_id": customer,
                    "order_id": order_id,
                    "total_cents": 100 * i,
                    "placed_at": "2026-12-01T10:00:00Z",
                }),
                position: Position(position),
            }));
            statuses.push(DocChange::Put(StoredDoc {
                key: order_id.to_string(),
                doc: json!({ "customer_id": customer, "status": format!("status-{position}") }),
                position: Position(position),
            }));
        }
    }
    for (view, docs) in [(&history, placed), (&details, statuses)] {
        views
            .commit(
                &view.subscriber(),
                Some(view),
                docs,
                Position(0),
                Position(position),
            )
            .await
            .unwrap();
    }
    let router = queries(ViewReader::new(views, ReaderConfig::default()));
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let ids = |page: &Value| -> Vec<u128> {
        page["data"]["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                uuid::Uuid::parse_str(o["order_id"].as_str().unwrap())
                    .unwrap()
                    .as_u128()
            })
            .collect()
    };

    let (s, _, page) = call(&router, get("/customers/ada/orders?limit=2")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [1, 2]);
    assert_eq!(page["data"]["customer_id"], json!("ada"));
    assert_eq!(page["data"]["orders"][1]["status"], json!("status-2"));
    assert_eq!(page["data"]["orders"][1]["total_cents"], json!(100));
    assert!(page["data"]["orders"][0].get("customer_id").is_none());
    let mut seen = ids(&page);
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(after) = next {
        let (s, _, page) = call(
            &router,
            get(&format!("/customers/ada/orders?limit=2&after={after}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(ids(&page));
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen,
        [1, 2, 3, 4, 5],
        "all of ada's, none of ada/x's or adb's"
    );
    let (_, _, whole) = call(&router, get("/customers/ada/orders")).await;
    assert_eq!(ids(&whole), [1, 2, 3, 4, 5]);
    assert_eq!(whole["next"], Value::Null);

    let (s, _, body) = call(&router, get("/customers/ada/orders?after=ada%2F1")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Staff (the default caller here) read anyone's; a customer only theirs.
    let (s, _, page) = call(&router, get("/customers/ada%2Fx/orders")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [6, 7]);
    let as_customer = |uri: &str| {
        Request::get(uri)
            .header(
                "authorization",
                format!("Bearer {}", identity().token("adb", &["customer"])),
            )
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, page) = call(&router, as_customer("/customers/adb/orders")).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), [8, 9]);
    let (s, _, _) = call(&router, as_customer("/customers/ada/orders")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another customer's orders");
}

/// Listings come in pages: `limit`, `after`, and a `next` cursor.
#[tokio::test]
async fn listings_come_in_pages() {
    use strata::{DocChange, Documents, StoredDoc, Versions, ViewId};
    let views = InMemoryViewStore::new();
    let view = ViewId::new("catalog", 1).unwrap();
    views.prepare(&view).await.unwrap();
    let docs = (0..5)
        .map(|i| {
            DocChange::Put(StoredDoc {
                key: format!("SKU-{i}"),
                doc: json!({ "sku": format!("SKU-{i}") }),
                position: Position(1),
            })
        })
        .collect();
    views
        .commit(
            &view.subscriber(),
            Some(&view),
            docs,
            Position(0),
            Position(1),
        )
        .await
        .unwrap();
    let router = queries(ViewReader::new(views, ReaderConfig::default()));
    let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();
    let (s, _, page) = call(&router, get("/products?limit=2".into())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], json!("SKU-1"));
    let (_, _, page) = call(&router, get("/products?limit=2&after=SKU-3".into())).await;
    assert_eq!(page["data"][0]["sku"], json!("SKU-4"));
    assert_eq!(page["next"], Value::Null);
    let (_, _, all) = call(&router, get("/products".into())).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 5);
    for bad in [
        "/products?limit=0",
        "/products?limit=1001",
        "/products?limit=x",
    ] {
        let (s, _, body) = call(&router, get(bad.into())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

// ---- payments, idempotency keys ----------------------------------------------

/// A shop (with a gateway that takes 20 ms, like the demo's) and its
/// command API, with a confirmed order of 2 × MUG-01. The process manager
/// is not running: the reservation is recorded directly.
async fn confirmed_order<S: EventStore>(store: S) -> (Shop<S>, Router, uuid::Uuid) {
    use example_ecommerce::domain::order::OrderCommand;
    let (shop, router) = shop_api(
        store,
        PaymentGateway::new(0.0, Duration::from_millis(20), 1),
    );
    created(
        &router,
        &[
            (
                "/products",
                r#"{"sku":"MUG-01","name":"Mug","price_cents":1250}"#,
            ),
            ("/inventory/MUG-01/restock", r#"{"quantity":5}"#),
        ],
    )
    .await;
    let (s, _, placed) = call(
        &router,
        post("/orders", r#"{"lines":[{"sku":"MUG-01","quantity":2}]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let order_id: uuid::Uuid = placed["order_id"].as_str().unwrap().parse().unwrap();
    shop.orders
        .handle(
            example_ecommerce::domain::order_stream(order_id),
            OrderCommand::RecordReservation {
                sku: "MUG-01".into(),
            },
            strata::CommandContext::system("test"),
        )
        .await
        .unwrap();
    (shop, router, order_id)
}

/// POSTs each (path, body) in turn; each must answer 201.
async fn created(router: &Router, requests: &[(&str, &str)]) {
    for (path, body) in requests {
        let (s, _, _) = call(router, post(path, body)).await;
        assert_eq!(s, StatusCode::CREATED, "POST {path}");
    }
}

fn pay(order_id: uuid::Uuid, key: Option<&str>) -> Request<Body> {
    let mut req = Request::post(format!("/orders/{order_id}/pay"));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.body(Body::empty()).unwrap()
}

/// Two pays of one order at once charge the card once: with two keys (or
/// none) the second is refused before it reaches the gateway; with one key
/// both answer the one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pays_charge_once() {
    let keys = [
        (
            Some("3c7b8d52-0000-4000-8000-000000000001"),
            Some("3c7b8d52-0000-4000-8000-000000000002"),
        ),
        (None, None),
        (
            Some("3c7b8d52-0000-4000-8000-000000000003"),
            Some("3c7b8d52-0000-4000-8000-000000000003"),
        ),
    ];
    for (a, b) in keys {
        let (shop, router, order_id) = confirmed_order(InMemoryEventStore::new()).await;
        let ((sa, _, ba), (sb, _, bb)) = tokio::join!(
            call(&router, pay(order_id, a)),
            call(&router, pay(order_id, b))
        );
        assert_eq!(shop.gateway.charges(), 1, "keys {a:?} {b:?}: {ba} {bb}");
        let mut statuses = [sa, sb];
        statuses.sort();
        if a == b && a.is_some() {
            assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED], "{ba} {bb}");
            assert_eq!(ba["position"], bb["position"]);
        } else {
            assert_eq!(
                statuses,
                [StatusCode::CREATED, StatusCode::CONFLICT],
                "{ba} {bb}"
            );
            let refused = if sa == StatusCode::CONFLICT { &ba } else { &bb };
            assert_eq!(refused["error"]["code"], json!("payment_in_progress"));
        }
        let (order, _) = shop
            .orders
            .load(&example_ecommerce::domain::order_stream(order_id))
            .await
            .unwrap();
        assert_eq!(
            order.status(),
            example_ecommerce::domain::order::OrderStatus::Paid
        );
    }
}

/// The record of a charge fails (a crash between charge and record,
/// simulated by a trigger refusing `OrderPaid`): the retry with the same
/// key completes the started attempt with the same gateway key, so the
/// card is charged once and the order is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_charge_and_record_charges_once() {
    let db = strata::testing::test_database().await;
    let (shop, router, order_id) =
        confirmed_order(strata::PgEventStore::new(db.pool.clone())).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_paid() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'simulated crash before the payment is recorded' \
         USING ERRCODE = 'XX000'; END $$; \
         CREATE TRIGGER refuse_paid BEFORE INSERT ON strata_events FOR EACH ROW \
         WHEN (NEW.event_type = 'OrderPaid') EXECUTE FUNCTION refuse_paid();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let key = Some("7e1d0c2b-0000-4000-8000-00000000000a");
    let (s, _, body) = call(&router, pay(order_id, key)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(shop.gateway.charges(), 1);
    // Another key meanwhile: refused before the gateway (attempt in progress).
    let (s, _, body) = call(
        &router,
        pay(order_id, Some("7e1d0c2b-0000-4000-8000-00000000000b")),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(shop.gateway.charges(), 1);
    sqlx::raw_sql("DROP TRIGGER refuse_paid ON strata_events")
        .execute(&db.pool)
        .await
        .unwrap();
    let (s, _, body) = call(&router, pay(order_id, key)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(shop.gateway.charges(), 1, "the retry charged again");
    let (s, _, again) = call(&router, pay(order_id, key)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["position"], body["position"]);
    assert_eq!(shop.gateway.charges(), 1);
    let (order, _) = shop
        .orders
        .load(&example_ecommerce::domain::order_stream(order_id))
        .await
        .unwrap();
    assert_eq!(
        order.status(),
        example_ecommerce::domain::order::OrderStatus::Paid
    );
}

/// The same Idempotency-Key with another body is another request: `422
/// idempotency_key_reused`, nothing changes. The same body again answers
/// the first outcome even after the product was discontinued.
#[tokio::test]
async fn a_key_answers_its_first_request_only() {
    let (store, router) = seeded().await;
    let key = "51d2a0c4-0000-4000-8000-000000000001";
    let order = |body: &'static str| {
        Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body))
            .unwrap()
    };
    let first_body = r#"{"lines":[{"sku":"MUG-01","quantity":2}]}"#;
    let (s, _, first) = call(&router, order(first_body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let head = store.head().await.unwrap();
    let (s, _, other) = call(
        &router,
        order(r#"{"lines":[{"sku":"MUG-01","quantity":3}]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    assert_eq!(other["error"]["code"], json!("idempotency_key_reused"));
    assert_eq!(store.head().await.unwrap(), head);
    // Same body, other formatting: the same request.
    let (s, _, again) = call(
        &router,
        order(r#"{ "lines": [ {"quantity": 2, "sku": "MUG-01"} ] }"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    // After the product is discontinued, a repeat still answers the order.
    let (s, _, _) = call(&router, post("/products/MUG-01/discontinue", "")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, again) = call(&router, order(first_body)).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["position"], first["position"]);
    assert_eq!(again["order_id"], first["order_id"]);
    // Another route with the same key: another aggregate, 409.
    let (s, _, reused) = call(
        &router,
        Request::post("/inventory/MUG-01/restock")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(r#"{"quantity":1}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{reused}");
}

/// A client that spends, on another aggregate, the command id the process
/// manager derives for its order's reservation (the rule is public) no
/// longer blocks fulfilment: client keys map into a namespace of their own.
#[tokio::test]
async fn a_client_key_cannot_spend_a_process_manager_command_id() {
    use example_ecommerce::domain::fulfilment::FulfilmentCommand;
    use example_ecommerce::domain::inventory::InventoryCommand;
    use strata::CommandSender;
    let store = InMemoryEventStore::new();
    let (shop, router) = shop_api(store.clone(), PaymentGateway::always_accepting());
    created(
        &router,
        &[
            (
                "/products",
                r#"{"sku":"MUG-01","name":"Mug","price_cents":1250}"#,
            ),
            (
                "/products",
                r#"{"sku":"HAT-01","name":"Hat","price_cents":900}"#,
            ),
            ("/inventory/MUG-01/restock", r#"{"quantity":5}"#),
        ],
    )
    .await;
    let (s, _, placed) = call(
        &router,
        Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", "0b9a7c3e-0000-4000-8000-000000000001")
            .body(Body::from(r#"{"lines":[{"sku":"MUG-01","quantity":1}]}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let placed_event = store
        .read_all(
            Position(placed["position"].as_u64().unwrap() - 1),
            1,
            &strata::EventFilter::all(),
        )
        .await
        .unwrap()
        .remove(0);
    let internal = strata::caused_command_id("fulfilment", placed_event.event_id, 0);
    // The attacker sends the internal id as a key, on another aggregate.
    let (s, _, _) = call(
        &router,
        Request::post("/inventory/HAT-01/restock")
            .header("content-type", "application/json")
            .header("idempotency-key", internal.to_string())
            .body(Body::from(r#"{"quantity":1}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // The process manager's reservation still goes through.
    let ctx = strata::CommandContext::with_command_id(internal).actor("fulfilment");
    let order_id: uuid::Uuid = placed["order_id"].as_str().unwrap().parse().unwrap();
    shop.send(
        FulfilmentCommand::Inventory {
            sku: "MUG-01".into(),
            command: InventoryCommand::Reserve {
                sku: "MUG-01".into(),
                order_id,
                quantity: 1,
            },
        },
        ctx,
    )
    .await
    .expect("the process manager's command is not blocked");
}

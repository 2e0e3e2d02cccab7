//! Who may do what, route by route: every route of the command API, the
//! query API and its live streams, as an anonymous visitor, customer Ada
//! (who owns the order in question), customer Bob, staff Sam and operator
//! Olga. The status of every cell is pinned in a snapshot; each cell runs
//! on a shop of its own, so no cell sees another's effects.
//!
//! Also: bad tokens of every kind are `401` with a challenge and change
//! nothing; every response carries the security headers; no event is ever
//! recorded without an actor.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use example_ecommerce::app::Shop;
use example_ecommerce::domain::payment::PaymentGateway;
use example_ecommerce::http::{command_router, query_router, serve, Ops, QueryState};
use example_ecommerce::identity::DemoIdentity;
use example_ecommerce::metrics::Metrics;
use example_ecommerce::runtime::{spawn_fulfilment, spawn_projectors, Statuses};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata::{
    AnyChangeFeed, CancellationToken, EventStore, InMemoryEventStore, InMemoryViewStore,
    InProcessBus, Position, ReaderConfig, ViewReader,
};
use tower::ServiceExt;
use uuid::Uuid;

const WHO: [&str; 5] = ["anonymous", "ada", "bob", "sam", "olga"];

fn ops() -> Ops {
    Ops {
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(|| Box::pin(async { vec![("database", true)] })),
        gauges: Arc::new(Vec::new),
    }
}

/// A running shop in memory: catalog seeded by staff, and an order of
/// Ada's, confirmed by the process manager.
struct Shop1 {
    store: InMemoryEventStore,
    commands: Router,
    queries: Router,
    order: Uuid,
    identity: DemoIdentity,
    shutdown: CancellationToken,
}

impl Drop for Shop1 {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `proxied`: point the page's proxy routes (a process-wide setting read
/// at each request) at this shop's command API. Only the matrix, which
/// runs its cells one after another, does; the other tests of this file
/// run beside it and must not move the setting under it.
async fn shop(identity: &DemoIdentity, proxied: bool) -> Shop1 {
    let store = InMemoryEventStore::new();
    let bus = InProcessBus::new(store.clone());
    let views = InMemoryViewStore::new();
    let feed = AnyChangeFeed::in_process();
    let statuses = Statuses::default();
    let shutdown = CancellationToken::new();
    let shop = Shop::new(
        store.clone(),
        PaymentGateway::always_accepting(),
        Arc::new(Metrics::default()),
    );
    spawn_projectors(&[], &bus, &views, &feed, &statuses, &shutdown);
    spawn_fulfilment(&shop, &bus, &views, &statuses, &shutdown);
    let reader = ViewReader::new(views, ReaderConfig::default());
    reader.listen(&feed, shutdown.clone()).await.unwrap();
    let auth = identity.auth();
    let commands = command_router(shop, ops(), auth.clone());
    if proxied {
        // The page's proxy routes forward to a command API over a socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, commands.clone(), shutdown.clone()));
        std::env::set_var(
            example_ecommerce::live::COMMAND_URL_ENV,
            format!("http://{addr}"),
        );
    }
    let queries = query_router(
        QueryState {
            reader: reader.clone(),
            feed,
        },
        ops(),
        auth,
        shutdown.clone(),
    );
    let mut s = Shop1 {
        store,
        commands,
        queries,
        order: Uuid::nil(),
        identity: identity.clone(),
        shutdown,
    };
    s.expect(
        &s.commands,
        "sam",
        "POST",
        "/products",
        json!({"sku":"MUG-01","name":"Mug","price_cents":1250}),
        201,
    )
    .await;
    s.expect(
        &s.commands,
        "sam",
        "POST",
        "/inventory/MUG-01/restock",
        json!({"quantity":10}),
        201,
    )
    .await;
    let placed = s
        .expect(
            &s.commands,
            "ada",
            "POST",
            "/orders",
            json!({"lines":[{"sku":"MUG-01","quantity":1}]}),
            201,
        )
        .await;
    let order: Uuid = placed["order_id"].as_str().unwrap().parse().unwrap();
    // Wait (bounded) for the process manager to confirm it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = reader
            .get(
                "order_details",
                &order.to_string(),
                Some(Position(placed["position"].as_u64().unwrap())),
            )
            .await
            .unwrap();
        if read.doc.is_some_and(|d| d.doc["status"] == "confirmed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order was never confirmed"
        );
        reader
            .wait_for("order_details", Position(read.checkpoint.0 + 1))
            .await
            .ok();
    }
    s.order = order;
    s
}

impl Shop1 {
    fn request(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(path);
        if who != "anonymous" {
            req = req.header("authorization", self.identity.bearer(who));
        }
        match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        }
    }

    async fn call(
        &self,
        router: &Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let is_stream = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let body = if is_stream {
            Value::Null // a live stream: its status is what counts here
        } else {
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, headers, body)
    }

    async fn expect(
        &self,
        router: &Router,
        who: &str,
        method: &str,
        path: &str,
        body: Value,
        status: u16,
    ) -> Value {
        let body = (method == "POST" && !body.is_null()).then_some(body);
        let (s, _, v) = self
            .call(router, self.request(who, method, path, body))
            .await;
        assert_eq!(s.as_u16(), status, "{who} {method} {path}: {v}");
        v
    }
}

/// One route of the matrix: which API, the method, the path (`{order}` is
/// Ada's order), the body.
struct Route {
    api: &'static str,
    method: &'static str,
    path: &'static str,
    body: Value,
}

fn routes() -> Vec<Route> {
    let c = |method, path, body| Route {
        api: "command",
        method,
        path,
        body,
    };
    let q = |method, path, body| Route {
        api: "query",
        method,
        path,
        body,
    };
    vec![
        c(
            "POST",
            "/products",
            json!({"sku":"NEW-01","name":"New","price_cents":100}),
        ),
        c("POST", "/products/MUG-01/price", json!({"price_cents":999})),
        c("POST", "/products/MUG-01/discontinue", Value::Null),
        c("POST", "/inventory/MUG-01/restock", json!({"quantity":1})),
        c(
            "POST",
            "/orders",
            json!({"lines":[{"sku":"MUG-01","quantity":1}]}),
        ),
        c("POST", "/orders/{order}/pay", Value::Null),
        c("POST", "/orders/{order}/cancel", Value::Null),
        c("GET", "/health", Value::Null),
        c("GET", "/metrics", Value::Null),
        q("GET", "/products", Value::Null),
        q("GET", "/products/MUG-01", Value::Null),
        q("GET", "/orders/{order}", Value::Null),
        q("GET", "/customers/ada/orders", Value::Null),
        q("GET", "/low-stock", Value::Null),
        q("GET", "/dashboard", Value::Null),
        q("GET", "/health", Value::Null),
        q("GET", "/metrics", Value::Null),
        q("GET", "/live/catalog", Value::Null),
        q("GET", "/live/catalog/MUG-01", Value::Null),
        q("GET", "/live/order_details", Value::Null),
        q("GET", "/live/order_details/{order}", Value::Null),
        q("GET", "/live/customer_orders", Value::Null),
        q("GET", "/live/customer_orders/ada", Value::Null),
        q("GET", "/live/low_stock", Value::Null),
        q("GET", "/live/sales_dashboard", Value::Null),
        q("GET", "/", Value::Null),
        q(
            "POST",
            "/api/orders",
            json!({"lines":[{"sku":"MUG-01","quantity":1}]}),
        ),
        q("POST", "/api/orders/{order}/pay", Value::Null),
        q("POST", "/api/orders/{order}/cancel", Value::Null),
    ]
}

const SECURITY_HEADERS: [&str; 4] = [
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_as_every_kind_of_caller() {
    let identity = DemoIdentity::generate();
    let mut table = format!("{:<44}", "route");
    for who in WHO {
        table.push_str(&format!("{who:>10}"));
    }
    table.push('\n');
    for route in routes() {
        let label = format!("{} {} {}", route.api, route.method, route.path);
        let mut row = format!("{label:<44}");
        for who in WHO {
            let s = shop(&identity, true).await;
            let path = route.path.replace("{order}", &s.order.to_string());
            let router = if route.api == "command" {
                &s.commands
            } else {
                &s.queries
            };
            let head = s.store.head().await.unwrap();
            let body =
                (route.method == "POST" && !route.body.is_null()).then(|| route.body.clone());
            let (status, headers, v) = s
                .call(router, s.request(who, route.method, &path, body))
                .await;
            for h in SECURITY_HEADERS {
                assert!(headers.contains_key(h), "{label} as {who}: no {h} header");
            }
            if status == StatusCode::UNAUTHORIZED {
                assert!(
                    headers.contains_key("www-authenticate"),
                    "{label} as {who}: 401 without a challenge"
                );
            }
            if status.is_client_error() {
                assert_eq!(
                    s.store.head().await.unwrap(),
                    head,
                    "{label} as {who}: a refused request changed something ({v})"
                );
            }
            row.push_str(&format!("{:>10}", status.as_u16()));
        }
        table.push_str(row.trim_end());
        table.push('\n');
    }
    insta::assert_snapshot!("access_matrix", table);
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_challenge_and_change_nothing() {
    let identity = DemoIdentity::generate();
    let s = shop(&identity, false).await;
    let other = DemoIdentity::generate();
    let issuer = identity.issuer();
    let now = chrono::Utc::now().timestamp();
    let claims = |over: Value| {
        let mut c = json!({
            "iss": example_ecommerce::identity::DEV_ISSUER,
            "aud": example_ecommerce::identity::DEFAULT_AUDIENCE,
            "sub": "sam", "roles": ["staff"],
            "iat": now, "nbf": now - 5, "exp": now + 600,
        });
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&claims(json!({})))
    );
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "Bearer not.a.token".into()),
        ("not bearer", "Basic c2FtOnNhbQ==".into()),
        ("empty bearer", "Bearer ".into()),
        (
            "expired",
            format!(
                "Bearer {}",
                issuer.sign(&claims(json!({"exp": now - 3600})))
            ),
        ),
        (
            "not yet valid",
            format!(
                "Bearer {}",
                issuer.sign(&claims(json!({"nbf": now + 3600})))
            ),
        ),
        (
            "wrong issuer",
            format!(
                "Bearer {}",
                issuer.sign(&claims(json!({"iss": "https://evil.example"})))
            ),
        ),
        (
            "wrong audience",
            format!(
                "Bearer {}",
                issuer.sign(&claims(json!({"aud": "another-app"})))
            ),
        ),
        ("another issuer's key", other.bearer("sam")),
        ("alg none", format!("Bearer {unsigned}")),
    ];
    let head = s.store.head().await.unwrap();
    for (what, header) in cases {
        let req = Request::post("/products")
            .header("authorization", header)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"sku":"BAD-01","name":"Bad","price_cents":1}"#,
            ))
            .unwrap();
        let (status, headers, body) = s.call(&s.commands, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm="),
            "{what}: {challenge}"
        );
        // The reason is logged, not told.
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        for secret in ["expired", "audience", "issuer", "signature", "alg"] {
            assert!(
                !body.to_string().to_lowercase().contains(secret),
                "{what}: the answer says {secret:?}: {body}"
            );
        }
    }
    assert_eq!(s.store.head().await.unwrap(), head, "nothing changed");
    // A valid token of the same caller works, so the refusals were the tokens'.
    s.expect(
        &s.commands,
        "sam",
        "POST",
        "/products",
        json!({"sku":"OK-01","name":"Ok","price_cents":1}),
        201,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_recorded_without_an_actor() {
    let identity = DemoIdentity::generate();
    let s = shop(&identity, false).await;
    // Ada pays (the payment step records the result), Bob orders and
    // cancels, staff restocks; the process manager confirms and ships.
    s.expect(
        &s.commands,
        "ada",
        "POST",
        &format!("/orders/{}/pay", s.order),
        Value::Null,
        201,
    )
    .await;
    let bobs = s
        .expect(
            &s.commands,
            "bob",
            "POST",
            "/orders",
            json!({"lines":[{"sku":"MUG-01","quantity":2}]}),
            201,
        )
        .await;
    let bobs = bobs["order_id"].as_str().unwrap().to_owned();
    s.expect(
        &s.commands,
        "bob",
        "POST",
        &format!("/orders/{bobs}/cancel"),
        Value::Null,
        201,
    )
    .await;
    // Wait (bounded) for Ada's order to ship: the process manager's last step.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = s
            .store
            .read_all(Position::START, 10_000, &strata::EventFilter::all())
            .await
            .unwrap();
        if events.iter().any(|e| e.event_type == "OrderShipped") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Ada's order never shipped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = s
        .store
        .read_all(Position::START, 10_000, &strata::EventFilter::all())
        .await
        .unwrap();
    assert!(events.len() > 10, "{} events", events.len());
    let mut actors = std::collections::BTreeSet::new();
    for e in &events {
        let actor = e.metadata.actor.as_deref().unwrap_or_default();
        assert!(
            !actor.is_empty(),
            "{} at {} has no actor",
            e.event_type,
            e.position.0
        );
        actors.insert(actor.to_owned());
        if actor == "service:fulfilment" {
            // The process manager's commands name their cause: an event.
            let cause = e.metadata.causation_id.expect("a cause");
            assert!(
                events.iter().any(|c| c.event_id == cause),
                "{} by the process manager names no event as its cause",
                e.event_type
            );
        }
    }
    let actors: Vec<String> = actors.into_iter().collect();
    assert_eq!(
        actors,
        [
            "service:fulfilment",
            "service:payment",
            "user:ada",
            "user:bob",
            "user:sam"
        ]
    );
}

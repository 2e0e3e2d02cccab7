//! End to end: the shop's processes as real OS processes (`ecommerce relay`,
//! `projector`, `process-manager`, `command-api`, `query-api`) against real
//! Postgres and NATS. The scenario runs through HTTP; the projector and the
//! relay are killed (SIGKILL) and restarted mid-run; at the end every view
//! equals a fresh fold of the store.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use example_ecommerce::identity::DemoIdentity;
use example_ecommerce::views::{
    CatalogView, CustomerOrderHistoryView, CustomerOrdersView, LowStockView, OrderDetailsView,
    SalesDashboardView,
};
use serde_json::{json, Value};
use strata::testing::{nats_url, test_database, unique_stream, wait_until};
use strata::{
    Checkpoints, Documents, EventFilter, EventStore, PgEventStore, PgViewStore, Position,
    Projection, ProjectionTest, Versions, ViewId,
};

#[path = "../example-ecommerce/tests/support/mod.rs"]
mod support;

use support::{admin, dev_issuer, staff_client, ShopEnv, ShopProcesses, BIN};

/// The development issuer the shop's APIs trust in these tests: made
/// once, kept in a folder the processes read (`STRATA_DEV_ISSUER`).
fn identity() -> &'static (DemoIdentity, std::path::PathBuf) {
    static ISSUER: std::sync::OnceLock<(DemoIdentity, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    ISSUER.get_or_init(|| dev_issuer("e2e"))
}

/// An HTTP client that acts as staff and operator unless a request says
/// otherwise (orders are sent as their customer, see [`post`]).
fn client() -> reqwest::Client {
    staff_client(&identity().0, "e2e-staff")
}

/// POSTs `body`; an order's `customer_id` is taken out of the body and
/// becomes the customer who places it (the token's subject).
async fn post(http: &reqwest::Client, url: String, mut body: Value) -> (u16, Value) {
    let mut req = http.post(url);
    if let Some(customer) = body.as_object_mut().and_then(|o| o.remove("customer_id")) {
        let token = identity()
            .0
            .token(customer.as_str().unwrap(), &["customer"]);
        req = req.bearer_auth(token);
    }
    let resp = req.json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Documents of a view as stored, by key.
async fn stored(views: &PgViewStore, name: &str) -> BTreeMap<String, Value> {
    views
        .list(&ViewId::new(name, 1).unwrap(), None, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.key, d.doc))
        .collect()
}

/// The view `name` as stored equals `p` folded over `events`.
async fn assert_stored_is_fold<P: Projection>(
    views: &PgViewStore,
    name: &str,
    p: P,
    events: &[strata::EventEnvelope],
) {
    let folded = ProjectionTest::new(p).given(events.to_vec()).json().clone();
    assert_eq!(stored(views, name).await, folded, "{name}");
}

/// The shop as separate processes on a fresh database and stream, healthy.
async fn start_shop() -> (
    strata::testing::TestDatabase,
    strata::nats::StreamConfig,
    ShopProcesses,
) {
    let db = test_database().await;
    let cfg = unique_stream();
    let env = ShopEnv {
        db_url: db.url.clone(),
        stream: cfg.clone(),
        issuer_dir: identity().1.clone(),
        no_migrate: false,
    };
    let shop = ShopProcesses::start(env, &client()).await;
    (db, cfg, shop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_survive_kills_and_views_equal_a_fold() {
    let (db, cfg, mut shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let http = client();

    // The processes reach this loopback server without TLS: their URL
    // names no sslmode (docs/deployment-security.md).
    let tls_asked = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("PGSSL"))
        || db.url.contains("ssl");
    if !tls_asked {
        let encrypted: Vec<bool> = sqlx::query_scalar(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
               AND a.backend_type = 'client backend'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(
            !encrypted.is_empty(),
            "no connection of the shop's processes"
        );
        assert!(
            encrypted.iter().all(|e| !e),
            "a shop process encrypts its loopback connection: {encrypted:?}"
        );
    }

    for (sku, price, stock) in [
        ("MUG-01", 1250, 40),
        ("TEE-01", 2400, 25),
        ("CAP-01", 1800, 6),
    ] {
        let (s, _) = post(
            &http,
            format!("{cmd}/products"),
            json!({ "sku": sku, "name": sku, "price_cents": price }),
        )
        .await;
        assert_eq!(s, 201);
        let (s, _) = post(
            &http,
            format!("{cmd}/inventory/{sku}/restock"),
            json!({ "quantity": stock }),
        )
        .await;
        assert_eq!(s, 201);
    }

    let mut orders = Vec::new();
    for round in 0..3 {
        for i in 0..12 {
            let sku = ["MUG-01", "TEE-01", "CAP-01"][i % 3];
            let (s, r) = post(
                &http,
                format!("{cmd}/orders"),
                json!({ "customer_id": format!("c{}", i % 5), "lines": [{ "sku": sku, "quantity": 1 + i % 3 }] }),
            )
            .await;
            assert_eq!(s, 201, "{r}");
            orders.push((
                r["order_id"].as_str().unwrap().to_owned(),
                format!("c{}", i % 5),
            ));
        }
        // Kill the projector and the relay mid-run, keep going, restart them.
        match round {
            0 => shop.projector.kill(),
            1 => shop.relay.kill(),
            _ => {}
        }
        for (id, customer) in orders.iter().skip(round * 12).step_by(4) {
            // Paying may race the process manager's confirmation: a 422 is
            // a legitimate answer; what matters is what the store records.
            // Each as the order's customer.
            let (s, r) = post(
                &http,
                format!("{cmd}/orders/{id}/pay"),
                json!({ "customer_id": customer }),
            )
            .await;
            assert!(s != 401 && s != 403, "{s} {r}");
        }
        for (id, customer) in orders.iter().skip(round * 12 + 1).step_by(5) {
            let (s, r) = post(
                &http,
                format!("{cmd}/orders/{id}/cancel"),
                json!({ "reason": "test", "customer_id": customer }),
            )
            .await;
            assert!(s != 401 && s != 403, "{s} {r}");
        }
        match round {
            0 => shop.projector = shop.env.start("projector", &["projector"]),
            1 => shop.relay = shop.env.start("relay", &["relay"]),
            _ => {}
        }
    }

    // Wait until every order has left `placed`, and the views have caught up.
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    wait_until(
        Duration::from_secs(90),
        "every order to be settled and every view caught up",
        || async {
            let head = store.head().await.unwrap();
            let settled = {
                let mut all = true;
                for (id, _) in &orders {
                    let r = http
                        .get(format!("{query}/orders/{id}"))
                        .send()
                        .await
                        .unwrap();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if v["data"]["status"] == json!("placed") || v["data"].is_null() {
                        all = false;
                        break;
                    }
                }
                all
            };
            let mut caught_up = true;
            for name in [
                "catalog",
                "order_details",
                "customer_orders",
                "customer_order_history",
                "low_stock",
                "sales_dashboard",
            ] {
                if views
                    .checkpoint(&format!("{name}_v1"))
                    .await
                    .unwrap()
                    .position
                    < head
                {
                    caught_up = false;
                }
            }
            settled && caught_up && store.head().await.unwrap() == head
        },
    )
    .await;

    let events = store
        .read_all(Position::START, 1_000_000, &EventFilter::all())
        .await
        .unwrap();
    assert_stored_is_fold(&views, "catalog", CatalogView, &events).await;
    assert_stored_is_fold(&views, "order_details", OrderDetailsView, &events).await;
    assert_stored_is_fold(&views, "customer_orders", CustomerOrdersView, &events).await;
    assert_stored_is_fold(
        &views,
        "customer_order_history",
        CustomerOrderHistoryView,
        &events,
    )
    .await;
    assert_stored_is_fold(&views, "low_stock", LowStockView, &events).await;
    assert_stored_is_fold(&views, "sales_dashboard", SalesDashboardView, &events).await;

    // Stock arithmetic in the views: never negative, never oversold.
    for (sku, doc) in stored(&views, "catalog").await {
        let (on_hand, reserved, available) = (
            doc["on_hand"].as_u64().unwrap(),
            doc["reserved"].as_u64().unwrap(),
            doc["available"].as_u64().unwrap(),
        );
        assert_eq!(on_hand, reserved + available, "{sku}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(&cfg.stream).await;
}

/// Reads a live stream (Server-Sent Events) in the background and keeps
/// the positions of the `state` events it carries.
/// The `(position, event)` pairs a live stream carried.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>;

fn follow_live(http: &reqwest::Client, url: String) -> (Seen, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (http, out) = (http.clone(), std::sync::Arc::clone(&seen));
    let task = tokio::spawn(async move {
        let resp = http.get(url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let (mut event, mut data) = (String::new(), String::new());
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { return };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                let line = line.trim_end();
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = d.trim().to_owned();
                } else if line.is_empty() && !event.is_empty() {
                    let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    let position = v["position"].as_u64().unwrap_or(0);
                    out.lock().unwrap().push((position, event.clone()));
                    event.clear();
                }
            }
        }
    });
    (seen, task)
}

/// Issue 13, item 1: an online rebuild of every view while commands keep
/// arriving, clients poll every query route (with and without
/// `min_position`) and live streams are open. No request fails, no
/// position goes back, documents written after the switch are served, and
/// the live streams carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_every_view_while_the_shop_runs_fails_no_reader() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let (db, cfg, shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let http = client();

    for sku in ["MUG-01", "TEE-01"] {
        let (s, _) = post(
            &http,
            format!("{cmd}/products"),
            json!({ "sku": sku, "name": sku, "price_cents": 1000 }),
        )
        .await;
        assert_eq!(s, 201);
    }
    let (s, first) = post(
        &http,
        format!("{cmd}/orders"),
        json!({ "customer_id": "c1", "lines": [{ "sku": "MUG-01", "quantity": 1 }] }),
    )
    .await;
    assert_eq!(s, 201, "{first}");
    let first_order = first["order_id"].as_str().unwrap().to_owned();
    // The pollers read it without waiting: let it be visible first.
    let resp = http
        .get(format!(
            "{query}/customers/c1/orders?min_position={}",
            first["position"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = http
        .get(format!(
            "{query}/orders/{first_order}?min_position={}",
            first["position"]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Live streams: one key, one whole view.
    let (mug_live, mug_task) = follow_live(&http, format!("{query}/live/catalog/MUG-01"));
    let (catalog_live, catalog_task) = follow_live(&http, format!("{query}/live/catalog"));

    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let last_position = Arc::new(AtomicU64::new(0));

    // Writers: restocks, then a read-your-writes query of what they wrote.
    let writer = {
        let (http, cmd, query) = (http.clone(), cmd.clone(), query.clone());
        let (running, failures, last) = (
            Arc::clone(&running),
            Arc::clone(&failures),
            Arc::clone(&last_position),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let sku = ["MUG-01", "TEE-01"][(n & 1) as usize];
                let (s, r) = post(
                    &http,
                    format!("{cmd}/inventory/{sku}/restock"),
                    json!({ "quantity": 1 }),
                )
                .await;
                if s != 201 {
                    failures.lock().unwrap().push(format!("restock: {s} {r}"));
                    continue;
                }
                let p = r["position"].as_u64().unwrap();
                last.fetch_max(p, Ordering::Relaxed);
                let resp = http
                    .get(format!("{query}/products/{sku}?min_position={p}"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status != 200 || body["checkpoint"].as_u64().unwrap_or(0) < p {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("read-your-writes at {p}: {status} {body}"));
                }
            }
            n
        })
    };
    // Pollers: every query route, positions never go back.
    let poller = {
        let (http, query) = (http.clone(), query.clone());
        let (running, failures) = (Arc::clone(&running), Arc::clone(&failures));
        let order = first_order.clone();
        tokio::spawn(async move {
            let routes = [
                "/products".to_owned(),
                "/products/MUG-01".to_owned(),
                format!("/orders/{order}"),
                "/customers/c1/orders".to_owned(),
                "/low-stock".to_owned(),
                "/dashboard".to_owned(),
            ];
            let mut checkpoints: BTreeMap<String, u64> = BTreeMap::new();
            let mut polls = 0u64;
            while running.load(Ordering::Relaxed) {
                for route in &routes {
                    polls += 1;
                    let resp = http.get(format!("{query}{route}")).send().await.unwrap();
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    if status != 200 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("GET {route}: {status} {body}"));
                        continue;
                    }
                    if let Some(cp) = body["checkpoint"].as_u64() {
                        let before = checkpoints.insert(route.clone(), cp).unwrap_or(0);
                        if cp < before {
                            failures.lock().unwrap().push(format!(
                                "GET {route}: checkpoint went back {before} -> {cp}"
                            ));
                        }
                    }
                }
            }
            polls
        })
    };

    // Rebuild every view, one after the other, while all that runs.
    for name in [
        "catalog",
        "order_details",
        "customer_orders",
        "low_stock",
        "sales_dashboard",
    ] {
        let out = admin(&db.url, &cfg, &["projections", "rebuild", name]);
        assert!(
            out.status.success(),
            "rebuild {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Keep the clients going a little past the last switch and its grace.
    let views = PgViewStore::new(db.pool.clone());
    let after_switch = last_position.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(30),
        "commands to go on past the last rebuild",
        || async { last_position.load(Ordering::Relaxed) > after_switch + 20 },
    )
    .await;
    running.store(false, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let polls = poller.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} writes and {polls} polls failed: {:#?}",
        failures.len(),
        writes,
        &failures[..failures.len().min(20)]
    );
    assert!(writes > 20 && polls > 20, "{writes} writes, {polls} polls");
    for name in [
        "catalog",
        "order_details",
        "customer_orders",
        "low_stock",
        "sales_dashboard",
    ] {
        let active = views.active(name).await.unwrap().unwrap();
        assert_eq!(active.version, 2, "{name} was switched");
    }

    // A document written after the switch is served, with and without
    // waiting for its position.
    let (s, placed) = post(
        &http,
        format!("{cmd}/orders"),
        json!({ "customer_id": "c2", "lines": [{ "sku": "TEE-01", "quantity": 1 }] }),
    )
    .await;
    assert_eq!(s, 201, "{placed}");
    let (id, p) = (
        placed["order_id"].as_str().unwrap(),
        placed["position"].as_u64().unwrap(),
    );
    let resp = http
        .get(format!("{query}/orders/{id}?min_position={p}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = http
        .get(format!("{query}/customers/c2/orders?min_position={p}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["orders"].as_array().map(Vec::len), Some(1));

    // A customer's orders come in pages, from the history view the
    // projector process keeps beside the others.
    let mut last_p = p;
    for _ in 0..2 {
        let (s, placed) = post(
            &http,
            format!("{cmd}/orders"),
            json!({ "customer_id": "c2", "lines": [{ "sku": "TEE-01", "quantity": 1 }] }),
        )
        .await;
        assert_eq!(s, 201, "{placed}");
        last_p = placed["position"].as_u64().unwrap();
    }
    let page = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let first = page(format!(
        "{query}/customers/c2/orders?limit=2&min_position={last_p}"
    ))
    .await;
    assert_eq!(first["data"]["orders"].as_array().map(Vec::len), Some(2));
    assert_eq!(first["data"]["orders"][0]["order_id"], json!(id));
    let next = first["next"].as_str().expect("a second page").to_owned();
    let rest = page(format!("{query}/customers/c2/orders?limit=2&after={next}")).await;
    assert_eq!(rest["data"]["orders"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["next"], Value::Null);

    // The live streams carried on: each has a state at or beyond the last
    // restock of its documents, and none was closed.
    let (s, r) = post(
        &http,
        format!("{cmd}/inventory/MUG-01/restock"),
        json!({ "quantity": 1 }),
    )
    .await;
    assert_eq!(s, 201);
    let last = r["position"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(20),
        "the live streams to carry the last restock",
        || async {
            let reached = |seen: &std::sync::Mutex<Vec<(u64, String)>>| {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|(p, e)| e == "state" && *p >= last)
            };
            reached(&mug_live) && reached(&catalog_live)
        },
    )
    .await;
    for seen in [&mug_live, &catalog_live] {
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|(_, e)| e == "state"),
            "a live stream was closed: {seen:?}"
        );
    }
    mug_task.abort();
    catalog_task.abort();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(&cfg.stream).await;
}

/// Identity and access as a user meets them, across the real processes:
/// a token printed by `ecommerce auth token` places an order in its
/// subject's name; anonymous callers, other customers and bad tokens are
/// refused by the command and query services (401 with a challenge, 403)
/// and change nothing; operators read the metrics; the store records who
/// did it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_do_what_across_the_processes() {
    let (db, _cfg, shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let staff = client();
    let (s, _) = post(
        &staff,
        format!("{cmd}/products"),
        json!({ "sku": "MUG-01", "name": "Mug", "price_cents": 1250 }),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = post(
        &staff,
        format!("{cmd}/inventory/MUG-01/restock"),
        json!({ "quantity": 5 }),
    )
    .await;
    assert_eq!(s, 201);

    // Ada's token, as a developer gets one: from the command line.
    let out = Command::new(BIN)
        .args([
            "auth", "token", "--sub", "ada", "--role", "customer", "--dir",
        ])
        .arg(&identity().1)
        .output()
        .expect("ecommerce auth token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ada = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bob = identity().0.token("bob", &["customer"]);
    let stranger = DemoIdentity::generate().token("ada", &["customer"]);
    let http = reqwest::Client::new();
    let order = json!({ "lines": [{ "sku": "MUG-01", "quantity": 1 }] });
    let store = PgEventStore::new(db.pool.clone());
    let head = store.head().await.unwrap();

    // Nobody, and a token of another issuer, may order: 401, a challenge,
    // nothing recorded.
    for bearer in [None, Some(stranger.as_str())] {
        let mut req = http.post(format!("{cmd}/orders")).json(&order);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    }
    assert_eq!(store.head().await.unwrap(), head, "refusals record nothing");

    // Ada orders in her own name; staff may not order at all.
    let resp = http
        .post(format!("{cmd}/orders"))
        .bearer_auth(&ada)
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let placed: Value = resp.json().await.unwrap();
    let (id, p) = (
        placed["order_id"].as_str().unwrap().to_owned(),
        placed["position"].as_u64().unwrap(),
    );
    let (s, _) = post(&staff, format!("{cmd}/orders"), order.clone()).await;
    assert_eq!(s, 403, "staff do not place orders");

    // Reading it: Ada yes, Bob no (403), anonymous no (401).
    let read = |bearer: Option<String>| {
        let mut req = http.get(format!("{query}/orders/{id}?min_position={p}"));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        async move { req.send().await.unwrap() }
    };
    let mine = read(Some(ada.clone())).await;
    assert_eq!(mine.status(), 200);
    let doc: Value = mine.json().await.unwrap();
    assert_eq!(doc["data"]["customer_id"], "ada");
    assert_eq!(read(Some(bob.clone())).await.status(), 403);
    assert_eq!(read(None).await.status(), 401);
    // Bob may not pay or cancel it either.
    for action in ["pay", "cancel"] {
        let resp = http
            .post(format!("{cmd}/orders/{id}/{action}"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "bob {action}s ada's order");
    }
    // Metrics are for operators.
    let metrics = |bearer: &str| {
        http.get(format!("{cmd}/metrics"))
            .bearer_auth(bearer.to_owned())
            .send()
    };
    assert_eq!(metrics(&ada).await.unwrap().status(), 403);
    assert_eq!(
        staff
            .get(format!("{cmd}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The store says who did what.
    let events = store
        .read_all(Position::START, 1_000, &EventFilter::all())
        .await
        .unwrap();
    let actor_of = |ty: &str| {
        events
            .iter()
            .find(|e| e.event_type == ty)
            .and_then(|e| e.metadata.actor.clone())
    };
    assert_eq!(actor_of("OrderPlaced").as_deref(), Some("user:ada"));
    assert_eq!(
        actor_of("ProductRegistered").as_deref(),
        Some("user:e2e-staff")
    );
    assert!(events.iter().all(|e| e.metadata.actor.is_some()));
}

/// `ecommerce admin <args>` against the running shop: exit code, stdout and
/// stderr.
fn admin_run(
    db_url: &str,
    cfg: &strata::nats::StreamConfig,
    args: &[&str],
) -> (i32, String, String) {
    let out = admin(db_url, cfg, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An operator's session against the shop as separate processes: orders
/// over many skus, placed at once over HTTP, are all confirmed (the process
/// manager's lanes, checked from outside); `admin projections status` then
/// shows every subscriber, the process manager included, at the store's
/// head with nothing parked; an operator's mistakes get exit code 1 and a
/// message naming what exists, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_follow_the_running_shop_with_the_admin_cli() {
    let (db, cfg, shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let http = client();
    let skus: Vec<String> = (0..8).map(|i| format!("OPS-{i:02}")).collect();
    for sku in &skus {
        let (s, r) = post(
            &http,
            format!("{cmd}/products"),
            json!({ "sku": sku, "name": sku, "price_cents": 500 }),
        )
        .await;
        assert_eq!(s, 201, "{r}");
        let (s, r) = post(
            &http,
            format!("{cmd}/inventory/{sku}/restock"),
            json!({ "quantity": 100 }),
        )
        .await;
        assert_eq!(s, 201, "{r}");
    }
    let placed = futures::future::join_all((0..24).map(|i| {
        post(
            &http,
            format!("{cmd}/orders"),
            json!({
                "customer_id": format!("ops{}", i % 4),
                "lines": [
                    { "sku": skus[i % 8], "quantity": 1 },
                    { "sku": skus[(i + 3) % 8], "quantity": 2 },
                ],
            }),
        )
    }))
    .await;
    let ids: Vec<String> = placed
        .iter()
        .map(|(s, r)| {
            assert_eq!(*s, 201, "{r}");
            r["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    wait_until(Duration::from_secs(60), "every order confirmed", || async {
        for id in &ids {
            let v: Value = http
                .get(format!("{query}/orders/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            if v["data"]["status"] != json!("confirmed") {
                return false;
            }
        }
        true
    })
    .await;

    // Every subscriber reaches the head; nothing is parked.
    let status = std::cell::RefCell::new(Value::Null);
    wait_until(
        Duration::from_secs(30),
        "every subscriber at the head",
        || async {
            let (code, out, err) = admin_run(&db.url, &cfg, &["--json", "projections", "status"]);
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            let done = v["subscribers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["lag"] == json!(0));
            *status.borrow_mut() = v;
            done
        },
    )
    .await;
    let status = status.into_inner();
    let subscribers = status["subscribers"].as_array().unwrap();
    assert!(
        subscribers
            .iter()
            .any(|s| s["subscriber"] == json!("fulfilment")),
        "{status}"
    );
    for s in subscribers {
        assert_eq!(s["state"], json!("running"), "{s}");
        assert_eq!(s["dead_letters"], json!(0), "{s}");
    }

    // The command API reports how its appends went: groups that wrote
    // around streams another process moved, falls back to the locked
    // transaction, and (a gauge) appends waiting for a writer: none, now
    // that every command has its answer.
    let metrics = http
        .get(format!("{cmd}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "strata_store_append_moved_groups_total",
        "strata_store_append_fallbacks_total",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{metrics}"
        );
    }
    let queued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strata_store_appends_queued "))
        .unwrap_or_else(|| panic!("strata_store_appends_queued missing from:\n{metrics}"));
    assert_eq!(queued.trim().parse::<f64>().unwrap(), 0.0, "{metrics}");

    // The projector process reads the stream once for its five views (one
    // group, ADR 0012), the process manager once: two consumers.
    {
        use futures::TryStreamExt;
        let nats = strata::nats::async_nats::connect(nats_url()).await.unwrap();
        let js = strata::nats::async_nats::jetstream::new(nats);
        let stream = js.get_stream(&cfg.stream).await.unwrap();
        let mut names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(names[0], "fulfilment", "{names:?}");
        assert!(names[1].starts_with("views_"), "{names:?}");
    }

    // Mistakes: exit code 1, a message, nothing changed.
    let head = status["head"].clone();
    let (code, _, err) = admin_run(&db.url, &cfg, &["projections", "rebuild", "catalogue"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no projection \"catalogue\"") && err.contains("catalog"),
        "{err}"
    );
    let (code, _, err) = admin_run(&db.url, &cfg, &["dead-letters", "retry", "424242"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no parked dead letter 424242"), "{err}");
    let (code, out, err) = admin_run(&db.url, &cfg, &["--json", "projections", "status"]);
    assert_eq!(code, 0, "{err}");
    let after: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(after["head"], head, "a refused admin command wrote events");
    assert_eq!(after["subscribers"], status["subscribers"]);
    let (code, out, err) = admin_run(&db.url, &cfg, &["verify", "--jetstream"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// An operator upgrades a running shop to the build with the order
/// history. Before, the projector ran every view but
/// `customer_order_history` (as an earlier build did), customers ordered,
/// and one customer's `customer_orders` document held every order and no
/// count (as the earlier build wrote it). The new projector fills the
/// history from the first event, and `GET /customers/{id}/orders` pages
/// through every order, oldest first; `admin verify` reports the old
/// document until `admin projections rebuild customer_orders`, after
/// which it passes and the document holds the latest 20 and the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_shop_fills_the_order_history_and_rebuilds_customer_orders() {
    let (db, cfg, mut shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let http = client();
    let earlier_views = [
        "projector",
        "--view",
        "catalog",
        "--view",
        "order_details",
        "--view",
        "customer_orders",
        "--view",
        "low_stock",
        "--view",
        "sales_dashboard",
    ];
    shop.projector.kill();
    shop.projector = shop.env.start("projector", &earlier_views);

    let (s, r) = post(
        &http,
        format!("{cmd}/products"),
        json!({ "sku": "UPG-01", "name": "Upgrade", "price_cents": 300 }),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let (s, r) = post(
        &http,
        format!("{cmd}/inventory/UPG-01/restock"),
        json!({ "quantity": 1000 }),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let mut ids = Vec::new();
    for customer in std::iter::repeat_n("up1", 23).chain(["up2", "up2"]) {
        let (s, r) = post(
            &http,
            format!("{cmd}/orders"),
            json!({ "customer_id": customer, "lines": [{ "sku": "UPG-01", "quantity": 1 }] }),
        )
        .await;
        assert_eq!(s, 201, "{r}");
        if customer == "up1" {
            ids.push(r["order_id"].as_str().unwrap().to_owned());
        }
    }
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let head = store.head().await.unwrap();
    wait_until(
        Duration::from_secs(30),
        "customer_orders at the head",
        || async {
            views
                .checkpoint("customer_orders_v1")
                .await
                .unwrap()
                .position
                >= head
        },
    )
    .await;

    // up1's document as the earlier build wrote it: every order, no count.
    let events = store
        .read_all(Position::START, 100_000, &EventFilter::all())
        .await
        .unwrap();
    let every: Vec<Value> = events
        .iter()
        .filter(|e| e.event_type == "OrderPlaced" && e.payload["customer_id"] == json!("up1"))
        .map(|e| {
            json!({
                "order_id": e.payload["order_id"],
                "total_cents": e.payload["total_cents"],
                "placed_at": e.recorded_at,
            })
        })
        .collect();
    assert_eq!(every.len(), 23);
    sqlx::query("UPDATE strata_view_customer_orders_v1 SET doc = $1 WHERE key = 'up1'")
        .bind(json!({ "customer_id": "up1", "orders": every }))
        .execute(&db.pool)
        .await
        .unwrap();

    // The upgrade: the projector with every view.
    shop.projector.kill();
    shop.projector = shop.env.start("projector", &["projector"]);
    wait_until(
        Duration::from_secs(30),
        "the order history filled to the head",
        || async {
            views
                .checkpoint("customer_order_history_v1")
                .await
                .unwrap()
                .position
                >= head
        },
    )
    .await;
    let mut listed = Vec::new();
    let mut url = format!("{query}/customers/up1/orders?limit=10");
    loop {
        let page: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        for o in page["data"]["orders"].as_array().unwrap() {
            listed.push(o["order_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => url = format!("{query}/customers/up1/orders?limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(listed, ids, "every order of up1, oldest first");

    let verify = |what: &'static str| {
        let (code, out, err) = admin_run(&db.url, &cfg, &["--json", "verify"]);
        let v: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {out}{err}"));
        (code, v)
    };
    let (code, v) = verify("before the rebuild");
    assert_eq!(code, 1, "{v}");
    let failed: Vec<&Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == json!(false))
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert!(
        failed[0]["check"]
            .as_str()
            .unwrap()
            .starts_with("customer_orders v1")
            && failed[0]["detail"].as_str().unwrap().contains("up1"),
        "{v}"
    );

    let (code, out, err) = admin_run(
        &db.url,
        &cfg,
        &["projections", "rebuild", "customer_orders"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, v) = verify("after the rebuild");
    assert_eq!(code, 0, "{v}");
    let active = views.active("customer_orders").await.unwrap().unwrap();
    let doc = views
        .get(
            &ViewId::new("customer_orders", active.version).unwrap(),
            "up1",
        )
        .await
        .unwrap()
        .doc
        .unwrap()
        .doc;
    assert_eq!(doc["total"], json!(23));
    let kept: Vec<&str> = doc["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        ids[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// A sku runs low and is restocked, against the shop as separate
/// processes: the process manager's reservation puts the sku on `GET
/// /low-stock`, and the restock's read-your-writes read no longer lists
/// it. The restock's batch has the projector group commit a view that
/// only deletes (`low_stock`) beside views that write; afterwards `admin
/// verify` finds every view equal to a fold of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restocked_sku_leaves_the_low_stock_list() {
    let (db, cfg, shop) = start_shop().await;
    let (cmd, query) = (shop.cmd.clone(), shop.query.clone());
    let http = client();
    for (sku, units) in [("LOW-01", 6), ("LOW-02", 100)] {
        let (s, r) = post(
            &http,
            format!("{cmd}/products"),
            json!({ "sku": sku, "name": sku, "price_cents": 300 }),
        )
        .await;
        assert_eq!(s, 201, "{r}");
        let (s, r) = post(
            &http,
            format!("{cmd}/inventory/{sku}/restock"),
            json!({ "quantity": units }),
        )
        .await;
        assert_eq!(s, 201, "{r}");
    }
    let low_skus = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("a listing: {body}"))
            .iter()
            .map(|d| d["sku"].as_str().unwrap().to_owned())
            .collect()
    };
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // 6 on hand, 3 ordered: 3 available, under the threshold of 5.
    let (s, placed) = post(
        &http,
        format!("{cmd}/orders"),
        json!({
            "customer_id": "low1",
            "lines": [
                { "sku": "LOW-01", "quantity": 3 },
                { "sku": "LOW-02", "quantity": 1 },
            ],
        }),
    )
    .await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["order_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "the order confirmed", || async {
        let (_, v) = get(format!("{query}/orders/{id}")).await;
        v["data"]["status"] == json!("confirmed")
    })
    .await;
    wait_until(Duration::from_secs(30), "LOW-01 listed as low", || async {
        let (s, v) = get(format!("{query}/low-stock")).await;
        s == 200 && low_skus(&v) == ["LOW-01"]
    })
    .await;
    let (_, v) = get(format!("{query}/low-stock")).await;
    assert_eq!(v["data"][0]["available"], json!(3), "{v}");

    // The restock's own read sees the sku gone from the list, and its
    // stock in the catalog.
    let (s, r) = post(
        &http,
        format!("{cmd}/inventory/LOW-01/restock"),
        json!({ "quantity": 50 }),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    let p = r["position"].as_u64().unwrap();
    let (s, v) = get(format!("{query}/low-stock?min_position={p}")).await;
    assert_eq!(s, 200, "{v}");
    assert!(low_skus(&v).is_empty(), "{v}");
    let (s, v) = get(format!("{query}/products/LOW-01?min_position={p}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["on_hand"], json!(56), "{v}");

    // Every subscriber at the head, then every view equals a fold.
    wait_until(
        Duration::from_secs(30),
        "every subscriber at the head",
        || async {
            let (code, out, err) = admin_run(&db.url, &cfg, &["--json", "projections", "status"]);
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(out.trim()).unwrap();
            v["subscribers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["lag"] == json!(0))
        },
    )
    .await;
    let (code, out, err) = admin_run(&db.url, &cfg, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

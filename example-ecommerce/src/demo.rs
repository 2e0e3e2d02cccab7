//! The all-in-one demo: every process of the shop in one, a scripted
//! shopping scenario through the HTTP API, and a readable summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use strata::{
    CancellationToken, ChangeFeed, EventBus, EventFilter, EventStore, Position, ReaderConfig,
    ViewReader, ViewStore,
};

use crate::app::Shop;
use crate::domain::payment::PaymentGateway;
use crate::http::{command_router, query_router, serve, Ops, QueryState};
use crate::metrics::Metrics;
use crate::runtime::{cache_samples, spawn_fulfilment, spawn_projectors, Statuses};

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the command API listens (port 0: any free port).
    pub command_addr: String,
    /// Where the query API listens.
    pub query_addr: String,
    /// Exit after the scenario instead of serving.
    pub exit: bool,
}

/// The payment gateway the demo uses: declines charges above 100.00.
pub fn demo_gateway() -> PaymentGateway {
    PaymentGateway::new(0.0, Duration::from_millis(20), 7).with_decline_above(10_000)
}

/// Runs everything over the given backends.
#[allow(clippy::too_many_arguments)]
pub async fn run<S: EventStore, B: EventBus, V: ViewStore>(
    store: S,
    bus: B,
    views: V,
    feed: ChangeFeed,
    statuses: Statuses,
    health: crate::http::HealthCheck,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = crate::http::Auth::anonymous_only(); // TODO(auth): the dev issuer
    let metrics = Arc::new(Metrics::default());
    let shop = Shop::new(store.clone(), demo_gateway(), Arc::clone(&metrics));
    let mut tasks = spawn_projectors(&[], &bus, &views, &feed, &statuses, &shutdown);
    tasks.push(spawn_fulfilment(&shop, &bus, &views, &statuses, &shutdown));
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    reader.listen(&feed, shutdown.clone()).await?;

    let gauges = {
        let (statuses, reader) = (statuses.clone(), reader.clone());
        Arc::new(move || {
            let mut s = statuses.samples();
            s.extend(cache_samples(&reader));
            s
        })
    };
    let ops = Ops {
        metrics,
        health,
        gauges,
    };
    let command_listener = tokio::net::TcpListener::bind(&options.command_addr)
        .await
        .with_context(|| format!("binding {}", options.command_addr))?;
    let query_listener = tokio::net::TcpListener::bind(&options.query_addr)
        .await
        .with_context(|| format!("binding {}", options.query_addr))?;
    let command_url = format!("http://{}", command_listener.local_addr()?);
    let query_url = format!("http://{}", query_listener.local_addr()?);
    tasks.push(tokio::spawn({
        let (router, sd) = (
            command_router(shop.clone(), ops.clone(), auth.clone()),
            shutdown.clone(),
        );
        async move {
            let _ = serve(command_listener, router, sd).await;
        }
    }));
    tasks.push(tokio::spawn({
        let (router, sd) = (
            query_router(
                QueryState {
                    reader: reader.clone(),
                    feed: feed.clone(),
                },
                ops,
                auth.clone(),
                shutdown.clone(),
            ),
            shutdown.clone(),
        );
        async move {
            let _ = serve(query_listener, router, sd).await;
        }
    }));

    let outcome = scenario(&command_url, &query_url).await;
    match &outcome {
        Ok(()) => summary(&store, &query_url).await?,
        Err(e) => eprintln!("the scenario failed: {e:#}"),
    }
    if options.exit || outcome.is_err() {
        shutdown.cancel();
    } else {
        println!("\nServing. Try:");
        println!("  curl {query_url}/products");
        println!("  curl -X POST {command_url}/orders -H 'content-type: application/json' \\");
        println!("       -d '{{\"customer_id\":\"you\",\"lines\":[{{\"sku\":\"MUG-01\",\"quantity\":1}}]}}'");
        println!("  curl {query_url}/metrics");
        println!("Command API {command_url}  ·  Query API {query_url}  ·  Ctrl-C to stop");
    }
    shutdown.cancelled().await;
    crate::runtime::join_all(tasks, crate::http::SHUTDOWN_GRACE).await;
    outcome
}

struct Client {
    http: reqwest::Client,
    commands: String,
    queries: String,
}

impl Client {
    async fn command(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.commands))
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn query(&self, path: &str, min: u64) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.queries))
            .header(crate::http::MIN_POSITION_HEADER, min)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// Waits (bounded) until the order reaches one of `statuses`.
    async fn order_status(
        &self,
        order_id: &str,
        min: u64,
        statuses: &[&str],
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut min = min;
        loop {
            let doc = self.query(&format!("/orders/{order_id}"), min).await?;
            let status = doc["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if statuses.contains(&status.as_str()) {
                return Ok(doc);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("order {order_id} stayed {status}, expected one of {statuses:?}");
            }
            // The process manager works asynchronously: wait for the view
            // to move past what we saw.
            min = doc["checkpoint"].as_u64().unwrap_or(min) + 1;
        }
    }
}

fn position(v: &Value) -> u64 {
    v["position"].as_u64().unwrap_or(0)
}

async fn scenario(commands: &str, queries: &str) -> anyhow::Result<()> {
    let c = Client {
        http: reqwest::Client::new(),
        commands: commands.to_owned(),
        queries: queries.to_owned(),
    };
    println!("\n== Seeding the catalog (POST /products, /inventory/{{sku}}/restock)");
    let products = [
        ("MUG-01", "Strata mug", 1_250, 20),
        ("TEE-01", "Event-sourced tee", 2_400, 8),
        ("CAP-01", "Projection cap", 1_800, 3),
        ("LAMP-01", "Designer lamp", 18_000, 5),
    ];
    for (sku, name, price, stock) in products {
        let (s, _) = c
            .command(
                "/products",
                json!({ "sku": sku, "name": name, "price_cents": price }),
            )
            .await?;
        let (s2, r) = c
            .command(
                &format!("/inventory/{sku}/restock"),
                json!({ "quantity": stock }),
            )
            .await?;
        println!(
            "  {sku:<8} {name:<20} {:>8}  stock {stock:<3} -> {s}, {s2} (position {})",
            format!("{:.2}", price as f64 / 100.0),
            position(&r)
        );
    }

    println!("\n== Ada orders 2 mugs and a tee; it is confirmed, paid and shipped");
    let (s, r) = c
        .command("/orders", json!({ "customer_id": "ada", "lines": [{ "sku": "MUG-01", "quantity": 2 }, { "sku": "TEE-01", "quantity": 1 }] }))
        .await?;
    let ada = r["order_id"].as_str().unwrap_or_default().to_owned();
    println!(
        "  POST /orders -> {s}, order {ada}, position {}",
        position(&r)
    );
    let doc = c
        .order_status(&ada, position(&r), &["confirmed", "rejected"])
        .await?;
    println!(
        "  the process manager reserved the stock: {}",
        doc["data"]["status"]
    );
    let (s, r) = c.command(&format!("/orders/{ada}/pay"), json!({})).await?;
    println!("  POST /orders/{{id}}/pay -> {s}");
    let doc = c.order_status(&ada, position(&r), &["shipped"]).await?;
    println!(
        "  after payment the process manager shipped it: {}",
        doc["data"]["status"]
    );

    println!("\n== Bob wants 5 caps, only 3 are in stock: refused");
    let (s, r) = c
        .command(
            "/orders",
            json!({ "customer_id": "bob", "lines": [{ "sku": "CAP-01", "quantity": 5 }] }),
        )
        .await?;
    let bob = r["order_id"].as_str().unwrap_or_default().to_owned();
    println!("  POST /orders -> {s}");
    let doc = c.order_status(&bob, position(&r), &["rejected"]).await?;
    println!("  {}: {}", doc["data"]["status"], doc["data"]["reason"]);

    println!("\n== Cy buys the lamp; the card is declined (the gateway refuses > 100.00)");
    let (_, r) = c
        .command(
            "/orders",
            json!({ "customer_id": "cy", "lines": [{ "sku": "LAMP-01", "quantity": 1 }] }),
        )
        .await?;
    let cy = r["order_id"].as_str().unwrap_or_default().to_owned();
    c.order_status(&cy, position(&r), &["confirmed"]).await?;
    let (s, r) = c.command(&format!("/orders/{cy}/pay"), json!({})).await?;
    println!("  POST /orders/{{id}}/pay -> {s} {}", r["error"]["message"]);
    let doc = c.query(&format!("/orders/{cy}"), position(&r)).await?;
    println!(
        "  order stays {} with {} failed payment(s)",
        doc["data"]["status"], doc["data"]["failed_payments"]
    );

    println!("\n== Dee orders 3 caps, then cancels: the stock comes back");
    let (_, r) = c
        .command(
            "/orders",
            json!({ "customer_id": "dee", "lines": [{ "sku": "CAP-01", "quantity": 3 }] }),
        )
        .await?;
    let dee = r["order_id"].as_str().unwrap_or_default().to_owned();
    c.order_status(&dee, position(&r), &["confirmed"]).await?;
    let cap = c.query("/products/CAP-01", 0).await?;
    println!(
        "  caps available while reserved: {}",
        cap["data"]["available"]
    );
    let (s, r) = c
        .command(
            &format!("/orders/{dee}/cancel"),
            json!({ "reason": "changed my mind" }),
        )
        .await?;
    println!("  POST /orders/{{id}}/cancel -> {s}");
    c.order_status(&dee, position(&r), &["cancelled"]).await?;
    // The release is the process manager's follow-up: wait for it to show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let cap = c.query("/products/CAP-01", 0).await?;
        if cap["data"]["available"] == json!(3) {
            println!("  caps available after the cancellation: 3");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the cancelled order's caps were not released");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    println!("\n== Bad input is refused and changes nothing");
    let (s, r) = c
        .command(
            "/orders",
            json!({ "customer_id": "eve", "lines": [{ "sku": "NOPE-1", "quantity": 1 }] }),
        )
        .await?;
    println!("  unknown sku      -> {s} {}", r["error"]["code"]);
    let (s, r) = c
        .command(
            "/orders",
            json!({ "customer_id": "eve", "lines": [{ "sku": "MUG-01", "quantity": -2 }] }),
        )
        .await?;
    println!("  negative quantity-> {s} {}", r["error"]["code"]);
    let resp = c
        .http
        .post(format!("{}/orders", c.commands))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    println!("  malformed JSON   -> {}", resp.status().as_u16());
    Ok(())
}

async fn summary<S: EventStore>(store: &S, queries: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let head = store.head().await?;
    let events = store
        .read_all(Position::START, 100_000, &EventFilter::all())
        .await?;
    let mut by_type: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        *by_type
            .entry((e.stream_type.clone(), e.event_type.clone()))
            .or_default() += 1;
    }
    println!(
        "\n== The event store: {} events (head position {head})",
        events.len()
    );
    for ((stream_type, event_type), n) in &by_type {
        println!("  {stream_type:<10} {event_type:<22} {n:>4}");
    }
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{queries}{path}");
        async move {
            let v: Value = http
                .get(url)
                .header(crate::http::MIN_POSITION_HEADER, head.0)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(v)
        }
    };
    println!("\n== View: catalog (GET /products)");
    println!(
        "  {:<8} {:<20} {:>8} {:>8} {:>9}",
        "sku", "name", "price", "on hand", "available"
    );
    for p in get("/products").await?["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "  {:<8} {:<20} {:>8} {:>8} {:>9}",
            p["sku"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            format!("{:.2}", p["price_cents"].as_f64().unwrap_or(0.0) / 100.0),
            p["on_hand"].to_string(),
            p["available"].to_string()
        );
    }
    println!("\n== View: orders by customer (GET /customers/{{id}}/orders)");
    for who in ["ada", "bob", "cy", "dee"] {
        let v = get(&format!("/customers/{who}/orders")).await?;
        for o in v["data"]["orders"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {who:<4} {} {:<10} {:>8}",
                o["order_id"].as_str().unwrap_or("").get(..8).unwrap_or(""),
                o["status"].as_str().unwrap_or(""),
                format!("{:.2}", o["total_cents"].as_f64().unwrap_or(0.0) / 100.0)
            );
        }
    }
    println!("\n== View: low stock (GET /low-stock)");
    for l in get("/low-stock").await?["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "  {:<8} available {}",
            l["sku"].as_str().unwrap_or(""),
            l["available"]
        );
    }
    println!("\n== View: sales dashboard (GET /dashboard)");
    for d in get("/dashboard").await?["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "  {} {:<8} units {:>3}  revenue {:>8}",
            d["day"].as_str().unwrap_or(""),
            d["sku"].as_str().unwrap_or(""),
            d["units"].to_string(),
            format!("{:.2}", d["revenue_cents"].as_f64().unwrap_or(0.0) / 100.0)
        );
    }
    Ok(())
}

//! The all-in-one demo: every process of the shop in one, a scripted
//! shopping scenario through the HTTP API, and a readable summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};
use strata::{
    AnyChangeFeed, CancellationToken, EventBus, EventFilter, EventStore, Position, ReaderConfig,
    ViewReader, ViewStore,
};

use crate::app::Shop;
use crate::domain::payment::PaymentGateway;
use crate::http::{command_router, query_router, serve, Ops, QueryState};
use crate::identity::DemoIdentity;
use crate::metrics::Metrics;
use crate::processes::bind;
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
    feed: AnyChangeFeed,
    statuses: Statuses,
    health: crate::http::HealthCheck,
    options: DemoOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A development issuer in memory: a fresh key pair each run, so no key
    // is compiled in or left behind. The page signs the demo users in.
    let identity = DemoIdentity::generate();
    let auth = identity.auth_with_sign_in();
    let metrics = Arc::new(Metrics::default());
    let shop = Shop::new(store.clone(), demo_gateway(), Arc::clone(&metrics));
    let mut tasks = spawn_projectors(&[], &bus, &views, &feed, &statuses, &shutdown);
    tasks.push(spawn_fulfilment(&shop, &bus, &views, &statuses, &shutdown));
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    reader.listen(&feed, shutdown.clone()).await?;

    let ops = {
        let reader = reader.clone();
        Ops {
            metrics,
            health,
            gauges: statuses.gauges(),
        }
        .with_gauges(move || cache_samples(&reader))
    };
    let command_listener = bind(&options.command_addr).await?;
    let query_listener = bind(&options.query_addr).await?;
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

    let outcome = scenario(&command_url, &query_url, &identity).await;
    match &outcome {
        Ok(()) => summary(&store, &query_url, &identity).await?,
        Err(e) => eprintln!("the scenario failed: {e:#}"),
    }
    if options.exit || outcome.is_err() {
        shutdown.cancel();
    } else {
        let ada = identity.demo_token("ada");
        let olga = identity.demo_token("olga");
        println!("\nServing. Open {query_url}/ and sign in as a demo user, or try:");
        println!("  curl {query_url}/products");
        println!("  TOKEN={ada}   # customer ada (valid 8 h)");
        println!("  curl -X POST {command_url}/orders -H \"authorization: Bearer $TOKEN\" \\");
        println!("       -H 'content-type: application/json' -d '{{\"lines\":[{{\"sku\":\"MUG-01\",\"quantity\":1}}]}}'");
        println!("  curl {query_url}/metrics -H 'authorization: Bearer {olga}'   # operator olga");
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
    identity: DemoIdentity,
}

impl Client {
    /// `Bearer <token>` for `who`: staff for `sam`, a customer otherwise.
    fn bearer(&self, who: &str) -> String {
        let role = if who == "sam" {
            crate::domain::roles::STAFF
        } else {
            crate::domain::roles::CUSTOMER
        };
        format!("Bearer {}", self.identity.token(who, &[role]))
    }

    async fn command(&self, who: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.commands))
            .header(reqwest::header::AUTHORIZATION, self.bearer(who))
            .json(&body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn query(&self, who: &str, path: &str, min: u64) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.queries))
            .header(reqwest::header::AUTHORIZATION, self.bearer(who))
            .header(crate::http::MIN_POSITION_HEADER, min)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// `who` places an order of `lines` (sku, quantity): the status, the
    /// response and the order id (empty when refused).
    async fn order(
        &self,
        who: &str,
        lines: &[(&str, i64)],
    ) -> anyhow::Result<(u16, Value, String)> {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity }))
            .collect();
        let (status, r) = self
            .command(who, "/orders", json!({ "lines": lines }))
            .await?;
        let order_id = r["order_id"].as_str().unwrap_or_default().to_owned();
        Ok((status, r, order_id))
    }

    /// Waits (bounded) until the order reaches one of `statuses`.
    async fn order_status(
        &self,
        who: &str,
        order_id: &str,
        min: u64,
        statuses: &[&str],
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut min = min;
        loop {
            let doc = self.query(who, &format!("/orders/{order_id}"), min).await?;
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

/// The elements of a JSON array (none if it is not one).
fn rows(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// Cents as units with two decimals (`1250` → `12.50`).
fn money(cents: &Value) -> String {
    format!("{:.2}", cents.as_f64().unwrap_or(0.0) / 100.0)
}

fn position(v: &Value) -> u64 {
    v["position"].as_u64().unwrap_or(0)
}

async fn scenario(commands: &str, queries: &str, identity: &DemoIdentity) -> anyhow::Result<()> {
    let c = Client {
        http: reqwest::Client::new(),
        commands: commands.to_owned(),
        queries: queries.to_owned(),
        identity: identity.clone(),
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
                "sam",
                "/products",
                json!({ "sku": sku, "name": name, "price_cents": price }),
            )
            .await?;
        let (s2, r) = c
            .command(
                "sam",
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
    let (s, r, ada) = c.order("ada", &[("MUG-01", 2), ("TEE-01", 1)]).await?;
    println!(
        "  POST /orders -> {s}, order {ada}, position {}",
        position(&r)
    );
    let doc = c
        .order_status("ada", &ada, position(&r), &["confirmed", "rejected"])
        .await?;
    println!(
        "  the process manager reserved the stock: {}",
        doc["data"]["status"]
    );
    let (s, r) = c
        .command("ada", &format!("/orders/{ada}/pay"), json!({}))
        .await?;
    println!("  POST /orders/{{id}}/pay -> {s}");
    let doc = c
        .order_status("ada", &ada, position(&r), &["shipped"])
        .await?;
    println!(
        "  after payment the process manager shipped it: {}",
        doc["data"]["status"]
    );

    println!("\n== Bob wants 5 caps, only 3 are in stock: refused");
    let (s, r, bob) = c.order("bob", &[("CAP-01", 5)]).await?;
    println!("  POST /orders -> {s}");
    let doc = c
        .order_status("bob", &bob, position(&r), &["rejected"])
        .await?;
    println!("  {}: {}", doc["data"]["status"], doc["data"]["reason"]);

    println!("\n== Cy buys the lamp; the card is declined (the gateway refuses > 100.00)");
    let (_, r, cy) = c.order("cy", &[("LAMP-01", 1)]).await?;
    c.order_status("cy", &cy, position(&r), &["confirmed"])
        .await?;
    let (s, r) = c
        .command("cy", &format!("/orders/{cy}/pay"), json!({}))
        .await?;
    println!("  POST /orders/{{id}}/pay -> {s} {}", r["error"]["message"]);
    let doc = c
        .query("cy", &format!("/orders/{cy}"), position(&r))
        .await?;
    println!(
        "  order stays {} with {} failed payment(s)",
        doc["data"]["status"], doc["data"]["failed_payments"]
    );

    println!("\n== Dee orders 3 caps, then cancels: the stock comes back");
    let (_, r, dee) = c.order("dee", &[("CAP-01", 3)]).await?;
    c.order_status("dee", &dee, position(&r), &["confirmed"])
        .await?;
    let cap = c.query("dee", "/products/CAP-01", 0).await?;
    println!(
        "  caps available while reserved: {}",
        cap["data"]["available"]
    );
    let (s, r) = c
        .command(
            "dee",
            &format!("/orders/{dee}/cancel"),
            json!({ "reason": "changed my mind" }),
        )
        .await?;
    println!("  POST /orders/{{id}}/cancel -> {s}");
    c.order_status("dee", &dee, position(&r), &["cancelled"])
        .await?;
    // The release is the process manager's follow-up: wait for it to show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let cap = c.query("dee", "/products/CAP-01", 0).await?;
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
    let (s, r, _) = c.order("eve", &[("NOPE-1", 1)]).await?;
    println!("  unknown sku      -> {s} {}", r["error"]["code"]);
    let (s, r, _) = c.order("eve", &[("MUG-01", -2)]).await?;
    println!("  negative quantity-> {s} {}", r["error"]["code"]);
    let resp = c
        .http
        .post(format!("{}/orders", c.commands))
        .header(reqwest::header::AUTHORIZATION, c.bearer("eve"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    println!("  malformed JSON   -> {}", resp.status().as_u16());

    println!("\n== Nobody acts for someone else");
    let (s, r) = c
        .command("bob", &format!("/orders/{dee}/cancel"), json!({}))
        .await?;
    println!(
        "  Bob cancels Dee's order      -> {s} {}",
        r["error"]["code"]
    );
    let (s, r) = c
        .command("ada", "/inventory/MUG-01/restock", json!({ "quantity": 5 }))
        .await?;
    println!(
        "  Ada restocks                 -> {s} {}",
        r["error"]["code"]
    );
    let resp = c
        .http
        .get(format!("{}/orders/{ada}", c.queries))
        .header(reqwest::header::AUTHORIZATION, c.bearer("bob"))
        .send()
        .await?;
    println!(
        "  Bob reads Ada's order        -> {}",
        resp.status().as_u16()
    );
    let resp = c
        .http
        .post(format!("{}/orders", c.commands))
        .json(&json!({ "lines": [{ "sku": "MUG-01", "quantity": 1 }] }))
        .send()
        .await?;
    println!(
        "  an anonymous order           -> {}",
        resp.status().as_u16()
    );
    Ok(())
}

async fn summary<S: EventStore>(
    store: &S,
    queries: &str,
    identity: &DemoIdentity,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    // Staff read every view.
    let staff = format!(
        "Bearer {}",
        identity.token("sam", &[crate::domain::roles::STAFF])
    );
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
        let staff = staff.clone();
        async move {
            let v: Value = http
                .get(url)
                .header(reqwest::header::AUTHORIZATION, staff)
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
    for p in rows(&get("/products").await?["data"]) {
        println!(
            "  {:<8} {:<20} {:>8} {:>8} {:>9}",
            p["sku"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            money(&p["price_cents"]),
            p["on_hand"].to_string(),
            p["available"].to_string()
        );
    }
    println!("\n== View: orders by customer (GET /customers/{{id}}/orders)");
    for who in ["ada", "bob", "cy", "dee"] {
        let v = get(&format!("/customers/{who}/orders")).await?;
        for o in rows(&v["data"]["orders"]) {
            println!(
                "  {who:<4} {} {:<10} {:>8}",
                o["order_id"].as_str().unwrap_or("").get(..8).unwrap_or(""),
                o["status"].as_str().unwrap_or(""),
                money(&o["total_cents"])
            );
        }
    }
    println!("\n== View: low stock (GET /low-stock)");
    for l in rows(&get("/low-stock").await?["data"]) {
        println!(
            "  {:<8} available {}",
            l["sku"].as_str().unwrap_or(""),
            l["available"]
        );
    }
    println!("\n== View: sales dashboard (GET /dashboard)");
    for d in rows(&get("/dashboard").await?["data"]) {
        println!(
            "  {} {:<8} units {:>3}  revenue {:>8}",
            d["day"].as_str().unwrap_or(""),
            d["sku"].as_str().unwrap_or(""),
            d["units"].to_string(),
            money(&d["revenue_cents"])
        );
    }
    Ok(())
}

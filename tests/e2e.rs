//! End to end: the shop's processes as real OS processes (`ecommerce relay`,
//! `projector`, `process-manager`, `command-api`, `query-api`) against real
//! Postgres and NATS. The scenario runs through HTTP; the projector and the
//! relay are killed (SIGKILL) and restarted mid-run; at the end every view
//! equals a fresh fold of the store.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use example_ecommerce::views::{
    CatalogView, CustomerOrdersView, LowStockView, OrderDetailsView, SalesDashboardView,
};
use serde_json::{json, Value};
use strata::testing::{nats_url, test_database, unique_stream, wait_until};
use strata::{
    EventFilter, EventStore, PgEventStore, PgViewStore, Position, Projection, ProjectionTest,
    ViewId, ViewStore,
};

const BIN: &str = env!("CARGO_BIN_EXE_ecommerce");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Env {
    db_url: String,
    stream: String,
    prefix: String,
}

impl Env {
    fn start(&self, name: &str, args: &[&str]) -> Proc {
        let child = Command::new(BIN)
            .args(args)
            .args(["--stream", &self.stream, "--subject-prefix", &self.prefix])
            .env("DATABASE_URL", &self.db_url)
            .env("NATS_URL", nats_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
        }
    }
}

async fn wait_healthy(http: &reqwest::Client, base: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{base}/health"),
        || async {
            http.get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = http.post(url).json(&body).send().await.unwrap();
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

fn folded<P: Projection>(p: P, events: &[strata::EventEnvelope]) -> BTreeMap<String, Value> {
    ProjectionTest::new(p).given(events.to_vec()).json().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_survive_kills_and_views_equal_a_fold() {
    let db = test_database().await;
    let cfg = unique_stream();
    let env = Env {
        db_url: db.url.clone(),
        stream: cfg.stream.clone(),
        prefix: cfg.prefix.clone(),
    };
    let (cmd_port, query_port) = (free_port(), free_port());
    let cmd = format!("http://127.0.0.1:{cmd_port}");
    let query = format!("http://127.0.0.1:{query_port}");
    let cmd_listen = format!("127.0.0.1:{cmd_port}");
    let query_listen = format!("127.0.0.1:{query_port}");
    let mut relay = env.start("relay", &["relay"]);
    let mut projector = env.start("projector", &["projector"]);
    let _pm = env.start("process-manager", &["process-manager"]);
    let _command_api = env.start("command-api", &["command-api", "--listen", &cmd_listen]);
    let _query_api = env.start("query-api", &["query-api", "--listen", &query_listen]);
    let http = reqwest::Client::new();
    wait_healthy(&http, &cmd).await;
    wait_healthy(&http, &query).await;

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
            orders.push(r["order_id"].as_str().unwrap().to_owned());
        }
        // Kill the projector and the relay mid-run, keep going, restart them.
        match round {
            0 => projector.kill(),
            1 => relay.kill(),
            _ => {}
        }
        for id in orders.iter().skip(round * 12).step_by(4) {
            // Paying may race the process manager's confirmation: a 422 is
            // a legitimate answer; what matters is what the store records.
            let _ = post(&http, format!("{cmd}/orders/{id}/pay"), json!({})).await;
        }
        for id in orders.iter().skip(round * 12 + 1).step_by(5) {
            let _ = post(
                &http,
                format!("{cmd}/orders/{id}/cancel"),
                json!({ "reason": "test" }),
            )
            .await;
        }
        match round {
            0 => projector = env.start("projector", &["projector"]),
            1 => relay = env.start("relay", &["relay"]),
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
                for id in &orders {
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
    assert_eq!(
        stored(&views, "catalog").await,
        folded(CatalogView, &events)
    );
    assert_eq!(
        stored(&views, "order_details").await,
        folded(OrderDetailsView, &events)
    );
    assert_eq!(
        stored(&views, "customer_orders").await,
        folded(CustomerOrdersView, &events)
    );
    assert_eq!(
        stored(&views, "low_stock").await,
        folded(LowStockView, &events)
    );
    assert_eq!(
        stored(&views, "sales_dashboard").await,
        folded(SalesDashboardView, &events)
    );

    // Stock arithmetic in the views: never negative, never oversold.
    for (sku, doc) in stored(&views, "catalog").await {
        let (on_hand, reserved, available) = (
            doc["on_hand"].as_u64().unwrap(),
            doc["reserved"].as_u64().unwrap(),
            doc["available"].as_u64().unwrap(),
        );
        assert_eq!(on_hand, reserved + available, "{sku}");
    }
    let _ = (&relay.name, &projector.name);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(&cfg.stream).await;
}

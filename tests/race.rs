//! The race for the last units: 32 buyers order at once, many rounds, on
//! real Postgres. Never an oversell; every order ends confirmed or
//! rejected; the stock arithmetic is exact in the store and in the views.

use std::sync::Arc;
use std::time::Duration;

use example_ecommerce::app::LineRequest;
use example_ecommerce::domain::order::OrderStatus;
use example_ecommerce::domain::{inventory_stream, order_stream};
use strata::testing::{test_database, wait_until};
use strata::{
    AnyChangeFeed, Checkpoints, CommandContext, Documents, EventStore, InProcessBus, PgEventStore,
    PgViewStore, ViewId,
};
use uuid::Uuid;

#[path = "../example-ecommerce/tests/support/mod.rs"]
mod support;

use support::InProcessShop;

const BUYERS: usize = 32;
const ROUNDS: usize = 6;
const STOCK_PER_ROUND: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_buyers_race_for_the_last_units() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let bus = InProcessBus::new(store.clone());
    let InProcessShop {
        shop,
        shutdown,
        tasks,
        ..
    } = InProcessShop::start(
        &store,
        &bus,
        &views,
        &AnyChangeFeed::in_process(),
        &["catalog".to_owned()],
    );

    let sku = "HOT-1";
    shop.register_product(sku, "Hot item", 999, CommandContext::system("test"))
        .await
        .unwrap();
    let mut restocked = 0u32;
    let mut confirmed_total = 0u32;
    for round in 0..ROUNDS {
        shop.restock(sku, STOCK_PER_ROUND, CommandContext::system("test"))
            .await
            .unwrap();
        restocked += STOCK_PER_ROUND;
        // 32 buyers, 1 or 2 units each, all at once.
        let buys: Vec<_> = (0..BUYERS)
            .map(|b| {
                let shop = shop.clone();
                tokio::spawn(async move {
                    let id = Uuid::new_v4();
                    let qty = 1 + (b % 2) as u32;
                    shop.place_order(
                        id,
                        &format!("buyer-{b}"),
                        &[LineRequest {
                            sku: sku.to_owned(),
                            quantity: qty,
                        }],
                        CommandContext::system("test"),
                    )
                    .await
                    .unwrap();
                    (id, qty)
                })
            })
            .collect();
        let mut placed = Vec::new();
        for b in buys {
            placed.push(b.await.unwrap());
        }
        // Every order settles: confirmed or rejected.
        let settled: Arc<std::sync::Mutex<Vec<(OrderStatus, u32)>>> = Arc::default();
        wait_until(
            Duration::from_secs(60),
            &format!("round {round}: every order settled"),
            || {
                let (shop, placed, settled) = (shop.clone(), placed.clone(), Arc::clone(&settled));
                async move {
                    let mut now = Vec::new();
                    for (id, qty) in &placed {
                        let (order, _) = shop.orders.load(&order_stream(*id)).await.unwrap();
                        match order.status() {
                            OrderStatus::Confirmed | OrderStatus::Rejected => {
                                now.push((order.status(), *qty));
                            }
                            _ => return false,
                        }
                    }
                    *settled.lock().unwrap() = now;
                    true
                }
            },
        )
        .await;
        let settled = settled.lock().unwrap().clone();
        let confirmed: u32 = settled
            .iter()
            .filter(|(s, _)| *s == OrderStatus::Confirmed)
            .map(|(_, q)| q)
            .sum();
        let stock_before = restocked - confirmed_total;
        assert!(
            confirmed <= stock_before,
            "round {round}: oversold {confirmed} of {stock_before}"
        );
        // Rejections only happen when the units were really gone: the
        // smallest rejected quantity did not fit in what was left.
        let left = stock_before - confirmed;
        for (s, q) in &settled {
            if *s == OrderStatus::Rejected {
                assert!(
                    *q > left,
                    "round {round}: rejected {q} while {left} were left"
                );
            }
        }
        confirmed_total += confirmed;

        // Stock arithmetic in the store: nothing shipped, so on hand is what
        // was restocked and reserved is what was confirmed.
        let (inventory, _) = shop
            .inventory
            .load(&inventory_stream(sku).unwrap())
            .await
            .unwrap();
        assert_eq!(inventory.on_hand(), restocked);
        assert_eq!(inventory.reserved(), confirmed_total);
        assert_eq!(inventory.available(), restocked - confirmed_total);
    }

    // The catalog view agrees once it has caught up.
    let head = store.head().await.unwrap();
    let view = ViewId::new("catalog", 1).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the catalog view to catch up",
        || async { views.checkpoint(&view.subscriber()).await.unwrap().position >= head },
    )
    .await;
    let doc = views.get(&view, sku).await.unwrap().doc.unwrap().doc;
    assert_eq!(doc["on_hand"], serde_json::json!(restocked));
    assert_eq!(doc["reserved"], serde_json::json!(confirmed_total));
    assert_eq!(
        doc["available"],
        serde_json::json!(restocked - confirmed_total)
    );
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

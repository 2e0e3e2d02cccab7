//! The projections, given events, then documents.

use std::collections::HashMap;

use chrono::TimeZone;
use serde_json::json;
use strata::{DomainEvent, EventEnvelope, EventSet, Metadata, Position, ProjectionTest, StreamId};

use chrono::{DateTime, Utc};
use strata::{Projection, Recorded};
use uuid::Uuid;

use super::*;
use crate::domain::catalog::ProductEvent;
use crate::domain::inventory::InventoryEvent;
use crate::domain::order::{OrderEvent, OrderLine};

const PRODUCT: &str = "product";
const INVENTORY: &str = "inventory";
const ORDER: &str = "order";

/// The keys `p` gives an envelope, decoded as the runtime does (none
/// when the event is not in its set).
fn keys<P: Projection>(p: &P, e: &EventEnvelope) -> Vec<String> {
    match P::Event::decode(e).unwrap() {
        Some(event) => p.keys(Recorded {
            event: &event,
            envelope: e,
        }),
        None => vec![],
    }
}
use crate::domain::{inventory_stream, order_stream, product_stream};

/// Builds envelopes from typed events: increasing positions, per-stream
/// versions, a settable recorded_at.
struct Events {
    events: Vec<EventEnvelope>,
    versions: HashMap<String, u64>,
    at: DateTime<Utc>,
}

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, day, hour, 0, 0).unwrap()
}

impl Events {
    fn new() -> Self {
        Events {
            events: vec![],
            versions: HashMap::new(),
            at: at(1, 10),
        }
    }

    fn at(&mut self, recorded_at: DateTime<Utc>) -> &mut Self {
        self.at = recorded_at;
        self
    }

    fn push<E: DomainEvent>(
        &mut self,
        stream_id: StreamId,
        stream_type: &str,
        event: &E,
    ) -> &mut Self {
        let (event_type, payload) = strata::encode(event).unwrap();
        let version = self.versions.entry(stream_id.to_string()).or_default();
        *version += 1;
        let position = self.events.len() as u64 + 1;
        self.events.push(EventEnvelope {
            position: Position(position),
            event_id: Uuid::from_u128(u128::from(position)),
            stream_id,
            stream_type: stream_type.to_owned(),
            stream_version: *version,
            event_type,
            schema_version: 1,
            payload,
            metadata: Metadata::new(),
            recorded_at: self.at,
        });
        self
    }

    fn product(&mut self, event: ProductEvent) -> &mut Self {
        let sku = match &event {
            ProductEvent::ProductRegistered { sku, .. }
            | ProductEvent::PriceChanged { sku, .. }
            | ProductEvent::ProductDiscontinued { sku } => sku.clone(),
        };
        self.push(product_stream(&sku).unwrap(), PRODUCT, &event)
    }

    fn inventory(&mut self, event: InventoryEvent) -> &mut Self {
        let sku = match &event {
            InventoryEvent::Restocked { sku, .. }
            | InventoryEvent::StockReserved { sku, .. }
            | InventoryEvent::ReservationRefused { sku, .. }
            | InventoryEvent::ReservationReleased { sku, .. }
            | InventoryEvent::StockCommitted { sku, .. } => sku.clone(),
        };
        self.push(inventory_stream(&sku).unwrap(), INVENTORY, &event)
    }

    fn order(&mut self, id: Uuid, event: OrderEvent) -> &mut Self {
        self.push(order_stream(id), ORDER, &event)
    }

    fn all(&self) -> Vec<EventEnvelope> {
        self.events.clone()
    }

    fn last(&self) -> EventEnvelope {
        self.events.last().cloned().unwrap()
    }
}

// -- event builders -----------------------------------------------------

fn registered(sku: &str, name: &str, price_cents: i64) -> ProductEvent {
    ProductEvent::ProductRegistered {
        sku: sku.into(),
        name: name.into(),
        price_cents,
    }
}

fn restocked(sku: &str, quantity: u32, on_hand: u32) -> InventoryEvent {
    InventoryEvent::Restocked {
        sku: sku.into(),
        quantity,
        on_hand,
    }
}

fn reserved(sku: &str, order: Uuid, quantity: u32, available_after: u32) -> InventoryEvent {
    InventoryEvent::StockReserved {
        sku: sku.into(),
        order_id: order,
        quantity,
        available_after,
    }
}

fn released(sku: &str, order: Uuid, quantity: u32, available_after: u32) -> InventoryEvent {
    InventoryEvent::ReservationReleased {
        sku: sku.into(),
        order_id: order,
        quantity,
        available_after,
    }
}

fn committed(sku: &str, order: Uuid, quantity: u32, on_hand: u32) -> InventoryEvent {
    InventoryEvent::StockCommitted {
        sku: sku.into(),
        order_id: order,
        quantity,
        on_hand,
    }
}

fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

fn order_id(n: u128) -> Uuid {
    Uuid::from_u128(0x1000 + n)
}

fn placed(id: Uuid, customer: &str, lines: Vec<OrderLine>) -> OrderEvent {
    let total_cents = lines.iter().map(|l| l.total_cents().unwrap()).sum();
    OrderEvent::OrderPlaced {
        order_id: id,
        customer_id: customer.into(),
        lines,
        total_cents,
    }
}

fn line_reserved(id: Uuid, sku: &str) -> OrderEvent {
    OrderEvent::LineReserved {
        order_id: id,
        sku: sku.into(),
    }
}

fn mug_and_tee() -> Vec<OrderLine> {
    vec![line("MUG-01", 2, 1200), line("TEE-01", 1, 2500)]
}

/// An order through its whole life: placed, reserved, confirmed, a
/// failed payment, paid, shipped.
fn full_life(ev: &mut Events, id: Uuid) {
    ev.order(id, placed(id, "alice", mug_and_tee()))
        .order(id, line_reserved(id, "MUG-01"))
        .order(id, line_reserved(id, "TEE-01"))
        .order(id, OrderEvent::OrderConfirmed { order_id: id })
        .at(at(1, 11))
        .order(
            id,
            OrderEvent::PaymentFailed {
                order_id: id,
                reason: "card declined".into(),
            },
        )
        .order(
            id,
            OrderEvent::OrderPaid {
                order_id: id,
                amount_cents: 4900,
                payment_ref: "pay-1".into(),
            },
        )
        .at(at(2, 9))
        .order(
            id,
            OrderEvent::OrderShipped {
                order_id: id,
                lines: mug_and_tee(),
            },
        );
}

// -- catalog ------------------------------------------------------------

#[test]
fn view_names_are_distinct_and_valid() {
    let names = [
        CatalogView.name(),
        OrderDetailsView.name(),
        CustomerOrdersView.name(),
        CustomerOrderHistoryView.name(),
        LowStockView.name(),
        SalesDashboardView.name(),
    ];
    assert_eq!(names, VIEW_NAMES);
    for name in names {
        strata::ViewId::new(name, 1).unwrap();
    }
}

#[test]
fn catalog_price_change_stock_moves_and_discontinuation() {
    let o1 = order_id(1);
    let o2 = order_id(2);
    let mut ev = Events::new();
    ev.product(registered("MUG-01", "Strata mug", 1200))
        .product(ProductEvent::PriceChanged {
            sku: "MUG-01".into(),
            old_price_cents: 1200,
            new_price_cents: 1500,
        })
        .inventory(restocked("MUG-01", 10, 10))
        .inventory(reserved("MUG-01", o1, 3, 7))
        .inventory(reserved("MUG-01", o2, 2, 5))
        .inventory(InventoryEvent::ReservationRefused {
            sku: "MUG-01".into(),
            order_id: order_id(3),
            requested: 9,
            available: 5,
        })
        .inventory(released("MUG-01", o2, 2, 7))
        .inventory(committed("MUG-01", o1, 3, 7))
        .inventory(restocked("MUG-01", 4, 11))
        .product(registered("TEE-01", "Strata tee", 2500))
        .product(ProductEvent::ProductDiscontinued {
            sku: "TEE-01".into(),
        });
    let t = ProjectionTest::new(CatalogView).given(ev.all());
    assert_eq!(
        t.doc("MUG-01").unwrap(),
        CatalogItem {
            sku: "MUG-01".into(),
            name: "Strata mug".into(),
            price_cents: 1500,
            discontinued: false,
            on_hand: 11,
            reserved: 0,
            available: 11,
        }
    );
    assert_eq!(
        t.doc("TEE-01").unwrap(),
        CatalogItem {
            sku: "TEE-01".into(),
            name: "Strata tee".into(),
            price_cents: 2500,
            discontinued: true,
            on_hand: 0,
            reserved: 0,
            available: 0,
        }
    );
    insta::assert_json_snapshot!(t.json());
}

#[test]
fn catalog_mid_reservation_counts() {
    let mut ev = Events::new();
    ev.inventory(restocked("MUG-01", 10, 10))
        .inventory(reserved("MUG-01", order_id(1), 3, 7))
        .inventory(restocked("MUG-01", 5, 15));
    let t = ProjectionTest::new(CatalogView).given(ev.all());
    let item = t.doc("MUG-01").unwrap();
    assert_eq!((item.on_hand, item.reserved, item.available), (15, 3, 12));
}

#[test]
fn catalog_restock_before_register() {
    let mut ev = Events::new();
    ev.inventory(restocked("HAT-01", 6, 6));
    let t = ProjectionTest::new(CatalogView).given(ev.all());
    assert_eq!(
        t.doc("HAT-01").unwrap(),
        CatalogItem {
            sku: "HAT-01".into(),
            name: String::new(),
            price_cents: 0,
            discontinued: false,
            on_hand: 6,
            reserved: 0,
            available: 6,
        }
    );
    ev.product(registered("HAT-01", "Strata hat", 900));
    let t = ProjectionTest::new(CatalogView).given(ev.all());
    let item = t.doc("HAT-01").unwrap();
    assert_eq!(item.name, "Strata hat");
    assert_eq!(item.price_cents, 900);
    assert_eq!((item.on_hand, item.available), (6, 6));
}

#[test]
fn catalog_ignores_refusals_and_order_events() {
    let id = order_id(1);
    let mut ev = Events::new();
    ev.inventory(InventoryEvent::ReservationRefused {
        sku: "MUG-01".into(),
        order_id: id,
        requested: 1,
        available: 0,
    })
    .order(id, placed(id, "alice", mug_and_tee()));
    for e in ev.all() {
        // Order events are not in the catalog's set; the refusal is,
        // and touches no document.
        if let Some(event) = CatalogEvent::decode(&e).unwrap() {
            let recorded = Recorded {
                event: &event,
                envelope: &e,
            };
            assert_eq!(CatalogView.keys(recorded), Vec::<String>::new());
        }
    }
    assert!(ProjectionTest::new(CatalogView)
        .given(ev.all())
        .json()
        .is_empty());
}

// -- order details ------------------------------------------------------

#[test]
fn order_details_full_life() {
    let id = order_id(1);
    let mut ev = Events::new();
    full_life(&mut ev, id);
    let t = ProjectionTest::new(OrderDetailsView).given(ev.all());
    let d = t.doc(&id.to_string()).unwrap();
    assert_eq!(d.order_id, id);
    assert_eq!(d.customer_id, "alice");
    assert_eq!(d.status, "shipped");
    assert_eq!(d.lines, mug_and_tee());
    assert_eq!(d.total_cents, 4900);
    assert_eq!(d.reserved_skus, ["MUG-01", "TEE-01"]);
    assert_eq!(d.reason, None);
    assert_eq!(d.payment_ref.as_deref(), Some("pay-1"));
    assert_eq!(d.failed_payments, 1);
    assert_eq!(d.refund_cents, 0);
    assert_eq!(d.updated_position, 7);
    let history: Vec<(u64, &str)> = d
        .history
        .iter()
        .map(|h| (h.position, h.event_type.as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (1, "OrderPlaced"),
            (2, "LineReserved"),
            (3, "LineReserved"),
            (4, "OrderConfirmed"),
            (5, "PaymentFailed"),
            (6, "OrderPaid"),
            (7, "OrderShipped"),
        ]
    );
    assert_eq!(d.history[6].at, at(2, 9));
    insta::assert_json_snapshot!(t.json());
}

#[test]
fn order_details_status_step_by_step() {
    let id = order_id(1);
    let mut ev = Events::new();
    full_life(&mut ev, id);
    let all = ev.all();
    let expected = [
        "placed",
        "placed",
        "placed",
        "confirmed",
        "confirmed",
        "paid",
        "shipped",
    ];
    for (n, status) in expected.iter().enumerate() {
        let t = ProjectionTest::new(OrderDetailsView).given(all[..=n].to_vec());
        assert_eq!(t.doc(&id.to_string()).unwrap().status, *status, "{n}");
    }
}

#[test]
fn order_details_rejection() {
    let id = order_id(2);
    let mut ev = Events::new();
    ev.order(id, placed(id, "bob", mug_and_tee()))
        .order(id, line_reserved(id, "TEE-01"))
        .order(
            id,
            OrderEvent::OrderRejected {
                order_id: id,
                reason: "MUG-01 is out of stock".into(),
                reserved_skus: vec!["TEE-01".into()],
                line_skus: vec!["MUG-01".into(), "TEE-01".into()],
            },
        );
    let d = ProjectionTest::new(OrderDetailsView)
        .given(ev.all())
        .doc(&id.to_string())
        .unwrap();
    assert_eq!(d.status, "rejected");
    assert_eq!(d.reason.as_deref(), Some("MUG-01 is out of stock"));
    assert_eq!(d.reserved_skus, ["TEE-01"]);
    assert_eq!(d.payment_ref, None);
    assert_eq!(d.updated_position, 3);
    assert_eq!(d.history.len(), 3);
}

#[test]
fn order_details_cancellation_after_payment_refunds() {
    let id = order_id(3);
    let mut ev = Events::new();
    ev.order(id, placed(id, "carol", vec![line("MUG-01", 1, 1200)]))
        .order(id, line_reserved(id, "MUG-01"))
        .order(id, OrderEvent::OrderConfirmed { order_id: id })
        .order(
            id,
            OrderEvent::OrderPaid {
                order_id: id,
                amount_cents: 1200,
                payment_ref: "pay-9".into(),
            },
        )
        .order(
            id,
            OrderEvent::OrderCancelled {
                order_id: id,
                reason: "changed my mind".into(),
                reserved_skus: vec!["MUG-01".into()],
                line_skus: vec!["MUG-01".into()],
                refund_cents: 1200,
            },
        );
    let d = ProjectionTest::new(OrderDetailsView)
        .given(ev.all())
        .doc(&id.to_string())
        .unwrap();
    assert_eq!(d.status, "cancelled");
    assert_eq!(d.reason.as_deref(), Some("changed my mind"));
    assert_eq!(d.refund_cents, 1200);
    assert_eq!(d.payment_ref.as_deref(), Some("pay-9"));
    assert_eq!(d.updated_position, 5);
}

#[test]
fn order_details_keeps_orders_apart() {
    let (a, b) = (order_id(1), order_id(2));
    let mut ev = Events::new();
    ev.order(a, placed(a, "alice", mug_and_tee()))
        .order(b, placed(b, "alice", vec![line("HAT-01", 1, 900)]))
        .order(a, OrderEvent::OrderConfirmed { order_id: a });
    let t = ProjectionTest::new(OrderDetailsView).given(ev.all());
    assert_eq!(t.json().len(), 2);
    assert_eq!(t.doc(&a.to_string()).unwrap().status, "confirmed");
    assert_eq!(t.doc(&b.to_string()).unwrap().status, "placed");
    assert_eq!(t.doc(&b.to_string()).unwrap().total_cents, 900);
}

#[test]
fn unknown_event_types_leave_documents_unchanged() {
    let id = order_id(1);
    let mut ev = Events::new();
    ev.order(id, placed(id, "alice", mug_and_tee()));
    let t = ProjectionTest::new(OrderDetailsView).given(ev.all());
    let before = t.doc(&id.to_string());
    let mut unknown = ev.last();
    unknown.position = Position(2);
    unknown.event_type = "OrderGiftWrapped".into();
    unknown.payload = json!({ "order_id": id });
    // Not in the set: the runtime skips it.
    assert!(OrderEvent::decode(&unknown).unwrap().is_none());
    let after = ProjectionTest::new(OrderDetailsView)
        .given(ev.all().into_iter().chain([unknown]))
        .doc(&id.to_string());
    assert_eq!(after, before);

    let mut ev = Events::new();
    ev.inventory(restocked("MUG-01", 3, 3));
    let mut unknown = ev.last();
    unknown.event_type = "StockCounted".into();
    assert!(CatalogEvent::decode(&unknown).unwrap().is_none());
    assert!(InventoryEvent::decode(&unknown).unwrap().is_none());
    let catalog = ProjectionTest::new(CatalogView).given(ev.all());
    let with_unknown =
        ProjectionTest::new(CatalogView).given(ev.all().into_iter().chain([unknown]));
    assert_eq!(catalog.json(), with_unknown.json());
}

#[test]
fn malformed_payloads_are_errors() {
    let id = order_id(1);
    let mut ev = Events::new();
    ev.order(id, placed(id, "alice", mug_and_tee()))
        .order(
            id,
            OrderEvent::OrderShipped {
                order_id: id,
                lines: mug_and_tee(),
            },
        )
        .inventory(restocked("MUG-01", 3, 3))
        .product(registered("MUG-01", "Mug", 1));
    let mut bad = ev.all();
    for e in &mut bad {
        e.payload = json!({ "nonsense": true });
    }
    // Decoding (once, by the runtime) reports them, for every view
    // that follows them: retried, then dead-lettered.
    assert!(OrderEvent::decode(&bad[0]).is_err());
    assert!(OrderEvent::decode(&bad[1]).is_err());
    assert!(CatalogEvent::decode(&bad[2]).is_err());
    assert!(InventoryEvent::decode(&bad[2]).is_err());
    assert!(CatalogEvent::decode(&bad[3]).is_err());
    // An order event with no OrderPlaced before it.
    let shipped = &ev.all()[1];
    let event = OrderEvent::decode(shipped).unwrap().unwrap();
    let recorded = Recorded {
        event: &event,
        envelope: shipped,
    };
    assert!(OrderDetailsView
        .apply(&id.to_string(), None, recorded)
        .is_err());
}

// -- customer orders ----------------------------------------------------

#[test]
fn customer_orders_lists_placed_orders() {
    let (a, b, c) = (order_id(1), order_id(2), order_id(3));
    let mut ev = Events::new();
    ev.order(a, placed(a, "alice", mug_and_tee()))
        .order(a, OrderEvent::OrderConfirmed { order_id: a })
        .at(at(3, 8))
        .order(b, placed(b, "bob", vec![line("HAT-01", 1, 900)]))
        .order(c, placed(c, "alice", vec![line("HAT-01", 2, 900)]));
    let t = ProjectionTest::new(CustomerOrdersView).given(ev.all());
    assert_eq!(t.json().len(), 2);
    assert_eq!(
        t.doc("alice").unwrap(),
        CustomerOrders {
            customer_id: "alice".into(),
            orders: vec![
                CustomerOrder {
                    order_id: a,
                    total_cents: 4900,
                    placed_at: at(1, 10),
                },
                CustomerOrder {
                    order_id: c,
                    total_cents: 1800,
                    placed_at: at(3, 8),
                },
            ],
            total: 2,
        }
    );
    assert_eq!(t.doc("bob").unwrap().orders.len(), 1);
    assert_eq!(
        keys(&CustomerOrdersView, &ev.all()[1]),
        Vec::<String>::new()
    );

    // The history: one document per order, a customer's together and in
    // the order placed.
    let h = ProjectionTest::new(CustomerOrderHistoryView).given(ev.all());
    let keys: Vec<&String> = h.json().keys().collect();
    assert_eq!(
        keys,
        [
            "alice/00000000000000000001",
            "alice/00000000000000000004",
            "bob/00000000000000000003",
        ]
    );
    assert_eq!(
        h.doc("alice/00000000000000000004").unwrap(),
        PlacedOrder {
            customer_id: "alice".into(),
            order: CustomerOrder {
                order_id: c,
                total_cents: 1800,
                placed_at: at(3, 8),
            },
        }
    );
}

/// A customer's document keeps only the latest orders, and counts them
/// all; a document stored before the count existed counts what it holds.
#[test]
fn customer_orders_keep_the_latest_and_count_them_all() {
    let mut ev = Events::new();
    let ids: Vec<Uuid> = (1..=RECENT_ORDERS as u128 + 5).map(order_id).collect();
    for id in &ids {
        ev.order(*id, placed(*id, "alice", vec![line("HAT-01", 1, 900)]));
    }
    let t = ProjectionTest::new(CustomerOrdersView).given(ev.all());
    let doc = t.doc("alice").unwrap();
    assert_eq!(doc.total, ids.len() as u64);
    let kept: Vec<Uuid> = doc.orders.iter().map(|o| o.order_id).collect();
    assert_eq!(kept, ids[5..].to_vec(), "the latest, oldest first");

    let old: CustomerOrders = serde_json::from_value(json!({
        "customer_id": "alice",
        "orders": [{ "order_id": ids[0], "total_cents": 900, "placed_at": at(1, 10) }],
    }))
    .unwrap();
    assert_eq!(old.total, 0);
    let next = ids[1];
    let mut more = Events::new();
    more.order(next, placed(next, "alice", vec![line("HAT-01", 1, 900)]));
    let event = OrderEvent::decode(&more.all()[0]).unwrap().unwrap();
    let doc = CustomerOrdersView
        .apply(
            "alice",
            Some(old),
            Recorded {
                event: &event,
                envelope: &more.all()[0],
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(doc.total, 2);
}

/// History keys escape what would let one customer's keys run into
/// another's: `%` and `/`.
#[test]
fn history_keys_keep_each_customers_orders_apart() {
    assert_eq!(history_prefix("ada"), "ada/");
    assert_eq!(history_prefix("a/b"), "a%2Fb/");
    assert_eq!(history_prefix("50%"), "50%25/");
    assert_eq!(
        history_key("a/b", Position(42)),
        "a%2Fb/00000000000000000042"
    );
    assert!(!history_key("a/b", Position(1)).starts_with(&history_prefix("a")));
}

// -- low stock ----------------------------------------------------------

#[test]
fn low_stock_appears_and_disappears() {
    let (o1, o2) = (order_id(1), order_id(2));
    let mut ev = Events::new();
    // Restocked well above the threshold: not low.
    ev.inventory(restocked("MUG-01", 8, 8));
    let low = |ev: &Events| ProjectionTest::new(LowStockView).given(ev.all());
    assert_eq!(low(&ev).doc("MUG-01"), None);
    // A reservation brings it under: low, on hand unknown.
    ev.inventory(reserved("MUG-01", o1, 4, 4));
    assert_eq!(
        low(&ev).doc("MUG-01"),
        Some(LowStock {
            sku: "MUG-01".into(),
            available: 4,
            on_hand: None,
        })
    );
    // Shipping the reservation: on hand known, availability unchanged.
    ev.inventory(committed("MUG-01", o1, 4, 4));
    assert_eq!(
        low(&ev).doc("MUG-01"),
        Some(LowStock {
            sku: "MUG-01".into(),
            available: 4,
            on_hand: Some(4),
        })
    );
    ev.inventory(reserved("MUG-01", o2, 4, 0));
    assert_eq!(
        low(&ev).doc("MUG-01"),
        Some(LowStock {
            sku: "MUG-01".into(),
            available: 0,
            on_hand: Some(4),
        })
    );
    // Releasing brings it back to 4: still low.
    ev.inventory(released("MUG-01", o2, 4, 4));
    assert_eq!(low(&ev).doc("MUG-01").unwrap().available, 4);
    // Restocking lifts it over the threshold: gone.
    ev.inventory(restocked("MUG-01", 1, 5));
    assert!(low(&ev).json().is_empty());
    // Restocking again while not low: stays gone.
    ev.inventory(restocked("MUG-01", 1, 6));
    assert!(low(&ev).json().is_empty());
}

#[test]
fn low_stock_needs_a_restock() {
    let mut ev = Events::new();
    // Never restocked: a refused reservation does not make it low.
    ev.inventory(InventoryEvent::ReservationRefused {
        sku: "HAT-01".into(),
        order_id: order_id(1),
        requested: 1,
        available: 0,
    });
    assert_eq!(keys(&LowStockView, &ev.last()), Vec::<String>::new());
    // A small first restock is low at once, with on hand known.
    ev.inventory(restocked("HAT-01", 2, 2));
    let t = ProjectionTest::new(LowStockView).given(ev.all());
    assert_eq!(
        t.doc("HAT-01"),
        Some(LowStock {
            sku: "HAT-01".into(),
            available: 2,
            on_hand: Some(2),
        })
    );
    // A restock that stays under the threshold adds to availability.
    ev.inventory(reserved("HAT-01", order_id(2), 1, 1))
        .inventory(restocked("HAT-01", 2, 4));
    let t = ProjectionTest::new(LowStockView).given(ev.all());
    assert_eq!(
        t.doc("HAT-01"),
        Some(LowStock {
            sku: "HAT-01".into(),
            available: 3,
            on_hand: Some(4),
        })
    );
}

// -- sales dashboard ----------------------------------------------------

#[test]
fn dashboard_aggregates_by_day_and_sku() {
    let (a, b, c, d) = (order_id(1), order_id(2), order_id(3), order_id(4));
    let shipped = |id: Uuid, lines: Vec<OrderLine>| OrderEvent::OrderShipped {
        order_id: id,
        lines,
    };
    let mut ev = Events::new();
    ev.order(a, placed(a, "alice", mug_and_tee()))
        .order(b, placed(b, "bob", vec![line("MUG-01", 1, 1500)]))
        .order(d, placed(d, "dan", vec![line("HAT-01", 1, 900)]))
        .at(at(1, 23))
        .order(a, shipped(a, mug_and_tee()))
        .order(b, shipped(b, vec![line("MUG-01", 1, 1500)]))
        .at(at(2, 0))
        .order(c, placed(c, "carol", vec![line("MUG-01", 3, 1200)]))
        .order(c, shipped(c, vec![line("MUG-01", 3, 1200)]));
    let t = ProjectionTest::new(SalesDashboardView).given(ev.all());
    let day1 = SalesDashboardView::day(at(1, 23));
    assert_eq!(day1, "2024-05-01");
    assert_eq!(
        t.doc("2024-05-01:MUG-01").unwrap(),
        DailySales {
            day: "2024-05-01".into(),
            sku: "MUG-01".into(),
            units: 3,
            revenue_cents: 2 * 1200 + 1500,
            orders: 2,
        }
    );
    assert_eq!(
        t.doc("2024-05-01:TEE-01").unwrap(),
        DailySales {
            day: "2024-05-01".into(),
            sku: "TEE-01".into(),
            units: 1,
            revenue_cents: 2500,
            orders: 1,
        }
    );
    assert_eq!(
        t.doc(&SalesDashboardView::key("2024-05-02", "MUG-01"))
            .unwrap(),
        DailySales {
            day: "2024-05-02".into(),
            sku: "MUG-01".into(),
            units: 3,
            revenue_cents: 3600,
            orders: 1,
        }
    );
    // Placed but never shipped: not counted.
    assert_eq!(t.json().len(), 3);
    insta::assert_json_snapshot!(t.json());
}

#[test]
fn views_ignore_other_streams() {
    let id = order_id(1);
    let mut ev = Events::new();
    full_life(&mut ev, id);
    ev.inventory(restocked("MUG-01", 1, 1))
        .product(registered("MUG-01", "Mug", 1));
    let all = ev.all();
    assert_eq!(
        ProjectionTest::new(OrderDetailsView)
            .given(all.clone())
            .json()
            .len(),
        1
    );
    assert_eq!(
        ProjectionTest::new(CustomerOrdersView)
            .given(all.clone())
            .json()
            .len(),
        1
    );
    assert_eq!(
        ProjectionTest::new(CatalogView)
            .given(all.clone())
            .json()
            .len(),
        1
    );
    assert_eq!(
        ProjectionTest::new(LowStockView)
            .given(all.clone())
            .json()
            .len(),
        1
    );
    assert_eq!(
        ProjectionTest::new(SalesDashboardView)
            .given(all)
            .json()
            .len(),
        2
    );
}

//! The shop's read side: five [`Projection`]s, each a view of keyed JSON
//! documents built from the domain's events.
//!
//! | view | key | document | fed by |
//! |------|-----|----------|--------|
//! | [`CatalogView`] (`catalog`) | sku | [`CatalogItem`] | product and inventory events |
//! | [`OrderDetailsView`] (`order_details`) | order id | [`OrderDetails`] | order events |
//! | [`CustomerOrdersView`] (`customer_orders`) | customer id | [`CustomerOrders`] | `OrderPlaced` |
//! | [`LowStockView`] (`low_stock`) | sku | [`LowStock`] | inventory events |
//! | [`SalesDashboardView`] (`sales_dashboard`) | `<YYYY-MM-DD>:<sku>` | [`DailySales`] | `OrderShipped` |
//!
//! Every projection is pure: the runtime decodes each event once into the
//! domain's typed event (the projection's `Event`: one aggregate's events,
//! or a [`strata::event_set!`] over several) and the projection folds it
//! into the document. A payload that does not decode is a
//! [`ProjectionError`] (the projector retries, then dead-letters and
//! halts).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};
use uuid::Uuid;

use crate::domain::catalog::ProductEvent;
use crate::domain::inventory::InventoryEvent;
use crate::domain::order::{OrderEvent, OrderLine, OrderStatus};

/// The names of the shop's views, in the order of this module.
pub const VIEW_NAMES: [&str; 5] = [
    CatalogView::NAME,
    OrderDetailsView::NAME,
    CustomerOrdersView::NAME,
    LowStockView::NAME,
    SalesDashboardView::NAME,
];

/// A sku is "low on stock" while fewer units than this are available.
pub const LOW_STOCK_THRESHOLD: u32 = 5;

strata::event_set! {
    /// What the catalog follows: product and stock events.
    pub enum CatalogEvent {
        /// A product's events.
        Product(ProductEvent),
        /// A sku's stock events.
        Inventory(InventoryEvent),
    }
}

// ---------------------------------------------------------------------------
// catalog

/// The catalog with stock levels: one [`CatalogItem`] per sku.
///
/// Stock events may come before the product is registered (a sku restocked
/// first): the item then has an empty name and a price of 0 until
/// `ProductRegistered` fills them in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogView;

impl CatalogView {
    /// The view's name.
    pub const NAME: &'static str = "catalog";
}

/// A sku of the catalog, with its stock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// The sku.
    pub sku: String,
    /// The display name (empty until the product is registered).
    pub name: String,
    /// The unit price in cents (0 until the product is registered).
    pub price_cents: i64,
    /// True once the product is no longer sold.
    pub discontinued: bool,
    /// Units in the warehouse, reserved or not.
    pub on_hand: u32,
    /// Units reserved for orders.
    pub reserved: u32,
    /// Units that can still be reserved: on hand minus reserved.
    pub available: u32,
}

impl CatalogItem {
    fn empty(sku: &str) -> Self {
        CatalogItem {
            sku: sku.to_owned(),
            ..CatalogItem::default()
        }
    }

    /// Sets `available` from the event and derives `reserved` from it.
    fn set_available(&mut self, available: u32) {
        self.available = available;
        self.reserved = self.on_hand.saturating_sub(available);
    }
}

impl Projection for CatalogView {
    type Event = CatalogEvent;
    type Doc = CatalogItem;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, CatalogEvent>) -> Vec<String> {
        match e.event {
            // A refusal changes no stock (and may name an unknown sku).
            CatalogEvent::Inventory(InventoryEvent::ReservationRefused { .. }) => vec![],
            _ => e.stream_key().map(str::to_owned).into_iter().collect(),
        }
    }

    fn apply(
        &self,
        key: &str,
        doc: Option<CatalogItem>,
        e: Recorded<'_, CatalogEvent>,
    ) -> Result<Option<CatalogItem>, ProjectionError> {
        let mut item = doc.unwrap_or_else(|| CatalogItem::empty(key));
        match e.event {
            CatalogEvent::Product(event) => match event {
                ProductEvent::ProductRegistered {
                    sku,
                    name,
                    price_cents,
                } => {
                    item.sku.clone_from(sku);
                    item.name.clone_from(name);
                    item.price_cents = *price_cents;
                }
                ProductEvent::PriceChanged {
                    new_price_cents, ..
                } => item.price_cents = *new_price_cents,
                ProductEvent::ProductDiscontinued { .. } => item.discontinued = true,
            },
            CatalogEvent::Inventory(event) => match *event {
                InventoryEvent::Restocked { on_hand, .. } => {
                    // Restocking leaves the reservations alone.
                    item.on_hand = on_hand;
                    item.available = on_hand.saturating_sub(item.reserved);
                }
                InventoryEvent::StockReserved {
                    available_after, ..
                }
                | InventoryEvent::ReservationReleased {
                    available_after, ..
                } => item.set_available(available_after),
                InventoryEvent::StockCommitted {
                    quantity, on_hand, ..
                } => {
                    // The reserved units left: on hand and reserved both
                    // drop by the quantity, available stays.
                    item.on_hand = on_hand;
                    item.reserved = item.reserved.saturating_sub(quantity);
                    item.available = on_hand.saturating_sub(item.reserved);
                }
                InventoryEvent::ReservationRefused { .. } => {}
            },
        }
        Ok(Some(item))
    }
}

// ---------------------------------------------------------------------------
// order details

/// Everything about one order: one [`OrderDetails`] per order id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderDetailsView;

impl OrderDetailsView {
    /// The view's name.
    pub const NAME: &'static str = "order_details";
}

/// One event of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The event's position in the global order.
    pub position: u64,
    /// The event type, e.g. `OrderPaid`.
    pub event_type: String,
    /// When the store recorded it.
    pub at: DateTime<Utc>,
}

/// An order as its customer and the shop's staff see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDetails {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// `placed`, `confirmed`, `rejected`, `paid`, `shipped` or `cancelled`.
    pub status: String,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines, in cents.
    pub total_cents: i64,
    /// The skus whose stock is reserved, in the order the reservations were
    /// recorded (as the closing event lists them once rejected or cancelled).
    pub reserved_skus: Vec<String>,
    /// Why the order was rejected or cancelled.
    pub reason: Option<String>,
    /// The payment gateway's reference, once paid.
    pub payment_ref: Option<String>,
    /// Failed payment attempts.
    pub failed_payments: u32,
    /// The amount refunded on cancellation, in cents.
    pub refund_cents: i64,
    /// The position of the last event applied.
    pub updated_position: u64,
    /// Every event of the order, oldest first.
    pub history: Vec<HistoryEntry>,
}

impl Projection for OrderDetailsView {
    type Event = OrderEvent;
    type Doc = OrderDetails;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, OrderEvent>) -> Vec<String> {
        e.stream_key().map(str::to_owned).into_iter().collect()
    }

    fn apply(
        &self,
        _key: &str,
        doc: Option<OrderDetails>,
        e: Recorded<'_, OrderEvent>,
    ) -> Result<Option<OrderDetails>, ProjectionError> {
        let event = e.event.clone();
        let e = e.envelope;
        let mut d = match (event, doc) {
            (
                OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    lines,
                    total_cents,
                },
                _,
            ) => OrderDetails {
                order_id,
                customer_id,
                status: OrderStatus::Placed.to_string(),
                lines,
                total_cents,
                reserved_skus: vec![],
                reason: None,
                payment_ref: None,
                failed_payments: 0,
                refund_cents: 0,
                updated_position: 0,
                history: vec![],
            },
            (_, None) => {
                return Err(ProjectionError::new(format!(
                    "{} at position {} for order stream {} that has no OrderPlaced",
                    e.event_type, e.position, e.stream_id
                )))
            }
            (event, Some(mut d)) => {
                match event {
                    OrderEvent::OrderPlaced { .. } => unreachable!("matched above"),
                    OrderEvent::LineReserved { sku, .. } => {
                        if !d.reserved_skus.contains(&sku) {
                            d.reserved_skus.push(sku);
                        }
                    }
                    OrderEvent::OrderConfirmed { .. } => {
                        d.status = OrderStatus::Confirmed.to_string();
                    }
                    OrderEvent::OrderRejected {
                        reason,
                        reserved_skus,
                        ..
                    } => {
                        d.status = OrderStatus::Rejected.to_string();
                        d.reason = Some(reason);
                        d.reserved_skus = reserved_skus;
                    }
                    // In the history only: the order is still confirmed.
                    OrderEvent::PaymentStarted { .. } => {}
                    OrderEvent::PaymentFailed { .. } => d.failed_payments += 1,
                    OrderEvent::OrderPaid { payment_ref, .. } => {
                        d.status = OrderStatus::Paid.to_string();
                        d.payment_ref = Some(payment_ref);
                    }
                    OrderEvent::OrderCancelled {
                        reason,
                        reserved_skus,
                        refund_cents,
                        ..
                    } => {
                        d.status = OrderStatus::Cancelled.to_string();
                        d.reason = Some(reason);
                        d.reserved_skus = reserved_skus;
                        d.refund_cents = refund_cents;
                    }
                    OrderEvent::OrderShipped { .. } => {
                        d.status = OrderStatus::Shipped.to_string();
                    }
                }
                d
            }
        };
        d.updated_position = e.position.0;
        d.history.push(HistoryEntry {
            position: e.position.0,
            event_type: e.event_type.clone(),
            at: e.recorded_at,
        });
        Ok(Some(d))
    }
}

// ---------------------------------------------------------------------------
// customer orders

/// The orders each customer placed: one [`CustomerOrders`] per customer id.
///
/// Only `OrderPlaced` names the customer; the order's later events carry
/// only its id, so a pure projection cannot find the customer's document
/// for them. This view therefore records each order as placed (id, total,
/// time) and holds no status: readers join the current status from
/// [`OrderDetailsView`] (key: the order id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomerOrdersView;

impl CustomerOrdersView {
    /// The view's name.
    pub const NAME: &'static str = "customer_orders";
}

/// One order of a customer, as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrder {
    /// The order (the key of its [`OrderDetails`]).
    pub order_id: Uuid,
    /// The order's total, in cents.
    pub total_cents: i64,
    /// When the order was placed (recorded).
    pub placed_at: DateTime<Utc>,
}

/// A customer's orders, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrders {
    /// The customer.
    pub customer_id: String,
    /// The orders, in the order they were placed.
    pub orders: Vec<CustomerOrder>,
}

impl Projection for CustomerOrdersView {
    type Event = OrderEvent;
    type Doc = CustomerOrders;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, OrderEvent>) -> Vec<String> {
        match e.event {
            OrderEvent::OrderPlaced { customer_id, .. } => vec![customer_id.clone()],
            _ => vec![],
        }
    }

    fn apply(
        &self,
        _key: &str,
        doc: Option<CustomerOrders>,
        e: Recorded<'_, OrderEvent>,
    ) -> Result<Option<CustomerOrders>, ProjectionError> {
        let OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            total_cents,
            ..
        } = e.event
        else {
            return Ok(doc);
        };
        let (order_id, total_cents) = (*order_id, *total_cents);
        let mut d = doc.unwrap_or_else(|| CustomerOrders {
            customer_id: customer_id.clone(),
            orders: vec![],
        });
        let order = CustomerOrder {
            order_id,
            total_cents,
            placed_at: e.recorded_at(),
        };
        match d.orders.iter_mut().find(|o| o.order_id == order_id) {
            Some(existing) => *existing = order,
            None => d.orders.push(order),
        }
        Ok(Some(d))
    }
}

// ---------------------------------------------------------------------------
// low stock

/// The skus running out: a [`LowStock`] document exists only while a sku
/// that was restocked at least once has fewer than [`LOW_STOCK_THRESHOLD`]
/// units available; otherwise the document is deleted.
///
/// The availability is exact. Deleted documents keep no state, so it is
/// inferred from what the events carry: a restock adds its quantity to the
/// available units; a restock with no document is either the sku's first
/// (then `on_hand == quantity` and nothing is reserved) or follows a
/// deleted, hence not low, document (then it stays not low); a commit
/// leaves the availability unchanged; reservations and releases carry the
/// availability after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LowStockView;

impl LowStockView {
    /// The view's name.
    pub const NAME: &'static str = "low_stock";
}

/// A sku with fewer than [`LOW_STOCK_THRESHOLD`] units available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStock {
    /// The sku.
    pub sku: String,
    /// Units that can still be reserved.
    pub available: u32,
    /// Units in the warehouse, when known. `StockReserved` does not carry
    /// the units on hand, so a document created by a reservation (the sku
    /// was not low before) has `None` here until the next restock or
    /// commit; [`CatalogView`] always has the figure.
    pub on_hand: Option<u32>,
}

impl Projection for LowStockView {
    type Event = InventoryEvent;
    type Doc = LowStock;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, InventoryEvent>) -> Vec<String> {
        match e.event {
            // Changes nothing, and may come before any restock.
            InventoryEvent::ReservationRefused { .. } => vec![],
            _ => e.stream_key().map(str::to_owned).into_iter().collect(),
        }
    }

    fn apply(
        &self,
        key: &str,
        doc: Option<LowStock>,
        e: Recorded<'_, InventoryEvent>,
    ) -> Result<Option<LowStock>, ProjectionError> {
        let event = e.event.clone();
        let known_on_hand = doc.as_ref().and_then(|d| d.on_hand);
        let (available, on_hand) = match (event, &doc) {
            (
                InventoryEvent::Restocked {
                    quantity, on_hand, ..
                },
                Some(d),
            ) => (d.available.saturating_add(quantity), Some(on_hand)),
            (
                InventoryEvent::Restocked {
                    quantity, on_hand, ..
                },
                None,
            ) => {
                if on_hand != quantity {
                    // Not the first restock: the sku was not low before.
                    return Ok(None);
                }
                (on_hand, Some(on_hand))
            }
            (
                InventoryEvent::StockReserved {
                    available_after, ..
                }
                | InventoryEvent::ReservationReleased {
                    available_after, ..
                },
                _,
            ) => (available_after, known_on_hand),
            (InventoryEvent::StockCommitted { on_hand, .. }, Some(d)) => {
                (d.available, Some(on_hand))
            }
            (InventoryEvent::StockCommitted { .. }, None)
            | (InventoryEvent::ReservationRefused { .. }, _) => return Ok(doc),
        };
        if available >= LOW_STOCK_THRESHOLD {
            return Ok(None);
        }
        Ok(Some(LowStock {
            sku: key.to_owned(),
            available,
            on_hand,
        }))
    }
}

// ---------------------------------------------------------------------------
// sales dashboard

/// Units and revenue shipped per day and sku: one [`DailySales`] per
/// `<YYYY-MM-DD>:<sku>` (the UTC day the `OrderShipped` was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalesDashboardView;

impl SalesDashboardView {
    /// The view's name.
    pub const NAME: &'static str = "sales_dashboard";

    /// The document key of a sku's sales on a UTC day.
    pub fn key(day: &str, sku: &str) -> String {
        format!("{day}:{sku}")
    }

    /// The UTC day of a time, `YYYY-MM-DD`.
    pub fn day(at: DateTime<Utc>) -> String {
        at.format("%Y-%m-%d").to_string()
    }
}

/// What one sku sold on one day (counted when shipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySales {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The sku.
    pub sku: String,
    /// Units shipped.
    pub units: u64,
    /// Their revenue at the orders' unit prices, in cents.
    pub revenue_cents: i64,
    /// Shipped orders with this sku.
    pub orders: u64,
}

impl Projection for SalesDashboardView {
    type Event = OrderEvent;
    type Doc = DailySales;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, OrderEvent>) -> Vec<String> {
        match e.event {
            OrderEvent::OrderShipped { lines, .. } => {
                let day = Self::day(e.recorded_at());
                let mut keys: Vec<String> = lines.iter().map(|l| Self::key(&day, &l.sku)).collect();
                keys.sort();
                keys.dedup();
                keys
            }
            _ => vec![],
        }
    }

    fn apply(
        &self,
        key: &str,
        doc: Option<DailySales>,
        e: Recorded<'_, OrderEvent>,
    ) -> Result<Option<DailySales>, ProjectionError> {
        let OrderEvent::OrderShipped { lines, .. } = e.event else {
            return Ok(doc);
        };
        let Some((day, sku)) = key.split_once(':') else {
            return Err(ProjectionError::new(format!(
                "sales dashboard key {key:?} is not <day>:<sku>"
            )));
        };
        let mine: Vec<&OrderLine> = lines.iter().filter(|l| l.sku == sku).collect();
        if mine.is_empty() {
            return Ok(doc);
        }
        let overflow = || {
            ProjectionError::new(format!(
                "revenue of {key} overflows at position {}",
                e.position()
            ))
        };
        let mut d = doc.unwrap_or_else(|| DailySales {
            day: day.to_owned(),
            sku: sku.to_owned(),
            units: 0,
            revenue_cents: 0,
            orders: 0,
        });
        for line in mine {
            d.units += u64::from(line.quantity);
            d.revenue_cents = line
                .total_cents()
                .and_then(|t| d.revenue_cents.checked_add(t))
                .ok_or_else(overflow)?;
        }
        d.orders += 1;
        Ok(Some(d))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;
    use serde_json::json;
    use strata::{
        DomainEvent, EventEnvelope, EventSet, Metadata, Position, ProjectionTest, StreamId,
    };

    use super::*;

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
            let (event_type, payload) = strata::codec::encode(event).unwrap();
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
            }
        );
        assert_eq!(t.doc("bob").unwrap().orders.len(), 1);
        assert_eq!(
            keys(&CustomerOrdersView, &ev.all()[1]),
            Vec::<String>::new()
        );
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
}

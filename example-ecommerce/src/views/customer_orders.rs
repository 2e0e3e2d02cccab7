//! The orders each customer placed: their latest few in one document per
//! customer (what a live "My orders" list follows), and every one of them
//! as a document of its own, listed in pages (`GET
//! /customers/{id}/orders`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};
use uuid::Uuid;

use crate::domain::order::OrderEvent;

/// How many of a customer's orders [`CustomerOrders`] keeps: the latest.
pub const RECENT_ORDERS: usize = 20;

/// A customer's latest orders: one [`CustomerOrders`] per customer id.
///
/// Only `OrderPlaced` names the customer; the order's later events carry
/// only its id, so a pure projection cannot find the customer's document
/// for them. This view therefore records each order as placed (id, total,
/// time) and holds no status: readers join the current status from
/// [`OrderDetailsView`](super::OrderDetailsView) (key: the order id).
///
/// It keeps the latest [`RECENT_ORDERS`] and counts them all, so its
/// document stays small however many orders a customer places (every new
/// order rewrites and announces it); [`CustomerOrderHistoryView`] holds
/// every order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomerOrdersView;

impl CustomerOrdersView {
    /// The view's name.
    pub const NAME: &'static str = "customer_orders";
}

/// One order of a customer, as placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrder {
    /// The order (the key of its [`OrderDetails`](super::OrderDetails)).
    pub order_id: Uuid,
    /// The order's total, in cents.
    pub total_cents: i64,
    /// When the order was placed (recorded).
    pub placed_at: DateTime<Utc>,
}

/// A customer's latest orders, oldest first, and how many they placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerOrders {
    /// The customer.
    pub customer_id: String,
    /// The latest [`RECENT_ORDERS`] orders, in the order they were placed.
    pub orders: Vec<CustomerOrder>,
    /// Every order the customer placed (documents written before this
    /// count existed start from the orders they hold).
    #[serde(default)]
    pub total: u64,
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
        let Some(PlacedOrder { customer_id, order }) = placed(e) else {
            return Ok(doc);
        };
        let mut d = doc.unwrap_or_else(|| CustomerOrders {
            customer_id,
            orders: vec![],
            total: 0,
        });
        if d.total < d.orders.len() as u64 {
            d.total = d.orders.len() as u64;
        }
        match d.orders.iter_mut().find(|o| o.order_id == order.order_id) {
            Some(existing) => *existing = order,
            None => {
                d.orders.push(order);
                d.total += 1;
            }
        }
        let over = d.orders.len().saturating_sub(RECENT_ORDERS);
        d.orders.drain(..over);
        Ok(Some(d))
    }
}

/// Every order of every customer, one document each, keyed so that a
/// customer's orders sit together in the order they were placed:
/// [`history_prefix`] of the customer, then the position of the
/// `OrderPlaced` event (20 digits). `GET /customers/{id}/orders` lists
/// them in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomerOrderHistoryView;

impl CustomerOrderHistoryView {
    /// The view's name.
    pub const NAME: &'static str = "customer_order_history";
}

/// One placed order in a customer's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    /// The customer (who may read this document).
    pub customer_id: String,
    /// The order, as placed.
    #[serde(flatten)]
    pub order: CustomerOrder,
}

/// The order an `OrderPlaced` records, with its customer; `None` for the
/// order's other events.
fn placed(e: Recorded<'_, OrderEvent>) -> Option<PlacedOrder> {
    let OrderEvent::OrderPlaced {
        order_id,
        customer_id,
        total_cents,
        ..
    } = e.event
    else {
        return None;
    };
    Some(PlacedOrder {
        customer_id: customer_id.clone(),
        order: CustomerOrder {
            order_id: *order_id,
            total_cents: *total_cents,
            placed_at: e.recorded_at(),
        },
    })
}

/// The start of every key of `customer_id`'s orders in
/// [`CustomerOrderHistoryView`]: the id with `%` and `/` escaped, then `/`.
/// No other customer's keys start with it (an escaped id has no `/`).
pub fn history_prefix(customer_id: &str) -> String {
    let mut out = String::with_capacity(customer_id.len() + 1);
    for c in customer_id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out
}

/// The key of the order placed at `position` by `customer_id`.
pub fn history_key(customer_id: &str, position: strata::Position) -> String {
    format!("{}{:020}", history_prefix(customer_id), position.0)
}

impl Projection for CustomerOrderHistoryView {
    type Event = OrderEvent;
    type Doc = PlacedOrder;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, OrderEvent>) -> Vec<String> {
        match e.event {
            OrderEvent::OrderPlaced { customer_id, .. } => {
                vec![history_key(customer_id, e.position())]
            }
            _ => vec![],
        }
    }

    fn apply(
        &self,
        _key: &str,
        doc: Option<PlacedOrder>,
        e: Recorded<'_, OrderEvent>,
    ) -> Result<Option<PlacedOrder>, ProjectionError> {
        Ok(placed(e).or(doc))
    }
}

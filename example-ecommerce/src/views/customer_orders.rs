//! The orders each customer placed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};
use uuid::Uuid;

use crate::domain::order::OrderEvent;

/// The orders each customer placed: one [`CustomerOrders`] per customer id.
///
/// Only `OrderPlaced` names the customer; the order's later events carry
/// only its id, so a pure projection cannot find the customer's document
/// for them. This view therefore records each order as placed (id, total,
/// time) and holds no status: readers join the current status from
/// [`OrderDetailsView`](super::OrderDetailsView) (key: the order id).
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

//! Everything about one order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};
use uuid::Uuid;

use crate::domain::order::{OrderEvent, OrderLine, OrderStatus};

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

//! Orders: one [`Order`] stream per order id.
//!
//! ```text
//! Placed ──(every line reserved)──▶ Confirmed ──Pay──▶ Paid ──Ship──▶ Shipped
//!   │                                  │  ▲ FailPayment    │
//!   ├──Reject / Cancel─────────────────┤──┘                └──Cancel (refund)
//!   ▼                                  ▼
//! Rejected / Cancelled            Rejected / Cancelled
//! ```
//!
//! A payment is an *attempt*: `StartPayment` records `PaymentStarted`
//! before the gateway is called (one attempt at a time; a confirmed order
//! with an attempt in progress cannot start another one nor be
//! cancelled), and `Pay` / `FailPayment` record its result and end it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use strata::{Aggregate, DomainEvent};
use uuid::Uuid;

use super::{validate_sku, InvalidSku};

/// Most lines in an order.
pub const MAX_LINES: usize = 50;
/// Most units of a sku in one line.
pub const MAX_LINE_QUANTITY: u32 = 1000;
/// Longest customer id, in characters.
pub const MAX_CUSTOMER_ID_LEN: usize = 64;

/// One line of an order: a sku, how many, at what unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The sku.
    pub sku: String,
    /// Units, 1 to 1000.
    pub quantity: u32,
    /// Price of one unit in cents, positive.
    pub unit_price_cents: i64,
}

impl OrderLine {
    /// Quantity times unit price, or `None` on overflow.
    pub fn total_cents(&self) -> Option<i64> {
        self.unit_price_cents.checked_mul(i64::from(self.quantity))
    }
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    /// The customer placed the order.
    #[serde(rename = "OrderPlaced")]
    OrderPlaced {
        /// The order.
        order_id: Uuid,
        /// Who placed it.
        customer_id: String,
        /// What was ordered.
        lines: Vec<OrderLine>,
        /// The sum of the lines, in cents.
        total_cents: i64,
    },
    /// The stock of one line was reserved.
    #[serde(rename = "LineReserved")]
    LineReserved {
        /// The order.
        order_id: Uuid,
        /// The line's sku.
        sku: String,
    },
    /// Every line is reserved: the order can be paid.
    #[serde(rename = "OrderConfirmed")]
    OrderConfirmed {
        /// The order.
        order_id: Uuid,
    },
    /// The order cannot be fulfilled (e.g. out of stock).
    #[serde(rename = "OrderRejected")]
    OrderRejected {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
        /// The skus reserved so far, in line order.
        reserved_skus: Vec<String>,
        /// Every line's sku, in line order: a reservation may still land
        /// after the rejection, so all of them are to be released.
        line_skus: Vec<String>,
    },
    /// A payment attempt started: the gateway is about to be charged with
    /// a key derived from the attempt id. Ends with `OrderPaid` or
    /// `PaymentFailed`.
    #[serde(rename = "PaymentStarted")]
    PaymentStarted {
        /// The order.
        order_id: Uuid,
        /// The attempt (the command id of the request that started it).
        attempt_id: Uuid,
        /// The amount to charge, in cents (the order's total).
        amount_cents: i64,
    },
    /// A payment attempt failed; the order stays confirmed.
    #[serde(rename = "PaymentFailed")]
    PaymentFailed {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
    },
    /// The order was paid in full.
    #[serde(rename = "OrderPaid")]
    OrderPaid {
        /// The order.
        order_id: Uuid,
        /// The amount charged, in cents (the order's total).
        amount_cents: i64,
        /// The payment gateway's reference.
        payment_ref: String,
    },
    /// The order was cancelled before shipping.
    #[serde(rename = "OrderCancelled")]
    OrderCancelled {
        /// The order.
        order_id: Uuid,
        /// Why.
        reason: String,
        /// The skus reserved so far, in line order.
        reserved_skus: Vec<String>,
        /// Every line's sku, in line order, to release.
        line_skus: Vec<String>,
        /// The amount to refund in cents (what was paid, 0 if unpaid).
        refund_cents: i64,
    },
    /// The order left the warehouse.
    #[serde(rename = "OrderShipped")]
    OrderShipped {
        /// The order.
        order_id: Uuid,
        /// What was shipped.
        lines: Vec<OrderLine>,
    },
}

impl DomainEvent for OrderEvent {
    const STREAM_TYPE: Option<&'static str> = Some("order");
}

/// What an order can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        /// The order's id (its stream is `order-<id>`).
        order_id: Uuid,
        /// Who places it, 1 to 64 characters.
        customer_id: String,
        /// 1 to 50 lines with distinct skus.
        lines: Vec<OrderLine>,
    },
    /// Record that one line's stock is reserved (nothing if it already is).
    RecordReservation {
        /// The line's sku.
        sku: String,
    },
    /// Reject the order (nothing if it is already rejected or cancelled).
    Reject {
        /// Why.
        reason: String,
    },
    /// Start a payment attempt of a confirmed order (nothing if this
    /// attempt is already in progress).
    StartPayment {
        /// The attempt's id.
        attempt_id: Uuid,
    },
    /// Record the payment of a confirmed order (ends the attempt in
    /// progress, if any).
    Pay {
        /// The amount charged in cents: must be the order's total.
        amount_cents: i64,
        /// The payment gateway's reference.
        payment_ref: String,
    },
    /// Record a failed payment attempt of a confirmed order (ends the
    /// attempt in progress, if any).
    FailPayment {
        /// Why.
        reason: String,
    },
    /// Cancel the order before it ships (nothing if it is already
    /// cancelled or rejected); a paid order is refunded.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Ship a paid order.
    Ship,
}

/// Where an order is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Not placed yet.
    #[default]
    New,
    /// Placed, waiting for its stock.
    Placed,
    /// Every line reserved, waiting for payment.
    Confirmed,
    /// Paid, waiting to ship.
    Paid,
    /// Shipped (final).
    Shipped,
    /// Rejected (final).
    Rejected,
    /// Cancelled (final).
    Cancelled,
}

impl OrderStatus {
    /// True for rejected and cancelled orders.
    pub fn is_closed(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::New => "not placed",
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        })
    }
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The command does not apply in the order's status.
    #[error("cannot {action} an order that is {from}")]
    InvalidTransition {
        /// The order's status.
        from: OrderStatus,
        /// What was asked, e.g. `ship`.
        action: &'static str,
    },
    /// The order was already placed.
    #[error("order {order_id} is already placed")]
    AlreadyPlaced {
        /// The order.
        order_id: Uuid,
    },
    /// The customer id is blank or too long.
    #[error("a customer id is 1 to {MAX_CUSTOMER_ID_LEN} characters, not blank")]
    InvalidCustomerId,
    /// No lines, or too many.
    #[error("an order has 1 to {MAX_LINES} lines, not {count}")]
    LineCount {
        /// The number of lines given.
        count: usize,
    },
    /// A line's sku is malformed.
    #[error(transparent)]
    InvalidSku(#[from] InvalidSku),
    /// A line's quantity is out of range.
    #[error("the quantity of {sku} must be 1 to {MAX_LINE_QUANTITY}, not {quantity}")]
    InvalidQuantity {
        /// The line's sku.
        sku: String,
        /// The refused quantity.
        quantity: u32,
    },
    /// A line's unit price is zero or negative.
    #[error("the unit price of {sku} must be positive, not {unit_price_cents} cents")]
    InvalidUnitPrice {
        /// The line's sku.
        sku: String,
        /// The refused price.
        unit_price_cents: i64,
    },
    /// Two lines have the same sku.
    #[error("sku {sku} appears in more than one line")]
    DuplicateSku {
        /// The repeated sku.
        sku: String,
    },
    /// The total does not fit in 64 bits of cents.
    #[error("the order total is too large")]
    TotalOverflow,
    /// The sku is not one of the order's lines.
    #[error("sku {sku} is not in this order")]
    UnknownSku {
        /// The sku.
        sku: String,
    },
    /// A payment of another amount than the total.
    #[error("the order total is {expected} cents, not {got}")]
    AmountMismatch {
        /// The order's total.
        expected: i64,
        /// The amount given.
        got: i64,
    },
    /// A blank payment reference.
    #[error("a payment reference must not be blank")]
    MissingPaymentRef,
    /// A blank reason.
    #[error("a reason must not be blank")]
    MissingReason,
    /// Another payment attempt is in progress.
    #[error("payment attempt {attempt_id} of this order is in progress")]
    PaymentInProgress {
        /// The attempt in progress.
        attempt_id: Uuid,
    },
}

/// A payment attempt that has started and not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAttempt {
    /// The attempt's id.
    pub attempt_id: Uuid,
    /// The amount to charge, in cents.
    pub amount_cents: i64,
}

/// An order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    order_id: Uuid,
    customer_id: String,
    lines: Vec<OrderLine>,
    total_cents: i64,
    reserved: BTreeSet<String>,
    status: OrderStatus,
    paid_cents: i64,
    payment_ref: Option<String>,
    failed_payments: u32,
    #[serde(default)]
    payment_attempt: Option<PaymentAttempt>,
}

impl Order {
    /// Its id (nil until placed).
    pub fn order_id(&self) -> Uuid {
        self.order_id
    }

    /// Who placed it.
    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    /// What was ordered.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// The sum of the lines, in cents.
    pub fn total_cents(&self) -> i64 {
        self.total_cents
    }

    /// Where it is in its life.
    pub fn status(&self) -> OrderStatus {
        self.status
    }

    /// True when the line of `sku` is reserved.
    pub fn is_reserved(&self, sku: &str) -> bool {
        self.reserved.contains(sku)
    }

    /// The payment reference, once paid.
    pub fn payment_ref(&self) -> Option<&str> {
        self.payment_ref.as_deref()
    }

    /// How many payment attempts failed.
    pub fn failed_payments(&self) -> u32 {
        self.failed_payments
    }

    /// The payment attempt in progress, if any.
    pub fn payment_attempt(&self) -> Option<PaymentAttempt> {
        self.payment_attempt
    }

    fn invalid(&self, action: &'static str) -> OrderError {
        OrderError::InvalidTransition {
            from: self.status,
            action,
        }
    }

    fn reserved_skus(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| self.reserved.contains(&l.sku))
            .map(|l| l.sku.clone())
            .collect()
    }

    fn line_skus(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.sku.clone()).collect()
    }

    fn place(
        &self,
        order_id: Uuid,
        customer_id: &str,
        lines: &[OrderLine],
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status != OrderStatus::New {
            return Err(OrderError::AlreadyPlaced {
                order_id: self.order_id,
            });
        }
        if customer_id.trim().is_empty() || customer_id.chars().count() > MAX_CUSTOMER_ID_LEN {
            return Err(OrderError::InvalidCustomerId);
        }
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(OrderError::LineCount { count: lines.len() });
        }
        let mut skus = BTreeSet::new();
        let mut total_cents: i64 = 0;
        for line in lines {
            validate_sku(&line.sku)?;
            if !(1..=MAX_LINE_QUANTITY).contains(&line.quantity) {
                return Err(OrderError::InvalidQuantity {
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                });
            }
            if line.unit_price_cents <= 0 {
                return Err(OrderError::InvalidUnitPrice {
                    sku: line.sku.clone(),
                    unit_price_cents: line.unit_price_cents,
                });
            }
            if !skus.insert(line.sku.as_str()) {
                return Err(OrderError::DuplicateSku {
                    sku: line.sku.clone(),
                });
            }
            total_cents = line
                .total_cents()
                .and_then(|t| total_cents.checked_add(t))
                .ok_or(OrderError::TotalOverflow)?;
        }
        Ok(vec![OrderEvent::OrderPlaced {
            order_id,
            customer_id: customer_id.to_owned(),
            lines: lines.to_vec(),
            total_cents,
        }])
    }

    fn record_reservation(&self, sku: &str) -> Result<Vec<OrderEvent>, OrderError> {
        const ACTION: &str = "record a reservation for";
        if self.status == OrderStatus::New {
            return Err(self.invalid(ACTION));
        }
        if !self.lines.iter().any(|l| l.sku == sku) {
            return Err(OrderError::UnknownSku {
                sku: sku.to_owned(),
            });
        }
        if self.reserved.contains(sku) {
            return Ok(vec![]);
        }
        if self.status != OrderStatus::Placed {
            return Err(self.invalid(ACTION));
        }
        let mut events = vec![OrderEvent::LineReserved {
            order_id: self.order_id,
            sku: sku.to_owned(),
        }];
        if self.reserved.len() + 1 == self.lines.len() {
            events.push(OrderEvent::OrderConfirmed {
                order_id: self.order_id,
            });
        }
        Ok(events)
    }
}

fn require_reason(reason: &str) -> Result<String, OrderError> {
    if reason.trim().is_empty() {
        Err(OrderError::MissingReason)
    } else {
        Ok(reason.to_owned())
    }
}

impl Aggregate for Order {
    const STREAM_TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    /// A customer places orders as themselves and pays and cancels only
    /// their own; staff may cancel any; the rest of an order's life is the
    /// shop's own doing (process manager, payment results).
    fn authorize(
        &self,
        command: &OrderCommand,
        who: &strata::Principal,
    ) -> Result<(), strata::Forbidden> {
        use strata::Forbidden;
        if who.is_service() {
            return Ok(());
        }
        let own = self.status != OrderStatus::New && who.is_user_named(&self.customer_id);
        match command {
            OrderCommand::Place { customer_id, .. } => {
                Forbidden::unless(
                    who.has_role(super::roles::CUSTOMER),
                    "only customers place orders",
                )?;
                Forbidden::unless(
                    who.is_user_named(customer_id),
                    "an order is placed in the customer's own name",
                )
            }
            OrderCommand::StartPayment { .. } => {
                Forbidden::unless(own, "only the order's customer pays it")
            }
            OrderCommand::Cancel { .. } => Forbidden::unless(
                own || who.has_role(super::roles::STAFF),
                "only the order's customer or staff cancel it",
            ),
            OrderCommand::RecordReservation { .. }
            | OrderCommand::Reject { .. }
            | OrderCommand::Pay { .. }
            | OrderCommand::FailPayment { .. }
            | OrderCommand::Ship => super::services_only(who, "this step of an order"),
        }
    }

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        use OrderStatus::{Cancelled, Confirmed, Paid, Placed, Rejected};
        match command {
            OrderCommand::Place {
                order_id,
                customer_id,
                lines,
            } => self.place(*order_id, customer_id, lines),
            OrderCommand::RecordReservation { sku } => self.record_reservation(sku),
            OrderCommand::Reject { reason } => match self.status {
                Rejected | Cancelled => Ok(vec![]),
                Placed | Confirmed => Ok(vec![OrderEvent::OrderRejected {
                    order_id: self.order_id,
                    reason: require_reason(reason)?,
                    reserved_skus: self.reserved_skus(),
                    line_skus: self.line_skus(),
                }]),
                _ => Err(self.invalid("reject")),
            },
            OrderCommand::StartPayment { attempt_id } => {
                if self.status != Confirmed {
                    return Err(self.invalid("pay"));
                }
                match self.payment_attempt {
                    Some(a) if a.attempt_id == *attempt_id => Ok(vec![]),
                    Some(a) => Err(OrderError::PaymentInProgress {
                        attempt_id: a.attempt_id,
                    }),
                    None => Ok(vec![OrderEvent::PaymentStarted {
                        order_id: self.order_id,
                        attempt_id: *attempt_id,
                        amount_cents: self.total_cents,
                    }]),
                }
            }
            OrderCommand::Pay {
                amount_cents,
                payment_ref,
            } => {
                if self.status != Confirmed {
                    return Err(self.invalid("pay"));
                }
                if payment_ref.trim().is_empty() {
                    return Err(OrderError::MissingPaymentRef);
                }
                if *amount_cents != self.total_cents {
                    return Err(OrderError::AmountMismatch {
                        expected: self.total_cents,
                        got: *amount_cents,
                    });
                }
                Ok(vec![OrderEvent::OrderPaid {
                    order_id: self.order_id,
                    amount_cents: *amount_cents,
                    payment_ref: payment_ref.clone(),
                }])
            }
            OrderCommand::FailPayment { reason } => {
                if self.status != Confirmed {
                    return Err(self.invalid("record a failed payment for"));
                }
                Ok(vec![OrderEvent::PaymentFailed {
                    order_id: self.order_id,
                    reason: require_reason(reason)?,
                }])
            }
            OrderCommand::Cancel { reason } => match self.status {
                Rejected | Cancelled => Ok(vec![]),
                // The gateway may be charging: cancel once the attempt ended.
                Confirmed if self.payment_attempt.is_some() => Err(OrderError::PaymentInProgress {
                    attempt_id: self
                        .payment_attempt
                        .map(|a| a.attempt_id)
                        .unwrap_or_default(),
                }),
                Placed | Confirmed | Paid => Ok(vec![OrderEvent::OrderCancelled {
                    order_id: self.order_id,
                    reason: require_reason(reason)?,
                    reserved_skus: self.reserved_skus(),
                    line_skus: self.line_skus(),
                    refund_cents: self.paid_cents,
                }]),
                _ => Err(self.invalid("cancel")),
            },
            OrderCommand::Ship => {
                if self.status != Paid {
                    return Err(self.invalid("ship"));
                }
                Ok(vec![OrderEvent::OrderShipped {
                    order_id: self.order_id,
                    lines: self.lines.clone(),
                }])
            }
        }
    }

    fn evolve(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                lines,
                total_cents,
            } => {
                self.order_id = *order_id;
                self.customer_id.clone_from(customer_id);
                self.lines.clone_from(lines);
                self.total_cents = *total_cents;
                self.status = OrderStatus::Placed;
            }
            OrderEvent::LineReserved { sku, .. } => {
                self.reserved.insert(sku.clone());
            }
            OrderEvent::OrderConfirmed { .. } => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderRejected { .. } => self.status = OrderStatus::Rejected,
            OrderEvent::PaymentStarted {
                attempt_id,
                amount_cents,
                ..
            } => {
                self.payment_attempt = Some(PaymentAttempt {
                    attempt_id: *attempt_id,
                    amount_cents: *amount_cents,
                });
            }
            OrderEvent::PaymentFailed { .. } => {
                self.failed_payments += 1;
                self.payment_attempt = None;
            }
            OrderEvent::OrderPaid {
                amount_cents,
                payment_ref,
                ..
            } => {
                self.payment_attempt = None;
                self.status = OrderStatus::Paid;
                self.paid_cents = *amount_cents;
                self.payment_ref = Some(payment_ref.clone());
            }
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::AggregateTest;

    fn id() -> Uuid {
        Uuid::from_u128(0x0e0e)
    }

    fn line(sku: &str, quantity: u32, unit_price_cents: i64) -> OrderLine {
        OrderLine {
            sku: sku.into(),
            quantity,
            unit_price_cents,
        }
    }

    fn lines() -> Vec<OrderLine> {
        vec![line("MUG-01", 2, 1200), line("TEE-01", 1, 2500)]
    }

    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::Place {
            order_id: id(),
            customer_id: "alice".into(),
            lines,
        }
    }

    #[test]
    fn who_may_do_what_to_an_order() {
        use crate::domain::roles::{CUSTOMER, OPERATOR, STAFF};
        use strata::Principal;
        let alice = Principal::user("alice", [CUSTOMER]);
        let bob = Principal::user("bob", [CUSTOMER]);
        let staff = Principal::user("sam", [STAFF]);
        let operator = Principal::user("olga", [OPERATOR]);
        let pm = Principal::service("fulfilment");
        let new = AggregateTest::<Order>::given_nothing();
        // Placing: customers, in their own name.
        assert!(new.authorize(&place(lines()), &alice).is_ok());
        assert!(new.authorize(&place(lines()), &bob).is_err());
        assert!(new.authorize(&place(lines()), &staff).is_err());
        assert!(new
            .authorize(&place(lines()), &Principal::anonymous())
            .is_err());
        // Paying and cancelling: the order's customer; staff may cancel.
        let existing = AggregateTest::<Order>::given([placed()]);
        let pay = OrderCommand::StartPayment { attempt_id: id() };
        let cancel = OrderCommand::Cancel { reason: "x".into() };
        assert!(existing.authorize(&pay, &alice).is_ok());
        assert!(existing.authorize(&pay, &bob).is_err());
        assert!(existing.authorize(&pay, &staff).is_err());
        assert!(existing.authorize(&cancel, &alice).is_ok());
        assert!(existing.authorize(&cancel, &bob).is_err());
        assert!(existing.authorize(&cancel, &staff).is_ok());
        assert!(existing.authorize(&cancel, &operator).is_err());
        // The rest of its life is the shop's own.
        for step in [
            OrderCommand::Ship,
            OrderCommand::Reject { reason: "x".into() },
            OrderCommand::RecordReservation {
                sku: "MUG-01".into(),
            },
            OrderCommand::Pay {
                amount_cents: 1,
                payment_ref: "r".into(),
            },
        ] {
            assert!(existing.authorize(&step, &alice).is_err());
            assert!(existing.authorize(&step, &staff).is_err());
            assert!(existing.authorize(&step, &pm).is_ok());
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: id(),
            customer_id: "alice".into(),
            lines: lines(),
            total_cents: 4900,
        }
    }

    fn line_reserved(sku: &str) -> OrderEvent {
        OrderEvent::LineReserved {
            order_id: id(),
            sku: sku.into(),
        }
    }

    fn confirmed() -> Vec<OrderEvent> {
        vec![
            placed(),
            line_reserved("MUG-01"),
            line_reserved("TEE-01"),
            OrderEvent::OrderConfirmed { order_id: id() },
        ]
    }

    fn paid() -> Vec<OrderEvent> {
        let mut events = confirmed();
        events.push(OrderEvent::OrderPaid {
            order_id: id(),
            amount_cents: 4900,
            payment_ref: "pay-1".into(),
        });
        events
    }

    fn rejected() -> Vec<OrderEvent> {
        vec![
            placed(),
            OrderEvent::OrderRejected {
                order_id: id(),
                reason: "out of stock".into(),
                reserved_skus: vec![],
                line_skus: both_skus(),
            },
        ]
    }

    fn cancelled() -> Vec<OrderEvent> {
        vec![
            placed(),
            OrderEvent::OrderCancelled {
                order_id: id(),
                reason: "changed my mind".into(),
                reserved_skus: vec![],
                line_skus: both_skus(),
                refund_cents: 0,
            },
        ]
    }

    fn shipped() -> Vec<OrderEvent> {
        let mut events = paid();
        events.push(OrderEvent::OrderShipped {
            order_id: id(),
            lines: lines(),
        });
        events
    }

    fn reserve(sku: &str) -> OrderCommand {
        OrderCommand::RecordReservation { sku: sku.into() }
    }

    fn reject(r: &str) -> OrderCommand {
        OrderCommand::Reject { reason: reason(r) }
    }

    fn cancel(r: &str) -> OrderCommand {
        OrderCommand::Cancel { reason: reason(r) }
    }

    /// The skus of [`lines`].
    fn both_skus() -> Vec<String> {
        vec!["MUG-01".into(), "TEE-01".into()]
    }

    /// `command` on a closed order (rejected or cancelled) records nothing.
    fn records_nothing_when_closed(command: impl Fn() -> OrderCommand) {
        for given in [rejected(), cancelled()] {
            AggregateTest::<Order>::given(given)
                .when(command())
                .then_expect_events([]);
        }
    }

    fn reason(r: &str) -> String {
        r.into()
    }

    fn is_invalid(from: OrderStatus, action: &'static str) -> impl FnOnce(&OrderError) -> bool {
        move |e| *e == OrderError::InvalidTransition { from, action }
    }

    #[test]
    fn placing_records_lines_and_total() {
        let order = AggregateTest::<Order>::given_nothing()
            .when(place(lines()))
            .then_expect_events([placed()]);
        assert_eq!(order.status(), OrderStatus::Placed);
        assert_eq!(order.total_cents(), 4900);
        assert_eq!(order.order_id(), id());
        assert_eq!(order.customer_id(), "alice");
        assert_eq!(order.lines(), lines());
    }

    #[test]
    fn placed_event_wire_format() {
        let events = AggregateTest::<Order>::given_nothing()
            .when(place(lines()))
            .then_encoded();
        insta::assert_json_snapshot!(events);
    }

    #[test]
    fn places_once() {
        AggregateTest::<Order>::given([placed()])
            .when(place(lines()))
            .then_expect_error(|e| *e == OrderError::AlreadyPlaced { order_id: id() });
    }

    #[test]
    fn place_validates_customer_and_lines() {
        let refused = |cmd| AggregateTest::<Order>::given_nothing().when(cmd).result();
        let with_customer = |customer_id: String| OrderCommand::Place {
            order_id: id(),
            customer_id,
            lines: lines(),
        };
        assert_eq!(
            refused(with_customer(" ".into())),
            Err(OrderError::InvalidCustomerId)
        );
        assert_eq!(
            refused(with_customer("c".repeat(MAX_CUSTOMER_ID_LEN + 1))),
            Err(OrderError::InvalidCustomerId)
        );
        assert!(refused(with_customer("c".repeat(MAX_CUSTOMER_ID_LEN))).is_ok());
        assert_eq!(
            refused(place(vec![])),
            Err(OrderError::LineCount { count: 0 })
        );
        let many = |n: usize| {
            (0..n)
                .map(|i| line(&format!("SKU-{i}"), 1, 1))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            refused(place(many(MAX_LINES + 1))),
            Err(OrderError::LineCount {
                count: MAX_LINES + 1
            })
        );
        assert!(refused(place(many(MAX_LINES))).is_ok());
        assert!(matches!(
            refused(place(vec![line("mug", 1, 1)])),
            Err(OrderError::InvalidSku(_))
        ));
        for quantity in [0, MAX_LINE_QUANTITY + 1] {
            assert_eq!(
                refused(place(vec![line("MUG", quantity, 1)])),
                Err(OrderError::InvalidQuantity {
                    sku: "MUG".into(),
                    quantity
                })
            );
        }
        assert!(refused(place(vec![line("MUG", MAX_LINE_QUANTITY, 1)])).is_ok());
        assert_eq!(
            refused(place(vec![line("MUG", 1, 0)])),
            Err(OrderError::InvalidUnitPrice {
                sku: "MUG".into(),
                unit_price_cents: 0
            })
        );
        assert_eq!(
            refused(place(vec![
                line("MUG", 1, 1),
                line("TEE", 1, 1),
                line("MUG", 2, 1)
            ])),
            Err(OrderError::DuplicateSku { sku: "MUG".into() })
        );
        assert_eq!(
            refused(place(vec![line("MUG", 2, i64::MAX / 2 + 1)])),
            Err(OrderError::TotalOverflow)
        );
        assert_eq!(
            refused(place(vec![line("MUG", 1, i64::MAX), line("TEE", 1, 1)])),
            Err(OrderError::TotalOverflow)
        );
    }

    #[test]
    fn reserving_a_line_records_it() {
        let order = AggregateTest::<Order>::given([placed()])
            .when(reserve("TEE-01"))
            .then_expect_events([line_reserved("TEE-01")]);
        assert!(order.is_reserved("TEE-01"));
        assert!(!order.is_reserved("MUG-01"));
        assert_eq!(order.status(), OrderStatus::Placed);
    }

    #[test]
    fn reserving_the_last_line_confirms_the_order() {
        let order = AggregateTest::<Order>::given([placed(), line_reserved("MUG-01")])
            .when(reserve("TEE-01"))
            .then_expect_events([
                line_reserved("TEE-01"),
                OrderEvent::OrderConfirmed { order_id: id() },
            ]);
        assert_eq!(order.status(), OrderStatus::Confirmed);
        let events = AggregateTest::<Order>::given([placed(), line_reserved("MUG-01")])
            .when(reserve("TEE-01"))
            .then_encoded();
        insta::assert_json_snapshot!(events);
    }

    #[test]
    fn a_line_reserved_again_records_nothing() {
        AggregateTest::<Order>::given([placed(), line_reserved("MUG-01")])
            .when(reserve("MUG-01"))
            .then_expect_events([]);
        AggregateTest::<Order>::given(paid())
            .when(reserve("MUG-01"))
            .then_expect_events([]);
    }

    #[test]
    fn reservation_refusals() {
        AggregateTest::<Order>::given_nothing()
            .when(reserve("MUG-01"))
            .then_expect_error(is_invalid(OrderStatus::New, "record a reservation for"));
        AggregateTest::<Order>::given([placed()])
            .when(reserve("HAT-01"))
            .then_expect_error(|e| matches!(e, OrderError::UnknownSku { sku } if sku == "HAT-01"));
        // A reservation landing after the rejection: the caller releases it.
        AggregateTest::<Order>::given(rejected())
            .when(reserve("MUG-01"))
            .then_expect_error(is_invalid(
                OrderStatus::Rejected,
                "record a reservation for",
            ));
    }

    #[test]
    fn rejecting_lists_the_reserved_and_line_skus() {
        let order = AggregateTest::<Order>::given([placed(), line_reserved("TEE-01")])
            .when(reject("MUG-01 is out of stock"))
            .then_expect_events([OrderEvent::OrderRejected {
                order_id: id(),
                reason: reason("MUG-01 is out of stock"),
                reserved_skus: vec!["TEE-01".into()],
                line_skus: both_skus(),
            }]);
        assert_eq!(order.status(), OrderStatus::Rejected);
        assert!(order.status().is_closed());
        AggregateTest::<Order>::given(confirmed())
            .when(reject("x"))
            .then_expect_events([OrderEvent::OrderRejected {
                order_id: id(),
                reason: reason("x"),
                reserved_skus: both_skus(),
                line_skus: both_skus(),
            }]);
    }

    #[test]
    fn rejecting_a_closed_order_records_nothing() {
        records_nothing_when_closed(|| reject("x"));
    }

    #[test]
    fn reject_refusals() {
        AggregateTest::<Order>::given_nothing()
            .when(reject("x"))
            .then_expect_error(is_invalid(OrderStatus::New, "reject"));
        AggregateTest::<Order>::given(paid())
            .when(reject("x"))
            .then_expect_error(is_invalid(OrderStatus::Paid, "reject"));
        AggregateTest::<Order>::given([placed()])
            .when(reject(" "))
            .then_expect_error(|e| *e == OrderError::MissingReason);
    }

    #[test]
    fn paying_a_confirmed_order() {
        let order = AggregateTest::<Order>::given(confirmed())
            .when(OrderCommand::Pay {
                amount_cents: 4900,
                payment_ref: "pay-1".into(),
            })
            .then_expect_events([OrderEvent::OrderPaid {
                order_id: id(),
                amount_cents: 4900,
                payment_ref: "pay-1".into(),
            }]);
        assert_eq!(order.status(), OrderStatus::Paid);
        assert_eq!(order.payment_ref(), Some("pay-1"));
    }

    #[test]
    fn pay_refusals() {
        let pay = |amount_cents| OrderCommand::Pay {
            amount_cents,
            payment_ref: "pay-1".into(),
        };
        AggregateTest::<Order>::given(confirmed())
            .when(pay(4899))
            .then_expect_error(|e| {
                *e == OrderError::AmountMismatch {
                    expected: 4900,
                    got: 4899,
                }
            });
        AggregateTest::<Order>::given(confirmed())
            .when(OrderCommand::Pay {
                amount_cents: 4900,
                payment_ref: String::new(),
            })
            .then_expect_error(|e| *e == OrderError::MissingPaymentRef);
        AggregateTest::<Order>::given([placed()])
            .when(pay(4900))
            .then_expect_error(is_invalid(OrderStatus::Placed, "pay"));
        AggregateTest::<Order>::given(paid())
            .when(pay(4900))
            .then_expect_error(is_invalid(OrderStatus::Paid, "pay"));
        AggregateTest::<Order>::given(rejected())
            .when(pay(4900))
            .then_expect_error(is_invalid(OrderStatus::Rejected, "pay"));
    }

    #[test]
    fn a_failed_payment_keeps_the_order_confirmed() {
        let failed = OrderEvent::PaymentFailed {
            order_id: id(),
            reason: reason("card declined"),
        };
        let order = AggregateTest::<Order>::given(confirmed())
            .when(OrderCommand::FailPayment {
                reason: reason("card declined"),
            })
            .then_expect_events([failed.clone()]);
        assert_eq!(order.status(), OrderStatus::Confirmed);
        assert_eq!(order.failed_payments(), 1);
        let mut given = confirmed();
        given.push(failed);
        AggregateTest::<Order>::given(given)
            .when(OrderCommand::Pay {
                amount_cents: 4900,
                payment_ref: "pay-2".into(),
            })
            .then_expect_events([OrderEvent::OrderPaid {
                order_id: id(),
                amount_cents: 4900,
                payment_ref: "pay-2".into(),
            }]);
    }

    #[test]
    fn one_payment_attempt_at_a_time() {
        let a = Uuid::from_u128(0xa);
        let b = Uuid::from_u128(0xb);
        let started = OrderEvent::PaymentStarted {
            order_id: id(),
            attempt_id: a,
            amount_cents: 4900,
        };
        let order = AggregateTest::<Order>::given(confirmed())
            .when(OrderCommand::StartPayment { attempt_id: a })
            .then_expect_events([started.clone()]);
        assert_eq!(
            order.payment_attempt(),
            Some(PaymentAttempt {
                attempt_id: a,
                amount_cents: 4900
            })
        );
        let mut given = confirmed();
        given.push(started);
        // The same attempt again records nothing; another one is refused,
        // and so is a cancel while the gateway may be charging.
        AggregateTest::<Order>::given(given.clone())
            .when(OrderCommand::StartPayment { attempt_id: a })
            .then_expect_events([]);
        AggregateTest::<Order>::given(given.clone())
            .when(OrderCommand::StartPayment { attempt_id: b })
            .then_expect_error(|e| *e == OrderError::PaymentInProgress { attempt_id: a });
        AggregateTest::<Order>::given(given.clone())
            .when(cancel("x"))
            .then_expect_error(|e| *e == OrderError::PaymentInProgress { attempt_id: a });
        // A result ends the attempt.
        let mut failed = given.clone();
        failed.push(OrderEvent::PaymentFailed {
            order_id: id(),
            reason: reason("declined"),
        });
        AggregateTest::<Order>::given(failed)
            .when(OrderCommand::StartPayment { attempt_id: b })
            .then_expect_events([OrderEvent::PaymentStarted {
                order_id: id(),
                attempt_id: b,
                amount_cents: 4900,
            }]);
        let order = AggregateTest::<Order>::given(given)
            .when(OrderCommand::Pay {
                amount_cents: 4900,
                payment_ref: "pay-1".into(),
            })
            .then_expect_events([OrderEvent::OrderPaid {
                order_id: id(),
                amount_cents: 4900,
                payment_ref: "pay-1".into(),
            }]);
        assert_eq!(order.payment_attempt(), None);
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::StartPayment { attempt_id: a })
            .then_expect_error(is_invalid(OrderStatus::Placed, "pay"));
    }

    #[test]
    fn fail_payment_refusals() {
        AggregateTest::<Order>::given([placed()])
            .when(OrderCommand::FailPayment {
                reason: reason("x"),
            })
            .then_expect_error(is_invalid(
                OrderStatus::Placed,
                "record a failed payment for",
            ));
        AggregateTest::<Order>::given(paid())
            .when(OrderCommand::FailPayment {
                reason: reason("x"),
            })
            .then_expect_error(is_invalid(OrderStatus::Paid, "record a failed payment for"));
    }

    #[test]
    fn cancelling_before_payment_refunds_nothing() {
        let order = AggregateTest::<Order>::given([placed(), line_reserved("MUG-01")])
            .when(cancel("changed my mind"))
            .then_expect_events([OrderEvent::OrderCancelled {
                order_id: id(),
                reason: reason("changed my mind"),
                reserved_skus: vec!["MUG-01".into()],
                line_skus: both_skus(),
                refund_cents: 0,
            }]);
        assert_eq!(order.status(), OrderStatus::Cancelled);
    }

    #[test]
    fn cancelling_a_paid_order_refunds_it() {
        let events = AggregateTest::<Order>::given(paid())
            .when(cancel("changed my mind"))
            .then_encoded();
        insta::assert_json_snapshot!(events);
        AggregateTest::<Order>::given(paid())
            .when(cancel("x"))
            .then_expect_events([OrderEvent::OrderCancelled {
                order_id: id(),
                reason: reason("x"),
                reserved_skus: both_skus(),
                line_skus: both_skus(),
                refund_cents: 4900,
            }]);
    }

    #[test]
    fn cancelling_a_closed_order_records_nothing() {
        records_nothing_when_closed(|| cancel("x"));
    }

    #[test]
    fn cancel_refusals() {
        AggregateTest::<Order>::given(shipped())
            .when(cancel("x"))
            .then_expect_error(is_invalid(OrderStatus::Shipped, "cancel"));
        AggregateTest::<Order>::given_nothing()
            .when(cancel("x"))
            .then_expect_error(is_invalid(OrderStatus::New, "cancel"));
        AggregateTest::<Order>::given(confirmed())
            .when(cancel(""))
            .then_expect_error(|e| *e == OrderError::MissingReason);
    }

    #[test]
    fn shipping_a_paid_order() {
        let order = AggregateTest::<Order>::given(paid())
            .when(OrderCommand::Ship)
            .then_expect_events([OrderEvent::OrderShipped {
                order_id: id(),
                lines: lines(),
            }]);
        assert_eq!(order.status(), OrderStatus::Shipped);
    }

    #[test]
    fn ships_only_paid_orders() {
        for (given, from) in [
            (vec![placed()], OrderStatus::Placed),
            (confirmed(), OrderStatus::Confirmed),
            (shipped(), OrderStatus::Shipped),
            (cancelled(), OrderStatus::Cancelled),
        ] {
            AggregateTest::<Order>::given(given)
                .when(OrderCommand::Ship)
                .then_expect_error(is_invalid(from, "ship"));
        }
    }

    #[test]
    fn error_messages_read_well() {
        let e = OrderError::InvalidTransition {
            from: OrderStatus::New,
            action: "ship",
        };
        assert_eq!(e.to_string(), "cannot ship an order that is not placed");
    }
}

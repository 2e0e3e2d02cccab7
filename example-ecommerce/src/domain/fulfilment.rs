//! The fulfilment process manager's pure reaction: which commands an
//! order or inventory event calls for.
//!
//! ```text
//! OrderPlaced         → Reserve every line               (inventory)
//! StockReserved       → RecordReservation { sku }        (order)
//! ReservationRefused  → Reject { reason }                (order)
//! OrderRejected       → Release every line's sku         (inventory)
//! OrderPaid           → Ship                             (order)
//! OrderShipped        → Commit every line's sku          (inventory)
//! OrderCancelled      → Release every line's sku         (inventory)
//! ```
//!
//! Releasing and committing are idempotent, so releasing a sku that was
//! never reserved is harmless.

use uuid::Uuid;

use super::inventory::{Inventory, InventoryCommand, InventoryEvent};
use super::order::{Order, OrderCommand, OrderEvent};
use strata::Aggregate;

strata::event_set! {
    /// An event the process manager listens to.
    #[derive(PartialEq, Eq)]
    pub enum ShopEvent {
        /// From an order stream.
        Order(OrderEvent),
        /// From an inventory stream.
        Inventory(InventoryEvent),
    }
}

/// A command the process manager sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FulfilmentCommand {
    /// To a sku's stock.
    Inventory {
        /// The sku (its stream is `inventory-<SKU>`).
        sku: String,
        /// The command.
        command: InventoryCommand,
    },
    /// To an order.
    Order {
        /// The order (its stream is `order-<uuid>`).
        order_id: Uuid,
        /// The command.
        command: OrderCommand,
    },
}

/// The commands an event calls for, in the order to send them.
pub fn react(event: &ShopEvent) -> Vec<FulfilmentCommand> {
    match event {
        ShopEvent::Order(event) => react_to_order(event),
        ShopEvent::Inventory(event) => react_to_inventory(event),
    }
}

/// The stream a command goes to: `inventory-<SKU>` or `order-<uuid>`.
pub fn stream_id_for(command: &FulfilmentCommand) -> String {
    match command {
        FulfilmentCommand::Inventory { sku, .. } => format!("{}-{sku}", Inventory::STREAM_TYPE),
        FulfilmentCommand::Order { order_id, .. } => {
            format!("{}-{order_id}", Order::STREAM_TYPE)
        }
    }
}

fn react_to_order(event: &OrderEvent) -> Vec<FulfilmentCommand> {
    match event {
        OrderEvent::OrderPlaced {
            order_id, lines, ..
        } => lines
            .iter()
            .map(|line| FulfilmentCommand::Inventory {
                sku: line.sku.clone(),
                command: InventoryCommand::Reserve {
                    sku: line.sku.clone(),
                    order_id: *order_id,
                    quantity: line.quantity,
                },
            })
            .collect(),
        OrderEvent::OrderRejected {
            order_id,
            reserved_skus,
            line_skus,
            ..
        }
        | OrderEvent::OrderCancelled {
            order_id,
            reserved_skus,
            line_skus,
            ..
        } => {
            let mut skus: Vec<&String> = line_skus.iter().collect();
            for sku in reserved_skus {
                if !skus.contains(&sku) {
                    skus.push(sku);
                }
            }
            skus.into_iter()
                .map(|sku| FulfilmentCommand::Inventory {
                    sku: sku.clone(),
                    command: InventoryCommand::Release {
                        sku: sku.clone(),
                        order_id: *order_id,
                    },
                })
                .collect()
        }
        OrderEvent::OrderPaid { order_id, .. } => vec![FulfilmentCommand::Order {
            order_id: *order_id,
            command: OrderCommand::Ship,
        }],
        OrderEvent::OrderShipped { order_id, lines } => lines
            .iter()
            .map(|line| FulfilmentCommand::Inventory {
                sku: line.sku.clone(),
                command: InventoryCommand::Commit {
                    sku: line.sku.clone(),
                    order_id: *order_id,
                },
            })
            .collect(),
        OrderEvent::LineReserved { .. }
        | OrderEvent::OrderConfirmed { .. }
        | OrderEvent::PaymentStarted { .. }
        | OrderEvent::PaymentFailed { .. } => vec![],
    }
}

fn react_to_inventory(event: &InventoryEvent) -> Vec<FulfilmentCommand> {
    match event {
        InventoryEvent::StockReserved { sku, order_id, .. } => vec![FulfilmentCommand::Order {
            order_id: *order_id,
            command: OrderCommand::RecordReservation { sku: sku.clone() },
        }],
        InventoryEvent::ReservationRefused {
            sku,
            order_id,
            requested,
            available,
        } => vec![FulfilmentCommand::Order {
            order_id: *order_id,
            command: OrderCommand::Reject {
                reason: format!(
                    "out of stock: {requested} of {sku} requested, {available} available"
                ),
            },
        }],
        InventoryEvent::Restocked { .. }
        | InventoryEvent::ReservationReleased { .. }
        | InventoryEvent::StockCommitted { .. } => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::order::OrderLine;
    use crate::domain::{inventory_stream, order_stream};

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    fn lines() -> Vec<OrderLine> {
        vec![
            OrderLine {
                sku: "MUG-01".into(),
                quantity: 2,
                unit_price_cents: 1200,
            },
            OrderLine {
                sku: "TEE-01".into(),
                quantity: 1,
                unit_price_cents: 2500,
            },
        ]
    }

    fn to_order(command: OrderCommand) -> FulfilmentCommand {
        FulfilmentCommand::Order {
            order_id: id(),
            command,
        }
    }

    fn release(sku: &str) -> FulfilmentCommand {
        FulfilmentCommand::Inventory {
            sku: sku.into(),
            command: InventoryCommand::Release {
                sku: sku.into(),
                order_id: id(),
            },
        }
    }

    fn skus(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_placed_order_reserves_every_line() {
        let commands = react(&ShopEvent::Order(OrderEvent::OrderPlaced {
            order_id: id(),
            customer_id: "alice".into(),
            lines: lines(),
            total_cents: 4900,
        }));
        assert_eq!(
            commands,
            [("MUG-01", 2), ("TEE-01", 1)].map(|(sku, quantity)| FulfilmentCommand::Inventory {
                sku: sku.into(),
                command: InventoryCommand::Reserve {
                    sku: sku.into(),
                    order_id: id(),
                    quantity,
                },
            })
        );
    }

    #[test]
    fn reserved_stock_is_recorded_on_the_order() {
        let commands = react(&ShopEvent::Inventory(InventoryEvent::StockReserved {
            sku: "MUG-01".into(),
            order_id: id(),
            quantity: 2,
            available_after: 8,
        }));
        assert_eq!(
            commands,
            [to_order(OrderCommand::RecordReservation {
                sku: "MUG-01".into()
            })]
        );
    }

    #[test]
    fn a_refused_reservation_rejects_the_order() {
        let commands = react(&ShopEvent::Inventory(InventoryEvent::ReservationRefused {
            sku: "MUG-01".into(),
            order_id: id(),
            requested: 3,
            available: 1,
        }));
        assert_eq!(
            commands,
            [to_order(OrderCommand::Reject {
                reason: "out of stock: 3 of MUG-01 requested, 1 available".into()
            })]
        );
    }

    #[test]
    fn a_rejected_order_releases_every_sku() {
        let commands = react(&ShopEvent::Order(OrderEvent::OrderRejected {
            order_id: id(),
            reason: "out of stock".into(),
            reserved_skus: skus(&["TEE-01", "ODD-01"]),
            line_skus: skus(&["MUG-01", "TEE-01"]),
        }));
        assert_eq!(
            commands,
            [release("MUG-01"), release("TEE-01"), release("ODD-01")]
        );
    }

    #[test]
    fn a_cancelled_order_releases_every_sku() {
        let commands = react(&ShopEvent::Order(OrderEvent::OrderCancelled {
            order_id: id(),
            reason: "changed my mind".into(),
            reserved_skus: skus(&["MUG-01"]),
            line_skus: skus(&["MUG-01", "TEE-01"]),
            refund_cents: 4900,
        }));
        assert_eq!(commands, [release("MUG-01"), release("TEE-01")]);
    }

    #[test]
    fn a_paid_order_ships() {
        let commands = react(&ShopEvent::Order(OrderEvent::OrderPaid {
            order_id: id(),
            amount_cents: 4900,
            payment_ref: "pay-1".into(),
        }));
        assert_eq!(commands, [to_order(OrderCommand::Ship)]);
    }

    #[test]
    fn a_shipped_order_commits_its_stock() {
        let commands = react(&ShopEvent::Order(OrderEvent::OrderShipped {
            order_id: id(),
            lines: lines(),
        }));
        assert_eq!(
            commands,
            ["MUG-01", "TEE-01"].map(|sku| FulfilmentCommand::Inventory {
                sku: sku.into(),
                command: InventoryCommand::Commit {
                    sku: sku.into(),
                    order_id: id(),
                },
            })
        );
    }

    #[test]
    fn other_events_call_for_nothing() {
        let events = [
            ShopEvent::Order(OrderEvent::LineReserved {
                order_id: id(),
                sku: "MUG-01".into(),
            }),
            ShopEvent::Order(OrderEvent::OrderConfirmed { order_id: id() }),
            ShopEvent::Order(OrderEvent::PaymentFailed {
                order_id: id(),
                reason: "declined".into(),
            }),
            ShopEvent::Inventory(InventoryEvent::Restocked {
                sku: "MUG-01".into(),
                quantity: 1,
                on_hand: 1,
            }),
            ShopEvent::Inventory(InventoryEvent::ReservationReleased {
                sku: "MUG-01".into(),
                order_id: id(),
                quantity: 1,
                available_after: 1,
            }),
            ShopEvent::Inventory(InventoryEvent::StockCommitted {
                sku: "MUG-01".into(),
                order_id: id(),
                quantity: 1,
                on_hand: 0,
            }),
        ];
        for event in &events {
            assert_eq!(react(event), [], "{event:?}");
        }
    }

    #[test]
    fn commands_go_to_their_streams() {
        let to_inventory = release("MUG-01");
        assert_eq!(stream_id_for(&to_inventory), "inventory-MUG-01");
        assert_eq!(
            stream_id_for(&to_inventory),
            inventory_stream("MUG-01").unwrap().as_str()
        );
        let to_order = to_order(OrderCommand::Ship);
        assert_eq!(
            stream_id_for(&to_order),
            "order-00000000-0000-0000-0000-000000000007"
        );
        assert_eq!(stream_id_for(&to_order), order_stream(id()).as_str());
    }
}

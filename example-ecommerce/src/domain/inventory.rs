//! Stock: one [`Inventory`] stream per sku, with reservations per order.
//!
//! A reservation that does not fit is not an error but a
//! [`InventoryEvent::ReservationRefused`] fact, so the fulfilment process
//! can react to it. Reserving, releasing and committing are idempotent per
//! order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata::{Aggregate, DomainEvent};
use uuid::Uuid;

use super::{validate_sku, InvalidSku};

/// What happened to a sku's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    /// Units arrived in the warehouse.
    #[serde(rename = "Restocked")]
    Restocked {
        /// The sku.
        sku: String,
        /// Units added.
        quantity: u32,
        /// Units on hand after.
        on_hand: u32,
    },
    /// Units were set aside for an order.
    #[serde(rename = "StockReserved")]
    StockReserved {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
        /// Units reserved.
        quantity: u32,
        /// Units still available after.
        available_after: u32,
    },
    /// A reservation did not fit in the available stock.
    #[serde(rename = "ReservationRefused")]
    ReservationRefused {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
        /// Units asked for.
        requested: u32,
        /// Units available at the time.
        available: u32,
    },
    /// An order's reservation was given back.
    #[serde(rename = "ReservationReleased")]
    ReservationReleased {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
        /// Units given back.
        quantity: u32,
        /// Units available after.
        available_after: u32,
    },
    /// An order's reserved units left the warehouse (shipped).
    #[serde(rename = "StockCommitted")]
    StockCommitted {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
        /// Units that left.
        quantity: u32,
        /// Units on hand after.
        on_hand: u32,
    },
}

impl DomainEvent for InventoryEvent {
    const STREAM_TYPE: Option<&'static str> = Some("inventory");
}

/// What a sku's stock can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Add units to the stock.
    Restock {
        /// The sku.
        sku: String,
        /// Units added, positive.
        quantity: u32,
    },
    /// Set units aside for an order (once per order; refused as an event
    /// when they are not available).
    Reserve {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
        /// Units wanted, positive.
        quantity: u32,
    },
    /// Give an order's reservation back (nothing if there is none).
    Release {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
    },
    /// Ship an order's reserved units (nothing if there is no reservation).
    Commit {
        /// The sku.
        sku: String,
        /// The order.
        order_id: Uuid,
    },
}

impl InventoryCommand {
    /// The sku the command is for.
    pub fn sku(&self) -> &str {
        match self {
            InventoryCommand::Restock { sku, .. }
            | InventoryCommand::Reserve { sku, .. }
            | InventoryCommand::Release { sku, .. }
            | InventoryCommand::Commit { sku, .. } => sku,
        }
    }
}

/// Why a sku's stock refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// The sku is malformed.
    #[error(transparent)]
    InvalidSku(#[from] InvalidSku),
    /// The command names another sku than the stream's.
    #[error("this stock is for sku {expected}, not {got}")]
    SkuMismatch {
        /// The stream's sku.
        expected: String,
        /// The command's sku.
        got: String,
    },
    /// A restock or reservation of zero units.
    #[error("the quantity must be positive")]
    ZeroQuantity,
    /// A restock would pass the largest countable stock.
    #[error("restocking {quantity} units onto {on_hand} would overflow the stock count")]
    StockOverflow {
        /// Units on hand.
        on_hand: u32,
        /// Units refused.
        quantity: u32,
    },
}

/// The stock of one sku.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    sku: String,
    on_hand: u32,
    reserved: BTreeMap<Uuid, u32>,
}

impl Inventory {
    /// The sku (empty until the first event).
    pub fn sku(&self) -> &str {
        &self.sku
    }

    /// Units in the warehouse, reserved or not.
    pub fn on_hand(&self) -> u32 {
        self.on_hand
    }

    /// Units reserved for orders, in total.
    pub fn reserved(&self) -> u32 {
        let total: u64 = self.reserved.values().map(|&q| u64::from(q)).sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Units reserved for one order, if any.
    pub fn reserved_for(&self, order_id: Uuid) -> Option<u32> {
        self.reserved.get(&order_id).copied()
    }

    /// The event `make` builds from `order_id`'s reserved units, if it
    /// holds any; nothing otherwise (releasing or committing twice is a
    /// no-op).
    fn on_reservation(
        &self,
        order_id: Uuid,
        make: impl FnOnce(u32) -> InventoryEvent,
    ) -> Vec<InventoryEvent> {
        self.reserved_for(order_id).map(make).into_iter().collect()
    }

    /// Units that can still be reserved: on hand minus reserved.
    pub fn available(&self) -> u32 {
        self.on_hand.saturating_sub(self.reserved())
    }

    fn check_sku(&self, sku: &str) -> Result<(), InventoryError> {
        validate_sku(sku)?;
        if !self.sku.is_empty() && self.sku != sku {
            return Err(InventoryError::SkuMismatch {
                expected: self.sku.clone(),
                got: sku.to_owned(),
            });
        }
        Ok(())
    }
}

impl Aggregate for Inventory {
    const STREAM_TYPE: &'static str = "inventory";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    /// Staff restock; reservations are the process manager's.
    fn authorize(
        &self,
        command: &InventoryCommand,
        who: &strata::Principal,
    ) -> Result<(), strata::Forbidden> {
        match command {
            InventoryCommand::Restock { .. } => super::staff_only(who, "restock"),
            InventoryCommand::Reserve { .. }
            | InventoryCommand::Release { .. }
            | InventoryCommand::Commit { .. } => super::services_only(who, "reserving stock"),
        }
    }

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        self.check_sku(command.sku())?;
        let sku = command.sku().to_owned();
        match *command {
            InventoryCommand::Restock { quantity: 0, .. }
            | InventoryCommand::Reserve { quantity: 0, .. } => Err(InventoryError::ZeroQuantity),
            InventoryCommand::Restock { quantity, .. } => {
                let on_hand =
                    self.on_hand
                        .checked_add(quantity)
                        .ok_or(InventoryError::StockOverflow {
                            on_hand: self.on_hand,
                            quantity,
                        })?;
                Ok(vec![InventoryEvent::Restocked {
                    sku,
                    quantity,
                    on_hand,
                }])
            }
            InventoryCommand::Reserve {
                order_id, quantity, ..
            } => {
                if self.reserved.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                let available = self.available();
                if quantity > available {
                    return Ok(vec![InventoryEvent::ReservationRefused {
                        sku,
                        order_id,
                        requested: quantity,
                        available,
                    }]);
                }
                Ok(vec![InventoryEvent::StockReserved {
                    sku,
                    order_id,
                    quantity,
                    available_after: available - quantity,
                }])
            }
            InventoryCommand::Release { order_id, .. } => Ok(self.on_reservation(
                order_id,
                |quantity| InventoryEvent::ReservationReleased {
                    sku,
                    order_id,
                    quantity,
                    available_after: self.available().saturating_add(quantity),
                },
            )),
            InventoryCommand::Commit { order_id, .. } => Ok(self.on_reservation(
                order_id,
                |quantity| InventoryEvent::StockCommitted {
                    sku,
                    order_id,
                    quantity,
                    on_hand: self.on_hand.saturating_sub(quantity),
                },
            )),
        }
    }

    fn evolve(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Restocked { sku, on_hand, .. } => {
                self.sku.clone_from(sku);
                self.on_hand = *on_hand;
            }
            InventoryEvent::StockReserved {
                sku,
                order_id,
                quantity,
                ..
            } => {
                self.sku.clone_from(sku);
                self.reserved.insert(*order_id, *quantity);
            }
            InventoryEvent::ReservationRefused { sku, .. } => self.sku.clone_from(sku),
            InventoryEvent::ReservationReleased { order_id, .. } => {
                self.reserved.remove(order_id);
            }
            InventoryEvent::StockCommitted {
                order_id, on_hand, ..
            } => {
                self.reserved.remove(order_id);
                self.on_hand = *on_hand;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::AggregateTest;

    const SKU: &str = "MUG-01";

    fn order(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn restocked(quantity: u32, on_hand: u32) -> InventoryEvent {
        InventoryEvent::Restocked {
            sku: SKU.into(),
            quantity,
            on_hand,
        }
    }

    fn reserved(n: u128, quantity: u32, available_after: u32) -> InventoryEvent {
        InventoryEvent::StockReserved {
            sku: SKU.into(),
            order_id: order(n),
            quantity,
            available_after,
        }
    }

    fn reserve(n: u128, quantity: u32) -> InventoryCommand {
        InventoryCommand::Reserve {
            sku: SKU.into(),
            order_id: order(n),
            quantity,
        }
    }

    fn release(n: u128) -> InventoryCommand {
        InventoryCommand::Release {
            sku: SKU.into(),
            order_id: order(n),
        }
    }

    fn commit(n: u128) -> InventoryCommand {
        InventoryCommand::Commit {
            sku: SKU.into(),
            order_id: order(n),
        }
    }

    #[test]
    fn restocking_adds_to_on_hand() {
        let stock = AggregateTest::<Inventory>::given([restocked(10, 10)])
            .when(InventoryCommand::Restock {
                sku: SKU.into(),
                quantity: 5,
            })
            .then_expect_events([restocked(5, 15)]);
        assert_eq!((stock.on_hand(), stock.available()), (15, 15));
        assert_eq!(stock.sku(), SKU);
    }

    #[test]
    fn restock_refusals() {
        let restock = |sku: &str, quantity| InventoryCommand::Restock {
            sku: sku.into(),
            quantity,
        };
        AggregateTest::<Inventory>::given_nothing()
            .when(restock(SKU, 0))
            .then_expect_error(|e| *e == InventoryError::ZeroQuantity);
        AggregateTest::<Inventory>::given_nothing()
            .when(restock("mug", 1))
            .then_expect_error(|e| matches!(e, InventoryError::InvalidSku(_)));
        AggregateTest::<Inventory>::given([restocked(1, 1)])
            .when(restock("TEE-01", 1))
            .then_expect_error(|e| matches!(e, InventoryError::SkuMismatch { .. }));
        AggregateTest::<Inventory>::given([restocked(u32::MAX, u32::MAX)])
            .when(restock(SKU, 1))
            .then_expect_error(|e| matches!(e, InventoryError::StockOverflow { .. }));
    }

    #[test]
    fn reserving_sets_units_aside() {
        let stock = AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(reserve(2, 7))
            .then_expect_events([reserved(2, 7, 0)]);
        assert_eq!(
            (stock.on_hand(), stock.reserved(), stock.available()),
            (10, 10, 0)
        );
        assert_eq!(stock.reserved_for(order(2)), Some(7));
    }

    #[test]
    fn reservation_wire_format() {
        let events = AggregateTest::<Inventory>::given([restocked(10, 10)])
            .when(reserve(1, 4))
            .then_encoded();
        insta::assert_json_snapshot!(events);
    }

    #[test]
    fn a_reservation_that_does_not_fit_is_refused_as_an_event() {
        let refused = InventoryEvent::ReservationRefused {
            sku: SKU.into(),
            order_id: order(2),
            requested: 8,
            available: 7,
        };
        let stock = AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(reserve(2, 8))
            .then_expect_events([refused]);
        assert_eq!(stock.available(), 7);
        assert_eq!(stock.reserved_for(order(2)), None);
        let events = AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(reserve(2, 8))
            .then_encoded();
        insta::assert_json_snapshot!(events);
    }

    #[test]
    fn nothing_in_stock_refuses_every_reservation() {
        AggregateTest::<Inventory>::given_nothing()
            .when(reserve(1, 1))
            .then_expect_events([InventoryEvent::ReservationRefused {
                sku: SKU.into(),
                order_id: order(1),
                requested: 1,
                available: 0,
            }]);
    }

    #[test]
    fn reserving_twice_for_an_order_records_nothing() {
        AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(reserve(1, 3))
            .then_expect_events([]);
        AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(reserve(1, 5))
            .then_expect_events([]);
    }

    #[test]
    fn reserve_refusals() {
        AggregateTest::<Inventory>::given([restocked(10, 10)])
            .when(reserve(1, 0))
            .then_expect_error(|e| *e == InventoryError::ZeroQuantity);
        AggregateTest::<Inventory>::given([restocked(10, 10)])
            .when(InventoryCommand::Reserve {
                sku: "TEE-01".into(),
                order_id: order(1),
                quantity: 1,
            })
            .then_expect_error(|e| matches!(e, InventoryError::SkuMismatch { .. }));
    }

    #[test]
    fn releasing_gives_units_back() {
        let stock = AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(release(1))
            .then_expect_events([InventoryEvent::ReservationReleased {
                sku: SKU.into(),
                order_id: order(1),
                quantity: 3,
                available_after: 10,
            }]);
        assert_eq!((stock.on_hand(), stock.available()), (10, 10));
    }

    #[test]
    fn releasing_an_unknown_reservation_records_nothing() {
        AggregateTest::<Inventory>::given([restocked(10, 10), reserved(1, 3, 7)])
            .when(release(2))
            .then_expect_events([]);
        AggregateTest::<Inventory>::given_nothing()
            .when(release(1))
            .then_expect_events([]);
    }

    #[test]
    fn committing_ships_the_reserved_units() {
        let stock = AggregateTest::<Inventory>::given([
            restocked(10, 10),
            reserved(1, 3, 7),
            reserved(2, 2, 5),
        ])
        .when(commit(1))
        .then_expect_events([InventoryEvent::StockCommitted {
            sku: SKU.into(),
            order_id: order(1),
            quantity: 3,
            on_hand: 7,
        }]);
        assert_eq!(
            (stock.on_hand(), stock.reserved(), stock.available()),
            (7, 2, 5)
        );
    }

    #[test]
    fn committing_an_unknown_or_released_reservation_records_nothing() {
        AggregateTest::<Inventory>::given([restocked(10, 10)])
            .when(commit(1))
            .then_expect_events([]);
        AggregateTest::<Inventory>::given([
            restocked(10, 10),
            reserved(1, 3, 7),
            InventoryEvent::ReservationReleased {
                sku: SKU.into(),
                order_id: order(1),
                quantity: 3,
                available_after: 10,
            },
        ])
        .when(commit(1))
        .then_expect_events([]);
    }
}

//! The skus running out.

use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};

use super::LOW_STOCK_THRESHOLD;
use crate::domain::inventory::InventoryEvent;

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
    /// commit; [`CatalogView`](super::CatalogView) always has the figure.
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

//! The catalog with stock levels.

use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};

use super::CatalogEvent;
use crate::domain::catalog::ProductEvent;
use crate::domain::inventory::InventoryEvent;

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

//! The shop's read side: six [`Projection`](strata::Projection)s, each a view of keyed JSON
//! documents built from the domain's events.
//!
//! | view | key | document | fed by |
//! |------|-----|----------|--------|
//! | [`CatalogView`] (`catalog`) | sku | [`CatalogItem`] | product and inventory events |
//! | [`OrderDetailsView`] (`order_details`) | order id | [`OrderDetails`] | order events |
//! | [`CustomerOrdersView`] (`customer_orders`) | customer id | [`CustomerOrders`] (the latest 20) | `OrderPlaced` |
//! | [`CustomerOrderHistoryView`] (`customer_order_history`) | [`history_key`]: customer, position | [`PlacedOrder`] | `OrderPlaced` |
//! | [`LowStockView`] (`low_stock`) | sku | [`LowStock`] | inventory events |
//! | [`SalesDashboardView`] (`sales_dashboard`) | `<YYYY-MM-DD>:<sku>` | [`DailySales`] | `OrderShipped` |
//!
//! Every projection is pure: the runtime decodes each event once into the
//! domain's typed event (the projection's `Event`: one aggregate's events,
//! or a [`strata::event_set!`] over several) and the projection folds it
//! into the document. A payload that does not decode is a
//! [`ProjectionError`](strata::ProjectionError) (the projector retries, then dead-letters and
//! halts).

use crate::domain::catalog::ProductEvent;
use crate::domain::inventory::InventoryEvent;

mod catalog;
mod customer_orders;
mod low_stock;
mod order_details;
mod sales_dashboard;
#[cfg(test)]
mod tests;

pub use catalog::{CatalogItem, CatalogView};
pub use customer_orders::{
    history_key, history_prefix, CustomerOrder, CustomerOrderHistoryView, CustomerOrders,
    CustomerOrdersView, PlacedOrder, RECENT_ORDERS,
};
pub use low_stock::{LowStock, LowStockView};
pub use order_details::{HistoryEntry, OrderDetails, OrderDetailsView};
pub use sales_dashboard::{DailySales, SalesDashboardView};

/// The names of the shop's views, in the order of this module.
pub const VIEW_NAMES: [&str; 6] = [
    CatalogView::NAME,
    OrderDetailsView::NAME,
    CustomerOrdersView::NAME,
    CustomerOrderHistoryView::NAME,
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

/// Who reads which views: the catalog is public; an order and a
/// customer's order list belong to the customer (and staff read them
/// all); low stock and the sales dashboard are for staff.
pub fn access() -> strata::ViewAccess {
    use crate::domain::roles::STAFF;
    use strata::OwnerField;
    strata::ViewAccess::new()
        .public(CatalogView::NAME)
        .owned(
            OrderDetailsView::NAME,
            OwnerField::Pointer("/customer_id".into()),
            [STAFF],
        )
        .owned(CustomerOrdersView::NAME, OwnerField::Key, [STAFF])
        .owned(
            CustomerOrderHistoryView::NAME,
            OwnerField::Pointer("/customer_id".into()),
            [STAFF],
        )
        .roles(LowStockView::NAME, [STAFF])
        .roles(SalesDashboardView::NAME, [STAFF])
}

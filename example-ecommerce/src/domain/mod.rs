//! The shop's domain, pure: aggregates ([`catalog`], [`inventory`],
//! [`order`]), the fulfilment process manager's reaction ([`fulfilment`])
//! and a simulated payment gateway ([`payment`]).
//!
//! Nothing here does I/O except the gateway's simulated latency.

pub mod catalog;
pub mod fulfilment;
pub mod inventory;
pub mod order;
pub mod payment;

use strata::{Aggregate, Forbidden, Principal, StreamId};
use uuid::Uuid;

/// The shop's roles, as tokens carry them.
pub mod roles {
    /// Places orders, pays and cancels its own, reads its own.
    pub const CUSTOMER: &str = "customer";
    /// Keeps the catalog: products, prices, stock; reads every order.
    pub const STAFF: &str = "staff";
    /// Runs the shop: health, metrics, admin.
    pub const OPERATOR: &str = "operator";
}

/// Staff, or a service of the shop (the process manager, imports).
pub fn staff_only(who: &Principal, what: &str) -> Result<(), Forbidden> {
    Forbidden::unless(
        who.is_service() || who.has_role(roles::STAFF),
        format!("only staff may {what}"),
    )
}

/// The shop's own services only (the process manager's steps).
pub fn services_only(who: &Principal, what: &str) -> Result<(), Forbidden> {
    Forbidden::unless(
        who.is_service(),
        format!("{what} is done by the shop itself"),
    )
}

/// Longest sku, in characters.
pub const MAX_SKU_LEN: usize = 32;

/// A sku that is not 1 to 32 ASCII uppercase letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sku {sku:?}: {reason}")]
pub struct InvalidSku {
    /// The refused sku (at most 40 characters of it).
    pub sku: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a sku: 1 to 32 characters, ASCII uppercase letters, digits and `-`.
pub fn validate_sku(sku: &str) -> Result<(), InvalidSku> {
    let refuse = |reason| InvalidSku {
        sku: sku.chars().take(40).collect(),
        reason,
    };
    if sku.is_empty() || sku.len() > MAX_SKU_LEN {
        return Err(refuse("a sku is 1 to 32 characters long"));
    }
    if !sku
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(refuse(
            "only ASCII uppercase letters, digits and '-' are allowed",
        ));
    }
    Ok(())
}

/// The stream of a product: `product-<SKU>`.
pub fn product_stream(sku: &str) -> Result<StreamId, InvalidSku> {
    sku_stream(catalog::Product::STREAM_TYPE, sku)
}

/// The stream of a sku's stock: `inventory-<SKU>`.
pub fn inventory_stream(sku: &str) -> Result<StreamId, InvalidSku> {
    sku_stream(inventory::Inventory::STREAM_TYPE, sku)
}

/// The stream of an order: `order-<uuid>`.
pub fn order_stream(order_id: Uuid) -> StreamId {
    StreamId::from_uuid(order::Order::STREAM_TYPE, order_id)
        .expect("`order-` and a hyphenated uuid form a valid stream id")
}

fn sku_stream(prefix: &str, sku: &str) -> Result<StreamId, InvalidSku> {
    validate_sku(sku)?;
    StreamId::new(format!("{prefix}-{sku}")).map_err(|_| InvalidSku {
        sku: sku.to_owned(),
        reason: "not a valid stream id",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_skus() {
        for sku in ["A", "MUG-01", "0", &"X".repeat(MAX_SKU_LEN)] {
            assert_eq!(validate_sku(sku), Ok(()), "{sku}");
        }
    }

    #[test]
    fn invalid_skus() {
        for sku in [
            "",
            &"X".repeat(MAX_SKU_LEN + 1),
            "mug",
            "MUG 1",
            "MUG_1",
            "MUG.1",
            "MUGÉ",
        ] {
            assert!(validate_sku(sku).is_err(), "{sku:?}");
        }
    }

    #[test]
    fn stream_ids() {
        assert_eq!(product_stream("MUG-01").unwrap().as_str(), "product-MUG-01");
        assert_eq!(
            inventory_stream("MUG-01").unwrap().as_str(),
            "inventory-MUG-01"
        );
        assert!(inventory_stream("mug").is_err());
        let id = Uuid::from_u128(0x42);
        assert_eq!(
            order_stream(id).as_str(),
            "order-00000000-0000-0000-0000-000000000042"
        );
    }
}

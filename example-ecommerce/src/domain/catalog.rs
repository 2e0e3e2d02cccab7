//! The catalog: one [`Product`] stream per sku.

use serde::{Deserialize, Serialize};
use strata::{Aggregate, DomainEvent};

use super::{validate_sku, InvalidSku};

/// Longest product name, in characters.
pub const MAX_NAME_LEN: usize = 100;

/// What happened to a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProductEvent {
    /// The product entered the catalog.
    #[serde(rename = "ProductRegistered")]
    ProductRegistered {
        /// Its sku.
        sku: String,
        /// Its display name.
        name: String,
        /// Its unit price, in cents.
        price_cents: i64,
    },
    /// Its price changed.
    #[serde(rename = "PriceChanged")]
    PriceChanged {
        /// The product's sku.
        sku: String,
        /// The price before, in cents.
        old_price_cents: i64,
        /// The price now, in cents.
        new_price_cents: i64,
    },
    /// It is no longer sold.
    #[serde(rename = "ProductDiscontinued")]
    ProductDiscontinued {
        /// The product's sku.
        sku: String,
    },
}

impl DomainEvent for ProductEvent {
    const STREAM_TYPE: Option<&'static str> = Some("product");
}

/// What a product can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Add the product to the catalog.
    Register {
        /// Its sku (see [`validate_sku`]).
        sku: String,
        /// Its display name, 1 to 100 characters.
        name: String,
        /// Its unit price in cents, positive.
        price_cents: i64,
    },
    /// Set a new price (the same price again records nothing).
    ChangePrice {
        /// The new unit price in cents, positive.
        price_cents: i64,
    },
    /// Stop selling the product.
    Discontinue,
}

/// Why a product refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// The sku is malformed.
    #[error(transparent)]
    InvalidSku(#[from] InvalidSku),
    /// The name is blank or too long.
    #[error("a product name is 1 to {MAX_NAME_LEN} characters, not blank")]
    InvalidName,
    /// The price is zero or negative.
    #[error("a price must be positive, got {price_cents} cents")]
    InvalidPrice {
        /// The refused price.
        price_cents: i64,
    },
    /// The product is already in the catalog.
    #[error("product {sku} is already registered")]
    AlreadyRegistered {
        /// Its sku.
        sku: String,
    },
    /// The product is not in the catalog.
    #[error("the product is not registered")]
    NotRegistered,
    /// The product is discontinued.
    #[error("product {sku} is discontinued")]
    Discontinued {
        /// Its sku.
        sku: String,
    },
}

/// Where a product is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductStatus {
    /// Not registered yet.
    #[default]
    Unregistered,
    /// On sale.
    Active,
    /// No longer sold.
    Discontinued,
}

/// A product of the catalog.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    sku: String,
    name: String,
    price_cents: i64,
    status: ProductStatus,
}

impl Product {
    /// Its sku (empty until registered).
    pub fn sku(&self) -> &str {
        &self.sku
    }

    /// Its display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its current unit price, in cents.
    pub fn price_cents(&self) -> i64 {
        self.price_cents
    }

    /// Where it is in its life.
    pub fn status(&self) -> ProductStatus {
        self.status
    }
}

fn validate_price(price_cents: i64) -> Result<(), ProductError> {
    if price_cents > 0 {
        Ok(())
    } else {
        Err(ProductError::InvalidPrice { price_cents })
    }
}

impl Aggregate for Product {
    const STREAM_TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    /// Only staff (or the shop's services) change the catalog.
    fn authorize(
        &self,
        command: &ProductCommand,
        who: &strata::Principal,
    ) -> Result<(), strata::Forbidden> {
        let what = match command {
            ProductCommand::Register { .. } => "register products",
            ProductCommand::ChangePrice { .. } => "change prices",
            ProductCommand::Discontinue => "discontinue products",
        };
        super::staff_only(who, what)
    }

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match (command, self.status) {
            (
                ProductCommand::Register { .. },
                ProductStatus::Active | ProductStatus::Discontinued,
            ) => Err(ProductError::AlreadyRegistered {
                sku: self.sku.clone(),
            }),
            (
                ProductCommand::Register {
                    sku,
                    name,
                    price_cents,
                },
                ProductStatus::Unregistered,
            ) => {
                validate_sku(sku)?;
                if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
                    return Err(ProductError::InvalidName);
                }
                validate_price(*price_cents)?;
                Ok(vec![ProductEvent::ProductRegistered {
                    sku: sku.clone(),
                    name: name.clone(),
                    price_cents: *price_cents,
                }])
            }
            (_, ProductStatus::Unregistered) => Err(ProductError::NotRegistered),
            (_, ProductStatus::Discontinued) => Err(ProductError::Discontinued {
                sku: self.sku.clone(),
            }),
            (ProductCommand::ChangePrice { price_cents }, ProductStatus::Active) => {
                validate_price(*price_cents)?;
                if *price_cents == self.price_cents {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::PriceChanged {
                    sku: self.sku.clone(),
                    old_price_cents: self.price_cents,
                    new_price_cents: *price_cents,
                }])
            }
            (ProductCommand::Discontinue, ProductStatus::Active) => {
                Ok(vec![ProductEvent::ProductDiscontinued {
                    sku: self.sku.clone(),
                }])
            }
        }
    }

    fn evolve(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductRegistered {
                sku,
                name,
                price_cents,
            } => {
                self.sku.clone_from(sku);
                self.name.clone_from(name);
                self.price_cents = *price_cents;
                self.status = ProductStatus::Active;
            }
            ProductEvent::PriceChanged {
                new_price_cents, ..
            } => self.price_cents = *new_price_cents,
            ProductEvent::ProductDiscontinued { .. } => {
                self.status = ProductStatus::Discontinued;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::AggregateTest;

    fn registered() -> ProductEvent {
        ProductEvent::ProductRegistered {
            sku: "MUG-01".into(),
            name: "Strata mug".into(),
            price_cents: 1200,
        }
    }

    fn discontinued() -> ProductEvent {
        ProductEvent::ProductDiscontinued {
            sku: "MUG-01".into(),
        }
    }

    fn register(sku: &str, name: &str, price_cents: i64) -> ProductCommand {
        ProductCommand::Register {
            sku: sku.into(),
            name: name.into(),
            price_cents,
        }
    }

    #[test]
    fn registering_records_the_product() {
        let product = AggregateTest::<Product>::given_nothing()
            .when(register("MUG-01", "Strata mug", 1200))
            .then_expect_events([registered()]);
        assert_eq!(product.status(), ProductStatus::Active);
        assert_eq!(product.price_cents(), 1200);
        assert_eq!(product.name(), "Strata mug");
        assert_eq!(product.sku(), "MUG-01");
    }

    #[test]
    fn registered_event_wire_format() {
        let events = AggregateTest::<Product>::given_nothing()
            .when(register("MUG-01", "Strata mug", 1200))
            .then_encoded();
        insta::assert_json_snapshot!(events);
    }

    #[test]
    fn registers_once() {
        AggregateTest::<Product>::given([registered()])
            .when(register("MUG-01", "Other", 1))
            .then_expect_error(
                |e| matches!(e, ProductError::AlreadyRegistered { sku } if sku == "MUG-01"),
            );
        AggregateTest::<Product>::given([registered(), discontinued()])
            .when(register("MUG-01", "Other", 1))
            .then_expect_error(|e| matches!(e, ProductError::AlreadyRegistered { .. }));
    }

    #[test]
    fn register_validates_sku_name_and_price() {
        let refused = |cmd| AggregateTest::<Product>::given_nothing().when(cmd).result();
        assert!(matches!(
            refused(register("mug", "Mug", 1)),
            Err(ProductError::InvalidSku(_))
        ));
        assert_eq!(
            refused(register("MUG", "  ", 1)),
            Err(ProductError::InvalidName)
        );
        assert_eq!(
            refused(register("MUG", &"é".repeat(MAX_NAME_LEN + 1), 1)),
            Err(ProductError::InvalidName)
        );
        assert!(refused(register("MUG", &"é".repeat(MAX_NAME_LEN), 1)).is_ok());
        for price_cents in [0, -5] {
            assert_eq!(
                refused(register("MUG", "Mug", price_cents)),
                Err(ProductError::InvalidPrice { price_cents })
            );
        }
    }

    #[test]
    fn changing_the_price_records_old_and_new() {
        let product = AggregateTest::<Product>::given([registered()])
            .when(ProductCommand::ChangePrice { price_cents: 1500 })
            .then_expect_events([ProductEvent::PriceChanged {
                sku: "MUG-01".into(),
                old_price_cents: 1200,
                new_price_cents: 1500,
            }]);
        assert_eq!(product.price_cents(), 1500);
    }

    #[test]
    fn the_same_price_again_records_nothing() {
        AggregateTest::<Product>::given([registered()])
            .when(ProductCommand::ChangePrice { price_cents: 1200 })
            .then_expect_events([]);
    }

    #[test]
    fn price_change_refusals() {
        AggregateTest::<Product>::given_nothing()
            .when(ProductCommand::ChangePrice { price_cents: 1 })
            .then_expect_error(|e| *e == ProductError::NotRegistered);
        AggregateTest::<Product>::given([registered(), discontinued()])
            .when(ProductCommand::ChangePrice { price_cents: 1 })
            .then_expect_error(|e| matches!(e, ProductError::Discontinued { .. }));
        AggregateTest::<Product>::given([registered()])
            .when(ProductCommand::ChangePrice { price_cents: 0 })
            .then_expect_error(|e| *e == ProductError::InvalidPrice { price_cents: 0 });
    }

    #[test]
    fn discontinuing() {
        let product = AggregateTest::<Product>::given([registered()])
            .when(ProductCommand::Discontinue)
            .then_expect_events([discontinued()]);
        assert_eq!(product.status(), ProductStatus::Discontinued);
    }

    #[test]
    fn discontinues_once_and_only_registered_products() {
        AggregateTest::<Product>::given([registered(), discontinued()])
            .when(ProductCommand::Discontinue)
            .then_expect_error(
                |e| matches!(e, ProductError::Discontinued { sku } if sku == "MUG-01"),
            );
        AggregateTest::<Product>::given_nothing()
            .when(ProductCommand::Discontinue)
            .then_expect_error(|e| *e == ProductError::NotRegistered);
    }
}

//! Units and revenue shipped per day and sku.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use strata::{Projection, ProjectionError, Recorded};

use crate::domain::order::{OrderEvent, OrderLine};

/// Units and revenue shipped per day and sku: one [`DailySales`] per
/// `<YYYY-MM-DD>:<sku>` (the UTC day the `OrderShipped` was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalesDashboardView;

impl SalesDashboardView {
    /// The view's name.
    pub const NAME: &'static str = "sales_dashboard";

    /// The document key of a sku's sales on a UTC day.
    pub fn key(day: &str, sku: &str) -> String {
        format!("{day}:{sku}")
    }

    /// The UTC day of a time, `YYYY-MM-DD`.
    pub fn day(at: DateTime<Utc>) -> String {
        at.format("%Y-%m-%d").to_string()
    }
}

/// What one sku sold on one day (counted when shipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailySales {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The sku.
    pub sku: String,
    /// Units shipped.
    pub units: u64,
    /// Their revenue at the orders' unit prices, in cents.
    pub revenue_cents: i64,
    /// Shipped orders with this sku.
    pub orders: u64,
}

impl Projection for SalesDashboardView {
    type Event = OrderEvent;
    type Doc = DailySales;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn keys(&self, e: Recorded<'_, OrderEvent>) -> Vec<String> {
        match e.event {
            OrderEvent::OrderShipped { lines, .. } => {
                let day = Self::day(e.recorded_at());
                let mut keys: Vec<String> = lines.iter().map(|l| Self::key(&day, &l.sku)).collect();
                keys.sort();
                keys.dedup();
                keys
            }
            _ => vec![],
        }
    }

    fn apply(
        &self,
        key: &str,
        doc: Option<DailySales>,
        e: Recorded<'_, OrderEvent>,
    ) -> Result<Option<DailySales>, ProjectionError> {
        let OrderEvent::OrderShipped { lines, .. } = e.event else {
            return Ok(doc);
        };
        let Some((day, sku)) = key.split_once(':') else {
            return Err(ProjectionError::new(format!(
                "sales dashboard key {key:?} is not <day>:<sku>"
            )));
        };
        let mine: Vec<&OrderLine> = lines.iter().filter(|l| l.sku == sku).collect();
        if mine.is_empty() {
            return Ok(doc);
        }
        let overflow = || {
            ProjectionError::new(format!(
                "revenue of {key} overflows at position {}",
                e.position()
            ))
        };
        let mut d = doc.unwrap_or_else(|| DailySales {
            day: day.to_owned(),
            sku: sku.to_owned(),
            units: 0,
            revenue_cents: 0,
            orders: 0,
        });
        for line in mine {
            d.units += u64::from(line.quantity);
            d.revenue_cents = line
                .total_cents()
                .and_then(|t| d.revenue_cents.checked_add(t))
                .ok_or_else(overflow)?;
        }
        d.orders += 1;
        Ok(Some(d))
    }
}

//! A simulated payment gateway: latency, random declines from a seeded
//! generator (deterministic for a seed and call order), an optional rule
//! declining large amounts, and idempotency keys as real gateways have
//! them: a charge with a key already used answers the first result and
//! charges nothing (also while the first is still in flight).
//!
//! The keys are kept in this process's memory: two processes charging
//! with the same key are two gateways here, where a real gateway is one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// Why the gateway declined a charge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentDeclined {
    /// The (simulated) card issuer said no.
    #[error("payment for order {order_id} declined by the issuer")]
    Declined {
        /// The order.
        order_id: Uuid,
    },
    /// The amount is above the gateway's limit.
    #[error("payment of {amount_cents} cents for order {order_id} declined: above the limit of {limit_cents} cents")]
    AboveLimit {
        /// The order.
        order_id: Uuid,
        /// The amount asked.
        amount_cents: i64,
        /// The limit.
        limit_cents: i64,
    },
    /// Zero or negative amount.
    #[error("payment of {amount_cents} cents for order {order_id} declined: the amount must be positive")]
    InvalidAmount {
        /// The order.
        order_id: Uuid,
        /// The amount asked.
        amount_cents: i64,
    },
}

/// A simulated payment gateway.
#[derive(Debug)]
pub struct PaymentGateway {
    failure_rate: f64,
    latency: Duration,
    decline_above_cents: Option<i64>,
    rng: Mutex<StdRng>,
    /// Results by idempotency key.
    results: Mutex<HashMap<Uuid, Arc<ChargeCell>>>,
    /// Charges that reached the (simulated) issuer.
    charged: AtomicU64,
}

type ChargeCell = tokio::sync::OnceCell<Result<String, PaymentDeclined>>;

impl PaymentGateway {
    /// A gateway that declines with probability `failure_rate` (clamped to
    /// 0..=1; NaN counts as 0), answers after `latency`, and draws from a
    /// generator seeded with `seed`.
    pub fn new(failure_rate: f64, latency: Duration, seed: u64) -> Self {
        let failure_rate = if failure_rate.is_nan() {
            0.0
        } else {
            failure_rate.clamp(0.0, 1.0)
        };
        PaymentGateway {
            failure_rate,
            latency,
            decline_above_cents: None,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            results: Mutex::new(HashMap::new()),
            charged: AtomicU64::new(0),
        }
    }

    /// A gateway that accepts every positive amount at once.
    pub fn always_accepting() -> Self {
        Self::new(0.0, Duration::ZERO, 0)
    }

    /// A gateway that declines every charge at once.
    pub fn always_declining() -> Self {
        Self::new(1.0, Duration::ZERO, 0)
    }

    /// Also declines amounts above `limit_cents`.
    pub fn with_decline_above(mut self, limit_cents: i64) -> Self {
        self.decline_above_cents = Some(limit_cents);
        self
    }

    /// The probability of a random decline.
    pub fn failure_rate(&self) -> f64 {
        self.failure_rate
    }

    /// The limit above which amounts are declined, if any.
    pub fn decline_above_cents(&self) -> Option<i64> {
        self.decline_above_cents
    }

    /// How many charges reached the issuer (each idempotency key counts
    /// once, whatever its result and however often it was sent).
    pub fn charges(&self) -> u64 {
        self.charged.load(Ordering::SeqCst)
    }

    /// Charges `amount_cents` for an order under the idempotency key `key`:
    /// after the latency, a payment reference (`pay-` and 16 hex digits) or
    /// why it was declined. A key seen before answers its first result and
    /// charges nothing; concurrent calls with one key wait for the same
    /// charge.
    ///
    /// The random draws happen before the wait, so the outcomes follow
    /// the order of the calls, not of their completions.
    pub async fn charge(
        &self,
        key: Uuid,
        order_id: Uuid,
        amount_cents: i64,
    ) -> Result<String, PaymentDeclined> {
        let cell = Arc::clone(
            self.results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default(),
        );
        cell.get_or_init(|| self.charge_once(order_id, amount_cents))
            .await
            .clone()
    }

    async fn charge_once(
        &self,
        order_id: Uuid,
        amount_cents: i64,
    ) -> Result<String, PaymentDeclined> {
        self.charged.fetch_add(1, Ordering::SeqCst);
        let (roll, reference) = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            (rng.gen::<f64>(), rng.gen::<u64>())
        };
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if amount_cents <= 0 {
            return Err(PaymentDeclined::InvalidAmount {
                order_id,
                amount_cents,
            });
        }
        if let Some(limit_cents) = self.decline_above_cents.filter(|&l| amount_cents > l) {
            return Err(PaymentDeclined::AboveLimit {
                order_id,
                amount_cents,
                limit_cents,
            });
        }
        if roll < self.failure_rate {
            return Err(PaymentDeclined::Declined { order_id });
        }
        Ok(format!("pay-{reference:016x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(gateway: &PaymentGateway) -> Vec<Result<String, PaymentDeclined>> {
        let mut out = Vec::new();
        for n in 0..50 {
            out.push(
                gateway
                    .charge(Uuid::from_u128(n), Uuid::from_u128(n), 1000)
                    .await,
            );
        }
        out
    }

    #[tokio::test]
    async fn a_seed_gives_the_same_outcomes() {
        let a = run(&PaymentGateway::new(0.3, Duration::ZERO, 7)).await;
        let b = run(&PaymentGateway::new(0.3, Duration::ZERO, 7)).await;
        assert_eq!(a, b);
        let declined = a.iter().filter(|r| r.is_err()).count();
        assert!((5..=25).contains(&declined), "{declined} of 50 declined");
        let c = run(&PaymentGateway::new(0.3, Duration::ZERO, 8)).await;
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn references_look_like_references() {
        let reference = PaymentGateway::always_accepting()
            .charge(Uuid::new_v4(), Uuid::nil(), 1)
            .await
            .unwrap();
        assert!(reference.starts_with("pay-"));
        assert_eq!(reference.len(), 4 + 16);
    }

    #[tokio::test]
    async fn always_declining_declines() {
        let gateway = PaymentGateway::always_declining();
        for r in run(&gateway).await {
            assert!(matches!(r, Err(PaymentDeclined::Declined { .. })));
        }
    }

    #[tokio::test]
    async fn amounts_above_the_limit_are_declined() {
        let gateway = PaymentGateway::always_accepting().with_decline_above(5000);
        let id = Uuid::from_u128(1);
        assert!(gateway.charge(Uuid::new_v4(), id, 5000).await.is_ok());
        assert_eq!(
            gateway.charge(Uuid::new_v4(), id, 5001).await,
            Err(PaymentDeclined::AboveLimit {
                order_id: id,
                amount_cents: 5001,
                limit_cents: 5000
            })
        );
        assert!(matches!(
            gateway.charge(Uuid::new_v4(), id, 0).await,
            Err(PaymentDeclined::InvalidAmount { .. })
        ));
    }

    #[tokio::test]
    async fn a_key_charges_once_and_answers_the_first_result() {
        let gateway = Arc::new(PaymentGateway::new(0.5, Duration::from_millis(20), 3));
        let key = Uuid::new_v4();
        let order = Uuid::new_v4();
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let g = Arc::clone(&gateway);
                tokio::spawn(async move { g.charge(key, order, 1000).await })
            })
            .collect();
        let mut results = Vec::new();
        for c in calls {
            results.push(c.await.unwrap());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        assert_eq!(gateway.charge(key, order, 1000).await, results[0]);
        assert_eq!(gateway.charges(), 1);
        let _ = gateway.charge(Uuid::new_v4(), order, 1000).await;
        assert_eq!(gateway.charges(), 2);
    }

    #[test]
    fn failure_rate_is_clamped() {
        assert_eq!(
            PaymentGateway::new(2.0, Duration::ZERO, 0).failure_rate(),
            1.0
        );
        assert_eq!(
            PaymentGateway::new(-1.0, Duration::ZERO, 0).failure_rate(),
            0.0
        );
        assert_eq!(
            PaymentGateway::new(f64::NAN, Duration::ZERO, 0).failure_rate(),
            0.0
        );
    }

    #[tokio::test]
    async fn charging_takes_the_latency() {
        let gateway = PaymentGateway::new(0.0, Duration::from_millis(20), 1);
        let start = tokio::time::Instant::now();
        assert!(gateway.charge(Uuid::new_v4(), Uuid::nil(), 1).await.is_ok());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}

//! The event bus: how projectors and process managers receive events.
//!
//! Two implementations: JetStream (`nats::JetStreamBus`, durable pull
//! consumers with explicit acks) for separate processes, and
//! [`InProcessBus`] (follows the store directly) for the embedded mode and
//! unit tests. Either way a subscriber keeps its own checkpoint and skips
//! what it has already applied, so redelivery is harmless.

use std::future::Future;
use std::time::Duration;

use crate::envelope::{EventEnvelope, Position};
use crate::error::BoxError;
use crate::store::follow::Follower;
use crate::store::{EventFilter, EventStore};
use crate::write::aggregate::BoxFuture;

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus (NATS) is unreachable or refused the operation. Retry later.
    #[error("event bus unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// Reading from the event store failed (in-process bus).
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// The bus's stream holds events of another event store (e.g. a fresh
    /// database beside a stream left by an earlier one): nothing is
    /// applied. Point the subscriber at its own stream, or delete the
    /// stream so the relay refills it from the store.
    #[error("stream {stream} does not belong to this event store: {reason}")]
    StreamMismatch {
        /// The stream.
        stream: String,
        /// What differs.
        reason: String,
    },
    /// A delivery skipped positions: the subscription must restart from the
    /// subscriber's checkpoint.
    #[error("gap in deliveries: expected position {expected}, got {got}")]
    Gap {
        /// The next position the subscriber needs.
        expected: Position,
        /// What arrived.
        got: Position,
    },
}

/// Acknowledges a batch: the bus's acks are cumulative, so only the
/// delivery with the highest position is acknowledged.
pub async fn ack_batch(batch: Vec<Delivery>) {
    if let Some(last) = batch.into_iter().max_by_key(|d| d.envelope.position) {
        if let Err(e) = last.ack().await {
            // Harmless: the events are redelivered and skipped.
            tracing::debug!(error = %e, "ack failed");
        }
    }
}

/// Sorts a batch by position, drops what is at or below `after` (already
/// applied: a redelivery), and checks the rest is contiguous from `after`.
/// Buses deliver every event (subscribers filter), so positions are dense.
pub fn in_order(
    mut batch: Vec<Delivery>,
    after: Position,
) -> Result<(Vec<Delivery>, Vec<Delivery>), BusError> {
    batch.sort_by_key(|d| d.envelope.position);
    let (old, new): (Vec<Delivery>, Vec<Delivery>) = batch
        .into_iter()
        .partition(|d| d.envelope.position <= after);
    let mut expected = after.next();
    let mut fresh: Vec<Delivery> = Vec::with_capacity(new.len());
    for d in new {
        if d.envelope.position < expected {
            continue; // the same event twice in one batch
        }
        if d.envelope.position != expected {
            return Err(BusError::Gap {
                expected,
                got: d.envelope.position,
            });
        }
        expected = expected.next();
        fresh.push(d);
    }
    Ok((fresh, old))
}

impl BusError {
    /// Wraps a transport error.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        BusError::Unavailable(e.into())
    }
}

/// Acknowledges deliveries once their effect is committed. Acks are
/// cumulative: acknowledging one acknowledges every earlier one.
pub trait Ack: Send + Sync {
    /// Tells the bus the event is done with.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>>;
}

/// One event as delivered, with its acknowledgement.
pub struct Delivery {
    /// The event.
    pub envelope: EventEnvelope,
    ack: Option<Box<dyn Ack>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("position", &self.envelope.position)
            .field("event_type", &self.envelope.event_type)
            .finish()
    }
}

impl Delivery {
    /// A delivery that needs no acknowledgement.
    pub fn unacked(envelope: EventEnvelope) -> Self {
        Delivery {
            envelope,
            ack: None,
        }
    }

    /// A delivery acknowledged through `ack`.
    pub fn with_ack(envelope: EventEnvelope, ack: Box<dyn Ack>) -> Self {
        Delivery {
            envelope,
            ack: Some(ack),
        }
    }

    /// Acknowledges the delivery (a no-op for the in-process bus).
    pub async fn ack(self) -> Result<(), BusError> {
        match self.ack {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }
}

/// A live subscription.
pub trait Subscription: Send + 'static {
    /// The next events (at most `max`), waiting up to `max_wait` for the
    /// first. May return an empty batch. Events come in position order;
    /// after a crash or a redelivery some may be ones already applied.
    fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, BusError>> + Send;

    /// Events known to be waiting behind the last batch, if the bus knows.
    fn backlog(&self) -> Option<u64>;
}

/// Hands out subscriptions.
pub trait EventBus: Clone + Send + Sync + 'static {
    /// The subscription type.
    type Subscription: Subscription;

    /// Subscribes `name` (a durable subscriber: one projection or process
    /// manager), starting after `after` (its committed checkpoint). Every
    /// event is delivered, in position order with no gaps (subscribers apply
    /// `filter` themselves; the bus may use it to skip payload it can); a
    /// gap is reported by [`in_order`] and answered by subscribing again.
    fn subscribe(
        &self,
        name: &str,
        filter: &EventFilter,
        after: Position,
    ) -> impl Future<Output = Result<Self::Subscription, BusError>> + Send;
}

/// The in-process bus: subscriptions follow the event store directly.
#[derive(Debug, Clone)]
pub struct InProcessBus<S> {
    store: S,
}

impl<S: EventStore> InProcessBus<S> {
    /// A bus over `store`.
    pub fn new(store: S) -> Self {
        InProcessBus { store }
    }
}

/// A subscription of the [`InProcessBus`].
#[derive(Debug)]
pub struct InProcessSubscription<S> {
    follower: Follower<S>,
    store: S,
    backlog: Option<u64>,
}

impl<S: EventStore> Subscription for InProcessSubscription<S> {
    async fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        let follower = &mut self.follower;
        follower.set_batch_size(max);
        let result: Result<Vec<EventEnvelope>, crate::StoreError> = async {
            if let Some(batch) = follower.try_next_batch().await? {
                return Ok(batch);
            }
            self.store
                .wait_for_head(follower.position(), max_wait)
                .await?;
            Ok(follower.try_next_batch().await?.unwrap_or_default())
        }
        .await;
        let position = self.follower.position();
        let head = self.store.head().await.ok();
        self.backlog = head.map(|h| h.0.saturating_sub(position.0));
        let batch = result.map_err(BusError::Store)?;
        Ok(batch.into_iter().map(Delivery::unacked).collect())
    }

    fn backlog(&self) -> Option<u64> {
        self.backlog
    }
}

impl<S: EventStore> EventBus for InProcessBus<S> {
    type Subscription = InProcessSubscription<S>;

    async fn subscribe(
        &self,
        _name: &str,
        _filter: &EventFilter,
        after: Position,
    ) -> Result<Self::Subscription, BusError> {
        Ok(InProcessSubscription {
            follower: Follower::new(self.store.clone(), after),
            store: self.store.clone(),
            backlog: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::envelope::{Metadata, StreamId};

    fn at(position: u64) -> Delivery {
        Delivery::unacked(EventEnvelope {
            position: Position(position),
            event_id: uuid::Uuid::new_v4(),
            stream_id: StreamId::new("s-1").unwrap(),
            stream_type: "thing".into(),
            stream_version: position,
            event_type: "Added".into(),
            schema_version: 1,
            payload: json!({}),
            metadata: Metadata::new(),
            recorded_at: chrono::Utc::now(),
        })
    }

    fn batch(positions: &[u64]) -> Vec<Delivery> {
        positions.iter().map(|&p| at(p)).collect()
    }

    fn positions(ds: &[Delivery]) -> Vec<u64> {
        ds.iter().map(|d| d.envelope.position.0).collect()
    }

    fn split(ps: &[u64], after: u64) -> (Vec<u64>, Vec<u64>) {
        let (fresh, old) = in_order(batch(ps), Position(after)).expect("in order");
        (positions(&fresh), positions(&old))
    }

    fn gap(ps: &[u64], after: u64) -> (u64, u64) {
        match in_order(batch(ps), Position(after)) {
            Err(BusError::Gap { expected, got }) => (expected.0, got.0),
            other => panic!("expected a gap for {ps:?} after {after}, got {other:?}"),
        }
    }

    #[test]
    fn a_dense_batch_passes_in_position_order() {
        assert_eq!(split(&[1, 2, 3], 0), (vec![1, 2, 3], vec![]));
        assert_eq!(split(&[7, 5, 6], 4), (vec![5, 6, 7], vec![]));
        assert_eq!(split(&[], 4), (vec![], vec![]));
    }

    #[test]
    fn redeliveries_at_or_below_the_checkpoint_are_set_apart() {
        assert_eq!(split(&[3, 4, 5, 6], 4), (vec![5, 6], vec![3, 4]));
        assert_eq!(split(&[2, 1], 4), (vec![], vec![1, 2]));
    }

    #[test]
    fn the_same_event_twice_in_a_batch_is_kept_once() {
        assert_eq!(split(&[5, 6, 5, 6, 7], 4), (vec![5, 6, 7], vec![]));
    }

    #[test]
    fn a_gap_is_reported_with_what_was_expected() {
        assert_eq!(gap(&[6, 7], 4), (5, 6));
        assert_eq!(gap(&[5, 6, 8], 4), (7, 8));
        assert_eq!(gap(&[3, 4, 9], 4), (5, 9));
        assert_eq!(gap(&[2], 0), (1, 2));
    }

    #[tokio::test]
    async fn acking_an_unacked_batch_is_harmless() {
        ack_batch(batch(&[1, 2, 3])).await;
        ack_batch(Vec::new()).await;
        assert!(at(1).ack().await.is_ok());
    }

    /// Counts acks, to show `ack_batch` acknowledges only the highest.
    struct Counting(u64, std::sync::Arc<std::sync::Mutex<Vec<u64>>>);

    impl Ack for Counting {
        fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
            self.1.lock().unwrap().push(self.0);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn ack_batch_acknowledges_only_the_highest_position() {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let deliveries: Vec<Delivery> = [4, 9, 6]
            .into_iter()
            .map(|p| {
                Delivery::with_ack(
                    at(p).envelope,
                    Box::new(Counting(p, std::sync::Arc::clone(&acked))),
                )
            })
            .collect();
        ack_batch(deliveries).await;
        assert_eq!(*acked.lock().unwrap(), vec![9]);
    }
}

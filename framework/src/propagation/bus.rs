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

//! Following the store's global order: the loop the relay, rebuilds and
//! catch-up readers share.

use std::time::Duration;

use crate::envelope::{EventEnvelope, Position};
use crate::error::Result;
use crate::store::{EventFilter, EventStore};

/// Reads the store in global order from a position, batch by batch, and
/// waits (without busy polling) when it has caught up.
///
/// Relies on the store's invariant that a position is visible only once all
/// lower ones are: after a read that returned fewer events than asked, every
/// event up to the head read before it has been seen, so filtered followers
/// move on even when no event matched.
#[derive(Debug, Clone)]
pub struct Follower<S> {
    store: S,
    position: Position,
    filter: EventFilter,
    batch_size: usize,
    idle_wait: Duration,
}

impl<S: EventStore> Follower<S> {
    /// A follower that will return events after `position`.
    pub fn new(store: S, position: Position) -> Self {
        Follower {
            store,
            position,
            filter: EventFilter::all(),
            batch_size: 1_000,
            idle_wait: Duration::from_secs(5),
        }
    }

    /// Only events the filter matches.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Most events per batch (default 1,000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Changes the batch size of a running follower.
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    /// The position up to which every event has been returned (or filtered out).
    pub fn position(&self) -> Position {
        self.position
    }

    /// Returns the next batch, waiting until there is one.
    pub async fn next_batch(&mut self) -> Result<Vec<EventEnvelope>> {
        loop {
            if let Some(batch) = self.try_next_batch().await? {
                return Ok(batch);
            }
            self.store
                .wait_for_head(self.position, self.idle_wait)
                .await?;
        }
    }

    /// Returns the next batch, or `None` when caught up with the head.
    pub async fn try_next_batch(&mut self) -> Result<Option<Vec<EventEnvelope>>> {
        loop {
            // The head as the store last heard it (no database round trip
            // while its listener is current): never ahead of what is visible,
            // and a new event always moves it.
            let head = self
                .store
                .wait_for_head(self.position, Duration::ZERO)
                .await?;
            if head <= self.position {
                return Ok(None);
            }
            let events = self
                .store
                .read_all(self.position, self.batch_size, &self.filter)
                .await?;
            let last = events.last().map_or(self.position, |e| e.position);
            self.position = if events.len() < self.batch_size {
                last.max(head)
            } else {
                last
            };
            if !events.is_empty() {
                return Ok(Some(events));
            }
        }
    }
}

//! The in-memory event store: the embedded default and the store for unit
//! tests. Same rules as the Postgres store (both pass one conformance suite).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::{EventEnvelope, Position, StreamId};
use crate::error::Result;
use crate::store::{
    decide, validate, wait_past, written, AppendOutcome, AppendRequest, Decision, EventFilter,
    EventStore, StoreLimits, StoredId,
};

/// An event store that lives in the process's memory.
///
/// Cheap to clone: clones share the same events.
#[derive(Clone)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    head: watch::Sender<Position>,
    limits: StoreLimits,
}

#[derive(Default)]
struct State {
    events: Vec<EventEnvelope>,
    /// Indexes into `events` per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::with_limits(StoreLimits::default())
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: StoreLimits) -> Self {
        InMemoryEventStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                head: watch::Sender::new(Position::START),
                limits,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied append
        // (the state is changed only after every check), so poisoning is
        // safe to ignore.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every event, in global order (for demos and tests).
    pub fn all_events(&self) -> Vec<EventEnvelope> {
        self.state().events.clone()
    }
}

impl State {
    fn stored_id(&self, idx: usize) -> StoredId {
        let e = &self.events[idx];
        StoredId {
            stream_id: e.stream_id.clone(),
            stream_version: e.stream_version,
            position: e.position,
        }
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        let valid = validate(request, &self.inner.limits)?;
        let request = valid.request;
        let outcome = {
            let mut state = self.state();
            let current = state
                .streams
                .get(&request.stream_id)
                .map_or(0, |v| v.len() as u64);
            let existing: HashMap<Uuid, StoredId> = request
                .events
                .iter()
                .filter_map(|e| {
                    state
                        .ids
                        .get(&e.event_id)
                        .map(|&i| (e.event_id, state.stored_id(i)))
                })
                .collect();
            match decide(&request, current, &existing)? {
                Decision::Duplicate(outcome) => return Ok(outcome),
                Decision::Write { current } => {
                    let recorded_at = Utc::now();
                    let first_position = Position(state.events.len() as u64 + 1);
                    let count = request.events.len() as u64;
                    for (i, e) in request.events.into_iter().enumerate() {
                        let idx = state.events.len();
                        state.ids.insert(e.event_id, idx);
                        state
                            .streams
                            .entry(request.stream_id.clone())
                            .or_default()
                            .push(idx);
                        state.events.push(EventEnvelope {
                            position: Position(idx as u64 + 1),
                            event_id: e.event_id,
                            stream_id: request.stream_id.clone(),
                            stream_type: request.stream_type.clone(),
                            stream_version: current + 1 + i as u64,
                            event_type: e.event_type,
                            schema_version: e.schema_version,
                            payload: e.payload,
                            metadata: e.metadata,
                            recorded_at: e.recorded_at.unwrap_or(recorded_at),
                        });
                    }
                    written(request.stream_id, current, count, first_position)
                }
            }
        };
        self.inner.head.send_replace(outcome.position);
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        let state = self.state();
        let Some(indexes) = state.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let skip = from_version.saturating_sub(1) as usize;
        Ok(indexes
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&i| state.events[i].clone())
            .collect())
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<EventEnvelope>> {
        let state = self.state();
        let start = (after.0 as usize).min(state.events.len());
        Ok(state.events[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<Position> {
        Ok(*self.inner.head.borrow())
    }

    async fn wait_for_head(&self, after: Position, max_wait: Duration) -> Result<Position> {
        Ok(wait_past(&self.inner.head, after, max_wait).await)
    }

    async fn events_by_id(&self, ids: &[Uuid]) -> Result<Vec<EventEnvelope>> {
        let state = self.state();
        let mut found: Vec<usize> = ids
            .iter()
            .filter_map(|id| state.ids.get(id).copied())
            .collect();
        found.sort_unstable();
        found.dedup();
        Ok(found.into_iter().map(|i| state.events[i].clone()).collect())
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64> {
        Ok(self
            .state()
            .streams
            .get(stream_id)
            .map_or(0, |v| v.len() as u64))
    }
}

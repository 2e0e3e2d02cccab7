//! Aggregates as pure deciders, and their snapshots.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::DomainEvent;
use crate::envelope::{Position, StreamId};
use crate::error::StoreError;

/// An aggregate: the state of one stream, with a pure `decide` and `evolve`.
///
/// Both are synchronous and do no I/O, so a domain is tested without a
/// runtime or a database ([`AggregateTest`](crate::AggregateTest)); the
/// [`CommandHandler`](crate::CommandHandler) does load → decide → append.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use strata::{Aggregate, DomainEvent};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum Event {
///     Incremented { by: u32 },
/// }
/// impl DomainEvent for Event {}
///
/// #[derive(Debug, thiserror::Error)]
/// enum Error {
///     #[error("the counter is capped at {0}")]
///     Cap(u64),
/// }
///
/// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
/// struct Counter { value: u64 }
///
/// impl Aggregate for Counter {
///     const STREAM_TYPE: &'static str = "counter";
///     type Command = u32;
///     type Event = Event;
///     type Error = Error;
///
///     fn decide(&self, by: &u32) -> Result<Vec<Event>, Error> {
///         if self.value + u64::from(*by) > 100 {
///             return Err(Error::Cap(100));
///         }
///         Ok(vec![Event::Incremented { by: *by }])
///     }
///
///     fn evolve(&mut self, event: &Event) {
///         match event {
///             Event::Incremented { by } => self.value += u64::from(*by),
///         }
///     }
/// }
/// ```
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The stream type of this aggregate's streams, e.g. `order`.
    const STREAM_TYPE: &'static str;
    /// Version of the state's serialised shape, for snapshots: bump it when
    /// the state's shape changes and old snapshots are ignored.
    const SNAPSHOT_VERSION: u32 = 1;
    /// What the aggregate is asked to do.
    type Command: Send + Sync + 'static;
    /// What it records.
    type Event: DomainEvent;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what happens: the events to record, or a refusal.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state.
    fn evolve(&mut self, event: &Self::Event);

    /// Whether `principal` may have `command` decided on this state: the
    /// place for rules such as "only the order's customer pays it" or "only
    /// staff change prices". The command handler calls it before
    /// [`decide`](Self::decide), on the same state, so a refusal records
    /// nothing and answers [`CommandError::Forbidden`](crate::CommandError::Forbidden).
    /// Allows everything unless overridden.
    fn authorize(
        &self,
        command: &Self::Command,
        principal: &crate::access::Principal,
    ) -> Result<(), crate::access::Forbidden> {
        let _ = (command, principal);
        Ok(())
    }
}

/// When to take snapshots of an aggregate type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotPolicy {
    /// Never (the default): load always folds every event.
    #[default]
    Never,
    /// After an append that crosses a multiple of this many events.
    Every(u64),
}

impl SnapshotPolicy {
    /// True when moving the stream from `before` to `after` should snapshot.
    pub fn due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::Every(n) => n > 0 && before / n != after / n,
        }
    }
}

/// A saved aggregate state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: StreamId,
    /// Its type.
    pub stream_type: String,
    /// The stream version the state includes.
    pub version: u64,
    /// The global position of the stream's event at `version`.
    pub position: Position,
    /// [`Aggregate::SNAPSHOT_VERSION`] when it was taken.
    pub schema_version: u32,
    /// The serialised state.
    pub state: serde_json::Value,
}

/// A boxed future, for traits used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where snapshots live. Used as `dyn` by the command handler.
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of a stream, if any.
    fn load<'a>(
        &'a self,
        stream_id: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>>;
    /// Saves a snapshot (keeping the newer one if one exists).
    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Snapshots in memory.
#[derive(Debug, Default)]
pub struct InMemorySnapshotStore {
    map: std::sync::Mutex<std::collections::HashMap<StreamId, Snapshot>>,
}

impl InMemorySnapshotStore {
    /// An empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SnapshotStore for InMemorySnapshotStore {
    fn load<'a>(
        &'a self,
        stream_id: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, StoreError>> {
        let found = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream_id)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn save(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let newer = map
            .get(&snapshot.stream_id)
            .is_none_or(|old| old.version < snapshot.version);
        if newer {
            map.insert(snapshot.stream_id.clone(), snapshot);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_is_never_due() {
        for (before, after) in [(0, 1), (0, 1_000), (99, 100)] {
            assert!(!SnapshotPolicy::Never.due(before, after));
        }
        assert_eq!(SnapshotPolicy::default(), SnapshotPolicy::Never);
    }

    #[test]
    fn every_n_is_due_when_an_append_crosses_a_multiple() {
        let every = SnapshotPolicy::Every(10);
        let cases = [
            (0, 9, false),
            (0, 10, true),
            (9, 10, true),
            (10, 11, false),
            (10, 19, false),
            (11, 20, true),
            (5, 25, true), // crossing two multiples at once
            (19, 21, true),
            (20, 20, false), // nothing appended
        ];
        for (before, after, due) in cases {
            assert_eq!(every.due(before, after), due, "{before} -> {after}");
        }
        let each = SnapshotPolicy::Every(1);
        assert!(each.due(0, 1) && each.due(7, 8));
    }

    #[test]
    fn every_zero_never_snapshots_and_does_not_divide_by_zero() {
        assert!(!SnapshotPolicy::Every(0).due(0, 100));
    }

    fn snapshot(version: u64) -> Snapshot {
        Snapshot {
            stream_id: StreamId::new("s-1").unwrap(),
            stream_type: "thing".into(),
            version,
            position: Position(version * 10),
            schema_version: 1,
            state: serde_json::json!({ "version": version }),
        }
    }

    #[tokio::test]
    async fn the_memory_snapshot_store_keeps_the_newest() {
        let store = InMemorySnapshotStore::new();
        let id = StreamId::new("s-1").unwrap();
        assert_eq!(store.load(&id).await.unwrap(), None);
        store.save(snapshot(5)).await.unwrap();
        store.save(snapshot(3)).await.unwrap();
        assert_eq!(store.load(&id).await.unwrap(), Some(snapshot(5)));
        store.save(snapshot(8)).await.unwrap();
        assert_eq!(store.load(&id).await.unwrap(), Some(snapshot(8)));
        let other = StreamId::new("s-2").unwrap();
        assert_eq!(store.load(&other).await.unwrap(), None);
    }
}

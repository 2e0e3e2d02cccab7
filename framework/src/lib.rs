//! # Strata
//!
//! A CQRS / event-sourcing framework: commands append events to an event
//! store; a relay carries them in order into NATS JetStream; projectors
//! build views; query services serve them through a cache.
//!
//! # Layout
//!
//! - [`envelope`]: the wire format: [`EventEnvelope`], [`NewEvent`],
//!   [`Metadata`], [`StreamId`], [`Position`].
//! - [`store`]: the [`EventStore`] trait with its request and outcome types;
//!   the append rules every implementation shares.
//! - [`memory`]: [`InMemoryEventStore`], the embedded default.
//! - [`codec`]: typed events ([`DomainEvent`]) to and from envelopes, with
//!   [`Upcasters`] for old schema versions.
//! - [`aggregate`]: [`Aggregate`], the pure decider (`decide`, `evolve`),
//!   and snapshots.
//! - [`command`]: [`CommandHandler`]: load → decide → append, with
//!   per-stream lanes, conflict retries, idempotent command ids, snapshots.
//! - [`harness`]: [`AggregateTest`], given / when / then for aggregates.
//! - [`bus`]: [`EventBus`] with [`InProcessBus`]; `nats` (feature `nats`):
//!   the JetStream [`Relay`] and [`JetStreamBus`].
//! - [`view`]: keyed-document views, checkpoints and dead letters
//!   ([`ViewStore`], [`InMemoryViewStore`], `PgViewStore`).
//! - [`projection`]: [`Projection`] (pure) and the [`Projector`] runtime.
//! - [`changes`]: [`ChangeFeed`], announcements of changed documents.
//! - [`query`]: [`ViewReader`], cached reads with read-your-writes.
//! - [`process`]: [`ProcessManager`] and its runner.
//! - [`rebuild`]: online projection rebuilds into a new view version.
//! - `postgres` (feature `postgres`, on by default): [`PgEventStore`], with
//!   gap-safe global order and group commit.
//! - [`follow`]: [`Follower`], the catch-up-then-wait loop over the global
//!   order that relays, rebuilds and readers share.
//! - `testing` (feature `testing`): fresh test databases and the
//!   conformance suites of event stores, view stores and event buses.
//!
//! The core ([`envelope`], [`store`], [`memory`], [`follow`]) depends on no
//! infrastructure crate; Postgres lives behind its own module and feature.
//! CI builds the crate without the `postgres`, `nats` and `admin` features,
//! and with each alone (`just check-features`).
//!
//! # Quick start
//!
//! ```
//! use strata::{AppendRequest, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, StreamId};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = InMemoryEventStore::new();
//! let outcome = store
//!     .append(AppendRequest::new(
//!         StreamId::new("order-1").unwrap(),
//!         "order",
//!         ExpectedVersion::NoStream,
//!         vec![NewEvent::new("OrderPlaced", serde_json::json!({ "total": 42 }))],
//!     ))
//!     .await
//!     .unwrap();
//! assert_eq!(outcome.position.0, 1);
//! # });
//! ```

#[cfg(feature = "admin")]
pub mod admin;
pub mod aggregate;
pub mod bus;
pub mod changes;
pub mod codec;
pub mod command;
pub mod envelope;
pub mod error;
#[doc(hidden)]
pub mod event_set;
pub mod follow;
pub mod harness;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
mod pg_view;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;
pub mod projection;
pub mod query;
pub mod rebuild;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod view;

pub use aggregate::{Aggregate, InMemorySnapshotStore, Snapshot, SnapshotPolicy, SnapshotStore};
pub use bus::{BusError, Delivery, EventBus, InProcessBus, Subscription};
pub use changes::{ChangeFeed, ChangeNotice, ViewChange};
pub use codec::{DecodeError, DecodeErrorKind, DomainEvent, Upcasters};
pub use command::{
    client_command_id, derived_event_id, CommandContext, CommandError, CommandHandler,
    CommandOutcome, CommandStats, RetryPolicy,
};
pub use envelope::{EventEnvelope, Metadata, NewEvent, Position, StreamId, MAX_JSON_DEPTH};
pub use error::{BoxError, InputError, StoreError};
pub use event_set::{decode_event, EventSet, Recorded};
pub use follow::Follower;
pub use harness::{AggregateTest, EncodedEvent, Then};
pub use memory::InMemoryEventStore;
#[cfg(feature = "nats")]
pub use nats::{JetStreamBus, Relay, RelayStatus, StreamConfig};
#[cfg(feature = "postgres")]
pub use pg_view::{view_table, PgViewStore};
#[cfg(feature = "postgres")]
pub use postgres::{PgEventStore, PgSnapshotStore, PgStoreConfig, StoreStats};
pub use process::{
    caused_command_id, process_test, CommandSender, ProcessManager, ProcessManagerRunner, SendError,
};
pub use projection::{
    FailurePolicy, Projection, ProjectionError, ProjectionTest, Projector, ProjectorConfig,
    RunState, SubscriberStatus,
};
pub use query::{CacheStats, QueryError, ReaderConfig, ViewReader};
pub use rebuild::{rebuild, RebuildError, RebuildOptions, RebuildProgress, RebuildReport};
pub use store::{
    AppendOutcome, AppendRequest, EventFilter, EventStore, ExpectedVersion, StoreLimits,
    StreamEvent,
};
pub use tokio_util::sync::CancellationToken;
pub use view::{
    ActiveView, Checkpoint, DeadLetter, DocChange, InMemoryViewStore, StoredDoc, SubscriberState,
    ViewError, ViewId, ViewPage, ViewRead, ViewStore,
};

/// Re-exported so users need not pin their own versions.
#[cfg(feature = "postgres")]
pub use sqlx::PgPool;

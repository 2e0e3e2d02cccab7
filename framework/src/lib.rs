//! # Strata
//!
//! A CQRS / event-sourcing framework: commands append events to an event
//! store; a relay carries them in order into NATS JetStream; projectors
//! build views; query services serve them through a cache.
//!
//! # Layout
//!
//! The folders follow an event along its path, from the command that makes
//! it to the query that reads it:
//!
//! ```text
//!  write/             store/            propagation/             views/
//!  CommandHandler ──► EventStore ──► Relay ──► EventBus ──► Projector ──► ViewStore ──► ViewReader
//!       ▲                                         │             └── ChangeFeed ──────────────┘
//!       └──────────── commands ◄── process ◄──────┘             (propagation/)
//! ```
//!
//! - `envelope`, `codec`, `error` (at the top): the wire format every
//!   layer shares: [`EventEnvelope`], [`NewEvent`], [`Metadata`],
//!   [`StreamId`], [`Position`]; typed events ([`DomainEvent`]) to and from
//!   envelopes, with [`Upcasters`] for old schema versions; the errors;
//!   [`EventSet`] and [`Recorded`] (`event_set`), the typed events the read
//!   side follows, decoded once.
//! - `write/`: [`Aggregate`], the pure decider, and its snapshots;
//!   [`CommandHandler`]: load → decide → append, with per-stream lanes,
//!   conflict retries, idempotent command ids, snapshots; [`AggregateTest`],
//!   given / when / then for aggregates.
//! - `store/`: the single source of truth. The [`EventStore`] trait with
//!   its request and outcome types and the append rules every
//!   implementation shares; [`InMemoryEventStore`], the embedded default;
//!   [`Follower`], the catch-up-then-wait loop over the global order that
//!   the relay, rebuilds and readers share; `store/postgres/` (feature
//!   `postgres`, on by default): [`PgEventStore`], with gap-safe global
//!   order and group commit.
//! - `propagation/`: the relay and the buses carry events out of the store:
//!   `propagation/nats` (feature `nats`): the JetStream [`Relay`] (stream
//!   sequence = store position) and [`JetStreamBus`]; [`EventBus`] with
//!   [`InProcessBus`] and the gap check; the [`ChangeFeed`] trait, which
//!   announces the documents a projector changed ([`InProcessChangeFeed`],
//!   `NatsChangeFeed`, any of them behind [`AnyChangeFeed`]).
//! - `views/`: [`Projection`] (pure) and the [`Projector`] runtime;
//!   keyed-document views, checkpoints, dead letters, leases and versions
//!   (one trait per concern: [`Leases`], [`Checkpoints`], [`Documents`],
//!   [`Versions`]; [`ViewStore`], all four; [`InMemoryViewStore`],
//!   `PgViewStore`); [`ViewReader`],
//!   cached reads with read-your-writes; online rebuilds ([`rebuild()`]).
//! - `process.rs`: [`ProcessManager`] and its runner: events in, commands
//!   out, back to the write side.
//! - `admin` (feature `admin`): the admin CLI building blocks.
//! - `testing` (feature `testing`): fresh test databases and the
//!   conformance suites of event stores, view stores and event buses.
//!
//! Postgres and NATS code sits in modules named after them
//! (`store/postgres/`, `views/postgres.rs`, `propagation/nats`) behind the
//! features of the same names; the traits, the in-memory implementations
//! and the pure pieces depend on no infrastructure crate. CI builds the
//! crate without the `postgres`, `nats` and `admin` features, and with
//! each alone (`just check-features`).
//!
//! # Using it
//!
//! The modules are private: everything is re-exported here, at the top,
//! one flat set of names (`strata::CommandHandler`, `strata::PgViewStore`,
//! ...), with ready aliases for the common stacks ([`PgCommandHandler`],
//! [`PgProjector`], [`MemoryViewReader`], ...). The traits whose methods
//! you call come together in [`prelude`]: `use strata::prelude::*;`.
//! Five namespaces stay, for what belongs to one backend or one use:
//! [`postgres`] and [`nats`] (connection helpers, migrations, message
//! headers), `admin` (the admin CLI, feature `admin`), `auth` (tokens,
//! feature `auth`) and `testing` (feature `testing`).
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

mod access;
#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "auth")]
pub mod auth;
mod codec;
mod envelope;
mod error;
mod event_set;
mod process;
mod propagation;
mod store;
mod supervise;
#[cfg(feature = "testing")]
pub mod testing;
mod views;
mod write;

/// NATS: connecting (with retries), the JetStream stream's settings, the
/// message headers the relay writes; `async_nats` itself, whose types
/// appear in these signatures.
#[cfg(feature = "nats")]
pub mod nats {
    pub use crate::propagation::nats::*;
    pub use async_nats;
}

/// PostgreSQL: migrations, connection settings, the store's pieces.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use crate::store::postgres::*;
    pub use crate::views::postgres::{view_table, PgViewStore};
    pub use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
    pub use sqlx::PgPool;
}

/// The traits whose methods you call on Strata's types, in one import:
/// `use strata::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, Authenticator, ChangeFeed, Checkpoints, CommandSender, Documents, DomainEvent,
        EventBus, EventSet, EventStore, Leases, ProcessManager, Projection, SnapshotStore,
        Subscription, Versions, ViewStore,
    };
}

pub use access::{
    Authenticator, Forbidden, OwnerField, Principal, PrincipalKind, ReadRule, Unauthenticated,
    ViewAccess,
};
#[cfg(feature = "auth")]
pub use auth::{AuthSetupError, DevIssuer, JwtConfig, JwtVerifier, KeySource};
pub use codec::{
    decode, decode_json, encode, DecodeError, DecodeErrorKind, DomainEvent, Upcasters,
};
pub use envelope::{
    validate_type_name, EventEnvelope, Metadata, NewEvent, Position, StreamId, MAX_JSON_DEPTH,
    MAX_STREAM_ID_LEN, MAX_TYPE_NAME_LEN,
};
pub use error::{BoxError, InputError, SharedCause, StoreError};
pub use event_set::{decode_event, EventSet, Recorded};
pub use process::{
    caused_command_id, process_test, CommandSender, ProcessManager, ProcessManagerRunner,
    SendCause, SendError,
};
pub use propagation::bus::{
    ack_batch, in_order, Ack, BusError, Delivery, EventBus, InProcessBus, InProcessSubscription,
    Subscription,
};
pub use propagation::changes::{
    AnyChangeFeed, ChangeFeed, ChangeNotice, ChangeSource, ChangeSubscription, InProcessChangeFeed,
    ViewChange, MAX_ANNOUNCED_DOCS_BYTES,
};
#[cfg(feature = "nats")]
pub use propagation::nats::{JetStreamBus, NatsChangeFeed, Relay, RelayStatus, StreamConfig};
pub use store::follow::Follower;
pub use store::memory::InMemoryEventStore;
#[cfg(feature = "postgres")]
pub use store::postgres::{PgEventStore, PgSnapshotStore, PgStoreConfig, StoreStats};
pub use store::{
    AppendOutcome, AppendRefused, AppendRequest, EventFilter, EventStore, ExpectedVersion,
    StoreLimits, StreamEvent,
};
pub use tokio_util::sync::CancellationToken;
pub use views::group::ProjectorGroup;
#[cfg(feature = "postgres")]
pub use views::postgres::{view_table, PgViewStore};
pub use views::projection::{
    FailurePolicy, Projection, ProjectionError, ProjectionTest, Projector, ProjectorConfig,
    RunState, SubscriberStatus,
};
pub use views::query::{CacheStats, QueryError, ReaderConfig, ViewReader, VERSION_TTL};
pub use views::rebuild::{rebuild, RebuildError, RebuildOptions, RebuildProgress, RebuildReport};
pub use views::store::{
    ActiveView, Checkpoint, Checkpoints, DeadLetter, DocChange, Documents, InMemoryViewStore,
    Lease, LeaseHandle, Leases, StoredDoc, SubscriberState, Versions, ViewCommit, ViewError,
    ViewId, ViewPage, ViewRead, ViewResult, ViewStore,
};
pub use write::aggregate::{
    Aggregate, BoxFuture, InMemorySnapshotStore, Snapshot, SnapshotPolicy, SnapshotStore,
};
pub use write::command::{
    client_command_id, derived_event_id, CommandContext, CommandError, CommandHandler,
    CommandOutcome, CommandStats, RetryPolicy,
};
pub use write::harness::{AggregateTest, EncodedEvent, Then};

/// Re-exported so users need not pin their own versions.
#[cfg(feature = "postgres")]
pub use sqlx::PgPool;

/// Ready names for the common stacks, so users never spell the generics.
///
/// A command handler of aggregate `A` over the in-memory store (embedded
/// mode, unit tests).
pub type MemoryCommandHandler<A> = CommandHandler<A, InMemoryEventStore>;
/// A command handler of aggregate `A` over the Postgres event store.
#[cfg(feature = "postgres")]
pub type PgCommandHandler<A> = CommandHandler<A, PgEventStore>;
/// A cached reader of views in memory (embedded mode).
pub type MemoryViewReader = ViewReader<InMemoryViewStore>;
/// A cached reader of views in Postgres.
#[cfg(feature = "postgres")]
pub type PgViewReader = ViewReader<PgViewStore>;
/// Projection `P` fed by JetStream into Postgres views: a projector process.
#[cfg(all(feature = "postgres", feature = "nats"))]
pub type PgProjector<P> = Projector<P, JetStreamBus, PgViewStore>;
/// Projectors fed by one JetStream subscription into Postgres views,
/// committed together: a projector process running several views.
#[cfg(all(feature = "postgres", feature = "nats"))]
pub type PgProjectorGroup = ProjectorGroup<JetStreamBus, PgViewStore>;
/// Projection `P` fed in process from the in-memory store into memory
/// views: the embedded mode.
pub type MemoryProjector<P> = Projector<P, InProcessBus<InMemoryEventStore>, InMemoryViewStore>;
/// Process manager `M` fed by JetStream, checkpointed in Postgres, sending
/// through `C`.
#[cfg(all(feature = "postgres", feature = "nats"))]
pub type PgProcessManagerRunner<M, C> = ProcessManagerRunner<M, JetStreamBus, PgViewStore, C>;

//! The PostgreSQL event store.
//!
//! # How appends work
//!
//! Every append in a process goes to a writer task (two by default, each
//! owning a dedicated connection). A writer takes whatever appends are
//! waiting (group commit) and writes them in one transaction, in one of two
//! ways (ADR 0006):
//!
//! - **One call** when every append names its expected version: the shared
//!   append rules ([`crate::store`]) decide each append assuming its stream
//!   is at the version the group's appends expect, and one autocommit call
//!   of `strata_append_catch_up` takes the append lock (`SELECT position
//!   FROM strata_head ... FOR UPDATE`), checks the assumption, inserts the
//!   events of the streams that are where assumed at the next positions,
//!   moves those streams and the head, and `NOTIFY`s followers. The appends
//!   of a stream found elsewhere are not written; the writer answers them
//!   as conflicts at the version the call found, with that stream's events
//!   after the assumed version, which the same call read
//!   ([`EventStore::append_or_missed`]). A stored event id (a
//!   retried request, caught by the unique constraint) fails the call and
//!   the writer falls back to:
//! - **The locked transaction**: `BEGIN` and the lock, one query for the
//!   streams' current versions and any stored ids, the shared rules decide
//!   (write, duplicate with the original outcome, or conflict), one
//!   statement writes, `COMMIT` releases the lock.
//!
//! Because positions are assigned under a lock that is held until commit, a
//! position becomes visible only after all lower positions are visible: a
//! reader that reads `position > p` in order never skips an event, and
//! positions are dense. See `docs/adr/0001-gap-safe-global-order.md`.
//!
//! # Layout
//!
//! - this file: [`PgEventStore`], its settings and counters, and the
//!   [`EventStore`] implementation that wires the parts together;
//! - `writer.rs`: the group-commit writer tasks, and `plan.rs`, how a
//!   group's appends are decided and laid out in columns;
//! - `reads.rs`: the queries that read events;
//! - `listener.rs`: the `NOTIFY` listener that keeps the head current for
//!   followers;
//! - `schema.rs`: [`migrate`] and [`check_migrated`];
//! - `errors.rs`: what a Postgres error means (data, unique violation,
//!   missing table);
//! - `snapshots.rs`: [`PgSnapshotStore`].

pub(crate) mod errors;
mod listener;
mod plan;
mod reads;
mod schema;
mod snapshots;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use uuid::Uuid;

use crate::envelope::{EventEnvelope, Position, StreamId};
use crate::error::{Result, StoreError};
use crate::store::{
    validate, wait_past, AppendOutcome, AppendRequest, EventFilter, EventStore, StoreLimits,
    StreamEvent, ValidAppend,
};

pub use schema::{check_migrated, migrate};
pub use snapshots::PgSnapshotStore;

use writer::Writer;

/// The channel followers `LISTEN` on; the payload is the new head position.
pub const NOTIFY_CHANNEL: &str = "strata_events";

/// A pooled connection idle at least this long is checked with a round
/// trip before it is handed out; one in use more recently is not.
const PING_IF_IDLE: Duration = Duration::from_secs(30);

/// The pool settings Strata's Postgres stores use (16 connections, 10 s
/// to wait for one): give them more connections or a longer wait as you
/// need, and connect them with [`connect_options`].
///
/// sqlx checks every connection with a round trip each time it leaves the
/// pool by default, which doubles the round trips of short statements;
/// here only a connection idle for 30 s is checked, and one that broke
/// while in use fails its statement (a backend error the callers retry)
/// and is dropped.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The store's pool on `url`.
async fn connect_pool(url: &str) -> Result<PgPool> {
    pool_options()
        .connect_with(connect_options(url)?)
        .await
        .map_err(StoreError::backend)
}

/// The connection settings of `url`, as written, but for one default: a
/// server on this machine (`localhost`, `127.0.0.0/8`, `::1`) is reached
/// without TLS unless the URL or the environment says anything about TLS
/// (any `ssl…` parameter, such as `sslmode`, `sslrootcert` or `sslcert`, or
/// a `PGSSL…` variable). sqlx's own default, `prefer`, encrypts wherever
/// the server offers TLS, loopback included, where it protects nothing and
/// costs both ends a share of every statement. Any other host keeps sqlx's
/// defaults.
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = url.parse().map_err(StoreError::backend)?;
    // Parameter names decoded as sqlx decodes them (`ssl%6Dode` is sslmode).
    let tls_named = url::Url::parse(url)
        .map(|u| {
            u.query_pairs()
                .any(|(key, _)| key.to_ascii_lowercase().starts_with("ssl"))
        })
        .unwrap_or(true);
    let tls_in_env = std::env::vars_os().any(|(key, _)| {
        key.to_str()
            .is_some_and(|k| k.to_ascii_uppercase().starts_with("PGSSL"))
    });
    if tls_named || tls_in_env || !is_loopback(options.get_host()) {
        return Ok(options);
    }
    Ok(options.ssl_mode(PgSslMode::Disable))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Settings of the Postgres store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PgStoreConfig {
    /// Limits on one append.
    pub limits: StoreLimits,
    /// Most events the writer puts in one group-commit transaction (default 4,000).
    pub max_batch_events: usize,
    /// Writer tasks, each with its own connection (default 2). They take
    /// turns at the append lock; while the first holds it, a second one
    /// gathers the appends that arrive, and sends a large group (16 events
    /// or more, as large as the one ahead) at once, so Postgres parses its
    /// payloads while it writes the other's; a smaller group waits until
    /// the one ahead is answered.
    pub writers: usize,
    /// How long an append waits for the append lock before failing (default 10 s).
    pub lock_timeout: Duration,
    /// A lock wait longer than this logs the sessions holding it (default 1 s).
    pub slow_lock_warning: Duration,
    /// Safety-net poll of the head for followers, besides LISTEN/NOTIFY (default 1 s).
    pub poll_interval: Duration,
}

impl Default for PgStoreConfig {
    fn default() -> Self {
        PgStoreConfig {
            limits: StoreLimits::default(),
            max_batch_events: 4_000,
            writers: 2,
            lock_timeout: Duration::from_secs(10),
            slow_lock_warning: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl PgStoreConfig {
    /// Sets the limits on one append.
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the group-commit cap.
    pub fn max_batch_events(mut self, n: usize) -> Self {
        self.max_batch_events = n.max(1);
        self
    }

    /// Sets the number of writer tasks (at least 1).
    pub fn writers(mut self, n: usize) -> Self {
        self.writers = n.max(1);
        self
    }

    /// Sets the append lock timeout.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// Sets the slow-lock warning threshold.
    pub fn slow_lock_warning(mut self, d: Duration) -> Self {
        self.slow_lock_warning = d;
        self
    }

    /// Sets the followers' safety-net poll interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
}

/// Counters of the store's write path, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Appends that wrote events.
    pub appends: u64,
    /// Events written.
    pub events: u64,
    /// Group-commit transactions committed.
    pub batches: u64,
    /// Appends refused with a version conflict.
    pub conflicts: u64,
    /// Appends answered as duplicates of an earlier append.
    pub duplicates: u64,
    /// Lock waits longer than the slow-lock threshold.
    pub slow_lock_waits: u64,
    /// The longest wait for the append lock, in microseconds.
    pub max_lock_wait_us: u64,
    /// Groups that found some of their streams moved on (another process
    /// appended): those streams' appends were answered as conflicts and
    /// the others written, in the same call.
    pub moved_groups: u64,
    /// Groups the one-round-trip append handed to the locked transaction
    /// (an id was already stored).
    pub fallbacks: u64,
    /// Appends waiting for a writer at this moment (a gauge, not a count):
    /// a queue that keeps growing means appends arrive faster than the
    /// database takes them.
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    events: AtomicU64,
    batches: AtomicU64,
    conflicts: AtomicU64,
    duplicates: AtomicU64,
    slow_lock_waits: AtomicU64,
    max_lock_wait_us: AtomicU64,
    moved_groups: AtomicU64,
    fallbacks: AtomicU64,
}

struct Shared {
    head: watch::Sender<Position>,
    counters: Counters,
    listener_started: AtomicBool,
    /// The listener is LISTENing and has polled since: the head watch is
    /// current, so waiters need not ask the database.
    listening: AtomicBool,
    /// Events in the groups writers have sent and not yet seen answered.
    in_flight: AtomicUsize,
    /// Woken whenever a writer's group is answered.
    landed: Notify,
}

impl Shared {
    fn advance_head(&self, to: Position) {
        self.head.send_if_modified(|h| {
            if to > *h {
                *h = to;
                true
            } else {
                false
            }
        });
    }
}

struct Job {
    append: ValidAppend,
    /// The answer, and for a conflict the events the append missed, when
    /// the group's call read them.
    reply: oneshot::Sender<(Result<AppendOutcome>, Vec<StreamEvent>)>,
    /// When the append was queued: its wait for the append lock, one
    /// `lock_timeout` in all, counts from here.
    queued: Instant,
}

struct PgInner {
    pool: PgPool,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    config: PgStoreConfig,
}

/// The PostgreSQL event store. Cheap to clone.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<PgInner>,
}

impl PgEventStore {
    /// Connects to `url`, applies migrations, and starts the store. The
    /// role in `url` must be allowed to change the schema; a role that is
    /// not uses [`connect_migrated`](Self::connect_migrated).
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = connect_pool(url).await?;
        migrate(&pool).await.map_err(StoreError::backend)?;
        Ok(Self::new(pool))
    }

    /// Connects to `url` and starts the store without applying migrations:
    /// checks that they have been applied ([`check_migrated`]) and fails if
    /// not. For a database role that may not change the schema; the
    /// schema's owner migrates beforehand.
    pub async fn connect_migrated(url: &str) -> Result<Self> {
        let pool = connect_pool(url).await?;
        check_migrated(&pool).await?;
        Ok(Self::new(pool))
    }

    /// A store over an existing pool (migrations must have been applied).
    /// Must be called inside a Tokio runtime: it starts the writer task.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, PgStoreConfig::default())
    }

    /// A store with explicit settings.
    pub fn with_config(pool: PgPool, config: PgStoreConfig) -> Self {
        let (tx, rx) = mpsc::channel(16_384);
        let shared = Arc::new(Shared {
            head: watch::Sender::new(Position::START),
            counters: Counters::default(),
            listener_started: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            landed: Notify::new(),
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..config.writers {
            let writer = Writer::new(pool.clone(), Arc::clone(&shared), config.clone());
            tokio::spawn(writer.run(Arc::clone(&rx)));
        }
        PgEventStore {
            inner: Arc::new(PgInner {
                pool,
                jobs: tx,
                shared,
                config,
            }),
        }
    }

    /// The connection pool (for projections and admin queries).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A snapshot of the write-path counters.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.shared.counters;
        StoreStats {
            appends: c.appends.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            slow_lock_waits: c.slow_lock_waits.load(Ordering::Relaxed),
            max_lock_wait_us: c.max_lock_wait_us.load(Ordering::Relaxed),
            moved_groups: c.moved_groups.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            queued: (self.inner.jobs.max_capacity() - self.inner.jobs.capacity()) as u64,
        }
    }
}

impl PgEventStore {
    /// Queues `request` for a writer and waits for its answer.
    async fn write(&self, request: AppendRequest) -> (Result<AppendOutcome>, Vec<StreamEvent>) {
        let append = match validate(request, &self.inner.config.limits) {
            Ok(a) => a,
            Err(e) => return (Err(e), Vec::new()),
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            append,
            reply,
            queued: Instant::now(),
        };
        if self.inner.jobs.send(job).await.is_err() {
            let e = StoreError::backend("the store's writer task has stopped");
            return (Err(e), Vec::new());
        }
        rx.await.unwrap_or_else(|_| {
            let e = StoreError::backend("the store's writer task dropped the append");
            (Err(e), Vec::new())
        })
    }
}

impl EventStore for PgEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        self.write(request).await.0
    }

    /// A conflict comes with the stream's events after the expected
    /// version (up to 64), read by the same call under the append lock
    /// (`strata_append_catch_up`).
    async fn append_or_missed(
        &self,
        request: AppendRequest,
    ) -> std::result::Result<AppendOutcome, crate::store::AppendRefused> {
        let (result, missed) = self.write(request).await;
        result.map_err(|error| crate::store::AppendRefused { error, missed })
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        reads::read_stream(&self.inner.pool, stream_id, from_version, limit).await
    }

    async fn read_stream_raw(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        reads::read_stream_raw(&self.inner.pool, stream_id, from_version, limit).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<EventEnvelope>> {
        reads::read_all(&self.inner.pool, after, limit, filter).await
    }

    async fn head(&self) -> Result<Position> {
        let head = reads::head(&self.inner.pool).await?;
        self.inner.shared.advance_head(head);
        Ok(head)
    }

    async fn wait_for_head(&self, after: Position, max_wait: Duration) -> Result<Position> {
        self.ensure_listener();
        let current = self.inner.shared.listening.load(Ordering::Acquire);
        if !current && *self.inner.shared.head.borrow() <= after {
            // The watch may lag the database (the listener is starting or
            // reconnecting).
            let head = self.head().await?;
            if head > after {
                return Ok(head);
            }
        }
        Ok(wait_past(&self.inner.shared.head, after, max_wait).await)
    }

    async fn events_by_id(&self, ids: &[Uuid]) -> Result<Vec<EventEnvelope>> {
        reads::events_by_id(&self.inner.pool, ids).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64> {
        reads::stream_version(&self.inner.pool, stream_id).await
    }
}

#[cfg(test)]
mod connect_tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        connect_options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn loopback_servers_go_without_tls_unless_asked() {
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("PGSSL")) {
            return; // the environment decides; nothing of ours to check
        }
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@127.0.0.2/db?application_name=x",
        ] {
            assert!(matches!(mode(url), PgSslMode::Disable), "{url}");
        }
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@localhost/db?application_name=x&sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode("postgres://u@db.internal/db"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://u@10.0.0.7/db"),
            PgSslMode::Prefer
        ));
    }
}

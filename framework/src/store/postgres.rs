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
//!   is at that version, and one autocommit call of `strata_append` takes
//!   the append lock (`SELECT position FROM strata_head ... FOR UPDATE`),
//!   checks the assumption, inserts the events at the next positions, moves
//!   the streams and the head, and `NOTIFY`s followers. If a stream was
//!   elsewhere it writes nothing, and so does a stored event id (a retried
//!   request, caught by the unique constraint); either way the writer falls
//!   back to:
//! - **The locked transaction**: `BEGIN` and the lock, one query for the
//!   streams' current versions and any stored ids, the shared rules decide
//!   (write, duplicate with the original outcome, or conflict), one
//!   statement writes, `COMMIT` releases the lock.
//!
//! Because positions are assigned under a lock that is held until commit, a
//! position becomes visible only after all lower positions are visible: a
//! reader that reads `position > p` in order never skips an event, and
//! positions are dense. See `docs/adr/0001-gap-safe-global-order.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use uuid::Uuid;

use crate::envelope::{EventEnvelope, Metadata, Position, StreamId};
use crate::error::{InputError, Result, StoreError};
use crate::store::{
    decide, validate, AppendOutcome, AppendRequest, Decision, EventFilter, EventStore,
    ExpectedVersion, StoreLimits, StoredId, StreamEvent, ValidAppend,
};

/// Binds a group's event columns as parameters `$1` to `$9`, the order both
/// write paths use.
macro_rules! bind_events {
    ($query:expr, $c:expr) => {
        $query
            .bind(&$c.event_ids)
            .bind(&$c.stream_ids)
            .bind(&$c.stream_types)
            .bind(&$c.versions)
            .bind(&$c.event_types)
            .bind(&$c.schema_versions)
            .bind(&$c.payloads)
            .bind(&$c.metadata)
            .bind(&$c.recorded_at)
    };
}

/// How long past a group's lock deadline the writer waits for Postgres's own
/// `lock_timeout` before cancelling the statement itself.
const CANCEL_GRACE: Duration = Duration::from_millis(250);

/// The channel followers `LISTEN` on; the payload is the new head position.
pub const NOTIFY_CHANNEL: &str = "strata_events";

/// The schema in `migrations/`, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies the schema in `migrations/` (idempotent). Needs a role that may
/// change the schema (its owner).
///
/// Refuses, changing nothing, when the schema was migrated in one schema
/// but this connection would create tables in another (the first schema
/// on its `search_path`): the migrator's `CREATE TABLE IF NOT EXISTS`
/// would then build a second, empty event store there, which every later
/// query on that path would read. A service role whose path starts with
/// the view schema (see `migrations/roles.sql`) meets exactly this.
pub async fn migrate(pool: &PgPool) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    let (target, migrated): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT current_schema()::text, \
                (SELECT n.nspname::text FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = to_regclass('_sqlx_migrations'))",
    )
    .fetch_one(pool)
    .await?;
    if let (Some(target), Some(migrated)) = (target, migrated) {
        if target != migrated {
            return Err(sqlx::Error::Configuration(
                format!(
                    "the schema was migrated in schema {migrated:?}, but this role would \
                     create tables in {target:?} (the first schema on its search_path); \
                     apply migrations as the schema's owner"
                )
                .into(),
            )
            .into());
        }
    }
    MIGRATOR.run(pool).await
}

/// Checks, changing nothing, that the database `pool` reaches has every
/// migration of `migrations/` applied, with the checksums this build knows,
/// and none that this build does not know (the same conditions as
/// [`migrate`], which refuses a database a newer build migrated).
///
/// This is what a process whose database role may not run DDL does instead
/// of [`migrate`] (see `docs/deployment-security.md`): the schema's owner
/// migrates, the services only check. Needs `SELECT` on `_sqlx_migrations`.
pub async fn check_migrated(pool: &PgPool) -> Result<()> {
    let not_ready = |why: String| {
        StoreError::backend(format!(
            "the database schema is not up to date: {why}; apply the migrations as the \
             schema's owner first (`ecommerce migrate`)"
        ))
    };
    let applied: Vec<(i64, Vec<u8>, bool)> =
        match sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => {
                return Err(not_ready("no migration has been applied".into()))
            }
            Err(e) => return Err(StoreError::backend(e)),
        };
    let applied: HashMap<i64, (Vec<u8>, bool)> = applied
        .into_iter()
        .map(|(v, checksum, ok)| (v, (checksum, ok)))
        .collect();
    let known: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    for m in &known {
        match applied.get(&m.version) {
            None => {
                return Err(not_ready(format!(
                    "migration {} ({}) is not applied",
                    m.version, m.description
                )))
            }
            Some((_, false)) => {
                return Err(not_ready(format!(
                    "migration {} ({}) failed part way",
                    m.version, m.description
                )))
            }
            Some((checksum, true)) if checksum[..] != m.checksum[..] => {
                return Err(not_ready(format!(
                    "migration {} ({}) was applied from a different file",
                    m.version, m.description
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(v) = applied
        .keys()
        .find(|v| !known.iter().any(|m| m.version == **v))
    {
        return Err(StoreError::backend(format!(
            "the database has migration {v}, which this build does not know: a newer build \
             migrated it"
        )));
    }
    Ok(())
}

/// The store's pool on `url`.
async fn connect_pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(StoreError::backend)
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
    /// turns at the append lock; a second one gathers and sends its group
    /// while the first holds the lock, so Postgres parses one group's
    /// payloads while it writes another's.
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
    /// Groups the one-round-trip append handed to the locked transaction
    /// (a stream was not at the expected version, or an id was stored).
    pub fallbacks: u64,
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
    reply: oneshot::Sender<Result<AppendOutcome>>,
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
            let writer = Writer {
                pool: pool.clone(),
                shared: Arc::clone(&shared),
                config: config.clone(),
                conn: None,
                deadline: Instant::now(),
            };
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
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
        }
    }

    fn ensure_listener(&self) {
        if !self
            .inner
            .shared
            .listener_started
            .swap(true, Ordering::AcqRel)
        {
            tokio::spawn(run_listener(
                Arc::downgrade(&self.inner.shared),
                self.inner.pool.clone(),
                self.inner.config.poll_interval,
            ));
        }
    }
}

impl PgEventStore {
    /// Runs a stream query taking (stream id, from version, limit).
    async fn stream_rows(
        &self,
        sql: &str,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<PgRow>> {
        sqlx::query(sql)
            .bind(stream_id.as_str())
            .bind(from_version.min(i64::MAX as u64) as i64)
            .bind(clamp_limit(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::backend)
    }
}

const SELECT_ENVELOPE: &str = "SELECT position, event_id, stream_id, stream_type, stream_version, \
     event_type, schema_version, payload, metadata, recorded_at FROM strata_events";

fn decode_envelope(row: &PgRow) -> Result<EventEnvelope> {
    let position: i64 = row.try_get("position").map_err(StoreError::backend)?;
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
        position: position as u64,
        reason: e.to_string(),
    };
    let stream_id: String = row.try_get("stream_id").map_err(|e| corrupt(&e))?;
    let Json(metadata): Json<Metadata> = row.try_get("metadata").map_err(|e| corrupt(&e))?;
    let Json(payload): Json<serde_json::Value> = row.try_get("payload").map_err(|e| corrupt(&e))?;
    Ok(EventEnvelope {
        position: Position(position as u64),
        event_id: row.try_get("event_id").map_err(|e| corrupt(&e))?,
        stream_id: StreamId::new(stream_id).map_err(|e| corrupt(&e))?,
        stream_type: row.try_get("stream_type").map_err(|e| corrupt(&e))?,
        stream_version: row
            .try_get::<i64, _>("stream_version")
            .map_err(|e| corrupt(&e))? as u64,
        event_type: row.try_get("event_type").map_err(|e| corrupt(&e))?,
        schema_version: row
            .try_get::<i32, _>("schema_version")
            .map_err(|e| corrupt(&e))? as u32,
        payload,
        metadata,
        recorded_at: row
            .try_get::<DateTime<Utc>, _>("recorded_at")
            .map_err(|e| corrupt(&e))?,
    })
}

fn clamp_limit(limit: usize) -> i64 {
    limit.min(i64::MAX as usize) as i64
}

impl EventStore for PgEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        let append = validate(request, &self.inner.config.limits)?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .jobs
            .send(Job {
                append,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| StoreError::backend("the store's writer task has stopped"))?;
        rx.await
            .map_err(|_| StoreError::backend("the store's writer task dropped the append"))?
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>> {
        let sql = format!(
            "{SELECT_ENVELOPE} WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        );
        let rows = self
            .stream_rows(&sql, stream_id, from_version, limit)
            .await?;
        rows.iter().map(decode_envelope).collect()
    }

    async fn read_stream_raw(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<StreamEvent>> {
        let sql = "SELECT event_id, stream_version, position, event_type, schema_version, \
                   payload::text FROM strata_events WHERE stream_id = $1 AND stream_version >= $2 \
                   ORDER BY stream_version LIMIT $3";
        let rows = self
            .stream_rows(sql, stream_id, from_version, limit)
            .await?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.try_get(2).map_err(StoreError::backend)?;
                let corrupt = |e: sqlx::Error| StoreError::Corrupt {
                    position: position as u64,
                    reason: e.to_string(),
                };
                Ok(StreamEvent {
                    event_id: row.try_get(0).map_err(corrupt)?,
                    stream_version: row.try_get::<i64, _>(1).map_err(corrupt)? as u64,
                    position: Position(position as u64),
                    event_type: row.try_get(3).map_err(corrupt)?,
                    schema_version: row.try_get::<i32, _>(4).map_err(corrupt)? as u32,
                    payload: row.try_get(5).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<EventEnvelope>> {
        let sql = format!(
            "{SELECT_ENVELOPE} WHERE position > $1 \
             AND (cardinality($2::text[]) = 0 OR stream_type = ANY($2)) \
             AND (cardinality($3::text[]) = 0 OR event_type = ANY($3)) \
             ORDER BY position LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(after.0 as i64)
            .bind(&filter.stream_types)
            .bind(&filter.event_types)
            .bind(clamp_limit(limit))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter().map(decode_envelope).collect()
    }

    async fn head(&self) -> Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT position FROM strata_head WHERE id = 1")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(StoreError::backend)?;
        let head = Position(head as u64);
        self.inner.shared.advance_head(head);
        Ok(head)
    }

    async fn wait_for_head(&self, after: Position, max_wait: Duration) -> Result<Position> {
        self.ensure_listener();
        let mut rx = self.inner.shared.head.subscribe();
        let current = self.inner.shared.listening.load(Ordering::Acquire);
        if !current && *rx.borrow_and_update() <= after {
            // The watch may lag the database (the listener is starting or
            // reconnecting).
            let head = self.head().await?;
            if head > after {
                return Ok(head);
            }
        }
        let waited = tokio::time::timeout(max_wait, rx.wait_for(|h| *h > after)).await;
        Ok(match waited {
            Ok(Ok(head)) => *head,
            _ => *self.inner.shared.head.borrow(),
        })
    }

    async fn events_by_id(&self, ids: &[Uuid]) -> Result<Vec<EventEnvelope>> {
        let sql = format!("{SELECT_ENVELOPE} WHERE event_id = ANY($1) ORDER BY position");
        let rows = sqlx::query(&sql)
            .bind(ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(StoreError::backend)?;
        rows.iter().map(decode_envelope).collect()
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM strata_streams WHERE stream_id = $1")
                .bind(stream_id.as_str())
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(StoreError::backend)?;
        Ok(v.unwrap_or(0) as u64)
    }
}

/// Follows `NOTIFY`s (and polls as a safety net) to keep the head watch
/// current for [`EventStore::wait_for_head`]. Ends when the store is dropped.
async fn run_listener(shared: Weak<Shared>, pool: PgPool, poll_interval: Duration) {
    let poll = |shared: &Shared, pool: PgPool| {
        let head = shared.head.clone();
        async move {
            if let Ok(h) =
                sqlx::query_scalar::<_, i64>("SELECT position FROM strata_head WHERE id = 1")
                    .fetch_one(&pool)
                    .await
            {
                head.send_if_modified(|cur| {
                    let h = Position(h as u64);
                    if h > *cur {
                        *cur = h;
                        true
                    } else {
                        false
                    }
                });
            }
        }
    };
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; followers fall back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "listener connection failed; followers fall back to polling");
                None
            }
        };
        loop {
            let Some(s) = shared.upgrade() else { return };
            poll(&s, pool.clone()).await;
            s.listening.store(listener.is_some(), Ordering::Release);
            drop(s);
            let Some(l) = listener.as_mut() else {
                tokio::time::sleep(poll_interval).await;
                break; // try to listen again
            };
            let deadline = tokio::time::sleep(poll_interval);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    n = l.try_recv() => match n {
                        Ok(Some(n)) => {
                            let Some(s) = shared.upgrade() else { return };
                            if let Ok(h) = n.payload().parse::<u64>() {
                                s.advance_head(Position(h));
                            }
                        }
                        // The connection dropped and was re-established:
                        // notifications may have been lost, so poll.
                        Ok(None) => {
                            if let Some(s) = shared.upgrade() {
                                s.listening.store(false, Ordering::Release);
                            }
                            break;
                        }
                        Err(_) => {
                            if let Some(s) = shared.upgrade() {
                                s.listening.store(false, Ordering::Release);
                            }
                            listener = None;
                            break;
                        }
                    },
                    _ = &mut deadline => break,
                }
            }
        }
    }
}

/// The group-commit writer: one per store, owning one connection.
struct Writer {
    pool: PgPool,
    shared: Arc<Shared>,
    config: PgStoreConfig,
    conn: Option<(PgConnection, i32)>,
    /// When the group being written has waited one `lock_timeout`, counted
    /// from its oldest append's arrival. Every statement that takes the
    /// append lock waits at most until then, so an append that queued
    /// behind busy writers, or whose group fell back to the locked
    /// transaction, still gets its answer within one `lock_timeout`.
    deadline: Instant,
}

/// Per-append results of a batch, or the error that failed the whole batch.
type BatchResult = std::result::Result<Vec<Result<AppendOutcome>>, sqlx::Error>;

impl Writer {
    /// Gathers a group and writes it. Writers share the queue: while one
    /// holds the append lock, the next gathers its group and has its
    /// arguments parsed, then waits for the lock.
    ///
    /// A writer with nothing ahead of it sends at once. One that has a
    /// group in flight ahead of it keeps gathering until its own group is
    /// as large as that one, or that one is answered, or the group cap is
    /// reached: it would wait for the lock anyway, and every append that
    /// joins the group shares its lock turn and its commit instead of
    /// taking one of its own.
    async fn run(mut self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
        let cap = self.config.max_batch_events;
        loop {
            let (batch, events) = {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                let mut events = first.append.request.events.len();
                let mut batch = vec![first];
                loop {
                    while events < cap {
                        match rx.try_recv() {
                            Ok(job) => {
                                events += job.append.request.events.len();
                                batch.push(job);
                            }
                            Err(_) => break,
                        }
                    }
                    let landed = self.shared.landed.notified();
                    tokio::pin!(landed);
                    landed.as_mut().enable();
                    let ahead = self.shared.in_flight.load(Ordering::Acquire);
                    if events >= cap || ahead == 0 || events >= ahead {
                        break;
                    }
                    tokio::select! {
                        job = rx.recv() => match job {
                            Some(job) => {
                                events += job.append.request.events.len();
                                batch.push(job);
                            }
                            None => break,
                        },
                        _ = &mut landed => {}
                    }
                }
                self.shared.in_flight.fetch_add(events, Ordering::AcqRel);
                (batch, events)
            };
            self.handle(batch).await;
            self.shared.in_flight.fetch_sub(events, Ordering::AcqRel);
            self.shared.landed.notify_waiters();
        }
    }

    async fn handle(&mut self, batch: Vec<Job>) {
        let oldest = batch.iter().map(|j| j.queued).min();
        self.deadline = oldest.unwrap_or_else(Instant::now) + self.config.lock_timeout;
        let results = self.write_isolating(&batch).await;
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }

    /// Writes a group so that one append's data cannot fail the others.
    ///
    /// A group's statement that fails on data (a value or constraint
    /// Postgres refuses, see [`is_data_error`]) writes nothing, so its
    /// appends can be written again: in two halves, in order, each halved
    /// again while it fails, until the culprit stands alone and gets the
    /// error. The others commit in their original order, each exactly once
    /// (a half decides afresh, so a duplicate in a later half is answered
    /// as one). Any other error (connection, lock timeout, server) fails
    /// the part of the group it hit.
    async fn write_isolating(&mut self, batch: &[Job]) -> Vec<Result<AppendOutcome>> {
        let mut results: Vec<Option<Result<AppendOutcome>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        // Ranges still to write; the last is next, so ranges run in order.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..batch.len());
        while let Some(range) = todo.pop() {
            let part = &batch[range.clone()];
            match self.write(part).await {
                Ok(written) => {
                    for (slot, r) in results[range].iter_mut().zip(written) {
                        *slot = Some(r);
                    }
                }
                Err(e) if part.len() > 1 && is_data_error(&e) => {
                    tracing::warn!(
                        error = %e,
                        appends = part.len(),
                        "the data of one append failed its group; writing the group in halves"
                    );
                    let mid = range.start + part.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Err(e) => {
                    let failed = self.batch_error(part, e);
                    for (slot, r) in results[range].iter_mut().zip(failed) {
                        *slot = Some(r);
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::backend("append was not written"))))
            .collect()
    }

    /// Maps an error that failed a whole batch to one error per append.
    fn batch_error(&mut self, batch: &[Job], e: sqlx::Error) -> Vec<Result<AppendOutcome>> {
        if let (Some(constraint), 1) = (violated(&e), batch.len()) {
            let request = &batch[0].append.request;
            match constraint {
                "strata_events_event_id_key" => {
                    return vec![Err(StoreError::EventIdReused {
                        event_id: request.events[0].event_id,
                    })]
                }
                "strata_events_stream_version_key" => {
                    return vec![Err(StoreError::Conflict {
                        stream_id: request.stream_id.clone(),
                        expected: request.expected,
                        actual: 0,
                    })]
                }
                // A duplicate position means something appended without
                // the lock: a broken invariant, reported as a backend error.
                _ => {}
            }
        }
        if batch.len() == 1 && is_data_error(&e) && !is_unique_violation(&e) {
            // This append's own data, alone in its statement: refused for
            // good, and the connection is fine.
            tracing::warn!(error = %e, stream = %batch[0].append.request.stream_id, "the event store refused an append's data");
            return vec![Err(InputError::RefusedByBackend {
                reason: e.to_string(),
            }
            .into())];
        }
        tracing::error!(error = %e, appends = batch.len(), "event store append failed");
        // The connection may be broken: start afresh next time.
        self.conn = None;
        let message = e.to_string();
        batch
            .iter()
            .map(|_| Err(StoreError::backend(message.clone())))
            .collect()
    }

    async fn connection(&mut self) -> std::result::Result<&mut (PgConnection, i32), sqlx::Error> {
        if self.conn.is_none() {
            let options: PgConnectOptions = (*self.pool.connect_options())
                .clone()
                .application_name("strata-writer")
                .log_statements(tracing::log::LevelFilter::Trace);
            let mut conn = PgConnection::connect_with(&options).await?;
            let timeout_ms = self.config.lock_timeout.as_millis().max(1).to_string();
            // Custom plans: a generic plan for `= ANY($1)` may scan the
            // whole table while holding the append lock.
            sqlx::query(
                "SELECT set_config('lock_timeout', $1, false), \
                        set_config('idle_in_transaction_session_timeout', $2, false), \
                        set_config('plan_cache_mode', 'force_custom_plan', false)",
            )
            .bind(&timeout_ms)
            .bind("60000")
            .execute(&mut conn)
            .await?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?;
            self.conn = Some((conn, pid));
        }
        Ok(self.conn.as_mut().expect("connection set above"))
    }

    /// Writes a group: in one round trip when every append names the
    /// version it expects (the usual case), else, or when that finds the
    /// streams moved or an id already stored, in the locked transaction.
    async fn write(&mut self, batch: &[Job]) -> BatchResult {
        let expectations_known = batch
            .iter()
            .all(|j| !matches!(j.append.request.expected, ExpectedVersion::Any));
        if expectations_known {
            match self.write_fast(batch).await {
                Ok(Some(results)) => return Ok(results),
                Ok(None) => {}
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e),
            }
            self.shared
                .counters
                .fallbacks
                .fetch_add(1, Ordering::Relaxed);
        }
        self.write_locked(batch).await
    }

    /// What is left of the group's one `lock_timeout`, as a `lock_timeout`
    /// setting in milliseconds (at least 1: 0 would mean "wait forever").
    fn lock_budget(&self) -> String {
        let left = self.deadline.saturating_duration_since(Instant::now());
        left.as_millis().max(1).to_string()
    }

    /// Runs `call`, a statement that takes the append lock, on the writer's
    /// connection (`pid`). If it waits longer than the slow-lock threshold,
    /// logs who holds the lock. If it is still running `CANCEL_GRACE` past
    /// the group's deadline, cancels it from another connection.
    ///
    /// The statement's own `lock_timeout` is set to the group's budget, but
    /// Postgres restarts that timer for each lock it waits for, and a writer
    /// queued behind another waiter waits twice: for the tuple lock the
    /// waiter ahead holds, then for the holder's transaction. The cancel
    /// bounds the total. Returns the statement's result and whether the
    /// cancel was sent (the caller then discards the connection: a cancel
    /// that lands late must not hit a later statement).
    async fn watch_lock<T>(
        shared: &Shared,
        pool: &PgPool,
        pid: i32,
        slow: Duration,
        deadline: Instant,
        call: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> (std::result::Result<T, sqlx::Error>, bool) {
        tokio::pin!(call);
        let slow_timer = tokio::time::sleep(slow);
        let cancel_timer = tokio::time::sleep_until((deadline + CANCEL_GRACE).into());
        tokio::pin!(slow_timer, cancel_timer);
        let (mut warned, mut cancelled) = (false, false);
        loop {
            tokio::select! {
                r = &mut call => return (r, cancelled),
                _ = &mut slow_timer, if !warned => {
                    warned = true;
                    shared.counters.slow_lock_waits.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(report_lock_holders(pool.clone(), pid));
                }
                _ = &mut cancel_timer, if !cancelled => {
                    cancelled = true;
                    if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
                        .bind(pid)
                        .execute(pool)
                        .await
                    {
                        tracing::warn!(error = %e, "could not cancel an append past its lock_timeout");
                    }
                }
            }
        }
    }

    /// The error of a group whose wait for the append lock was cut short
    /// by [`watch_lock`](Self::watch_lock)'s cancel.
    fn lock_timed_out(&self) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "canceling statement due to lock timeout: the append lock was not granted \
                 within lock_timeout ({:?}) of the append's arrival",
                self.config.lock_timeout
            ),
        ))
    }

    /// The one-round-trip append: decide assuming each stream is at the
    /// version its first append expects, then let `strata_append` take the
    /// lock, check the assumption and write, in one autocommit call.
    /// `Ok(None)` when the assumption was wrong (nothing written).
    async fn write_fast(
        &mut self,
        batch: &[Job],
    ) -> std::result::Result<Option<Vec<Result<AppendOutcome>>>, sqlx::Error> {
        let mut assumed: HashMap<String, u64> = HashMap::new();
        for job in batch {
            let r = &job.append.request;
            let v = match r.expected {
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::NoStream | ExpectedVersion::Any => 0,
            };
            assumed.entry(r.stream_id.to_string()).or_insert(v);
        }
        let (check_ids, check_versions): (Vec<&str>, Vec<i64>) =
            assumed.iter().map(|(s, v)| (s.as_str(), *v as i64)).unzip();
        let plan = plan(batch, assumed.clone(), HashMap::new(), 0);
        let (s_ids, s_types, s_versions) = plan.stream_columns();
        let slow = self.config.slow_lock_warning;
        let pool = self.pool.clone();
        let shared = Arc::clone(&self.shared);
        let budget = self.lock_budget();
        let deadline = self.deadline;
        let (conn, pid) = self.connection().await?;
        let pid = *pid;
        let c = &plan.cols;
        // The lock wait is bounded by what is left of the group's budget
        // (`set_config` in a FROM subquery runs before the call, and is
        // local to the call's transaction).
        let call = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT strata_append($1, $2, $3, $4, $5, $6, $7::text[]::jsonb[], \
                    $8::text[]::jsonb[], $9, $10, $11, $12, $13, $14, $15) \
               FROM (SELECT set_config('lock_timeout', $16, true)) AS budget",
        );
        let call = bind_events!(call, c)
            .bind(&check_ids)
            .bind(&check_versions)
            .bind(&s_ids)
            .bind(&s_types)
            .bind(&s_versions)
            .bind(NOTIFY_CHANNEL)
            .bind(&budget)
            .fetch_one(&mut *conn);
        let started = Instant::now();
        let (base, cancelled) = Self::watch_lock(&shared, &pool, pid, slow, deadline, call).await;
        if cancelled {
            // A cancel that lands late must not hit a later statement.
            self.conn = None;
            if base.is_err() {
                return Err(self.lock_timed_out());
            }
        }
        let base = base?;
        shared
            .counters
            .max_lock_wait_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let Some(base) = base else { return Ok(None) };
        let base = base as u64;
        let results = plan
            .results
            .into_iter()
            .map(|r| {
                r.map(|mut o| {
                    o.first_position = Position(o.first_position.0 + base);
                    o.position = Position(o.position.0 + base);
                    o
                })
            })
            .collect();
        shared.committed(&plan.tally, base);
        Ok(Some(results))
    }

    /// The locked transaction: lock, read the streams' versions and any
    /// stored ids, decide, write, commit (four round trips).
    async fn write_locked(&mut self, batch: &[Job]) -> BatchResult {
        let slow = self.config.slow_lock_warning;
        let pool = self.pool.clone();
        let shared = Arc::clone(&self.shared);
        let budget = self.lock_budget();
        let deadline = self.deadline;
        let (conn, pid) = self.connection().await?;
        let pid = *pid;
        // 1. `BEGIN`, then the append lock, waiting at most what is left of
        //    the group's budget (a fallback after the one-call path does
        //    not start a second full wait). The lock is held until commit.
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        let lock = sqlx::query(
            "SELECT 1 FROM strata_head, (SELECT set_config('lock_timeout', $1, true)) AS budget \
              WHERE id = 1 FOR UPDATE OF strata_head",
        )
        .bind(&budget)
        .execute(&mut *tx);
        let (locked, cancelled) = Self::watch_lock(&shared, &pool, pid, slow, deadline, lock).await;
        if cancelled {
            // Past the deadline either way; a cancel that lands late would
            // hit the statements below. Dropping the connection rolls back.
            drop(tx);
            self.conn = None;
            return Err(self.lock_timed_out());
        }
        locked?;
        shared
            .counters
            .max_lock_wait_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);

        let stream_ids: Vec<&str> = batch
            .iter()
            .map(|j| j.append.request.stream_id.as_str())
            .collect();
        let event_ids: Vec<Uuid> = batch
            .iter()
            .flat_map(|j| j.append.request.events.iter().map(|e| e.event_id))
            .collect();
        // 2. The head, current versions and existing ids. Under the lock,
        //    this statement's snapshot sees every committed append.
        let rows = sqlx::query(
            "SELECT NULL::text AS stream_id, position AS version, NULL::uuid AS event_id, \
                    NULL::bigint AS position FROM strata_head WHERE id = 1 \
             UNION ALL \
             SELECT stream_id, version, NULL, NULL \
               FROM strata_streams WHERE stream_id = ANY($1) \
             UNION ALL \
             SELECT stream_id, stream_version, event_id, position \
               FROM strata_events WHERE event_id = ANY($2)",
        )
        .bind(&stream_ids)
        .bind(&event_ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut existing: HashMap<Uuid, StoredId> = HashMap::new();
        let mut head: Option<i64> = None;
        for row in &rows {
            let version: i64 = row.try_get(1)?;
            let Some(stream_id) = row.try_get::<Option<String>, _>(0)? else {
                head = Some(version);
                continue;
            };
            match row.try_get::<Option<Uuid>, _>(2)? {
                None => {
                    versions.insert(stream_id, version as u64);
                }
                Some(event_id) => {
                    let position: i64 = row.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
                    let Ok(stream_id) = StreamId::new(stream_id) else {
                        continue;
                    };
                    existing.insert(
                        event_id,
                        StoredId {
                            stream_id,
                            stream_version: version as u64,
                            position: Position(position as u64),
                        },
                    );
                }
            }
        }

        // 3. Decide each append in order, as if they ran one after another.
        let head = head.ok_or_else(|| sqlx::Error::RowNotFound)? as u64;
        let plan = plan(batch, versions, existing, head);

        // 4. One statement writes everything.
        if !plan.cols.positions.is_empty() {
            let (s_ids, s_types, s_versions) = plan.stream_columns();
            let c = &plan.cols;
            let next = head + c.positions.len() as u64;
            let insert = sqlx::query(
                "WITH new_events AS ( \
                   INSERT INTO strata_events (position, event_id, stream_id, stream_type, \
                     stream_version, event_type, schema_version, payload, metadata, recorded_at) \
                   SELECT p, e, s, st, v, et, sv, pl::jsonb, md::jsonb, COALESCE(ra, clock_timestamp()) \
                   FROM UNNEST($10::bigint[], $1::uuid[], $2::text[], $3::text[], $4::bigint[], \
                               $5::text[], $6::int[], $7::text[], $8::text[], $9::timestamptz[]) \
                     AS t(p, e, s, st, v, et, sv, pl, md, ra) \
                   RETURNING 1), \
                 streams AS ( \
                   INSERT INTO strata_streams (stream_id, stream_type, version) \
                   SELECT * FROM UNNEST($11::text[], $12::text[], $13::bigint[]) \
                   ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version \
                   RETURNING 1), \
                 head AS (UPDATE strata_head SET position = $14 WHERE id = 1 RETURNING 1) \
                 SELECT pg_notify($15, $14::text)",
            );
            bind_events!(insert, c)
                .bind(&c.positions)
                .bind(&s_ids)
                .bind(&s_types)
                .bind(&s_versions)
                .bind(next as i64)
                .bind(NOTIFY_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }

        // 5. Commit, which releases the lock.
        tx.commit().await?;
        shared.committed(&plan.tally, 0);
        Ok(plan.results)
    }
}

/// What a group's decisions add up to, counted once the group commits.
#[derive(Debug, Default)]
struct Tally {
    appends: u64,
    events: u64,
    conflicts: u64,
    duplicates: u64,
    /// The last position written, before adding the base.
    last: u64,
}

impl Shared {
    /// Counts a committed group and moves the head watch.
    fn committed(&self, t: &Tally, base: u64) {
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.appends.fetch_add(t.appends, Ordering::Relaxed);
        c.events.fetch_add(t.events, Ordering::Relaxed);
        c.conflicts.fetch_add(t.conflicts, Ordering::Relaxed);
        c.duplicates.fetch_add(t.duplicates, Ordering::Relaxed);
        if t.events > 0 {
            self.advance_head(Position(base + t.last));
        }
    }
}

/// A group's decisions and the columns to write.
struct Plan<'a> {
    cols: Columns<'a>,
    /// Written streams: id → (type, version after the group).
    streams: HashMap<&'a str, (&'a str, u64)>,
    results: Vec<Result<AppendOutcome>>,
    tally: Tally,
}

impl Plan<'_> {
    fn stream_columns(&self) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
        let mut ids = Vec::with_capacity(self.streams.len());
        let mut types = Vec::with_capacity(self.streams.len());
        let mut versions = Vec::with_capacity(self.streams.len());
        for (id, (ty, v)) in &self.streams {
            ids.push(*id);
            types.push(*ty);
            versions.push(*v as i64);
        }
        (ids, types, versions)
    }
}

/// Decides each append of a group in order, as if they ran one after
/// another from `versions` and `existing`; positions start after `head`.
fn plan<'a>(
    batch: &'a [Job],
    mut versions: HashMap<String, u64>,
    mut existing: HashMap<Uuid, StoredId>,
    head: u64,
) -> Plan<'a> {
    let mut cols = Columns::default();
    let mut streams: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut next = head;
    let mut results = Vec::with_capacity(batch.len());
    let mut tally = Tally::default();
    for job in batch {
        let request = &job.append.request;
        let current = versions
            .get(request.stream_id.as_str())
            .copied()
            .unwrap_or(0);
        let result = match decide(request, current, &existing) {
            Ok(Decision::Duplicate(outcome)) => {
                tally.duplicates += 1;
                Ok(outcome)
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict { .. }) {
                    tally.conflicts += 1;
                }
                Err(e)
            }
            Ok(Decision::Write { current }) => {
                let first_position = Position(next + 1);
                for (i, e) in request.events.iter().enumerate() {
                    next += 1;
                    let version = current + 1 + i as u64;
                    cols.positions.push(next as i64);
                    cols.event_ids.push(e.event_id);
                    cols.stream_ids.push(request.stream_id.as_str());
                    cols.stream_types.push(&request.stream_type);
                    cols.versions.push(version as i64);
                    cols.event_types.push(&e.event_type);
                    cols.schema_versions.push(e.schema_version as i32);
                    cols.payloads.push(&job.append.payloads[i]);
                    cols.metadata.push(&job.append.metadata[i]);
                    cols.recorded_at.push(e.recorded_at);
                    existing.insert(
                        e.event_id,
                        StoredId {
                            stream_id: request.stream_id.clone(),
                            stream_version: version,
                            position: Position(next),
                        },
                    );
                }
                let count = request.events.len() as u64;
                versions.insert(request.stream_id.to_string(), current + count);
                streams.insert(
                    request.stream_id.as_str(),
                    (request.stream_type.as_str(), current + count),
                );
                tally.appends += 1;
                tally.events += count;
                Ok(AppendOutcome {
                    stream_id: request.stream_id.clone(),
                    first_version: current + 1,
                    stream_version: current + count,
                    first_position,
                    position: Position(next),
                    duplicate: false,
                })
            }
        };
        results.push(result);
    }
    tally.last = next;
    Plan {
        cols,
        streams,
        results,
        tally,
    }
}

#[derive(Default)]
struct Columns<'a> {
    positions: Vec<i64>,
    event_ids: Vec<Uuid>,
    stream_ids: Vec<&'a str>,
    stream_types: Vec<&'a str>,
    versions: Vec<i64>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a str>,
    metadata: Vec<&'a str>,
    recorded_at: Vec<Option<DateTime<Utc>>>,
}

/// True when a statement failed on the data it was given: a value or a
/// constraint Postgres refuses (SQLSTATE classes 22 "data exception" and 23
/// "integrity constraint violation"), a backend limit (54), or a trigger
/// that raised (P0001). The statement wrote nothing and the connection is
/// fine; the same data fails again. Connection errors, lock timeouts (55P03)
/// and server trouble are not data errors.
fn is_data_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| {
            c.starts_with("22") || c.starts_with("23") || c.starts_with("54") || c == "P0001"
        })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// The unique constraint an error violated, if any.
fn violated(e: &sqlx::Error) -> Option<&str> {
    e.as_database_error()
        .filter(|d| d.is_unique_violation())
        .and_then(|d| d.constraint())
}

/// Logs the sessions that hold up the append lock: the failure mode of a
/// serialised append is a stuck transaction holding it.
///
/// Waiters queue behind each other: `pg_blocking_pids` of a waiting writer
/// names the waiter ahead of it, often another Strata writer. So this walks
/// the chain of blockers from `waiting_pid` and names the sessions at its
/// head, those that are not waiting for anyone themselves: the ones that
/// hold the lock.
async fn report_lock_holders(pool: PgPool, waiting_pid: i32) {
    let rows = sqlx::query(
        "WITH RECURSIVE chain(pid) AS ( \
             SELECT unnest(pg_blocking_pids($1)) \
           UNION \
             SELECT b.pid FROM chain c CROSS JOIN LATERAL unnest(pg_blocking_pids(c.pid)) AS b(pid) \
         ) \
         SELECT pid, usename::text, application_name, state, \
                EXTRACT(EPOCH FROM now() - xact_start)::float8 AS xact_seconds, \
                left(query, 200) AS query \
           FROM pg_stat_activity \
          WHERE pid IN (SELECT pid FROM chain) AND pid <> $1 \
            AND cardinality(pg_blocking_pids(pid)) = 0",
    )
    .bind(waiting_pid)
    .fetch_all(&pool)
    .await;
    match rows {
        Ok(rows) if rows.is_empty() => tracing::warn!(
            waiting_pid,
            "append lock is slow; its holder was gone (or still waiting itself) when looked up"
        ),
        Ok(rows) => {
            for r in rows {
                tracing::warn!(
                    holder_pid = r.try_get::<i32, _>("pid").unwrap_or_default(),
                    waiting_pid,
                    user = r.try_get::<Option<String>, _>("usename").ok().flatten().unwrap_or_default(),
                    application = r.try_get::<Option<String>, _>("application_name").ok().flatten().unwrap_or_default(),
                    state = r.try_get::<Option<String>, _>("state").ok().flatten().unwrap_or_default(),
                    transaction_seconds = r.try_get::<Option<f64>, _>("xact_seconds").ok().flatten().unwrap_or_default(),
                    query = r.try_get::<Option<String>, _>("query").ok().flatten().unwrap_or_default(),
                    "append lock held up by another session; appends wait until it ends or lock_timeout"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "append lock is slow; could not look up the holder"),
    }
}

/// Aggregate snapshots in the `strata_snapshots` table.
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
}

impl PgSnapshotStore {
    /// Snapshots in the given database (migrations applied).
    pub fn new(pool: PgPool) -> Self {
        PgSnapshotStore { pool }
    }
}

impl crate::SnapshotStore for PgSnapshotStore {
    fn load<'a>(
        &'a self,
        stream_id: &'a StreamId,
    ) -> crate::write::aggregate::BoxFuture<'a, Result<Option<crate::Snapshot>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT stream_type, version, position, schema_version, state \
                   FROM strata_snapshots WHERE stream_id = $1",
            )
            .bind(stream_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::backend)?;
            let Some(row) = row else { return Ok(None) };
            let Json(state): Json<serde_json::Value> =
                row.try_get("state").map_err(StoreError::backend)?;
            Ok(Some(crate::Snapshot {
                stream_id: stream_id.clone(),
                stream_type: row.try_get("stream_type").map_err(StoreError::backend)?,
                version: row
                    .try_get::<i64, _>("version")
                    .map_err(StoreError::backend)? as u64,
                position: Position(
                    row.try_get::<i64, _>("position")
                        .map_err(StoreError::backend)? as u64,
                ),
                schema_version: row
                    .try_get::<i32, _>("schema_version")
                    .map_err(StoreError::backend)? as u32,
                state,
            }))
        })
    }

    fn save(&self, s: crate::Snapshot) -> crate::write::aggregate::BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO strata_snapshots \
                   (stream_id, stream_type, version, position, schema_version, state) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (stream_id) DO UPDATE SET stream_type = EXCLUDED.stream_type, \
                   version = EXCLUDED.version, position = EXCLUDED.position, \
                   schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, \
                   taken_at = now() \
                 WHERE strata_snapshots.version < EXCLUDED.version \
                    OR strata_snapshots.schema_version <> EXCLUDED.schema_version",
            )
            .bind(s.stream_id.as_str())
            .bind(&s.stream_type)
            .bind(s.version as i64)
            .bind(s.position.0 as i64)
            .bind(s.schema_version as i32)
            .bind(Json(&s.state))
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
            Ok(())
        })
    }
}

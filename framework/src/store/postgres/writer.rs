//! The group-commit writer: tasks that take the waiting appends, write them
//! under the append lock in one round trip or the locked transaction, and
//! isolate an append whose data fails its group.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::errors::{is_data_error, is_unique_violation, violated};
use super::plan::{plan, Moved};
use super::{Job, PgStoreConfig, Shared, NOTIFY_CHANNEL};
use crate::envelope::{Position, StreamId};
use crate::error::{InputError, Result, StoreError};
use crate::store::{AppendOutcome, ExpectedVersion, StoredId, StreamEvent};

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

/// The group-commit writer: one per store, owning one connection.
pub(super) struct Writer {
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
    /// The events of moved streams that the group's call read (stream →
    /// events after the assumed version), sent with those appends'
    /// conflicts.
    missed: HashMap<String, Vec<StreamEvent>>,
}

/// Per-append results of a batch, or the error that failed the whole batch.
type BatchResult = std::result::Result<Vec<Result<AppendOutcome>>, sqlx::Error>;

/// The smallest group a writer sends while another writer's group is in
/// flight (see [`Writer::run`]). Measured on two cores (ADR 0006, issue
/// 16): with single-event appends from 8 tasks, a lone writer (which never
/// sends early) gave 1.7× the raw baseline and two sending early 1.3×;
/// with 100-event appends, two sending early gave 0.72× and a lone writer
/// 0.54×. With this bound, two writers gave 1.5× and 0.79×.
const OVERLAP_MIN_EVENTS: usize = 16;

impl Writer {
    /// A writer over its own connection to `pool`'s database (opened on
    /// first use).
    pub(super) fn new(pool: PgPool, shared: Arc<Shared>, config: PgStoreConfig) -> Self {
        Writer {
            pool,
            shared,
            config,
            conn: None,
            deadline: Instant::now(),
            missed: HashMap::new(),
        }
    }

    /// Gathers a group and writes it. Writers share the queue: while one
    /// holds the append lock, the next gathers its group and has its
    /// arguments parsed, then waits for the lock.
    ///
    /// A writer with nothing ahead of it sends at once. One that has a
    /// group in flight ahead of it keeps gathering until that one is
    /// answered, or the group cap is reached, or its own group is as large
    /// as that one and at least [`OVERLAP_MIN_EVENTS`]: it would wait for
    /// the lock anyway, and every append that joins the group shares its
    /// lock turn and its commit instead of taking one of its own. Only a
    /// large group is worth sending early (Postgres parses it while the
    /// one ahead holds the lock); a small one sent early only waits at the
    /// lock, where it makes a queue that other processes' appends join.
    pub(super) async fn run(mut self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>) {
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
                    if events >= cap
                        || ahead == 0
                        || (events >= ahead && events >= OVERLAP_MIN_EVENTS)
                    {
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
        self.missed.clear();
        let results = self.write_isolating(&batch).await;
        for (job, result) in batch.into_iter().zip(results) {
            let missed = match &result {
                Err(StoreError::Conflict { stream_id, .. }) => self
                    .missed
                    .get(stream_id.as_str())
                    .cloned()
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            let _ = job.reply.send((result, missed));
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
            // The session keeps Postgres's default plan caching: the
            // one-call path's statement is a function call, planned once
            // per session (its body fixes its own plans); the locked
            // transaction asks for custom plans itself.
            sqlx::query(
                "SELECT set_config('lock_timeout', $1, false), \
                        set_config('idle_in_transaction_session_timeout', $2, false)",
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
    /// version it expects (the usual case), else, or when that meets an id
    /// already stored, in the locked transaction.
    async fn write(&mut self, batch: &[Job]) -> BatchResult {
        let expectations_known = batch
            .iter()
            .all(|j| !matches!(j.append.request.expected, ExpectedVersion::Any));
        if expectations_known {
            // The call assumes each stream is where the group's appends
            // expect. It writes the appends of the streams that are, and
            // reports the others, which are answered as conflicts. Only
            // an id already stored (a retried request) takes the locked
            // transaction, which decides duplicates exactly and holds the
            // append lock for four round trips.
            match self.write_fast(batch).await {
                Ok(results) => return Ok(results),
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

    /// The group's turn at the append lock, taken before the writer's
    /// connection is borrowed for the statement.
    fn lock_turn(&self) -> LockTurn {
        // What is left of the group's one `lock_timeout`, as a
        // `lock_timeout` setting in milliseconds (at least 1: 0 would mean
        // "wait forever").
        let left = self.deadline.saturating_duration_since(Instant::now());
        LockTurn {
            shared: Arc::clone(&self.shared),
            pool: self.pool.clone(),
            slow: self.config.slow_lock_warning,
            deadline: self.deadline,
            budget: left.as_millis().max(1).to_string(),
        }
    }

    /// The error of a group whose wait for the append lock was cut short
    /// by [`LockTurn::watch`]'s cancel.
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
    /// highest version the group's appends to it expect (versions only
    /// grow, so the highest is the likeliest to be current), then let
    /// `strata_append_catch_up` take the lock, check the assumption and
    /// write, in one autocommit call. The appends of a stream found
    /// elsewhere are not written and are answered as conflicts at the
    /// version found; the others are written.
    async fn write_fast(&mut self, batch: &[Job]) -> BatchResult {
        let mut assumed: HashMap<String, u64> = HashMap::new();
        for job in batch {
            let r = &job.append.request;
            let v = match r.expected {
                ExpectedVersion::Exact(v) => v,
                ExpectedVersion::NoStream | ExpectedVersion::Any => 0,
            };
            let a = assumed.entry(r.stream_id.to_string()).or_insert(v);
            *a = (*a).max(v);
        }
        let (check_ids, check_versions): (Vec<&str>, Vec<i64>) =
            assumed.iter().map(|(s, v)| (s.as_str(), *v as i64)).unzip();
        let plan = plan(batch, assumed.clone(), HashMap::new(), 0);
        let (s_ids, s_types, s_versions) = plan.stream_columns();
        let turn = self.lock_turn();
        let (conn, pid) = self.connection().await?;
        let pid = *pid;
        let c = &plan.cols;
        // The lock wait is bounded by what is left of the group's budget
        // (the function sets it, local to the call's transaction, before
        // it takes the lock).
        let call = sqlx::query(
            "SELECT base, moved_ids, moved_versions, stored_ids, stored_streams, \
                    stored_versions, stored_positions, missed_streams, missed_ids, \
                    missed_versions, missed_positions, missed_types, missed_schemas, \
                    missed_payloads \
               FROM strata_append_catch_up($1, $2, $3, $4, $5, $6, $7::text[]::jsonb[], \
                    $8::text[]::jsonb[], $9, $10, $11, $12, $13, $14, $15, $16)",
        );
        let call = bind_events!(call, c)
            .bind(&check_ids)
            .bind(&check_versions)
            .bind(&s_ids)
            .bind(&s_types)
            .bind(&s_versions)
            .bind(NOTIFY_CHANNEL)
            .bind(&turn.budget)
            .fetch_one(&mut *conn);
        let started = Instant::now();
        let (answer, cancelled) = turn.watch(pid, call).await;
        if cancelled {
            // A cancel that lands late must not hit a later statement.
            self.conn = None;
            if answer.is_err() {
                return Err(self.lock_timed_out());
            }
        }
        let row = answer?;
        turn.waited(started);
        let base: i64 = row.try_get(0)?;
        let moved = moved_streams(&row)?;
        if !moved.versions.is_empty() {
            turn.shared
                .counters
                .moved_groups
                .fetch_add(1, Ordering::Relaxed);
            self.missed.extend(missed_events(&row)?);
        }
        let (results, tally) = plan.settle(batch, base as u64, &moved);
        turn.shared.committed(&tally, base as u64);
        Ok(results)
    }

    /// The locked transaction: lock, read the streams' versions and any
    /// stored ids, decide, write, commit (four round trips).
    async fn write_locked(&mut self, batch: &[Job]) -> BatchResult {
        let turn = self.lock_turn();
        let (conn, pid) = self.connection().await?;
        let pid = *pid;
        // 1. `BEGIN`, then the append lock, waiting at most what is left of
        //    the group's budget (a fallback after the one-call path does
        //    not start a second full wait). The lock is held until commit.
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        // Custom plans for the rest of the transaction: a generic plan for
        // `= ANY($1)` may scan the whole table while holding the lock.
        let lock = sqlx::query(
            "SELECT 1 FROM strata_head, \
                    (SELECT set_config('lock_timeout', $1, true), \
                            set_config('plan_cache_mode', 'force_custom_plan', true)) AS budget \
              WHERE id = 1 FOR UPDATE OF strata_head",
        )
        .bind(&turn.budget)
        .execute(&mut *tx);
        let (locked, cancelled) = turn.watch(pid, lock).await;
        if cancelled {
            // Past the deadline either way; a cancel that lands late would
            // hit the statements below. Dropping the connection rolls back.
            drop(tx);
            self.conn = None;
            return Err(self.lock_timed_out());
        }
        locked?;
        turn.waited(started);

        // 2. The head, current versions and existing ids. Under the lock,
        //    this statement's snapshot sees every committed append.
        let (versions, existing, head) = read_state(&mut tx, batch).await?;

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
        turn.shared.committed(&plan.tally, 0);
        Ok(plan.results)
    }
}

/// A group's turn at the append lock: what a statement that takes the
/// lock runs with, besides the writer's connection.
struct LockTurn {
    shared: Arc<Shared>,
    pool: PgPool,
    /// A wait longer than this logs who holds the lock.
    slow: Duration,
    /// The group's deadline (see [`Writer`]'s `deadline`).
    deadline: Instant,
    /// What is left of the group's `lock_timeout`, as the setting.
    budget: String,
}

impl LockTurn {
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
    async fn watch<T>(
        &self,
        pid: i32,
        call: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    ) -> (std::result::Result<T, sqlx::Error>, bool) {
        tokio::pin!(call);
        let slow_timer = tokio::time::sleep(self.slow);
        let cancel_timer = tokio::time::sleep_until((self.deadline + CANCEL_GRACE).into());
        tokio::pin!(slow_timer, cancel_timer);
        let (mut warned, mut cancelled) = (false, false);
        loop {
            tokio::select! {
                r = &mut call => return (r, cancelled),
                _ = &mut slow_timer, if !warned => {
                    warned = true;
                    self.shared.counters.slow_lock_waits.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(report_lock_holders(self.pool.clone(), pid));
                }
                _ = &mut cancel_timer, if !cancelled => {
                    cancelled = true;
                    if let Err(e) = sqlx::query("SELECT pg_cancel_backend($1)")
                        .bind(pid)
                        .execute(&self.pool)
                        .await
                    {
                        tracing::warn!(error = %e, "could not cancel an append past its lock_timeout");
                    }
                }
            }
        }
    }

    /// Records a lock wait that started at `started` and has ended.
    fn waited(&self, started: Instant) {
        self.shared
            .counters
            .max_lock_wait_us
            .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
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

/// Under the lock: the head (a row without a stream id), then the group's
/// streams' versions (`$1`, the stream ids) and its event ids already
/// stored (`$2`), as `(stream_id, version, event_id, position)`.
const HEAD_AND_STATE_SQL: &str =
    "SELECT NULL::text AS stream_id, position AS version, NULL::uuid AS event_id, \
            NULL::bigint AS position FROM strata_head WHERE id = 1 \
     UNION ALL \
     SELECT stream_id, version, NULL::uuid AS event_id, NULL::bigint AS position \
       FROM strata_streams WHERE stream_id = ANY($1) \
     UNION ALL \
     SELECT stream_id, stream_version, event_id, position \
       FROM strata_events WHERE event_id = ANY($2)";

/// The streams `strata_append_catch_up` found moved, from its answer's
/// columns 1 to 6.
fn moved_streams(row: &sqlx::postgres::PgRow) -> std::result::Result<Moved, sqlx::Error> {
    let ids: Vec<String> = row.try_get(1)?;
    let versions: Vec<i64> = row.try_get(2)?;
    let mut moved = Moved {
        versions: ids
            .into_iter()
            .zip(versions.into_iter().map(|v| v as u64))
            .collect(),
        ..Moved::default()
    };
    if moved.versions.is_empty() {
        return Ok(moved);
    }
    let event_ids: Vec<Uuid> = row.try_get(3)?;
    let streams: Vec<String> = row.try_get(4)?;
    let versions: Vec<i64> = row.try_get(5)?;
    let positions: Vec<i64> = row.try_get(6)?;
    for (((event_id, stream_id), version), position) in event_ids
        .into_iter()
        .zip(streams)
        .zip(versions)
        .zip(positions)
    {
        let Ok(stream_id) = StreamId::new(stream_id) else {
            continue;
        };
        moved.stored.insert(
            event_id,
            StoredId {
                stream_id,
                stream_version: version as u64,
                position: Position(position as u64),
            },
        );
    }
    Ok(moved)
}

/// The moved streams' events that `strata_append_catch_up` read (columns
/// 7 to 13 of its row), by stream, in version order.
fn missed_events(
    row: &sqlx::postgres::PgRow,
) -> std::result::Result<HashMap<String, Vec<StreamEvent>>, sqlx::Error> {
    let streams: Vec<String> = row.try_get(7)?;
    let ids: Vec<Uuid> = row.try_get(8)?;
    let versions: Vec<i64> = row.try_get(9)?;
    let positions: Vec<i64> = row.try_get(10)?;
    let types: Vec<String> = row.try_get(11)?;
    let schemas: Vec<i32> = row.try_get(12)?;
    let payloads: Vec<String> = row.try_get(13)?;
    let mut out: HashMap<String, Vec<StreamEvent>> = HashMap::new();
    let columns = ids
        .into_iter()
        .zip(versions)
        .zip(positions)
        .zip(types)
        .zip(schemas)
        .zip(payloads);
    for (stream, (((((event_id, version), position), event_type), schema), payload)) in
        streams.into_iter().zip(columns)
    {
        out.entry(stream).or_default().push(StreamEvent {
            event_id,
            stream_version: version as u64,
            position: Position(position as u64),
            event_type,
            schema_version: schema as u32,
            payload,
        });
    }
    Ok(out)
}

/// Reads a group's state and the head ([`HEAD_AND_STATE_SQL`]).
#[allow(clippy::type_complexity)]
async fn read_state(
    conn: &mut PgConnection,
    batch: &[Job],
) -> std::result::Result<(HashMap<String, u64>, HashMap<Uuid, StoredId>, Option<i64>), sqlx::Error>
{
    let stream_ids: Vec<&str> = batch
        .iter()
        .map(|j| j.append.request.stream_id.as_str())
        .collect();
    let event_ids: Vec<Uuid> = batch
        .iter()
        .flat_map(|j| j.append.request.events.iter().map(|e| e.event_id))
        .collect();
    let rows = sqlx::query(HEAD_AND_STATE_SQL)
        .bind(&stream_ids)
        .bind(&event_ids)
        .fetch_all(conn)
        .await?;
    parse_state(&rows)
}

/// Stream versions, stored ids and (if asked for) the head, from the rows
/// of a state query: `(stream_id, version, event_id, position)`, where a
/// row without a stream id is the head and one without an event id a
/// stream's version.
#[allow(clippy::type_complexity)]
fn parse_state(
    rows: &[sqlx::postgres::PgRow],
) -> std::result::Result<(HashMap<String, u64>, HashMap<Uuid, StoredId>, Option<i64>), sqlx::Error>
{
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut existing: HashMap<Uuid, StoredId> = HashMap::new();
    let mut head: Option<i64> = None;
    for row in rows {
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
    Ok((versions, existing, head))
}

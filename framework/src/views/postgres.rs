//! Views, checkpoints and dead letters in PostgreSQL.
//!
//! Each view version is a table `strata_view_<name>_v<version>` of
//! `(key, doc jsonb, position)`. Table names cannot be bound as parameters;
//! they are built only from a [`ViewId`], whose name is validated to
//! `[a-z][a-z0-9_]{0,39}`. Every value is bound.
//!
//! Keys are compared bytewise (`COLLATE "C"`), whatever the database's
//! collation, so listings come in the same key order as in memory and
//! the primary key index serves `ORDER BY key` and `key > $after`. (Tables
//! made before this keep the database's collation until rebuilt.)

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::envelope::Position;
use crate::store::postgres::errors::is_undefined_table;
use crate::views::store::{
    parse_state, state_str, validate_name, ActiveView, Checkpoint, Checkpoints, DeadLetter,
    DocChange, Documents, Lease, LeaseHandle, Leases, StoredDoc, Versions, ViewCommit, ViewError,
    ViewId, ViewRead, ViewResult,
};

/// Views in PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgViewStore {
    pool: PgPool,
}

impl PgViewStore {
    /// A view store on a migrated database.
    pub fn new(pool: PgPool) -> Self {
        PgViewStore { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The table of a view version (the name is validated by [`ViewId`]).
pub fn view_table(view: &ViewId) -> String {
    format!("strata_view_{}_v{}", view.name(), view.version())
}

fn be(e: sqlx::Error) -> ViewError {
    ViewError::backend(e)
}

fn doc_from_row(row: &sqlx::postgres::PgRow) -> ViewResult<StoredDoc> {
    let Json(doc): Json<serde_json::Value> = row.try_get("doc").map_err(be)?;
    Ok(StoredDoc {
        key: row.try_get("key").map_err(be)?,
        doc,
        position: Position(row.try_get::<i64, _>("position").map_err(be)? as u64),
    })
}

struct PgLease {
    conn: PgConnection,
}

impl LeaseHandle for PgLease {
    fn still_held(&mut self) -> crate::write::aggregate::BoxFuture<'_, bool> {
        Box::pin(async move { self.conn.ping().await.is_ok() })
    }
}

impl PgViewStore {
    async fn checkpoint_row(&self, subscriber: &str) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
        // Reads are the common case (queries waiting for a position): no
        // write unless the row is missing.
        if let Some(row) = sqlx::query(
            "SELECT position, state, error FROM strata_checkpoints WHERE subscriber = $1",
        )
        .bind(subscriber)
        .fetch_optional(&self.pool)
        .await?
        {
            return Ok(row);
        }
        sqlx::query(
            "WITH ins AS (INSERT INTO strata_checkpoints (subscriber) VALUES ($1) \
               ON CONFLICT (subscriber) DO NOTHING RETURNING position, state, error) \
             SELECT position, state, error FROM ins \
             UNION ALL SELECT position, state, error FROM strata_checkpoints WHERE subscriber = $1",
        )
        .bind(subscriber)
        .fetch_one(&self.pool)
        .await
    }
}

impl Leases for PgViewStore {
    async fn acquire(&self, subscriber: &str) -> ViewResult<Lease> {
        validate_name(subscriber)?;
        // A session-level advisory lock on a connection of its own: it is
        // released when this process dies and its connection closes.
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(&format!("strata-lease-{subscriber}"));
        let mut conn = PgConnection::connect_with(&options).await.map_err(be)?;
        let key = format!("strata-subscriber:{subscriber}");
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&key)
                .fetch_one(&mut conn)
                .await
                .map_err(be)?;
            if got {
                return Ok(Lease::new(Box::new(PgLease { conn })));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Checkpoints for PgViewStore {
    async fn checkpoint(&self, subscriber: &str) -> ViewResult<Checkpoint> {
        validate_name(subscriber)?;
        // A concurrent first insert can hide the row from this statement's
        // snapshot; the next statement sees it.
        let mut attempts = 0;
        let row = loop {
            attempts += 1;
            match self.checkpoint_row(subscriber).await {
                Err(sqlx::Error::RowNotFound) if attempts < 3 => continue,
                other => break other.map_err(be)?,
            }
        };
        Ok(Checkpoint {
            position: Position(row.try_get::<i64, _>(0).map_err(be)? as u64),
            state: parse_state(&row.try_get::<String, _>(1).map_err(be)?),
            error: row.try_get(2).map_err(be)?,
        })
    }

    async fn advance(&self, subscriber: &str, from: Position, to: Position) -> ViewResult<()> {
        Documents::commit(self, subscriber, None, Vec::new(), from, to).await
    }

    async fn park(&self, letter: DeadLetter, from: Position, skip: bool) -> ViewResult<()> {
        let mut tx = self.pool.begin().await.map_err(be)?;
        let moved = sqlx::query(
            "UPDATE strata_checkpoints SET \
               position = CASE WHEN $3 THEN $4 ELSE position END, \
               state = CASE WHEN $3 THEN state ELSE 'halted' END, \
               error = CASE WHEN $3 THEN error ELSE $5 END, updated_at = now() \
             WHERE subscriber = $1 AND position = $2",
        )
        .bind(&letter.subscriber)
        .bind(from.0 as i64)
        .bind(skip)
        .bind(letter.position.0 as i64)
        .bind(&letter.error)
        .execute(&mut *tx)
        .await
        .map_err(be)?;
        if moved.rows_affected() != 1 {
            return Err(ViewError::Fenced {
                subscriber: letter.subscriber,
                expected: from,
            });
        }
        sqlx::query(
            "INSERT INTO strata_dead_letters \
               (subscriber, position, event_id, stream_id, event_type, error, attempts, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&letter.subscriber)
        .bind(letter.position.0 as i64)
        .bind(letter.event_id)
        .bind(&letter.stream_id)
        .bind(&letter.event_type)
        .bind(&letter.error)
        .bind(letter.attempts as i32)
        .bind(if skip { "skipped" } else { "parked" })
        .execute(&mut *tx)
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)
    }

    async fn dead_letters(&self, subscriber: Option<&str>) -> ViewResult<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, subscriber, position, event_id, stream_id, event_type, error, attempts, \
                    status, created_at \
               FROM strata_dead_letters WHERE $1::text IS NULL OR subscriber = $1 ORDER BY id DESC",
        )
        .bind(subscriber)
        .fetch_all(&self.pool)
        .await
        .map_err(be)?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.try_get("id").map_err(be)?,
                    subscriber: r.try_get("subscriber").map_err(be)?,
                    position: Position(r.try_get::<i64, _>("position").map_err(be)? as u64),
                    event_id: r.try_get("event_id").map_err(be)?,
                    stream_id: r.try_get("stream_id").map_err(be)?,
                    event_type: r.try_get("event_type").map_err(be)?,
                    error: r.try_get("error").map_err(be)?,
                    attempts: r.try_get::<i32, _>("attempts").map_err(be)? as u32,
                    status: r.try_get("status").map_err(be)?,
                    created_at: r.try_get("created_at").map_err(be)?,
                })
            })
            .collect()
    }

    async fn resume(&self, subscriber: &str) -> ViewResult<()> {
        sqlx::query(
            "UPDATE strata_checkpoints SET state = $2, error = NULL, updated_at = now() \
             WHERE subscriber = $1",
        )
        .bind(subscriber)
        .bind(state_str(crate::views::store::SubscriberState::Running))
        .execute(&self.pool)
        .await
        .map_err(be)?;
        Ok(())
    }

    async fn reset(&self, subscriber: &str, position: Position) -> ViewResult<()> {
        validate_name(subscriber)?;
        self.checkpoint(subscriber).await?;
        sqlx::query(
            "UPDATE strata_checkpoints SET position = $2, state = 'running', error = NULL, \
               updated_at = now() WHERE subscriber = $1",
        )
        .bind(subscriber)
        .bind(position.0 as i64)
        .execute(&self.pool)
        .await
        .map_err(be)?;
        Ok(())
    }

    async fn resolve_dead_letter(&self, id: i64, skip: bool) -> ViewResult<bool> {
        let mut tx = self.pool.begin().await.map_err(be)?;
        let row = sqlx::query(
            "UPDATE strata_dead_letters SET status = $2, resolved_at = now() \
             WHERE id = $1 AND status = 'parked' RETURNING subscriber, position",
        )
        .bind(id)
        .bind(if skip { "skipped" } else { "retried" })
        .fetch_optional(&mut *tx)
        .await
        .map_err(be)?;
        let Some(row) = row else { return Ok(false) };
        let subscriber: String = row.try_get(0).map_err(be)?;
        let position: i64 = row.try_get(1).map_err(be)?;
        sqlx::query(
            "UPDATE strata_checkpoints SET state = 'running', error = NULL, updated_at = now(), \
               position = CASE WHEN $2 AND position < $3 THEN $3 ELSE position END \
             WHERE subscriber = $1",
        )
        .bind(&subscriber)
        .bind(skip)
        .bind(position)
        .execute(&mut *tx)
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(true)
    }
}

impl Documents for PgViewStore {
    async fn load(&self, view: &ViewId, keys: &[String]) -> ViewResult<HashMap<String, StoredDoc>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        // One key (a batch's one new document, the usual miss) by
        // equality: Postgres plans that statement once per connection,
        // where `= ANY($1)` is planned again on every call (its generic
        // plan looks dearer than a plan for the array at hand).
        let table = view_table(view);
        let (sql, one) = match keys {
            [key] => (
                format!("SELECT key, doc, position FROM {table} WHERE key = $1"),
                Some(key),
            ),
            _ => (
                format!("SELECT key, doc, position FROM {table} WHERE key = ANY($1)"),
                None,
            ),
        };
        let query = sqlx::query(&sql);
        let query = match one {
            Some(key) => query.bind(key),
            None => query.bind(keys),
        };
        let rows = query.fetch_all(&self.pool).await;
        // A version not created yet has no documents (as `get` and `list`).
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if is_undefined_table(&e) => return Ok(HashMap::new()),
            Err(e) => return Err(be(e)),
        };
        rows.iter()
            .map(|r| doc_from_row(r).map(|d| (d.key.clone(), d)))
            .collect()
    }

    async fn commit(
        &self,
        subscriber: &str,
        view: Option<&ViewId>,
        changes: Vec<DocChange>,
        from: Position,
        to: Position,
    ) -> ViewResult<()> {
        // The version's table is gone (dropped after a rebuild switched
        // away from it): nothing was written, and the writer is fenced.
        let fenced_if_dropped = |e: sqlx::Error| {
            if is_undefined_table(&e) {
                ViewError::Fenced {
                    subscriber: subscriber.to_owned(),
                    expected: from,
                }
            } else {
                be(e)
            }
        };
        let Columns {
            keys,
            docs,
            positions,
            deleted,
            ..
        } = Columns::of(&changes);
        // One statement in its own transaction, so one round trip: the
        // checkpoint moves by compare-and-set, and the documents are written
        // only if it moved (the fence; data-modifying WITH parts always run,
        // so each checks `moved` itself). Views are derived data, so the
        // commit need not wait for its WAL flush (`synchronous_commit` off
        // for this transaction only): documents and checkpoint still commit
        // atomically, and a database crash can lose only the last view
        // commits, which the projector then applies again from the store.
        const CHECKPOINT: &str = "WITH relaxed AS ( \
               SELECT set_config('synchronous_commit', 'off', true)), \
             moved AS ( \
               UPDATE strata_checkpoints SET position = $3, updated_at = now() \
                WHERE subscriber = $1 AND position = $2 AND state = 'running' \
                  AND EXISTS (SELECT 1 FROM relaxed) \
               RETURNING 1)";
        let moved: i64 = match view {
            Some(view) if !keys.is_empty() || !deleted.is_empty() => {
                let table = view_table(view);
                // Only the parts the commit uses (see `commit_all`).
                let mut sql = String::from(CHECKPOINT);
                if !keys.is_empty() {
                    let _ = write!(
                        sql,
                        ", put AS ( \
                           INSERT INTO {table} (key, doc, position) \
                           SELECT k, d::jsonb, p \
                             FROM UNNEST($4::text[], $5::text[], $6::bigint[]) AS t(k, d, p) \
                            WHERE EXISTS (SELECT 1 FROM moved) \
                           ON CONFLICT (key) DO UPDATE \
                             SET doc = EXCLUDED.doc, position = EXCLUDED.position)"
                    );
                }
                if !deleted.is_empty() {
                    let g = if keys.is_empty() { 4 } else { 7 };
                    let _ = write!(
                        sql,
                        ", gone AS ( \
                           DELETE FROM {table} \
                            WHERE key = ANY(${g}) AND EXISTS (SELECT 1 FROM moved))"
                    );
                }
                sql.push_str(" SELECT count(*) FROM moved");
                let mut query = sqlx::query_scalar(&sql)
                    .bind(subscriber)
                    .bind(from.0 as i64)
                    .bind(to.0 as i64);
                if !keys.is_empty() {
                    query = query.bind(&keys).bind(&docs).bind(&positions);
                }
                if !deleted.is_empty() {
                    query = query.bind(&deleted);
                }
                query
                    .fetch_one(&self.pool)
                    .await
                    .map_err(fenced_if_dropped)?
            }
            _ => sqlx::query_scalar(&format!("{CHECKPOINT} SELECT count(*) FROM moved"))
                .bind(subscriber)
                .bind(from.0 as i64)
                .bind(to.0 as i64)
                .fetch_one(&self.pool)
                .await
                .map_err(be)?,
        };
        if moved != 1 {
            return Err(ViewError::Fenced {
                subscriber: subscriber.to_owned(),
                expected: from,
            });
        }
        Ok(())
    }

    async fn commit_all(&self, commits: Vec<ViewCommit>) -> ViewResult<Vec<ViewResult<()>>> {
        if commits.len() <= 1 {
            let mut out = Vec::with_capacity(1);
            for c in commits {
                out.push(
                    self.commit(&c.subscriber, Some(&c.view), c.changes, c.from, c.to)
                        .await,
                );
            }
            return Ok(out);
        }
        // One statement for every view: the checkpoints move by one
        // compare-and-set each, and each view's documents are written only
        // if its own checkpoint moved (as in `commit`, and with the same
        // relaxed `synchronous_commit`). It returns the subscribers whose
        // checkpoint moved; the others were fenced and wrote nothing.
        let subs: Vec<&str> = commits.iter().map(|c| c.subscriber.as_str()).collect();
        let froms: Vec<i64> = commits.iter().map(|c| c.from.0 as i64).collect();
        let tos: Vec<i64> = commits.iter().map(|c| c.to.0 as i64).collect();
        let mut sql = String::from(
            "WITH relaxed AS ( \
               SELECT set_config('synchronous_commit', 'off', true)), \
             moved AS ( \
               UPDATE strata_checkpoints c SET position = t.to_pos, updated_at = now() \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS t(sub, from_pos, to_pos) \
                WHERE c.subscriber = t.sub AND c.position = t.from_pos AND c.state = 'running' \
                  AND EXISTS (SELECT 1 FROM relaxed) \
               RETURNING c.subscriber)",
        );
        // Each view's parts are there only if it has documents to write
        // or to delete: a statement's shape then says what it does, and
        // Postgres plans each shape once per connection (a `DELETE … =
        // ANY($n)` left in with an empty array made its generic plan look
        // dearer than a custom one, so the commit was planned every time).
        let mut docs: Vec<Columns> = Vec::new();
        let mut next = 4;
        for (i, c) in commits.iter().enumerate() {
            if c.changes.is_empty() {
                continue;
            }
            let cols = Columns::of(&c.changes).with_subscriber(c.subscriber.clone());
            let table = view_table(&c.view);
            // Parameters: $1..$3 above, then the view's subscriber and
            // three for its upserts, one for its deletes.
            let s = next;
            next += 1;
            if !cols.keys.is_empty() {
                let _ = write!(
                    sql,
                    ", put{i} AS ( \
                       INSERT INTO {table} (key, doc, position) \
                       SELECT k, d::jsonb, p \
                         FROM UNNEST(${k}::text[], ${d}::text[], ${p}::bigint[]) AS t(k, d, p) \
                        WHERE EXISTS (SELECT 1 FROM moved WHERE subscriber = ${s}) \
                       ON CONFLICT (key) DO UPDATE \
                         SET doc = EXCLUDED.doc, position = EXCLUDED.position)",
                    k = next,
                    d = next + 1,
                    p = next + 2,
                );
                next += 3;
            }
            if !cols.deleted.is_empty() {
                let _ = write!(
                    sql,
                    ", gone{i} AS ( \
                       DELETE FROM {table} \
                        WHERE key = ANY(${g}) \
                          AND EXISTS (SELECT 1 FROM moved WHERE subscriber = ${s}))",
                    g = next,
                );
                next += 1;
            }
            docs.push(cols);
        }
        sql.push_str(" SELECT subscriber FROM moved");
        let mut query = sqlx::query_scalar::<_, String>(&sql)
            .bind(&subs)
            .bind(&froms)
            .bind(&tos);
        for cols in &docs {
            query = query.bind(&cols.subscriber);
            if !cols.keys.is_empty() {
                query = query
                    .bind(&cols.keys)
                    .bind(&cols.docs)
                    .bind(&cols.positions);
            }
            if !cols.deleted.is_empty() {
                query = query.bind(&cols.deleted);
            }
        }
        let moved: HashSet<String> = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                if is_undefined_table(&e) {
                    // A version's table was dropped (a rebuild switched
                    // away from it): nothing was written.
                    ViewError::Fenced {
                        subscriber: subs.join(","),
                        expected: Position::START,
                    }
                } else {
                    be(e)
                }
            })?
            .into_iter()
            .collect();
        Ok(commits
            .iter()
            .map(|c| {
                if moved.contains(&c.subscriber) {
                    Ok(())
                } else {
                    Err(ViewError::Fenced {
                        subscriber: c.subscriber.clone(),
                        expected: c.from,
                    })
                }
            })
            .collect())
    }

    async fn get(&self, view: &ViewId, key: &str) -> ViewResult<ViewRead> {
        // One statement, one snapshot: the document and the checkpoint agree.
        let row = sqlx::query(&format!(
            "SELECT c.position AS checkpoint, v.key, v.doc, v.position \
               FROM (SELECT $1::text AS subscriber) s \
               LEFT JOIN strata_checkpoints c ON c.subscriber = s.subscriber \
               LEFT JOIN {} v ON v.key = $2",
            view_table(view)
        ))
        .bind(view.subscriber())
        .bind(key)
        .fetch_one(&self.pool)
        .await;
        let row = match row {
            Ok(r) => r,
            Err(e) if is_undefined_table(&e) => {
                return Ok(ViewRead {
                    doc: None,
                    checkpoint: Position::START,
                })
            }
            Err(e) => return Err(be(e)),
        };
        let checkpoint = Position(
            row.try_get::<Option<i64>, _>("checkpoint")
                .map_err(be)?
                .unwrap_or(0) as u64,
        );
        let doc = match row.try_get::<Option<String>, _>("key").map_err(be)? {
            Some(_) => Some(doc_from_row(&row)?),
            None => None,
        };
        Ok(ViewRead { doc, checkpoint })
    }

    async fn list(
        &self,
        view: &ViewId,
        after_key: Option<&str>,
        limit: usize,
    ) -> ViewResult<Vec<StoredDoc>> {
        let rows = sqlx::query(&format!(
            "SELECT key, doc, position FROM {} WHERE $1::text IS NULL OR key > $1 \
             ORDER BY key LIMIT $2",
            view_table(view)
        ))
        .bind(after_key)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await;
        match rows {
            Ok(rows) => rows.iter().map(doc_from_row).collect(),
            Err(e) if is_undefined_table(&e) => Ok(Vec::new()),
            Err(e) => Err(be(e)),
        }
    }
}

impl Versions for PgViewStore {
    async fn prepare(&self, view: &ViewId) -> ViewResult<Checkpoint> {
        let table = view_table(view);
        let mut tx = self.pool.begin().await.map_err(be)?;
        // Serialise concurrent creators: CREATE TABLE IF NOT EXISTS can race.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&table)
            .execute(&mut *tx)
            .await
            .map_err(be)?;
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               key TEXT COLLATE \"C\" PRIMARY KEY, doc JSONB NOT NULL, \
               position BIGINT NOT NULL)"
        );
        sqlx::query(&ddl).execute(&mut *tx).await.map_err(be)?;
        tx.commit().await.map_err(be)?;
        self.checkpoint(&view.subscriber()).await
    }

    async fn active_version(&self, name: &str, default: u32) -> ViewResult<u32> {
        validate_name(name)?;
        let v: i32 = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO strata_view_versions (name, active_version) VALUES ($1, $2) \
               ON CONFLICT (name) DO NOTHING RETURNING active_version) \
             SELECT active_version FROM ins \
             UNION ALL SELECT active_version FROM strata_view_versions WHERE name = $1 LIMIT 1",
        )
        .bind(name)
        .bind(default as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(be)?
        .unwrap_or(default as i32);
        Ok(v as u32)
    }

    async fn active(&self, name: &str) -> ViewResult<Option<ActiveView>> {
        validate_name(name)?;
        // One statement: the version and its checkpoint agree.
        let row: Option<(i32, Option<i64>)> = sqlx::query_as(
            "SELECT v.active_version, c.position FROM strata_view_versions v \
               LEFT JOIN strata_checkpoints c \
                 ON c.subscriber = v.name || '_v' || v.active_version::text \
             WHERE v.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(be)?;
        Ok(row.map(|(version, position)| ActiveView {
            version: version as u32,
            checkpoint: Position(position.unwrap_or(0) as u64),
        }))
    }

    async fn start_rebuild(&self, name: &str, default: u32) -> ViewResult<u32> {
        self.active_version(name, default).await?;
        let v: i32 = sqlx::query_scalar(
            "UPDATE strata_view_versions SET \
               rebuilding_version = COALESCE(rebuilding_version, GREATEST(active_version, $2) + 1), \
               updated_at = now() \
             WHERE name = $1 RETURNING rebuilding_version",
        )
        .bind(name)
        .bind(default as i32)
        .fetch_one(&self.pool)
        .await
        .map_err(be)?;
        Ok(v as u32)
    }

    async fn switch_version(&self, name: &str, to: u32) -> ViewResult<bool> {
        let mut tx = self.pool.begin().await.map_err(be)?;
        let active: Option<i32> = sqlx::query_scalar(
            "SELECT active_version FROM strata_view_versions WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(be)?;
        // An unknown view has no version to switch from: nothing changes.
        let Some(active) = active else {
            return Ok(false);
        };
        let old = ViewId::new(name, active as u32)?;
        let new = ViewId::new(name, to)?;
        // Lock the old checkpoint: its projector cannot commit meanwhile.
        let old_pos: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM strata_checkpoints WHERE subscriber = $1 FOR UPDATE",
        )
        .bind(old.subscriber())
        .fetch_optional(&mut *tx)
        .await
        .map_err(be)?;
        let new_pos: Option<i64> =
            sqlx::query_scalar("SELECT position FROM strata_checkpoints WHERE subscriber = $1")
                .bind(new.subscriber())
                .fetch_optional(&mut *tx)
                .await
                .map_err(be)?;
        if new_pos.unwrap_or(0) < old_pos.unwrap_or(0) {
            return Ok(false);
        }
        sqlx::query("UPDATE strata_checkpoints SET state = 'retired', updated_at = now() WHERE subscriber = $1")
            .bind(old.subscriber())
            .execute(&mut *tx)
            .await
            .map_err(be)?;
        sqlx::query(
            "UPDATE strata_view_versions SET active_version = $2, rebuilding_version = NULL, \
               updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .bind(to as i32)
        .execute(&mut *tx)
        .await
        .map_err(be)?;
        tx.commit().await.map_err(be)?;
        Ok(true)
    }

    async fn retire_active(&self, name: &str) -> ViewResult<Position> {
        // Reads the active version without registering the view.
        let active = self.active(name).await?.map_or(1, |a| a.version);
        let old = ViewId::new(name, active)?;
        // A version whose projector has not checkpointed yet is retired
        // too: its first commit must fail like any later one.
        let position: i64 = sqlx::query_scalar(
            "INSERT INTO strata_checkpoints (subscriber, state) VALUES ($1, 'retired') \
             ON CONFLICT (subscriber) DO UPDATE SET state = 'retired', updated_at = now() \
             RETURNING position",
        )
        .bind(old.subscriber())
        .fetch_one(&self.pool)
        .await
        .map_err(be)?;
        Ok(Position(position as u64))
    }

    async fn drop_version(&self, view: &ViewId) -> ViewResult<()> {
        let mut tx = self.pool.begin().await.map_err(be)?;
        let ddl = format!("DROP TABLE IF EXISTS {}", view_table(view));
        sqlx::query(&ddl).execute(&mut *tx).await.map_err(be)?;
        sqlx::query("DELETE FROM strata_checkpoints WHERE subscriber = $1")
            .bind(view.subscriber())
            .execute(&mut *tx)
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)
    }
}

/// A commit's document changes as the columns its statement binds (the
/// last change per key wins; the runtime already folds a batch).
#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    docs: Vec<String>,
    positions: Vec<i64>,
    deleted: Vec<String>,
    subscriber: String,
}

impl Columns {
    fn of(changes: &[DocChange]) -> Self {
        let mut last: HashMap<&str, &DocChange> = HashMap::with_capacity(changes.len());
        for c in changes {
            last.insert(c.key(), c);
        }
        let mut cols = Columns::default();
        for (_, c) in last {
            match c {
                DocChange::Put(d) => {
                    cols.keys.push(d.key.clone());
                    cols.docs.push(d.doc.to_string());
                    cols.positions.push(d.position.0 as i64);
                }
                DocChange::Delete { key } => cols.deleted.push(key.clone()),
            }
        }
        cols
    }

    fn with_subscriber(mut self, subscriber: String) -> Self {
        self.subscriber = subscriber;
        self
    }
}

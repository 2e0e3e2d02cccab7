//! The queries that read events.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::envelope::{EventEnvelope, Metadata, Position, StreamId};
use crate::error::{Result, StoreError};
use crate::store::{EventFilter, StreamEvent};

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

/// Runs a stream query taking (stream id, from version, limit).
async fn stream_rows(
    pool: &PgPool,
    sql: &str,
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<PgRow>> {
    sqlx::query(sql)
        .bind(stream_id.as_str())
        .bind(from_version.min(i64::MAX as u64) as i64)
        .bind(clamp_limit(limit))
        .fetch_all(pool)
        .await
        .map_err(StoreError::backend)
}

/// Events of one stream from `from_version`, in version order.
pub(super) async fn read_stream(
    pool: &PgPool,
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<EventEnvelope>> {
    let sql = format!(
        "{SELECT_ENVELOPE} WHERE stream_id = $1 AND stream_version >= $2 \
         ORDER BY stream_version LIMIT $3"
    );
    let rows = stream_rows(pool, &sql, stream_id, from_version, limit).await?;
    rows.iter().map(decode_envelope).collect()
}

/// [`read_stream`] without decoding: payloads as stored text.
pub(super) async fn read_stream_raw(
    pool: &PgPool,
    stream_id: &StreamId,
    from_version: u64,
    limit: usize,
) -> Result<Vec<StreamEvent>> {
    let sql = "SELECT event_id, stream_version, position, event_type, schema_version, \
               payload::text FROM strata_events WHERE stream_id = $1 AND stream_version >= $2 \
               ORDER BY stream_version LIMIT $3";
    let rows = stream_rows(pool, sql, stream_id, from_version, limit).await?;
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

/// Events after `after` in position order, filtered.
pub(super) async fn read_all(
    pool: &PgPool,
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
        .fetch_all(pool)
        .await
        .map_err(StoreError::backend)?;
    rows.iter().map(decode_envelope).collect()
}

/// The head: the last position written.
pub(super) async fn head(pool: &PgPool) -> Result<Position> {
    let head: i64 = sqlx::query_scalar("SELECT position FROM strata_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(StoreError::backend)?;
    Ok(Position(head as u64))
}

/// The stored events among `ids`, in position order.
pub(super) async fn events_by_id(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<EventEnvelope>> {
    let sql = format!("{SELECT_ENVELOPE} WHERE event_id = ANY($1) ORDER BY position");
    let rows = sqlx::query(&sql)
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(StoreError::backend)?;
    rows.iter().map(decode_envelope).collect()
}

/// A stream's current version (0 when it does not exist).
pub(super) async fn stream_version(pool: &PgPool, stream_id: &StreamId) -> Result<u64> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT version FROM strata_streams WHERE stream_id = $1")
            .bind(stream_id.as_str())
            .fetch_optional(pool)
            .await
            .map_err(StoreError::backend)?;
    Ok(v.unwrap_or(0) as u64)
}

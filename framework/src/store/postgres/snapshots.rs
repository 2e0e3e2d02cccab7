//! Aggregate snapshots in Postgres.

use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::envelope::{Position, StreamId};
use crate::error::{Result, StoreError};

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

//! `verify`: checks the store, JetStream and the views up to one position.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::error::jetstream;
use super::output::Out;
use super::{AdminContext, AdminError, EXIT_FAILED, EXIT_OK};
use crate::envelope::Position;
use crate::propagation::nats::StreamConfig;
use crate::store::follow::Follower;
use crate::store::postgres::errors::is_undefined_table;
use crate::store::{EventFilter, EventStore};
use crate::views::store::ViewId;
use crate::{PgEventStore, PgPool};

/// How one verify check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Correct as far as it goes, but not yet at the verified position
    /// (a view or JetStream catching up): not a failure.
    Behind,
    Failed,
}

impl Outcome {
    fn of(ok: bool) -> Self {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// Checks the store, JetStream and the views up to one position: the
/// store's head read once at the start. Appends after it are not looked
/// at, so verify can run while the system writes: the store checks count
/// only events up to that position; JetStream must match the store up to
/// it (a stream that ends before it is `behind`); a view is compared with a
/// fresh fold of the store up to its own checkpoint, read in one snapshot
/// with its documents, and a view whose checkpoint is before the position
/// is `behind`, not failed.
pub(super) async fn verify(
    ctx: &AdminContext,
    jetstream: bool,
    only: &[String],
    no_projections: bool,
    out: &mut Out<'_>,
) -> Result<i32, AdminError> {
    let pool = ctx.store.pool();
    let upto = ctx.store.head().await?;
    let bound = upto.0.min(i64::MAX as u64) as i64;
    let mut checks: Vec<(String, Outcome, String)> = Vec::new();
    let bad_streams: Vec<String> = sqlx::query_scalar(
        "SELECT stream_id FROM strata_events WHERE position <= $1 GROUP BY stream_id \
         HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*) LIMIT 10",
    )
    .bind(bound)
    .fetch_all(pool)
    .await?;
    checks.push((
        "stream versions are contiguous".into(),
        Outcome::of(bad_streams.is_empty()),
        if bad_streams.is_empty() {
            String::new()
        } else {
            format!("broken: {}", bad_streams.join(", "))
        },
    ));
    let (count, distinct, max): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), max(position) FROM strata_events \
          WHERE position <= $1",
    )
    .bind(bound)
    .fetch_one(pool)
    .await?;
    checks.push((
        "event ids are unique".into(),
        Outcome::of(count == distinct),
        format!("{count} events, {distinct} distinct ids"),
    ));
    let dense = max.unwrap_or(0) == count && bound == count;
    checks.push((
        format!("positions are dense up to {upto}"),
        Outcome::of(dense),
        format!("{count} events"),
    ));

    if jetstream {
        let (client, config) = ctx.jetstream("verify --jetstream")?;
        let (outcome, detail) = verify_jetstream(&ctx.store, client, &config, upto).await?;
        checks.push((
            "JetStream holds exactly the store's events, in order".into(),
            outcome,
            detail,
        ));
    }
    if !no_projections {
        // The store's events up to the position, extended when a view's
        // checkpoint is beyond it (those events are committed and final).
        let mut events = ctx
            .store
            .read_all(Position::START, upto.0 as usize, &EventFilter::all())
            .await?;
        for (name, p) in ctx.registered() {
            if !only.is_empty() && !only.iter().any(|o| o == name) {
                continue;
            }
            let version = ctx.active_version(name, p).await?;
            let view = ViewId::new(name, version)?;
            let (checkpoint, stored) = view_snapshot(pool, &view).await?;
            let known = events.last().map_or(Position::START, |e| e.position);
            if checkpoint > known {
                let more = ctx
                    .store
                    .read_all(
                        known,
                        (checkpoint.0 - known.0) as usize,
                        &EventFilter::all(),
                    )
                    .await?;
                events.extend(more);
            }
            let applied = events.partition_point(|e| e.position <= checkpoint);
            let expected = p.fold(&events[..applied]);
            let differing: Vec<&String> = expected
                .keys()
                .chain(stored.keys())
                .filter(|k| expected.get(*k) != stored.get(*k))
                .take(5)
                .collect();
            let outcome = match (differing.is_empty(), checkpoint < upto) {
                (false, _) => Outcome::Failed,
                (true, true) => Outcome::Behind,
                (true, false) => Outcome::Ok,
            };
            checks.push((
                format!(
                    "{name} v{version} equals a fresh fold of the store up to its checkpoint {checkpoint}"
                ),
                outcome,
                if !differing.is_empty() {
                    format!("documents differ: {differing:?}")
                } else if outcome == Outcome::Behind {
                    format!("{} documents; behind {upto}", stored.len())
                } else {
                    format!("{} documents", stored.len())
                },
            ));
        }
    }
    let ok = checks.iter().all(|c| c.1 != Outcome::Failed);
    if out.json {
        let rows: Vec<Value> = checks
            .iter()
            .map(|(n, o, d)| {
                json!({
                    "check": n,
                    "ok": *o != Outcome::Failed,
                    "behind": *o == Outcome::Behind,
                    "detail": d,
                })
            })
            .collect();
        out.line(json!({ "ok": ok, "position": upto.0, "checks": rows }))?;
    } else {
        out.line(format_args!(
            "verified up to position {upto} (the store's head when verify started)"
        ))?;
        for (name, outcome, detail) in &checks {
            let mark = match outcome {
                Outcome::Ok => "ok",
                Outcome::Behind => "behind",
                Outcome::Failed => "FAIL",
            };
            out.line(format_args!(
                "{mark:<6} {name}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ))?;
        }
    }
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}

/// A view's checkpoint and documents as of one moment (one repeatable-read
/// snapshot), so a projector committing meanwhile cannot make them disagree.
async fn view_snapshot(
    pool: &PgPool,
    view: &ViewId,
) -> Result<(Position, BTreeMap<String, Value>), AdminError> {
    use sqlx::Row;
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let checkpoint: Option<i64> =
        sqlx::query_scalar("SELECT position FROM strata_checkpoints WHERE subscriber = $1")
            .bind(view.subscriber())
            .fetch_optional(&mut *tx)
            .await?;
    // The table name comes from a validated view name and version.
    let rows = sqlx::query(&format!(
        "SELECT key, doc FROM {} ORDER BY key",
        crate::views::postgres::view_table(view)
    ))
    .fetch_all(&mut *tx)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        // The version's table does not exist yet: no documents.
        Err(e) if is_undefined_table(&e) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut docs = BTreeMap::new();
    for row in rows {
        let key: String = row.try_get(0)?;
        let sqlx::types::Json(doc): sqlx::types::Json<Value> = row.try_get(1)?;
        docs.insert(key, doc);
    }
    Ok((Position(checkpoint.unwrap_or(0).max(0) as u64), docs))
}

/// JetStream against the store up to `upto`: every message up to it must
/// carry the store's event at that position. A stream that ends before
/// `upto` (the relay catching up) is `behind` if what it holds matches.
async fn verify_jetstream(
    store: &PgEventStore,
    client: async_nats::Client,
    config: &StreamConfig,
    upto: Position,
) -> Result<(Outcome, String), AdminError> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&config.stream).await.map_err(jetstream)?;
    let info = stream.info().await.map_err(jetstream)?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let end = last.min(upto.0);
    let behind = last < upto.0;
    if end == 0 || first > end {
        return Ok(if behind {
            (
                Outcome::Behind,
                format!("stream ends at {last}, behind {upto}"),
            )
        } else {
            (Outcome::Ok, "both empty".into())
        });
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .map_err(jetstream)?;
    let mut messages = consumer.messages().await.map_err(jetstream)?;
    let mut follower = Follower::new(store.clone(), Position(first - 1)).batch_size(5_000);
    let mut checked = 0u64;
    'read: while let Some(batch) = follower.try_next_batch().await? {
        for e in batch {
            if e.position.0 > end {
                break 'read;
            }
            let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => {
                    return Ok((
                        Outcome::Failed,
                        format!("stream ended early, after {checked} messages"),
                    ))
                }
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::propagation::nats::headers::EVENT_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            if seq != e.position.0 || id != e.event_id.to_string() {
                return Ok((
                    Outcome::Failed,
                    format!(
                        "message {seq} is {id:?}, the store has {} at {}",
                        e.event_id, e.position
                    ),
                ));
            }
            checked += 1;
        }
    }
    if checked != end - first + 1 {
        return Ok((
            Outcome::Failed,
            format!(
                "checked {checked} messages from sequence {first}, expected {}",
                end - first + 1
            ),
        ));
    }
    Ok(if behind {
        (
            Outcome::Behind,
            format!("{checked} messages match (from sequence {first}); the stream ends at {last}, behind {upto}"),
        )
    } else {
        (
            Outcome::Ok,
            format!("{checked} messages match (from sequence {first})"),
        )
    })
}

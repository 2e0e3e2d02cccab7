//! `events`: read the store.

use tokio_util::sync::CancellationToken;

use super::output::Out;
use super::{AdminContext, AdminError, EventsCommand, EXIT_FAILED, EXIT_OK};
use crate::envelope::{EventEnvelope, Position, StreamId};
use crate::store::follow::Follower;
use crate::store::EventStore;

/// Runs an `events` subcommand.
pub(super) async fn run(
    command: EventsCommand,
    ctx: &AdminContext,
    out: &mut Out<'_>,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    match command {
        EventsCommand::Show { stream } => {
            let id = StreamId::new(stream)?;
            let events = ctx.store.read_stream(&id, 1, usize::MAX).await?;
            if events.is_empty() {
                return Err(AdminError::NoSuchStream { stream: id });
            }
            out.events(&events, true)?;
            Ok(EXIT_OK)
        }
        EventsCommand::Tail {
            limit,
            follow,
            filter,
        } => {
            let head = ctx.store.head().await?;
            let filter = filter.filter();
            // The last `limit` matching events: scan back in windows.
            let mut from = head.0;
            let mut shown: Vec<EventEnvelope> = Vec::new();
            while from > 0 && (shown.len() as u64) < limit {
                let start = from.saturating_sub(10_000);
                let mut window = ctx
                    .store
                    .read_all(Position(start), (from - start) as usize, &filter)
                    .await?;
                window.append(&mut shown);
                shown = window;
                from = start;
            }
            let skip = shown.len().saturating_sub(limit as usize);
            out.events(&shown[skip..], true)?;
            out.flush()?;
            if follow {
                let mut follower = Follower::new(ctx.store.clone(), head).filter(filter);
                loop {
                    let batch = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(EXIT_OK),
                        b = follower.next_batch() => b?,
                    };
                    out.events(&batch, false)?;
                    out.flush()?;
                }
            }
            Ok(EXIT_OK)
        }
        EventsCommand::List {
            after,
            until,
            since,
            before,
            limit,
            filter,
        } => {
            let mut follower = Follower::new(ctx.store.clone(), Position(after))
                .filter(filter.filter())
                .batch_size(5_000);
            let mut shown = Vec::new();
            'outer: while let Some(batch) = follower.try_next_batch().await? {
                for e in batch {
                    if until.is_some_and(|u| e.position.0 > u) || shown.len() >= limit {
                        break 'outer;
                    }
                    if since.is_some_and(|s| e.recorded_at < s)
                        || before.is_some_and(|b| e.recorded_at >= b)
                    {
                        continue;
                    }
                    shown.push(e);
                }
            }
            out.events(&shown, true)?;
            Ok(if shown.is_empty() {
                EXIT_FAILED
            } else {
                EXIT_OK
            })
        }
    }
}

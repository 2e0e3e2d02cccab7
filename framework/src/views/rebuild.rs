//! Online projection rebuilds.
//!
//! A rebuild fills a *new version* of a view from the event store at full
//! speed, while the active version keeps serving queries and keeps being
//! projected. When the new version has caught up with the store (and with
//! the active version), one transaction makes it active and retires the old
//! one; the live projector's next commit on the old version fails, and it
//! moves to the new version, from the new version's checkpoint. The switch
//! is announced on the change feed, so readers follow it at once (without
//! the announcement, within [`VERSION_TTL`](crate::views::query::VERSION_TTL));
//! the old version is dropped after a grace period longer than that.
//!
//! Interrupted (Ctrl-C, crash), a rebuild resumes where it stopped: the
//! version being rebuilt and its checkpoint are in the view store.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::envelope::Position;
use crate::propagation::bus::InProcessBus;
use crate::propagation::changes::{AnyChangeFeed, ChangeFeed, ViewChange};
use crate::store::EventStore;
use crate::views::projection::{Projection, Projector, ProjectorConfig};
use crate::views::store::{ViewError, ViewId, ViewStore};

/// Progress of a rebuild, reported about five times a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RebuildProgress {
    /// The rebuilt version's checkpoint.
    pub position: Position,
    /// The store's head.
    pub head: Position,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    /// The view.
    pub view: String,
    /// The version that was active before.
    pub from_version: u32,
    /// The version now active.
    pub to_version: u32,
    /// Events read by this run (after a resume, only the rest).
    pub events: u64,
    /// Seconds this run took.
    pub seconds: f64,
}

/// Why a rebuild stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    /// Shut down before the switch; run it again to resume.
    #[error(
        "rebuild of {view} v{version} interrupted at position {position}; run it again to resume"
    )]
    Interrupted {
        /// The view.
        view: String,
        /// The version being rebuilt.
        version: u32,
        /// Its checkpoint.
        position: Position,
    },
    /// The view store failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// The rebuilt version halted on a dead letter.
    #[error("rebuild of {view} halted on a failing event: {error}")]
    Halted {
        /// The view.
        view: String,
        /// The error.
        error: String,
    },
}

/// Tuning of a rebuild.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Events per transaction (default 5,000).
    pub batch_size: usize,
    /// How long the replaced version stays readable after the switch
    /// (default 3 s; must exceed the readers' version TTL).
    pub grace: Duration,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            batch_size: 5_000,
            grace: Duration::from_secs(3),
        }
    }
}

/// Rebuilds `projection` online from `store` into a new version in `views`
/// and makes it active. Calls `progress` about five times a second.
pub async fn rebuild<P, S, V>(
    projection: P,
    store: S,
    views: V,
    feed: Option<AnyChangeFeed>,
    options: RebuildOptions,
    mut progress: impl FnMut(RebuildProgress) + Send,
    shutdown: CancellationToken,
) -> Result<RebuildReport, RebuildError>
where
    P: Projection,
    S: EventStore,
    V: ViewStore,
{
    let name = projection.name().to_owned();
    let from_version = views.active_version(&name, projection.version()).await?;
    let target = views.start_rebuild(&name, projection.version()).await?;
    let target_view = ViewId::new(&name, target)?;
    let started = Instant::now();
    let start_position = views.prepare(&target_view).await?.position;

    let mut projector = Projector::new(projection, InProcessBus::new(store.clone()), views.clone())
        .with_version(target)
        .with_config(ProjectorConfig {
            batch_size: options.batch_size,
            max_wait: Duration::from_millis(100),
            ..ProjectorConfig::default()
        });
    if let Some(feed) = &feed {
        projector = projector.with_change_feed(feed.clone());
    }
    let status = projector.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    let finish = |stop: CancellationToken, task: tokio::task::JoinHandle<()>| async move {
        stop.cancel();
        let _ = task.await;
    };

    // Two steps, so the switch happens even while writes never stop: once
    // the new version is close to the head, the active version is frozen
    // (retired: its projector's commits fail); as soon as the new version
    // has passed the frozen checkpoint, it becomes active. Queries never go
    // back in position, and wait at most that short freeze.
    let mut frozen: Option<Position> = None;
    let old_subscriber = ViewId::new(&name, from_version)?.subscriber();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                finish(stop, task).await;
                if frozen.is_some() {
                    // Not switched: let the active version move again.
                    views.resume(&old_subscriber).await?;
                }
                let position = views.checkpoint(&target_view.subscriber()).await?.position;
                return Err(RebuildError::Interrupted { view: name, version: target, position });
            }
            _ = tick.tick() => {}
        }
        let head = store.head().await?;
        let st = status.borrow().clone();
        progress(RebuildProgress {
            position: st.position,
            head,
        });
        if st.state == crate::views::projection::RunState::Halted {
            finish(stop, task).await;
            return Err(RebuildError::Halted {
                view: name,
                error: st.last_error.unwrap_or_default(),
            });
        }
        match frozen {
            None if head.0.saturating_sub(st.position.0) <= options.batch_size as u64 => {
                frozen = Some(views.retire_active(&name).await?);
            }
            Some(f) if st.position >= f && views.switch_version(&name, target).await? => {
                if let Some(feed) = &feed {
                    let at = views.checkpoint(&target_view.subscriber()).await?.position;
                    feed.publish(ViewChange::activated(&name, target, at)).await;
                }
                break;
            }
            _ => {}
        }
    }
    // Hand over: the live projector (if any) takes the new version's lease.
    finish(stop, task).await;
    let end = views.checkpoint(&target_view.subscriber()).await?.position;
    if from_version != target {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(options.grace) => {}
        }
        views
            .drop_version(&ViewId::new(&name, from_version)?)
            .await?;
    }
    Ok(RebuildReport {
        view: name,
        from_version,
        to_version: target,
        events: end.0.saturating_sub(start_position.0),
        seconds: started.elapsed().as_secs_f64(),
    })
}

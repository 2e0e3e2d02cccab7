//! Process managers (sagas): follow events, send commands.
//!
//! A process manager's `react` is pure: an event in, commands out. The
//! runner sends each command with an id derived from the causing event's id
//! (and the manager's name and the command's index), so a redelivered event
//! sends the same command ids again and the command handler appends nothing
//! new. The runner keeps its own checkpoint, committed after the commands
//! of a batch were accepted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::aggregate::BoxFuture;
use crate::bus::{EventBus, Subscription};
use crate::codec::Upcasters;
use crate::command::CommandContext;
use crate::envelope::EventEnvelope;
use crate::projection::{ProjectionError, RunError, RunState, SubscriberStatus};
use crate::store::EventFilter;
use crate::view::{validate_name, DeadLetter, SubscriberState, ViewStore};

/// A process manager: reacts to events with commands.
pub trait ProcessManager: Send + Sync + 'static {
    /// The commands it sends.
    type Command: Send + Sync + Clone + std::fmt::Debug + 'static;

    /// Its name (and checkpoint name): `[a-z][a-z0-9_]{0,39}`.
    fn name(&self) -> &str;

    /// Which events it follows.
    fn filter(&self) -> EventFilter;

    /// The commands an event calls for (pure).
    fn react(&self, event: &EventEnvelope) -> Result<Vec<Self::Command>, ProjectionError>;
}

/// Why a command could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target refused it for good (a domain rule): logged, not retried.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// Try again later (store or network trouble): retried with backoff.
    #[error("command failed, will retry: {0}")]
    Transient(String),
}

/// Delivers a process manager's commands (usually to command handlers).
pub trait CommandSender<C>: Send + Sync + 'static {
    /// Sends one command.
    fn send(&self, command: C, ctx: CommandContext) -> BoxFuture<'_, Result<(), SendError>>;
}

/// The command id for the `index`-th command `manager` sends because of `event_id`.
pub fn caused_command_id(manager: &str, event_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&event_id, format!("{manager}/{index}").as_bytes())
}

/// Runs a process manager: one active instance, standby take-over.
pub struct ProcessManagerRunner<M: ProcessManager, B, V, C> {
    manager: Arc<M>,
    bus: B,
    views: V,
    sender: C,
    upcasters: Upcasters,
    status: watch::Sender<SubscriberStatus>,
    batch_size: usize,
}

impl<M, B, V, C> ProcessManagerRunner<M, B, V, C>
where
    M: ProcessManager,
    B: EventBus,
    V: ViewStore,
    C: CommandSender<M::Command>,
{
    /// A runner; `views` keeps its checkpoint and dead letters.
    pub fn new(manager: M, bus: B, views: V, sender: C) -> Self {
        validate_name(manager.name()).unwrap_or_else(|e| panic!("process manager name: {e}"));
        let status = watch::Sender::new(SubscriberStatus::new(manager.name().to_owned()));
        ProcessManagerRunner {
            manager: Arc::new(manager),
            bus,
            views,
            sender,
            upcasters: Upcasters::new(),
            status,
            batch_size: 200,
        }
    }

    /// Upcasts events before `react` sees them.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// A live view of the status.
    pub fn status(&self) -> watch::Receiver<SubscriberStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` is cancelled; transient failures are retried.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.run_active(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(manager = self.manager.name(), error = %e, "process manager interrupted; retrying");
                    self.status.send_modify(|s| {
                        s.state = RunState::Standby;
                        s.last_error = Some(e.to_string());
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.status.send_modify(|s| s.state = RunState::Stopped);
    }

    async fn run_active(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let name = self.manager.name().to_owned();
        let mut lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            l = self.views.acquire(&name) => l?,
        };
        let cp = self.views.checkpoint(&name).await?;
        if cp.state == SubscriberState::Halted {
            self.status.send_modify(|s| s.state = RunState::Halted);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => return Err(RunError::View(crate::view::ViewError::backend("halted"))),
            }
        }
        self.status.send_modify(|s| {
            s.state = RunState::Running;
            s.position = cp.position;
        });
        let filter = self.manager.filter();
        let mut sub = self.bus.subscribe(&name, &filter, cp.position).await?;
        let mut position = cp.position;
        let mut lease_checked = Instant::now();
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                b = sub.next_batch(self.batch_size, Duration::from_millis(500)) => b?,
            };
            if lease_checked.elapsed() > Duration::from_secs(2) {
                if !lease.still_held().await {
                    return Err(RunError::LeaseLost);
                }
                lease_checked = Instant::now();
            }
            let (batch, stale) = crate::bus::in_order(batch, position)?;
            if batch.is_empty() {
                crate::bus::ack_batch(stale).await;
                continue;
            }
            let mut to = position;
            for d in &batch {
                let mut event = d.envelope.clone();
                if event.position <= to {
                    continue;
                }
                if filter.matches(&event) {
                    let reacted = self
                        .upcasters
                        .apply(&mut event)
                        .map_err(ProjectionError::from)
                        .and_then(|()| self.manager.react(&event));
                    match reacted {
                        Ok(commands) => {
                            for (i, command) in commands.into_iter().enumerate() {
                                if !self.send(&event, i, command, shutdown).await {
                                    // Shutting down: commit what was done.
                                    self.views.commit(&name, None, vec![], position, to).await?;
                                    return Ok(());
                                }
                            }
                        }
                        Err(error) => {
                            self.views.commit(&name, None, vec![], position, to).await?;
                            position = to;
                            tracing::error!(manager = %name, position = %event.position, error = %error, "process manager failed on an event; dead-lettered and skipped");
                            self.views
                                .park(
                                    DeadLetter {
                                        id: 0,
                                        subscriber: name.clone(),
                                        position: event.position,
                                        event_id: event.event_id,
                                        stream_id: event.stream_id.to_string(),
                                        event_type: event.event_type.clone(),
                                        error: error.to_string(),
                                        attempts: 1,
                                        status: String::new(),
                                        created_at: chrono::Utc::now(),
                                    },
                                    position,
                                    true,
                                )
                                .await?;
                            position = event.position;
                            self.status.send_modify(|s| s.dead_letters += 1);
                        }
                    }
                }
                to = event.position;
            }
            if to > position {
                self.views.commit(&name, None, vec![], position, to).await?;
                position = to;
            }
            crate::bus::ack_batch(batch).await;
            let lag = sub.backlog();
            self.status.send_modify(|s| {
                s.position = position;
                s.lag = lag;
            });
        }
    }

    /// Sends one command, retrying transient failures until shutdown.
    /// Returns false when interrupted by shutdown.
    async fn send(
        &self,
        event: &EventEnvelope,
        index: usize,
        command: M::Command,
        shutdown: &CancellationToken,
    ) -> bool {
        let ctx = CommandContext::with_command_id(caused_command_id(
            self.manager.name(),
            event.event_id,
            index,
        ))
        .correlation_id(event.metadata.correlation_id)
        .causation_id(event.event_id)
        .actor(format!("process:{}", self.manager.name()));
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.sender.send(command.clone(), ctx.clone()).await {
                Ok(()) => {
                    self.status.send_modify(|s| s.applied += 1);
                    return true;
                }
                Err(SendError::Rejected(reason)) => {
                    tracing::warn!(manager = self.manager.name(), ?command, %reason, "command rejected");
                    return true;
                }
                Err(SendError::Transient(reason)) => {
                    tracing::warn!(manager = self.manager.name(), ?command, %reason, "command failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Given events, a process manager, then the commands: no runtime.
pub fn process_test<M: ProcessManager>(
    manager: &M,
    events: impl IntoIterator<Item = EventEnvelope>,
) -> Vec<M::Command> {
    let filter = manager.filter();
    events
        .into_iter()
        .filter(|e| filter.matches(e))
        .flat_map(|e| {
            manager
                .react(&e)
                .unwrap_or_else(|err| panic!("react failed at {}: {err}", e.position))
        })
        .collect()
}

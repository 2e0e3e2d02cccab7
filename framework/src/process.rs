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

use crate::codec::Upcasters;
use crate::envelope::EventEnvelope;
use crate::event_set::{EventSet, Recorded};
use crate::propagation::bus::{EventBus, Subscription};
use crate::store::EventFilter;
use crate::views::projection::{
    FailurePolicy, ProjectionError, RunError, RunState, SubscriberStatus,
};
use crate::views::store::{validate_name, Checkpoints, DeadLetter, Leases, SubscriberState};
use crate::write::command::{CommandContext, CommandError};

/// A process manager: reacts to typed events with commands.
pub trait ProcessManager: Send + Sync + 'static {
    /// The events it follows (decoded once by the runner; see
    /// [`EventSet`]).
    type Event: EventSet;

    /// The commands it sends.
    type Command: Send + Sync + Clone + std::fmt::Debug + 'static;

    /// Its name (and checkpoint name): `[a-z][a-z0-9_]{0,39}`.
    fn name(&self) -> &str;

    /// Which events to subscribe to (default: what the event set names).
    fn filter(&self) -> EventFilter {
        Self::Event::filter()
    }

    /// The commands an event calls for (pure).
    fn react(
        &self,
        event: Recorded<'_, Self::Event>,
    ) -> Result<Vec<Self::Command>, ProjectionError>;

    /// What happens after a command failed for good (a rejection or any
    /// non-transient [`SendError`]); the event is dead-lettered either way,
    /// after every command it calls for was tried.
    ///
    /// The default, [`FailurePolicy::Skip`], records the dead letter and
    /// goes on, so one bad event never stops the manager for everyone; to
    /// try such an event again, replay from before it (`admin projections
    /// reset <manager> --to <position - 1>`: command ids are derived from
    /// the event, so what succeeded before is not sent twice).
    /// [`FailurePolicy::Halt`] stops the manager (state `halted`) until an
    /// operator retries or skips the dead letter (`admin dead-letters
    /// retry|skip <id>`).
    fn on_failure(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }
}

/// Why a command could not be sent.
///
/// Only [`SendError::Transient`] is retried; the others fail for good and
/// go to the process manager's dead letters (see [`ProcessManager::on_failure`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target refused it (a domain rule): dead-lettered, not retried.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// It can never succeed as sent (its id was used for another command,
    /// its events break a store limit, the target's events do not decode):
    /// dead-lettered, not retried.
    #[error("command failed for good: {0}")]
    Failed(String),
    /// Try again later (store or network trouble, conflicts out of
    /// retries): retried with backoff.
    #[error("command failed, will retry: {0}")]
    Transient(String),
}

impl SendError {
    /// Classifies a command handler's error: domain refusals are
    /// [`SendError::Rejected`]; conflicts and store trouble are
    /// [`SendError::Transient`]; a reused command id, bad input or an
    /// undecodable stream are [`SendError::Failed`].
    pub fn from_command<E: std::error::Error + 'static>(e: CommandError<E>) -> Self {
        match e {
            CommandError::Domain(d) => SendError::Rejected(d.to_string()),
            CommandError::Conflict { .. } | CommandError::Store(_) => {
                SendError::Transient(e.to_string())
            }
            CommandError::CommandIdReused { .. }
            | CommandError::CommandMismatch { .. }
            | CommandError::Input(_)
            | CommandError::Forbidden(_)
            | CommandError::NoActor
            | CommandError::Decode(_) => SendError::Failed(e.to_string()),
        }
    }

    /// True for errors worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }
}

impl<E: std::error::Error + 'static> From<CommandError<E>> for SendError {
    fn from(e: CommandError<E>) -> Self {
        SendError::from_command(e)
    }
}

/// Delivers a process manager's commands (usually to command handlers).
/// Implement it with an `async fn send`.
pub trait CommandSender<C>: Send + Sync + 'static {
    /// Sends one command.
    fn send(
        &self,
        command: C,
        ctx: CommandContext,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send;
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
    V: Leases + Checkpoints,
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
        crate::supervise::supervise(
            &shutdown,
            || self.run_active(&shutdown),
            |e: &RunError| {
                tracing::warn!(manager = self.manager.name(), error = %e, "process manager interrupted; retrying");
                self.status.send_modify(|s| {
                    s.state = RunState::Standby;
                    s.last_error = Some(e.to_string());
                });
            },
        )
        .await;
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
                _ = tokio::time::sleep(Duration::from_secs(1)) => return Err(RunError::View(crate::ViewError::backend("halted"))),
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
            let (batch, stale) = crate::propagation::bus::in_order(batch, position)?;
            if batch.is_empty() {
                crate::propagation::bus::ack_batch(stale).await;
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
                        .and_then(|()| M::Event::decode(&event))
                        .map_err(ProjectionError::from)
                        .and_then(|decoded| match decoded {
                            Some(e) => self.manager.react(Recorded {
                                event: &e,
                                envelope: &event,
                            }),
                            None => Ok(Vec::new()),
                        });
                    match reacted {
                        Ok(commands) => {
                            let mut failures = Vec::new();
                            for (i, command) in commands.into_iter().enumerate() {
                                match self.send(&event, i, command, shutdown).await {
                                    Sent::Done => {}
                                    Sent::Failed(reason) => failures.push(reason),
                                    Sent::Interrupted => {
                                        // Shutting down: commit what was done.
                                        self.views.advance(&name, position, to).await?;
                                        return Ok(());
                                    }
                                }
                            }
                            if !failures.is_empty() {
                                // Commit what came before, then park the event.
                                if to > position {
                                    self.views.advance(&name, position, to).await?;
                                    position = to;
                                }
                                let skip = self.manager.on_failure() == FailurePolicy::Skip;
                                let error = failures.join("; ");
                                tracing::error!(
                                    manager = %name, position = %event.position,
                                    event_id = %event.event_id, event_type = %event.event_type,
                                    error = %error, skip,
                                    "process manager command failed for good; dead-lettered"
                                );
                                self.views
                                    .park(
                                        DeadLetter::for_event(&name, &event, error.clone(), 1),
                                        position,
                                        skip,
                                    )
                                    .await?;
                                self.status.send_modify(|s| {
                                    s.dead_letters += 1;
                                    s.last_error = Some(error);
                                });
                                if !skip {
                                    // Halted: acknowledge nothing; the event
                                    // comes again once the letter is retried.
                                    self.status.send_modify(|s| {
                                        s.state = RunState::Halted;
                                        s.position = position;
                                    });
                                    return Err(RunError::View(crate::ViewError::backend(
                                        "halted on a dead letter",
                                    )));
                                }
                                position = event.position;
                            }
                        }
                        Err(error) => {
                            self.views.advance(&name, position, to).await?;
                            position = to;
                            tracing::error!(manager = %name, position = %event.position, error = %error, "process manager failed on an event; dead-lettered and skipped");
                            self.views
                                .park(
                                    DeadLetter::for_event(&name, &event, error.to_string(), 1),
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
                self.views.advance(&name, position, to).await?;
                position = to;
            }
            crate::propagation::bus::ack_batch(batch).await;
            let lag = sub.backlog();
            self.status.send_modify(|s| {
                s.position = position;
                s.lag = lag;
            });
        }
    }

    /// Sends one command, retrying transient failures until shutdown.
    async fn send(
        &self,
        event: &EventEnvelope,
        index: usize,
        command: M::Command,
        shutdown: &CancellationToken,
    ) -> Sent {
        let ctx = CommandContext::with_command_id(caused_command_id(
            self.manager.name(),
            event.event_id,
            index,
        ))
        .correlation_id(event.metadata.correlation_id)
        .causation_id(event.event_id)
        .actor(self.manager.name());
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.sender.send(command.clone(), ctx.clone()).await {
                Ok(()) => {
                    self.status.send_modify(|s| s.applied += 1);
                    return Sent::Done;
                }
                Err(e @ (SendError::Rejected(_) | SendError::Failed(_))) => {
                    tracing::warn!(manager = self.manager.name(), ?command, error = %e, "command failed for good");
                    return Sent::Failed(format!("command {index} ({command:?}): {e}"));
                }
                Err(SendError::Transient(reason)) => {
                    tracing::warn!(manager = self.manager.name(), ?command, %reason, "command failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Sent::Interrupted,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// How sending one command ended.
enum Sent {
    /// Accepted (or a repeat of an accepted one).
    Done,
    /// Failed for good: why.
    Failed(String),
    /// Shutdown came first.
    Interrupted,
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
            let event = match M::Event::decode(&e) {
                Ok(Some(event)) => event,
                Ok(None) => return Vec::new(),
                Err(err) => panic!("event at {} does not decode: {err}", e.position),
            };
            manager
                .react(Recorded {
                    event: &event,
                    envelope: &e,
                })
                .unwrap_or_else(|err| panic!("react failed at {}: {err}", e.position))
        })
        .collect()
}

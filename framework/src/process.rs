//! Process managers (sagas): follow events, send commands.
//!
//! A process manager's `react` is pure: an event in, commands out. The
//! runner sends each command with an id derived from the causing event's id
//! (and the manager's name and the command's index), so a redelivered event
//! sends the same command ids again and the command handler appends nothing
//! new. The runner keeps its own checkpoint, stored after the commands of
//! the events before it were accepted: at most every 250 ms while events
//! keep coming, when the subscription is idle, before a dead letter and at
//! shutdown. After a crash the events since are reacted to again, and
//! their commands answered as repeats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::envelope::Position;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::Upcasters;
use crate::envelope::EventEnvelope;
use crate::error::BoxError;
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
    /// retry|skip <id>`). Its checkpoint stays before the failed event, and
    /// the later events of the failed event's stream wait with it; events of
    /// other streams in the same batch may already have sent their commands
    /// (see [`ProcessManager::max_in_flight`]), and are sent again, as
    /// no-ops, once the manager resumes. Return `1` from `max_in_flight` if
    /// nothing may go out after a failure.
    fn on_failure(&self) -> FailurePolicy {
        FailurePolicy::Skip
    }

    /// How many streams' commands may be in flight at once (default 32).
    ///
    /// The runner reacts to a batch of events, then sends their commands
    /// with one lane per stream of the causing events: the commands of one
    /// stream's events go out one after another, in the order of those
    /// events, while other streams' go out beside them. A command handler
    /// gathers commands that arrive together into one commit, so a manager
    /// keeps up with a busy shop instead of paying a round trip per
    /// command. The checkpoint moves in order, past events whose commands
    /// were all accepted and past events that were dead-lettered and
    /// skipped ([`FailurePolicy::Skip`]).
    ///
    /// `1` sends every command one after another in the global order of
    /// the causing events (one lane for everything).
    fn max_in_flight(&self) -> usize {
        32
    }
}

/// The cause a [`SendError`] carries: the target's own error (a domain
/// error, a [`CommandError`], a store error), shared so the error can be
/// cloned into a dead letter and a log line. Downcast it to inspect it.
pub type SendCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a command could not be sent.
///
/// Only [`SendError::Transient`] is retried; the others fail for good and
/// go to the process manager's dead letters (see [`ProcessManager::on_failure`]).
/// Each carries the target's error, typed: downcast the cause (for
/// example to your domain's error) to tell refusals apart.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The target refused it (a domain rule): dead-lettered, not retried.
    #[error("command rejected: {0}")]
    Rejected(SendCause),
    /// It can never succeed as sent (its id was used for another command,
    /// its events break a store limit, the target's events do not decode,
    /// the manager may not do it): dead-lettered, not retried.
    #[error("command failed for good: {0}")]
    Failed(SendCause),
    /// Try again later (store or network trouble, conflicts out of
    /// retries): retried with backoff.
    #[error("command failed, will retry: {0}")]
    Transient(SendCause),
}

impl SendError {
    /// A refusal by the target (a domain rule), carrying its error.
    pub fn rejected(cause: impl Into<BoxError>) -> Self {
        SendError::Rejected(Arc::from(cause.into()))
    }

    /// A failure for good, carrying its cause.
    pub fn failed(cause: impl Into<BoxError>) -> Self {
        SendError::Failed(Arc::from(cause.into()))
    }

    /// A failure worth retrying, carrying its cause.
    pub fn transient(cause: impl Into<BoxError>) -> Self {
        SendError::Transient(Arc::from(cause.into()))
    }

    /// Classifies a command handler's error: domain refusals are
    /// [`SendError::Rejected`] carrying the domain error; conflicts and
    /// store trouble are [`SendError::Transient`]; a reused command id,
    /// bad input, a refused principal or an undecodable stream are
    /// [`SendError::Failed`]. The others carry the [`CommandError`].
    pub fn from_command<E: std::error::Error + Send + Sync + 'static>(e: CommandError<E>) -> Self {
        match e {
            CommandError::Domain(d) => SendError::rejected(d),
            CommandError::Conflict { .. } | CommandError::Store(_) => SendError::transient(e),
            CommandError::CommandIdReused { .. }
            | CommandError::CommandMismatch { .. }
            | CommandError::Input(_)
            | CommandError::Forbidden(_)
            | CommandError::NoActor
            | CommandError::Decode(_) => SendError::failed(e),
        }
    }

    /// The target's error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            SendError::Rejected(c) | SendError::Failed(c) | SendError::Transient(c) => &**c,
        }
    }

    /// True for errors worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<CommandError<E>> for SendError {
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

    /// Sees each event the process manager consumes, in order, before the
    /// commands of its batch are sent. A sender whose command handlers keep
    /// states hands the events of their streams to
    /// [`CommandHandler::observe`](crate::CommandHandler::observe), so those
    /// states keep up with what other processes append and the commands are
    /// decided without a read or a conflict. The default does nothing.
    fn observe(&self, _event: &EventEnvelope) {}
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
        // The checkpoint as stored: it follows `position` at most every
        // CHECKPOINT_EVERY, when the subscription is idle, before a dead
        // letter and at shutdown (after a crash the events since are
        // reacted to again; their commands are answered as repeats).
        let mut durable = Durable {
            position: cp.position,
            at: Instant::now(),
        };
        let mut lease_checked = Instant::now();
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.flush(&name, &mut durable, position).await;
                    return Ok(());
                }
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
                self.flush(&name, &mut durable, position).await?; // idle
                continue;
            }
            // React to the whole batch (pure), then send the commands
            // (lanes per stream, concurrently), then move the checkpoint
            // in order, as far as the events were handled.
            let mut work = Vec::with_capacity(batch.len());
            let mut seen = position;
            for d in &batch {
                // Only an upcast changes the envelope.
                let mut event = std::borrow::Cow::Borrowed(&d.envelope);
                if event.position <= seen {
                    continue;
                }
                seen = event.position;
                let reaction = if !filter.matches(&event) {
                    Reaction::Commands(Vec::new())
                } else {
                    let upcast = if self.upcasters.is_empty() {
                        Ok(())
                    } else {
                        self.upcasters.apply(event.to_mut())
                    };
                    let reacted = upcast
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
                        Ok(commands) => Reaction::Commands(commands),
                        Err(error) => Reaction::Broken(error),
                    }
                };
                work.push(Work { event, reaction });
            }
            // Every event of the batch, in order, before its commands go.
            for d in &batch {
                if d.envelope.position > position {
                    self.sender.observe(&d.envelope);
                }
            }
            let outcomes = self.send_all(&work, shutdown).await;
            let mut to = position;
            for (item, outcome) in work.iter().zip(outcomes) {
                let event = &item.event;
                match outcome {
                    Outcome::Done => {}
                    Outcome::NotSent => {
                        // Shutting down (or a lane stopped before this
                        // event): commit what came before it.
                        self.flush(&name, &mut durable, to.max(position)).await?;
                        if shutdown.is_cancelled() {
                            return Ok(());
                        }
                        // Not a shutdown: run again from the checkpoint.
                        return Err(RunError::View(crate::ViewError::backend(
                            "commands of an event were not sent",
                        )));
                    }
                    Outcome::Failed(failures) => {
                        // Commit what came before, then park the event.
                        position = to.max(position);
                        let skip = self.manager.on_failure() == FailurePolicy::Skip;
                        let error = failures.join("; ");
                        tracing::error!(
                            manager = %name, position = %event.position,
                            event_id = %event.event_id, event_type = %event.event_type,
                            error = %error, skip,
                            "process manager command failed for good; dead-lettered"
                        );
                        self.park(&name, &mut durable, position, event, error.clone(), skip)
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
                if let Reaction::Broken(error) = &item.reaction {
                    position = to.max(position);
                    tracing::error!(manager = %name, position = %event.position, error = %error, "process manager failed on an event; dead-lettered and skipped");
                    self.park(
                        &name,
                        &mut durable,
                        position,
                        event,
                        error.to_string(),
                        true,
                    )
                    .await?;
                    position = event.position;
                    self.status.send_modify(|s| s.dead_letters += 1);
                }
                to = event.position;
            }
            position = to.max(position);
            if durable.at.elapsed() >= CHECKPOINT_EVERY {
                self.flush(&name, &mut durable, position).await?;
            }
            crate::propagation::bus::ack_batch(batch).await;
            let lag = sub.backlog();
            self.status.send_modify(|s| {
                s.position = position;
                s.lag = lag;
            });
        }
    }

    /// Dead-letters `event` with the checkpoint at `at` (stored first):
    /// with `skip` the checkpoint moves past the event, else the manager
    /// halts there.
    async fn park(
        &self,
        name: &str,
        durable: &mut Durable,
        at: Position,
        event: &EventEnvelope,
        error: String,
        skip: bool,
    ) -> Result<(), RunError> {
        self.flush(name, durable, at).await?;
        self.views
            .park(DeadLetter::for_event(name, event, error, 1), at, skip)
            .await?;
        if skip {
            durable.position = event.position;
        }
        Ok(())
    }

    /// Stores the checkpoint at `to` if it is behind.
    async fn flush(&self, name: &str, durable: &mut Durable, to: Position) -> Result<(), RunError> {
        if to > durable.position {
            self.views.advance(name, durable.position, to).await?;
            durable.position = to;
        }
        durable.at = Instant::now();
        Ok(())
    }

    /// Sends the commands of a batch's events: one lane per stream of the
    /// causing events (one lane for all with `max_in_flight` 1), lanes
    /// side by side. Returns how each event ended, in the order of `work`.
    async fn send_all(
        &self,
        work: &[Work<'_, M::Command>],
        shutdown: &CancellationToken,
    ) -> Vec<Outcome> {
        use futures::StreamExt;

        let max = self.manager.max_in_flight().max(1);
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, item) in work.iter().enumerate() {
            match &item.reaction {
                Reaction::Commands(c) if !c.is_empty() => {}
                _ => continue,
            }
            let key = if max == 1 {
                ""
            } else {
                item.event.stream_id.as_str()
            };
            let lane = *lane_of.entry(key).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            lanes[lane].push(i);
        }
        let halt_on_failure = self.manager.on_failure() == FailurePolicy::Halt;
        let finished: Vec<Vec<(usize, Outcome)>> = futures::stream::iter(lanes)
            .map(|lane| async move {
                let mut out = Vec::with_capacity(lane.len());
                for i in lane {
                    let item = &work[i];
                    let Reaction::Commands(commands) = &item.reaction else {
                        continue;
                    };
                    if shutdown.is_cancelled() {
                        out.push((i, Outcome::NotSent));
                        break;
                    }
                    let mut failures = Vec::new();
                    let mut interrupted = false;
                    for (index, command) in commands.iter().enumerate() {
                        match self
                            .send(&item.event, index, command.clone(), shutdown)
                            .await
                        {
                            Sent::Done => {}
                            Sent::Failed(reason) => failures.push(reason),
                            Sent::Interrupted => {
                                interrupted = true;
                                break;
                            }
                        }
                    }
                    if interrupted {
                        out.push((i, Outcome::NotSent));
                        break;
                    }
                    if failures.is_empty() {
                        out.push((i, Outcome::Done));
                    } else {
                        out.push((i, Outcome::Failed(failures)));
                        if halt_on_failure {
                            // Later events of this stream wait for the
                            // operator, like the failed one.
                            break;
                        }
                    }
                }
                out
            })
            .buffer_unordered(max)
            .collect()
            .await;
        let mut outcomes: Vec<Outcome> = work
            .iter()
            .map(|item| match &item.reaction {
                Reaction::Commands(c) if !c.is_empty() => Outcome::NotSent,
                _ => Outcome::Done,
            })
            .collect();
        for (i, outcome) in finished.into_iter().flatten() {
            outcomes[i] = outcome;
        }
        outcomes
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

/// How often, at most, a busy runner stores its checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The runner's checkpoint as stored, and when it was last stored.
struct Durable {
    position: Position,
    at: Instant,
}

/// One event of a batch and what the manager made of it.
struct Work<'e, C> {
    event: std::borrow::Cow<'e, EventEnvelope>,
    reaction: Reaction<C>,
}

/// The commands an event calls for, or why there are none.
enum Reaction<C> {
    /// The commands (none for events it does not follow).
    Commands(Vec<C>),
    /// The event did not decode, or `react` failed.
    Broken(ProjectionError),
}

/// How sending an event's commands ended.
enum Outcome {
    /// All accepted (or nothing to send).
    Done,
    /// Some failed for good: why, one entry per command.
    Failed(Vec<String>),
    /// Shutdown came first, or its lane stopped before it.
    NotSent,
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

//! The command handler: load → decide → append, with retries, idempotency
//! and snapshots.
//!
//! # Commands for one aggregate take turns inside a process
//!
//! Commands for the same stream that arrive in one process while another is
//! being handled queue up in that stream's *lane*. One task leads each busy
//! lane: it takes every queued command, decides them in order on the state
//! it already holds (each on the state the previous ones left), and appends
//! all their events in one append at the version it saw. So commands of one
//! process never conflict with each other, and a hot aggregate costs one
//! append per group, not one per command. Each command still gets its own
//! outcome (its own versions and position) or its own domain error.
//!
//! A conflict can only come from another process. Then the lane reloads the
//! stream and decides the group again, up to [`RetryPolicy::max_attempts`]
//! times with jittered exponential backoff, and then reports
//! [`CommandError::Conflict`].
//!
//! # Idempotency
//!
//! A command's event ids are derived from its command id (UUID v5), so the
//! store's own idempotency makes a repeated command append nothing; before
//! deciding, the lane also looks the command id up and answers a repeat with
//! the first outcome, even if the aggregate has moved on since.

use std::collections::{HashMap, HashSet, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::access::{Forbidden, Principal};
use crate::codec::{encode, unstored_decode_error, DecodeError, Upcasters};
use crate::envelope::{Metadata, NewEvent, Position, StreamId};
use crate::error::{InputError, SharedStoreError, StoreError};
use crate::store::{AppendRefused, AppendRequest, EventStore, ExpectedVersion};
use crate::write::aggregate::{Aggregate, Snapshot, SnapshotPolicy, SnapshotStore};

/// Who sent a command, and why: becomes every resulting event's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandContext {
    /// The command's id. Sending the same id twice appends once.
    pub command_id: Uuid,
    /// The request's correlation id; a new one when absent.
    pub correlation_id: Option<Uuid>,
    /// What caused the command (e.g. an event, for a process manager);
    /// the command id when absent.
    pub causation_id: Option<Uuid>,
    /// Who issues the command: recorded on every resulting event as the
    /// actor ([`Principal::actor`]) and shown to
    /// [`Aggregate::authorize`](crate::Aggregate::authorize). A command
    /// without one is refused ([`CommandError::NoActor`]): no event is
    /// recorded without an actor.
    #[serde(default)]
    pub principal: Option<Principal>,
    /// W3C trace context of the request.
    pub traceparent: Option<String>,
    /// A fingerprint of the request (e.g. a hash of its route and body),
    /// recorded in the events' metadata. A repeated command id whose
    /// fingerprint differs from the first one's is refused with
    /// [`CommandError::CommandMismatch`]. `None` skips the comparison.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl CommandContext {
    /// A context with a fresh command id.
    pub fn new() -> Self {
        Self::with_command_id(Uuid::now_v7())
    }

    /// A context for the given command id.
    pub fn with_command_id(command_id: Uuid) -> Self {
        CommandContext {
            command_id,
            correlation_id: None,
            causation_id: None,
            principal: None,
            traceparent: None,
            fingerprint: None,
        }
    }

    /// A context whose command id is derived from a client's idempotency
    /// key (see [`client_command_id`]), so a client can never choose an id
    /// that internal senders (process managers) use.
    pub fn from_client_key(principal: &str, key: &str) -> Self {
        Self::with_command_id(client_command_id(principal, key))
    }

    /// Sets the request fingerprint.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets who issues the command.
    pub fn principal(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }

    /// Sets a service of the system as the issuer: shorthand for
    /// `principal(Principal::service(name))`.
    pub fn actor(self, service: impl Into<String>) -> Self {
        self.principal(Principal::service(service))
    }

    /// A context with a fresh command id, issued by service `name`.
    pub fn system(name: impl Into<String>) -> Self {
        Self::new().actor(name)
    }

    fn metadata(&self, correlation_id: Uuid) -> Metadata {
        Metadata {
            correlation_id,
            causation_id: Some(self.causation_id.unwrap_or(self.command_id)),
            command_id: Some(self.command_id),
            actor: self.principal.as_ref().map(Principal::actor),
            traceparent: self.traceparent.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// The namespace of command ids derived from client keys.
const CLIENT_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x5d2c_6f1e_8a47_4b0c_9e3a_71c4_2f08_b5d1);

/// The command id for a client's idempotency key, scoped to the principal
/// that sent it: a UUID v5 in a namespace of its own.
///
/// Internal command ids (process managers', [`crate::caused_command_id`])
/// are UUID v5s of event ids; a client would need a SHA-1 preimage to make
/// its key land on one, so a key can never spend an internal id. Two
/// principals using the same key get different command ids.
pub fn client_command_id(principal: &str, key: &str) -> Uuid {
    let mut name = Vec::with_capacity(principal.len() + key.len() + 1);
    name.extend_from_slice(principal.as_bytes());
    name.push(0);
    name.extend_from_slice(key.as_bytes());
    Uuid::new_v5(&CLIENT_KEY_NAMESPACE, &name)
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The id of the `index`-th event of a command: a UUID v5 of the command id.
pub fn derived_event_id(command_id: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&command_id, &(index as u64).to_be_bytes())
}

/// Checks that `first`, the first event recorded under `ctx`'s command id,
/// was recorded by the same command: same stream, same fingerprint.
fn same_command<E: std::error::Error + 'static>(
    stream_id: &StreamId,
    ctx: &CommandContext,
    first: &crate::EventEnvelope,
) -> Result<(), CommandError<E>> {
    if first.stream_id != *stream_id {
        return Err(CommandError::CommandIdReused {
            command_id: ctx.command_id,
        });
    }
    if let (Some(now), Some(then)) = (&ctx.fingerprint, &first.metadata.fingerprint) {
        if now != then {
            return Err(CommandError::CommandMismatch {
                command_id: ctx.command_id,
            });
        }
    }
    Ok(())
}

/// What a handled command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The stream's version after the command.
    pub stream_version: u64,
    /// The global position of the command's last event (or of the stream's
    /// last event, when the command recorded none): wait for this position
    /// to read your own write.
    pub position: Position,
    /// How many events the command recorded.
    pub events: usize,
    /// True when this command id had been handled before: this is the first
    /// outcome, and nothing was appended now.
    pub duplicate: bool,
}

/// Why a command failed. Generic over the domain's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command. Show the error to the caller;
    /// HTTP 422 (or 404/409 as the domain sees fit). Nothing was written.
    #[error(transparent)]
    Domain(E),
    /// Another process kept changing the stream and the retries ran out.
    /// The caller may try again; HTTP 409. Nothing was written.
    #[error("version conflict on {stream_id} after {attempts} attempts (stream at {actual})")]
    Conflict {
        /// The stream.
        stream_id: StreamId,
        /// How many times the command was decided.
        attempts: u32,
        /// The stream's version at the last attempt.
        actual: u64,
    },
    /// The command id was already used for another stream. HTTP 409.
    #[error("command id {command_id} was already used on another stream")]
    CommandIdReused {
        /// The reused id.
        command_id: Uuid,
    },
    /// The command id was already used for a different request (its
    /// fingerprint differs from the first one's). HTTP 422. Nothing was
    /// written.
    #[error("command id {command_id} was already used for a different request")]
    CommandMismatch {
        /// The reused id.
        command_id: Uuid,
    },
    /// [`Aggregate::authorize`] refused the principal. HTTP 403 (401 for
    /// an anonymous principal). Nothing was written.
    #[error(transparent)]
    Forbidden(Forbidden),
    /// The command's context names no principal: nothing is recorded
    /// without an actor. A programming error of the caller; HTTP 500.
    #[error("the command names no principal (set CommandContext::principal)")]
    NoActor,
    /// The command's events broke a store limit. HTTP 400 / 413.
    #[error(transparent)]
    Input(InputError),
    /// A stored event of the stream could not be decoded. Log it (it names
    /// the event); HTTP 500.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The store failed. Log it; HTTP 503. Retrying with the same command id
    /// is safe.
    #[error(transparent)]
    Store(StoreError),
}

impl<E: std::error::Error + 'static> From<StoreError> for CommandError<E> {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Input(i) => CommandError::Input(i),
            other => CommandError::Store(other),
        }
    }
}

/// How conflicts with other processes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Times a command is decided at most (default 8).
    pub max_attempts: u32,
    /// Backoff before the third attempt; doubles each time (default 2 ms).
    /// The second attempt, right after the first conflict, goes at once:
    /// the handler has just read what the other process appended.
    pub base_delay: Duration,
    /// Longest backoff (default 200 ms). Each backoff is jittered to 50–100%.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        exp.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Counters of the command path, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Commands that recorded events (or none) successfully.
    pub succeeded: u64,
    /// Commands refused by the domain.
    pub rejected: u64,
    /// Commands refused by [`Aggregate::authorize`].
    pub forbidden: u64,
    /// Repeated command ids answered with the first outcome.
    pub duplicates: u64,
    /// Conflicts with other processes that led to taking in their events
    /// and deciding again.
    pub conflicts_retried: u64,
    /// Of those, the ones whose missed events came back with the refused
    /// append ([`EventStore::append_or_missed`]), so no read was needed.
    pub conflicts_caught_up: u64,
    /// Events taken in by [`CommandHandler::observe`] that moved a kept
    /// state on.
    pub observed: u64,
    /// Commands that failed for other reasons (conflicts out of retries, store).
    pub failed: u64,
}

/// Why a command of a group was refused before recording anything.
enum Refusal<E> {
    Domain(E),
    Forbidden(Forbidden),
}

type Reply<A> = oneshot::Sender<Result<CommandOutcome, CommandError<<A as Aggregate>::Error>>>;

struct Pending<A: Aggregate> {
    command: A::Command,
    ctx: CommandContext,
    reply: Reply<A>,
    /// Sent with [`CommandHandler::handle_new`]: the stream is presumed
    /// empty when no state of it is held.
    presume_new: bool,
}

struct Lane<A: Aggregate> {
    queue: VecDeque<Pending<A>>,
    leading: bool,
}

struct Inner<A: Aggregate, S> {
    store: S,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    snapshot_policy: SnapshotPolicy,
    upcasters: Upcasters,
    retry: RetryPolicy,
    max_events_per_append: usize,
    lanes: Mutex<HashMap<StreamId, Lane<A>>>,
    /// States of recently used aggregates, so a command need not reload.
    states: moka::sync::Cache<StreamId, Loaded<A>>,
    stats: Mutex<CommandStats>,
}

/// Handles commands for one aggregate type over an event store.
///
/// Cheap to clone; clones share lanes and counters.
pub struct CommandHandler<A: Aggregate, S: EventStore> {
    inner: Arc<Inner<A, S>>,
    _a: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> Clone for CommandHandler<A, S> {
    fn clone(&self) -> Self {
        CommandHandler {
            inner: Arc::clone(&self.inner),
            _a: PhantomData,
        }
    }
}

/// The state a lane holds between groups.
#[derive(Clone)]
struct Loaded<A> {
    state: A,
    version: u64,
    position: Position,
    /// True when known to be the stream's latest state: just loaded, or
    /// just appended to at the version it had. A cached state is not
    /// verified (another process may have moved the stream on).
    verified: bool,
}

impl<A: Aggregate, S: EventStore> CommandHandler<A, S> {
    /// A handler with no snapshots, no upcasters and the default retry policy.
    pub fn new(store: S) -> Self {
        CommandHandler {
            inner: Arc::new(Inner {
                store,
                snapshots: None,
                snapshot_policy: SnapshotPolicy::Never,
                upcasters: Upcasters::new(),
                retry: RetryPolicy::default(),
                max_events_per_append: crate::StoreLimits::default().max_events_per_append,
                lanes: Mutex::new(HashMap::new()),
                states: moka::sync::Cache::new(10_000),
                stats: Mutex::new(CommandStats::default()),
            }),
            _a: PhantomData,
        }
    }

    fn inner_mut(&mut self) -> &mut Inner<A, S> {
        Arc::get_mut(&mut self.inner).expect("configure the handler before cloning it")
    }

    /// Takes snapshots into `store` by `policy`, and loads from them.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self {
        let inner = self.inner_mut();
        inner.snapshots = Some(store);
        inner.snapshot_policy = policy;
        self
    }

    /// How many aggregate states to keep in memory between commands
    /// (default 10,000; 0 turns the cache off).
    pub fn with_state_cache(mut self, capacity: u64) -> Self {
        self.inner_mut().states = moka::sync::Cache::new(capacity);
        self
    }

    /// Upcasts old events on load.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.inner_mut().upcasters = upcasters;
        self
    }

    /// Sets the conflict retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.inner_mut().retry = retry;
        self
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Takes in an event of one of this aggregate's streams that was seen
    /// elsewhere (a process manager's subscription, say), so the state
    /// this handler keeps for the stream does not fall behind what other
    /// processes append. A kept state moves on only when the event is the
    /// next one (its version plus one); a stream's first event starts a
    /// state when none is kept; anything else (an older event, a gap, an
    /// event that does not decode, another aggregate's stream) changes
    /// nothing. The state stays unverified (ADR 0002): a command decided on
    /// it is checked by its append like any kept state. Returns whether the
    /// kept state moved.
    pub fn observe(&self, envelope: &crate::EventEnvelope) -> bool {
        if envelope.stream_type != A::STREAM_TYPE {
            return false;
        }
        let version = envelope.stream_version;
        let decode = || -> Option<A::Event> {
            let current = <A::Event as crate::DomainEvent>::schema_version(&envelope.event_type);
            if self.inner.upcasters.is_empty() && envelope.schema_version == current {
                crate::codec::decode_ref(&envelope.event_type, &envelope.payload).ok()
            } else {
                self.inner.upcasters.decode(envelope).ok()
            }
        };
        let result = self
            .inner
            .states
            .entry(envelope.stream_id.clone())
            .and_compute_with(|held| {
                use moka::ops::compute::Op;
                let mut next = match held {
                    Some(h) if h.value().version + 1 == version => h.into_value(),
                    None if version == 1 => Loaded {
                        state: A::default(),
                        version: 0,
                        position: Position::START,
                        verified: false,
                    },
                    _ => return Op::Nop,
                };
                let Some(event) = decode() else {
                    return Op::Nop;
                };
                next.state.evolve(&event);
                next.version = version;
                next.position = envelope.position;
                next.verified = false;
                Op::Put(next)
            });
        let moved = matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        );
        if moved {
            self.count(|s| s.observed += 1);
        }
        moved
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CommandStats {
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles a command: load the aggregate, decide, append.
    pub async fn handle(
        &self,
        stream_id: StreamId,
        command: A::Command,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.enqueue(stream_id, command, ctx, false).await
    }

    /// Handles a command that usually starts its stream, such as one for
    /// an id the caller has just made (a new order): when this handler
    /// holds no state of the stream, the command is decided on the empty
    /// stream without reading it first, saving the read.
    ///
    /// Nothing is lost when the presumption is wrong: the append expects
    /// no stream, so if the stream has events it conflicts, and the
    /// command is decided again on the stream as stored, exactly as
    /// [`handle`](Self::handle) would have decided it. A refusal or a
    /// command that records nothing is also checked against the stream as
    /// stored before it is answered. Use `handle` for streams that usually
    /// exist: there the presumption costs a failed append.
    pub async fn handle_new(
        &self,
        stream_id: StreamId,
        command: A::Command,
        ctx: CommandContext,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        self.enqueue(stream_id, command, ctx, true).await
    }

    async fn enqueue(
        &self,
        stream_id: StreamId,
        command: A::Command,
        ctx: CommandContext,
        presume_new: bool,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        if ctx.principal.is_none() {
            return Err(CommandError::NoActor);
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            command,
            ctx,
            reply,
            presume_new,
        };
        let lead = {
            let mut lanes = self.lock_lanes();
            let lane = lanes.entry(stream_id.clone()).or_insert_with(|| Lane {
                queue: VecDeque::new(),
                leading: false,
            });
            lane.queue.push_back(pending);
            !std::mem::replace(&mut lane.leading, true)
        };
        if lead {
            // The leader runs as its own task, so a caller that gives up
            // (drops this future) cannot strand the commands queued behind it.
            tokio::spawn(self.clone().lead(stream_id));
        }
        rx.await.unwrap_or_else(|_| {
            Err(CommandError::Store(StoreError::backend(
                "the command lane stopped before answering",
            )))
        })
    }

    /// Loads an aggregate's current state and version.
    ///
    /// The state read is kept as this handler's latest (unless it holds a
    /// newer one), so a command sent right after decides on it without
    /// reading the stream again.
    pub async fn load(&self, stream_id: &StreamId) -> Result<(A, u64), CommandError<A::Error>> {
        let loaded = self.load_state_from(stream_id, None).await?;
        let result = (loaded.state.clone(), loaded.version);
        self.inner
            .states
            .entry(stream_id.clone())
            .and_compute_with(|held| {
                use moka::ops::compute::Op;
                match held {
                    Some(h) if h.value().version >= loaded.version => Op::Nop,
                    _ => Op::Put(loaded),
                }
            });
        Ok(result)
    }

    fn lock_lanes(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Lane<A>>> {
        self.inner.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut CommandStats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    async fn lead(self, stream_id: StreamId) {
        /// Removes the lane if the leader stops abnormally (a panic in domain
        /// code): the queued commands get an error instead of waiting forever.
        struct Guard<'a, A: Aggregate, S: EventStore> {
            handler: &'a CommandHandler<A, S>,
            stream_id: &'a StreamId,
            done: bool,
        }
        impl<A: Aggregate, S: EventStore> Drop for Guard<'_, A, S> {
            fn drop(&mut self) {
                if !self.done {
                    tracing::error!(stream = %self.stream_id, "a command lane stopped abnormally");
                    self.handler.lock_lanes().remove(self.stream_id);
                }
            }
        }
        let mut guard = Guard {
            handler: &self,
            stream_id: &stream_id,
            done: false,
        };
        self.lead_lane(&stream_id).await;
        guard.done = true;
    }

    async fn lead_lane(&self, stream_id: &StreamId) {
        let stream_id = stream_id.clone();
        let mut loaded: Option<Loaded<A>> = self.inner.states.remove(&stream_id).map(|l| Loaded {
            verified: false,
            ..l
        });
        loop {
            let group: Vec<Pending<A>> = {
                let mut lanes = self.lock_lanes();
                let Some(lane) = lanes.get_mut(&stream_id) else {
                    return;
                };
                if lane.queue.is_empty() {
                    lanes.remove(&stream_id);
                    if let Some(l) = loaded.take() {
                        self.inner.states.insert(stream_id.clone(), l);
                    }
                    return;
                }
                lane.queue.drain(..).collect()
            };
            let leftover = self.run_group(&stream_id, group, &mut loaded).await;
            if !leftover.is_empty() {
                let mut lanes = self.lock_lanes();
                if let Some(lane) = lanes.get_mut(&stream_id) {
                    for p in leftover.into_iter().rev() {
                        lane.queue.push_front(p);
                    }
                }
            }
        }
    }

    /// The stream's latest state: from `start` (a state this handler knew
    /// at some version) if given, else from the state cache, else from the
    /// latest snapshot, else from the stream's start; then the events
    /// recorded after it are read and applied. A state cached or held from
    /// an earlier command is true at its version (a stream only grows), so
    /// only the events after it are read: a stream another process moved
    /// on costs one read of what it appended, not a reload.
    async fn load_state_from(
        &self,
        stream_id: &StreamId,
        start: Option<Loaded<A>>,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = match start.or_else(|| self.inner.states.get(stream_id)) {
            Some(l) => l,
            None => self.load_snapshot(stream_id).await,
        };
        const PAGE: usize = 10_000;
        loop {
            let events = self
                .inner
                .store
                .read_stream_raw(stream_id, loaded.version + 1, PAGE)
                .await?;
            let n = events.len();
            for raw in events {
                loaded.version = raw.stream_version;
                loaded.position = raw.position;
                let event: A::Event = self.inner.upcasters.decode_raw(stream_id, raw)?;
                loaded.state.evolve(&event);
            }
            if n < PAGE {
                loaded.verified = true;
                return Ok(loaded);
            }
        }
    }

    /// `held` moved on by the events a refused append brought back
    /// (`missed`), when they follow it without a gap and reach the version
    /// the store reported (`actual`): the stream's state as stored, with no
    /// read. `None` when they do not (too many, none, or one does not
    /// decode): the caller reads instead.
    fn fold_missed(
        &self,
        stream_id: &StreamId,
        held: &Loaded<A>,
        missed: Vec<crate::store::StreamEvent>,
        actual: u64,
    ) -> Option<Loaded<A>> {
        if missed.last().map(|e| e.stream_version) != Some(actual)
            || missed.first().map(|e| e.stream_version) != Some(held.version + 1)
        {
            return None;
        }
        let mut next = Loaded {
            state: held.state.clone(),
            version: held.version,
            position: held.position,
            verified: true,
        };
        for raw in missed {
            if raw.stream_version != next.version + 1 {
                return None;
            }
            next.version = raw.stream_version;
            next.position = raw.position;
            let event: A::Event = self.inner.upcasters.decode_raw(stream_id, raw).ok()?;
            next.state.evolve(&event);
        }
        Some(next)
    }

    /// The latest snapshot's state, or the initial state when there is no
    /// usable snapshot.
    async fn load_snapshot(&self, stream_id: &StreamId) -> Loaded<A> {
        let initial = Loaded {
            state: A::default(),
            version: 0,
            position: Position::START,
            verified: true,
        };
        let Some(snapshots) = &self.inner.snapshots else {
            return initial;
        };
        match snapshots.load(stream_id).await {
            Ok(Some(s)) if s.schema_version == A::SNAPSHOT_VERSION => {
                match serde_json::from_value::<A>(s.state) {
                    Ok(state) => Loaded {
                        state,
                        version: s.version,
                        position: s.position,
                        verified: true,
                    },
                    Err(e) => {
                        tracing::warn!(
                            stream = %stream_id, error = %e,
                            "snapshot does not deserialise; rebuilding from events"
                        );
                        initial
                    }
                }
            }
            Ok(_) => initial,
            Err(e) => {
                tracing::warn!(
                    stream = %stream_id, error = %e,
                    "snapshot load failed; rebuilding from events"
                );
                initial
            }
        }
    }

    /// The first outcome of the command `ctx` names, if its id was handled
    /// before (and recorded events): look it up *before* validating a
    /// command against state that may have changed since (other
    /// aggregates, the catalog), so a repeat answers what the first request
    /// did whatever happened in between. The same look-up happens anyway
    /// inside [`CommandHandler::handle`] for commands a state refuses or
    /// that record nothing.
    ///
    /// Fails with [`CommandError::CommandIdReused`] when the id was used on
    /// another stream, and [`CommandError::CommandMismatch`] when the first
    /// request had another fingerprint.
    pub async fn repeat_of(
        &self,
        stream_id: &StreamId,
        ctx: &CommandContext,
    ) -> Result<Option<CommandOutcome>, CommandError<A::Error>> {
        let found = self
            .inner
            .store
            .events_by_id(&[derived_event_id(ctx.command_id, 0)])
            .await?;
        let Some(first) = found.into_iter().next() else {
            return Ok(None);
        };
        same_command(stream_id, ctx, &first)?;
        let outcome = self.outcome_from(stream_id, ctx.command_id, &first).await?;
        self.count(|s| s.duplicates += 1);
        Ok(Some(outcome))
    }

    /// The outcome of the command whose first event is `first`: its events
    /// are contiguous from there.
    async fn outcome_from(
        &self,
        stream_id: &StreamId,
        command_id: Uuid,
        first: &crate::EventEnvelope,
    ) -> Result<CommandOutcome, StoreError> {
        let events = self
            .inner
            .store
            .read_stream(stream_id, first.stream_version, 1_000)
            .await?;
        let mine: Vec<_> = events
            .iter()
            .take_while(|e| e.metadata.command_id == Some(command_id))
            .collect();
        let last = mine.last().copied().unwrap_or(first);
        Ok(CommandOutcome {
            stream_id: stream_id.clone(),
            stream_version: last.stream_version,
            position: last.position,
            events: mine.len(),
            duplicate: true,
        })
    }

    /// Answers repeated command ids with their first outcome. Returns the
    /// commands still to decide.
    async fn answer_repeats(
        &self,
        stream_id: &StreamId,
        group: Vec<Pending<A>>,
    ) -> Result<Vec<Pending<A>>, (Vec<Pending<A>>, StoreError)> {
        let ids: Vec<Uuid> = group
            .iter()
            .map(|p| derived_event_id(p.ctx.command_id, 0))
            .collect();
        let found = match self.inner.store.events_by_id(&ids).await {
            Ok(found) => found,
            Err(e) => return Err((group, e)),
        };
        if found.is_empty() {
            return Ok(group);
        }
        let mut first_events: HashMap<Uuid, crate::EventEnvelope> = found
            .into_iter()
            .filter_map(|e| e.metadata.command_id.map(|c| (c, e)))
            .collect();
        let mut rest = Vec::with_capacity(group.len());
        for p in group {
            let Some(first) = first_events.get(&p.ctx.command_id).cloned() else {
                rest.push(p);
                continue;
            };
            if let Err(e) = same_command(stream_id, &p.ctx, &first) {
                let _ = p.reply.send(Err(e));
                continue;
            }
            let outcome = self
                .outcome_from(stream_id, p.ctx.command_id, &first)
                .await
                .map_err(CommandError::from);
            first_events.insert(p.ctx.command_id, first);
            self.count(|s| s.duplicates += 1);
            let _ = p.reply.send(outcome);
        }
        Ok(rest)
    }

    /// Decides and appends one group. Returns commands that did not fit in
    /// one append, to run next.
    async fn run_group(
        &self,
        stream_id: &StreamId,
        group: Vec<Pending<A>>,
        loaded: &mut Option<Loaded<A>>,
    ) -> Vec<Pending<A>> {
        let mut group = group;
        let mut attempt = 0u32;
        // Repeated command ids are found lazily: an append of the same
        // events is answered by the store as a duplicate (or refused as
        // reused ids), and a refusal or a no-op is checked against the store
        // before it is reported.
        let mut repeats_checked = false;
        // Set when the held state is known (or suspected) to be behind the
        // stream: the next attempt first reads what was appended after it.
        let mut catch_up = false;
        loop {
            if group.is_empty() {
                return Vec::new();
            }
            attempt += 1;
            if loaded.is_none() && attempt == 1 && group[0].presume_new {
                // `handle_new`: the empty stream, to be verified by the
                // append (it expects no stream) like any held state.
                *loaded = Some(Loaded {
                    state: A::default(),
                    version: 0,
                    position: Position::START,
                    verified: false,
                });
            }
            let current = match loaded.take() {
                Some(l) if !catch_up => l,
                held => match self.load_state_from(stream_id, held).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(stream = %stream_id, error = %e, "loading the aggregate failed");
                        match e {
                            CommandError::Decode(d) => {
                                self.fail_all(group, |_| CommandError::Decode(d.clone()));
                            }
                            CommandError::Store(s) => self.fail_backend(group, s),
                            CommandError::Input(i) => {
                                self.fail_all(group, |_| CommandError::Input(i.clone()));
                            }
                            // Loading fails only with the three above.
                            other => {
                                self.fail_backend(group, StoreError::backend(other.to_string()));
                            }
                        }
                        return Vec::new();
                    }
                },
            };
            catch_up = false;

            // Decide every command in order on the evolving state.
            let mut state = current.state.clone();
            let mut events: Vec<NewEvent> = Vec::new();
            // Per command: Ok(number of events) or the domain error.
            let mut decisions: Vec<Result<usize, Refusal<A::Error>>> =
                Vec::with_capacity(group.len());
            // Same command id twice in one group: the later ones repeat the first.
            let mut seen_ids: HashMap<Uuid, usize> = HashMap::new();
            let mut fits = group.len();
            // Commands whose events the store cannot hold: answered alone,
            // so they never fail the commands they share an append with.
            let mut unstorable: HashMap<usize, crate::InputError> = HashMap::new();
            for (i, p) in group.iter().enumerate() {
                if seen_ids.contains_key(&p.ctx.command_id) {
                    decisions.push(Ok(0));
                    continue;
                }
                seen_ids.insert(p.ctx.command_id, i);
                if let Some(who) = &p.ctx.principal {
                    if let Err(f) = state.authorize(&p.command, who) {
                        decisions.push(Err(Refusal::Forbidden(f)));
                        continue;
                    }
                }
                match state.decide(&p.command) {
                    Ok(new) => {
                        if !events.is_empty()
                            && events.len() + new.len() > self.inner.max_events_per_append
                        {
                            fits = i;
                            break;
                        }
                        let correlation = p.ctx.correlation_id.unwrap_or_else(Uuid::now_v7);
                        let metadata = p.ctx.metadata(correlation);
                        let mut encoded = Vec::with_capacity(new.len());
                        for (k, e) in new.iter().enumerate() {
                            match encode(e) {
                                Ok((ty, payload)) => encoded.push(NewEvent {
                                    event_id: derived_event_id(p.ctx.command_id, k),
                                    schema_version:
                                        <A::Event as crate::DomainEvent>::schema_version(&ty),
                                    event_type: ty,
                                    payload,
                                    metadata: metadata.clone(),
                                    recorded_at: None,
                                }),
                                Err(kind) => {
                                    let err = unstored_decode_error(stream_id, "?", kind);
                                    tracing::error!(error = %err, "an event failed to encode");
                                    self.fail_all(group, |_| CommandError::Decode(err.clone()));
                                    return Vec::new();
                                }
                            }
                        }
                        if let Some(e) = encoded.iter().find_map(|e| e.check_storable().err()) {
                            unstorable.insert(i, e);
                            decisions.push(Ok(0));
                            continue;
                        }
                        for e in &new {
                            state.evolve(e);
                        }
                        decisions.push(Ok(encoded.len()));
                        events.extend(encoded);
                    }
                    Err(e) => decisions.push(Err(Refusal::Domain(e))),
                }
            }
            let leftover: Vec<Pending<A>> = group.split_off(fits);
            decisions.truncate(fits);
            if !unstorable.is_empty() {
                // Refuse those, and decide the others again without them.
                let mut rest = Vec::with_capacity(group.len());
                for (i, p) in group.into_iter().enumerate() {
                    match unstorable.remove(&i) {
                        Some(e) => self.fail_all(vec![p], |_| CommandError::Input(e.clone())),
                        None => rest.push(p),
                    }
                }
                group = rest;
                group.extend(leftover);
                *loaded = Some(current);
                attempt -= 1;
                continue;
            }

            // A refusal (or a no-op) decided on a cached state may be due to
            // the state being stale: decide again on the stream as stored.
            let refused_or_noop = decisions.iter().any(|d| matches!(d, Err(_) | Ok(0)));
            if !current.verified && refused_or_noop {
                *loaded = Some(current);
                catch_up = true;
                group.extend(leftover);
                continue;
            }
            if refused_or_noop && !repeats_checked {
                repeats_checked = true;
                let before = group.len();
                group = match self.answer_repeats(stream_id, group).await {
                    Ok(g) => g,
                    Err((g, e)) => {
                        self.fail_backend(g, e);
                        return leftover;
                    }
                };
                if group.len() != before {
                    // Some were repeats: decide the rest again.
                    *loaded = Some(current);
                    group.extend(leftover);
                    attempt -= 1;
                    continue;
                }
            }

            // The append, unless the group decided no events.
            let count = events.len() as u64;
            let appended = if events.is_empty() {
                None
            } else {
                let request = AppendRequest::new(
                    stream_id.clone(),
                    A::STREAM_TYPE,
                    ExpectedVersion::from_seen(current.version),
                    events,
                );
                match self.inner.store.append_or_missed(request).await {
                    Ok(outcome) => Some(outcome),
                    Err(AppendRefused {
                        error: StoreError::Conflict { actual, .. },
                        missed,
                    }) => {
                        self.count(|s| s.conflicts_retried += 1);
                        if attempt >= self.inner.retry.max_attempts {
                            let attempts = attempt;
                            self.fail_all(group, |_| CommandError::Conflict {
                                stream_id: stream_id.clone(),
                                attempts,
                                actual,
                            });
                            return leftover;
                        }
                        // Another process appended: take in what it appended
                        // (brought by the refusal when the store read it,
                        // else read) and decide again. The first retry goes
                        // at once (the state is then the stream's); later
                        // ones back off, as the stream is contended.
                        if attempt > 1 {
                            tokio::time::sleep(self.inner.retry.delay(attempt - 2)).await;
                        }
                        match self.fold_missed(stream_id, &current, missed, actual) {
                            Some(caught_up) => {
                                self.count(|s| s.conflicts_caught_up += 1);
                                *loaded = Some(caught_up);
                            }
                            None => {
                                *loaded = Some(current);
                                catch_up = true;
                            }
                        }
                        group.extend(leftover);
                        continue;
                    }
                    Err(AppendRefused {
                        error: StoreError::EventIdReused { .. },
                        ..
                    }) => {
                        // A command of the group was handled before: answer it
                        // from the store, decide the rest afresh.
                        repeats_checked = true;
                        group.extend(leftover);
                        group = match self.answer_repeats(stream_id, group).await {
                            Ok(g) => g,
                            Err((g, e)) => {
                                self.fail_backend(g, e);
                                return Vec::new();
                            }
                        };
                        if attempt >= self.inner.retry.max_attempts {
                            self.fail_all(group, |_| CommandError::Conflict {
                                stream_id: stream_id.clone(),
                                attempts: attempt,
                                actual: 0,
                            });
                            return Vec::new();
                        }
                        continue;
                    }
                    Err(AppendRefused { error: e, .. }) => {
                        tracing::error!(stream = %stream_id, error = %e, "append failed");
                        match e {
                            StoreError::Input(i) => {
                                self.fail_all(group, |_| CommandError::Input(i.clone()));
                            }
                            other => self.fail_backend(group, other),
                        }
                        return leftover;
                    }
                }
            };
            // `duplicate`: another process appended exactly these events
            // (the same command ids) first. Those sent with another
            // fingerprint were other requests.
            let mismatched = match &appended {
                Some(outcome) if outcome.duplicate => self.mismatched_fingerprints(&group).await,
                _ => HashSet::new(),
            };
            self.reply_group(
                stream_id,
                group,
                decisions,
                &seen_ids,
                &current,
                appended.as_ref(),
                &mismatched,
            );
            match appended {
                None => *loaded = Some(Loaded { state, ..current }),
                Some(outcome) => {
                    let next = Loaded {
                        state,
                        version: outcome.stream_version,
                        position: outcome.position,
                        verified: true,
                    };
                    if outcome.duplicate || next.version != current.version + count {
                        // Someone else wrote these events: our state may
                        // have counted them twice. Reload next time.
                        *loaded = None;
                    } else {
                        self.maybe_snapshot(stream_id, current.version, &next);
                        *loaded = Some(next);
                    }
                }
            }
            return leftover;
        }
    }

    /// The command ids of `group` whose first recorded event carries
    /// another fingerprint than the command (a failed look-up counts as
    /// none: the append was a duplicate, so the ids were recorded).
    async fn mismatched_fingerprints(&self, group: &[Pending<A>]) -> HashSet<Uuid> {
        let ids: Vec<Uuid> = group
            .iter()
            .filter(|p| p.ctx.fingerprint.is_some())
            .map(|p| derived_event_id(p.ctx.command_id, 0))
            .collect();
        if ids.is_empty() {
            return HashSet::new();
        }
        let found = match self.inner.store.events_by_id(&ids).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "looking up repeated commands failed");
                return HashSet::new();
            }
        };
        let recorded: HashMap<Uuid, Option<String>> = found
            .into_iter()
            .filter_map(|e| e.metadata.command_id.map(|c| (c, e.metadata.fingerprint)))
            .collect();
        group
            .iter()
            .filter(
                |p| match (&p.ctx.fingerprint, recorded.get(&p.ctx.command_id)) {
                    (Some(now), Some(Some(then))) => now != then,
                    _ => false,
                },
            )
            .map(|p| p.ctx.command_id)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn reply_group(
        &self,
        stream_id: &StreamId,
        group: Vec<Pending<A>>,
        decisions: Vec<Result<usize, Refusal<A::Error>>>,
        seen_ids: &HashMap<Uuid, usize>,
        before: &Loaded<A>,
        appended: Option<&crate::AppendOutcome>,
        mismatched: &HashSet<Uuid>,
    ) {
        // Versions and positions count from the append as stored (for a
        // duplicate, the original append), else from the loaded state.
        let duplicate = appended.is_some_and(|a| a.duplicate);
        let base_version = appended.map_or(before.version, |a| a.first_version - 1);
        let first_position = appended.map(|a| a.first_position);
        // Outcome of each first-seen command, by index.
        let mut outcomes: Vec<Option<CommandOutcome>> = Vec::with_capacity(group.len());
        let mut version = base_version;
        let mut position = before.position;
        for (i, (p, d)) in group.iter().zip(&decisions).enumerate() {
            let first = seen_ids.get(&p.ctx.command_id).copied() == Some(i);
            match d {
                Ok(n) if first => {
                    if *n > 0 {
                        let start = first_position.unwrap_or(before.position);
                        let offset = version - base_version;
                        version += *n as u64;
                        position = Position(start.0 + offset + *n as u64 - 1);
                    }
                    outcomes.push(Some(CommandOutcome {
                        stream_id: stream_id.clone(),
                        stream_version: version,
                        position,
                        events: *n,
                        duplicate,
                    }));
                }
                _ => outcomes.push(None),
            }
        }
        let fingerprints: Vec<Option<String>> =
            group.iter().map(|p| p.ctx.fingerprint.clone()).collect();
        let mut decisions = decisions.into_iter();
        for (i, p) in group.into_iter().enumerate() {
            let decision = decisions.next();
            let first_idx = seen_ids.get(&p.ctx.command_id).copied().unwrap_or(i);
            let mismatch = matches!(
                (&fingerprints[first_idx], &p.ctx.fingerprint),
                (Some(a), Some(b)) if a != b
            );
            let result = if (first_idx != i && mismatch) || mismatched.contains(&p.ctx.command_id) {
                Err(CommandError::CommandMismatch {
                    command_id: p.ctx.command_id,
                })
            } else if first_idx != i {
                // A repeat inside the group: the first's outcome, as a duplicate.
                match &outcomes[first_idx] {
                    Some(o) => {
                        self.count(|s| s.duplicates += 1);
                        Ok(CommandOutcome {
                            duplicate: true,
                            ..o.clone()
                        })
                    }
                    None => Err(CommandError::Conflict {
                        stream_id: stream_id.clone(),
                        attempts: 1,
                        actual: version,
                    }),
                }
            } else {
                match decision {
                    Some(Err(Refusal::Domain(e))) => {
                        self.count(|s| s.rejected += 1);
                        Err(CommandError::Domain(e))
                    }
                    Some(Err(Refusal::Forbidden(f))) => {
                        self.count(|s| s.forbidden += 1);
                        Err(CommandError::Forbidden(f))
                    }
                    _ => {
                        self.count(|s| s.succeeded += 1);
                        Ok(outcomes[i].clone().expect("outcome of a decided command"))
                    }
                }
            };
            let _ = p.reply.send(result);
        }
    }

    fn fail_all(
        &self,
        group: Vec<Pending<A>>,
        mut error: impl FnMut(&Pending<A>) -> CommandError<A::Error>,
    ) {
        for p in group {
            self.count(|s| s.failed += 1);
            let e = error(&p);
            let _ = p.reply.send(Err(e));
        }
    }

    /// Fails every command of `group` with the same store error, typed
    /// (a backend cause is shared, not turned into text).
    fn fail_backend(&self, group: Vec<Pending<A>>, e: StoreError) {
        let shared = SharedStoreError::from(e);
        self.fail_all(group, |_| CommandError::Store(shared.get()));
    }

    fn maybe_snapshot(&self, stream_id: &StreamId, before: u64, next: &Loaded<A>) {
        let Some(snapshots) = &self.inner.snapshots else {
            return;
        };
        if !self.inner.snapshot_policy.due(before, next.version) {
            return;
        }
        let state = match serde_json::to_value(&next.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(stream = %stream_id, error = %e, "state does not serialise; no snapshot");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream_id.clone(),
            stream_type: A::STREAM_TYPE.to_owned(),
            version: next.version,
            position: next.position,
            schema_version: A::SNAPSHOT_VERSION,
            state,
        };
        let snapshots = Arc::clone(snapshots);
        tokio::spawn(async move {
            if let Err(e) = snapshots.save(snapshot).await {
                tracing::warn!(error = %e, "saving a snapshot failed");
            }
        });
    }
}

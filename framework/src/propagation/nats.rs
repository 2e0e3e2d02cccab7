//! NATS JetStream: the relay from the store into a stream, and the bus that
//! projectors and process managers consume from.
//!
//! # One stream, one subject per event, sequence = position
//!
//! The relay publishes the event at position *p* to
//! `<prefix>.<stream type>.<stream id>` with `Nats-Expected-Last-Sequence:
//! p − 1` and `Nats-Msg-Id: <event id>`. JetStream accepts a message only if
//! the stream's last sequence is *p − 1*, so the stream's sequence *is* the
//! store position: nothing can be published twice, skipped or reordered,
//! whatever the relay instances do, and publishes can be pipelined (a failed
//! one makes every later one fail too). The resume point is the stream's
//! last sequence: there is no second checkpoint to drift.
//!
//! [`changes`]: the change feed over NATS ([`NatsChangeFeed`]).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::envelope::{EventEnvelope, Position};
use crate::propagation::bus::{Ack, BusError, Delivery, EventBus, Subscription};
use crate::store::follow::Follower;
use crate::store::{EventFilter, EventStore};
use crate::views::store::Leases;
use crate::write::aggregate::BoxFuture;

pub mod changes;

pub use changes::NatsChangeFeed;

/// Where events go in JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The JetStream stream's name (default `STRATA`).
    pub stream: String,
    /// The subject prefix (default `strata`): subjects are
    /// `<prefix>.<stream type>.<stream id>`.
    pub prefix: String,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            stream: "STRATA".into(),
            prefix: "strata".into(),
        }
    }
}

impl StreamConfig {
    /// A config with the given stream name and subject prefix.
    pub fn new(stream: impl Into<String>, prefix: impl Into<String>) -> Self {
        StreamConfig {
            stream: stream.into(),
            prefix: prefix.into(),
        }
    }

    /// The subject of an event.
    pub fn subject(&self, e: &EventEnvelope) -> String {
        format!("{}.{}.{}", self.prefix, e.stream_type, e.stream_id)
    }

    /// Creates the stream if it does not exist.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<stream::Stream, BusError> {
        js.get_or_create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(BusError::unavailable)
    }
}

/// Header names of published events.
pub mod headers {
    /// The event's global position.
    pub const POSITION: &str = "Strata-Position";
    /// The event's id.
    pub const EVENT_ID: &str = "Strata-Event-Id";
    /// The event's type.
    pub const EVENT_TYPE: &str = "Strata-Event-Type";
    /// The payload's schema version.
    pub const SCHEMA_VERSION: &str = "Strata-Schema-Version";
    /// The correlation id.
    pub const CORRELATION_ID: &str = "Strata-Correlation-Id";
    /// The causation id.
    pub const CAUSATION_ID: &str = "Strata-Causation-Id";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// Connects to NATS with sensible defaults (retry on initial connect).
pub async fn connect(url: &str) -> Result<async_nats::Client, BusError> {
    connect_with(url, async_nats::ConnectOptions::new()).await
}

/// Connects to NATS with `options` (credentials, TLS: whatever the
/// deployment needs) and the defaults of [`connect`]: a 5 s connection
/// timeout, and retry on initial connect, so this returns at once and the
/// client connects when the server is up.
///
/// Because of the retry, a refused password or a failed TLS handshake is
/// not an error here: the client keeps trying (and logs each failure). A
/// caller that wants a misconfiguration to fail fast connects once without
/// retry first, as the example shop's `config::connect_nats` does.
pub async fn connect_with(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, BusError> {
    options
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(BusError::unavailable)
}

/// The relay's status, for `/metrics` and the admin CLI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatus {
    /// True while this instance is the active relay.
    pub active: bool,
    /// The last position JetStream acknowledged.
    pub published: Position,
    /// Store head minus published, when known.
    pub lag: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// Errors that stop an active relay run (all are retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// Taking the relay lease failed.
    #[error(transparent)]
    Lease(#[from] crate::views::store::ViewError),
    /// The lease's connection closed: another relay may be active.
    #[error("the relay lease was lost")]
    LeaseLost,
    /// The JetStream stream holds something other than this store's events.
    #[error("JetStream stream {stream} does not match the event store: {reason}")]
    Mismatch {
        /// The stream.
        stream: String,
        /// What differs.
        reason: String,
    },
}

/// Carries events from the store into JetStream, in order, exactly once.
pub struct Relay<S, V> {
    store: S,
    leases: V,
    js: jetstream::Context,
    config: StreamConfig,
    batch_size: usize,
    status: watch::Sender<RelayStatus>,
}

impl<S: EventStore, V: Leases> Relay<S, V> {
    /// A relay from `store` into JetStream; `leases` provides the lock that
    /// keeps one relay active (a Postgres advisory lock for `PgViewStore`).
    pub fn new(store: S, leases: V, client: async_nats::Client, config: StreamConfig) -> Self {
        Relay {
            store,
            leases,
            js: jetstream::new(client),
            config,
            batch_size: 1_000,
            status: watch::Sender::new(RelayStatus {
                active: false,
                published: Position::START,
                lag: 0,
                last_error: None,
            }),
        }
    }

    /// Most events read and published per batch (default 1,000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// A live view of the status.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown`. Stands by while another relay is active;
    /// after any failure (NATS or Postgres down, lease lost) backs off and
    /// resumes from the stream's last sequence.
    pub async fn run(self, shutdown: CancellationToken) {
        crate::supervise::supervise(
            &shutdown,
            || self.run_active(&shutdown),
            |e: &RelayError| {
                if matches!(e, RelayError::Mismatch { .. }) {
                    tracing::error!(error = %e, "relay cannot run: the stream does not belong to this event store");
                } else {
                    tracing::warn!(error = %e, "relay interrupted; resuming from the stream's last sequence");
                }
                self.status.send_modify(|s| {
                    s.active = false;
                    s.last_error = Some(e.to_string());
                });
            },
        )
        .await;
        self.status.send_modify(|s| s.active = false);
    }

    /// The position the stream has reached, checked against the store.
    async fn resume_point(&self, stream: &mut stream::Stream) -> Result<Position, RelayError> {
        match check_stream(stream, &StoreProbe::new(self.store.clone())).await? {
            Ok(p) => Ok(p),
            Err(reason) => Err(RelayError::Mismatch {
                stream: self.config.stream.clone(),
                reason,
            }),
        }
    }

    async fn run_active(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        // Lease names are [a-z][a-z0-9_]{0,39}: map the stream name into that.
        let sanitized: String = self
            .config
            .stream
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(34)
            .collect();
        let lease_name = format!("relay_{sanitized}");
        let mut lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            l = self.leases.acquire(&lease_name) => l?,
        };
        let mut stream = self.config.ensure(&self.js).await?;
        let start = self.resume_point(&mut stream).await?;
        tracing::info!(stream = %self.config.stream, from = %start, "relay active");
        self.status.send_modify(|s| {
            s.active = true;
            s.published = start;
        });
        let mut follower = Follower::new(self.store.clone(), start).batch_size(self.batch_size);
        let mut lease_checked = Instant::now();
        // Acks of the previous batch, awaited while the next one is read
        // and sent: reading the store overlaps publishing.
        let mut in_flight: Vec<(Position, jetstream::context::PublishAckFuture)> = Vec::new();
        loop {
            let batch = if in_flight.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = follower.next_batch() => b?,
                }
            } else {
                match follower.try_next_batch().await? {
                    Some(b) => b,
                    None => {
                        self.settle(&mut in_flight).await?;
                        continue;
                    }
                }
            };
            if lease_checked.elapsed() > Duration::from_secs(2) {
                if !lease.still_held().await {
                    return Err(RelayError::LeaseLost);
                }
                lease_checked = Instant::now();
            }
            let mut sent = Vec::with_capacity(batch.len());
            for e in &batch {
                let ack = self
                    .js
                    .send_publish(self.config.subject(e), publish(e)?)
                    .await
                    .map_err(BusError::unavailable)?;
                sent.push((e.position, ack));
            }
            self.settle(&mut in_flight).await?;
            in_flight = sent;
            if shutdown.is_cancelled() {
                self.settle(&mut in_flight).await?;
                return Ok(());
            }
        }
    }

    /// Awaits the acks of a sent batch, in order, and records progress.
    async fn settle(
        &self,
        in_flight: &mut Vec<(Position, jetstream::context::PublishAckFuture)>,
    ) -> Result<(), RelayError> {
        let mut last = None;
        for (position, ack) in in_flight.drain(..) {
            ack.await.map_err(BusError::unavailable)?;
            last = Some(position);
        }
        if let Some(published) = last {
            let head = self
                .store
                .wait_for_head(published, Duration::ZERO)
                .await
                .unwrap_or(published);
            self.status.send_modify(|s| {
                s.published = published;
                s.lag = head.0.saturating_sub(published.0);
                s.last_error = None;
            });
        }
        Ok(())
    }
}

/// The event at a position of the store, if any.
type ProbeResult = Result<Option<EventEnvelope>, crate::StoreError>;

/// Reads the event at one position of an event store, whatever its type.
#[derive(Clone)]
struct StoreProbe(
    std::sync::Arc<dyn Fn(Position) -> BoxFuture<'static, ProbeResult> + Send + Sync>,
);

impl StoreProbe {
    fn new<S: EventStore>(store: S) -> Self {
        StoreProbe(std::sync::Arc::new(move |p: Position| {
            let store = store.clone();
            Box::pin(async move {
                let events = store
                    .read_all(Position(p.0 - 1), 1, &EventFilter::all())
                    .await?;
                Ok(events.into_iter().next().filter(|e| e.position == p))
            })
        }))
    }

    async fn at(&self, p: Position) -> Result<Option<EventEnvelope>, crate::StoreError> {
        (self.0)(p).await
    }
}

impl std::fmt::Debug for StoreProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreProbe")
    }
}

/// Checks that a JetStream stream holds this store's events: its last
/// message must be the store's event at that position (sequence =
/// position), with the same event id. Returns the stream's last sequence,
/// or (inner `Err`) why the stream belongs to another store.
///
/// The relay only ever publishes what the store holds, so a stream of this
/// store is never ahead of it; a stream beyond the store's head, or with
/// another event at a position, was filled from another store.
async fn check_stream(
    stream: &mut stream::Stream,
    store: &StoreProbe,
) -> Result<Result<Position, String>, BusError> {
    let info = stream.info().await.map_err(BusError::unavailable)?;
    let last = info.state.last_sequence;
    if last == 0 {
        return Ok(Ok(Position::START));
    }
    let msg = stream
        .get_raw_message(last)
        .await
        .map_err(BusError::unavailable)?;
    let Some(stored) = store.at(Position(last)).await? else {
        return Ok(Err(format!(
            "stream is at sequence {last}, beyond the store's head"
        )));
    };
    let id = msg
        .headers
        .get(headers::EVENT_ID)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    if id != stored.event_id.to_string() {
        return Ok(Err(format!(
            "message {last} is event {id:?}, the store has {} there",
            stored.event_id
        )));
    }
    Ok(Ok(Position(last)))
}

fn publish(e: &EventEnvelope) -> Result<jetstream::context::Publish, RelayError> {
    let body = serde_json::to_vec(e).map_err(crate::StoreError::backend)?;
    let mut p = jetstream::context::Publish::build()
        .payload(body.into())
        .message_id(e.event_id.to_string())
        .expected_last_sequence(e.position.0 - 1)
        .header(headers::POSITION, e.position.to_string().as_str())
        .header(headers::EVENT_ID, e.event_id.to_string().as_str())
        .header(headers::EVENT_TYPE, e.event_type.as_str())
        .header(
            headers::SCHEMA_VERSION,
            e.schema_version.to_string().as_str(),
        )
        .header(
            headers::CORRELATION_ID,
            e.metadata.correlation_id.to_string().as_str(),
        );
    if let Some(c) = e.metadata.causation_id {
        p = p.header(headers::CAUSATION_ID, c.to_string().as_str());
    }
    if let Some(t) = &e.metadata.traceparent {
        p = p.header(headers::TRACEPARENT, t.as_str());
    }
    Ok(p)
}

/// The JetStream bus: one durable pull consumer per subscriber, explicit
/// cumulative acks (`AckPolicy::All`: acknowledging an event acknowledges
/// every earlier one, so a subscriber acks once per batch).
///
/// A subscription keeps pull requests outstanding (a continuous pull with
/// idle heartbeats), so a new event is pushed to the subscriber as soon as
/// the stream stores it instead of waiting for the next request's round
/// trip.
///
/// # The stream must belong to the subscriber's store
///
/// Every subscription first checks the stream against the event store the
/// bus was made for, as the relay does: the stream's last message must be
/// the store's event at that position. A stream filled from another store
/// (a fresh database beside an old stream of the same name) is refused
/// with [`BusError::StreamMismatch`] before anything is delivered.
#[derive(Debug, Clone)]
pub struct JetStreamBus {
    js: jetstream::Context,
    config: StreamConfig,
    store: StoreProbe,
}

impl JetStreamBus {
    /// A bus on the stream the relay publishes from `store` to.
    pub fn new<S: EventStore>(client: async_nats::Client, config: StreamConfig, store: S) -> Self {
        JetStreamBus {
            js: jetstream::new(client),
            config,
            store: StoreProbe::new(store),
        }
    }
}

/// A JetStream subscription.
pub struct JetStreamSubscription {
    messages: consumer::pull::Stream,
    backlog: Option<u64>,
}

impl std::fmt::Debug for JetStreamSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSubscription")
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

impl JetStreamSubscription {
    /// Turns one received message into a delivery; a message that is not
    /// an event envelope is logged and acknowledged away (`None`).
    async fn delivery(&mut self, m: jetstream::Message) -> Option<Delivery> {
        if let Ok(info) = m.info() {
            self.backlog = Some(info.pending);
        }
        match serde_json::from_slice::<EventEnvelope>(&m.payload) {
            Ok(envelope) => Some(Delivery::with_ack(envelope, Box::new(JsAck(m)))),
            Err(e) => {
                tracing::error!(subject = %m.subject, error = %e, "ignoring a message that is not an event envelope");
                let _ = m.ack().await;
                None
            }
        }
    }
}

struct JsAck(jetstream::Message);

impl Ack for JsAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BusError>> {
        Box::pin(async move { self.0.ack().await.map_err(BusError::unavailable) })
    }
}

impl Subscription for JetStreamSubscription {
    async fn next_batch(
        &mut self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, BusError> {
        // Wait (up to `max_wait`) for the first event. Then, while the
        // consumer reports more pending (a catch-up), keep collecting up to
        // `max`, waiting at most FILL_WAIT for each; at the head (nothing
        // pending) take only what has already arrived, so a live event is
        // handed over at once.
        const FILL_WAIT: Duration = Duration::from_millis(20);
        let first = match tokio::time::timeout(max_wait, self.messages.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(BusError::unavailable("the JetStream subscription ended")),
            Ok(Some(m)) => m.map_err(BusError::unavailable)?,
        };
        let mut out = Vec::new();
        out.extend(self.delivery(first).await);
        while out.len() < max {
            let next = if self.backlog.unwrap_or(0) > 0 {
                match tokio::time::timeout(FILL_WAIT, self.messages.next()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                match self.messages.next().now_or_never() {
                    Some(m) => m,
                    None => break,
                }
            };
            match next {
                Some(m) => {
                    let m = m.map_err(BusError::unavailable)?;
                    out.extend(self.delivery(m).await);
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn backlog(&self) -> Option<u64> {
        self.backlog
    }
}

impl EventBus for JetStreamBus {
    type Subscription = JetStreamSubscription;

    async fn subscribe(
        &self,
        name: &str,
        _filter: &EventFilter,
        after: Position,
    ) -> Result<Self::Subscription, BusError> {
        let mut stream = self.config.ensure(&self.js).await?;
        if let Err(reason) = check_stream(&mut stream, &self.store).await? {
            tracing::error!(
                stream = %self.config.stream, subscriber = name, %reason,
                "refusing to subscribe: the JetStream stream does not belong to this event store"
            );
            return Err(BusError::StreamMismatch {
                stream: self.config.stream.clone(),
                reason,
            });
        }
        // Every event, so positions arrive dense and a gap is detectable
        // (NATS 2.9 has one filter subject per consumer anyway).
        let filter_subject = format!("{}.>", self.config.prefix);
        // Start afresh at the checkpoint: an old consumer may hold
        // deliveries that would only come back after their ack wait.
        if stream.consumer_info(name).await.is_ok() {
            stream
                .delete_consumer(name)
                .await
                .map_err(BusError::unavailable)?;
        }
        let consumer = stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after.0 + 1,
                    },
                    ack_policy: consumer::AckPolicy::All,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(BusError::unavailable)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(1_000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(BusError::unavailable)?;
        Ok(JetStreamSubscription {
            messages,
            backlog: None,
        })
    }
}

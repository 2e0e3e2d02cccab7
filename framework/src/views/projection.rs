//! Projections and the projector runtime.
//!
//! A [`Projection`] says which documents an event touches and how each one
//! evolves: `(key, Option<doc>, &event) -> Option<doc>`, pure, so it is
//! tested without a database ([`ProjectionTest`]). The [`Projector`] feeds it
//! events from a bus and commits the changed documents together with the
//! checkpoint, in one transaction of the [`ViewStore`].
//!
//! **Exactly once in effect:** events at or below the checkpoint are skipped;
//! documents and checkpoint commit atomically; deliveries are acknowledged
//! only after the commit. A crash anywhere means redelivery, which the
//! checkpoint turns into a no-op.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{DecodeError, Upcasters};
use crate::envelope::{EventEnvelope, Position};
use crate::event_set::{EventSet, Recorded};
use crate::propagation::bus::{BusError, Delivery, EventBus, Subscription};
use crate::propagation::changes::{AnyChangeFeed, ChangeFeed, ViewChange};
use crate::store::EventFilter;
use crate::views::store::{
    DeadLetter, DocChange, StoredDoc, SubscriberState, ViewCommit, ViewError, ViewId, ViewStore,
};

/// Why a projection could not apply an event.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The event did not upcast or decode into the projection's event
    /// type.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stored document did not read back as the projection's document
    /// type, or a new one did not serialise.
    #[error("document {key:?}: {source}")]
    Document {
        /// The document's key.
        key: String,
        /// What serde said.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The projection refused the event (its own rule: a value it cannot
    /// fold, an event that contradicts the document).
    #[error("{0}")]
    Refused(String),
}

impl ProjectionError {
    /// A refusal with a message (what `apply` or `react` returns for an
    /// event it cannot take).
    pub fn new(msg: impl Into<String>) -> Self {
        ProjectionError::Refused(msg.into())
    }

    fn document(key: &str, source: serde_json::Error) -> Self {
        ProjectionError::Document {
            key: key.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// What happens after an event failed every attempt and was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Stop the projection (state `halted`) until an operator retries or
    /// skips the dead letter. The view stays consistent but stops moving.
    #[default]
    Halt,
    /// Move past the event and go on. The view misses that event's effect.
    Skip,
}

/// A view built from events: keyed documents of a typed document type,
/// from typed events.
///
/// The runtime subscribes to what [`Self::Event`] names, upcasts and
/// decodes each event once, asks [`keys`](Self::keys) which documents it
/// touches and [`apply`](Self::apply)s it to each; documents are stored as
/// JSON through serde. An event outside the set is skipped.
pub trait Projection: Send + Sync + 'static {
    /// The events it follows: a [`DomainEvent`](crate::DomainEvent), an
    /// [`event_set!`](crate::event_set) over several, or
    /// [`EventEnvelope`] for raw events.
    type Event: EventSet;

    /// The document type. It must come back from JSON as it went in
    /// (no `#[serde(skip)]` fields the fold relies on, no lossy numbers):
    /// within a batch the projector hands `apply` the document it returned
    /// for the previous event, and across batches the one read back from
    /// the view store, so a document that changes on the way through JSON
    /// would depend on where batches split.
    type Doc: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The view's name: `[a-z][a-z0-9_]{0,39}`.
    fn name(&self) -> &str;

    /// The view's version; a new version is rebuilt into new tables.
    fn version(&self) -> u32 {
        1
    }

    /// Which events to subscribe to (default: what the event set names).
    fn filter(&self) -> EventFilter {
        Self::Event::filter()
    }

    /// The keys of the documents an event touches.
    fn keys(&self, event: Recorded<'_, Self::Event>) -> Vec<String>;

    /// The new document for `key` after `event` (`None` deletes it).
    fn apply(
        &self,
        key: &str,
        doc: Option<Self::Doc>,
        event: Recorded<'_, Self::Event>,
    ) -> Result<Option<Self::Doc>, ProjectionError>;

    /// What to do after an event failed every attempt.
    fn on_failure(&self) -> FailurePolicy {
        FailurePolicy::Halt
    }
}

/// Tuning of a projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorConfig {
    /// Most events per transaction (default 500).
    pub batch_size: usize,
    /// How long a fetch waits for events (default 500 ms).
    pub max_wait: Duration,
    /// Attempts at a failing event before it is dead-lettered (default 3).
    pub attempts: u32,
    /// Backoff after the first failed attempt, doubling (default 10 ms).
    pub backoff: Duration,
    /// How many documents the active instance keeps in memory between
    /// batches (default 10,000; 0 turns it off). It holds the documents as
    /// this instance committed them, so a batch that touches them needs no
    /// read. It is emptied whenever a run starts (take-over, halt, resume,
    /// or after a failed commit or any other error, which end the run), so
    /// it never outlives the lease it was filled under.
    pub doc_cache: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_size: 500,
            max_wait: Duration::from_millis(500),
            attempts: 3,
            backoff: Duration::from_millis(10),
            doc_cache: 10_000,
        }
    }
}

/// Where a subscriber is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting to become the active instance.
    Standby,
    /// Applying events.
    Running,
    /// Stopped on a dead letter (policy `Halt`).
    Halted,
    /// Shut down.
    Stopped,
}

/// A subscriber's status, for `/metrics` and the admin CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberStatus {
    /// The checkpoint name.
    pub subscriber: String,
    /// The committed checkpoint.
    pub position: Position,
    /// Events waiting, if known.
    pub lag: Option<u64>,
    /// Life-cycle state.
    pub state: RunState,
    /// Dead letters recorded by this instance.
    pub dead_letters: u64,
    /// Events applied by this instance.
    pub applied: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl SubscriberStatus {
    pub(crate) fn new(subscriber: String) -> Self {
        SubscriberStatus {
            subscriber,
            position: Position::START,
            lag: None,
            state: RunState::Standby,
            dead_letters: 0,
            applied: 0,
            last_error: None,
        }
    }
}

/// Runs one projection: one active instance per view version, standby
/// take-over, batching, retries, dead letters.
pub struct Projector<P: Projection, B, V> {
    projection: Arc<P>,
    /// The view version being written in the current run.
    view: std::sync::Mutex<ViewId>,
    /// A fixed version (rebuilds); otherwise the store's active version.
    fixed_version: Option<u32>,
    bus: B,
    views: V,
    feed: Option<AnyChangeFeed>,
    upcasters: Upcasters,
    config: ProjectorConfig,
    status: watch::Sender<SubscriberStatus>,
    /// Documents as this instance last committed or read them (`None`:
    /// known to be absent). Valid only within one run (see
    /// [`ProjectorConfig::doc_cache`]).
    /// Shared, so a batch takes a document from the cache without
    /// copying its JSON.
    docs: moka::sync::Cache<String, Option<Arc<StoredDoc>>>,
}

/// How a batch ended.
pub(crate) enum BatchEnd {
    Continue(Position),
    Halted(Position),
}

impl<P: Projection, B: EventBus, V: ViewStore> Projector<P, B, V> {
    /// A projector for `projection`, fed by `bus`, writing into `views`.
    /// Panics if the projection's name is not a valid view name.
    pub fn new(projection: P, bus: B, views: V) -> Self {
        let view = ViewId::new(projection.name(), projection.version())
            .unwrap_or_else(|e| panic!("projection name: {e}"));
        let status = watch::Sender::new(SubscriberStatus::new(view.subscriber()));
        Projector {
            projection: Arc::new(projection),
            view: std::sync::Mutex::new(view),
            fixed_version: None,
            bus,
            views,
            feed: None,
            upcasters: Upcasters::new(),
            config: ProjectorConfig::default(),
            status,
            docs: moka::sync::Cache::new(ProjectorConfig::default().doc_cache),
        }
    }

    /// Announces changed documents on `feed`.
    pub fn with_change_feed(mut self, feed: impl ChangeFeed) -> Self {
        self.feed = Some(feed.into_any());
        self
    }

    /// Upcasts events before the projection sees them.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets the tuning.
    pub fn with_config(mut self, config: ProjectorConfig) -> Self {
        self.config = config;
        self.docs = moka::sync::Cache::new(config.doc_cache);
        self
    }

    /// The view version this projector writes.
    pub fn view(&self) -> ViewId {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes this version of the view, whatever version is active (used by
    /// rebuilds). Without it, each run writes the active version, and a
    /// projector whose version is retired by a rebuild moves to the new one.
    pub fn with_version(mut self, version: u32) -> Self {
        self.fixed_version = Some(version);
        let name = self.projection.name().to_owned();
        self.view = std::sync::Mutex::new(
            ViewId::new(&name, version).unwrap_or_else(|e| panic!("projection name: {e}")),
        );
        self
    }

    /// A live view of the status.
    pub fn status(&self) -> watch::Receiver<SubscriberStatus> {
        self.status.subscribe()
    }

    pub(crate) fn set_status(&self, f: impl FnOnce(&mut SubscriberStatus)) {
        self.status.send_modify(f);
    }

    /// Runs until `shutdown` is cancelled. Transient failures (database or
    /// NATS down, another instance took over) are logged and retried with
    /// backoff; the projector goes back to standby and resumes from its
    /// committed checkpoint.
    pub async fn run(self, shutdown: CancellationToken) {
        crate::supervise::supervise(
            &shutdown,
            || self.run_active(&shutdown),
            |e: &RunError| {
                tracing::warn!(view = %self.view(), error = %e, "projector interrupted; retrying");
                self.set_status(|s| {
                    s.state = RunState::Standby;
                    s.last_error = Some(e.to_string());
                });
            },
        )
        .await;
        self.set_status(|s| s.state = RunState::Stopped);
    }

    async fn run_active(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let view = self.resolve_view().await?;
        let subscriber = view.subscriber();
        let mut lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            l = self.views.acquire(&subscriber) => l?,
        };
        loop {
            let Some(start) = self.start_run(&view).await? else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let mut sub = self
                .bus
                .subscribe(&subscriber, &self.projection.filter(), start)
                .await?;
            let mut position = start;
            let mut lease_checked = Instant::now();
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = sub.next_batch(self.config.batch_size, self.config.max_wait) => b?,
                };
                if lease_checked.elapsed() > Duration::from_secs(2) {
                    if !lease.still_held().await {
                        return Err(RunError::LeaseLost);
                    }
                    lease_checked = Instant::now();
                }
                match self.apply_batch(batch, position).await? {
                    BatchEnd::Continue(p) => position = p,
                    BatchEnd::Halted(p) => {
                        self.halted_at(p);
                        break; // back to the halted wait above
                    }
                }
                let lag = sub.backlog();
                self.set_status(|s| {
                    s.position = position;
                    s.lag = lag;
                });
            }
        }
    }

    /// The view version a run writes (the fixed one, or the active one),
    /// with the status set to standby on it.
    pub(crate) async fn resolve_view(&self) -> Result<ViewId, RunError> {
        let version = match self.fixed_version {
            Some(v) => v,
            None => {
                self.views
                    .active_version(self.projection.name(), self.projection.version())
                    .await?
            }
        };
        let view = ViewId::new(self.projection.name(), version)?;
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view.clone();
        self.set_status(|s| {
            s.state = RunState::Standby;
            s.subscriber = view.subscriber();
        });
        Ok(view)
    }

    /// Starts applying to `view` (its lease held): its checkpoint, or
    /// `None` while it is halted on a dead letter. A version a rebuild
    /// retired ends the run, to start over on the active one.
    pub(crate) async fn start_run(&self, view: &ViewId) -> Result<Option<Position>, RunError> {
        let cp = self.views.prepare(view).await?;
        if cp.state == SubscriberState::Retired {
            return Err(RunError::View(ViewError::Fenced {
                subscriber: view.subscriber(),
                expected: cp.position,
            }));
        }
        self.set_status(|s| s.position = cp.position);
        if cp.state == SubscriberState::Halted {
            self.set_status(|s| {
                s.state = RunState::Halted;
                s.last_error = cp.error.clone();
            });
            return Ok(None);
        }
        self.set_status(|s| s.state = RunState::Running);
        // What an earlier run cached may have been changed since by
        // another instance: start empty.
        self.docs.invalidate_all();
        Ok(Some(cp.position))
    }

    /// Marks the projection halted at `position` (a dead letter).
    pub(crate) fn halted_at(&self, position: Position) {
        self.set_status(|s| {
            s.position = position;
            s.state = RunState::Halted;
        });
    }

    /// Applies one batch; returns the new checkpoint.
    async fn apply_batch(
        &self,
        batch: Vec<Delivery>,
        from: Position,
    ) -> Result<BatchEnd, RunError> {
        let (batch, stale) = crate::propagation::bus::in_order(batch, from)?;
        if batch.is_empty() {
            crate::propagation::bus::ack_batch(stale).await; // redelivered, already applied
            return Ok(BatchEnd::Continue(from));
        }
        let events: Vec<&EventEnvelope> = batch.iter().map(|d| &d.envelope).collect();
        let end = self.apply_events(&events, from).await?;
        if let BatchEnd::Continue(_) = end {
            crate::propagation::bus::ack_batch(batch).await;
        }
        // Halted: acknowledge nothing; the halted projection will see these
        // again once resumed.
        Ok(end)
    }

    /// Each event of `events` the projection follows, upcast and decoded
    /// once, with the keys it touches; and the current documents of those
    /// keys.
    async fn prepare_events<'e>(
        &self,
        events: &[&'e EventEnvelope],
    ) -> Result<(Vec<Decoded<'e, P::Event>>, HashMap<String, Arc<StoredDoc>>), RunError> {
        let filter = self.projection.filter();
        let decoded: Vec<Decoded<'e, P::Event>> = events
            .iter()
            .filter(|e| filter.matches(e))
            .map(|&e| {
                // Only an upcast changes the envelope: without upcasters
                // every projection of a group reads the batch's own.
                let mut envelope = Cow::Borrowed(e);
                let upcast = if self.upcasters.is_empty() {
                    Ok(())
                } else {
                    self.upcasters.apply(envelope.to_mut())
                };
                let event = upcast
                    .and_then(|()| P::Event::decode(&envelope))
                    .map_err(ProjectionError::from);
                let keys = match &event {
                    Ok(Some(e)) => self.projection.keys(Recorded {
                        event: e,
                        envelope: &envelope,
                    }),
                    _ => Vec::new(),
                };
                Decoded {
                    envelope,
                    event,
                    keys,
                }
            })
            .collect();
        let mut keys: Vec<String> = decoded.iter().flat_map(|d| d.keys.clone()).collect();
        keys.sort();
        keys.dedup();
        let loaded = self.load_docs(&self.view(), &keys).await?;
        Ok((decoded, loaded))
    }

    /// Applies `events` (in order, all after `from`) without committing:
    /// the documents they change and the checkpoint after them, or `None`
    /// when an event failed every attempt (then
    /// [`apply_events`](Self::apply_events) takes the batch, dead letter
    /// and all).
    pub(crate) async fn compute(
        &self,
        events: &[&EventEnvelope],
        from: Position,
    ) -> Result<Option<Computed>, RunError> {
        let last = events.last().map_or(from, |e| e.position);
        let (decoded, loaded) = self.prepare_events(events).await?;
        let mut changes: HashMap<String, Option<StoredDoc>> = HashMap::new();
        let mut typed: HashMap<String, Option<P::Doc>> = HashMap::new();
        let mut applied = 0u64;
        for d in &decoded {
            let new_docs = match &d.event {
                Ok(None) => HashMap::new(),
                Ok(Some(e)) => {
                    let mut docs = BatchDocs {
                        changes: &changes,
                        loaded: &loaded,
                        typed: &mut typed,
                    };
                    match self.apply_event(e, d, &mut docs).await {
                        Ok(new_docs) => new_docs,
                        Err(_) => return Ok(None),
                    }
                }
                Err(_) => return Ok(None),
            };
            changes.extend(new_docs);
            applied += 1;
        }
        Ok(Some(Computed {
            changes,
            from,
            to: last.max(from),
            applied,
        }))
    }

    /// The commit of a computed batch, for [`Documents::commit_all`].
    pub(crate) fn commit_request(&self, computed: &Computed) -> ViewCommit {
        let view = self.view();
        ViewCommit {
            subscriber: view.subscriber(),
            changes: doc_changes(&computed.changes),
            view,
            from: computed.from,
            to: computed.to,
        }
    }

    /// After a computed batch was committed: the document cache and the
    /// status; returns the announcement to make.
    pub(crate) fn computed_committed(&self, computed: Computed) -> Option<ViewChange> {
        self.set_status(|s| s.applied += computed.applied);
        self.record_commit(computed.changes, computed.from, computed.to)
    }

    /// Applies `events` (in order, all after `from`) and commits them; an
    /// event that fails every attempt is dead-lettered after the events
    /// before it are committed. Acknowledges nothing.
    pub(crate) async fn apply_events(
        &self,
        events: &[&EventEnvelope],
        from: Position,
    ) -> Result<BatchEnd, RunError> {
        let last = events.last().map_or(from, |e| e.position);
        let view = self.view();
        let (decoded_events, mut loaded) = self.prepare_events(events).await?;

        let mut start = from;
        let mut changes: HashMap<String, Option<StoredDoc>> = HashMap::new();
        // The documents this batch changed, as the projection's type, so
        // the next event on a key does not read its JSON back.
        let mut typed: HashMap<String, Option<P::Doc>> = HashMap::new();
        let mut to = from;
        let mut applied = 0u64;
        for decoded in &decoded_events {
            let event = &decoded.envelope;
            let position = event.position;
            let result = match &decoded.event {
                Ok(None) => Ok(HashMap::new()),
                Ok(Some(e)) => {
                    let mut docs = BatchDocs {
                        changes: &changes,
                        loaded: &loaded,
                        typed: &mut typed,
                    };
                    self.apply_event(e, decoded, &mut docs).await
                }
                Err(e) => Err((e.clone(), 1)),
            };
            match result {
                Ok(new_docs) => {
                    changes.extend(new_docs);
                    applied += 1;
                    to = position;
                }
                Err((error, attempts)) => {
                    // Commit what came before, then park the event. Later
                    // events of the batch build on the committed documents.
                    let committed = std::mem::take(&mut changes);
                    for (key, doc) in &committed {
                        match doc {
                            Some(d) => {
                                loaded.insert(key.clone(), Arc::new(d.clone()));
                            }
                            None => {
                                loaded.remove(key);
                            }
                        }
                    }
                    self.commit(committed, start, to).await?;
                    start = to;
                    let skip = self.projection.on_failure() == FailurePolicy::Skip;
                    tracing::error!(
                        view = %view, position = %position, event_id = %event.event_id,
                        event_type = %event.event_type, error = %error, skip,
                        "projection failed on an event; dead-lettered"
                    );
                    self.views
                        .park(
                            DeadLetter::for_event(
                                &view.subscriber(),
                                event,
                                error.to_string(),
                                attempts,
                            ),
                            start,
                            skip,
                        )
                        .await?;
                    self.set_status(|s| {
                        s.dead_letters += 1;
                        s.last_error = Some(error.to_string());
                    });
                    if !skip {
                        return Ok(BatchEnd::Halted(start));
                    }
                    start = position;
                    to = position;
                }
            }
        }
        // Events after the last matching one still move the checkpoint.
        let to = to.max(last);
        self.commit(changes, start, to).await?;
        self.set_status(|s| s.applied += applied);
        Ok(BatchEnd::Continue(to))
    }

    /// Applies one event to every document it touches, with retries.
    /// Returns the new documents, or the error and the attempts made.
    async fn apply_event(
        &self,
        event: &P::Event,
        decoded: &Decoded<'_, P::Event>,
        docs: &mut BatchDocs<'_, P::Doc>,
    ) -> Result<HashMap<String, Option<StoredDoc>>, (ProjectionError, u32)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_apply(event, decoded, docs) {
                Ok(docs) => return Ok(docs),
                Err(e) if attempt >= self.config.attempts => return Err((e, attempt)),
                Err(_) => {
                    tokio::time::sleep(self.config.backoff * 2u32.pow(attempt - 1)).await;
                }
            }
        }
    }

    /// Applies one event to each of its keys. A key's current document is
    /// taken from `typed` when this batch already holds it as the
    /// projection's type, else read from its JSON (`changes`, then
    /// `loaded`); the new documents go back into `typed`. `typed` is only
    /// a cache of `changes`: an entry taken by an attempt that then fails
    /// is read from the JSON again by the next.
    fn try_apply(
        &self,
        event: &P::Event,
        decoded: &Decoded<'_, P::Event>,
        docs: &mut BatchDocs<'_, P::Doc>,
    ) -> Result<HashMap<String, Option<StoredDoc>>, ProjectionError> {
        let mut out = HashMap::new();
        let mut new_typed = Vec::with_capacity(decoded.keys.len());
        let recorded = Recorded {
            event,
            envelope: &decoded.envelope,
        };
        for key in decoded.keys.iter().cloned() {
            let doc: Option<P::Doc> = match docs.typed.remove(&key) {
                Some(doc) => doc,
                None => {
                    let current: Option<&StoredDoc> = match docs.changes.get(&key) {
                        Some(c) => c.as_ref(),
                        None => docs.loaded.get(&key).map(|d| &**d),
                    };
                    match current {
                        Some(d) => Some(
                            P::Doc::deserialize(&d.doc)
                                .map_err(|e| ProjectionError::document(&key, e))?,
                        ),
                        None => None,
                    }
                }
            };
            let new = self.projection.apply(&key, doc, recorded)?;
            let stored = match &new {
                Some(doc) => Some(StoredDoc {
                    key: key.clone(),
                    doc: serde_json::to_value(doc)
                        .map_err(|e| ProjectionError::document(&key, e))?,
                    position: recorded.position(),
                }),
                None => None,
            };
            new_typed.push((key.clone(), new));
            out.insert(key, stored);
        }
        // Only once every key took the event: a failed attempt must not
        // leave half of it in the cache.
        docs.typed.extend(new_typed);
        Ok(out)
    }

    /// The current documents of `keys`: from the run's cache, and the rest
    /// from the view store (remembered, absent ones too).
    async fn load_docs(
        &self,
        view: &ViewId,
        keys: &[String],
    ) -> Result<HashMap<String, Arc<StoredDoc>>, RunError> {
        let mut loaded = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            match self.docs.get(key) {
                Some(Some(doc)) => {
                    loaded.insert(key.clone(), doc);
                }
                Some(None) => {}
                None => missing.push(key.clone()),
            }
        }
        if !missing.is_empty() {
            let mut read = self.views.load(view, &missing).await?;
            for key in missing {
                let doc = read.remove(&key).map(Arc::new);
                self.docs.insert(key.clone(), doc.clone());
                if let Some(doc) = doc {
                    loaded.insert(key, doc);
                }
            }
        }
        Ok(loaded)
    }

    async fn commit(
        &self,
        changes: HashMap<String, Option<StoredDoc>>,
        from: Position,
        to: Position,
    ) -> Result<(), RunError> {
        if to <= from && changes.is_empty() {
            return Ok(());
        }
        let view = self.view();
        // A failed commit (fenced, or unknown whether written) ends the run,
        // and the next run starts with an empty cache.
        self.views
            .commit(
                &view.subscriber(),
                Some(&view),
                doc_changes(&changes),
                from,
                to,
            )
            .await?;
        self.committed(changes, from, to).await;
        Ok(())
    }

    /// After a commit from `from` to `to`: the document cache, the status
    /// and the announcement.
    async fn committed(
        &self,
        changes: HashMap<String, Option<StoredDoc>>,
        from: Position,
        to: Position,
    ) {
        if let Some(change) = self.record_commit(changes, from, to) {
            if let Some(feed) = &self.feed {
                feed.publish(change).await;
            }
        }
    }

    /// After a commit from `from` to `to`: the document cache and the
    /// status; returns the announcement to make.
    fn record_commit(
        &self,
        changes: HashMap<String, Option<StoredDoc>>,
        from: Position,
        to: Position,
    ) -> Option<ViewChange> {
        if to <= from && changes.is_empty() {
            return None;
        }
        let view = self.view();
        for (key, doc) in &changes {
            self.docs
                .insert(key.clone(), doc.as_ref().map(|d| Arc::new(d.clone())));
        }
        self.set_status(|s| s.position = to);
        Some(ViewChange {
            view: view.name().to_owned(),
            version: view.version(),
            keys: changes.keys().cloned().collect(),
            position: to,
            previous: Some(from),
            activated: false,
            docs: Some(changes.into_values().flatten().collect()),
        })
    }

    /// The change feed this projector announces on, if any.
    pub(crate) fn feed(&self) -> Option<&AnyChangeFeed> {
        self.feed.as_ref()
    }
}

/// A batch's changes as the view store takes them.
fn doc_changes(changes: &HashMap<String, Option<StoredDoc>>) -> Vec<DocChange> {
    changes
        .iter()
        .map(|(key, d)| match d {
            Some(d) => DocChange::Put(d.clone()),
            None => DocChange::Delete { key: key.clone() },
        })
        .collect()
}

/// A batch applied by a group member and not yet committed (see
/// [`ProjectorGroup`](crate::ProjectorGroup)).
pub(crate) struct Computed {
    changes: HashMap<String, Option<StoredDoc>>,
    pub(crate) from: Position,
    pub(crate) to: Position,
    applied: u64,
}

impl Computed {
    /// True when committing it would change nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.to <= self.from && self.changes.is_empty()
    }
}

/// The documents a batch reads: the JSON of what it changed so far, what
/// it loaded, and its changes as the projection's type (a cache of
/// `changes`).
struct BatchDocs<'a, D> {
    changes: &'a HashMap<String, Option<StoredDoc>>,
    loaded: &'a HashMap<String, Arc<StoredDoc>>,
    typed: &'a mut HashMap<String, Option<D>>,
}

/// An event of a batch, upcast and decoded once, with the keys it touches.
struct Decoded<'e, E> {
    envelope: Cow<'e, EventEnvelope>,
    event: Result<Option<E>, ProjectionError>,
    keys: Vec<String>,
}

/// Why an active run ended (all are retried by [`Projector::run`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the lease was lost (its database connection closed)")]
    LeaseLost,
}

/// Given events, a projection, then the documents: no runtime, no database.
///
/// ```ignore
/// let docs = ProjectionTest::new(MyProjection).given(events).docs();
/// assert_eq!(docs["order-1"].status, "paid");
/// ```
pub struct ProjectionTest<P: Projection> {
    projection: P,
    docs: std::collections::BTreeMap<String, serde_json::Value>,
    upcasters: Upcasters,
}

impl<P: Projection> ProjectionTest<P> {
    /// A test of `projection` with no documents yet.
    pub fn new(projection: P) -> Self {
        ProjectionTest {
            projection,
            docs: Default::default(),
            upcasters: Upcasters::new(),
        }
    }

    /// Upcasts events first, as the runtime does.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Applies events in order (those the filter rejects are ignored).
    /// Panics on a projection error.
    pub fn given(mut self, events: impl IntoIterator<Item = EventEnvelope>) -> Self {
        let filter = self.projection.filter();
        for mut e in events {
            if !filter.matches(&e) {
                continue;
            }
            self.upcasters.apply(&mut e).expect("upcast");
            let event = match P::Event::decode(&e) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(err) => panic!("event at {} does not decode: {err}", e.position),
            };
            let recorded = Recorded {
                event: &event,
                envelope: &e,
            };
            for key in self.projection.keys(recorded) {
                let doc = self
                    .docs
                    .get(&key)
                    .map(|d| serde_json::from_value(d.clone()).expect("document decodes"));
                match self
                    .projection
                    .apply(&key, doc, recorded)
                    .unwrap_or_else(|err| panic!("projection failed at {}: {err}", e.position))
                {
                    Some(d) => {
                        self.docs
                            .insert(key, serde_json::to_value(d).expect("document encodes"));
                    }
                    None => {
                        self.docs.remove(&key);
                    }
                }
            }
        }
        self
    }

    /// The documents, by key, as JSON (for `insta` snapshots).
    pub fn json(&self) -> &std::collections::BTreeMap<String, serde_json::Value> {
        &self.docs
    }

    /// One document, typed.
    pub fn doc(&self, key: &str) -> Option<P::Doc> {
        self.docs
            .get(key)
            .map(|d| serde_json::from_value(d.clone()).expect("document decodes"))
    }
}

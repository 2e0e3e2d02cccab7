//! Views as keyed JSON documents, and where they are stored.
//!
//! A view is a set of documents addressed by (view, key), each stamped with
//! the position of the last event applied to it. A [`ViewStore`] keeps the
//! documents of each view version, the checkpoints of every subscriber
//! (projections and process managers), and the dead letters, and commits a
//! batch of document changes together with the checkpoint, atomically.
//!
//! It is four traits, one per concern, so each consumer asks only for what
//! it uses: [`Leases`] (which instance is active), [`Checkpoints`]
//! (progress and dead letters), [`Documents`] (the documents, written with
//! the checkpoint) and [`Versions`] (active versions, rebuilds, switches).
//! [`ViewStore`] is all four, implemented for every type that implements
//! them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::Position;
use crate::error::BoxError;

/// Errors of view stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The checkpoint moved under us: another instance is writing this
    /// subscriber. The runtime stops and goes back to standby.
    #[error("checkpoint of {subscriber} is no longer at {expected}: another instance took over")]
    Fenced {
        /// The subscriber.
        subscriber: String,
        /// The checkpoint we expected.
        expected: Position,
    },
    /// A view or subscriber name outside `[a-z][a-z0-9_]{0,39}`.
    #[error("invalid view name {0:?}: use 1 to 40 lowercase letters, digits or '_', starting with a letter")]
    InvalidName(String),
    /// The backend failed. Retry later.
    #[error("view store backend error: {0}")]
    Backend(#[source] BoxError),
}

impl ViewError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        ViewError::Backend(e.into())
    }
}

/// Result alias for view stores.
pub type ViewResult<T> = Result<T, ViewError>;

/// One version of one view, e.g. `orders` v1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ViewId {
    name: String,
    version: u32,
}

/// Checks a view or subscriber name: `[a-z][a-z0-9_]{0,39}`.
pub fn validate_name(name: &str) -> ViewResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ViewError::InvalidName(name.chars().take(64).collect()))
    }
}

impl ViewId {
    /// A view id; the name must match `[a-z][a-z0-9_]{0,39}`.
    pub fn new(name: &str, version: u32) -> ViewResult<Self> {
        validate_name(name)?;
        Ok(ViewId {
            name: name.to_owned(),
            version,
        })
    }

    /// The view's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The checkpoint name of the projection that writes this view version.
    pub fn subscriber(&self) -> String {
        format!("{}_v{}", self.name, self.version)
    }
}

impl std::fmt::Display for ViewId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDoc {
    /// The key.
    pub key: String,
    /// The document.
    pub doc: Value,
    /// Position of the last event applied to it.
    pub position: Position,
}

/// What a read saw: the document (if any) and the view's checkpoint in the
/// same snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRead {
    /// The document, if the key exists.
    pub doc: Option<StoredDoc>,
    /// The position the view had applied when it was read.
    pub checkpoint: Position,
}

/// The version of a view that readers are sent to, and how far it has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveView {
    /// The active version.
    pub version: u32,
    /// Its checkpoint: every event up to here is applied.
    pub checkpoint: Position,
}

/// One page of a view's documents in key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewPage {
    /// The documents, at most the limit asked for.
    pub docs: Vec<StoredDoc>,
    /// The key to pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A change to one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocChange {
    /// Insert or replace.
    Put(StoredDoc),
    /// Remove.
    Delete {
        /// The key.
        key: String,
    },
}

impl DocChange {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            DocChange::Put(d) => &d.key,
            DocChange::Delete { key } => key,
        }
    }
}

/// Whether a subscriber is applying events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberState {
    /// Applying events.
    Running,
    /// Stopped on a failing event (policy `Halt`); see the dead letters.
    Halted,
    /// Replaced by a rebuilt version; nothing writes it any more.
    Retired,
}

// The text form is how the Postgres store keeps the state.
#[cfg(feature = "postgres")]
impl SubscriberState {
    fn as_str(self) -> &'static str {
        match self {
            SubscriberState::Running => "running",
            SubscriberState::Halted => "halted",
            SubscriberState::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "halted" => SubscriberState::Halted,
            "retired" => SubscriberState::Retired,
            _ => SubscriberState::Running,
        }
    }
}

/// A subscriber's committed progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every event up to here has been applied (or skipped).
    pub position: Position,
    /// Running or halted.
    pub state: SubscriberState,
    /// Why it halted.
    pub error: Option<String>,
}

/// An event a subscriber could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// The subscriber (projection `name_vN`, or process manager name).
    pub subscriber: String,
    /// The event's position.
    pub position: Position,
    /// The event's id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// `parked`, `retried` or `skipped`.
    pub status: String,
    /// When it was parked.
    pub created_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A new letter (not stored yet) for `event`, which `subscriber` could
    /// not handle after `attempts` tries.
    pub fn for_event(
        subscriber: &str,
        event: &crate::EventEnvelope,
        error: String,
        attempts: u32,
    ) -> Self {
        DeadLetter {
            id: 0,
            subscriber: subscriber.to_owned(),
            position: event.position,
            event_id: event.event_id,
            stream_id: event.stream_id.to_string(),
            event_type: event.event_type.clone(),
            error,
            attempts,
            status: String::new(),
            created_at: Utc::now(),
        }
    }
}

/// Proof that this instance is the active one for a subscriber.
pub struct Lease {
    inner: Box<dyn LeaseHandle>,
}

/// The backend side of a [`Lease`].
pub trait LeaseHandle: Send {
    /// True while the lease is still held (e.g. its connection is alive).
    fn still_held(&mut self) -> crate::write::aggregate::BoxFuture<'_, bool>;
}

impl Lease {
    /// Wraps a backend lease.
    pub fn new(inner: Box<dyn LeaseHandle>) -> Self {
        Lease { inner }
    }

    /// True while the lease is still held.
    pub async fn still_held(&mut self) -> bool {
        self.inner.still_held().await
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Leases: which instance is the active one for a subscriber (a relay, a
/// projector, a process manager). All a JetStream [`Relay`](crate::Relay)
/// needs of a view store.
pub trait Leases: Clone + Send + Sync + 'static {
    /// Waits until this instance is the only active one for `subscriber`.
    fn acquire(&self, subscriber: &str) -> impl Future<Output = ViewResult<Lease>> + Send;
}

/// Subscribers' progress: checkpoints, moving them without documents, and
/// dead letters. What a process manager's runner needs.
pub trait Checkpoints: Clone + Send + Sync + 'static {
    /// A subscriber's checkpoint, creating it at 0 if missing.
    fn checkpoint(&self, subscriber: &str) -> impl Future<Output = ViewResult<Checkpoint>> + Send;

    /// Moves a subscriber's checkpoint from `from` to `to`, with no
    /// documents (process managers). Fails with [`ViewError::Fenced`] (and
    /// moves nothing) when the checkpoint is not at `from` or the
    /// subscriber is not running. The same as [`Documents::commit`] with
    /// no view.
    fn advance(
        &self,
        subscriber: &str,
        from: Position,
        to: Position,
    ) -> impl Future<Output = ViewResult<()>> + Send;

    /// Records a dead letter; with `skip`, also moves the checkpoint from
    /// `from` past the event, else marks the subscriber halted. Atomic.
    fn park(
        &self,
        letter: DeadLetter,
        from: Position,
        skip: bool,
    ) -> impl Future<Output = ViewResult<()>> + Send;

    /// Dead letters, newest first, of one subscriber or all.
    fn dead_letters(
        &self,
        subscriber: Option<&str>,
    ) -> impl Future<Output = ViewResult<Vec<DeadLetter>>> + Send;

    /// Marks a subscriber running again (after a halt was dealt with).
    fn resume(&self, subscriber: &str) -> impl Future<Output = ViewResult<()>> + Send;

    /// Moves a subscriber's checkpoint to `position` (replay from there) and
    /// marks it running. For views, documents are kept: reset a view to 0
    /// only with a rebuild.
    fn reset(
        &self,
        subscriber: &str,
        position: crate::Position,
    ) -> impl Future<Output = ViewResult<()>> + Send;

    /// Retries (`skip = false`) or skips a parked dead letter: a retry marks
    /// the subscriber running so it tries the event again; a skip moves the
    /// checkpoint past it. Returns false when the letter is not parked.
    fn resolve_dead_letter(
        &self,
        id: i64,
        skip: bool,
    ) -> impl Future<Output = ViewResult<bool>> + Send;
}

/// One view's part of [`Documents::commit_all`]: what
/// [`Documents::commit`] takes.
#[derive(Debug, Clone)]
pub struct ViewCommit {
    /// The projector's checkpoint name.
    pub subscriber: String,
    /// The view version written.
    pub view: ViewId,
    /// The document changes.
    pub changes: Vec<DocChange>,
    /// The checkpoint the commit moves from (the fence).
    pub from: Position,
    /// The checkpoint after the commit.
    pub to: Position,
}

/// The documents of view versions: read them, and write them together with
/// their projector's checkpoint. What a [`ViewReader`](crate::ViewReader)
/// reads (with [`Versions::active`]).
pub trait Documents: Clone + Send + Sync + 'static {
    /// The documents with these keys (missing keys are left out).
    fn load(
        &self,
        view: &ViewId,
        keys: &[String],
    ) -> impl Future<Output = ViewResult<HashMap<String, StoredDoc>>> + Send;

    /// Writes document changes and moves the subscriber's checkpoint from
    /// `from` to `to`, atomically. Fails with [`ViewError::Fenced`] (and
    /// writes nothing) when the checkpoint is not at `from`. `view` is
    /// `None` for subscribers without documents, as
    /// [`Checkpoints::advance`].
    fn commit(
        &self,
        subscriber: &str,
        view: Option<&ViewId>,
        changes: Vec<DocChange>,
        from: Position,
        to: Position,
    ) -> impl Future<Output = ViewResult<()>> + Send;

    /// Several views' commits at once (a
    /// [`ProjectorGroup`](crate::ProjectorGroup)'s batch). Each commit is
    /// atomic and fenced on its own, as [`commit`](Self::commit) is; the
    /// result has one entry per commit, in order, saying whether it was
    /// written. An `Err` of the whole call means none is known to be
    /// written. The default runs [`commit`](Self::commit) for each in turn;
    /// the Postgres store writes them all in one statement.
    fn commit_all(
        &self,
        commits: Vec<ViewCommit>,
    ) -> impl Future<Output = ViewResult<Vec<ViewResult<()>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(commits.len());
            for c in commits {
                out.push(
                    self.commit(&c.subscriber, Some(&c.view), c.changes, c.from, c.to)
                        .await,
                );
            }
            Ok(out)
        }
    }

    /// One document and the view's checkpoint, read together.
    fn get(&self, view: &ViewId, key: &str) -> impl Future<Output = ViewResult<ViewRead>> + Send;

    /// Documents in key order after `after_key`, at most `limit`.
    fn list(
        &self,
        view: &ViewId,
        after_key: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = ViewResult<Vec<StoredDoc>>> + Send;
}

/// View versions: which one is active, rebuilds into a new one and the
/// fenced switch.
pub trait Versions: Clone + Send + Sync + 'static {
    /// Creates the view's storage if needed and returns its subscriber's
    /// checkpoint (position 0 for a new one).
    fn prepare(&self, view: &ViewId) -> impl Future<Output = ViewResult<Checkpoint>> + Send;

    /// The version of view `name` that queries read and projectors write
    /// (recorded as `default` the first time it is asked).
    fn active_version(
        &self,
        name: &str,
        default: u32,
    ) -> impl Future<Output = ViewResult<u32>> + Send;

    /// The active version of view `name` and its checkpoint, read together
    /// and without writing anything; `None` while no projector has
    /// registered the view. This is what readers follow.
    fn active(&self, name: &str) -> impl Future<Output = ViewResult<Option<ActiveView>>> + Send;

    /// Starts (or resumes) a rebuild of view `name`: returns the version
    /// being rebuilt, a new one above every existing version unless a
    /// rebuild was interrupted, in which case it is that one.
    fn start_rebuild(
        &self,
        name: &str,
        default: u32,
    ) -> impl Future<Output = ViewResult<u32>> + Send;

    /// Makes `to` the active version of `name`, atomically, if its
    /// checkpoint is at or beyond the active one's (so no query goes back
    /// in position); the old version is retired (its projector's next
    /// commit fails, and it moves to the new version). Returns false, and
    /// changes nothing, if `to` is behind.
    fn switch_version(&self, name: &str, to: u32) -> impl Future<Output = ViewResult<bool>> + Send;

    /// Freezes the active version of `name` before a switch: its
    /// checkpoint is marked retired (its projector's commits fail from now
    /// on) and returned. Queries still read it until the switch.
    fn retire_active(&self, name: &str) -> impl Future<Output = ViewResult<Position>> + Send;

    /// Drops a retired version's documents and checkpoint.
    fn drop_version(&self, view: &ViewId) -> impl Future<Output = ViewResult<()>> + Send;
}

/// Where views, checkpoints, dead letters, leases and versions live: every
/// part at once. A projector and a rebuild need all of it; the other
/// consumers ask for their parts only ([`Leases`] for the relay,
/// [`Leases`] and [`Checkpoints`] for process managers, [`Documents`] and
/// [`Versions`] for readers).
///
/// Implemented for every type that implements the four parts; implement
/// those. Bring the part traits into scope (`use strata::{Checkpoints,
/// Documents, …}`) to call their methods on a concrete store.
pub trait ViewStore: Leases + Checkpoints + Documents + Versions {}

impl<T: Leases + Checkpoints + Documents + Versions> ViewStore for T {}

/// Views in memory: the embedded mode and tests.
#[derive(Clone, Default)]
pub struct InMemoryViewStore {
    inner: Arc<Mutex<MemViews>>,
    leases: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

#[derive(Default)]
struct MemViews {
    docs: HashMap<ViewId, BTreeMap<String, StoredDoc>>,
    checkpoints: HashMap<String, Checkpoint>,
    dead: Vec<DeadLetter>,
    /// name -> (active, rebuilding)
    versions: HashMap<String, (u32, Option<u32>)>,
}

impl InMemoryViewStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemViews> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_checkpoint() -> Checkpoint {
    Checkpoint {
        position: Position::START,
        state: SubscriberState::Running,
        error: None,
    }
}

struct MemLease(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

impl LeaseHandle for MemLease {
    fn still_held(&mut self) -> crate::write::aggregate::BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

impl Leases for InMemoryViewStore {
    async fn acquire(&self, subscriber: &str) -> ViewResult<Lease> {
        let lock = Arc::clone(
            self.leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(subscriber.to_owned())
                .or_default(),
        );
        Ok(Lease::new(Box::new(MemLease(lock.lock_owned().await))))
    }
}

impl Checkpoints for InMemoryViewStore {
    async fn checkpoint(&self, subscriber: &str) -> ViewResult<Checkpoint> {
        validate_name(subscriber)?;
        Ok(self
            .lock()
            .checkpoints
            .entry(subscriber.to_owned())
            .or_insert_with(new_checkpoint)
            .clone())
    }

    async fn advance(&self, subscriber: &str, from: Position, to: Position) -> ViewResult<()> {
        Documents::commit(self, subscriber, None, Vec::new(), from, to).await
    }

    async fn park(&self, mut letter: DeadLetter, from: Position, skip: bool) -> ViewResult<()> {
        let mut m = self.lock();
        let Some(cp) = m.checkpoints.get_mut(&letter.subscriber) else {
            return Err(ViewError::Fenced {
                subscriber: letter.subscriber,
                expected: from,
            });
        };
        if cp.position != from {
            return Err(ViewError::Fenced {
                subscriber: letter.subscriber,
                expected: from,
            });
        }
        if skip {
            cp.position = letter.position;
            letter.status = "skipped".into();
        } else {
            cp.state = SubscriberState::Halted;
            cp.error = Some(letter.error.clone());
            letter.status = "parked".into();
        }
        letter.id = m.dead.len() as i64 + 1;
        m.dead.push(letter);
        Ok(())
    }

    async fn dead_letters(&self, subscriber: Option<&str>) -> ViewResult<Vec<DeadLetter>> {
        let m = self.lock();
        Ok(m.dead
            .iter()
            .rev()
            .filter(|d| subscriber.is_none_or(|s| d.subscriber == s))
            .cloned()
            .collect())
    }

    async fn resume(&self, subscriber: &str) -> ViewResult<()> {
        let mut m = self.lock();
        if let Some(cp) = m.checkpoints.get_mut(subscriber) {
            cp.state = SubscriberState::Running;
            cp.error = None;
        }
        Ok(())
    }

    async fn reset(&self, subscriber: &str, position: Position) -> ViewResult<()> {
        validate_name(subscriber)?;
        let mut m = self.lock();
        let cp = m
            .checkpoints
            .entry(subscriber.to_owned())
            .or_insert_with(new_checkpoint);
        cp.position = position;
        cp.state = SubscriberState::Running;
        cp.error = None;
        Ok(())
    }

    async fn resolve_dead_letter(&self, id: i64, skip: bool) -> ViewResult<bool> {
        let mut m = self.lock();
        let Some(idx) = m
            .dead
            .iter()
            .position(|d| d.id == id && d.status == "parked")
        else {
            return Ok(false);
        };
        let (subscriber, position) = (m.dead[idx].subscriber.clone(), m.dead[idx].position);
        m.dead[idx].status = if skip { "skipped" } else { "retried" }.into();
        let cp = m
            .checkpoints
            .entry(subscriber)
            .or_insert_with(new_checkpoint);
        if skip && cp.position < position {
            cp.position = position;
        }
        cp.state = SubscriberState::Running;
        cp.error = None;
        Ok(true)
    }
}

impl Documents for InMemoryViewStore {
    async fn load(&self, view: &ViewId, keys: &[String]) -> ViewResult<HashMap<String, StoredDoc>> {
        let m = self.lock();
        let Some(docs) = m.docs.get(view) else {
            return Ok(HashMap::new());
        };
        Ok(keys
            .iter()
            .filter_map(|k| docs.get(k).map(|d| (k.clone(), d.clone())))
            .collect())
    }

    async fn commit(
        &self,
        subscriber: &str,
        view: Option<&ViewId>,
        changes: Vec<DocChange>,
        from: Position,
        to: Position,
    ) -> ViewResult<()> {
        let mut m = self.lock();
        // No checkpoint (never prepared, or its version dropped): fenced,
        // as a checkpoint elsewhere would be.
        let cp = match m.checkpoints.get_mut(subscriber) {
            Some(cp) if cp.position == from && cp.state == SubscriberState::Running => cp,
            _ => {
                return Err(ViewError::Fenced {
                    subscriber: subscriber.to_owned(),
                    expected: from,
                })
            }
        };
        cp.position = to;
        if let Some(view) = view {
            let docs = m.docs.entry(view.clone()).or_default();
            for c in changes {
                match c {
                    DocChange::Put(d) => {
                        docs.insert(d.key.clone(), d);
                    }
                    DocChange::Delete { key } => {
                        docs.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    async fn get(&self, view: &ViewId, key: &str) -> ViewResult<ViewRead> {
        let m = self.lock();
        Ok(ViewRead {
            doc: m.docs.get(view).and_then(|d| d.get(key)).cloned(),
            checkpoint: m
                .checkpoints
                .get(&view.subscriber())
                .map_or(Position::START, |c| c.position),
        })
    }

    async fn list(
        &self,
        view: &ViewId,
        after_key: Option<&str>,
        limit: usize,
    ) -> ViewResult<Vec<StoredDoc>> {
        let m = self.lock();
        let Some(docs) = m.docs.get(view) else {
            return Ok(Vec::new());
        };
        Ok(docs
            .iter()
            .filter(|(k, _)| after_key.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }
}

impl Versions for InMemoryViewStore {
    async fn prepare(&self, view: &ViewId) -> ViewResult<Checkpoint> {
        let mut m = self.lock();
        m.docs.entry(view.clone()).or_default();
        Ok(m.checkpoints
            .entry(view.subscriber())
            .or_insert_with(new_checkpoint)
            .clone())
    }

    async fn active_version(&self, name: &str, default: u32) -> ViewResult<u32> {
        validate_name(name)?;
        Ok(self
            .lock()
            .versions
            .entry(name.to_owned())
            .or_insert((default, None))
            .0)
    }

    async fn active(&self, name: &str) -> ViewResult<Option<ActiveView>> {
        validate_name(name)?;
        let m = self.lock();
        Ok(m.versions.get(name).map(|&(version, _)| ActiveView {
            version,
            checkpoint: ViewId::new(name, version)
                .ok()
                .and_then(|v| m.checkpoints.get(&v.subscriber()))
                .map_or(Position::START, |c| c.position),
        }))
    }

    async fn start_rebuild(&self, name: &str, default: u32) -> ViewResult<u32> {
        validate_name(name)?;
        let mut m = self.lock();
        let entry = m.versions.entry(name.to_owned()).or_insert((default, None));
        if let Some(v) = entry.1 {
            return Ok(v);
        }
        let next = entry.0.max(default) + 1;
        entry.1 = Some(next);
        Ok(next)
    }

    async fn switch_version(&self, name: &str, to: u32) -> ViewResult<bool> {
        let mut m = self.lock();
        let Some(&(active, _)) = m.versions.get(name) else {
            return Ok(false);
        };
        let old = ViewId::new(name, active)?;
        let new = ViewId::new(name, to)?;
        let pos = |m: &MemViews, v: &ViewId| {
            m.checkpoints
                .get(&v.subscriber())
                .map_or(Position::START, |c| c.position)
        };
        if pos(&m, &new) < pos(&m, &old) {
            return Ok(false);
        }
        m.versions.insert(name.to_owned(), (to, None));
        if let Some(cp) = m.checkpoints.get_mut(&old.subscriber()) {
            cp.state = SubscriberState::Retired;
        }
        Ok(true)
    }

    async fn retire_active(&self, name: &str) -> ViewResult<Position> {
        let mut m = self.lock();
        let active = m.versions.get(name).map_or(1, |v| v.0);
        let old = ViewId::new(name, active)?.subscriber();
        let cp = m.checkpoints.entry(old).or_insert_with(new_checkpoint);
        cp.state = SubscriberState::Retired;
        Ok(cp.position)
    }

    async fn drop_version(&self, view: &ViewId) -> ViewResult<()> {
        let mut m = self.lock();
        m.docs.remove(view);
        m.checkpoints.remove(&view.subscriber());
        Ok(())
    }
}

#[cfg(feature = "postgres")]
pub(crate) fn state_str(s: SubscriberState) -> &'static str {
    s.as_str()
}

#[cfg(feature = "postgres")]
pub(crate) fn parse_state(s: &str) -> SubscriberState {
    SubscriberState::parse(s)
}

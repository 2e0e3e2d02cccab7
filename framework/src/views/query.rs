//! The query side: views served through a moka cache, kept fresh by change
//! announcements, with read-your-writes.
//!
//! **Readers address views by name.** A [`ViewReader`] follows each view's
//! active version by itself: it learns the version from the view store
//! (read only, never written by a read; looked up again at most every
//! [`VERSION_TTL`]) and from the switch a rebuild announces, the moment it
//! commits. The position a reader reports for a view never goes back: a
//! rebuilt version becomes active only at or beyond the old one's
//! checkpoint, and an old version's late announcements no longer count.
//!
//! **A cached entry is never served to a query that asks for a position
//! beyond what the view had applied when the entry was read.** Each entry
//! remembers the view checkpoint of its read (document and checkpoint come
//! from one snapshot; a document an announcement carried counts as read at
//! the announcement's position, see ADR 0007); a query for "at least position P" first waits until
//! the view has applied P, then reloads any entry read before P. So a lost
//! or late announcement can make a plain read stale for at most the TTL,
//! and a read-your-writes query never.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::envelope::Position;
use crate::propagation::changes::{ChangeFeed, ChangeNotice};
use crate::views::store::{
    ActiveView, Documents, StoredDoc, Versions, ViewError, ViewId, ViewPage, ViewRead,
};

/// Errors of queries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The view had not applied the requested position within the wait
    /// bound. HTTP 504 (or 503) with both positions; the client may retry.
    #[error("view {view} has applied position {current}, not yet {requested}")]
    NotCaughtUp {
        /// The view.
        view: String,
        /// What the client asked for.
        requested: Position,
        /// What the view has applied.
        current: Position,
    },
    /// The view store failed. HTTP 503.
    #[error(transparent)]
    View(#[from] ViewError),
    /// A stored document does not fit the type asked for (the projection's
    /// document type changed without a new version). HTTP 500; rebuild.
    #[error("document {key:?} of view {view} does not fit its type: {reason}")]
    Document {
        /// The view.
        view: String,
        /// The key.
        key: String,
        /// What serde said.
        reason: String,
    },
}

impl QueryError {
    fn shared(e: Arc<ViewError>) -> Self {
        QueryError::View(ViewError::backend(e.to_string()))
    }
}

/// Counters of the cache, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to the view store.
    pub misses: u64,
    /// Entries invalidated by announcements (announcements without
    /// documents).
    pub invalidations: u64,
    /// Entries replaced by the documents an announcement carried.
    #[serde(default)]
    pub refreshes: u64,
}

/// Tuning of a [`ViewReader`].
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Most cached documents (default 100,000).
    pub capacity: u64,
    /// Safety-net time to live of an entry (default 60 s).
    pub ttl: Duration,
    /// Longest a read-your-writes query waits (default 5 s).
    pub max_wait: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            capacity: 100_000,
            ttl: Duration::from_secs(60),
            max_wait: Duration::from_secs(5),
        }
    }
}

type Key = (ViewId, String);

/// How long a reader trusts the active version it looked up when no
/// announcement told it otherwise. A rebuild keeps a replaced version
/// readable for longer than this before dropping it.
pub const VERSION_TTL: Duration = Duration::from_millis(500);

/// How often a waiting read-your-writes query has the store asked, as a
/// safety net, when announcements are followed (once per view for all its
/// waiters, by the listener) and when they are not (coalesced across the
/// waiters of a view).
const POLL_WITH_FEED: Duration = Duration::from_secs(1);
const POLL_WITHOUT_FEED: Duration = Duration::from_millis(200);

/// The version read while no projector has registered a view.
const DEFAULT_VERSION: u32 = 1;

/// What the reader knows of a view's active version.
#[derive(Clone, Copy)]
struct Known {
    version: u32,
    /// When the store (or a switch announcement) last confirmed it; `None`
    /// once announcements may have been missed.
    checked: Option<tokio::time::Instant>,
}

struct Inner<V> {
    views: V,
    /// Store lookups of the active version and its checkpoint, shared by
    /// concurrent callers (one query per view at a time).
    lookups: moka::future::Cache<String, Option<ActiveView>>,
    /// Active version per view name: only moves forward.
    known: Mutex<HashMap<String, Known>>,
    cache: moka::future::Cache<Key, Arc<ViewRead>>,
    /// Store reads of documents in flight, shared by concurrent misses of
    /// one key; an entry is dropped as soon as its read is taken in.
    loads: moka::future::Cache<Key, Arc<ViewRead>>,
    /// Applied position of each view name (of its active version).
    checkpoints: Mutex<HashMap<String, watch::Sender<Position>>>,
    stats: Mutex<CacheStats>,
    config: ReaderConfig,
    /// A change feed is being followed: announcements move the checkpoint
    /// watches, and the listener asks the store for views with waiters.
    listening: std::sync::atomic::AtomicBool,
    /// Announcements of active versions, passed on once taken in.
    out: tokio::sync::broadcast::Sender<ChangeNotice>,
}

/// Reads views by name through a cache. Cheap to clone.
pub struct ViewReader<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for ViewReader<V> {
    fn clone(&self) -> Self {
        ViewReader {
            inner: Arc::clone(&self.inner),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<V: Documents + Versions> ViewReader<V> {
    /// A reader over `views`. Call [`listen`](Self::listen) to follow a
    /// change feed; without it, entries live until their TTL.
    pub fn new(views: V, config: ReaderConfig) -> Self {
        ViewReader {
            inner: Arc::new(Inner {
                views,
                lookups: moka::future::Cache::builder()
                    .time_to_live(Duration::from_millis(50))
                    .build(),
                known: Mutex::new(HashMap::new()),
                cache: moka::future::Cache::builder()
                    .max_capacity(config.capacity)
                    .time_to_live(config.ttl)
                    .build(),
                loads: moka::future::Cache::builder()
                    .time_to_live(Duration::from_millis(50))
                    .build(),
                checkpoints: Mutex::new(HashMap::new()),
                stats: Mutex::new(CacheStats::default()),
                config,
                listening: std::sync::atomic::AtomicBool::new(false),
                out: tokio::sync::broadcast::channel(4_096).0,
            }),
        }
    }

    /// The view store.
    pub fn views(&self) -> &V {
        &self.inner.views
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        *lock(&self.inner.stats)
    }

    fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut lock(&self.inner.stats));
    }

    fn checkpoint_tx(&self, name: &str) -> watch::Sender<Position> {
        lock(&self.inner.checkpoints)
            .entry(name.to_owned())
            .or_insert_with(|| watch::Sender::new(Position::START))
            .clone()
    }

    fn set_listening(&self, on: bool) {
        self.inner.listening.store(on, Ordering::Release);
    }

    /// True while a [`listen`](Self::listen) task follows a change feed.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Acquire)
    }

    /// The active version this reader knows of, if any.
    fn known(&self, name: &str) -> Option<Known> {
        lock(&self.inner.known).get(name).copied()
    }

    /// Records that `version` of `name` is active (never moves back).
    /// Returns the version now known.
    fn learn(&self, name: &str, version: u32) -> u32 {
        let now = Some(tokio::time::Instant::now());
        let mut known = lock(&self.inner.known);
        let k = known.entry(name.to_owned()).or_insert(Known {
            version,
            checked: now,
        });
        if version >= k.version {
            *k = Known {
                version,
                checked: now,
            };
        }
        k.version
    }

    /// Counts `position` as applied by `name` if it is a position of the
    /// version known to be active.
    fn note_checkpoint(&self, name: &str, version: u32, position: Position) {
        if self.known(name).is_some_and(|k| k.version != version) {
            return;
        }
        self.checkpoint_tx(name).send_if_modified(|p| {
            if position > *p {
                *p = position;
                true
            } else {
                false
            }
        });
    }

    /// Asks the store for the active version of `name` and its checkpoint
    /// (concurrent callers share one query) and takes both in.
    async fn refresh(&self, name: &str) -> Result<Option<u32>, QueryError> {
        let views = self.inner.views.clone();
        let n = name.to_owned();
        let active = self
            .inner
            .lookups
            .try_get_with(name.to_owned(), async move { views.active(&n).await })
            .await
            .map_err(QueryError::shared)?;
        let Some(active) = active else {
            // No projector has registered the view: read the version
            // projections start at, without writing anything.
            return Ok(Some(
                self.known(name).map_or(DEFAULT_VERSION, |k| k.version),
            ));
        };
        let version = self.learn(name, active.version);
        self.note_checkpoint(name, active.version, active.checkpoint);
        Ok(Some(version))
    }

    /// The active version of `name`: what announcements said, or a lookup
    /// no older than [`VERSION_TTL`]. `None` while the view has no version.
    async fn version(&self, name: &str) -> Result<Option<u32>, QueryError> {
        match self.known(name) {
            Some(Known {
                version,
                checked: Some(at),
            }) if at.elapsed() < VERSION_TTL => Ok(Some(version)),
            _ => self.refresh(name).await,
        }
    }

    /// Applies one announcement to the cache: documents it carries are
    /// cached as read at its position (unless a newer read is cached);
    /// without documents, the changed keys are invalidated.
    async fn absorb(&self, view: &ViewId, change: &mut crate::propagation::changes::ViewChange) {
        let cache = &self.inner.cache;
        if change.docs.is_none() {
            for key in &change.keys {
                cache.invalidate(&(view.clone(), key.clone())).await;
            }
            self.count(|s| s.invalidations += change.keys.len() as u64);
            return;
        }
        // Nobody follows `changes()`: the documents move into the cache
        // instead of being copied (a later follower is handed the change
        // as keys only, and reads the documents).
        let docs = if self.inner.out.receiver_count() == 0 {
            change.docs.take().unwrap_or_default()
        } else {
            change.docs.clone().unwrap_or_default()
        };
        let mut by_key: HashMap<String, StoredDoc> =
            docs.into_iter().map(|d| (d.key.clone(), d)).collect();
        let mut refreshed = 0;
        for key in &change.keys {
            let read = Arc::new(ViewRead {
                doc: by_key.remove(key.as_str()),
                checkpoint: change.position,
            });
            if self.keep_newer((view.clone(), key.clone()), read).await {
                refreshed += 1;
            }
        }
        self.count(|s| s.refreshes += refreshed);
    }

    /// Caches `read` unless the cache holds a read of the same document
    /// at a later checkpoint (announcements and store reads race: neither
    /// may replace a newer one). True when it was cached.
    async fn keep_newer(&self, key: Key, read: Arc<ViewRead>) -> bool {
        use moka::ops::compute::{CompResult, Op};
        let result = self
            .inner
            .cache
            .entry(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(c) if c.value().checkpoint >= read.checkpoint => Op::Nop,
                    _ => Op::Put(Arc::clone(&read)),
                };
                std::future::ready(op)
            })
            .await;
        matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        )
    }

    /// Takes in one announcement.
    async fn take(&self, change: &mut crate::propagation::changes::ViewChange) {
        let Ok(view) = ViewId::new(&change.view, change.version) else {
            return;
        };
        if change.activated {
            self.learn(&change.view, change.version);
        } else if self
            .known(&change.view)
            .is_none_or(|k| change.version > k.version)
        {
            // A view not looked up yet, a rebuild still filling its
            // version, or a switch this reader has not heard of: ask the
            // store (shared, so a rebuild's announcements cost few queries).
            if let Err(e) = self.refresh(&change.view).await {
                tracing::warn!(error = %e, view = %change.view, "could not look up a view's version");
            }
        }
        self.absorb(&view, change).await;
        self.note_checkpoint(&change.view, change.version, change.position);
    }

    /// Names of views some read-your-writes query is waiting on.
    fn waited_on(&self) -> Vec<String> {
        lock(&self.inner.checkpoints)
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Follows `feed` until `shutdown`: caches the documents announcements
    /// carry (or invalidates the keys of those that carry none), tracks
    /// each view's checkpoint and active version, and resynchronises from
    /// the view store when announcements were missed. While queries wait,
    /// it asks the store once a second per view they wait on, in case the
    /// announcement they wait for was lost. Spawns a task.
    pub async fn listen(
        &self,
        feed: &impl ChangeFeed,
        shutdown: CancellationToken,
    ) -> Result<(), crate::propagation::bus::BusError> {
        let mut sub = feed.subscribe().await?;
        let reader = self.clone();
        self.set_listening(true);
        tokio::spawn(async move {
            struct Stop<V>(ViewReader<V>);
            impl<V> Drop for Stop<V> {
                fn drop(&mut self) {
                    self.0.inner.listening.store(false, Ordering::Release);
                }
            }
            let _stop = Stop(reader.clone());
            let mut poll = tokio::time::interval(POLL_WITH_FEED);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let notice = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = poll.tick() => {
                        for name in reader.waited_on() {
                            if let Err(e) = reader.refresh(&name).await {
                                tracing::warn!(error = %e, view = %name, "could not read a view's checkpoint");
                            }
                        }
                        continue;
                    }
                    n = sub.recv() => n,
                };
                match notice {
                    Some(ChangeNotice::Change(mut c)) => {
                        reader.take(&mut c).await;
                        let active = reader.known(&c.view).is_none_or(|k| k.version == c.version);
                        if c.activated {
                            // Another version's documents: read again.
                            let _ = reader.inner.out.send(ChangeNotice::Reset);
                        } else if active {
                            let _ = reader.inner.out.send(ChangeNotice::Change(c));
                        }
                    }
                    Some(ChangeNotice::Reset) => {
                        reader.inner.cache.invalidate_all();
                        reader.inner.lookups.invalidate_all();
                        // Versions are looked up again before the next use.
                        for k in lock(&reader.inner.known).values_mut() {
                            k.checked = None;
                        }
                        let _ = reader.inner.out.send(ChangeNotice::Reset);
                    }
                    None => return,
                }
            }
        });
        Ok(())
    }

    /// The announcements this reader has taken in, passed on: changes of
    /// active versions only (a rebuild's version is left out until its
    /// switch, which comes as a [`ChangeNotice::Reset`]), each after its
    /// documents are in the cache. For live updates that follow views by
    /// name; needs [`listen`](Self::listen).
    pub fn changes(&self) -> crate::propagation::changes::ChangeSubscription {
        crate::propagation::changes::ChangeSubscription::notices(self.inner.out.subscribe())
    }

    /// The active version of view `name` (version 1 while no projector
    /// has registered it). Reads only.
    pub async fn active(&self, name: &str) -> Result<ViewId, QueryError> {
        crate::views::store::validate_name(name)?;
        let v = self.version(name).await?.unwrap_or(DEFAULT_VERSION);
        Ok(ViewId::new(name, v)?)
    }

    /// The position view `name` is known to have applied.
    pub fn applied(&self, name: &str) -> Position {
        *self.checkpoint_tx(name).borrow()
    }

    /// Waits until view `name` (whichever version is active) has applied
    /// `position`, up to the configured bound. The wait holds no database
    /// connection: announcements wake it; the store is asked only as a
    /// safety net, once per interval for all waiters of a view.
    pub async fn wait_for(&self, name: &str, position: Position) -> Result<Position, QueryError> {
        crate::views::store::validate_name(name)?;
        if self.known(name).is_none() {
            // Never looked at: learn where the view is (one shared query)
            // rather than wait for an announcement or the safety net.
            self.refresh(name).await?;
        }
        let tx = self.checkpoint_tx(name);
        if *tx.borrow() >= position {
            return Ok(*tx.borrow());
        }
        let mut rx = tx.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.max_wait;
        loop {
            if !self.inner.listening.load(Ordering::Acquire) {
                self.refresh(name).await?;
            }
            let seen = *rx.borrow_and_update();
            if seen >= position {
                return Ok(seen);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(QueryError::NotCaughtUp {
                    view: name.to_owned(),
                    requested: position,
                    current: seen,
                });
            }
            let poll = if self.inner.listening.load(Ordering::Acquire) {
                POLL_WITH_FEED
            } else {
                POLL_WITHOUT_FEED
            };
            let _ =
                tokio::time::timeout((deadline - now).min(poll), rx.wait_for(|p| *p >= position))
                    .await;
        }
    }

    /// One document of view `name` from its active version, optionally
    /// only once the view has applied `min`.
    pub async fn get(
        &self,
        name: &str,
        key: &str,
        min: Option<Position>,
    ) -> Result<ViewRead, QueryError> {
        crate::views::store::validate_name(name)?;
        if let Some(min) = min {
            self.wait_for(name, min).await?;
        }
        let Some(version) = self.version(name).await? else {
            return Ok(ViewRead {
                doc: None,
                checkpoint: Position::START,
            });
        };
        let view = ViewId::new(name, version)?;
        let cache_key = (view.clone(), key.to_owned());
        if let Some(hit) = self.inner.cache.get(&cache_key).await {
            if min.is_none_or(|m| hit.checkpoint >= m) {
                self.count(|s| s.hits += 1);
                return Ok((*hit).clone());
            }
            self.inner.cache.invalidate(&cache_key).await;
        }
        self.count(|s| s.misses += 1);
        // Concurrent misses for one key load once.
        let views = self.inner.views.clone();
        let (v, k) = (view.clone(), key.to_owned());
        let loaded = self
            .inner
            .loads
            .try_get_with(cache_key.clone(), async move {
                views.get(&v, &k).await.map(Arc::new)
            })
            .await
            .map_err(QueryError::shared)?;
        self.inner.loads.invalidate(&cache_key).await;
        // An announcement taken in while the read ran may have cached a
        // later state of the document: keep whichever is newer.
        self.keep_newer(cache_key.clone(), Arc::clone(&loaded))
            .await;
        let read = match self.inner.cache.get(&cache_key).await {
            Some(cached) if cached.checkpoint > loaded.checkpoint => cached,
            _ => loaded,
        };
        self.note_checkpoint(name, version, read.checkpoint);
        if min.is_some_and(|m| read.checkpoint < m) {
            // Joined a load that started before the view reached `min`.
            let fresh = self.inner.views.get(&view, key).await?;
            return Ok(fresh);
        }
        Ok((*read).clone())
    }

    /// One document of view `name` as the projection's document type `D`
    /// (see [`get`](Self::get); `None` when the key has no document).
    pub async fn get_doc<D: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        key: &str,
        min: Option<Position>,
    ) -> Result<Option<D>, QueryError> {
        let Some(doc) = self.get(name, key, min).await?.doc else {
            return Ok(None);
        };
        serde_json::from_value(doc.doc)
            .map(Some)
            .map_err(|e| QueryError::Document {
                view: name.to_owned(),
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// A page of view `name`'s documents in key order, after key `after`
    /// (not cached), optionally once the view has applied `min`. `limit`
    /// is capped at 10,000.
    pub async fn list(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
        min: Option<Position>,
    ) -> Result<ViewPage, QueryError> {
        crate::views::store::validate_name(name)?;
        if let Some(min) = min {
            self.wait_for(name, min).await?;
        }
        let Some(version) = self.version(name).await? else {
            return Ok(ViewPage {
                docs: Vec::new(),
                next: None,
            });
        };
        let limit = limit.clamp(1, 10_000);
        let view = ViewId::new(name, version)?;
        let mut docs = self.inner.views.list(&view, after, limit + 1).await?;
        let next = if docs.len() > limit {
            docs.truncate(limit);
            docs.last().map(|d| d.key.clone())
        } else {
            None
        };
        Ok(ViewPage { docs, next })
    }
}

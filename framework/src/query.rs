//! The query side: views served through a moka cache, kept fresh by change
//! announcements, with read-your-writes.
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

use crate::changes::{ChangeFeed, ChangeNotice};
use crate::envelope::Position;
use crate::view::{StoredDoc, ViewError, ViewId, ViewRead, ViewStore};

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

/// How long a reader trusts the active version it read. A rebuild keeps a
/// replaced version readable for longer than this before dropping it.
pub const VERSION_TTL: Duration = Duration::from_secs(1);

struct Inner<V> {
    views: V,
    /// Active version per view name, briefly cached (rebuilds switch it).
    versions: moka::future::Cache<String, u32>,
    cache: moka::future::Cache<Key, Arc<ViewRead>>,
    checkpoints: Mutex<HashMap<ViewId, watch::Sender<Position>>>,
    stats: Mutex<CacheStats>,
    config: ReaderConfig,
    /// A change feed is being followed: announcements move the checkpoint
    /// watches, so waits ask the store only as a safety net.
    listening: std::sync::atomic::AtomicBool,
}

/// Reads views through a cache. Cheap to clone.
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

impl<V: ViewStore> ViewReader<V> {
    /// A reader over `views`. Call [`listen`](Self::listen) to follow a
    /// change feed; without it, entries live until their TTL.
    pub fn new(views: V, config: ReaderConfig) -> Self {
        ViewReader {
            inner: Arc::new(Inner {
                views,
                versions: moka::future::Cache::builder()
                    .time_to_live(VERSION_TTL)
                    .build(),
                cache: moka::future::Cache::builder()
                    .max_capacity(config.capacity)
                    .time_to_live(config.ttl)
                    .build(),
                checkpoints: Mutex::new(HashMap::new()),
                stats: Mutex::new(CacheStats::default()),
                config,
                listening: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The view store.
    pub fn views(&self) -> &V {
        &self.inner.views
    }

    /// Cache counters.
    pub fn stats(&self) -> CacheStats {
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn checkpoint_tx(&self, view: &ViewId) -> watch::Sender<Position> {
        self.inner
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(view.clone())
            .or_insert_with(|| watch::Sender::new(Position::START))
            .clone()
    }

    fn set_listening(&self, on: bool) {
        self.inner.listening.store(on, Ordering::Release);
    }

    fn note_checkpoint(&self, view: &ViewId, position: Position) {
        self.checkpoint_tx(view).send_if_modified(|p| {
            if position > *p {
                *p = position;
                true
            } else {
                false
            }
        });
    }

    /// Applies one announcement to the cache: documents it carries are
    /// cached as read at its position (unless a newer read is cached);
    /// without documents, the changed keys are invalidated.
    async fn absorb(&self, view: &ViewId, change: &crate::changes::ViewChange) {
        let cache = &self.inner.cache;
        let Some(docs) = &change.docs else {
            for key in &change.keys {
                cache.invalidate(&(view.clone(), key.clone())).await;
            }
            self.count(|s| s.invalidations += change.keys.len() as u64);
            return;
        };
        let mut by_key: HashMap<&str, &StoredDoc> =
            docs.iter().map(|d| (d.key.as_str(), d)).collect();
        let mut refreshed = 0;
        for key in &change.keys {
            let cache_key = (view.clone(), key.clone());
            if let Some(cached) = cache.get(&cache_key).await {
                if cached.checkpoint >= change.position {
                    continue;
                }
            }
            let read = ViewRead {
                doc: by_key.remove(key.as_str()).cloned(),
                checkpoint: change.position,
            };
            cache.insert(cache_key, Arc::new(read)).await;
            refreshed += 1;
        }
        self.count(|s| s.refreshes += refreshed);
    }

    /// Follows `feed` until `shutdown`: caches the documents announcements
    /// carry (or invalidates the keys of those that carry none) and tracks
    /// each view's checkpoint. Spawns a task.
    pub async fn listen(
        &self,
        feed: &ChangeFeed,
        shutdown: CancellationToken,
    ) -> Result<(), crate::bus::BusError> {
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
            loop {
                let notice = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = sub.recv() => n,
                };
                match notice {
                    Some(ChangeNotice::Change(c)) => {
                        let Ok(view) = ViewId::new(&c.view, c.version) else {
                            continue;
                        };
                        reader.absorb(&view, &c).await;
                        reader.note_checkpoint(&view, c.position);
                    }
                    Some(ChangeNotice::Reset) => reader.inner.cache.invalidate_all(),
                    None => return,
                }
            }
        });
        Ok(())
    }

    /// The active version of view `name` (as written by its projector;
    /// version 1 until a rebuild replaces it).
    pub async fn active(&self, name: &str) -> Result<ViewId, QueryError> {
        let views = self.inner.views.clone();
        let n = name.to_owned();
        let version = self
            .inner
            .versions
            .try_get_with(
                name.to_owned(),
                async move { views.active_version(&n, 1).await },
            )
            .await
            .map_err(|e: Arc<ViewError>| QueryError::View(ViewError::backend(e.to_string())))?;
        Ok(ViewId::new(name, version)?)
    }

    /// Waits until `view` has applied `position`, up to the configured bound.
    pub async fn wait_for(
        &self,
        view: &ViewId,
        position: Position,
    ) -> Result<Position, QueryError> {
        let tx = self.checkpoint_tx(view);
        if *tx.borrow() >= position {
            return Ok(*tx.borrow());
        }
        let mut rx = tx.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.max_wait;
        // With a change feed, announcements are the fast path and the store
        // is asked only when none has come for a poll interval (so a lost
        // announcement costs one interval). Without one, the store is asked
        // every interval.
        let mut ask_store = !self.inner.listening.load(Ordering::Acquire);
        loop {
            if ask_store {
                let cp = self
                    .inner
                    .views
                    .checkpoint(&view.subscriber())
                    .await?
                    .position;
                self.note_checkpoint(view, cp);
                if cp >= position {
                    return Ok(cp);
                }
            }
            ask_store = true;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(QueryError::NotCaughtUp {
                    view: view.to_string(),
                    requested: position,
                    current: *rx.borrow(),
                });
            }
            let poll = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(poll, rx.wait_for(|p| *p >= position)).await;
            let seen = *rx.borrow();
            if seen >= position {
                return Ok(seen);
            }
        }
    }

    /// One document, optionally only once the view has applied `min`.
    pub async fn get(
        &self,
        view: &ViewId,
        key: &str,
        min: Option<Position>,
    ) -> Result<ViewRead, QueryError> {
        if let Some(min) = min {
            self.wait_for(view, min).await?;
        }
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
        let read = self
            .inner
            .cache
            .try_get_with(
                cache_key,
                async move { views.get(&v, &k).await.map(Arc::new) },
            )
            .await
            .map_err(|e: Arc<ViewError>| QueryError::View(ViewError::backend(e.to_string())))?;
        self.note_checkpoint(view, read.checkpoint);
        if min.is_some_and(|m| read.checkpoint < m) {
            // Joined a load that started before the view reached `min`.
            let fresh = self.inner.views.get(view, key).await?;
            return Ok(fresh);
        }
        Ok((*read).clone())
    }

    /// Documents of a view in key order (not cached), optionally once the
    /// view has applied `min`.
    pub async fn list(
        &self,
        view: &ViewId,
        after_key: Option<&str>,
        limit: usize,
        min: Option<Position>,
    ) -> Result<Vec<StoredDoc>, QueryError> {
        if let Some(min) = min {
            self.wait_for(view, min).await?;
        }
        Ok(self.inner.views.list(view, after_key, limit).await?)
    }
}

//! Change announcements: after a projector commits, it announces which
//! documents changed, their new states (up to a size limit over NATS), and
//! the view's new checkpoint. Query services use them to refresh (or
//! invalidate) their caches and to know how far each view has got; live
//! subscribers use them to push new states.
//!
//! In one process the feed is a broadcast channel; across processes it is a
//! plain NATS subject (`<prefix>.<view>`), not JetStream, where an
//! announcement can be lost. So announcements are chained: each names the
//! checkpoint it moved from ([`ViewChange::previous`]), and a subscription
//! that sees a link missing for a view version, or whose NATS connection
//! was re-established, hands out [`ChangeNotice::Reset`] before the next
//! change: subscribers then resynchronise from the view store. A lost
//! announcement never costs correctness of a read-your-writes query (see
//! `query.rs`).
//!
//! A rebuild's switch is announced too (`activated`), so readers move to
//! the new version the moment it commits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::envelope::Position;
use crate::propagation::bus::BusError;
use crate::views::store::StoredDoc;
use crate::write::aggregate::BoxFuture;

/// Announcements larger than this (encoded) go out without their documents,
/// as keys only; readers then load the documents when asked.
pub const MAX_ANNOUNCED_DOCS_BYTES: usize = 64 * 1024;

/// Documents of a view that changed, and the checkpoint after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view's name.
    pub view: String,
    /// The view's version.
    pub version: u32,
    /// Keys whose documents changed (may be empty: the checkpoint moved).
    pub keys: Vec<String>,
    /// The view's checkpoint after the change.
    pub position: Position,
    /// The checkpoint this change moved from: the link to the previous
    /// announcement of this view version. A subscriber that last saw
    /// another position missed announcements. `None` for announcements
    /// that start no chain (a switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Position>,
    /// This version has just become the active one (a rebuild switched to
    /// it); `keys` is empty. Readers follow it at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activated: bool,
    /// The changed documents' new states, when the projector sent them: each
    /// key of `keys` is either here (written) or was deleted. Readers cache
    /// them as read at `position`, so a read-your-writes query answers
    /// without a database read. `None` (keys only) when the documents would
    /// make a NATS announcement larger than [`MAX_ANNOUNCED_DOCS_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<Vec<StoredDoc>>,
}

impl ViewChange {
    /// The announcement that `version` of view `name` became active, with
    /// its checkpoint at the switch.
    pub fn activated(name: &str, version: u32, position: Position) -> Self {
        ViewChange {
            view: name.to_owned(),
            version,
            keys: Vec::new(),
            position,
            previous: None,
            activated: true,
            docs: None,
        }
    }
}

/// What a feed subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeNotice {
    /// A change.
    Change(ViewChange),
    /// Announcements may have been missed (a slow subscriber, a gap in a
    /// view's chain, a reconnect): drop every cached state and read again.
    Reset,
}

/// Where change announcements go: projectors [`publish`](Self::publish),
/// readers and live subscribers [`subscribe`](Self::subscribe).
///
/// [`InProcessChangeFeed`] is a broadcast channel inside one process;
/// `NatsChangeFeed` (feature `nats`) uses NATS subjects across processes.
/// [`AnyChangeFeed`] holds either (or any other implementation) behind one
/// type, which is what projectors, rebuilds and applications keep.
pub trait ChangeFeed: Clone + Send + Sync + 'static {
    /// Announces a change; best effort (a failure is logged).
    fn publish(&self, change: ViewChange) -> impl Future<Output = ()> + Send;

    /// Announces several changes (of different views, as a
    /// [`ProjectorGroup`](crate::ProjectorGroup) commits them), in order.
    /// Subscribers receive them as if published one by one; a feed may
    /// send them together (the NATS feed sends one message). The default
    /// publishes each in turn.
    fn publish_all(&self, changes: Vec<ViewChange>) -> impl Future<Output = ()> + Send {
        async move {
            for change in changes {
                self.publish(change).await;
            }
        }
    }

    /// Subscribes to every view's announcements.
    fn subscribe(&self) -> impl Future<Output = Result<ChangeSubscription, BusError>> + Send;

    /// This feed behind the one type [`AnyChangeFeed`] (itself, if it
    /// already is one).
    fn into_any(self) -> AnyChangeFeed {
        AnyChangeFeed {
            inner: Arc::new(self),
        }
    }
}

/// A change feed inside this process: a broadcast channel. A subscriber
/// that falls more than 4,096 announcements behind receives
/// [`ChangeNotice::Reset`]. Cheap to clone; clones share the channel.
#[derive(Clone, Debug)]
pub struct InProcessChangeFeed {
    tx: broadcast::Sender<ViewChange>,
}

impl Default for InProcessChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessChangeFeed {
    /// A new feed, with no subscribers yet.
    pub fn new() -> Self {
        InProcessChangeFeed {
            tx: broadcast::channel(4_096).0,
        }
    }
}

impl ChangeFeed for InProcessChangeFeed {
    async fn publish(&self, change: ViewChange) {
        // No subscriber is not a failure.
        let _ = self.tx.send(change);
    }

    async fn subscribe(&self) -> Result<ChangeSubscription, BusError> {
        Ok(ChangeSubscription::with_inner(SubInner::Local(
            self.tx.subscribe(),
        )))
    }
}

/// Object-safe form of [`ChangeFeed`], behind [`AnyChangeFeed`].
trait DynChangeFeed: Send + Sync {
    fn publish(&self, change: ViewChange) -> BoxFuture<'_, ()>;
    fn publish_all(&self, changes: Vec<ViewChange>) -> BoxFuture<'_, ()>;
    fn subscribe(&self) -> BoxFuture<'_, Result<ChangeSubscription, BusError>>;
}

impl<F: ChangeFeed> DynChangeFeed for F {
    fn publish(&self, change: ViewChange) -> BoxFuture<'_, ()> {
        Box::pin(ChangeFeed::publish(self, change))
    }

    fn publish_all(&self, changes: Vec<ViewChange>) -> BoxFuture<'_, ()> {
        Box::pin(ChangeFeed::publish_all(self, changes))
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<ChangeSubscription, BusError>> {
        Box::pin(ChangeFeed::subscribe(self))
    }
}

/// Any change feed, behind one type: what a [`Projector`](crate::Projector),
/// a [`rebuild`](crate::rebuild()) and applications hold, so they need no
/// type parameter for it. Cheap to clone; clones share the feed.
///
/// ```
/// use strata::{AnyChangeFeed, ChangeFeed, InProcessChangeFeed};
///
/// let feed: AnyChangeFeed = AnyChangeFeed::in_process();
/// let same = InProcessChangeFeed::new().into_any();
/// # let _ = (feed, same);
/// ```
#[derive(Clone)]
pub struct AnyChangeFeed {
    inner: Arc<dyn DynChangeFeed>,
}

impl AnyChangeFeed {
    /// Wraps `feed` (the same as [`ChangeFeed::into_any`]).
    pub fn new(feed: impl ChangeFeed) -> Self {
        feed.into_any()
    }

    /// A new [`InProcessChangeFeed`].
    pub fn in_process() -> Self {
        InProcessChangeFeed::new().into_any()
    }
}

impl Default for AnyChangeFeed {
    /// A feed inside this process.
    fn default() -> Self {
        Self::in_process()
    }
}

impl std::fmt::Debug for AnyChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyChangeFeed")
    }
}

impl ChangeFeed for AnyChangeFeed {
    fn publish(&self, change: ViewChange) -> impl Future<Output = ()> + Send {
        self.inner.publish(change)
    }

    fn publish_all(&self, changes: Vec<ViewChange>) -> impl Future<Output = ()> + Send {
        self.inner.publish_all(changes)
    }

    fn subscribe(&self) -> impl Future<Output = Result<ChangeSubscription, BusError>> + Send {
        self.inner.subscribe()
    }

    fn into_any(self) -> AnyChangeFeed {
        self
    }
}

/// Where a [`ChangeSubscription`] gets its notices from, for feeds other
/// than the in-process one (NATS, or your own): the announcements as they
/// arrive, before the subscription checks their chains.
pub trait ChangeSource: Send + 'static {
    /// The next announcement, or [`ChangeNotice::Reset`] when the source
    /// itself knows announcements may have been lost (e.g. it
    /// reconnected); `None` when the feed is gone. Must be cancel-safe: a
    /// subscriber may drop the future and call again.
    fn next(&mut self) -> BoxFuture<'_, Option<ChangeNotice>>;
}

enum SubInner {
    Local(broadcast::Receiver<ViewChange>),
    /// What a [`ViewReader`](crate::ViewReader) passes on.
    Notices(broadcast::Receiver<ChangeNotice>),
    /// Another feed's source (NATS).
    Source(Box<dyn ChangeSource>),
}

/// A subscription to a [`ChangeFeed`].
pub struct ChangeSubscription {
    inner: SubInner,
    /// Last position seen per view version: the chain to check.
    chains: HashMap<(String, u32), Position>,
    /// A change held back behind the reset handed out first.
    pending: Option<ViewChange>,
}

impl std::fmt::Debug for ChangeSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeSubscription")
    }
}

impl ChangeSubscription {
    /// A subscription to the notices of `source`, with the chain check
    /// every subscription does.
    pub fn new(source: impl ChangeSource) -> Self {
        Self::with_inner(SubInner::Source(Box::new(source)))
    }

    /// A subscription to notices passed on in-process.
    pub(crate) fn notices(rx: broadcast::Receiver<ChangeNotice>) -> Self {
        Self::with_inner(SubInner::Notices(rx))
    }

    fn with_inner(inner: SubInner) -> Self {
        ChangeSubscription {
            inner,
            chains: HashMap::new(),
            pending: None,
        }
    }

    /// The next notice; `None` when the feed is gone.
    ///
    /// A [`ChangeNotice::Reset`] comes first whenever announcements may
    /// have been missed: the local channel lagged, a view version's chain
    /// has a missing link, or the NATS connection was re-established.
    pub async fn recv(&mut self) -> Option<ChangeNotice> {
        if let Some(c) = self.pending.take() {
            return Some(ChangeNotice::Change(c));
        }
        let change = match self.next_raw().await? {
            ChangeNotice::Change(c) => c,
            ChangeNotice::Reset => {
                self.chains.clear();
                return Some(ChangeNotice::Reset);
            }
        };
        if self.broken(&change) {
            tracing::info!(view = %change.view, version = change.version, "missed change announcements; resynchronising");
            self.chains.clear();
            self.link(&change);
            self.pending = Some(change);
            return Some(ChangeNotice::Reset);
        }
        self.link(&change);
        Some(ChangeNotice::Change(change))
    }

    /// True when `change` does not follow the last one seen of its view
    /// version.
    fn broken(&self, change: &ViewChange) -> bool {
        let (Some(previous), Some(last)) = (
            change.previous,
            self.chains.get(&(change.view.clone(), change.version)),
        ) else {
            return false;
        };
        previous > *last
    }

    fn link(&mut self, change: &ViewChange) {
        let last = self
            .chains
            .entry((change.view.clone(), change.version))
            .or_insert(change.position);
        *last = (*last).max(change.position);
    }

    async fn next_raw(&mut self) -> Option<ChangeNotice> {
        match &mut self.inner {
            SubInner::Local(rx) => match rx.recv().await {
                Ok(c) => Some(ChangeNotice::Change(c)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(ChangeNotice::Reset),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            SubInner::Notices(rx) => match rx.recv().await {
                Ok(n) => Some(n),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(ChangeNotice::Reset),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            SubInner::Source(source) => source.next().await,
        }
    }
}

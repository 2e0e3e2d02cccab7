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
#[cfg(feature = "nats")]
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::envelope::Position;
use crate::views::store::StoredDoc;

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

/// Where change announcements go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChangeFeed {
    local: broadcast::Sender<ViewChange>,
    #[cfg(feature = "nats")]
    nats: Option<(async_nats::Client, String)>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::in_process()
    }
}

impl ChangeFeed {
    /// A feed inside this process.
    pub fn in_process() -> Self {
        ChangeFeed {
            local: broadcast::channel(4_096).0,
            #[cfg(feature = "nats")]
            nats: None,
        }
    }

    /// A feed on NATS subjects `<prefix>.<view>`; subscribers in this
    /// process receive it through NATS too.
    #[cfg(feature = "nats")]
    pub fn nats(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        ChangeFeed {
            local: broadcast::channel(4_096).0,
            nats: Some((client, prefix.into())),
        }
    }

    /// Announces a change; best effort (a failure is logged).
    pub async fn publish(&self, change: ViewChange) {
        #[cfg(feature = "nats")]
        if let Some((client, prefix)) = &self.nats {
            let encoded = serde_json::to_vec(&change).and_then(|body| {
                if body.len() > MAX_ANNOUNCED_DOCS_BYTES && change.docs.is_some() {
                    serde_json::to_vec(&ViewChange {
                        docs: None,
                        ..change.clone()
                    })
                } else {
                    Ok(body)
                }
            });
            match encoded {
                Ok(body) => {
                    let subject = format!("{prefix}.{}", change.view);
                    if let Err(e) = client.publish(subject, body.into()).await {
                        tracing::warn!(error = %e, view = %change.view, "could not announce a view change");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not encode a view change"),
            }
            return;
        }
        let _ = self.local.send(change);
    }

    /// Subscribes to every view's announcements.
    pub async fn subscribe(&self) -> Result<ChangeSubscription, crate::propagation::bus::BusError> {
        #[cfg(feature = "nats")]
        if let Some((client, prefix)) = &self.nats {
            let sub = client
                .subscribe(format!("{prefix}.>"))
                .await
                .map_err(crate::propagation::bus::BusError::unavailable)?;
            let connects = client.statistics().connects.load(Ordering::Relaxed);
            return Ok(ChangeSubscription {
                inner: SubInner::Nats {
                    sub,
                    client: client.clone(),
                    connects,
                },
                chains: HashMap::new(),
                pending: None,
            });
        }
        Ok(ChangeSubscription {
            inner: SubInner::Local(self.local.subscribe()),
            chains: HashMap::new(),
            pending: None,
        })
    }
}

enum SubInner {
    Local(broadcast::Receiver<ViewChange>),
    /// What a [`ViewReader`](crate::ViewReader) passes on.
    Notices(broadcast::Receiver<ChangeNotice>),
    #[cfg(feature = "nats")]
    Nats {
        sub: async_nats::Subscriber,
        client: async_nats::Client,
        /// The client's connection count when last looked at.
        connects: u64,
    },
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
    /// A subscription to notices passed on in-process.
    pub(crate) fn notices(rx: broadcast::Receiver<ChangeNotice>) -> Self {
        ChangeSubscription {
            inner: SubInner::Notices(rx),
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
            #[cfg(feature = "nats")]
            SubInner::Nats {
                sub,
                client,
                connects,
            } => {
                use futures::StreamExt;
                // Look at the connection count now and then too, so a
                // reconnect is noticed even when nothing follows it.
                loop {
                    let now = client.statistics().connects.load(Ordering::Relaxed);
                    if now != *connects {
                        *connects = now;
                        return Some(ChangeNotice::Reset);
                    }
                    let msg = match tokio::time::timeout(RECONNECT_CHECK, sub.next()).await {
                        Err(_) => continue,
                        Ok(m) => m?,
                    };
                    match serde_json::from_slice::<ViewChange>(&msg.payload) {
                        Ok(c) => return Some(ChangeNotice::Change(c)),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed view change"),
                    }
                }
            }
        }
    }
}

/// How often a NATS subscription checks for a reconnect while idle.
#[cfg(feature = "nats")]
const RECONNECT_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

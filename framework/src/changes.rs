//! Change announcements: after a projector commits, it announces which
//! documents changed, their new states (up to a size limit over NATS), and
//! the view's new checkpoint. Query services use them to refresh (or
//! invalidate) their caches and to know how far each view has got; live
//! subscribers use them to push new states.
//!
//! In one process the feed is a broadcast channel; across processes it is a
//! plain NATS subject (`<prefix>.<view>`), not JetStream: an announcement
//! that is lost costs a cache entry its freshness until its TTL, never
//! correctness of a read-your-writes query (see `query.rs`).

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::envelope::Position;
use crate::view::StoredDoc;

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
    /// The changed documents' new states, when the projector sent them: each
    /// key of `keys` is either here (written) or was deleted. Readers cache
    /// them as read at `position`, so a read-your-writes query answers
    /// without a database read. `None` (keys only) when the documents would
    /// make a NATS announcement larger than [`MAX_ANNOUNCED_DOCS_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<Vec<StoredDoc>>,
}

/// What a feed subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeNotice {
    /// A change.
    Change(ViewChange),
    /// Announcements may have been missed (a slow subscriber, a reconnect):
    /// drop every cached state.
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
    pub async fn subscribe(&self) -> Result<ChangeSubscription, crate::bus::BusError> {
        #[cfg(feature = "nats")]
        if let Some((client, prefix)) = &self.nats {
            let sub = client
                .subscribe(format!("{prefix}.>"))
                .await
                .map_err(crate::bus::BusError::unavailable)?;
            return Ok(ChangeSubscription {
                inner: SubInner::Nats(sub),
            });
        }
        Ok(ChangeSubscription {
            inner: SubInner::Local(self.local.subscribe()),
        })
    }
}

enum SubInner {
    Local(broadcast::Receiver<ViewChange>),
    #[cfg(feature = "nats")]
    Nats(async_nats::Subscriber),
}

/// A subscription to a [`ChangeFeed`].
pub struct ChangeSubscription {
    inner: SubInner,
}

impl std::fmt::Debug for ChangeSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeSubscription")
    }
}

impl ChangeSubscription {
    /// The next notice; `None` when the feed is gone.
    pub async fn recv(&mut self) -> Option<ChangeNotice> {
        match &mut self.inner {
            SubInner::Local(rx) => match rx.recv().await {
                Ok(c) => Some(ChangeNotice::Change(c)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some(ChangeNotice::Reset),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            #[cfg(feature = "nats")]
            SubInner::Nats(sub) => {
                use futures::StreamExt;
                loop {
                    let msg = sub.next().await?;
                    match serde_json::from_slice::<ViewChange>(&msg.payload) {
                        Ok(c) => return Some(ChangeNotice::Change(c)),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed view change"),
                    }
                }
            }
        }
    }
}

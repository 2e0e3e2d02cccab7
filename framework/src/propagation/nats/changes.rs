//! The change feed over NATS: announcements on plain subjects
//! `<prefix>.<view>`, or several views' at once as a JSON array on
//! `<prefix>._batch` (core NATS, not JetStream), so they can be lost; the
//! chain check of [`ChangeSubscription`] and a reset on every reconnect
//! make a loss noticed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;

use crate::propagation::bus::BusError;
use crate::propagation::changes::{
    AnyChangeFeed, ChangeFeed, ChangeNotice, ChangeSource, ChangeSubscription, ViewChange,
    MAX_ANNOUNCED_DOCS_BYTES,
};
use crate::write::aggregate::BoxFuture;

/// The last token of the subject that carries several views' changes in
/// one message (not a view name: those start with a letter).
const BATCH_SUBJECT: &str = "_batch";

/// A change as JSON, without its documents when they would make it larger
/// than [`MAX_ANNOUNCED_DOCS_BYTES`].
fn encode(change: &ViewChange) -> serde_json::Result<Vec<u8>> {
    let body = serde_json::to_vec(change)?;
    if body.len() > MAX_ANNOUNCED_DOCS_BYTES && change.docs.is_some() {
        serde_json::to_vec(&ViewChange {
            docs: None,
            ..change.clone()
        })
    } else {
        Ok(body)
    }
}

/// How often a NATS subscription checks for a reconnect while idle.
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// A change feed on NATS subjects `<prefix>.<view>`, across processes;
/// subscribers in this process receive it through NATS too. Announcements
/// larger than [`MAX_ANNOUNCED_DOCS_BYTES`] go out without their
/// documents. A subscription hands out [`ChangeNotice::Reset`] after a
/// reconnect. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NatsChangeFeed {
    client: async_nats::Client,
    prefix: String,
}

impl NatsChangeFeed {
    /// A feed on subjects `<prefix>.<view>` of `client`'s server.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        NatsChangeFeed {
            client,
            prefix: prefix.into(),
        }
    }
}

impl AnyChangeFeed {
    /// A new [`NatsChangeFeed`] on subjects `<prefix>.<view>`.
    pub fn nats(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        NatsChangeFeed::new(client, prefix).into_any()
    }
}

impl ChangeFeed for NatsChangeFeed {
    async fn publish(&self, change: ViewChange) {
        self.publish_all(vec![change]).await;
    }

    /// One message for all of them where they fit in
    /// [`MAX_ANNOUNCED_DOCS_BYTES`] together: a JSON array on
    /// `<prefix>._batch` (no view is named `_batch`). A change alone goes
    /// out as an object on `<prefix>.<view>`.
    async fn publish_all(&self, changes: Vec<ViewChange>) {
        let mut parts: Vec<(String, Vec<u8>)> = Vec::with_capacity(changes.len());
        for change in changes {
            match encode(&change) {
                Ok(body) => parts.push((change.view, body)),
                Err(e) => tracing::warn!(error = %e, "could not encode a view change"),
            }
        }
        let mut rest = parts.as_slice();
        while !rest.is_empty() {
            // As many as fit in one message (at least one).
            let mut n = 1;
            let mut size = rest[0].1.len() + 2;
            while n < rest.len() && size + rest[n].1.len() < MAX_ANNOUNCED_DOCS_BYTES {
                size += rest[n].1.len() + 1;
                n += 1;
            }
            let (these, later) = rest.split_at(n);
            rest = later;
            let (subject, body) = if let [(view, body)] = these {
                (format!("{}.{view}", self.prefix), body.clone())
            } else {
                let mut body = Vec::with_capacity(size);
                body.push(b'[');
                for (i, (_, part)) in these.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(part);
                }
                body.push(b']');
                (format!("{}.{BATCH_SUBJECT}", self.prefix), body)
            };
            if let Err(e) = self.client.publish(subject, body.into()).await {
                tracing::warn!(error = %e, "could not announce view changes");
            }
        }
    }

    async fn subscribe(&self) -> Result<ChangeSubscription, BusError> {
        let sub = self
            .client
            .subscribe(format!("{}.>", self.prefix))
            .await
            .map_err(BusError::unavailable)?;
        let connects = self.client.statistics().connects.load(Ordering::Relaxed);
        Ok(ChangeSubscription::new(NatsChanges {
            sub,
            client: self.client.clone(),
            connects,
            pending: Default::default(),
        }))
    }
}

/// The source of a NATS subscription.
struct NatsChanges {
    sub: async_nats::Subscriber,
    client: async_nats::Client,
    /// The client's connection count when last looked at.
    connects: u64,
    /// Changes of a batch message not handed out yet.
    pending: std::collections::VecDeque<ViewChange>,
}

impl ChangeSource for NatsChanges {
    fn next(&mut self) -> BoxFuture<'_, Option<ChangeNotice>> {
        Box::pin(async move {
            // Look at the connection count now and then too, so a
            // reconnect is noticed even when nothing follows it.
            if let Some(c) = self.pending.pop_front() {
                return Some(ChangeNotice::Change(c));
            }
            loop {
                let now = self.client.statistics().connects.load(Ordering::Relaxed);
                if now != self.connects {
                    self.connects = now;
                    return Some(ChangeNotice::Reset);
                }
                let msg = match tokio::time::timeout(RECONNECT_CHECK, self.sub.next()).await {
                    Err(_) => continue,
                    Ok(m) => m?,
                };
                if msg.payload.first() == Some(&b'[') {
                    match serde_json::from_slice::<Vec<ViewChange>>(&msg.payload) {
                        Ok(changes) => {
                            self.pending.extend(changes);
                            if let Some(c) = self.pending.pop_front() {
                                return Some(ChangeNotice::Change(c));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring malformed view changes"),
                    }
                    continue;
                }
                match serde_json::from_slice::<ViewChange>(&msg.payload) {
                    Ok(c) => return Some(ChangeNotice::Change(c)),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed view change"),
                }
            }
        })
    }
}

//! The change feed over NATS: announcements on plain subjects
//! `<prefix>.<view>` (core NATS, not JetStream), so they can be lost; the
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
                let subject = format!("{}.{}", self.prefix, change.view);
                if let Err(e) = self.client.publish(subject, body.into()).await {
                    tracing::warn!(error = %e, view = %change.view, "could not announce a view change");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode a view change"),
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
        }))
    }
}

/// The source of a NATS subscription.
struct NatsChanges {
    sub: async_nats::Subscriber,
    client: async_nats::Client,
    /// The client's connection count when last looked at.
    connects: u64,
}

impl ChangeSource for NatsChanges {
    fn next(&mut self) -> BoxFuture<'_, Option<ChangeNotice>> {
        Box::pin(async move {
            // Look at the connection count now and then too, so a
            // reconnect is noticed even when nothing follows it.
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
                match serde_json::from_slice::<ViewChange>(&msg.payload) {
                    Ok(c) => return Some(ChangeNotice::Change(c)),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed view change"),
                }
            }
        })
    }
}

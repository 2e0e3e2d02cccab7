//! The follower side: a `NOTIFY` listener (with a polling safety net) that
//! keeps the store's head watch current for [`EventStore::wait_for_head`].
//!
//! [`EventStore::wait_for_head`]: crate::store::EventStore::wait_for_head

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::{reads, PgEventStore, Shared, NOTIFY_CHANNEL};
use crate::envelope::Position;

impl PgEventStore {
    /// Starts the listener on first use.
    pub(super) fn ensure_listener(&self) {
        if !self
            .inner
            .shared
            .listener_started
            .swap(true, Ordering::AcqRel)
        {
            tokio::spawn(run_listener(
                Arc::downgrade(&self.inner.shared),
                self.inner.pool.clone(),
                self.inner.config.poll_interval,
            ));
        }
    }
}

/// Follows `NOTIFY`s (and polls as a safety net) to keep the head watch
/// current for [`EventStore::wait_for_head`](crate::store::EventStore::wait_for_head).
/// Ends when the store is dropped.
async fn run_listener(shared: Weak<Shared>, pool: PgPool, poll_interval: Duration) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; followers fall back to polling");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "listener connection failed; followers fall back to polling");
                None
            }
        };
        loop {
            let Some(s) = shared.upgrade() else { return };
            if let Ok(head) = reads::head(&pool).await {
                s.advance_head(head);
            }
            s.listening.store(listener.is_some(), Ordering::Release);
            drop(s);
            let Some(l) = listener.as_mut() else {
                tokio::time::sleep(poll_interval).await;
                break; // try to listen again
            };
            let deadline = tokio::time::sleep(poll_interval);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    n = l.try_recv() => match n {
                        Ok(Some(n)) => {
                            let Some(s) = shared.upgrade() else { return };
                            if let Ok(h) = n.payload().parse::<u64>() {
                                s.advance_head(Position(h));
                            }
                        }
                        // The connection dropped and was re-established:
                        // notifications may have been lost, so poll.
                        Ok(None) => {
                            if let Some(s) = shared.upgrade() {
                                s.listening.store(false, Ordering::Release);
                            }
                            break;
                        }
                        Err(_) => {
                            if let Some(s) = shared.upgrade() {
                                s.listening.store(false, Ordering::Release);
                            }
                            listener = None;
                            break;
                        }
                    },
                    _ = &mut deadline => break,
                }
            }
        }
    }
}

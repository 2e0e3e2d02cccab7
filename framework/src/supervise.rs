//! The one supervise loop of every long-running subscriber (relay,
//! projector, process manager): run the active part, and after a failure
//! report it, back off (100 ms doubling to 5 s) and run it again, until the
//! shutdown signal.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `attempt` until it ends without error or `shutdown` is cancelled;
/// each error goes to `on_failure` before the backoff.
pub(crate) async fn supervise<E, Fut>(
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
    mut on_failure: impl FnMut(&E),
) where
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = FIRST_BACKOFF;
    while !shutdown.is_cancelled() {
        match attempt().await {
            Ok(()) => break,
            Err(e) => {
                on_failure(&e);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_with_doubling_backoff_until_success() {
        let calls = AtomicU32::new(0);
        let mut failures = Vec::new();
        let started = tokio::time::Instant::now();
        supervise(
            &CancellationToken::new(),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("down"),
                    _ => Ok(()),
                }
            },
            |e: &&str| failures.push(*e),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(failures, ["down"; 3]);
        // 100 + 200 + 400 ms of backoff (the clock is paused and advanced).
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_backoff() {
        let shutdown = CancellationToken::new();
        let calls = AtomicU32::new(0);
        supervise(
            &shutdown,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                shutdown.cancel();
                async { Err::<(), _>("down") }
            },
            |_| {},
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

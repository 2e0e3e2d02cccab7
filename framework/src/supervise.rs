//! The one supervise loop of every long-running subscriber (relay,
//! projector, process manager): run the active part, and after a failure
//! report it, back off (100 ms doubling to 5 s; back to 100 ms after a run
//! of 30 s or more) and run it again, until the shutdown signal.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run at least this long counts as healthy: the failure that ends it
/// waits the first backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

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
        let started = tokio::time::Instant::now();
        match attempt().await {
            Ok(()) => break,
            Err(e) => {
                // A run that lasted ended for a new reason: start the
                // backoff over rather than wait as long as after the
                // failures before it.
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
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

    /// Four quick failures, then a run of a minute that fails, then a
    /// quick one that succeeds: the failure after the long run waits the
    /// first backoff again, not the fifth.
    #[tokio::test(start_paused = true)]
    async fn a_long_run_starts_the_backoff_over() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        supervise(
            &CancellationToken::new(),
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0..=3 => Err("down"),
                        4 => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            Err("down after a minute")
                        }
                        _ => Ok(()),
                    }
                }
            },
            |_: &&str| {},
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        // 100 + 200 + 400 + 800 ms, the 60 s run, then 100 ms (not 1.6 s).
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1_500) + Duration::from_secs(60) + Duration::from_millis(100)
        );
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

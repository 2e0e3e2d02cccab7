//! Wiring: which backends, which long-running tasks, and their gauges.
//!
//! Two modes share every piece of code: **in memory** (`InMemoryEventStore`,
//! `InProcessBus`, `InMemoryViewStore`, an in-process change feed: no
//! servers) and **servers** (`PgEventStore`, the JetStream relay and bus,
//! `PgViewStore`, a NATS change feed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata::nats::StreamConfig;
use strata::{
    AnyChangeFeed, CancellationToken, EventBus, EventStore, Projection, Projector, RelayStatus,
    SubscriberStatus, ViewReader, ViewStore,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{Fulfilment, Shop};
use crate::metrics::Sample;
use crate::views::{
    CatalogView, CustomerOrdersView, LowStockView, OrderDetailsView, SalesDashboardView,
};

/// Names of every projection, as `--view` takes them.
pub const VIEWS: [&str; 5] = [
    "catalog",
    "order_details",
    "customer_orders",
    "low_stock",
    "sales_dashboard",
];

/// Connection settings for the servers mode. Its `Debug` shows the URLs
/// without their passwords.
#[derive(Clone)]
pub struct Servers {
    /// PostgreSQL URL.
    pub database_url: String,
    /// NATS URL.
    pub nats_url: String,
    /// JetStream stream and subject prefix.
    pub stream: StreamConfig,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field("database_url", &crate::config::redact(&self.database_url))
            .field("nats_url", &crate::config::redact(&self.nats_url))
            .field("stream", &self.stream)
            .finish()
    }
}

impl Servers {
    /// The subject prefix of change announcements.
    pub fn changes_prefix(&self) -> String {
        format!("{}_changes", self.stream.prefix)
    }
}

/// Statuses of the long-running tasks in this process, for `/metrics`.
#[derive(Clone, Default)]
pub struct Statuses {
    subscribers: Arc<Mutex<Vec<watch::Receiver<SubscriberStatus>>>>,
    relay: Arc<Mutex<Option<watch::Receiver<RelayStatus>>>>,
}

impl Statuses {
    /// Tracks a projector or process manager.
    pub fn add_subscriber(&self, rx: watch::Receiver<SubscriberStatus>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rx);
    }

    /// Tracks the relay.
    pub fn set_relay(&self, rx: watch::Receiver<RelayStatus>) {
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }

    /// The subscribers' current statuses.
    pub fn subscribers(&self) -> Vec<SubscriberStatus> {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|rx| rx.borrow().clone())
            .collect()
    }

    /// Gauges for `/metrics`.
    pub fn samples(&self) -> Vec<Sample> {
        let mut out: Vec<Sample> = Vec::new();
        for s in self.subscribers() {
            let l = || vec![("subscriber", s.subscriber.clone())];
            out.push(("strata_subscriber_position", l(), s.position.0 as f64));
            if let Some(lag) = s.lag {
                out.push(("strata_subscriber_lag", l(), lag as f64));
            }
            out.push(("strata_subscriber_dead_letters", l(), s.dead_letters as f64));
            out.push((
                "strata_subscriber_halted",
                l(),
                f64::from(u8::from(s.state == strata::RunState::Halted)),
            ));
        }
        if let Some(rx) = self
            .relay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let r = rx.borrow();
            out.push(("strata_relay_active", vec![], f64::from(u8::from(r.active))));
            out.push((
                "strata_relay_published_position",
                vec![],
                r.published.0 as f64,
            ));
            out.push(("strata_relay_lag", vec![], r.lag as f64));
        }
        out
    }
}

/// Cache gauges of a reader.
pub fn cache_samples<V: ViewStore>(reader: &ViewReader<V>) -> Vec<Sample> {
    let s = reader.stats();
    let total = (s.hits + s.misses).max(1) as f64;
    vec![
        ("strata_cache_hits_total", vec![], s.hits as f64),
        ("strata_cache_misses_total", vec![], s.misses as f64),
        ("strata_cache_hit_ratio", vec![], s.hits as f64 / total),
        (
            "strata_cache_invalidations_total",
            vec![],
            s.invalidations as f64,
        ),
        ("strata_cache_refreshes_total", vec![], s.refreshes as f64),
    ]
}

fn spawn_one<P: Projection, B: EventBus, V: ViewStore>(
    projection: P,
    bus: &B,
    views: &V,
    feed: &AnyChangeFeed,
    statuses: &Statuses,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let projector =
        Projector::new(projection, bus.clone(), views.clone()).with_change_feed(feed.clone());
    statuses.add_subscriber(projector.status());
    tokio::spawn(projector.run(shutdown.clone()))
}

/// Starts the projectors named in `only` (all when empty).
pub fn spawn_projectors<B: EventBus, V: ViewStore>(
    only: &[String],
    bus: &B,
    views: &V,
    feed: &AnyChangeFeed,
    statuses: &Statuses,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let wanted = |n: &str| only.is_empty() || only.iter().any(|o| o == n);
    let mut tasks = Vec::new();
    if wanted("catalog") {
        tasks.push(spawn_one(CatalogView, bus, views, feed, statuses, shutdown));
    }
    if wanted("order_details") {
        tasks.push(spawn_one(
            OrderDetailsView,
            bus,
            views,
            feed,
            statuses,
            shutdown,
        ));
    }
    if wanted("customer_orders") {
        tasks.push(spawn_one(
            CustomerOrdersView,
            bus,
            views,
            feed,
            statuses,
            shutdown,
        ));
    }
    if wanted("low_stock") {
        tasks.push(spawn_one(
            LowStockView,
            bus,
            views,
            feed,
            statuses,
            shutdown,
        ));
    }
    if wanted("sales_dashboard") {
        tasks.push(spawn_one(
            SalesDashboardView,
            bus,
            views,
            feed,
            statuses,
            shutdown,
        ));
    }
    tasks
}

/// Starts the fulfilment process manager.
pub fn spawn_fulfilment<S: EventStore, B: EventBus, V: ViewStore>(
    shop: &Shop<S>,
    bus: &B,
    views: &V,
    statuses: &Statuses,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let runner =
        strata::ProcessManagerRunner::new(Fulfilment, bus.clone(), views.clone(), shop.clone());
    statuses.add_subscriber(runner.status());
    tokio::spawn(runner.run(shutdown.clone()))
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// Waits for tasks to finish, at most `grace`.
pub async fn join_all(tasks: Vec<JoinHandle<()>>, grace: Duration) {
    let _ = tokio::time::timeout(grace, futures::future::join_all(tasks)).await;
}

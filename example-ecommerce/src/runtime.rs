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
    AnyChangeFeed, CancellationToken, EventBus, EventStore, PgEventStore, Projection, Projector,
    ProjectorGroup, RelayStatus, SubscriberStatus, ViewReader, ViewStore,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{Fulfilment, Shop};
use crate::http::{GaugeSource, HealthCheck};
use crate::metrics::Sample;
use crate::views::{
    CatalogView, CustomerOrderHistoryView, CustomerOrdersView, LowStockView, OrderDetailsView,
    SalesDashboardView,
};

/// Names of every projection, as `--view` takes them.
pub const VIEWS: [&str; 6] = crate::views::VIEW_NAMES;

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

    /// [`Statuses::samples`] as a gauge source for [`Ops`](crate::http::Ops).
    pub fn gauges(&self) -> GaugeSource {
        let statuses = self.clone();
        Arc::new(move || statuses.samples())
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

/// Readiness: the store answers within 2 s, and NATS (when the process
/// uses it) is connected.
pub fn health<S: EventStore>(store: S, client: Option<async_nats::Client>) -> HealthCheck {
    Arc::new(move || {
        let (store, client) = (store.clone(), client.clone());
        Box::pin(async move {
            let mut checks = vec![(
                "database",
                tokio::time::timeout(Duration::from_secs(2), store.head())
                    .await
                    .is_ok_and(|r| r.is_ok()),
            )];
            if let Some(c) = client {
                checks.push((
                    "nats",
                    c.connection_state() == async_nats::connection::State::Connected,
                ));
            }
            checks
        })
    })
}

/// The store's write-path counters as gauges.
pub fn store_samples(store: &PgEventStore) -> Vec<Sample> {
    let st = store.stats();
    let count = |name, n: u64| (name, vec![], n as f64);
    vec![
        count("strata_store_appends_total", st.appends),
        count("strata_store_group_commits_total", st.batches),
        count("strata_store_conflicts_total", st.conflicts),
        count("strata_store_append_moved_groups_total", st.moved_groups),
        count("strata_store_append_fallbacks_total", st.fallbacks),
        count("strata_store_slow_lock_waits", st.slow_lock_waits),
        count("strata_store_appends_queued", st.queued),
        (
            "strata_store_max_lock_wait_seconds",
            vec![],
            st.max_lock_wait_us as f64 / 1e6,
        ),
    ]
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

/// Gathers the wanted projectors into one group.
struct Projectors<'a, B: EventBus, V: ViewStore> {
    only: &'a [String],
    bus: &'a B,
    views: &'a V,
    group: ProjectorGroup<B, V>,
    count: usize,
}

impl<B: EventBus, V: ViewStore> Projectors<'_, B, V> {
    /// Adds `projection` if it is wanted (`only` is empty or names it).
    fn add<P: Projection>(&mut self, projection: P) {
        let name = projection.name();
        if !(self.only.is_empty() || self.only.iter().any(|o| o == name)) {
            return;
        }
        let projector = Projector::new(projection, self.bus.clone(), self.views.clone());
        let group = std::mem::replace(
            &mut self.group,
            ProjectorGroup::new(self.bus.clone(), self.views.clone()),
        );
        self.group = group.with_projector(projector);
        self.count += 1;
    }
}

/// Starts the projectors named in `only` (all when empty), as one
/// [`ProjectorGroup`]: one subscription, and each batch of every view
/// committed together, their changes announced together on `feed`.
/// Returns its task (none when nothing is wanted).
pub fn spawn_projectors<B: EventBus, V: ViewStore>(
    only: &[String],
    bus: &B,
    views: &V,
    feed: &AnyChangeFeed,
    statuses: &Statuses,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut projectors = Projectors {
        only,
        bus,
        views,
        group: ProjectorGroup::new(bus.clone(), views.clone()).with_change_feed(feed.clone()),
        count: 0,
    };
    projectors.add(CatalogView);
    projectors.add(OrderDetailsView);
    projectors.add(CustomerOrdersView);
    projectors.add(CustomerOrderHistoryView);
    projectors.add(LowStockView);
    projectors.add(SalesDashboardView);
    if projectors.count == 0 {
        return Vec::new();
    }
    let group = projectors.group;
    for status in group.statuses() {
        statuses.add_subscriber(status);
    }
    vec![tokio::spawn(group.run(shutdown.clone()))]
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

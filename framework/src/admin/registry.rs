//! The projections and subscribers the admin commands know: the registry an
//! application fills in [`AdminContext`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::AdminError;
use crate::envelope::EventEnvelope;
use crate::propagation::changes::{AnyChangeFeed, ChangeFeed};
use crate::propagation::nats::StreamConfig;
use crate::views::projection::{Projection, ProjectionTest};
use crate::views::rebuild::{RebuildError, RebuildOptions, RebuildProgress, RebuildReport};
use crate::views::store::Versions;
use crate::write::aggregate::BoxFuture;
use crate::{PgEventStore, PgViewStore};

/// A projection the admin CLI knows, with its type erased.
pub trait RegisteredProjection: Send + Sync {
    /// The view's name.
    fn name(&self) -> &str;
    /// The version its code declares.
    fn version(&self) -> u32;
    /// Rebuilds it online.
    fn rebuild(
        &self,
        store: PgEventStore,
        views: PgViewStore,
        feed: Option<AnyChangeFeed>,
        progress: Box<dyn FnMut(RebuildProgress) + Send>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<RebuildReport, RebuildError>>;
    /// The documents a fresh fold of `events` gives.
    fn fold(&self, events: &[EventEnvelope]) -> BTreeMap<String, Value>;
}

struct Registered<F> {
    /// The projection's name, asked once at registration.
    name: String,
    make: F,
}

impl<P, F> RegisteredProjection for Registered<F>
where
    P: Projection,
    F: Fn() -> P + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        (self.make)().version()
    }

    fn rebuild(
        &self,
        store: PgEventStore,
        views: PgViewStore,
        feed: Option<AnyChangeFeed>,
        progress: Box<dyn FnMut(RebuildProgress) + Send>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<RebuildReport, RebuildError>> {
        let projection = (self.make)();
        Box::pin(async move {
            crate::views::rebuild::rebuild(
                projection,
                store,
                views,
                feed,
                RebuildOptions::default(),
                progress,
                shutdown,
            )
            .await
        })
    }

    fn fold(&self, events: &[EventEnvelope]) -> BTreeMap<String, Value> {
        ProjectionTest::new((self.make)())
            .given(events.iter().cloned())
            .json()
            .clone()
    }
}

/// What the admin commands operate on.
pub struct AdminContext {
    pub(super) store: PgEventStore,
    pub(super) views: PgViewStore,
    pub(super) projections: Vec<Arc<dyn RegisteredProjection>>,
    /// The projections' names, in registration order.
    pub(super) names: Vec<String>,
    pub(super) nats: Option<(async_nats::Client, StreamConfig)>,
    pub(super) feed: Option<AnyChangeFeed>,
    /// Process managers' checkpoint names.
    pub(super) subscribers: Vec<String>,
}

impl AdminContext {
    /// A context over the application's store and views.
    pub fn new(store: PgEventStore, views: PgViewStore) -> Self {
        AdminContext {
            store,
            views,
            projections: Vec::new(),
            names: Vec::new(),
            nats: None,
            feed: None,
            subscribers: Vec::new(),
        }
    }

    /// Registers a projection (a factory, since rebuilds consume one).
    pub fn projection<P: Projection>(
        mut self,
        make: impl Fn() -> P + Send + Sync + 'static,
    ) -> Self {
        let name = make().name().to_owned();
        self.names.push(name.clone());
        self.projections.push(Arc::new(Registered { name, make }));
        self
    }

    /// Registers a process manager's checkpoint name (for `status`).
    pub fn process_manager(mut self, name: &str) -> Self {
        self.subscribers.push(name.to_owned());
        self
    }

    /// Enables the JetStream commands.
    pub fn nats(mut self, client: async_nats::Client, config: StreamConfig) -> Self {
        self.nats = Some((client, config));
        self
    }

    /// Announces rebuilds' documents and switches on `feed`, so query
    /// services follow a switch the moment it commits.
    pub fn change_feed(mut self, feed: impl ChangeFeed) -> Self {
        self.feed = Some(feed.into_any());
        self
    }

    /// The projection registered as `name`.
    pub(super) fn find(&self, name: &str) -> Result<&Arc<dyn RegisteredProjection>, AdminError> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.projections[i])
            .ok_or_else(|| AdminError::UnknownProjection {
                name: name.to_owned(),
                registered: self.names.clone(),
            })
    }

    /// The registered projections with their names, in registration order.
    pub(super) fn registered(&self) -> impl Iterator<Item = (&str, &dyn RegisteredProjection)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.projections.iter().map(|p| &**p))
    }

    /// The version of projection `p` (registered as `name`) that readers
    /// are served: the active one, or the code's before any is recorded.
    pub(super) async fn active_version(
        &self,
        name: &str,
        p: &dyn RegisteredProjection,
    ) -> Result<u32, AdminError> {
        Ok(self
            .views
            .active(name)
            .await?
            .map_or(p.version(), |a| a.version))
    }

    /// The JetStream client and stream, for `command`, which needs them.
    pub(super) fn jetstream(
        &self,
        command: &'static str,
    ) -> Result<(async_nats::Client, StreamConfig), AdminError> {
        self.nats
            .clone()
            .ok_or(AdminError::NatsNotConfigured { command })
    }
}

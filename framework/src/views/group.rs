//! Several projections over one subscription, committed together.
//!
//! A [`ProjectorGroup`] runs projectors the way a process of them is
//! usually deployed: side by side, on the same bus and view store. Run
//! alone, each projector has its own subscription (every event delivered
//! and decoded once per projector) and commits each of its batches on its
//! own (one transaction per view per batch, most of them only moving a
//! checkpoint). The group subscribes once, hands each batch to every
//! member, and commits what all of them made of it with one call to
//! [`Documents::commit_all`](crate::Documents::commit_all) (one statement
//! on Postgres).
//!
//! Each member keeps what it has alone: its own lease, checkpoint, view
//! version, dead letters and status. A member's commit is fenced by its
//! own checkpoint, so one instance fenced off does not hold the others
//! back. An event a member fails on takes that member's part of the batch
//! through the projector's own path (what came before is committed, the
//! event is dead-lettered, then the member halts or skips it), while the
//! others commit together. A halted member waits; once an operator
//! resumes it, the group subscribes again from the lowest checkpoint, and
//! each member skips what it has applied.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::envelope::{EventEnvelope, Position};
use crate::propagation::bus::{EventBus, Subscription};
use crate::propagation::changes::{AnyChangeFeed, ChangeFeed, ViewChange};
use crate::store::EventFilter;
use crate::views::projection::{
    BatchEnd, Computed, Projection, Projector, ProjectorConfig, RunError, RunState,
    SubscriberStatus,
};
use crate::views::store::{SubscriberState, ViewCommit, ViewId, ViewStore};
use crate::write::aggregate::BoxFuture;

/// Runs several projectors on one subscription, committing their changes
/// of each batch together.
///
/// Run alone, each projector has its own subscription (every event
/// delivered and decoded once per projector) and commits each of its
/// batches on its own. The group subscribes once, hands each batch to
/// every member, commits what all of them made of it with one
/// [`Documents::commit_all`](crate::Documents::commit_all) (one statement
/// on Postgres) and announces it with one
/// [`ChangeFeed::publish_all`]. Each member keeps its own lease,
/// checkpoint, view version, dead letters and status; its commit is fenced
/// by its own checkpoint. A member that fails on an event takes its part
/// of the batch through the projector's own path (dead letter, then halt
/// or skip) while the others commit together; a halted member waits, and
/// once resumed the group subscribes again from the lowest checkpoint.
/// See ADR 0012.
///
/// ```ignore
/// let group = ProjectorGroup::new(bus.clone(), views.clone())
///     .with_change_feed(feed.clone())
///     .with_projector(Projector::new(Catalog, bus.clone(), views.clone()))
///     .with_projector(Projector::new(Orders, bus.clone(), views.clone()));
/// let statuses = group.statuses();
/// tokio::spawn(group.run(shutdown));
/// ```
pub struct ProjectorGroup<B: EventBus, V: ViewStore> {
    bus: B,
    views: V,
    feed: Option<AnyChangeFeed>,
    config: ProjectorConfig,
    members: Vec<Box<dyn Member>>,
}

impl<B: EventBus, V: ViewStore> ProjectorGroup<B, V> {
    /// An empty group reading `bus` and writing `views`. Batches of the
    /// shared subscription follow [`ProjectorConfig::default`]'s size and
    /// wait.
    pub fn new(bus: B, views: V) -> Self {
        ProjectorGroup {
            bus,
            views,
            feed: None,
            config: ProjectorConfig::default(),
            members: Vec::new(),
        }
    }

    /// Announces every batch's changes of all members on `feed`, together
    /// ([`ChangeFeed::publish_all`]: one NATS message). Without it, each
    /// member announces on its own feed, if it has one.
    pub fn with_change_feed(mut self, feed: impl ChangeFeed) -> Self {
        self.feed = Some(feed.into_any());
        self
    }

    /// Sets the shared subscription's batch size and wait. Each member's
    /// attempts, backoff and document cache stay its own.
    pub fn with_config(mut self, config: ProjectorConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a projector (with its own change feed, upcasters and tuning).
    /// Its bus is not used: the group's subscription feeds it. Panics if
    /// the group already has a projection of that name.
    pub fn with_projector<P: Projection, PB: EventBus>(
        mut self,
        projector: Projector<P, PB, V>,
    ) -> Self {
        let name = projector.view().name().to_owned();
        assert!(
            self.members.iter().all(|m| m.view().name() != name),
            "projection {name} added twice to a group"
        );
        self.members.push(Box::new(projector));
        self.members.sort_by_key(|m| m.view().name().to_owned());
        self
    }

    /// Live views of the members' statuses, in name order.
    pub fn statuses(&self) -> Vec<watch::Receiver<SubscriberStatus>> {
        self.members.iter().map(|m| m.status()).collect()
    }

    /// The name of the group's subscription: its members' names, hashed
    /// (stable across view versions and restarts).
    pub fn subscription_name(&self) -> String {
        // FNV-1a: short, stable, and no dependency for one hash.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for m in &self.members {
            for b in m.view().name().bytes().chain(std::iter::once(b',')) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("views_{hash:016x}")
    }

    /// Runs until `shutdown` is cancelled. Failures (database or bus down,
    /// a member fenced or its lease lost) end the run: every member goes
    /// back to standby and the group starts again from the committed
    /// checkpoints, with backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        crate::supervise::supervise(
            &shutdown,
            || self.run_active(&shutdown),
            |e: &RunError| {
                tracing::warn!(group = %self.subscription_name(), error = %e, "projector group interrupted; retrying");
                for m in &self.members {
                    m.update(&|s| {
                        s.state = RunState::Standby;
                        s.last_error = Some(e.to_string());
                    });
                }
            },
        )
        .await;
        for m in &self.members {
            m.update(&|s| s.state = RunState::Stopped);
        }
    }

    async fn run_active(&self, shutdown: &CancellationToken) -> Result<(), RunError> {
        // Every member's lease, in name order, so groups that share members
        // never wait on each other in a circle.
        let mut views = Vec::with_capacity(self.members.len());
        let mut leases = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let view = m.resolve_view().await?;
            let subscriber = view.subscriber();
            let lease = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                l = self.views.acquire(&subscriber) => l?,
            };
            views.push(view);
            leases.push(lease);
        }
        let name = self.subscription_name();
        loop {
            // One pass: a subscription from the lowest checkpoint of the
            // members that are not halted. It ends when a halted member
            // is resumed, to take it in from its checkpoint.
            let mut positions: Vec<Option<Position>> = Vec::with_capacity(views.len());
            for (m, view) in self.members.iter().zip(&views) {
                positions.push(m.start_run(view).await?);
            }
            let Some(start) = positions.iter().flatten().min().copied() else {
                // All halted: wait for an operator.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let mut sub = self
                .bus
                .subscribe(&name, &EventFilter::all(), start)
                .await?;
            let mut position = start;
            let mut lease_checked = Instant::now();
            let mut halts_checked = Instant::now();
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    b = sub.next_batch(self.config.batch_size, self.config.max_wait) => b?,
                };
                if lease_checked.elapsed() > Duration::from_secs(2) {
                    for lease in &mut leases {
                        if !lease.still_held().await {
                            return Err(RunError::LeaseLost);
                        }
                    }
                    lease_checked = Instant::now();
                }
                if positions.iter().any(Option::is_none)
                    && halts_checked.elapsed() > Duration::from_secs(1)
                {
                    if self.any_resumed(&views, &positions).await? {
                        break;
                    }
                    halts_checked = Instant::now();
                }
                let (batch, stale) = crate::propagation::bus::in_order(batch, position)?;
                if batch.is_empty() {
                    crate::propagation::bus::ack_batch(stale).await;
                    continue;
                }
                let events: Vec<&EventEnvelope> = batch.iter().map(|d| &d.envelope).collect();
                self.apply(&events, &mut positions).await?;
                position = events.last().map_or(position, |e| e.position);
                // Every member has taken the batch (a halted one will read
                // it again from its checkpoint when resumed).
                crate::propagation::bus::ack_batch(batch).await;
                let lag = sub.backlog();
                for (m, p) in self.members.iter().zip(&positions) {
                    if p.is_some() {
                        m.update(&|s| s.lag = lag);
                    }
                }
            }
        }
    }

    /// Applies one batch to every member that is not halted: all their
    /// changes in one commit, then the members that failed on an event
    /// each through their own path.
    async fn apply(
        &self,
        events: &[&EventEnvelope],
        positions: &mut [Option<Position>],
    ) -> Result<(), RunError> {
        let mut ready: Vec<(usize, Computed)> = Vec::new();
        let mut failed: Vec<usize> = Vec::new();
        // Together: the members' reads of documents they have not cached
        // (a new order's documents in several views) wait on one round
        // trip's time, not one each; their CPU work stays on this task.
        let computing = self.members.iter().enumerate().filter_map(|(i, m)| {
            let from = positions[i]?;
            let mine = after(events, from);
            (!mine.is_empty()).then_some(async move { (i, m.compute(mine, from).await) })
        });
        for (i, computed) in futures::future::join_all(computing).await {
            match computed? {
                Some(c) if c.is_empty() => {}
                Some(c) => ready.push((i, c)),
                None => failed.push(i),
            }
        }
        let mut first_error = None;
        let mut announce = Vec::new();
        if !ready.is_empty() {
            let requests = ready
                .iter()
                .map(|(i, c)| self.members[*i].commit_request(c))
                .collect();
            let results = self.views.commit_all(requests).await?;
            for ((i, computed), result) in ready.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        positions[i] = Some(computed.to);
                        if let Some(change) = self.members[i].committed(computed) {
                            match (&self.feed, self.members[i].feed()) {
                                (Some(_), _) => announce.push(change),
                                (None, Some(own)) => own.publish(change).await,
                                (None, None) => {}
                            }
                        }
                    }
                    // Fenced: another instance has this view. The run
                    // ends once the others are done with.
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(feed) = &self.feed {
            if !announce.is_empty() {
                feed.publish_all(announce).await;
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        for i in failed {
            let Some(from) = positions[i] else { continue };
            match self.members[i]
                .apply_events(after(events, from), from)
                .await?
            {
                BatchEnd::Continue(p) => positions[i] = Some(p),
                BatchEnd::Halted(p) => {
                    self.members[i].halted_at(p);
                    positions[i] = None;
                }
            }
        }
        Ok(())
    }

    /// True when a halted member has been resumed (or retried) since.
    async fn any_resumed(
        &self,
        views: &[ViewId],
        positions: &[Option<Position>],
    ) -> Result<bool, RunError> {
        for (view, p) in views.iter().zip(positions) {
            if p.is_none()
                && self.views.checkpoint(&view.subscriber()).await?.state != SubscriberState::Halted
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The events of a batch after `from`.
fn after<'a, 'e>(events: &'a [&'e EventEnvelope], from: Position) -> &'a [&'e EventEnvelope] {
    let skip = events.partition_point(|e| e.position <= from);
    &events[skip..]
}

/// A projector as a group member, whatever its projection type.
trait Member: Send + Sync {
    fn view(&self) -> ViewId;
    fn status(&self) -> watch::Receiver<SubscriberStatus>;
    fn update(&self, f: &dyn Fn(&mut SubscriberStatus));
    fn resolve_view(&self) -> BoxFuture<'_, Result<ViewId, RunError>>;
    fn start_run<'a>(
        &'a self,
        view: &'a ViewId,
    ) -> BoxFuture<'a, Result<Option<Position>, RunError>>;
    fn compute<'a>(
        &'a self,
        events: &'a [&'a EventEnvelope],
        from: Position,
    ) -> BoxFuture<'a, Result<Option<Computed>, RunError>>;
    fn commit_request(&self, computed: &Computed) -> ViewCommit;
    fn committed(&self, computed: Computed) -> Option<ViewChange>;
    fn feed(&self) -> Option<&AnyChangeFeed>;
    fn apply_events<'a>(
        &'a self,
        events: &'a [&'a EventEnvelope],
        from: Position,
    ) -> BoxFuture<'a, Result<BatchEnd, RunError>>;
    fn halted_at(&self, position: Position);
}

impl<P: Projection, B: EventBus, V: ViewStore> Member for Projector<P, B, V> {
    fn view(&self) -> ViewId {
        Projector::view(self)
    }
    fn status(&self) -> watch::Receiver<SubscriberStatus> {
        Projector::status(self)
    }
    fn update(&self, f: &dyn Fn(&mut SubscriberStatus)) {
        self.set_status(|s| f(s));
    }
    fn resolve_view(&self) -> BoxFuture<'_, Result<ViewId, RunError>> {
        Box::pin(Projector::resolve_view(self))
    }
    fn start_run<'a>(
        &'a self,
        view: &'a ViewId,
    ) -> BoxFuture<'a, Result<Option<Position>, RunError>> {
        Box::pin(Projector::start_run(self, view))
    }
    fn compute<'a>(
        &'a self,
        events: &'a [&'a EventEnvelope],
        from: Position,
    ) -> BoxFuture<'a, Result<Option<Computed>, RunError>> {
        Box::pin(Projector::compute(self, events, from))
    }
    fn commit_request(&self, computed: &Computed) -> ViewCommit {
        Projector::commit_request(self, computed)
    }
    fn committed(&self, computed: Computed) -> Option<ViewChange> {
        self.computed_committed(computed)
    }
    fn feed(&self) -> Option<&AnyChangeFeed> {
        Projector::feed(self)
    }
    fn apply_events<'a>(
        &'a self,
        events: &'a [&'a EventEnvelope],
        from: Position,
    ) -> BoxFuture<'a, Result<BatchEnd, RunError>> {
        Box::pin(Projector::apply_events(self, events, from))
    }
    fn halted_at(&self, position: Position) {
        Projector::halted_at(self, position);
    }
}

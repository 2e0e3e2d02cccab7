//! The conformance suite every [`EventBus`] implementation must pass.
//!
//! Each function takes a [`BusFixture`]: a fresh, empty event store and a
//! bus that carries its events (for JetStream, with a relay running for the
//! fixture's lifetime), and panics on a broken rule.
//! [`bus_conformance_tests!`](crate::bus_conformance_tests) turns the whole
//! suite into `#[tokio::test]`s for one implementation.
//!
//! The rules, as [`EventBus`] and [`Subscription`] state them: a
//! subscription from a checkpoint delivers every later event, in position
//! order, dense, whatever the filter (subscribers filter); a gap is
//! answered by subscribing again from the checkpoint; acknowledgements are
//! cumulative and never decide where a subscription starts: the checkpoint
//! passed to `subscribe` does.

use std::time::Duration;

use serde_json::json;

use crate::propagation::bus::{ack_batch, in_order, Delivery};
use crate::{
    AppendRequest, BusError, EventBus, EventEnvelope, EventFilter, EventStore, ExpectedVersion,
    NewEvent, Position, StreamId, Subscription,
};

/// An event store and a bus over it, with whatever keeps the bus filled
/// (a relay) running until the fixture is dropped.
pub struct BusFixture<S, B> {
    /// Where the test appends.
    pub store: S,
    /// The bus under test.
    pub bus: B,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl<S, B> std::fmt::Debug for BusFixture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusFixture")
    }
}

impl<S: EventStore, B: EventBus> BusFixture<S, B> {
    /// A fixture of a store and a bus that needs nothing running beside it.
    pub fn new(store: S, bus: B) -> Self {
        BusFixture {
            store,
            bus,
            _guard: None,
        }
    }

    /// Keeps `guard` (e.g. a [`DropGuard`](tokio_util::sync::DropGuard)
    /// that stops the relay) alive as long as the fixture.
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }
}

/// How long a test waits for the bus to deliver what the store holds.
const BOUND: Duration = Duration::from_secs(30);

/// Appends `n` events of type `ty` to `stream`, one append per event.
async fn append<S: EventStore>(store: &S, stream: &str, ty: &str, n: usize) -> Position {
    let mut last = Position::START;
    for i in 0..n {
        last = store
            .append(AppendRequest::new(
                StreamId::new(stream).expect("valid stream id"),
                "thing",
                ExpectedVersion::Any,
                vec![NewEvent::new(ty, json!({ "i": i }))],
            ))
            .await
            .expect("append")
            .position;
    }
    last
}

/// Appends several events in one append.
async fn append_batch<S: EventStore>(store: &S, stream: &str, tys: &[&str]) -> Position {
    store
        .append(AppendRequest::new(
            StreamId::new(stream).expect("valid stream id"),
            "thing",
            ExpectedVersion::Any,
            tys.iter()
                .enumerate()
                .map(|(i, ty)| NewEvent::new(*ty, json!({ "batch": i })))
                .collect(),
        ))
        .await
        .expect("append")
        .position
}

/// Everything the store holds after `after`.
async fn stored<S: EventStore>(store: &S, after: Position) -> Vec<EventEnvelope> {
    store
        .read_all(after, 100_000, &EventFilter::all())
        .await
        .expect("read_all")
}

/// Reads batches (acknowledging each) until `until` has been delivered or
/// the bound passes, and returns every delivery as it came, unchecked.
async fn receive<T: Subscription>(sub: &mut T, until: Position, max: usize) -> Vec<EventEnvelope> {
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut got: Vec<EventEnvelope> = Vec::new();
    while got.last().is_none_or(|e| e.position < until) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {BOUND:?} waiting for position {until}; got up to {:?}",
            got.last().map(|e| e.position)
        );
        let batch = sub
            .next_batch(max, Duration::from_millis(200))
            .await
            .expect("next_batch");
        assert!(
            batch.len() <= max,
            "a batch of {} when at most {max} was asked for",
            batch.len()
        );
        got.extend(batch.iter().map(|d| d.envelope.clone()));
        ack_batch(batch).await;
    }
    got
}

fn positions(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.position.0).collect()
}

fn assert_same_events(got: &[EventEnvelope], want: &[EventEnvelope]) {
    assert_eq!(positions(got), positions(want), "positions differ");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.event_id, w.event_id, "event at {}", w.position);
        assert_eq!(g.stream_id, w.stream_id, "event at {}", w.position);
        assert_eq!(
            g.stream_version, w.stream_version,
            "event at {}",
            w.position
        );
        assert_eq!(g.event_type, w.event_type, "event at {}", w.position);
        assert_eq!(g.payload, w.payload, "event at {}", w.position);
        assert_eq!(g.metadata, w.metadata, "event at {}", w.position);
    }
}

/// Every event, stored before or after subscribing, is delivered once, in
/// position order, dense, and as the store holds it.
pub async fn delivers_every_event_in_order<S: EventStore, B: EventBus>(f: BusFixture<S, B>) {
    append(&f.store, "a-1", "Added", 5).await;
    append_batch(&f.store, "b-1", &["Added", "Removed", "Added"]).await;
    append(&f.store, "a-1", "Removed", 2).await;
    let mut sub = f
        .bus
        .subscribe("conf_all", &EventFilter::all(), Position::START)
        .await
        .expect("subscribe");
    let head = f.store.head().await.unwrap();
    assert_eq!(head, Position(10));
    let got = receive(&mut sub, head, 4).await;
    assert_same_events(&got, &stored(&f.store, Position::START).await);

    // Live: appended while subscribed, in several appends and streams.
    append(&f.store, "c-1", "Added", 3).await;
    let head = append_batch(&f.store, "a-1", &["Added", "Added"]).await;
    let live = receive(&mut sub, head, 100).await;
    assert_same_events(&live, &stored(&f.store, Position(10)).await);
}

/// A subscription starts right after the checkpoint it is given.
pub async fn starts_after_the_checkpoint<S: EventStore, B: EventBus>(f: BusFixture<S, B>) {
    let head = append(&f.store, "a-1", "Added", 12).await;
    let mut sub = f
        .bus
        .subscribe("conf_from", &EventFilter::all(), Position(7))
        .await
        .expect("subscribe");
    let got = receive(&mut sub, head, 100).await;
    assert_same_events(&got, &stored(&f.store, Position(7)).await);

    // At the head: nothing until something is appended.
    let mut at_head = f
        .bus
        .subscribe("conf_head", &EventFilter::all(), head)
        .await
        .expect("subscribe at head");
    let idle = at_head
        .next_batch(10, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        idle.is_empty(),
        "delivered {idle:?} from the head of the store"
    );
    let next = append(&f.store, "a-1", "Added", 1).await;
    let got = receive(&mut at_head, next, 10).await;
    assert_eq!(positions(&got), [next.0]);
}

/// Filters do not thin the deliveries: every event arrives, dense, and the
/// subscriber's filter picks exactly the events a filtered store read
/// returns.
pub async fn filters_leave_deliveries_dense<S: EventStore, B: EventBus>(f: BusFixture<S, B>) {
    append(&f.store, "a-1", "Added", 2).await;
    append_batch(&f.store, "b-1", &["Removed", "Added", "Removed"]).await;
    let head = append(&f.store, "a-2", "Removed", 2).await;
    let filter = EventFilter::event_types(["Added"]);
    let mut sub = f
        .bus
        .subscribe("conf_filtered", &filter, Position::START)
        .await
        .expect("subscribe");
    let got = receive(&mut sub, head, 100).await;
    assert_eq!(positions(&got), (1..=head.0).collect::<Vec<_>>());
    let picked: Vec<EventEnvelope> = got.into_iter().filter(|e| filter.matches(e)).collect();
    let want = f
        .store
        .read_all(Position::START, 1_000, &filter)
        .await
        .unwrap();
    assert_eq!(want.len(), 3);
    assert_same_events(&picked, &want);
}

/// A subscriber that loses a delivery sees a gap ([`in_order`]) and
/// subscribes again from its checkpoint: the events after it come again,
/// dense, whatever was delivered or acknowledged before.
pub async fn resubscribes_after_a_gap<S: EventStore, B: EventBus>(f: BusFixture<S, B>) {
    let head = append(&f.store, "a-1", "Added", 10).await;
    let mut sub = f
        .bus
        .subscribe("conf_gap", &EventFilter::all(), Position::START)
        .await
        .expect("subscribe");
    let got = receive(&mut sub, head, 100).await;
    assert_eq!(positions(&got), (1..=10).collect::<Vec<_>>());

    // The subscriber applied up to 4; the delivery of 5 went missing.
    let checkpoint = Position(4);
    let batch: Vec<Delivery> = got
        .into_iter()
        .filter(|e| e.position != Position(5))
        .map(Delivery::unacked)
        .collect();
    match in_order(batch, checkpoint) {
        Err(BusError::Gap { expected, got }) => {
            assert_eq!((expected, got), (Position(5), Position(6)));
        }
        other => panic!("expected a gap, got {other:?}"),
    }

    drop(sub);
    let mut again = f
        .bus
        .subscribe("conf_gap", &EventFilter::all(), checkpoint)
        .await
        .expect("subscribe again");
    let head = append(&f.store, "a-1", "Added", 2).await;
    let got = receive(&mut again, head, 100).await;
    assert_same_events(&got, &stored(&f.store, checkpoint).await);
    let (fresh, old) = in_order(got.into_iter().map(Delivery::unacked).collect(), checkpoint)
        .expect("dense after resubscribing");
    assert!(old.is_empty());
    assert_eq!(fresh.len(), 8);
}

/// Acknowledging succeeds, is cumulative (acknowledging the last of a batch
/// is enough) and does not move where the next subscription starts: a
/// subscriber that resubscribes from an earlier checkpoint gets those
/// events again. Subscribers of different names are independent.
pub async fn acks_do_not_move_the_checkpoint<S: EventStore, B: EventBus>(f: BusFixture<S, B>) {
    let head = append(&f.store, "a-1", "Added", 6).await;
    let mut sub = f
        .bus
        .subscribe("conf_ack", &EventFilter::all(), Position::START)
        .await
        .expect("subscribe");
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut delivered: Vec<Delivery> = Vec::new();
    while delivered.last().is_none_or(|d| d.envelope.position < head) {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        delivered.extend(
            sub.next_batch(100, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    let all: Vec<EventEnvelope> = delivered.iter().map(|d| d.envelope.clone()).collect();
    assert_eq!(positions(&all), (1..=6).collect::<Vec<_>>());
    // Acknowledge only the last: that covers the others.
    let last = delivered.pop().unwrap();
    last.ack().await.expect("ack");

    // Another subscriber is not affected by this one's acks.
    let mut other = f
        .bus
        .subscribe("conf_ack_other", &EventFilter::all(), Position::START)
        .await
        .expect("subscribe another");
    assert_same_events(&receive(&mut other, head, 100).await, &all);

    // The checkpoint decides: back at 2, everything after 2 comes again.
    drop(delivered);
    drop(sub);
    let mut again = f
        .bus
        .subscribe("conf_ack", &EventFilter::all(), Position(2))
        .await
        .expect("subscribe again");
    assert_same_events(&receive(&mut again, head, 100).await, &all[2..]);
}

/// Generates one `#[tokio::test]` per bus conformance check.
///
/// `$make` is an expression evaluating to a future of a fresh
/// [`BusFixture`]; it is evaluated once per test.
#[macro_export]
macro_rules! bus_conformance_tests {
    ($make:expr) => {
        $crate::bus_conformance_tests!(@each $make;
            delivers_every_event_in_order,
            starts_after_the_checkpoint,
            filters_leave_deliveries_dense,
            resubscribes_after_a_gap,
            acks_do_not_move_the_checkpoint);
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testing::bus_conformance::$name($make.await).await;
            }
        )*
    };
}

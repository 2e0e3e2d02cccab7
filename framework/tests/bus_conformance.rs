//! The event-bus conformance suite, run against both buses: the in-process
//! bus over an in-memory store, and JetStream filled by a running relay
//! from a Postgres store (a fresh database and stream per case).

use std::time::Duration;

use async_nats::jetstream;
use strata::testing::bus_conformance::BusFixture;
use strata::testing::{nats_client, test_database, unique_stream, wait_until};
use strata::{
    CancellationToken, EventBus, EventFilter, EventStore, JetStreamBus, PgEventStore, PgViewStore,
    Position, Relay, StreamConfig, Subscription,
};

mod in_process {
    strata::bus_conformance_tests!(async {
        let store = strata::InMemoryEventStore::new();
        strata::testing::bus_conformance::BusFixture::new(
            store.clone(),
            strata::InProcessBus::new(store),
        )
    });

    /// The in-process bus over Postgres is the same bus: one case, to show
    /// it does not depend on the memory store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_postgres_delivers_every_event_in_order() {
        let db = strata::testing::test_database().await;
        let store = strata::PgEventStore::new(db.pool);
        strata::testing::bus_conformance::delivers_every_event_in_order(
            strata::testing::bus_conformance::BusFixture::new(
                store.clone(),
                strata::InProcessBus::new(store),
            ),
        )
        .await;
    }
}

/// Stops the relay and deletes the stream when a case ends.
struct Cleanup {
    stop: CancellationToken,
    js: jetstream::Context,
    stream: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.stop.cancel();
        let (js, stream) = (self.js.clone(), self.stream.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&stream)).await;
            });
        });
    }
}

/// A fresh database, a fresh stream, and a relay filling it.
async fn jetstream_fixture() -> (BusFixture<PgEventStore, JetStreamBus>, StreamConfig) {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool);
    let client = nats_client().await;
    let cfg = unique_stream();
    let stop = CancellationToken::new();
    tokio::spawn(Relay::new(store.clone(), views, client.clone(), cfg.clone()).run(stop.clone()));
    let bus = JetStreamBus::new(client.clone(), cfg.clone(), store.clone());
    let cleanup = Cleanup {
        stop,
        js: jetstream::new(client),
        stream: cfg.stream.clone(),
    };
    (BusFixture::new(store, bus).with_guard(cleanup), cfg)
}

mod jetstream_bus {
    strata::bus_conformance_tests!(async { super::jetstream_fixture().await.0 });
}

/// JetStream's acks are cumulative (`AckPolicy::All`): acknowledging the
/// last delivery of a batch leaves nothing pending acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_acks_are_cumulative() {
    let (f, cfg) = jetstream_fixture().await;
    for i in 0..5 {
        f.store
            .append(strata::AppendRequest::new(
                strata::StreamId::new("a-1").unwrap(),
                "thing",
                strata::ExpectedVersion::Any,
                vec![strata::NewEvent::new(
                    "Added",
                    serde_json::json!({ "i": i }),
                )],
            ))
            .await
            .unwrap();
    }
    let mut sub = f
        .bus
        .subscribe("conf_cumulative", &EventFilter::all(), Position::START)
        .await
        .unwrap();
    let mut delivered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered.len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        delivered.extend(
            sub.next_batch(100, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    let js = jetstream::new(nats_client().await);
    let stream = js.get_stream(&cfg.stream).await.unwrap();
    let pending = stream
        .consumer_info("conf_cumulative")
        .await
        .unwrap()
        .num_ack_pending;
    assert_eq!(pending, 5, "nothing acknowledged yet");

    let last = delivered.pop().unwrap();
    assert_eq!(last.envelope.position, Position(5));
    last.ack().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the last ack to cover every earlier delivery",
        || {
            let stream = stream.clone();
            async move {
                stream
                    .consumer_info("conf_cumulative")
                    .await
                    .is_ok_and(|i| i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 5)
            }
        },
    )
    .await;
    assert_eq!(f.store.head().await.unwrap(), Position(5));
}

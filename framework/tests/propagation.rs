//! Promises 4–7: relay to JetStream, projections, cached queries with
//! read-your-writes, process managers. Against real Postgres and NATS.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use common::{Counter, CounterCommand, CounterEvent, Total, Totals};
use rand::{Rng, SeedableRng};
use serde_json::json;
use strata::nats::{headers, StreamConfig};
use strata::testing::{nats_client, test_database, unique_stream, wait_until};
use strata::{
    AppendRequest, CancellationToken, ChangeFeed, Checkpoints, CommandContext, CommandError,
    CommandHandler, DocChange, Documents, EventBus, EventEnvelope, EventFilter, EventStore,
    ExpectedVersion, FailurePolicy, InMemoryEventStore, InMemoryViewStore, InProcessBus,
    InProcessChangeFeed, JetStreamBus, NatsChangeFeed, NewEvent, PgEventStore, PgViewStore,
    Position, ProjectionError, ProjectionTest, Projector, ReaderConfig, Relay, RunState, StoredDoc,
    StreamId, SubscriberState, Versions, ViewChange, ViewId, ViewReader, ViewStore,
};

// ---- a projection: totals per counter -----------------------------------------

fn totals() -> Totals {
    Totals::named("counter_totals")
}

/// The view a fresh fold of the store gives.
async fn fold<S: EventStore>(store: &S) -> BTreeMap<String, Total> {
    let events = store
        .read_all(Position::START, 1_000_000, &EventFilter::all())
        .await
        .unwrap();
    ProjectionTest::new(totals())
        .given(events)
        .json()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

async fn view_docs<V: ViewStore>(views: &V, view: &ViewId) -> BTreeMap<String, Total> {
    views
        .list(view, None, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.key, serde_json::from_value(d.doc).unwrap()))
        .collect()
}

fn inc(stream: &str, by: u64) -> AppendRequest {
    let (ty, payload) = strata::encode(&CounterEvent::Incremented { by }).unwrap();
    AppendRequest::new(
        StreamId::new(stream).unwrap(),
        "counter",
        ExpectedVersion::Any,
        vec![NewEvent::new(ty, payload)],
    )
}

/// An increment the `Totals` projection cannot apply.
fn poison(stream: &str) -> AppendRequest {
    AppendRequest::new(
        StreamId::new(stream).unwrap(),
        "counter",
        ExpectedVersion::Any,
        vec![NewEvent::new(
            "CounterIncremented",
            json!({ "by": 0, "poison": true }),
        )],
    )
}

async fn wait_checkpoint<V: ViewStore>(views: &V, subscriber: &str, target: Position) {
    wait_until(
        Duration::from_secs(30),
        &format!("{subscriber} to reach {target}"),
        || async { views.checkpoint(subscriber).await.unwrap().position >= target },
    )
    .await;
}

#[test]
fn projection_given_events_then_documents() {
    let store_events: Vec<EventEnvelope> = (1..=3)
        .map(|i| EventEnvelope {
            position: Position(i),
            event_id: uuid::Uuid::new_v4(),
            stream_id: StreamId::new("counter-1").unwrap(),
            stream_type: "counter".into(),
            stream_version: i,
            event_type: "CounterIncremented".into(),
            schema_version: 1,
            payload: json!({ "by": i }),
            metadata: strata::Metadata::new(),
            recorded_at: chrono::Utc::now(),
        })
        .collect();
    let t = ProjectionTest::new(totals()).given(store_events);
    assert_eq!(
        t.doc("counter-1"),
        Some(Total {
            value: 6,
            events: 3
        })
    );
    insta::assert_json_snapshot!("totals_after_three", t.json());
}

// ---- embedded mode -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_projector_builds_the_view() {
    let store = InMemoryEventStore::new();
    let views = InMemoryViewStore::new();
    let feed = InProcessChangeFeed::new();
    let projector = Projector::new(totals(), InProcessBus::new(store.clone()), views.clone())
        .with_change_feed(feed.clone());
    let view = projector.view().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(projector.run(shutdown.clone()));
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    reader.listen(&feed, shutdown.clone()).await.unwrap();
    let mut last = Position::START;
    for i in 0..50 {
        last = store
            .append(inc(&format!("counter-{}", i % 5), i))
            .await
            .unwrap()
            .position;
    }
    let read = reader
        .get(view.name(), "counter-3", Some(last))
        .await
        .unwrap();
    assert!(read.checkpoint >= last);
    assert_eq!(view_docs(&views, &view).await, fold(&store).await);
    shutdown.cancel();
    task.await.unwrap();
}

// ---- the relay -----------------------------------------------------------------

/// Every message of the stream, as (sequence, position header, event id header).
async fn stream_contents(js: &jetstream::Context, cfg: &StreamConfig) -> Vec<(u64, u64, String)> {
    let mut stream = js.get_stream(&cfg.stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let pos: u64 = m
            .headers
            .get(headers::POSITION)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let id = m
            .headers
            .get(headers::EVENT_ID)
            .unwrap()
            .as_str()
            .to_owned();
        out.push((seq, pos, id));
    }
    out
}

async fn assert_stream_equals_store<S: EventStore>(
    js: &jetstream::Context,
    cfg: &StreamConfig,
    store: &S,
) {
    let events = store
        .read_all(Position::START, 1_000_000, &EventFilter::all())
        .await
        .unwrap();
    let expected: Vec<(u64, u64, String)> = events
        .iter()
        .map(|e| (e.position.0, e.position.0, e.event_id.to_string()))
        .collect();
    assert_eq!(
        stream_contents(js, cfg).await,
        expected,
        "the stream holds every event once, in store order"
    );
}

/// Stop the relay at random points, many times, while writers append; the
/// stream ends up holding every event exactly once, in store order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_stopped_at_random_points_loses_and_repeats_nothing() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let js = jetstream::new(client.clone());

    let writing = CancellationToken::new();
    let writer = {
        let store = store.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !writing.is_cancelled() {
                store
                    .append(inc(&format!("counter-{}", i % 7), 1))
                    .await
                    .unwrap();
                i += 1;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for _trial in 0..12 {
        let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone())
            .batch_size(rng.gen_range(1..200));
        let status = relay.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(stop.clone()));
        // Let it publish something, then stop it mid-flight.
        let target = status.borrow().published.0 + rng.gen_range(1..300);
        let mut st = status.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            st.wait_for(|s| s.published.0 >= target),
        )
        .await;
        stop.cancel();
        task.await.unwrap();
    }
    writing.cancel();
    writer.await.unwrap();
    // A final relay catches up.
    let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
    let mut status = relay.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.published >= head),
    )
    .await
    .expect("caught up")
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    assert_stream_equals_store(&js, &cfg, &store).await;
    let _ = js.delete_stream(&cfg.stream).await;
}

/// Two relays: one active, one standing by; the standby takes over when the
/// active one stops, and the stream stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let js = jetstream::new(client.clone());
    let (a, b) = (
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone()),
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone()),
    );
    let (mut sa, mut sb) = (a.status(), b.status());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let ta = tokio::spawn(a.run(stop_a.clone()));
    tokio::time::timeout(Duration::from_secs(10), sa.wait_for(|s| s.active))
        .await
        .unwrap()
        .unwrap();
    let tb = tokio::spawn(b.run(stop_b.clone()));
    for i in 0..100 {
        store
            .append(inc(&format!("counter-{}", i % 3), 1))
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        sa.wait_for(|s| s.published >= head),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!sb.borrow().active, "only one relay is active");
    stop_a.cancel();
    ta.await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), sb.wait_for(|s| s.active))
        .await
        .expect("standby took over")
        .unwrap();
    for i in 0..100 {
        store
            .append(inc(&format!("counter-{}", i % 3), 1))
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        sb.wait_for(|s| s.published >= head),
    )
    .await
    .unwrap()
    .unwrap();
    stop_b.cancel();
    tb.await.unwrap();
    assert_stream_equals_store(&js, &cfg, &store).await;
    let _ = js.delete_stream(&cfg.stream).await;
}

// ---- projections over JetStream ------------------------------------------------

/// Relay + JetStream projector, killed at random points (also between its
/// commit and its acks) and restarted while events flow: the view equals a
/// fold of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_at_random_points_applies_each_event_once() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let bus = JetStreamBus::new(client.clone(), cfg.clone(), store.clone());
    let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
    let stop_relay = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(stop_relay.clone()));

    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut view = None;
    for trial in 0..10 {
        for i in 0..rng.gen_range(20..120) {
            store
                .append(inc(
                    &format!("counter-{}", (i + trial) % 9),
                    rng.gen_range(1..5),
                ))
                .await
                .unwrap();
        }
        let projector = Projector::new(totals(), bus.clone(), views.clone()).with_config(
            strata::ProjectorConfig {
                batch_size: rng.gen_range(1..64),
                ..Default::default()
            },
        );
        view = Some(projector.view().clone());
        let status = projector.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(projector.run(stop.clone()));
        let target = status.borrow().position.0 + rng.gen_range(1..60);
        let mut st = status.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            st.wait_for(|s| s.position.0 >= target),
        )
        .await;
        stop.cancel();
        task.await.unwrap();
    }
    // A last run catches up.
    let projector = Projector::new(totals(), bus.clone(), views.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    let view = view.unwrap();
    wait_checkpoint(&views, &view.subscriber(), store.head().await.unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    stop_relay.cancel();
    relay_task.await.unwrap();
    assert_eq!(view_docs(&views, &view).await, fold(&store).await);
    let _ = jetstream::new(client).delete_stream(&cfg.stream).await;
}

/// A bus whose first subscription never acknowledges (a projector that dies
/// after committing, before acking), then the real thing: redelivered events
/// are skipped by the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_commit_without_ack_changes_nothing() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let bus = JetStreamBus::new(client.clone(), cfg.clone(), store.clone());
    let stop_relay = CancellationToken::new();
    let relay_task = tokio::spawn(
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone())
            .run(stop_relay.clone()),
    );
    for i in 0..40 {
        store
            .append(inc(&format!("counter-{}", i % 4), 2))
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap();
    // First: apply and commit, never ack.
    let view = ViewId::new("counter_totals", 1).unwrap();
    views.prepare(&view).await.unwrap();
    let mut sub = bus
        .subscribe(&view.subscriber(), &EventFilter::all(), Position::START)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < head.0 as usize {
        got.extend(
            strata::Subscription::next_batch(&mut sub, 100, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    let events: Vec<EventEnvelope> = got.iter().map(|d| d.envelope.clone()).collect();
    let docs = ProjectionTest::new(totals()).given(events.clone());
    let changes = docs
        .json()
        .iter()
        .map(|(k, v)| {
            strata::DocChange::Put(strata::StoredDoc {
                key: k.clone(),
                doc: v.clone(),
                position: head,
            })
        })
        .collect();
    views
        .commit(
            &view.subscriber(),
            Some(&view),
            changes,
            Position::START,
            head,
        )
        .await
        .unwrap();
    drop(got); // dropped, not acked
    drop(sub);
    // Then: a projector receives everything again and must skip it.
    let projector = Projector::new(totals(), bus.clone(), views.clone());
    let status = projector.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    store.append(inc("counter-0", 100)).await.unwrap();
    wait_checkpoint(&views, &view.subscriber(), head.next()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(status.borrow().applied, 1, "only the new event was applied");
    assert_eq!(view_docs(&views, &view).await, fold(&store).await);
    stop_relay.cancel();
    relay_task.await.unwrap();
    let _ = jetstream::new(client).delete_stream(&cfg.stream).await;
}

/// A JetStream subscription (a continuous pull with idle heartbeats) stays
/// up through idle spells longer than its heartbeat interval, and hands
/// over an event as soon as it arrives afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_subscription_survives_idle_spells() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let bus = JetStreamBus::new(client.clone(), cfg.clone(), store.clone());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone()).run(stop.clone()),
    );
    store.append(inc("counter-idle", 1)).await.unwrap();
    let mut sub = bus
        .subscribe("idle_check", &EventFilter::all(), Position::START)
        .await
        .unwrap();
    let first = strata::Subscription::next_batch(&mut sub, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // Idle for longer than two heartbeat intervals (5 s each): every wait
    // ends empty, none with an error.
    let idle_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < idle_until {
        let batch = strata::Subscription::next_batch(&mut sub, 10, Duration::from_secs(2))
            .await
            .expect("an idle subscription stays up");
        assert!(batch.is_empty());
    }
    store.append(inc("counter-idle", 2)).await.unwrap();
    let next = strata::Subscription::next_batch(&mut sub, 10, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].envelope.position, Position(2));
    stop.cancel();
    relay.await.unwrap();
    let _ = jetstream::new(client).delete_stream(&cfg.stream).await;
}

/// A poison event is retried, then dead-lettered with its error; `Halt`
/// stops the projection before it, `Skip` goes on past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_halt_or_skip() {
    for policy in [FailurePolicy::Halt, FailurePolicy::Skip] {
        let db = test_database().await;
        let store = PgEventStore::new(db.pool.clone());
        let views = PgViewStore::new(db.pool.clone());
        store.append(inc("counter-1", 1)).await.unwrap();
        let poison = store.append(poison("counter-1")).await.unwrap();
        let after = store.append(inc("counter-1", 10)).await.unwrap();
        let projector = Projector::new(
            Totals {
                name: "counter_totals",
                policy,
            },
            InProcessBus::new(store.clone()),
            views.clone(),
        );
        let view = projector.view().clone();
        let mut status = projector.status();
        let stop = CancellationToken::new();
        let task = tokio::spawn(projector.run(stop.clone()));
        let letters = match policy {
            FailurePolicy::Halt => {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    status.wait_for(|s| s.state == RunState::Halted),
                )
                .await
                .unwrap()
                .unwrap();
                let cp = views.checkpoint(&view.subscriber()).await.unwrap();
                assert_eq!(cp.state, SubscriberState::Halted);
                assert_eq!(
                    cp.position,
                    Position(1),
                    "stopped right before the poison event"
                );
                assert!(cp.error.unwrap().contains("poison"));
                views.dead_letters(Some(&view.subscriber())).await.unwrap()
            }
            FailurePolicy::Skip => {
                wait_checkpoint(&views, &view.subscriber(), after.position).await;
                let doc = views.get(&view, "counter-1").await.unwrap().doc.unwrap();
                assert_eq!(
                    doc.doc,
                    json!({ "value": 11, "events": 2 }),
                    "went on past the poison event"
                );
                views.dead_letters(Some(&view.subscriber())).await.unwrap()
            }
        };
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].position, poison.position);
        assert!(letters[0].error.contains("poison payload"));
        assert_eq!(letters[0].attempts, 3, "retried before parking");
        assert_eq!(
            letters[0].status,
            if policy == FailurePolicy::Skip {
                "skipped"
            } else {
                "parked"
            }
        );
        stop.cancel();
        task.await.unwrap();
    }
}

/// The projector's document cache lasts one run. Halted on a poison event,
/// an operator corrects a document by hand and moves the checkpoint past
/// the poison event; the next run starts from the stored document, not from
/// what the projector had cached before the halt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_reads_documents_afresh() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    store.append(inc("counter-1", 1)).await.unwrap();
    let poison = store.append(poison("counter-1")).await.unwrap();
    let projector = Projector::new(totals(), InProcessBus::new(store.clone()), views.clone());
    let view = projector.view().clone();
    let mut status = projector.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.state == RunState::Halted),
    )
    .await
    .unwrap()
    .unwrap();

    // The operator's fix: the document by hand, then past the poison event.
    sqlx::query(&format!(
        "UPDATE {} SET doc = $1 WHERE key = 'counter-1'",
        strata::view_table(&view)
    ))
    .bind(json!({ "value": 100, "events": 1 }))
    .execute(&db.pool)
    .await
    .unwrap();
    views
        .reset(&view.subscriber(), poison.position)
        .await
        .unwrap();

    let next = store.append(inc("counter-1", 2)).await.unwrap();
    wait_checkpoint(&views, &view.subscriber(), next.position).await;
    let doc = views.get(&view, "counter-1").await.unwrap().doc.unwrap();
    assert_eq!(
        doc.doc,
        json!({ "value": 102, "events": 2 }),
        "built on the stored document, not the one cached before the halt"
    );
    stop.cancel();
    task.await.unwrap();
}

// ---- the query side ---------------------------------------------------------------

/// Announced documents fill the reader's cache as read at the announced
/// position: a read-your-writes query is answered from them without the
/// store; a late, older announcement never replaces a newer entry; an
/// announcement without documents (too large to carry them) invalidates,
/// and one that names a key it carries no document for means deleted.
#[tokio::test]
async fn announced_documents_fill_the_cache_in_position_order() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("notes", 1).unwrap();
    views.prepare(&view).await.unwrap();
    let feed = InProcessChangeFeed::new();
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    let stop = CancellationToken::new();
    reader.listen(&feed, stop.clone()).await.unwrap();
    let doc = |v: u64, p: u64| StoredDoc {
        key: "k".into(),
        doc: json!({ "v": v }),
        position: Position(p),
    };
    let change = |p: u64, docs: Option<Vec<StoredDoc>>| ViewChange {
        view: "notes".into(),
        version: 1,
        keys: vec!["k".into()],
        position: Position(p),
        previous: None,
        activated: false,
        docs,
    };
    // The store holds v=1 at position 1; the announcements say v=5 at 5,
    // then (late) v=3 at 3.
    views
        .commit(
            &view.subscriber(),
            Some(&view),
            vec![DocChange::Put(doc(1, 1))],
            Position(0),
            Position(1),
        )
        .await
        .unwrap();
    feed.publish(change(5, Some(vec![doc(5, 5)]))).await;
    feed.publish(change(3, Some(vec![doc(3, 3)]))).await;
    let read = reader
        .get(view.name(), "k", Some(Position(5)))
        .await
        .unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 5 }));
    assert_eq!(read.checkpoint, Position(5));
    assert_eq!(reader.stats().misses, 0, "answered from the announcement");

    // A keys-only announcement for another key at 6: once the reader has
    // seen it, it has handled the late one too (one listener, in order).
    feed.publish(ViewChange {
        keys: vec!["other".into()],
        ..change(6, None)
    })
    .await;
    reader.wait_for(view.name(), Position(6)).await.unwrap();
    let read = reader.get(view.name(), "k", None).await.unwrap();
    assert_eq!(
        read.doc.unwrap().doc,
        json!({ "v": 5 }),
        "the older one was ignored"
    );

    // Keys only: the entry is dropped and the next read goes to the store.
    feed.publish(change(7, None)).await;
    reader.wait_for(view.name(), Position(7)).await.unwrap();
    let read = reader.get(view.name(), "k", None).await.unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 1 }));
    assert_eq!(reader.stats().misses, 1);

    // Named but not carried: deleted.
    feed.publish(change(8, Some(Vec::new()))).await;
    let read = reader
        .get(view.name(), "k", Some(Position(8)))
        .await
        .unwrap();
    assert_eq!(read.doc, None);
    assert_eq!(read.checkpoint, Position(8));
    stop.cancel();
}

/// Append, then query with the returned position from another process's
/// reader (its own pool, its own cache): the answer includes the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_across_processes() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let changes_prefix = format!("{}_changes", cfg.prefix);
    let stop = CancellationToken::new();
    tokio::spawn(
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone()).run(stop.clone()),
    );
    let projector = Projector::new(
        totals(),
        JetStreamBus::new(client.clone(), cfg.clone(), store.clone()),
        views.clone(),
    )
    .with_change_feed(NatsChangeFeed::new(client.clone(), changes_prefix.clone()));
    let view = projector.view().clone();
    tokio::spawn(projector.run(stop.clone()));

    // The query service: its own pool and NATS connection.
    let query_pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let reader = ViewReader::new(PgViewStore::new(query_pool), ReaderConfig::default());
    let query_client = nats_client().await;
    reader
        .listen(
            &NatsChangeFeed::new(query_client, changes_prefix),
            stop.clone(),
        )
        .await
        .unwrap();

    let handler = CommandHandler::<Counter, _>::new(store.clone());
    for i in 1..=30u64 {
        let out = handler
            .handle(
                StreamId::new("counter-ryw").unwrap(),
                CounterCommand::Increment(1),
                CommandContext::system("test"),
            )
            .await
            .unwrap();
        let read = reader
            .get(view.name(), "counter-ryw", Some(out.position))
            .await
            .unwrap();
        let doc: Total = serde_json::from_value(read.doc.unwrap().doc).unwrap();
        assert_eq!(doc.value, i, "the read includes the write it waited for");
    }
    // The projector's announcements carry the documents, so the reads were
    // answered from them (never from an entry behind the asked position:
    // the values above prove that).
    let stats = reader.stats();
    assert!(stats.refreshes > 0, "{stats:?}");
    assert!(stats.hits > 0, "{stats:?}");
    // Asking for a position the view will never reach answers with a clear status.
    let far = Position(store.head().await.unwrap().0 + 1_000);
    let quick = ViewReader::new(
        reader.views().clone(),
        ReaderConfig {
            max_wait: Duration::from_millis(300),
            ..Default::default()
        },
    );
    match quick.get(view.name(), "counter-ryw", Some(far)).await {
        Err(strata::QueryError::NotCaughtUp {
            requested, current, ..
        }) => {
            assert_eq!(requested, far);
            assert!(current < far);
        }
        other => panic!("expected NotCaughtUp, got {other:?}"),
    }
    stop.cancel();
    let _ = jetstream::new(client).delete_stream(&cfg.stream).await;
}

/// Concurrent misses for one key load once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_load_once() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("counter_totals", 1).unwrap();
    views.prepare(&view).await.unwrap();
    let reader = ViewReader::new(views, ReaderConfig::default());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let r = reader.clone();
            let v = view.clone();
            tokio::spawn(async move { r.get(v.name(), "k", None).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = reader.stats();
    assert_eq!(stats.hits + stats.misses, 16);
    // Every miss either loaded or joined the one load; a second round is all hits.
    let _ = reader.get(view.name(), "k", None).await.unwrap();
    assert_eq!(reader.stats().hits, stats.hits + 1);
}

// ---- process managers --------------------------------------------------------------

/// Mirrors increments of `counter-src-*` onto `counter-mirror`.
struct Mirror;

impl strata::ProcessManager for Mirror {
    type Event = CounterEvent;
    type Command = (StreamId, CounterCommand);
    fn name(&self) -> &str {
        "mirror"
    }
    fn react(
        &self,
        e: strata::Recorded<'_, CounterEvent>,
    ) -> Result<Vec<Self::Command>, ProjectionError> {
        let CounterEvent::Incremented { by } = *e.event else {
            return Ok(vec![]);
        };
        if !e.stream_id().as_str().starts_with("counter-src") {
            return Ok(vec![]);
        }
        Ok(vec![(
            StreamId::new("counter-mirror").map_err(|e| ProjectionError::new(e.to_string()))?,
            CounterCommand::Increment(by),
        )])
    }
}

struct Send<S: EventStore>(CommandHandler<Counter, S>);

impl<S: EventStore> strata::CommandSender<(StreamId, CounterCommand)> for Send<S> {
    async fn send(
        &self,
        (stream, command): (StreamId, CounterCommand),
        ctx: CommandContext,
    ) -> Result<(), strata::SendError> {
        match self.0.handle(stream, command, ctx).await {
            Ok(_) => Ok(()),
            Err(e) => Err(strata::SendError::from_command(e)),
        }
    }
}

#[test]
fn process_manager_given_events_then_commands() {
    let e = |stream: &str, by: u64| EventEnvelope {
        position: Position(1),
        event_id: uuid::Uuid::new_v4(),
        stream_id: StreamId::new(stream).unwrap(),
        stream_type: "counter".into(),
        stream_version: 1,
        event_type: "CounterIncremented".into(),
        schema_version: 1,
        payload: json!({ "by": by }),
        metadata: strata::Metadata::new(),
        recorded_at: chrono::Utc::now(),
    };
    let commands = strata::process_test(
        &Mirror,
        [
            e("counter-src-1", 2),
            e("counter-other", 5),
            e("counter-src-2", 3),
        ],
    );
    assert_eq!(
        commands,
        vec![
            (
                StreamId::new("counter-mirror").unwrap(),
                CounterCommand::Increment(2)
            ),
            (
                StreamId::new("counter-mirror").unwrap(),
                CounterCommand::Increment(3)
            ),
        ]
    );
}

/// A process manager run twice over the same events (a lost checkpoint, a
/// full redelivery) sends each command once in effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_manager_redelivery_sends_each_command_once() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let mut total = 0;
    for i in 0..30u64 {
        handler
            .handle(
                StreamId::new(format!("counter-src-{}", i % 3)).unwrap(),
                CounterCommand::Increment(i + 1),
                CommandContext::system("test"),
            )
            .await
            .unwrap();
        total += i + 1;
    }
    let mirror = StreamId::new("counter-mirror").unwrap();
    for round in 0..2 {
        // A fresh checkpoint store each round: everything is redelivered.
        let views = InMemoryViewStore::new();
        let runner = strata::ProcessManagerRunner::new(
            Mirror,
            InProcessBus::new(store.clone()),
            views.clone(),
            Send(handler.clone()),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        let head = store.head().await.unwrap();
        wait_checkpoint(&views, "mirror", head).await;
        stop.cancel();
        task.await.unwrap();
        let (state, version) = handler.load(&mirror).await.unwrap();
        assert_eq!(state.value, total, "round {round}");
        assert_eq!(
            version, 30,
            "round {round}: one mirrored event per source event"
        );
    }
    let mirrored = store.read_stream(&mirror, 1, 100).await.unwrap();
    assert!(mirrored.iter().all(|e| e.metadata.causation_id.is_some()
        && e.metadata.actor.as_deref() == Some("service:mirror")));
}

// ---- readers by name: switches, gaps, waits, pages ------------------------------

fn note(key: &str, v: u64, p: u64) -> StoredDoc {
    StoredDoc {
        key: key.into(),
        doc: json!({ "v": v }),
        position: Position(p),
    }
}

/// Commits `doc` to `view`, moving its checkpoint from `from` to its position.
async fn put<V: ViewStore>(views: &V, view: &ViewId, doc: StoredDoc, from: u64) {
    let to = doc.position;
    views
        .commit(
            &view.subscriber(),
            Some(view),
            vec![DocChange::Put(doc)],
            Position(from),
            to,
        )
        .await
        .unwrap();
}

/// A reader follows a switch to a rebuilt version the moment it is
/// announced: reads by name answer from the new version, the position it
/// reports never goes back, and announcements of the old version no longer
/// count. Reads write nothing (no version row appears for an unknown view).
#[tokio::test]
async fn a_reader_follows_an_announced_switch_by_name() {
    let views = InMemoryViewStore::new();
    let (v1, v2) = (
        ViewId::new("notes", 1).unwrap(),
        ViewId::new("notes", 2).unwrap(),
    );
    assert_eq!(views.active_version("notes", 1).await.unwrap(), 1);
    views.prepare(&v1).await.unwrap();
    put(&views, &v1, note("k", 1, 4), 0).await;
    let feed = InProcessChangeFeed::new();
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    let stop = CancellationToken::new();
    reader.listen(&feed, stop.clone()).await.unwrap();
    let read = reader.get("notes", "k", Some(Position(4))).await.unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 1 }));

    // A rebuild fills v2 beyond v1 and switches.
    assert_eq!(views.start_rebuild("notes", 1).await.unwrap(), 2);
    views.prepare(&v2).await.unwrap();
    put(&views, &v2, note("k", 2, 6), 0).await;
    views.retire_active("notes").await.unwrap();
    assert!(views.switch_version("notes", 2).await.unwrap());
    feed.publish(ViewChange::activated("notes", 2, Position(6)))
        .await;
    let read = reader.get("notes", "k", Some(Position(6))).await.unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 2 }), "served from v2");
    assert_eq!(reader.active("notes").await.unwrap(), v2);

    // A late announcement of v1 does not move the view's position.
    feed.publish(ViewChange {
        view: "notes".into(),
        version: 1,
        keys: vec!["k".into()],
        position: Position(9),
        previous: Some(Position(4)),
        activated: false,
        docs: Some(vec![note("k", 9, 9)]),
    })
    .await;
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        reader.wait_for("notes", Position(9)),
    )
    .await;
    assert!(
        !matches!(waited, Ok(Ok(_))),
        "v1's announcement counted for the active v2"
    );
    assert_eq!(
        reader
            .get("notes", "k", None)
            .await
            .unwrap()
            .doc
            .unwrap()
            .doc,
        json!({ "v": 2 })
    );

    // Reads of a view nobody registered write nothing.
    let read = reader.get("unknown_view", "k", None).await.unwrap();
    assert_eq!(read.doc, None);
    assert_eq!(views.active("unknown_view").await.unwrap(), None);
    stop.cancel();
}

/// A missing link in a view's chain of announcements (one was lost) makes
/// the reader drop what it cached and read the store again: a document
/// whose announcement was lost is not served stale until the TTL.
#[tokio::test]
async fn a_gap_in_announcements_resynchronises_the_reader() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    let feed = InProcessChangeFeed::new();
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    let stop = CancellationToken::new();
    reader.listen(&feed, stop.clone()).await.unwrap();
    let announce = |key: &str, v: u64, from: u64, to: u64| ViewChange {
        view: "notes".into(),
        version: 1,
        keys: vec![key.into()],
        position: Position(to),
        previous: Some(Position(from)),
        activated: false,
        docs: Some(vec![note(key, v, to)]),
    };
    put(&views, &view, note("k", 1, 1), 0).await;
    feed.publish(announce("k", 1, 0, 1)).await;
    let read = reader.get("notes", "k", Some(Position(1))).await.unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 1 }));

    // Position 2 changes k, but its announcement is lost; 3 changes another key.
    put(&views, &view, note("k", 2, 2), 1).await;
    put(&views, &view, note("other", 3, 3), 2).await;
    feed.publish(announce("other", 3, 2, 3)).await;
    reader.wait_for("notes", Position(3)).await.unwrap();
    let read = reader.get("notes", "k", None).await.unwrap();
    assert_eq!(
        read.doc.unwrap().doc,
        json!({ "v": 2 }),
        "the gap (2 announced after 1) dropped the stale entry"
    );
    stop.cancel();
}

/// A NATS reconnect also resynchronises: announcements sent while it was
/// away are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_reconnect_resynchronises_the_reader() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    put(&views, &view, note("k", 1, 1), 0).await;
    let client = nats_client().await;
    let feed = NatsChangeFeed::new(
        client.clone(),
        format!("{}_changes", unique_stream().prefix),
    );
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    let stop = CancellationToken::new();
    reader.listen(&feed, stop.clone()).await.unwrap();
    reader.get("notes", "k", None).await.unwrap();
    reader.get("notes", "k", None).await.unwrap();
    assert_eq!(reader.stats().misses, 1, "cached");
    put(&views, &view, note("k", 2, 2), 1).await;
    client.force_reconnect().await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the reader to read k again after the reconnect",
        || async {
            reader
                .get("notes", "k", None)
                .await
                .unwrap()
                .doc
                .unwrap()
                .doc
                == json!({ "v": 2 })
        },
    )
    .await;
    stop.cancel();
}

/// A hundred read-your-writes queries waiting for a position far ahead
/// hold no database connection: with a pool of one connection, other
/// reads go on while they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_waits_hold_no_connection() {
    let db = test_database().await;
    let views = PgViewStore::new(db.pool.clone());
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    put(&views, &view, note("k", 1, 1), 0).await;
    let acquired = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&acquired);
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .before_acquire(move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async { Ok(true) })
        })
        .connect(&db.url)
        .await
        .unwrap();
    let reader = ViewReader::new(
        PgViewStore::new(one),
        ReaderConfig {
            max_wait: Duration::from_secs(8),
            ..Default::default()
        },
    );
    let stop = CancellationToken::new();
    reader
        .listen(&InProcessChangeFeed::new(), stop.clone())
        .await
        .unwrap();
    let waits: Vec<_> = (0..100)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.get("notes", "k", Some(Position(1_000))).await })
        })
        .collect();
    // Over two seconds of waiting, the store is asked a few times for all
    // of them (by the listener), not five times a second by each waiter
    // (about 1,000 times).
    let before = acquired.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = acquired.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        asked <= 20,
        "100 waits asked the store {asked} times in 2 s"
    );
    // Plain reads of other keys answer while they wait.
    for i in 0..20 {
        let read = tokio::time::timeout(
            Duration::from_secs(4),
            reader.get("notes", &format!("x{i}"), None),
        )
        .await
        .expect("a plain read is not held up by the waits")
        .unwrap();
        assert_eq!(read.checkpoint, Position(1));
    }
    assert!(waits.iter().all(|w| !w.is_finished()));
    for w in waits {
        w.abort();
    }
    stop.cancel();
}

/// Listings come in pages with a cursor; every document is reachable.
#[tokio::test]
async fn listings_page_with_a_cursor() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    for i in 0..25u64 {
        put(&views, &view, note(&format!("k{i:02}"), i, i + 1), i).await;
    }
    let reader = ViewReader::new(views, ReaderConfig::default());
    let (mut after, mut keys, mut pages) = (None::<String>, Vec::new(), 0);
    loop {
        let page = reader
            .list("notes", after.as_deref(), 10, None)
            .await
            .unwrap();
        pages += 1;
        assert!(page.docs.len() <= 10);
        keys.extend(page.docs.iter().map(|d| d.key.clone()));
        match page.next {
            Some(n) => {
                assert_eq!(Some(&n), keys.last(), "the cursor is the last key");
                after = Some(n);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let all: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, all);
}

/// `Mirror`, halting on a command that fails for good.
struct HaltingMirror;

impl strata::ProcessManager for HaltingMirror {
    type Event = CounterEvent;
    type Command = (StreamId, CounterCommand);
    fn name(&self) -> &str {
        "halting_mirror"
    }
    fn react(
        &self,
        e: strata::Recorded<'_, CounterEvent>,
    ) -> Result<Vec<Self::Command>, ProjectionError> {
        Mirror.react(e)
    }
    fn on_failure(&self) -> FailurePolicy {
        FailurePolicy::Halt
    }
}

/// Three source events; the command id the manager derives for the second
/// one was spent first on another stream (as a client could once do with
/// an Idempotency-Key). Returns the store, its handler and that event.
async fn spent_command_id(
    manager: &str,
) -> (
    InMemoryEventStore,
    CommandHandler<Counter, InMemoryEventStore>,
    EventEnvelope,
) {
    let store = InMemoryEventStore::new();
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    for (i, by) in [1u64, 2, 3].into_iter().enumerate() {
        handler
            .handle(
                StreamId::new(format!("counter-src-{i}")).unwrap(),
                CounterCommand::Increment(by),
                CommandContext::system("test"),
            )
            .await
            .unwrap();
    }
    let second = store
        .read_all(Position(1), 1, &EventFilter::all())
        .await
        .unwrap()
        .remove(0);
    handler
        .handle(
            StreamId::new("counter-elsewhere").unwrap(),
            CounterCommand::Increment(1),
            CommandContext::with_command_id(strata::caused_command_id(manager, second.event_id, 0))
                .actor("test"),
        )
        .await
        .unwrap();
    (store, handler, second)
}

/// A command that fails for good (here `CommandIdReused`) is not retried
/// forever: the event goes to the manager's dead letters and the manager
/// goes on (the default policy, skip) or halts until the letter is
/// resolved (policy halt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_manager_commands_that_fail_for_good_are_dead_lettered() {
    assert!(matches!(
        strata::SendError::from_command(CommandError::<common::CounterError>::CommandIdReused {
            command_id: uuid::Uuid::nil()
        }),
        strata::SendError::Failed(_)
    ));
    assert!(
        strata::SendError::from_command(CommandError::<common::CounterError>::Conflict {
            stream_id: StreamId::new("counter-x").unwrap(),
            attempts: 8,
            actual: 3
        })
        .is_transient()
    );
    assert!(matches!(
        strata::SendError::from_command(CommandError::Domain(common::CounterError::Zero)),
        strata::SendError::Rejected(_)
    ));
    let mirror = StreamId::new("counter-mirror").unwrap();

    // Skip: dead-lettered, and the later events are still handled.
    let (store, handler, second) = spent_command_id("mirror").await;
    let views = InMemoryViewStore::new();
    let runner = strata::ProcessManagerRunner::new(
        Mirror,
        InProcessBus::new(store.clone()),
        views.clone(),
        Send(handler.clone()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_checkpoint(&views, "mirror", store.head().await.unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handler.load(&mirror).await.unwrap().0.value, 1 + 3);
    let letters = views.dead_letters(Some("mirror")).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id, second.event_id);
    assert_eq!(letters[0].position, second.position);
    assert!(
        letters[0].error.contains("already used"),
        "{}",
        letters[0].error
    );
    assert_eq!(
        views.checkpoint("mirror").await.unwrap().state,
        SubscriberState::Running
    );

    // Halt: stops before the event until an operator resolves the letter.
    let (store, handler, second) = spent_command_id("halting_mirror").await;
    let views = InMemoryViewStore::new();
    let runner = strata::ProcessManagerRunner::new(
        HaltingMirror,
        InProcessBus::new(store.clone()),
        views.clone(),
        Send(handler.clone()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_until(Duration::from_secs(10), "the manager to halt", || async {
        views.checkpoint("halting_mirror").await.unwrap().state == SubscriberState::Halted
    })
    .await;
    let cp = views.checkpoint("halting_mirror").await.unwrap();
    assert_eq!(cp.position, Position(second.position.0 - 1));
    let letters = views.dead_letters(Some("halting_mirror")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].status, "parked");
    assert!(views
        .resolve_dead_letter(letters[0].id, true)
        .await
        .unwrap());
    wait_checkpoint(&views, "halting_mirror", store.head().await.unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handler.load(&mirror).await.unwrap().0.value, 1 + 3);
}

/// A projector and a process manager on a fresh database whose JetStream
/// stream (same name) was filled from another store apply nothing: the
/// subscription is refused with a typed error, as the relay refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_refuse_a_stream_of_another_store() {
    let (a, b) = (test_database().await, test_database().await);
    let store_a = PgEventStore::new(a.pool.clone());
    let store_b = PgEventStore::new(b.pool.clone());
    let views_b = PgViewStore::new(b.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    for _ in 0..5 {
        store_a.append(inc("counter-src-a", 1)).await.unwrap();
    }
    let stop = CancellationToken::new();
    let relay = tokio::spawn(
        Relay::new(
            store_a.clone(),
            PgViewStore::new(a.pool.clone()),
            client.clone(),
            cfg.clone(),
        )
        .run(stop.clone()),
    );
    let js = jetstream::new(client.clone());
    cfg.ensure(&js).await.unwrap();
    wait_until(Duration::from_secs(30), "the relay to publish", || async {
        stream_contents(&js, &cfg).await.len() == 5
    })
    .await;
    stop.cancel();
    relay.await.unwrap();

    let refused = |r: Result<_, strata::BusError>| match r {
        Err(strata::BusError::StreamMismatch { stream, reason }) => {
            assert_eq!(stream, cfg.stream);
            reason
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("subscribed to another store's stream"),
    };
    // A fresh store: the stream is beyond its head.
    let bus_b = JetStreamBus::new(client.clone(), cfg.clone(), store_b.clone());
    let reason = refused(
        bus_b
            .subscribe("probe", &EventFilter::all(), Position::START)
            .await,
    );
    assert!(reason.contains("beyond the store's head"), "{reason}");
    // A projector and a process manager over it say why and apply nothing.
    let projector = Projector::new(totals(), bus_b.clone(), views_b.clone());
    let projector_status = projector.status();
    let handler_b = CommandHandler::<Counter, _>::new(store_b.clone());
    let manager = strata::ProcessManagerRunner::new(
        Mirror,
        bus_b.clone(),
        views_b.clone(),
        Send(handler_b.clone()),
    );
    let manager_status = manager.status();
    let stop = CancellationToken::new();
    let tasks = [
        tokio::spawn(projector.run(stop.clone())),
        tokio::spawn(manager.run(stop.clone())),
    ];
    wait_until(
        Duration::from_secs(10),
        "both to refuse the stream",
        || async {
            let says =
                |e: &Option<String>| e.as_deref().is_some_and(|e| e.contains("does not belong"));
            says(&projector_status.borrow().last_error) && says(&manager_status.borrow().last_error)
        },
    )
    .await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store_b.head().await.unwrap(), Position::START);
    assert_eq!(
        views_b.checkpoint("mirror").await.unwrap().position,
        Position::START
    );
    assert_eq!(
        views_b
            .checkpoint("counter_totals_v1")
            .await
            .unwrap()
            .position,
        Position::START
    );
    // A store with events of its own at those positions: other event ids.
    for _ in 0..5 {
        store_b.append(inc("counter-src-b", 2)).await.unwrap();
    }
    let reason = refused(
        bus_b
            .subscribe("probe", &EventFilter::all(), Position::START)
            .await,
    );
    assert!(reason.contains("the store has"), "{reason}");
    // The stream's own store subscribes.
    JetStreamBus::new(client.clone(), cfg.clone(), store_a.clone())
        .subscribe("probe", &EventFilter::all(), Position::START)
        .await
        .expect("the stream belongs to store A");
}

/// The reader hands back the projection's document type.
#[tokio::test]
async fn a_reader_returns_typed_documents() {
    let store = InMemoryEventStore::new();
    let views = InMemoryViewStore::new();
    for by in [2, 3] {
        store.append(inc("counter-1", by)).await.unwrap();
    }
    let projector = Projector::new(totals(), InProcessBus::new(store.clone()), views.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    let reader = ViewReader::new(views, ReaderConfig::default());
    let head = store.head().await.unwrap();
    let total: Option<Total> = reader
        .get_doc("counter_totals", "counter-1", Some(head))
        .await
        .unwrap();
    assert_eq!(
        total,
        Some(Total {
            value: 5,
            events: 2
        })
    );
    let wrong = reader
        .get_doc::<Vec<String>>("counter_totals", "counter-1", None)
        .await;
    assert!(matches!(wrong, Err(strata::QueryError::Document { .. })));
    assert_eq!(
        reader
            .get_doc::<Total>("counter_totals", "counter-9", None)
            .await
            .unwrap(),
        None
    );
    stop.cancel();
    task.await.unwrap();
}

/// A reader that has never looked at a view learns where it is before it
/// waits: a read-your-writes query for a position the view passed before
/// the reader started answers at once, not after the once-a-second safety
/// net (virtual time: the clock only moves when everything waits).
#[tokio::test(start_paused = true)]
async fn a_fresh_reader_answers_a_position_already_applied_at_once() {
    let views = InMemoryViewStore::new();
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    put(&views, &view, note("k", 1, 5), 0).await;
    let reader = ViewReader::new(views, ReaderConfig::default());
    let stop = CancellationToken::new();
    reader
        .listen(&InProcessChangeFeed::new(), stop.clone())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let applied = reader.wait_for("notes", Position(3)).await.unwrap();
    assert_eq!(applied, Position(5));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited {:?} for a position already applied",
        started.elapsed()
    );
    stop.cancel();
}

/// Forwards each increment of a `counter-src-*` stream as the command
/// `(source stream, by)`, for [`RecordingSender`] to record.
struct Forward;

impl strata::ProcessManager for Forward {
    type Event = CounterEvent;
    type Command = (StreamId, u64);
    fn name(&self) -> &str {
        "forward"
    }
    fn react(
        &self,
        e: strata::Recorded<'_, CounterEvent>,
    ) -> Result<Vec<Self::Command>, ProjectionError> {
        let CounterEvent::Incremented { by } = *e.event else {
            return Ok(vec![]);
        };
        Ok(vec![(e.stream_id().clone(), by)])
    }
}

/// Records the commands it gets, per stream. The first command of
/// `counter-src-a` is held until a command of `counter-src-b` has arrived
/// (for at most 10 s; then it fails for good), so a runner that sends one
/// command at a time dead-letters it.
#[derive(Clone, Default)]
struct RecordingSender {
    seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Vec<u64>>>>,
    b_arrived: std::sync::Arc<tokio::sync::Notify>,
}

impl strata::CommandSender<(StreamId, u64)> for RecordingSender {
    async fn send(
        &self,
        (stream, by): (StreamId, u64),
        _ctx: CommandContext,
    ) -> Result<(), strata::SendError> {
        if stream.as_str() == "counter-src-b" {
            self.b_arrived.notify_one();
        }
        if stream.as_str() == "counter-src-a" && by == 1 {
            tokio::time::timeout(Duration::from_secs(10), self.b_arrived.notified())
                .await
                .map_err(|_| strata::SendError::failed("no command of stream b came meanwhile"))?;
        }
        self.seen
            .lock()
            .unwrap()
            .entry(stream.as_str().to_owned())
            .or_default()
            .push(by);
        Ok(())
    }
}

/// The runner sends the commands of different streams side by side (the
/// first command of stream a waits for one of stream b), and those of one
/// stream in the order of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_manager_sends_streams_side_by_side_in_order_per_stream() {
    let store = InMemoryEventStore::new();
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    for by in 1..=5u64 {
        for stream in ["counter-src-a", "counter-src-b"] {
            handler
                .handle(
                    StreamId::new(stream).unwrap(),
                    CounterCommand::Increment(by),
                    CommandContext::system("test"),
                )
                .await
                .unwrap();
        }
    }
    let views = InMemoryViewStore::new();
    let sender = RecordingSender::default();
    let runner = strata::ProcessManagerRunner::new(
        Forward,
        InProcessBus::new(store.clone()),
        views.clone(),
        sender.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_checkpoint(&views, "forward", store.head().await.unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        views.dead_letters(Some("forward")).await.unwrap(),
        vec![],
        "a command waited for another stream's and failed"
    );
    let seen = sender.seen.lock().unwrap().clone();
    assert_eq!(seen["counter-src-a"], vec![1, 2, 3, 4, 5]);
    assert_eq!(seen["counter-src-b"], vec![1, 2, 3, 4, 5]);
}

/// Adds every increment to two documents, `both-a` and `both-b`; the
/// first attempt at each event with `by == 2` fails on `both-b`, after
/// `both-a` took it.
struct TwoKeysFlaky {
    failed: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl strata::Projection for TwoKeysFlaky {
    type Event = CounterEvent;
    type Doc = common::Total;
    fn name(&self) -> &str {
        "two_keys"
    }
    fn keys(&self, _e: strata::Recorded<'_, CounterEvent>) -> Vec<String> {
        vec!["both-a".into(), "both-b".into()]
    }
    fn apply(
        &self,
        key: &str,
        doc: Option<common::Total>,
        e: strata::Recorded<'_, CounterEvent>,
    ) -> Result<Option<common::Total>, ProjectionError> {
        let CounterEvent::Incremented { by } = *e.event else {
            return Ok(doc);
        };
        if key == "both-b"
            && by == 2
            && self
                .failed
                .lock()
                .is_ok_and(|mut f| f.insert(e.position().0))
        {
            return Err(ProjectionError::new("first attempt fails"));
        }
        let mut t = doc.unwrap_or_default();
        t.value += by;
        t.events += 1;
        Ok(Some(t))
    }
}

/// An event that fails on one of its documents and succeeds when tried
/// again is applied once to each: the attempt that failed leaves nothing
/// of itself behind, in the stored documents or in what the batch holds
/// for the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_event_is_applied_once_to_every_document() {
    let store = InMemoryEventStore::new();
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    for by in [1u64, 2, 3, 2, 1] {
        handler
            .handle(
                StreamId::new("counter-flaky").unwrap(),
                CounterCommand::Increment(by),
                CommandContext::system("test"),
            )
            .await
            .unwrap();
    }
    let views = InMemoryViewStore::new();
    let projection = TwoKeysFlaky {
        failed: Default::default(),
    };
    let projector = Projector::new(projection, InProcessBus::new(store.clone()), views.clone())
        .with_config(strata::ProjectorConfig {
            attempts: 3,
            backoff: Duration::from_millis(1),
            ..Default::default()
        });
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    wait_checkpoint(&views, "two_keys_v1", store.head().await.unwrap()).await;
    stop.cancel();
    task.await.unwrap();
    let view = ViewId::new("two_keys", 1).unwrap();
    for key in ["both-a", "both-b"] {
        let doc = views.get(&view, key).await.unwrap();
        let total: common::Total = serde_json::from_value(doc.doc.expect("document").doc).unwrap();
        assert_eq!(total.value, 9, "{key}: {total:?}");
        assert_eq!(total.events, 5, "{key}: {total:?}");
    }
    assert_eq!(
        views.dead_letters(Some("two_keys_v1")).await.unwrap(),
        vec![]
    );
}

// ---- projector groups --------------------------------------------------------------

/// The documents a skipping `Totals` makes of the store: every event but
/// the poison ones, up to `upto`.
async fn fold_without_poison<S: EventStore>(store: &S, upto: Position) -> BTreeMap<String, Total> {
    let events: Vec<EventEnvelope> = store
        .read_all(Position::START, 1_000_000, &EventFilter::all())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payload.get("poison").is_none() && e.position <= upto)
        .collect();
    ProjectionTest::new(totals())
        .given(events)
        .json()
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

/// Three projections in one group, on Postgres: one that halts on a poison
/// event, one that skips it, and one that had already run alone part of
/// the way. Each ends as it would alone: the skipping ones at the head
/// with every other event applied once (the one that ran ahead skips what
/// it had), the halting one stopped right before the poison event with its
/// dead letter, while the others go on. Once an operator skips the letter,
/// the group takes the halted one in again and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_each_projection_as_alone_and_halts_one_alone() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let bus = InProcessBus::new(store.clone());
    for i in 0..30 {
        store
            .append(inc(&format!("counter-{}", i % 4), i + 1))
            .await
            .unwrap();
    }
    let poison_at = store.append(poison("counter-2")).await.unwrap().position;
    let mut head = poison_at;
    for i in 0..20 {
        head = store
            .append(inc(&format!("counter-{}", i % 5), 100 + i))
            .await
            .unwrap()
            .position;
    }

    // "ahead" runs alone to position 12 first (a batch of 12).
    let alone = Projector::new(
        Totals {
            name: "ahead",
            policy: FailurePolicy::Skip,
        },
        bus.clone(),
        views.clone(),
    )
    .with_config(strata::ProjectorConfig {
        batch_size: 12,
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let mut status = alone.status();
    let task = tokio::spawn(alone.run(stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.position >= Position(12)),
    )
    .await
    .unwrap()
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    let ahead_start = views.checkpoint("ahead_v1").await.unwrap().position;
    assert!(ahead_start >= Position(12) && ahead_start < head);

    let member = |name: &'static str, policy| {
        Projector::new(Totals { name, policy }, bus.clone(), views.clone())
    };
    let group = strata::ProjectorGroup::new(bus.clone(), views.clone())
        .with_config(strata::ProjectorConfig {
            batch_size: 7,
            ..Default::default()
        })
        .with_projector(member("skips", FailurePolicy::Skip))
        .with_projector(member("halts", FailurePolicy::Halt))
        .with_projector(member("ahead", FailurePolicy::Skip));
    let statuses = group.statuses();
    let names: Vec<String> = statuses
        .iter()
        .map(|s| s.borrow().subscriber.clone())
        .collect();
    assert_eq!(names, ["ahead_v1", "halts_v1", "skips_v1"], "name order");
    let stop = CancellationToken::new();
    let task = tokio::spawn(group.run(stop.clone()));

    wait_checkpoint(&views, "skips_v1", head).await;
    wait_checkpoint(&views, "ahead_v1", head).await;
    let mut halts = statuses[1].clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        halts.wait_for(|s| s.state == RunState::Halted),
    )
    .await
    .unwrap()
    .unwrap();
    let expected = fold_without_poison(&store, head).await;
    let docs = |name: &'static str| {
        let views = views.clone();
        async move { view_docs(&views, &ViewId::new(name, 1).unwrap()).await }
    };
    assert_eq!(docs("skips").await, expected);
    assert_eq!(docs("ahead").await, expected, "no event applied twice");
    let cp = views.checkpoint("halts_v1").await.unwrap();
    assert_eq!(cp.state, SubscriberState::Halted);
    assert_eq!(cp.position, Position(poison_at.0 - 1));
    assert_eq!(
        docs("halts").await,
        fold_without_poison(&store, cp.position).await
    );
    let letters = views.dead_letters(Some("halts_v1")).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, poison_at);
    assert_eq!(views.dead_letters(Some("skips_v1")).await.unwrap().len(), 1);
    for s in [&statuses[0], &statuses[2]] {
        assert_eq!(s.borrow().state, RunState::Running);
    }

    // The operator skips the letter: the group takes "halts" in again.
    assert!(views
        .resolve_dead_letter(letters[0].id, true)
        .await
        .unwrap());
    wait_checkpoint(&views, "halts_v1", head).await;
    assert_eq!(docs("halts").await, expected);
    let more = store.append(inc("counter-9", 7)).await.unwrap().position;
    for name in ["ahead_v1", "halts_v1", "skips_v1"] {
        wait_checkpoint(&views, name, more).await;
    }
    assert_eq!(docs("skips").await, fold_without_poison(&store, more).await);
    assert_eq!(docs("halts").await, docs("skips").await);
    stop.cancel();
    task.await.unwrap();
    for s in &statuses {
        assert_eq!(s.borrow().state, RunState::Stopped);
    }
}

/// Changes of several views published together go out in as few NATS
/// messages as fit (one here; two when their documents are too large for
/// one), and a subscriber receives them one by one, in order, exactly as if
/// they had been published alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_published_together_arrive_one_by_one_in_order() {
    use futures::StreamExt;
    let client = nats_client().await;
    let prefix = format!("{}_changes", unique_stream().prefix);
    let feed = NatsChangeFeed::new(client.clone(), prefix.clone());
    let mut sub = feed.subscribe().await.unwrap();
    let mut raw = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let change = |view: &str, p: u64, pad: usize| ViewChange {
        view: view.to_owned(),
        version: 1,
        keys: vec!["k".to_owned()],
        position: Position(p),
        previous: Some(Position(p - 1)),
        activated: false,
        docs: Some(vec![StoredDoc {
            key: "k".to_owned(),
            doc: json!({ "pad": "x".repeat(pad) }),
            position: Position(p),
        }]),
    };
    let small = vec![
        change("alpha", 5, 10),
        change("beta", 5, 10),
        change("gamma", 5, 10),
    ];
    let half = strata::MAX_ANNOUNCED_DOCS_BYTES / 2;
    let large = vec![
        change("alpha", 6, half),
        change("beta", 6, half),
        change("gamma", 6, 10),
    ];
    for (batch, messages) in [(small, 1), (large, 2)] {
        feed.publish_all(batch.clone()).await;
        for expected in &batch {
            let got = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("a change within 10 s")
                .expect("the feed is open");
            match got {
                strata::ChangeNotice::Change(c) => assert_eq!(&c, expected),
                other => panic!("expected {}, got {other:?}", expected.view),
            }
        }
        let mut subjects = Vec::new();
        for _ in 0..messages {
            let m = tokio::time::timeout(Duration::from_secs(10), raw.next())
                .await
                .expect("a message within 10 s")
                .unwrap();
            subjects.push(m.subject.to_string());
        }
        // Nothing more arrives: the changes took exactly that many messages.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), raw.next())
                .await
                .is_err(),
            "more than {messages} message(s) for {subjects:?}"
        );
        assert!(
            subjects.iter().any(|s| s.ends_with("._batch")),
            "{subjects:?}"
        );
    }
}

/// A view store whose document reads, once armed, read and then wait for
/// a signal before answering: a read that started before a commit and
/// answers after its announcement.
#[derive(Clone)]
struct HeldReads {
    inner: InMemoryViewStore,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    read_done: std::sync::Arc<tokio::sync::Notify>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl Documents for HeldReads {
    async fn load(
        &self,
        view: &ViewId,
        keys: &[String],
    ) -> strata::ViewResult<std::collections::HashMap<String, StoredDoc>> {
        self.inner.load(view, keys).await
    }
    async fn commit(
        &self,
        subscriber: &str,
        view: Option<&ViewId>,
        changes: Vec<DocChange>,
        from: Position,
        to: Position,
    ) -> strata::ViewResult<()> {
        self.inner.commit(subscriber, view, changes, from, to).await
    }
    async fn get(&self, view: &ViewId, key: &str) -> strata::ViewResult<strata::ViewRead> {
        let read = self.inner.get(view, key).await;
        if self.hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.read_done.notify_one();
            self.release.notified().await;
        }
        read
    }
    async fn list(
        &self,
        view: &ViewId,
        after_key: Option<&str>,
        limit: usize,
    ) -> strata::ViewResult<Vec<StoredDoc>> {
        self.inner.list(view, after_key, limit).await
    }
}

impl Versions for HeldReads {
    async fn prepare(&self, view: &ViewId) -> strata::ViewResult<strata::Checkpoint> {
        self.inner.prepare(view).await
    }
    async fn active_version(&self, name: &str, default: u32) -> strata::ViewResult<u32> {
        self.inner.active_version(name, default).await
    }
    async fn active(&self, name: &str) -> strata::ViewResult<Option<strata::ActiveView>> {
        self.inner.active(name).await
    }
    async fn start_rebuild(&self, name: &str, default: u32) -> strata::ViewResult<u32> {
        self.inner.start_rebuild(name, default).await
    }
    async fn switch_version(&self, name: &str, to: u32) -> strata::ViewResult<bool> {
        self.inner.switch_version(name, to).await
    }
    async fn retire_active(&self, name: &str) -> strata::ViewResult<Position> {
        self.inner.retire_active(name).await
    }
    async fn drop_version(&self, view: &ViewId) -> strata::ViewResult<()> {
        self.inner.drop_version(view).await
    }
}

/// A cache miss reads the store while the document changes: its read
/// answers after the change's announcement was taken in. The reader keeps
/// the newer of the two, so later plain reads see the change at once
/// instead of the older read until the cache entry expires.
#[tokio::test]
async fn a_read_that_loses_the_race_with_an_announcement_does_not_hide_it() {
    let store = HeldReads {
        inner: InMemoryViewStore::new(),
        hold: Default::default(),
        read_done: Default::default(),
        release: Default::default(),
    };
    let views = store.inner.clone();
    let view = ViewId::new("notes", 1).unwrap();
    views.active_version("notes", 1).await.unwrap();
    views.prepare(&view).await.unwrap();
    put(&views, &view, note("k", 1, 1), 0).await;
    let feed = InProcessChangeFeed::new();
    let reader = ViewReader::new(store.clone(), ReaderConfig::default());
    let stop = CancellationToken::new();
    reader.listen(&feed, stop.clone()).await.unwrap();
    reader.get("notes", "other", None).await.unwrap(); // learns the version

    // A miss reads v1 and is held; meanwhile v2 commits and is announced.
    store.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let slow = tokio::spawn({
        let reader = reader.clone();
        async move { reader.get("notes", "k", None).await.unwrap() }
    });
    store.read_done.notified().await;
    put(&views, &view, note("k", 2, 2), 1).await;
    feed.publish(ViewChange {
        view: "notes".into(),
        version: 1,
        keys: vec!["k".into()],
        position: Position(2),
        previous: Some(Position(1)),
        activated: false,
        docs: Some(vec![note("k", 2, 2)]),
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the announcement taken in",
        || async { reader.applied("notes") >= Position(2) },
    )
    .await;
    store.release.notify_one();
    let answered = slow.await.unwrap();
    assert_eq!(answered.doc.unwrap().doc, json!({ "v": 2 }), "the newer");
    let read = reader.get("notes", "k", None).await.unwrap();
    assert_eq!(read.doc.unwrap().doc, json!({ "v": 2 }));
    assert_eq!(read.checkpoint, Position(2));
    stop.cancel();
}

/// The process manager stores its checkpoint lazily (at most every 250 ms,
/// when idle, at shutdown). Stopped gracefully right after its last
/// command, its checkpoint is at the head; killed instead, the next runner
/// starts from the checkpoint it finds and reacts to the events since
/// again, and their commands append nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_manager_stores_its_checkpoint_at_shutdown_and_a_kill_repeats_nothing() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let mirror = StreamId::new("counter-mirror").unwrap();
    let views = InMemoryViewStore::new();
    let runner = || {
        strata::ProcessManagerRunner::new(
            Mirror,
            InProcessBus::new(store.clone()),
            views.clone(),
            Send(handler.clone()),
        )
    };
    let increment = |i: u64| {
        handler.handle(
            StreamId::new(format!("counter-src-{}", i % 3)).unwrap(),
            CounterCommand::Increment(i + 1),
            CommandContext::system("test"),
        )
    };
    let mirrored = |n: u64| {
        let handler = handler.clone();
        let mirror = mirror.clone();
        async move { handler.load(&mirror).await.unwrap().1 >= n }
    };

    // Graceful: cancelled as soon as the last command is in.
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner().run(stop.clone()));
    for i in 0..20 {
        increment(i).await.unwrap();
    }
    wait_until(Duration::from_secs(30), "20 mirrored events", || {
        mirrored(20)
    })
    .await;
    let head = store.head().await.unwrap();
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        views.checkpoint("mirror").await.unwrap().position,
        head,
        "stored at shutdown"
    );

    // Killed: no chance to store anything.
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner().run(stop.clone()));
    for i in 20..40 {
        increment(i).await.unwrap();
    }
    wait_until(Duration::from_secs(30), "40 mirrored events", || {
        mirrored(40)
    })
    .await;
    task.abort();
    let _ = task.await;

    let stop = CancellationToken::new();
    let task = tokio::spawn(runner().run(stop.clone()));
    let head = store.head().await.unwrap();
    wait_checkpoint(&views, "mirror", head).await;
    stop.cancel();
    task.await.unwrap();
    let (state, version) = handler.load(&mirror).await.unwrap();
    assert_eq!(version, 40, "one mirrored event per source event");
    assert_eq!(state.value, (1..=40).sum::<u64>());
}

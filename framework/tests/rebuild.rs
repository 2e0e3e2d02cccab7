//! Promise 6: rebuilds are online and safe, and resume after interruption.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{CounterEvent, Totals};
use strata::testing::{test_database, wait_until};
use strata::{
    AppendRequest, CancellationToken, Checkpoints, Documents, EventFilter, EventStore,
    ExpectedVersion, InProcessBus, NewEvent, PgEventStore, PgViewStore, Position, ProjectionTest,
    Projector, ReaderConfig, RebuildError, RebuildOptions, StreamId, Versions, ViewId, ViewReader,
};

fn totals() -> Totals {
    Totals::named("totals")
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

fn batch(n: u64, offset: u64) -> Vec<AppendRequest> {
    (0..n)
        .map(|i| inc(&format!("counter-{}", (i + offset) % 50), 1 + i % 3))
        .collect()
}

async fn fold<S: EventStore>(store: &S) -> BTreeMap<String, serde_json::Value> {
    let events = store
        .read_all(Position::START, 10_000_000, &EventFilter::all())
        .await
        .unwrap();
    ProjectionTest::new(totals()).given(events).json().clone()
}

async fn docs(views: &PgViewStore, view: &ViewId) -> BTreeMap<String, serde_json::Value> {
    views
        .list(view, None, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.key, d.doc))
        .collect()
}

/// Rebuild while commands keep arriving and queries keep being served: no
/// query fails or goes backwards in position, the live projector moves to
/// the new version, the old one is dropped, and the view equals a fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_online_while_writes_and_queries_go_on() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    for r in batch(2_000, 0) {
        store.append(r).await.unwrap();
    }
    let stop = CancellationToken::new();
    let live = Projector::new(totals(), InProcessBus::new(store.clone()), views.clone());
    let live_status = live.status();
    let live_task = tokio::spawn(live.run(stop.clone()));
    wait_until(
        Duration::from_secs(30),
        "the live projector to catch up",
        || async {
            // Copy out of the watch before awaiting: a borrow held across an
            // await blocks the projector's status updates.
            let position = live_status.borrow().position;
            position >= store.head().await.unwrap()
        },
    )
    .await;

    // Writers keep writing.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (store, writing) = (store.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                store
                    .append(inc(&format!("counter-{}", i % 50), 1))
                    .await
                    .unwrap();
                i += 1;
            }
        })
    };
    // Readers keep reading; their checkpoint never goes back.
    let reading = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicU64::new(0));
    let reader_task = {
        let reader = ViewReader::new(
            views.clone(),
            ReaderConfig {
                ttl: Duration::from_millis(50),
                ..Default::default()
            },
        );
        let (reading, reads) = (Arc::clone(&reading), Arc::clone(&reads));
        tokio::spawn(async move {
            let mut last = Position::START;
            while reading.load(Ordering::Relaxed) {
                let read = reader
                    .get("totals", "counter-7", None)
                    .await
                    .expect("a query never fails during a rebuild");
                assert!(
                    read.checkpoint >= last,
                    "went back from {last} to {}",
                    read.checkpoint
                );
                assert!(read.doc.is_some());
                last = read.checkpoint;
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let report = strata::rebuild(
        totals(),
        store.clone(),
        views.clone(),
        None,
        RebuildOptions {
            batch_size: 500,
            grace: Duration::from_millis(1_500),
        },
        |_| {},
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((report.from_version, report.to_version), (1, 2));
    assert_eq!(views.active_version("totals", 1).await.unwrap(), 2);

    // The live projector moved to version 2 and keeps it current.
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    let v2 = ViewId::new("totals", 2).unwrap();
    let head = store.head().await.unwrap();
    wait_until(Duration::from_secs(30), "version 2 to catch up", || async {
        views.checkpoint(&v2.subscriber()).await.unwrap().position >= head
    })
    .await;
    assert_eq!(live_status.borrow().subscriber, v2.subscriber());
    reading.store(false, Ordering::Relaxed);
    reader_task.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 10);
    assert_eq!(docs(&views, &v2).await, fold(&store).await);
    // The old version is gone.
    assert!(docs(&views, &ViewId::new("totals", 1).unwrap())
        .await
        .is_empty());
    stop.cancel();
    live_task.await.unwrap();
}

/// Interrupted halfway, a rebuild resumes where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    // 8,000 events in 100-event appends, over 40 streams.
    for i in 0..80u64 {
        let events = (0..100)
            .map(|k| {
                let (ty, payload) =
                    strata::encode(&CounterEvent::Incremented { by: 1 + k % 3 }).unwrap();
                NewEvent::new(ty, payload)
            })
            .collect();
        store
            .append(AppendRequest::new(
                StreamId::new(format!("counter-{}", i % 40)).unwrap(),
                "counter",
                ExpectedVersion::Any,
                events,
            ))
            .await
            .unwrap();
    }
    let head = store.head().await.unwrap();
    let interrupt = CancellationToken::new();
    // Interrupt as soon as the rebuild reports the new version has some
    // events in it (its progress callback runs on its own loop, which
    // checks the interrupt before going on).
    let err = strata::rebuild(
        totals(),
        store.clone(),
        views.clone(),
        None,
        // Small batches keep it slow enough to stop partway.
        RebuildOptions {
            batch_size: 5,
            ..Default::default()
        },
        {
            let interrupt = interrupt.clone();
            move |p: strata::RebuildProgress| {
                if p.position > Position::START {
                    interrupt.cancel();
                }
            }
        },
        interrupt,
    )
    .await
    .unwrap_err();
    let (version, stopped_at) = match err {
        RebuildError::Interrupted {
            version, position, ..
        } => (version, position),
        other => panic!("expected Interrupted, got {other}"),
    };
    assert!(
        stopped_at > Position::START && stopped_at < head,
        "stopped halfway, at {stopped_at}"
    );
    assert_eq!(
        views.active_version("totals", 1).await.unwrap(),
        1,
        "nothing switched"
    );

    let report = strata::rebuild(
        totals(),
        store.clone(),
        views.clone(),
        None,
        RebuildOptions {
            grace: Duration::from_millis(10),
            ..Default::default()
        },
        |_| {},
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.to_version, version, "the same version, resumed");
    assert_eq!(
        report.events,
        head.0 - stopped_at.0,
        "only the rest was read"
    );
    assert_eq!(
        docs(&views, &ViewId::new("totals", version).unwrap()).await,
        fold(&store).await
    );
}

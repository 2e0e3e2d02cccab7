//! The Postgres write paths: the store's one-round-trip append
//! (`strata_append_catch_up`) and the locked transaction it falls back to, and the
//! view store's one-statement, fenced commit.

use std::time::Duration;

use serde_json::json;
use strata::testing::test_database;
use strata::{
    AppendRequest, EventFilter, EventStore, ExpectedVersion, NewEvent, PgEventStore, PgStoreConfig,
    Position, StoreError, StreamId,
};

fn request(stream: &str, expected: ExpectedVersion, n: usize) -> AppendRequest {
    AppendRequest::new(
        StreamId::new(stream).unwrap(),
        "thing",
        expected,
        (0..n)
            .map(|i| NewEvent::new("E", json!({ "i": i })))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_expectations_take_one_round_trip_and_surprises_fall_back() {
    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(1));

    let first = request("s-1", ExpectedVersion::NoStream, 3);
    let o = store.append(first.clone()).await.unwrap();
    assert_eq!((o.first_position, o.position), (Position(1), Position(3)));
    let o = store
        .append(request("s-1", ExpectedVersion::Exact(3), 1))
        .await
        .unwrap();
    assert_eq!((o.stream_version, o.position), (4, Position(4)));
    assert_eq!(store.stats().fallbacks, 0, "both took the one-call path");

    // A stale expectation: the call finds the stream elsewhere and writes
    // nothing; the append is answered with the version the call found,
    // without the locked transaction.
    match store
        .append(request("s-1", ExpectedVersion::Exact(1), 1))
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 4),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // An expectation beyond the stream's version is a conflict too, not a gap.
    match store
        .append(request("s-1", ExpectedVersion::Exact(9), 1))
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 4),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.stats().fallbacks, 0);
    assert_eq!(store.stats().moved_groups, 2);

    // A retried append: the call finds its stream moved and its ids
    // stored, and it is answered with the original outcome, still without
    // the locked transaction.
    let again = store.append(first.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.first_position, again.position),
        (Position(1), Position(3))
    );
    assert_eq!(store.stats().fallbacks, 0);

    // An id stored in another stream, sent to a new one: the call fails on
    // the unique id, and the locked transaction names the reused id.
    let mut reused = request("s-3", ExpectedVersion::NoStream, 1);
    reused.events[0].event_id = first.events[0].event_id;
    match store.append(reused).await {
        Err(StoreError::EventIdReused { event_id }) => {
            assert_eq!(event_id, first.events[0].event_id);
        }
        other => panic!("expected a reused id, got {other:?}"),
    }
    assert_eq!(store.stats().fallbacks, 1);

    // Another process moves the stream; this one's next append finds out.
    let other = PgEventStore::new(db.pool.clone());
    other
        .append(request("s-1", ExpectedVersion::Exact(4), 1))
        .await
        .unwrap();
    match store
        .append(request("s-1", ExpectedVersion::Exact(4), 1))
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 5),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Nothing a fallback refused was written; positions and versions are dense.
    let all = store
        .read_all(Position::START, 100, &EventFilter::all())
        .await
        .unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    let versions: Vec<u64> = all.iter().map(|e| e.stream_version).collect();
    assert_eq!(positions, (1..=5).collect::<Vec<_>>());
    assert_eq!(versions, (1..=5).collect::<Vec<_>>());
    assert_eq!(store.head().await.unwrap(), Position(5));
    assert_eq!(
        store
            .stream_version(&StreamId::new("s-1").unwrap())
            .await
            .unwrap(),
        5
    );

    // A stale append beside a good one (one group or two, as they come):
    // the stale one is a conflict, the good one is written, and neither
    // takes the locked transaction.
    let (stale, fresh) = tokio::join!(
        store.append(request("s-1", ExpectedVersion::Exact(2), 1)),
        store.append(request("s-2", ExpectedVersion::NoStream, 2)),
    );
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual: 5, .. })),
        "{stale:?}"
    );
    let fresh = fresh.unwrap();
    assert_eq!((fresh.stream_version, fresh.position), (2, Position(7)));
    assert_eq!(store.stats().fallbacks, 1, "only the repeated append");
}

/// The view commit is one statement: the checkpoint moves by compare-and-set
/// and the documents are written only if it moved. A commit from a stale
/// checkpoint (a fenced-off instance) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_view_commit_writes_nothing() {
    use strata::{
        Checkpoints, DocChange, Documents, PgViewStore, StoredDoc, Versions, ViewError, ViewId,
    };
    let db = test_database().await;
    let views = PgViewStore::new(db.pool.clone());
    let view = ViewId::new("fence", 1).unwrap();
    views.prepare(&view).await.unwrap();
    let sub = view.subscriber();
    let put = |key: &str, p: u64| {
        DocChange::Put(StoredDoc {
            key: key.into(),
            doc: json!({ "n": p }),
            position: Position(p),
        })
    };
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("a", 1)],
            Position(0),
            Position(1),
        )
        .await
        .unwrap();

    for changes in [
        vec![put("a", 2), put("b", 2)],
        vec![DocChange::Delete { key: "a".into() }],
    ] {
        let err = views
            .commit(&sub, Some(&view), changes, Position(0), Position(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ViewError::Fenced { .. }), "{err:?}");
    }
    assert_eq!(views.checkpoint(&sub).await.unwrap().position, Position(1));
    let a = views.get(&view, "a").await.unwrap();
    assert_eq!(a.doc.map(|d| d.doc), Some(json!({ "n": 1 })));
    assert_eq!(a.checkpoint, Position(1));
    assert!(views.get(&view, "b").await.unwrap().doc.is_none());

    // From the right checkpoint, documents and deletes land with it.
    views
        .commit(
            &sub,
            Some(&view),
            vec![put("b", 2), DocChange::Delete { key: "a".into() }],
            Position(1),
            Position(2),
        )
        .await
        .unwrap();
    assert!(views.get(&view, "a").await.unwrap().doc.is_none());
    let b = views.get(&view, "b").await.unwrap();
    assert_eq!((b.doc.is_some(), b.checkpoint), (true, Position(2)));
}

/// Writer sessions of this test's database waiting for a lock.
/// An outside session that holds the append lock (an open transaction
/// that locked the head row) until [`release`].
async fn hold_append_lock(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT position FROM strata_head WHERE id = 1 FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// Ends [`hold_append_lock`]'s transaction, releasing the lock.
async fn release(holder: &mut sqlx::PgConnection) {
    sqlx::query("ROLLBACK").execute(holder).await.unwrap();
}

async fn writers_waiting(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE application_name = 'strata-writer' AND wait_event_type = 'Lock' \
            AND datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Appends `n` events to the new stream `stream`, in a task of its own.
fn spawn_append(
    store: &PgEventStore,
    stream: &'static str,
    n: usize,
) -> tokio::task::JoinHandle<Result<strata::AppendOutcome, StoreError>> {
    let store = store.clone();
    tokio::spawn(async move {
        store
            .append(request(stream, ExpectedVersion::NoStream, n))
            .await
    })
}

/// Waits (at most 10 s) until `n` writers wait at the append lock.
async fn until_writers_wait(db: &sqlx::PgPool, n: i64, what: &str) {
    strata::testing::wait_until(Duration::from_secs(10), what, || async {
        writers_waiting(db).await == n
    })
    .await;
}

/// For `d`, checks every 20 ms that only one writer waits at the lock.
async fn one_writer_waits_for(db: &sqlx::PgPool, d: Duration, failure: &str) {
    let deadline = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(writers_waiting(db).await, 1, "{failure}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A writer with a large group ahead of it at the append lock keeps
/// gathering: it sends once its own group is as large as the one ahead (and
/// at least 16 events), so appends that arrive one by one share a lock turn
/// and a commit, and Postgres parses the second group while the first holds
/// the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_a_group_gathers_until_its_group_is_as_large() {
    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(2));
    let mut holder = hold_append_lock(&db.url).await;

    let big = spawn_append(&store, "big", 20);
    until_writers_wait(&db.pool, 1, "the first group at the lock").await;

    // Two single-event appends arrive one at a time. A writer that sent at
    // once would be at the lock within milliseconds; this one waits for a
    // group of twenty events.
    let mut small = Vec::new();
    for stream in ["small-1", "small-2"] {
        small.push(spawn_append(&store, stream, 1));
        one_writer_waits_for(
            &db.pool,
            Duration::from_millis(300),
            "a second group went to the lock before it was as large as the first",
        )
        .await;
    }
    small.push(spawn_append(&store, "small-3", 18));
    until_writers_wait(&db.pool, 2, "the second group at the lock").await;

    release(&mut holder).await;
    let big = big.await.unwrap().unwrap();
    assert_eq!(
        (big.first_position, big.position),
        (Position(1), Position(20))
    );
    let mut ranges = Vec::new();
    for s in small {
        let s = s.await.unwrap().unwrap();
        ranges.push((s.first_position.0, s.position.0));
    }
    ranges.sort();
    assert_eq!(ranges.first().map(|r| r.0), Some(21));
    assert_eq!(ranges.last().map(|r| r.1), Some(40));
    let stats = store.stats();
    assert_eq!((stats.appends, stats.batches), (4, 2), "{stats:?}");
}

/// A small group waits for the one ahead of it to land instead of going to
/// the append lock beside it: early, it would only wait there, and a queue
/// at the lock is one that every other process's appends join. Once the
/// group ahead lands, the appends gathered meanwhile go as one group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_group_waits_for_the_one_ahead_to_land() {
    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(2));
    let mut holder = hold_append_lock(&db.url).await;

    let first = spawn_append(&store, "first", 2);
    until_writers_wait(&db.pool, 1, "the first group at the lock").await;

    // Three appends of two events each: a group as large as the one ahead
    // after the first of them, yet below sixteen events, so it stays.
    let mut behind = Vec::new();
    for stream in ["behind-1", "behind-2", "behind-3"] {
        behind.push(spawn_append(&store, stream, 2));
        one_writer_waits_for(
            &db.pool,
            Duration::from_millis(200),
            "a small group went to the lock while the one ahead was in flight",
        )
        .await;
    }

    release(&mut holder).await;
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.position, Position(2));
    let mut positions = Vec::new();
    for b in behind {
        positions.push(b.await.unwrap().unwrap().position.0);
    }
    positions.sort();
    assert_eq!(positions, vec![4, 6, 8]);
    let stats = store.stats();
    assert_eq!((stats.appends, stats.batches), (4, 2), "{stats:?}");
}

/// A group in which one stream has moved on writes the others in the same
/// call: the stale appends are conflicts at the version found, the others
/// get dense positions in the group's order, and what each outcome reports
/// is what was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_writes_around_the_streams_that_moved() {
    use strata::testing::wait_until;

    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(1));
    // "moved" is at version 2; the group's appends to it expect 1.
    store
        .append(request("moved", ExpectedVersion::NoStream, 2))
        .await
        .unwrap();
    let mut holder = hold_append_lock(&db.url).await;
    let spawn = |stream: &'static str, expected: ExpectedVersion, n: usize| {
        let store = store.clone();
        tokio::spawn(async move { store.append_or_missed(request(stream, expected, n)).await })
    };
    // The one writer waits at the lock with this; the rest queue behind it
    // and go as one group.
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(request("first", ExpectedVersion::NoStream, 1))
                .await
        })
    };
    wait_until(
        Duration::from_secs(10),
        "the first group at the lock",
        || async { writers_waiting(&db.pool).await == 1 },
    )
    .await;
    let queued = vec![
        ("a", spawn("a", ExpectedVersion::NoStream, 2)),
        ("moved", spawn("moved", ExpectedVersion::Exact(1), 1)),
        ("b", spawn("b", ExpectedVersion::NoStream, 3)),
        ("moved", spawn("moved", ExpectedVersion::Exact(1), 2)),
        ("c", spawn("c", ExpectedVersion::NoStream, 1)),
    ];
    // Once all five wait in the writer's queue, the writer takes them
    // together when the lock is released.
    wait_until(Duration::from_secs(10), "the appends queued", || async {
        store.stats().queued == 5
    })
    .await;
    release(&mut holder).await;
    first.await.unwrap().unwrap();

    // The conflicts bring the moved stream's events after the version
    // the group assumed (1): its second event, as stored.
    let moved_stream = StreamId::new("moved").unwrap();
    let stored = store.read_stream_raw(&moved_stream, 2, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    let mut written = Vec::new();
    for (stream, task) in queued {
        match (stream, task.await.unwrap()) {
            (
                "moved",
                Err(strata::AppendRefused {
                    error: StoreError::Conflict { actual, .. },
                    missed,
                }),
            ) => {
                assert_eq!(actual, 2);
                assert_eq!(missed, stored, "the missed events, as stored");
            }
            ("moved", other) => panic!("expected a conflict, got {other:?}"),
            (_, Ok(o)) => written.push(o),
            (s, Err(e)) => panic!("{s}: {:?}", e.error),
        }
    }
    let stats = store.stats();
    assert_eq!(
        stats.batches, 3,
        "the queued appends went as one group: {stats:?}"
    );
    assert_eq!(stats.moved_groups, 1, "{stats:?}");
    assert_eq!(stats.fallbacks, 0, "{stats:?}");

    // Dense positions, and each outcome names exactly its events.
    let all = store
        .read_all(Position::START, 100, &EventFilter::all())
        .await
        .unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, (1..=9).collect::<Vec<_>>());
    for o in &written {
        let events: Vec<u64> = all
            .iter()
            .filter(|e| e.stream_id == o.stream_id)
            .map(|e| e.position.0)
            .collect();
        assert_eq!(
            (events.first().copied(), events.last().copied()),
            (Some(o.first_position.0), Some(o.position.0)),
            "{o:?}"
        );
        assert_eq!(o.stream_version, events.len() as u64);
    }
    assert_eq!(
        store
            .stream_version(&StreamId::new("moved").unwrap())
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.head().await.unwrap(), Position(9));
}

/// One append's data that Postgres refuses (here: a CHECK constraint this
/// test adds, so the data passes the store's own validation) fails only
/// that append. Valid appends that shared its group commit are written,
/// once each and in order; retried appends are still answered as
/// duplicates; nothing poisoned is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_append_fails_alone_and_its_group_commits() {
    use std::collections::HashMap;
    use std::time::Duration;
    use strata::testing::wait_until;
    use strata::InputError;

    let db = test_database().await;
    sqlx::query(
        "ALTER TABLE strata_events ADD CONSTRAINT test_no_poison \
         CHECK (NOT (payload ? 'poison'))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(2));

    // Appends pile up behind an outside session holding the append lock,
    // so the first groups are large and mix poisoned and valid appends.
    let mut holder = hold_append_lock(&db.url).await;

    // One client first, so the first writer goes to the lock with its
    // group alone; the others' first appends (22 events) make a group
    // large enough for the second writer to join it there.
    const CLIENTS: usize = 12;
    const ROUNDS: usize = 30;
    let client = |c: usize| {
        let store = store.clone();
        tokio::spawn(async move {
            // (request, poisoned, result) per append sent.
            let mut sent = Vec::new();
            for r in 0..ROUNDS {
                let poisoned = (c + r) % 4 == 0;
                let expected = if r % 3 == 0 {
                    ExpectedVersion::Any // the locked transaction
                } else {
                    ExpectedVersion::NoStream // the one-call path
                };
                let payload = if poisoned {
                    json!({ "poison": true, "c": c, "r": r })
                } else {
                    json!({ "c": c, "r": r })
                };
                let request = AppendRequest::new(
                    StreamId::new(format!("p-{c}-{r}")).unwrap(),
                    "thing",
                    expected,
                    vec![NewEvent::new("E", payload), NewEvent::new("E", json!({}))],
                );
                let result = store.append(request.clone()).await;
                sent.push((request.clone(), poisoned, result));
                if r % 5 == 1 {
                    // A client retry of the same append.
                    let again = store.append(request.clone()).await;
                    sent.push((request, poisoned, again));
                }
            }
            sent
        })
    };
    let mut tasks = vec![client(0)];
    wait_until(
        Duration::from_secs(10),
        "the first writer waiting behind the outside session",
        || async { writers_waiting(&db.pool).await == 1 },
    )
    .await;
    tasks.extend((1..CLIENTS).map(client));
    wait_until(
        Duration::from_secs(10),
        "both writers waiting behind the outside session",
        || async { writers_waiting(&db.pool).await == 2 },
    )
    .await;
    release(&mut holder).await;

    let mut first: HashMap<StreamId, strata::AppendOutcome> = HashMap::new();
    let (mut valid, mut valid_failures, mut poisoned_refused) = (0, Vec::new(), 0);
    for t in tasks {
        for (request, poisoned, result) in t.await.unwrap() {
            match (poisoned, result) {
                (false, Ok(o)) => {
                    valid += 1;
                    match first.get(&request.stream_id) {
                        Some(f) => {
                            assert!(o.duplicate, "a retry wrote again: {o:?}");
                            assert_eq!(
                                (o.first_position, o.position),
                                (f.first_position, f.position)
                            );
                        }
                        None => {
                            assert!(!o.duplicate);
                            first.insert(request.stream_id.clone(), o);
                        }
                    }
                }
                (false, Err(e)) => valid_failures.push(e.to_string()),
                (true, Err(StoreError::Input(InputError::RefusedByBackend { reason }))) => {
                    assert!(reason.contains("test_no_poison"), "{reason}");
                    poisoned_refused += 1;
                }
                (true, other) => panic!("a poisoned append got {other:?}"),
            }
        }
    }
    assert!(
        valid_failures.is_empty(),
        "valid appends failed: {valid_failures:?}"
    );
    assert!(valid > 0 && poisoned_refused > 0);
    assert!(
        store.stats().batches < valid as u64,
        "appends shared group commits: {:?}",
        store.stats()
    );

    // Exactly the valid appends are stored, once each, dense, as answered.
    let all = store
        .read_all(Position::START, 10_000, &EventFilter::all())
        .await
        .unwrap();
    assert!(all.iter().all(|e| e.payload.get("poison").is_none()));
    assert_eq!(all.len(), first.len() * 2);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, Position(i as u64 + 1));
    }
    for (stream, o) in &first {
        let events = store.read_stream(stream, 1, 10).await.unwrap();
        let positions: Vec<Position> = events.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![o.first_position, o.position]);
    }
}

/// Lock-holder warnings captured from the log: (holder pid, waiting pid).
fn lock_warnings() -> &'static std::sync::Mutex<Vec<(i64, i64)>> {
    use std::sync::{Mutex, OnceLock};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    struct Capture;
    #[derive(Default)]
    struct Fields {
        holder: Option<i64>,
        waiting: Option<i64>,
    }
    impl tracing::field::Visit for Fields {
        fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
            match field.name() {
                "holder_pid" => self.holder = Some(value),
                "waiting_pid" => self.waiting = Some(value),
                _ => {}
            }
        }
        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }
    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut f = Fields::default();
            event.record(&mut f);
            if let (Some(h), Some(w)) = (f.holder, f.waiting) {
                WARNINGS
                    .get_or_init(Default::default)
                    .lock()
                    .unwrap()
                    .push((h, w));
            }
        }
    }
    static WARNINGS: OnceLock<Mutex<Vec<(i64, i64)>>> = OnceLock::new();
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    });
    WARNINGS.get_or_init(Default::default)
}

/// With appends queued at the append lock, the warning names the session
/// at the head of the chain (the outside holder), not a waiting writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_warning_names_the_holder_not_a_waiting_writer() {
    use std::time::Duration;
    use strata::testing::wait_until;

    let warnings = lock_warnings();
    let db = test_database().await;
    let store = PgEventStore::with_config(
        db.pool.clone(),
        PgStoreConfig::default()
            .writers(2)
            .slow_lock_warning(Duration::from_millis(100)),
    );
    let mut holder = hold_append_lock(&db.url).await;
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();

    // Groups of 16 events: a second writer joins the first at the lock
    // only with a group that large.
    let spawn = |stream: &'static str| spawn_append(&store, stream, 16);
    let a = spawn("first");
    wait_until(
        Duration::from_secs(10),
        "the first writer waiting",
        || async { writers_waiting(&db.pool).await == 1 },
    )
    .await;
    let b = spawn("second");
    wait_until(Duration::from_secs(10), "both writers waiting", || async {
        writers_waiting(&db.pool).await == 2
    })
    .await;
    let writer_pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
          WHERE application_name = 'strata-writer' AND datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(writer_pids.len(), 2);
    let ours = |w: i64| writer_pids.iter().any(|p| i64::from(*p) == w);
    wait_until(
        Duration::from_secs(10),
        "a lock warning from each waiting writer",
        || async {
            let w = warnings.lock().unwrap();
            writer_pids
                .iter()
                .all(|p| w.iter().any(|(_, waiting)| *waiting == i64::from(*p)))
        },
    )
    .await;
    let named: Vec<i64> = warnings
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, w)| ours(*w))
        .map(|(h, _)| *h)
        .collect();
    assert!(
        named.iter().all(|h| *h == i64::from(holder_pid)),
        "warnings named {named:?}; the holder is {holder_pid}, the writers are {writer_pids:?}"
    );

    release(&mut holder).await;
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// An append waits for the append lock one `lock_timeout` in all, counted
/// from when it was queued: also a writer queued at the lock behind another
/// waiter (Postgres restarts `lock_timeout` when it moves from the waiter's
/// tuple lock to the holder's transaction), and appends that queued in the
/// store while both writers were waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_waits_one_lock_timeout_in_all() {
    use std::time::{Duration, Instant};
    use strata::testing::wait_until;

    const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
    let db = test_database().await;
    let store = PgEventStore::with_config(
        db.pool.clone(),
        PgStoreConfig::default()
            .writers(2)
            .lock_timeout(LOCK_TIMEOUT),
    );
    let mut holder = hold_append_lock(&db.url).await;

    // The first two of 16 events: a second writer joins the first at the
    // lock only with a group that large.
    let spawn = |stream: &'static str, expected: ExpectedVersion, n: usize| {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = store.append(request(stream, expected, n)).await;
            (r, started.elapsed())
        })
    };
    let mut appends = vec![spawn("w-1", ExpectedVersion::NoStream, 16)];
    wait_until(
        Duration::from_secs(10),
        "the first writer waiting",
        || async { writers_waiting(&db.pool).await == 1 },
    )
    .await;
    appends.push(spawn("w-2", ExpectedVersion::NoStream, 16));
    wait_until(Duration::from_secs(10), "both writers waiting", || async {
        writers_waiting(&db.pool).await == 2
    })
    .await;
    // Both writers are busy: these queue, one on each path.
    appends.push(spawn("w-3", ExpectedVersion::NoStream, 1));
    appends.push(spawn("w-4", ExpectedVersion::Any, 1));

    let mut answers = Vec::new();
    for a in appends {
        answers.push(a.await.unwrap());
    }
    for (result, waited) in answers {
        let err = result.expect_err("the lock is held throughout");
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("lock timeout"), "{err}");
        assert!(
            waited < LOCK_TIMEOUT + Duration::from_millis(900),
            "an append waited {waited:?}, lock_timeout is {LOCK_TIMEOUT:?}"
        );
    }
    release(&mut holder).await;
    assert_eq!(store.head().await.unwrap(), Position::START);
}

/// The one-call append looks streams up by index, however small the table
/// was when the writer's session first planned it: 200 appends to new
/// streams, one by one, scan `strata_streams` zero times, and stale
/// appends find their stored ids and missed events without scanning
/// `strata_events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_look_streams_up_by_index_as_the_table_grows() {
    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(1));
    // The first append plans the function's statements on an empty table,
    // and a stale one right after plans the look-up of stored ids.
    store
        .append(request("first", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    let stale = store
        .append(request("first", ExpectedVersion::NoStream, 1))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let scans = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            let (seq, idx): (i64, i64) = sqlx::query_as(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables \
                  WHERE relname = $1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
            (seq, idx)
        }
    };
    // Statistics reach the view once the writer's backend flushes them
    // (an idle backend within 10 s): wait until the index look-ups counted
    // reach `min_idx`.
    let settled = |table: &'static str, min_idx: i64, what: &'static str| {
        let scans = &scans;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            loop {
                let s = scans(table).await;
                if s.1 >= min_idx {
                    return s;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} not in the statistics within 40 s: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let before = settled("strata_streams", 2, "the first appends' index look-ups").await;
    let events_before = settled("strata_events", 1, "the stale append's id look-up").await;
    for i in 0..200 {
        store
            .append(request(&format!("s-{i}"), ExpectedVersion::NoStream, 1))
            .await
            .unwrap();
    }
    let after = settled(
        "strata_streams",
        before.1 + 200,
        "the 200 appends' look-ups",
    )
    .await;
    assert_eq!(
        after.0, before.0,
        "no full scan of strata_streams: {after:?}"
    );
    // Stale appends, now that the table has grown: their ids, and the
    // events they missed (which come back with the conflict), are looked
    // up by index too.
    for i in 0..20 {
        let stale = store
            .append_or_missed(request(&format!("s-{i}"), ExpectedVersion::NoStream, 1))
            .await;
        match stale {
            Err(strata::AppendRefused {
                error: StoreError::Conflict { actual: 1, .. },
                missed,
            }) => assert_eq!(
                missed.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
                vec![1]
            ),
            other => panic!("expected a conflict at 1, got {other:?}"),
        }
    }
    let events_after = settled(
        "strata_events",
        events_before.1 + 20,
        "the stale appends' id look-ups",
    )
    .await;
    assert_eq!(
        events_after.0, events_before.0,
        "no full scan of strata_events: {events_after:?}"
    );
}

/// Writers of an earlier build call `strata_append_current`, which now
/// answers from `strata_append_catch_up`: it still writes a group whose
/// streams are where assumed, and reports a moved stream (with its version)
/// without writing its rows, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_builds_call_still_appends_and_reports_moved_streams() {
    let db = test_database().await;
    let call = |stream: &'static str, assumed: i64| {
        let pool = db.pool.clone();
        async move {
            let row: (i64, Vec<String>, Vec<i64>) = sqlx::query_as(
                "SELECT base, moved_ids, moved_versions FROM strata_append_current( \
                   ARRAY[$1]::uuid[], ARRAY[$2], ARRAY['s'], ARRAY[$3 + 1], ARRAY['Happened'], \
                   ARRAY[1], ARRAY['{}'::jsonb], ARRAY['{}'::jsonb], ARRAY[NULL]::timestamptz[], \
                   ARRAY[$2], ARRAY[$3], ARRAY[$2], ARRAY['s'], ARRAY[$3 + 1], \
                   'strata_test_channel', '1000')",
            )
            .bind(uuid::Uuid::new_v4())
            .bind(stream)
            .bind(assumed)
            .fetch_one(&pool)
            .await
            .unwrap();
            row
        }
    };
    let store = PgEventStore::new(db.pool.clone());
    let stream = StreamId::new("earlier").unwrap();
    assert_eq!(call("earlier", 0).await, (0, vec![], vec![]));
    assert_eq!(call("earlier", 1).await, (1, vec![], vec![]));
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    // A stale assumption: reported, nothing written.
    assert_eq!(
        call("earlier", 0).await,
        (2, vec!["earlier".to_owned()], vec![2])
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), 2);
    assert_eq!(store.head().await.unwrap(), Position(2));
}

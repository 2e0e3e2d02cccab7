//! The Postgres write paths: the store's one-round-trip append
//! (`strata_append`) and the locked transaction it falls back to, and the
//! view store's one-statement, fenced commit.

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

    // A stale expectation: the call finds the stream elsewhere, writes
    // nothing, and the locked path answers with the real version.
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
    assert_eq!(store.stats().fallbacks, 2);

    // A retried append: the ids are stored, the call fails on the unique
    // constraint and rolls back, and the locked path returns the original.
    let again = store.append(first).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.first_position, again.position),
        (Position(1), Position(3))
    );
    assert_eq!(store.stats().fallbacks, 3);

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
}

/// The view commit is one statement: the checkpoint moves by compare-and-set
/// and the documents are written only if it moved. A commit from a stale
/// checkpoint (a fenced-off instance) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_view_commit_writes_nothing() {
    use strata::{DocChange, PgViewStore, StoredDoc, ViewError, ViewId, ViewStore};
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

/// A writer with a group ahead of it at the append lock keeps gathering:
/// it sends once its group is as large as the one ahead, so appends that
/// arrive one by one share a lock turn and a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_a_group_gathers_until_its_group_is_as_large() {
    use sqlx::Connection;
    use std::time::Duration;
    use strata::testing::wait_until;

    let db = test_database().await;
    let store = PgEventStore::with_config(db.pool.clone(), PgStoreConfig::default().writers(2));
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT position FROM strata_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let spawn = |stream: &'static str, n: usize| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(request(stream, ExpectedVersion::NoStream, n))
                .await
        })
    };
    let big = spawn("big", 3);
    wait_until(
        Duration::from_secs(10),
        "the first group at the lock",
        || async { writers_waiting(&db.pool).await == 1 },
    )
    .await;

    // Two single-event appends arrive one at a time. A writer that sent at
    // once would be at the lock within milliseconds; this one waits for a
    // group of three events.
    let mut small = Vec::new();
    for stream in ["small-1", "small-2"] {
        small.push(spawn(stream, 1));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while tokio::time::Instant::now() < deadline {
            assert_eq!(
                writers_waiting(&db.pool).await,
                1,
                "a second group went to the lock before it was as large as the first"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    small.push(spawn("small-3", 1));
    wait_until(
        Duration::from_secs(10),
        "the second group at the lock",
        || async { writers_waiting(&db.pool).await == 2 },
    )
    .await;

    tx.rollback().await.unwrap();
    let big = big.await.unwrap().unwrap();
    assert_eq!(
        (big.first_position, big.position),
        (Position(1), Position(3))
    );
    let mut positions = Vec::new();
    for s in small {
        positions.push(s.await.unwrap().unwrap().position.0);
    }
    positions.sort();
    assert_eq!(positions, vec![4, 5, 6]);
    let stats = store.stats();
    assert_eq!((stats.appends, stats.batches), (4, 2), "{stats:?}");
}

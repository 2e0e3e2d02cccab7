//! The Postgres store's two write paths: the one-round-trip append
//! (`strata_append`) and the locked transaction it falls back to.

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

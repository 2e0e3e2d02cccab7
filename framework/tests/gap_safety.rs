//! Promise 3: a reader that follows the store never skips an event, even one
//! whose transaction started first but committed last.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use strata::testing::{test_database, wait_until};
use strata::{
    AppendRequest, EventFilter, EventStore, ExpectedVersion, Follower, NewEvent, PgEventStore,
    PgStoreConfig, Position, StoreError, StreamId,
};
use uuid::Uuid;

fn append(stream: &str, n: usize) -> AppendRequest {
    AppendRequest::new(
        StreamId::new(stream).unwrap(),
        "thing",
        ExpectedVersion::Any,
        (0..n)
            .map(|i| NewEvent::new("E", json!({ "i": i })))
            .collect(),
    )
}

async fn connect(url: &str, app: &str) -> PgConnection {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(app)
        .execute(&mut c)
        .await
        .unwrap();
    c
}

/// Waits until the store's writer session is blocked on a lock.
async fn wait_for_blocked_writer(pool: &sqlx::PgPool) {
    wait_until(
        Duration::from_secs(10),
        "the writer to wait for the append lock",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'strata-writer' AND wait_event_type = 'Lock' \
               AND datname = current_database()",
            )
            .fetch_one(pool)
            .await
            .unwrap()
                > 0
        },
    )
    .await;
}

/// An appending transaction that takes its position first and commits last
/// is seen by the reader, exactly once and in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_never_skips_a_late_committing_append() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    store.append(append("early-1", 2)).await.unwrap();

    let mut reader = Follower::new(store.clone(), Position::START).batch_size(3);
    let mut seen: Vec<(u64, Uuid)> = Vec::new();
    while let Some(batch) = reader.try_next_batch().await.unwrap() {
        seen.extend(batch.iter().map(|e| (e.position.0, e.event_id)));
    }
    assert_eq!(seen.len(), 2);

    // A slow appender (another process, by the store's own protocol) takes
    // position 3 and holds its transaction open.
    let mut slow = connect(&db.url, "slow-appender").await;
    let mut tx = slow.begin().await.unwrap();
    let head: i64 = sqlx::query_scalar("SELECT position FROM strata_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(head, 2);
    let slow_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO strata_events (position, event_id, stream_id, stream_type, stream_version, \
           event_type, schema_version, payload, metadata, recorded_at) \
         VALUES ($1, $2, 'slow-1', 'thing', 1, 'E', 1, '{}', $3, now())",
    )
    .bind(head + 1)
    .bind(slow_id)
    .bind(serde_json::to_value(strata::Metadata::new()).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();

    // Others append while it is open: some through the one-round-trip
    // append (a known expected version), some through the locked
    // transaction (`ExpectedVersion::Any`).
    let writers: Vec<_> = (0..5)
        .map(|i| {
            let store = store.clone();
            let mut request = append(&format!("fast-{i}"), 2);
            if i % 2 == 0 {
                request.expected = ExpectedVersion::NoStream;
            }
            tokio::spawn(async move { store.append(request).await })
        })
        .collect();
    wait_for_blocked_writer(&db.pool).await;

    // The reader sees nothing new: neither the open append nor the later ones.
    assert_eq!(reader.try_next_batch().await.unwrap(), None);
    assert_eq!(store.head().await.unwrap(), Position(2));

    // The slow append commits, then the others.
    sqlx::query("UPDATE strata_head SET position = $1 WHERE id = 1")
        .bind(head + 1)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.push(w.await.unwrap().unwrap());
    }
    assert!(outcomes.iter().all(|o| o.first_position > Position(3)));

    while let Some(batch) = reader.try_next_batch().await.unwrap() {
        seen.extend(batch.iter().map(|e| (e.position.0, e.event_id)));
    }
    let positions: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        positions,
        (1..=13).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        seen[2].1, slow_id,
        "the late-committing append is at its position"
    );

    // The order is stable: a fresh read gives the same sequence.
    let again: Vec<(u64, Uuid)> = store
        .read_all(Position::START, 100, &EventFilter::all())
        .await
        .unwrap()
        .iter()
        .map(|e| (e.position.0, e.event_id))
        .collect();
    assert_eq!(again, seen);
}

/// The control: with a plain sequence and no append lock, the same reader
/// does skip the late-committing row. This is the hazard the test above
/// would catch if the lock were removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plain_sequence_skips_late_commits() {
    let db = test_database().await;
    sqlx::query("CREATE TABLE naive (position BIGSERIAL PRIMARY KEY, v TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut slow = connect(&db.url, "slow").await;
    let mut tx = slow.begin().await.unwrap();
    sqlx::query("INSERT INTO naive (v) VALUES ('slow')")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO naive (v) VALUES ('fast')")
        .execute(&db.pool)
        .await
        .unwrap();
    let read = |after: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("SELECT position, v FROM naive WHERE position > $1 ORDER BY position")
                .bind(after)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
                .collect::<Vec<_>>()
        }
    };
    let first = read(0).await;
    assert_eq!(first, vec![(2, "fast".to_owned())]);
    tx.commit().await.unwrap();
    let next = read(2).await;
    assert!(
        next.is_empty(),
        "the reader has moved past position 1 for good"
    );
}

/// Many writers in several "processes" (stores with their own writer
/// connections), random batch sizes and conflicts, and a follower reading
/// as they go: the follower sees every committed event exactly once, in a
/// dense order, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_concurrent_writers_and_a_follower() {
    let seed: u64 = std::env::var("STRATA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set STRATA_SEED to replay)");
    let db = test_database().await;
    let stores: Vec<PgEventStore> = (0..3).map(|_| PgEventStore::new(db.pool.clone())).collect();

    let committed = Arc::new(Mutex::new(Vec::<(u64, Uuid)>::new()));
    let mut writers = Vec::new();
    for w in 0..24u64 {
        let store = stores[w as usize % stores.len()].clone();
        let committed = Arc::clone(&committed);
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (w * 7919));
            let mut conflicts = 0;
            for _ in 0..40 {
                let stream = StreamId::new(format!("s-{}", rng.gen_range(0..12))).unwrap();
                let n = rng.gen_range(1..=5);
                let evs: Vec<NewEvent> = (0..n)
                    .map(|i| NewEvent::new("E", json!({ "w": w, "i": i })))
                    .collect();
                let expected = if rng.gen_bool(0.5) {
                    ExpectedVersion::Any
                } else {
                    ExpectedVersion::from_seen(store.stream_version(&stream).await.unwrap())
                };
                let ids: Vec<Uuid> = evs.iter().map(|e| e.event_id).collect();
                match store
                    .append(AppendRequest::new(stream, "thing", expected, evs))
                    .await
                {
                    Ok(o) => {
                        let mut c = committed.lock().unwrap();
                        for (i, id) in ids.into_iter().enumerate() {
                            c.push((o.first_position.0 + i as u64, id));
                        }
                    }
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            conflicts
        }));
    }

    let follower_store = stores[0].clone();
    let follower = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut f = Follower::new(follower_store.clone(), Position::START);
        let mut seen = Vec::new();
        let mut done_head = None;
        loop {
            f = f.batch_size(rng.gen_range(1..50));
            match f.try_next_batch().await.unwrap() {
                Some(batch) => seen.extend(batch.iter().map(|e| (e.position.0, e.event_id))),
                None => {
                    if let Some(h) = done_head {
                        if f.position() >= h {
                            return seen;
                        }
                    }
                    // Writers still running: wait for the next append.
                    follower_store
                        .wait_for_head(f.position(), Duration::from_millis(200))
                        .await
                        .unwrap();
                }
            }
            if done_head.is_none() && FINISHED.load(std::sync::atomic::Ordering::Acquire) {
                done_head = Some(follower_store.head().await.unwrap());
            }
        }
    });
    let mut conflicts = 0;
    for w in writers {
        conflicts += w.await.unwrap();
    }
    FINISHED.store(true, std::sync::atomic::Ordering::Release);
    let seen = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("follower caught up")
        .unwrap();

    let mut committed = committed.lock().unwrap().clone();
    committed.sort();
    let positions: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let dense: Vec<u64> = (1..=committed.len() as u64).collect();
    assert_eq!(
        positions, dense,
        "dense, in order, none repeated or skipped"
    );
    assert_eq!(
        seen, committed,
        "exactly the committed events, at their positions"
    );
    let unique: HashSet<Uuid> = seen.iter().map(|s| s.1).collect();
    assert_eq!(unique.len(), seen.len());
    println!("{} events, {conflicts} conflicts", seen.len());

    // Stream versions are contiguous.
    let all = stores[0]
        .read_all(Position::START, 100_000, &EventFilter::all())
        .await
        .unwrap();
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &all {
        per_stream
            .entry(e.stream_id.to_string())
            .or_default()
            .push(e.stream_version);
    }
    for (stream, versions) in per_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "versions of {stream}");
    }
}

static FINISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A session that holds the append lock is visible: a counter moves and a
/// log line names the culprit.
#[test]
fn a_stuck_lock_holder_is_reported() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = Arc::clone(&logs);
        move || LogWriter(Arc::clone(&logs))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = test_database().await;
        let store = PgEventStore::with_config(
            db.pool.clone(),
            PgStoreConfig::default().slow_lock_warning(Duration::from_millis(100)),
        );
        let mut culprit = connect(&db.url, "the-culprit").await;
        let mut tx = culprit.begin().await.unwrap();
        sqlx::query("SELECT position FROM strata_head WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await
            .unwrap();
        let blocked = tokio::spawn({
            let store = store.clone();
            async move { store.append(append("x-1", 1)).await }
        });
        wait_until(Duration::from_secs(10), "a slow-lock report", || {
            let logs = Arc::clone(&logs);
            async move { String::from_utf8_lossy(&logs.lock().unwrap()).contains("the-culprit") }
        })
        .await;
        assert!(store.stats().slow_lock_waits >= 1);
        tx.rollback().await.unwrap();
        let out = blocked.await.unwrap().unwrap();
        assert_eq!(out.position, Position(1));
        assert!(store.stats().max_lock_wait_us >= 100_000);
    });
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

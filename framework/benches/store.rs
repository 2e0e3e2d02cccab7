//! Event store benchmark: append throughput beside a raw-SQL baseline
//! measured in the same run, against the real Postgres.
//!
//! Run with `just bench` (or `cargo bench -p strata --bench store`). Set
//! `STRATA_BENCH_SECS` to change the time per measurement (default 5) and
//! `STRATA_BENCH_WRITE=1` to write the table into docs/benchmarks.md;
//! `STRATA_BENCH_ONLY_LOAD=1` times only the 10,000-event loads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use strata::testing::test_database;
use strata::{
    AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore, StreamId,
};
use uuid::Uuid;

fn payload(i: u64) -> serde_json::Value {
    json!({ "sku": format!("SKU-{:05}", i % 10_000), "quantity": i % 7 + 1, "unit_price_cents": 1999, "note": "benchmark event payload" })
}

/// Turns of baseline and Strata per case.
const ROUNDS: usize = 3;

struct Row {
    case: String,
    raw: f64,
    strata: f64,
    /// Median of the per-round ratios (equal to strata / raw for one round).
    ratio: f64,
    /// Lowest and highest per-round ratio.
    spread: (f64, f64),
}

impl Row {
    fn single(case: String, raw: f64, strata: f64) -> Row {
        Row::from_rounds(case, &[(raw, strata)])
    }

    fn from_rounds(case: String, pairs: &[(f64, f64)]) -> Row {
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let ratios: Vec<f64> = pairs.iter().map(|(r, s)| s / r).collect();
        let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().cloned().fold(0.0, f64::max);
        Row {
            case,
            raw: median(pairs.iter().map(|p| p.0).collect()),
            strata: median(pairs.iter().map(|p| p.1).collect()),
            ratio: median(ratios),
            spread: (lo, hi),
        }
    }

    fn line(&self) -> String {
        format!(
            "{}: raw {:.0}/s, strata {:.0}/s, ratio {:.2} (rounds {:.2}..{:.2})",
            self.case, self.raw, self.strata, self.ratio, self.spread.0, self.spread.1
        )
    }
}

async fn run_for<F, Fut>(workers: usize, secs: u64, per_op: u64, f: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let f = f.clone();
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    f(w, i).await;
                    i += 1;
                    done.fetch_add(per_op, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn raw_pool(url: &str, n: u32) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(n)
        .min_connections(n)
        .connect(url)
        .await
        .expect("raw pool");
    pool
}

const RAW_INSERT: &str = "INSERT INTO raw_events (event_id, stream_id, stream_type, stream_version, \
     event_type, schema_version, payload, metadata, recorded_at) \
     SELECT e, s, 'bench', v, 'ItemAdded', 1, pl::jsonb, md::jsonb, clock_timestamp() \
     FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS t(e, s, v, pl, md)";

async fn raw_insert(pool: &PgPool, stream: &str, first_version: u64, n: u64, meta: &str) {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let streams: Vec<&str> = vec![stream; n as usize];
    let versions: Vec<i64> = (0..n).map(|i| (first_version + i) as i64).collect();
    let payloads: Vec<String> = (0..n)
        .map(|i| payload(first_version + i).to_string())
        .collect();
    let metas: Vec<&str> = vec![meta; n as usize];
    sqlx::query(RAW_INSERT)
        .bind(&ids)
        .bind(&streams)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metas)
        .execute(pool)
        .await
        .expect("raw insert");
}

fn events(first: u64, n: u64) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new("ItemAdded", payload(first + i))
                .with_metadata(Metadata::new().with_actor("bench"))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("STRATA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let db = test_database().await;
    sqlx::raw_sql(
        "CREATE TABLE raw_events (LIKE strata_events INCLUDING ALL); \
         CREATE SEQUENCE raw_seq; \
         ALTER TABLE raw_events ALTER position SET DEFAULT nextval('raw_seq');",
    )
    .execute(&db.pool)
    .await
    .expect("baseline table");
    let writers_cfg: usize = std::env::var("STRATA_BENCH_WRITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let store = PgEventStore::with_config(
        db.pool.clone(),
        strata::PgStoreConfig::default().writers(writers_cfg),
    );
    let meta = serde_json::to_string(&Metadata::new().with_actor("bench")).unwrap();
    let mut rows = Vec::new();
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();

    if std::env::var("STRATA_BENCH_ONLY_LOAD").is_ok() {
        let (plain, narrow, without, with) = commands::load_times(&store, 10_000).await;
        println!("10k-event load: plain fetch {plain:.2} ms (load's columns only {narrow:.2} ms), without snapshot {without:.2} ms, with snapshot {with:.2} ms");
        return;
    }
    let only_batch = std::env::var("STRATA_BENCH_ONLY_BATCH").is_ok();
    let cases: &[(usize, u64)] = if only_batch {
        &[(8, 100)]
    } else {
        &[(1, 1), (8, 1), (32, 1), (8, 100)]
    };
    for &(writers, per_append) in cases {
        let pool = raw_pool(&db.url, writers as u32).await;
        // Baseline and Strata take turns, ROUNDS times, so that a
        // checkpoint or a noisy neighbour hits both alike; the medians are
        // reported.
        let mut pairs = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let (p, m) = (pool.clone(), meta.clone());
            let tag = format!("{run_id}-r{writers}x{per_append}-{round}");
            let raw = run_for(writers, secs, per_append, move |w, i| {
                let (pool, m) = (p.clone(), m.clone());
                let stream = format!("{tag}-{w}");
                async move { raw_insert(&pool, &stream, i * per_append + 1, per_append, &m).await }
            })
            .await;
            let s = store.clone();
            let tag = format!("{run_id}-s{writers}x{per_append}-{round}");
            let strata = run_for(writers, secs, per_append, move |w, i| {
                let s = s.clone();
                let stream = StreamId::new(format!("{tag}-{w}")).unwrap();
                async move {
                    s.append(AppendRequest::new(
                        stream,
                        "bench",
                        ExpectedVersion::Exact(i * per_append),
                        events(i * per_append, per_append),
                    ))
                    .await
                    .expect("append");
                }
            })
            .await;
            pairs.push((raw, strata));
        }
        let row = Row::from_rounds(
            if per_append == 1 {
                format!("single-event appends, {writers} concurrent writers")
            } else {
                format!("{per_append}-event appends, {writers} concurrent writers")
            },
            &pairs,
        );
        println!("{}", row.line());
        rows.push(row);
    }

    if only_batch {
        println!("{:?}", store.stats());
        return;
    }
    // The command path.
    let mut cmd_rows = Vec::new();
    for (i, writers) in [1usize, 8, 32].into_iter().enumerate() {
        let cmds = commands::throughput(
            &store,
            writers,
            secs,
            false,
            &format!("{run_id}-c{writers}"),
        )
        .await;
        println!(
            "commands on distinct aggregates, {writers} tasks: {cmds:.0}/s (raw {:.0})",
            rows[i].raw
        );
        cmd_rows.push(Row::single(
            format!("single-event commands, {writers} tasks, distinct aggregates"),
            rows[i].raw,
            cmds,
        ));
    }
    let hot = commands::throughput(&store, 32, secs, true, &format!("{run_id}-hot")).await;
    println!("commands on one hot aggregate, 32 tasks: {hot:.0}/s");
    cmd_rows.push(Row::single(
        "single-event commands, 32 tasks, one hot aggregate".into(),
        rows[2].raw,
        hot,
    ));
    let (plain, narrow, without, with) = commands::load_times(&store, 10_000).await;
    println!("10k-event load: plain fetch {plain:.2} ms (load's columns only {narrow:.2} ms), without snapshot {without:.2} ms, with snapshot {with:.2} ms");

    let stats = store.stats();
    println!("store stats: {stats:?}");
    let mut table = format!(
        "Each case: {ROUNDS} rounds of baseline then Strata, {secs} s each; medians, and the \
         lowest and highest round's ratio.\n\n\
         | case | raw SQL baseline (events/s) | Strata (events/s) | ratio (median) | ratio per round |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}× | {:.2}–{:.2}× |\n",
            r.case, r.raw, r.strata, r.ratio, r.spread.0, r.spread.1
        ));
    }
    table.push_str(&format!(
        "\nGroup commit: {} appends in {} transactions ({:.1} appends per transaction).\n",
        stats.appends,
        stats.batches,
        stats.appends as f64 / stats.batches.max(1) as f64
    ));
    print!("\n{table}");
    strata_bench_report::write_section("store", &table, secs);

    let mut table = String::from(
        "| case | raw one-row transactions (events/s) | Strata commands/s | ratio |\n|---|---:|---:|---:|\n",
    );
    for r in &cmd_rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}× |\n",
            r.case, r.raw, r.strata, r.ratio
        ));
    }
    table.push_str(&format!(
        "\n| loading a 10,000-event aggregate | median of 9 |\n|---|---:|\n\
         | plain fetch of the same rows (sqlx, every column, payload and metadata decoded as JSON) | {plain:.2} ms |\n\
         | plain fetch of the columns a load reads (no metadata; payload decoded as JSON) | {narrow:.2} ms |\n\
         | `CommandHandler::load`, no snapshot (decode and fold) | {without:.2} ms ({:.2}× the plain fetch, {:.2}× the narrow one; target ≤ 1.2×) |\n\
         | `CommandHandler::load`, snapshot at the last version | {with:.2} ms (target < 2 ms) |\n",
        without / plain,
        without / narrow
    ));
    print!("\n{table}");
    strata_bench_report::write_section("commands", &table, secs);
}

mod strata_bench_report {
    include!("support/report.rs");
}

mod commands {
    //! The command path: handler throughput and aggregate load times.

    use std::sync::Arc;
    use std::time::Instant;

    use serde::{Deserialize, Serialize};
    use sqlx::Row;
    use strata::{
        Aggregate, CommandContext, CommandHandler, DomainEvent, EventStore, PgEventStore,
        PgSnapshotStore, SnapshotPolicy, SnapshotStore, StreamId,
    };

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum Ev {
        #[serde(rename = "Incremented")]
        Incremented { by: u64, note: String },
    }
    impl DomainEvent for Ev {}

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    pub struct Never;

    #[derive(Debug, Default, Clone, Serialize, Deserialize)]
    pub struct Counter {
        value: u64,
    }

    impl Aggregate for Counter {
        const STREAM_TYPE: &'static str = "counter";
        type Command = u64;
        type Event = Ev;
        type Error = Never;
        fn decide(&self, by: &u64) -> Result<Vec<Ev>, Never> {
            Ok(vec![Ev::Incremented {
                by: *by,
                note: "benchmark increment".into(),
            }])
        }
        fn evolve(&mut self, e: &Ev) {
            let Ev::Incremented { by, .. } = e;
            self.value += by;
        }
    }

    pub async fn throughput(
        store: &PgEventStore,
        workers: usize,
        secs: u64,
        hot: bool,
        tag: &str,
    ) -> f64 {
        let handler = CommandHandler::<Counter, _>::new(store.clone());
        let tag = tag.to_owned();
        super::run_for(workers, secs, 1, move |w, _| {
            let h = handler.clone();
            let stream = if hot {
                format!("{tag}-hot")
            } else {
                format!("{tag}-{w}")
            };
            async move {
                h.handle(
                    StreamId::new(stream).unwrap(),
                    1,
                    CommandContext::system("test"),
                )
                .await
                .expect("command");
            }
        })
        .await
    }

    /// Median of `runs` timings, in milliseconds.
    async fn median_ms<F, Fut>(runs: usize, mut f: F) -> f64
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            f().await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        times[runs / 2]
    }

    /// Median time of a plain sqlx fetch of the stream, decoding the payload
    /// (and the metadata, if asked) as JSON values.
    async fn fetch_ms(pool: &sqlx::PgPool, stream: &StreamId, sql: &str, metadata: bool) -> f64 {
        median_ms(9, || async move {
            let rows = sqlx::query(sql)
                .bind(stream.as_str())
                .fetch_all(pool)
                .await
                .unwrap();
            let mut total = 0i64;
            for r in &rows {
                let _: sqlx::types::Json<serde_json::Value> = r.get("payload");
                if metadata {
                    let _: sqlx::types::Json<serde_json::Value> = r.get("metadata");
                }
                total += r.get::<i64, _>("position");
            }
            assert!(total > 0);
        })
        .await
    }

    /// (plain fetch, plain fetch of the load's columns, load without
    /// snapshot, load with snapshot), ms.
    pub async fn load_times(store: &PgEventStore, n: usize) -> (f64, f64, f64, f64) {
        let stream = StreamId::new(format!("load-{}", uuid::Uuid::new_v4().simple())).unwrap();
        let handler = CommandHandler::<Counter, _>::new(store.clone());
        // Write the stream in 100-event appends.
        let mut version = 0u64;
        while (version as usize) < n {
            let events: Vec<strata::NewEvent> = (0..100)
                .map(|_| {
                    let (ty, payload) = strata::encode(&Ev::Incremented {
                        by: 1,
                        note: "benchmark increment".into(),
                    })
                    .unwrap();
                    strata::NewEvent::new(ty, payload)
                })
                .collect();
            store
                .append(strata::AppendRequest::new(
                    stream.clone(),
                    "counter",
                    strata::ExpectedVersion::Exact(version),
                    events,
                ))
                .await
                .unwrap();
            version += 100;
        }
        let pool = store.pool().clone();
        let plain = fetch_ms(
            &pool,
            &stream,
            "SELECT position, event_id, stream_id, stream_type, stream_version, event_type, \
             schema_version, payload, metadata, recorded_at FROM strata_events \
             WHERE stream_id = $1 ORDER BY stream_version",
            true,
        )
        .await;
        // The same, fetching only what a load needs (no metadata).
        let narrow = fetch_ms(
            &pool,
            &stream,
            "SELECT event_id, stream_version, position, event_type, schema_version, payload \
             FROM strata_events WHERE stream_id = $1 ORDER BY stream_version",
            false,
        )
        .await;
        // Each load by a fresh handler: a handler keeps what it loaded, and
        // a second load from its cache would read no events at all.
        let without = median_ms(9, || {
            let h = CommandHandler::<Counter, _>::new(store.clone());
            let stream = stream.clone();
            async move {
                let (state, _) = h.load(&stream).await.unwrap();
                assert_eq!(state.value, n as u64);
            }
        })
        .await;
        let snapshots: Arc<dyn SnapshotStore> = Arc::new(PgSnapshotStore::new(pool.clone()));
        let (state, version) = handler.load(&stream).await.unwrap();
        snapshots
            .save(strata::Snapshot {
                stream_id: stream.clone(),
                stream_type: "counter".into(),
                version,
                position: store.head().await.unwrap(),
                schema_version: Counter::SNAPSHOT_VERSION,
                state: serde_json::to_value(&state).unwrap(),
            })
            .await
            .unwrap();
        let with = median_ms(9, || {
            let h = CommandHandler::<Counter, _>::new(store.clone())
                .with_snapshots(snapshots.clone(), SnapshotPolicy::Every(1_000));
            let stream = stream.clone();
            async move {
                let (state, _) = h.load(&stream).await.unwrap();
                assert_eq!(state.value, n as u64);
            }
        })
        .await;
        (plain, narrow, without, with)
    }
}

//! Event store benchmark: append throughput beside a raw-SQL baseline
//! measured in the same run, against the real Postgres.
//!
//! Run with `just bench` (or `cargo bench -p strata --bench store`). Set
//! `STRATA_BENCH_SECS` to change the time per measurement (default 5) and
//! `STRATA_BENCH_WRITE=1` to write the table into docs/benchmarks.md.

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

struct Row {
    case: String,
    raw: f64,
    strata: f64,
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
    let store = PgEventStore::new(db.pool.clone());
    let meta = serde_json::to_string(&Metadata::new().with_actor("bench")).unwrap();
    let mut rows = Vec::new();
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();

    for writers in [1usize, 8, 32] {
        let pool = raw_pool(&db.url, writers as u32).await;
        let m = meta.clone();
        let tag = format!("{run_id}-r{writers}");
        let raw = run_for(writers, secs, 1, move |w, i| {
            let pool = pool.clone();
            let m = m.clone();
            let stream = format!("{tag}-{w}");
            async move { raw_insert(&pool, &stream, i + 1, 1, &m).await }
        })
        .await;
        let s = store.clone();
        let tag = format!("{run_id}-s{writers}");
        let strata = run_for(writers, secs, 1, move |w, i| {
            let s = s.clone();
            let stream = StreamId::new(format!("{tag}-{w}")).unwrap();
            async move {
                s.append(AppendRequest::new(
                    stream,
                    "bench",
                    ExpectedVersion::Exact(i),
                    events(i, 1),
                ))
                .await
                .expect("append");
            }
        })
        .await;
        println!("single-event appends, {writers} writers: raw {raw:.0}/s, strata {strata:.0}/s, ratio {:.2}", strata / raw);
        rows.push(Row {
            case: format!("single-event appends, {writers} concurrent writers"),
            raw,
            strata,
        });
    }

    let writers = 8usize;
    let pool = raw_pool(&db.url, writers as u32).await;
    let m = meta.clone();
    let tag = format!("{run_id}-rb");
    let raw = run_for(writers, secs, 100, move |w, i| {
        let pool = pool.clone();
        let m = m.clone();
        let stream = format!("{tag}-{w}");
        async move { raw_insert(&pool, &stream, i * 100 + 1, 100, &m).await }
    })
    .await;
    let s = store.clone();
    let tag = format!("{run_id}-sb");
    let strata = run_for(writers, secs, 100, move |w, i| {
        let s = s.clone();
        let stream = StreamId::new(format!("{tag}-{w}")).unwrap();
        async move {
            s.append(AppendRequest::new(
                stream,
                "bench",
                ExpectedVersion::Exact(i * 100),
                events(i * 100, 100),
            ))
            .await
            .expect("append");
        }
    })
    .await;
    println!(
        "100-event batches, {writers} writers: raw {raw:.0}/s, strata {strata:.0}/s, ratio {:.2}",
        strata / raw
    );
    rows.push(Row {
        case: format!("100-event appends, {writers} concurrent writers"),
        raw,
        strata,
    });

    let stats = store.stats();
    println!("store stats: {stats:?}");
    let mut table = String::from(
        "| case | raw SQL baseline (events/s) | Strata (events/s) | ratio |\n|---|---:|---:|---:|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2}× |\n",
            r.case,
            r.raw,
            r.strata,
            r.strata / r.raw
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
}

mod strata_bench_report {
    include!("support/report.rs");
}

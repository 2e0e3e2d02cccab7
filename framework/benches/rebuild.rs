//! Rebuild rate: a simple projection rebuilt over generated events, beside
//! a plain SQL scan of the same events in the same run.
//!
//! `cargo bench -p strata --bench rebuild`; `STRATA_BENCH_EVENTS` sets the
//! number of events (default 1,000,000); `STRATA_BENCH_WRITE=1` writes the
//! table into docs/benchmarks.md.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use strata::testing::test_database;
use strata::{
    AppendRequest, CancellationToken, EventEnvelope, EventStore, ExpectedVersion, NewEvent,
    PgEventStore, PgViewStore, Projection, ProjectionError, RebuildOptions, Recorded, StreamId,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Total {
    value: u64,
    events: u64,
}

struct Totals;

/// Raw envelopes (the escape hatch): reads the payload's `by` itself.
impl Projection for Totals {
    type Event = EventEnvelope;
    type Doc = Total;
    fn name(&self) -> &str {
        "bench_totals"
    }
    fn keys(&self, e: Recorded<'_, EventEnvelope>) -> Vec<String> {
        vec![e.stream_id().to_string()]
    }
    fn apply(
        &self,
        _: &str,
        doc: Option<Total>,
        e: Recorded<'_, EventEnvelope>,
    ) -> Result<Option<Total>, ProjectionError> {
        let mut t = doc.unwrap_or_default();
        t.events += 1;
        t.value += e.payload["by"].as_u64().unwrap_or(0);
        Ok(Some(t))
    }
}

mod strata_bench_report {
    include!("support/report.rs");
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::var("STRATA_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());

    // Generate: 1,000-event appends from 8 tasks over 1,000 streams.
    let started = Instant::now();
    let per_task = n / 8;
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut done = 0;
                let mut round = 0u64;
                while done < per_task {
                    let k = (per_task - done).min(1_000);
                    let stream =
                        StreamId::new(format!("gen-{}", (t * 1_000_003 + round) % 1_000)).unwrap();
                    let events = (0..k)
                        .map(|i| {
                            NewEvent::new(
                                "Incremented",
                                json!({ "by": (i % 5) + 1, "note": "generated" }),
                            )
                        })
                        .collect();
                    store
                        .append(AppendRequest::new(
                            stream,
                            "counter",
                            ExpectedVersion::Any,
                            events,
                        ))
                        .await
                        .unwrap();
                    done += k;
                    round += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let head = store.head().await.unwrap();
    println!(
        "generated {} events in {:.1} s",
        head.0,
        started.elapsed().as_secs_f64()
    );

    // Baseline: a plain SQL scan of the same rows, payloads decoded.
    let started = Instant::now();
    let mut rows = sqlx::query("SELECT position, stream_id, event_type, payload, metadata, recorded_at FROM strata_events ORDER BY position").fetch(&db.pool);
    let mut count = 0u64;
    while let Some(r) = rows.try_next().await.unwrap() {
        let _: sqlx::types::Json<serde_json::Value> = r.get("payload");
        let _: sqlx::types::Json<serde_json::Value> = r.get("metadata");
        count += 1;
    }
    drop(rows);
    let scan_secs = started.elapsed().as_secs_f64();
    let scan_rate = count as f64 / scan_secs;
    println!("plain scan: {count} events in {scan_secs:.2} s = {scan_rate:.0}/s");

    let report = strata::rebuild(
        Totals,
        store.clone(),
        views,
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
    let rebuild_rate = report.events as f64 / report.seconds;
    println!(
        "rebuild: {} events in {:.2} s = {rebuild_rate:.0}/s ({:.2}× the scan)",
        report.events,
        report.seconds,
        rebuild_rate / scan_rate
    );

    let table = format!(
        "| case | events | seconds | events/s |\n|---|---:|---:|---:|\n\
         | plain SQL scan (`SELECT ... ORDER BY position`, payload and metadata decoded) | {count} | {scan_secs:.2} | {scan_rate:.0} |\n\
         | `strata::rebuild` of a keyed projection (1,000 documents), 5,000-event batches | {} | {:.2} | {rebuild_rate:.0} ({:.2}× the scan) |\n",
        report.events, report.seconds, rebuild_rate / scan_rate
    );
    print!("\n{table}");
    strata_bench_report::write_section("rebuild", &table, 0);
}

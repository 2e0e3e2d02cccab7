//! Propagation benchmark: how fast events get from the store to the views,
//! against the real Postgres and NATS, beside a raw JetStream baseline
//! measured in the same run.
//!
//! 1. Relay throughput: N pre-appended events published by a `Relay` into a
//!    fresh JetStream stream, beside raw pipelined JetStream publishes of N
//!    messages of the same size.
//! 2. Projector throughput: a `Projector` over `JetStreamBus` (the stream the
//!    relay filled) into `PgViewStore`, and the same over `InProcessBus`.
//! 3. Command-to-view latency: commands at a steady 1,000/s, each followed by
//!    a read-your-writes `ViewReader::get`, with relay, JetStream projector
//!    and NATS change feed running.
//!
//! Run with `just bench` (or `cargo bench -p strata --bench propagation`).
//! `STRATA_BENCH_EVENTS` sets N (default 200,000), `STRATA_BENCH_SECS` the
//! length of the latency run (default 10 s), and `STRATA_BENCH_WRITE=1`
//! writes the table into docs/benchmarks.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use strata::nats::StreamConfig;
use strata::testing::{nats_client, test_database, unique_stream};
use strata::{
    AnyChangeFeed, AppendRequest, CancellationToken, CommandContext, CommandHandler, EventFilter,
    EventStore, ExpectedVersion, InProcessBus, JetStreamBus, NewEvent, PgEventStore, PgViewStore,
    Position, Projector, ReaderConfig, Relay, StreamId, SubscriberStatus, ViewReader,
};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

mod strata_bench_report {
    include!("support/report.rs");
}

/// Distinct aggregates (and so view documents).
const KEYS: u64 = 1_000;
/// Events per append when filling the store.
const APPEND: u64 = 100;
/// Commands per second in the latency run.
const RATE: u64 = 1_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

mod model {
    //! A counter aggregate and a projection of totals per counter.

    use serde::{Deserialize, Serialize};
    use strata::{Aggregate, DomainEvent, NewEvent, Projection, ProjectionError, Recorded};

    /// Pads the payload to about 150 bytes of JSON.
    const NOTE: &str = "benchmark increment, padded so that the JSON payload of each event is about one hundred and fifty bytes long, like a real one";

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum Ev {
        #[serde(rename = "CounterIncremented")]
        Incremented { by: u64, note: String },
    }
    impl DomainEvent for Ev {
        const STREAM_TYPE: Option<&'static str> = Some("counter");
    }

    pub fn increment(by: u64) -> Ev {
        Ev::Incremented {
            by,
            note: NOTE.into(),
        }
    }

    pub fn new_event(by: u64) -> NewEvent {
        let (ty, payload) = strata::encode(&increment(by)).expect("encode");
        NewEvent::new(ty, payload)
    }

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
            Ok(vec![increment(*by)])
        }
        fn evolve(&mut self, e: &Ev) {
            let Ev::Incremented { by, .. } = e;
            self.value += by;
        }
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct Total {
        pub value: u64,
        pub events: u64,
    }

    /// Totals per counter (like `Totals` in tests/propagation.rs).
    pub struct Totals(pub &'static str);

    impl Projection for Totals {
        type Event = Ev;
        type Doc = Total;
        fn name(&self) -> &str {
            self.0
        }
        fn keys(&self, e: Recorded<'_, Ev>) -> Vec<String> {
            vec![e.stream_id().to_string()]
        }
        fn apply(
            &self,
            _key: &str,
            doc: Option<Total>,
            e: Recorded<'_, Ev>,
        ) -> Result<Option<Total>, ProjectionError> {
            let mut t = doc.unwrap_or_default();
            let Ev::Incremented { by, .. } = e.event;
            t.value += by;
            t.events += 1;
            Ok(Some(t))
        }
    }
}

use model::{Counter, Totals};

/// CPU seconds used by this process, nats-server and all postgres processes
/// (cheap profiling from /proc; zeros where unavailable).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    me: f64,
    nats: f64,
    pg: f64,
}

fn proc_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn cpu_now() -> Cpu {
    const HZ: f64 = 100.0;
    let mut cpu = Cpu {
        me: proc_ticks("self").unwrap_or(0) as f64 / HZ,
        ..Default::default()
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let ticks = || proc_ticks(&pid).unwrap_or(0) as f64 / HZ;
        match comm.trim() {
            "nats-server" => cpu.nats += ticks(),
            c if c.starts_with("postgres") => cpu.pg += ticks(),
            _ => {}
        }
    }
    cpu
}

/// CPU use since `before` over `wall`, in % of one core.
fn cpu_since(before: Cpu, wall: Duration) -> String {
    let now = cpu_now();
    let w = wall.as_secs_f64().max(1e-9);
    format!(
        "CPU: bench process {:.0}%, nats-server {:.0}%, postgres {:.0}% (of one core)",
        (now.me - before.me) / w * 100.0,
        (now.nats - before.nats) / w * 100.0,
        (now.pg - before.pg) / w * 100.0
    )
}

/// Appends `n` events in 100-event appends from 8 writers, round-robin over
/// `KEYS` counters.
async fn fill(store: &PgEventStore, n: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let appends = n.div_ceil(APPEND);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= appends {
                        return;
                    }
                    let count = APPEND.min(n - j * APPEND);
                    let stream = StreamId::new(format!("counter-{}", j % KEYS)).unwrap();
                    let events: Vec<NewEvent> =
                        (0..count).map(|i| model::new_event(i % 7 + 1)).collect();
                    store
                        .append(AppendRequest::new(
                            stream,
                            "counter",
                            ExpectedVersion::Any,
                            events,
                        ))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
}

/// Raw JetStream: `n` messages of `size` bytes with `Nats-Msg-Id`, sent
/// 1,000 at a time, then their acks awaited (as the relay pipelines).
async fn raw_publish(js: &jetstream::Context, cfg: &StreamConfig, n: u64, size: usize) -> f64 {
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let mut i = 0u64;
    while i < n {
        let end = (i + 1_000).min(n);
        let mut acks = Vec::with_capacity((end - i) as usize);
        for k in i..end {
            let publish = jetstream::context::Publish::build()
                .payload(body.clone())
                .message_id(uuid::Uuid::new_v4().to_string());
            let subject = format!("{}.counter.counter-{}", cfg.prefix, k % KEYS);
            acks.push(js.send_publish(subject, publish).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("ack");
        }
        i = end;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// As [`raw_publish`], with the headers the relay sets on each message
/// (including `Nats-Expected-Last-Sequence`), to tell their cost apart.
async fn raw_publish_headers(
    js: &jetstream::Context,
    cfg: &StreamConfig,
    n: u64,
    size: usize,
) -> f64 {
    use strata::nats::headers;
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let correlation = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut i = 0u64;
    while i < n {
        let end = (i + 1_000).min(n);
        let mut acks = Vec::with_capacity((end - i) as usize);
        for k in i..end {
            let id = uuid::Uuid::new_v4().to_string();
            let publish = jetstream::context::Publish::build()
                .payload(body.clone())
                .message_id(id.as_str())
                .expected_last_sequence(k)
                .header(headers::POSITION, (k + 1).to_string().as_str())
                .header(headers::EVENT_ID, id.as_str())
                .header(headers::EVENT_TYPE, "CounterIncremented")
                .header(headers::SCHEMA_VERSION, "1")
                .header(headers::CORRELATION_ID, correlation.as_str());
            let subject = format!("{}.counter.counter-{}", cfg.prefix, k % KEYS);
            acks.push(js.send_publish(subject, publish).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("ack");
        }
        i = end;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Polls `cond` every 2 ms (a `wait_for` on a watch that changes per event
/// would cost the measured task CPU); panics after `bound`.
async fn poll_until<T: Clone>(rx: &watch::Receiver<T>, bound: Duration, cond: impl Fn(&T) -> bool) {
    let deadline = Instant::now() + bound;
    while !cond(&rx.borrow()) {
        assert!(Instant::now() < deadline, "timed out after {bound:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Where the relay's time could go: reading the store in 1,000-event
/// batches, and serialising the envelopes (events/s of each, alone).
async fn relay_parts(store: &PgEventStore, head: Position) -> (f64, f64) {
    let mut read = Duration::ZERO;
    let mut ser = Duration::ZERO;
    let mut pos = Position::START;
    let mut bytes = 0usize;
    while pos < head {
        let t = Instant::now();
        let batch = store
            .read_all(pos, 1_000, &EventFilter::all())
            .await
            .expect("read");
        read += t.elapsed();
        let t = Instant::now();
        for e in &batch {
            bytes += serde_json::to_vec(e).expect("serialise").len();
            bytes += e.event_id.to_string().len() + e.position.to_string().len();
        }
        ser += t.elapsed();
        pos = batch.last().map_or(head, |e| e.position);
    }
    assert!(bytes > 0);
    let n = head.0 as f64;
    (n / read.as_secs_f64(), n / ser.as_secs_f64())
}

/// Runs a projector from its (fresh) checkpoint to `head`; events/s.
async fn project<B: strata::EventBus>(
    projection: Totals,
    bus: B,
    views: &PgViewStore,
    head: Position,
) -> f64 {
    let projector = Projector::new(projection, bus, views.clone());
    let status = projector.status();
    let stop = CancellationToken::new();
    let cpu = cpu_now();
    let started = Instant::now();
    let task = tokio::spawn(projector.run(stop.clone()));
    poll_until(&status, Duration::from_secs(600), |s: &SubscriberStatus| {
        s.position >= head
    })
    .await;
    let elapsed = started.elapsed();
    println!("  {}", cpu_since(cpu, elapsed));
    stop.cancel();
    task.await.expect("projector");
    head.0 as f64 / elapsed.as_secs_f64()
}

/// Turns of raw publishes and the relay.
const RELAY_ROUNDS: usize = 3;

async fn delete_stream(js: &jetstream::Context, c: &StreamConfig) {
    if let Err(e) = js.delete_stream(&c.stream).await {
        eprintln!("could not delete stream {}: {e}", c.stream);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let secs = env_u64("STRATA_BENCH_SECS", 10).max(1);
    let n = env_u64("STRATA_BENCH_EVENTS", 200_000).max(1);
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let js = jetstream::new(client.clone());

    // ---- the store, filled ----------------------------------------------------
    let t = Instant::now();
    fill(&store, n).await;
    let head = store.head().await.expect("head");
    assert_eq!(head.0, n);
    println!(
        "pre-appended {n} events in {:.1} s ({:.0}/s)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let sample = store
        .read_all(Position::START, 1, &EventFilter::all())
        .await
        .expect("read");
    let size = serde_json::to_vec(&sample[0]).expect("serialise").len();
    let payload_size = sample[0].payload.to_string().len();
    println!("event payload {payload_size} bytes, envelope (message body) {size} bytes");

    // ---- 1. relay throughput ----------------------------------------------------
    // The raw baseline and the relay take turns, RELAY_ROUNDS times, each
    // into a fresh stream, so that a noisy moment hits both alike; the
    // medians are reported. The last relay stream feeds the projector runs.
    let mut pairs = Vec::with_capacity(RELAY_ROUNDS);
    let mut cfg = unique_stream();
    for round in 0..RELAY_ROUNDS {
        let raw_cfg = unique_stream();
        raw_cfg.ensure(&js).await.expect("raw stream");
        let cpu = cpu_now();
        let t = Instant::now();
        let raw = raw_publish(&js, &raw_cfg, n, size).await;
        println!("round {round}: raw JetStream publishes: {raw:.0} msg/s");
        println!("  {}", cpu_since(cpu, t.elapsed()));
        delete_stream(&js, &raw_cfg).await;

        if round > 0 {
            delete_stream(&js, &cfg).await;
            cfg = unique_stream();
        }
        cfg.ensure(&js).await.expect("stream");
        let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
        let status = relay.status();
        let stop_relay = CancellationToken::new();
        let cpu = cpu_now();
        let started = Instant::now();
        let task = tokio::spawn(relay.run(stop_relay.clone()));
        poll_until(&status, Duration::from_secs(600), |s| s.published >= head).await;
        let elapsed = started.elapsed();
        let relay_rate = n as f64 / elapsed.as_secs_f64();
        println!(
            "round {round}: relay: {relay_rate:.0} events/s ({:.2}× raw)",
            relay_rate / raw
        );
        println!("  {}", cpu_since(cpu, elapsed));
        stop_relay.cancel();
        task.await.expect("relay");
        pairs.push((raw, relay_rate));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let raw = median(pairs.iter().map(|p| p.0).collect());
    let relay_rate = median(pairs.iter().map(|p| p.1).collect());
    let ratios: Vec<f64> = pairs.iter().map(|(r, s)| s / r).collect();
    let relay_ratio = median(ratios.clone());
    let ratio_spread = (
        ratios.iter().cloned().fold(f64::INFINITY, f64::min),
        ratios.iter().cloned().fold(0.0, f64::max),
    );

    let hdr_cfg = unique_stream();
    hdr_cfg.ensure(&js).await.expect("raw stream");
    let raw_headers = raw_publish_headers(&js, &hdr_cfg, n, size).await;
    println!("raw JetStream publishes with the relay's headers: {raw_headers:.0} msg/s");
    delete_stream(&js, &hdr_cfg).await;

    let (read_rate, ser_rate) = relay_parts(&store, head).await;
    let serial = 1.0 / (1.0 / read_rate + 1.0 / ser_rate + 1.0 / raw_headers);
    println!(
        "relay parts alone: store reads {read_rate:.0} events/s, serialisation {ser_rate:.0} events/s, \
         raw publishes with headers {raw_headers:.0} msg/s; done one after another: {serial:.0} events/s"
    );

    // ---- 2. projector throughput ------------------------------------------------
    let js_rate = project(
        Totals("bench_totals_js"),
        JetStreamBus::new(client.clone(), cfg.clone(), store.clone()),
        &views,
        head,
    )
    .await;
    println!("projector over JetStreamBus: {js_rate:.0} events/s");
    let local_rate = project(
        Totals("bench_totals_local"),
        InProcessBus::new(store.clone()),
        &views,
        head,
    )
    .await;
    println!("projector over InProcessBus: {local_rate:.0} events/s");

    // ---- 3. command-to-view latency ---------------------------------------------
    // Settle the bulk fill's maintenance (autovacuum and analyze of the new
    // rows, the checkpoint its WAL triggers) before the steady-state run, so
    // it does not land in the measured seconds.
    for maintenance in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::raw_sql(maintenance)
            .execute(&db.pool)
            .await
            .expect(maintenance);
    }
    let stop = CancellationToken::new();
    let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
    let relay_status = relay.status();
    tokio::spawn(relay.run(stop.clone()));
    let changes_prefix = format!(
        "bench_changes_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let projector = Projector::new(
        Totals("bench_totals_js"),
        JetStreamBus::new(client.clone(), cfg.clone(), store.clone()),
        views.clone(),
    )
    .with_change_feed(AnyChangeFeed::nats(client.clone(), changes_prefix.clone()));
    let view = projector.view().clone();
    let projector_status = projector.status();
    tokio::spawn(projector.run(stop.clone()));
    // The query side: its own pool and NATS connection, as a query service.
    let query_pool = sqlx::PgPool::connect(&db.url).await.expect("query pool");
    let reader = ViewReader::new(PgViewStore::new(query_pool), ReaderConfig::default());
    reader
        .listen(
            &AnyChangeFeed::nats(nats_client().await, changes_prefix),
            stop.clone(),
        )
        .await
        .expect("listen");
    poll_until(&relay_status, Duration::from_secs(30), |s| {
        s.active && s.published >= head
    })
    .await;
    poll_until(&projector_status, Duration::from_secs(30), |s| {
        s.position >= head
    })
    .await;

    // Idle: everything running, nothing to do.
    let cpu = cpu_now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = cpu_since(cpu, Duration::from_secs(2));
    println!("idle (relay, projector, reader running): {idle_cpu}");

    let handler = CommandHandler::<Counter, _>::new(store.clone());
    // One second of warm-up, then the measured run.
    let stages = Stages {
        relay: relay_status.clone(),
        projector: projector_status.clone(),
    };
    let _ = paced(&handler, &reader, &view, &stages, RATE).await;
    let cpu = cpu_now();
    let t = Instant::now();
    let results = paced(&handler, &reader, &view, &stages, RATE * secs).await;
    let run_cpu = cpu_since(cpu, t.elapsed());
    let failed = results.iter().filter(|r| r.read.is_none()).count();
    let sorted = |f: &dyn Fn(&Sample) -> Option<f64>| {
        let mut v: Vec<f64> = results.iter().filter_map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let ms = sorted(&|s| s.read);
    let stage_p50: Vec<f64> = [
        sorted(&|s| Some(s.command)),
        sorted(&|s| Some(s.published)),
        sorted(&|s| Some(s.projected)),
    ]
    .iter()
    .map(|v| percentile(v, 0.5))
    .collect();
    let stage_p99: Vec<f64> = [
        sorted(&|s| Some(s.command)),
        sorted(&|s| Some(s.published)),
        sorted(&|s| Some(s.projected)),
    ]
    .iter()
    .map(|v| percentile(v, 0.99))
    .collect();
    println!(
        "stage p99: command {:.2} ms, relay {:.2} ms, projector {:.2} ms",
        stage_p99[0], stage_p99[1], stage_p99[2]
    );
    assert!(!ms.is_empty(), "every command failed");
    let (p50, p99, max) = (
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms[ms.len() - 1],
    );
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "command → view, {} commands at {RATE}/s: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, \
         mean {mean:.2} ms, {failed} failed",
        ms.len() + failed
    );
    println!("  {run_cpu}");
    let stage_line = format!(
        "Median time from sending a command until: it returned (event committed) {:.2} ms; \
         the relay's status reached its event {:.2} ms; the projector's status reached it \
         (view committed) {:.2} ms; the read-your-writes read returned {p50:.2} ms.",
        stage_p50[0], stage_p50[1], stage_p50[2]
    );
    println!("{stage_line}");
    let cache = reader.stats();
    println!("reader cache: {cache:?}");
    stop.cancel();

    // ---- the report ---------------------------------------------------------------
    let mark = |ok: bool| if ok { "" } else { " (missed)" };
    let mut table = format!(
        "N = {n} events ({payload_size}-byte JSON payloads, {size}-byte messages) over {KEYS} counters.\n\n\
         | case | baseline | Strata | ratio / target |\n|---|---:|---:|---:|\n"
    );
    table.push_str(&format!(
        "| relay: store → JetStream, {n} events (median of {RELAY_ROUNDS} alternating rounds; \
         ratio per round {:.2}–{:.2}×) | raw JetStream publishes: {raw:.0} msg/s | {relay_rate:.0} events/s | \
         {relay_ratio:.2}× (target ≥ 0.8×){} |\n",
        ratio_spread.0,
        ratio_spread.1,
        mark(relay_ratio >= 0.8)
    ));
    table.push_str(&format!(
        "| projector over `JetStreamBus` → `PgViewStore` | | {js_rate:.0} events/s | |\n\
         | projector over `InProcessBus` (reads `PgEventStore`) → `PgViewStore` | | {local_rate:.0} events/s | |\n"
    ));
    table.push_str(&format!(
        "\nCommand to view ({} commands at {RATE}/s over {secs} s, relay + JetStream projector + NATS change feed + `ViewReader`{}):\n\n\
         | latency | measured | target |\n|---|---:|---:|\n\
         | p50 | {p50:.2} ms{} | ≤ 5 ms |\n\
         | p99 | {p99:.2} ms{} | ≤ 20 ms |\n\
         | max | {max:.2} ms | |\n",
        ms.len() + failed,
        if failed > 0 {
            format!(", {failed} reads not caught up within 5 s")
        } else {
            String::new()
        },
        mark(p50 <= 5.0),
        mark(p99 <= 20.0)
    ));
    table.push_str(&format!(
        "\nWhere the relay's time goes (each part alone): store reads in 1,000-event batches \
         {read_rate:.0} events/s, envelope serialisation {ser_rate:.0} events/s, raw publishes \
         carrying the relay's headers (position, event id, type, schema version, correlation id, \
         expected last sequence) {raw_headers:.0} msg/s; the three one after another, as the \
         relay does them: {serial:.0} events/s.\n\n{stage_line}\n"
    ));
    print!("\n{table}");
    strata_bench_report::write_section("propagation", &table, secs);

    delete_stream(&js, &cfg).await;
}

/// One command's timings, in ms from sending it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The command returned (its event is committed).
    command: f64,
    /// The relay's status reached the event.
    published: f64,
    /// The projector's status reached the event (view committed).
    projected: f64,
    /// The read-your-writes read returned; `None` if it failed.
    read: Option<f64>,
}

/// The status receivers the stage timings watch.
#[derive(Clone)]
struct Stages {
    relay: watch::Receiver<strata::RelayStatus>,
    projector: watch::Receiver<SubscriberStatus>,
}

/// Sends `count` commands at `RATE` per second, each on its own task, and
/// times each from sending to its read-your-writes read (and, observed
/// passively on the status watches, the stages in between).
async fn paced(
    handler: &CommandHandler<Counter, PgEventStore>,
    reader: &ViewReader<PgViewStore>,
    view: &strata::ViewId,
    stages: &Stages,
    count: u64,
) -> Vec<Sample> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        tick.tick().await;
        let sent = Instant::now();
        let (h, r, v) = (handler.clone(), reader.clone(), view.clone());
        let mut st = stages.clone();
        tasks.push(tokio::spawn(async move {
            let ms = |t: Instant| t.duration_since(sent).as_secs_f64() * 1000.0;
            let key = format!("counter-lat-{}", i % KEYS);
            let out = h
                .handle(
                    StreamId::new(key.clone()).unwrap(),
                    1,
                    CommandContext::system("test"),
                )
                .await
                .expect("command");
            let command = ms(Instant::now());
            let p = out.position;
            let (published, projected, read) = tokio::join!(
                async {
                    let _ = st.relay.wait_for(|s| s.published >= p).await;
                    ms(Instant::now())
                },
                async {
                    let _ = st.projector.wait_for(|s| s.position >= p).await;
                    ms(Instant::now())
                },
                async {
                    let read = r.get(v.name(), &key, Some(p)).await;
                    read.ok().map(|_| ms(Instant::now()))
                }
            );
            Sample {
                command,
                published,
                projected,
                read,
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("command task"));
    }
    out
}

//! Live updates at scale: N concurrent SSE subscribers on one document
//! (`/live/catalog/MUG-01`), in-memory backends, everything in this process.
//! Measures the latency from a command (`restock`) to the new state
//! arriving at each subscriber (p50, p99, max over every delivery) and the
//! memory per subscriber (VmRSS before and after connecting them; the
//! clients live in this process too, so it counts both ends of each
//! connection).
//!
//! `STRATA_BENCH_SUBSCRIBERS` (default 10,000), `STRATA_BENCH_ROUNDS`
//! (default 20). Each subscriber needs two file descriptors (client and
//! server side): with a lower open-files limit the bench runs with fewer
//! and says so; raise it with `ulimit -n`.
//!
//! Run: `cargo bench -p example-ecommerce --bench live`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use example_ecommerce::app::Shop;
use example_ecommerce::domain::payment::PaymentGateway;
use example_ecommerce::http::{serve, QueryState};
use example_ecommerce::live::{Live, LiveConfig};
use example_ecommerce::metrics::Metrics;
use example_ecommerce::runtime::{spawn_projectors, Statuses};
use futures::StreamExt;
use strata::{
    AnyChangeFeed, CancellationToken, CommandContext, InMemoryEventStore, InMemoryViewStore,
    InProcessBus, ReaderConfig, ViewReader,
};
use tokio::sync::{mpsc, Semaphore};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A line of /proc/self/status or /proc/self/limits.
fn proc_field(file: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

fn rss_kib() -> u64 {
    proc_field("/proc/self/status", "VmRSS:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The soft open-files limit.
fn open_files_limit() -> Option<usize> {
    proc_field("/proc/self/limits", "Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One subscriber: reports the position of every state it receives.
async fn subscriber(
    http: reqwest::Client,
    url: String,
    ready: mpsc::UnboundedSender<()>,
    arrivals: mpsc::UnboundedSender<(u64, Instant)>,
) {
    let resp = match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => panic!("subscribe: {}", r.status()),
        Err(e) => panic!("subscribe: {e}"),
    };
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut first = true;
    while let Some(Ok(chunk)) = body.next().await {
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                continue;
            };
            if first {
                first = false;
                let _ = ready.send(());
            } else {
                let _ = arrivals.send((id, now));
            }
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let wanted = env_usize("STRATA_BENCH_SUBSCRIBERS", 10_000);
    let rounds = env_usize("STRATA_BENCH_ROUNDS", 20);
    let limit = open_files_limit();
    let n = match limit {
        Some(l) if 2 * wanted + 256 > l => {
            let n = l.saturating_sub(256) / 2;
            eprintln!(
                "open-files limit {l} is too low for {wanted} subscribers (needs about {}); \
                 running with {n}. Raise it with `ulimit -n {}`.",
                2 * wanted + 256,
                2 * wanted + 256
            );
            n
        }
        _ => wanted,
    };

    // The shop, in memory, and the query API's live routes on a socket.
    let store = InMemoryEventStore::new();
    let bus = InProcessBus::new(store.clone());
    let views = InMemoryViewStore::new();
    let feed = AnyChangeFeed::in_process();
    let shutdown = CancellationToken::new();
    let shop = Shop::new(
        store.clone(),
        PaymentGateway::always_accepting(),
        Arc::new(Metrics::default()),
    );
    spawn_projectors(&[], &bus, &views, &feed, &Statuses::default(), &shutdown);
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    reader
        .listen(&feed, shutdown.clone())
        .await
        .expect("listen");
    let live = Live::new(
        QueryState { reader, feed },
        LiveConfig {
            max_subscribers: n + 16,
            // Every subscriber connects from this process's one address.
            max_per_client: n + 16,
            ..LiveConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/live/catalog/MUG-01",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(serve(listener, live.router(), shutdown.clone()));
    shop.register_product("MUG-01", "Mug", 1250, CommandContext::system("test"))
        .await
        .expect("register");
    let first = shop
        .restock("MUG-01", 1, CommandContext::system("test"))
        .await
        .expect("restock");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = first;

    // Connect N subscribers (200 at a time); each gets the current state.
    let rss_before = rss_kib();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(200));
    let connect_started = Instant::now();
    for _ in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.expect("gate");
        let (http, url, ready, arrivals) = (
            http.clone(),
            url.clone(),
            ready_tx.clone(),
            arrive_tx.clone(),
        );
        let (one_tx, mut one_rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber(http, url, one_tx, arrivals));
        tokio::spawn(async move {
            if one_rx.recv().await.is_some() {
                let _ = ready.send(());
            }
            drop(permit);
        });
    }
    for i in 0..n {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {n} subscribers connected"));
    }
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib();
    assert_eq!(live.subscribers(), n);

    // Rounds: one command, wait for every subscriber to get its state.
    let mut latencies = Vec::with_capacity(n * rounds);
    let mut round_times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        while arrive_rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let outcome = shop
            .restock("MUG-01", 1, CommandContext::system("test"))
            .await
            .expect("restock");
        let position = outcome.position.0;
        let mut got = 0;
        while got < n {
            let (id, at) = tokio::time::timeout(Duration::from_secs(60), arrive_rx.recv())
                .await
                .expect("every subscriber gets the change")
                .expect("arrivals");
            if id == position {
                latencies.push(at - t0);
                got += 1;
            }
        }
        round_times.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live.subscribers(), n, "nobody was dropped");
    latencies.sort_unstable();
    round_times.sort_unstable();
    let per_sub = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / n as f64;

    println!("\n## Live updates: {n} SSE subscribers on one document, {rounds} changes\n");
    println!("| subscribers | connect all | memory per subscriber (both ends) | push p50 | push p99 | push max | last subscriber served (p50) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.2} s | {:.1} KiB (RSS {} → {} MiB) | {} | {} | {} | {} |",
        connect_time.as_secs_f64(),
        per_sub / 1024.0,
        rss_before / 1024,
        rss_after / 1024,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
        ms(percentile(&round_times, 0.50)),
    );
    if n < wanted {
        println!("\n(limited to {n} subscribers by the open-files limit {limit:?})");
    }
    shutdown.cancel();
}

//! What checking bearer tokens costs on the command path. The shop's
//! command API over real Postgres and a real socket, 32 concurrent clients
//! restocking (each its own sku), measured twice in the same run:
//!
//! - **verified**: every request's token is checked by `strata::auth`
//!   (EdDSA signature, issuer, audience, expiry), as in production;
//! - **unverified**: the same router and the same requests, but an
//!   authenticator that trusts any token (the baseline: everything but the
//!   verification).
//!
//! Rounds alternate (verified, unverified, …) so drift hits both alike;
//! the table reports the median round of each and the ratio. Also the
//! time of one verification alone.
//!
//! `STRATA_BENCH_SECS` (default 5) per round, `STRATA_BENCH_ROUNDS`
//! (default 3 of each), `STRATA_BENCH_CLIENTS` (default 32);
//! `STRATA_BENCH_WRITE=1` writes the table into docs/benchmarks.md.
//! Run: `cargo bench -p example-ecommerce --bench auth`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use example_ecommerce::app::Shop;
use example_ecommerce::domain::payment::PaymentGateway;
use example_ecommerce::http::{command_router, serve, Auth, Ops};
use example_ecommerce::identity::DemoIdentity;
use example_ecommerce::metrics::Metrics;
use futures::future::BoxFuture;
use strata::testing::test_database;
use strata::{
    Authenticator, CancellationToken, CommandContext, PgEventStore, Principal, Unauthenticated,
};

include!("../../framework/benches/support/report.rs");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The baseline: takes any token as staff, checking nothing.
struct Trusting;

impl Authenticator for Trusting {
    fn authenticate<'a>(
        &'a self,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<Principal, Unauthenticated>> {
        Box::pin(async { Ok(Principal::user("sam", ["staff"])) })
    }
}

struct Round {
    requests: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Round {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// `clients` clients restock as fast as they get answers for `secs`.
async fn round(url: &str, bearer: &str, clients: usize, secs: u64) -> Round {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url, bearer) = (http.clone(), url.to_owned(), bearer.to_owned());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = http
                        .post(format!("{url}/inventory/SKU-{c}/restock"))
                        .header("authorization", &bearer)
                        .json(&serde_json::json!({ "quantity": 1 }))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 201);
                    lat.push(t.elapsed());
                    if !ok {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("client");
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Round {
        requests: all.len(),
        errors,
        secs,
        p50_ms: quantile(&all, 0.5),
        p99_ms: quantile(&all, 0.99),
    }
}

fn median_by(rounds: &[Round], key: impl Fn(&Round) -> f64) -> f64 {
    let mut v: Vec<f64> = rounds.iter().map(key).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn serve_with(shop: Shop<PgEventStore>, auth: Auth, shutdown: &CancellationToken) -> String {
    let ops = Ops {
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(|| Box::pin(async { vec![("database", true)] })),
        gauges: Arc::new(Vec::new),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(
        listener,
        command_router(shop, ops, auth),
        shutdown.clone(),
    ));
    url
}

#[tokio::main]
async fn main() {
    let secs = env_usize("STRATA_BENCH_SECS", 5) as u64;
    let rounds = env_usize("STRATA_BENCH_ROUNDS", 3);
    let clients = env_usize("STRATA_BENCH_CLIENTS", 32);
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let shop = Shop::new(
        store,
        PaymentGateway::always_accepting(),
        Arc::new(Metrics::default()),
    );
    for c in 0..clients {
        let sku = format!("SKU-{c}");
        shop.register_product(&sku, "Bench", 100, CommandContext::system("bench"))
            .await
            .expect("register");
    }
    let identity = DemoIdentity::generate();
    let bearer = format!("Bearer {}", identity.token("sam", &["staff"]));
    let shutdown = CancellationToken::new();
    let verified = serve_with(shop.clone(), identity.auth(), &shutdown).await;
    let unverified = serve_with(shop, Auth::new(Arc::new(Trusting)), &shutdown).await;

    // One verification alone: the full check (the cache of accepted
    // tokens off), and a token the verifier has accepted before.
    let issuer = identity.issuer();
    let token = identity.token("sam", &["staff"]);
    let per_call = |verifier: strata::auth::JwtVerifier| {
        let token = token.clone();
        async move {
            let n = 20_000;
            let t = Instant::now();
            for _ in 0..n {
                verifier.verify(&token).await.expect("valid");
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        }
    };
    let full_us = per_call(
        strata::auth::JwtVerifier::from_jwks(
            issuer.config().with_cache_capacity(0),
            &issuer.jwks(),
        )
        .expect("verifier"),
    )
    .await;
    let cached_us = per_call(issuer.verifier()).await;

    // Warm both up, then alternate.
    round(&verified, &bearer, clients, 1).await;
    round(&unverified, &bearer, clients, 1).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let w = round(&verified, &bearer, clients, secs).await;
        let o = round(&unverified, &bearer, clients, secs).await;
        eprintln!(
            "round {}: verified {:.0}/s p99 {:.1} ms · unverified {:.0}/s p99 {:.1} ms",
            i + 1,
            w.rate(),
            w.p99_ms,
            o.rate(),
            o.p99_ms
        );
        with.push(w);
        without.push(o);
    }
    shutdown.cancel();
    let errors: usize = with.iter().chain(&without).map(|r| r.errors).sum();
    let (rw, ro) = (
        median_by(&with, Round::rate),
        median_by(&without, Round::rate),
    );
    let table = format!(
        "| {clients} clients, restock over HTTP | commands/s | p50 | p99 |\n\
         |---|---:|---:|---:|\n\
         | tokens verified (EdDSA, iss, aud, exp) | {rw:.0} | {:.2} ms | {:.2} ms |\n\
         | baseline: tokens trusted unread | {ro:.0} | {:.2} ms | {:.2} ms |\n\
         | **ratio verified / baseline** | **{:.3}** | {:.2} | {:.2} |\n\n\
         One verification alone: {full_us:.1} µs for the full check (signature and claims), \
         {cached_us:.1} µs for a token accepted before (the verifier remembers accepted \
         tokens until they expire). Errors: {errors}. Median of {rounds} alternating rounds \
         each.\n",
        median_by(&with, |r| r.p50_ms),
        median_by(&with, |r| r.p99_ms),
        median_by(&without, |r| r.p50_ms),
        median_by(&without, |r| r.p99_ms),
        rw / ro,
        median_by(&with, |r| r.p50_ms) / median_by(&without, |r| r.p50_ms),
        median_by(&with, |r| r.p99_ms) / median_by(&without, |r| r.p99_ms),
    );
    println!("{table}");
    write_section("auth", &table, secs);
}

//! Fixtures the shop's tests share, in `example-ecommerce/tests/` and the
//! repository's top-level `tests/` (registered as this package's tests):
//! free ports, child processes killed when dropped, token issuers, the
//! shop's processes started as the real `ecommerce` binary, the shop run
//! in this process over any backends, and health waits.
//!
//! Each test file takes it with `mod support;` (or `#[path = ...]` from the
//! top-level folder) and uses what it needs; the rest is dead code there.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use example_ecommerce::app::Shop;
use example_ecommerce::domain::payment::PaymentGateway;
use example_ecommerce::http::Ops;
use example_ecommerce::identity::DemoIdentity;
use example_ecommerce::metrics::Metrics;
use example_ecommerce::runtime::{spawn_fulfilment, spawn_projectors, Statuses};
use strata::nats::StreamConfig;
use strata::testing::{nats_url, wait_until};
use strata::{
    AnyChangeFeed, CancellationToken, EventBus, EventStore, InMemoryEventStore, InMemoryViewStore,
    InProcessBus, ViewStore,
};
use tokio::task::JoinHandle;

/// The `ecommerce` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_ecommerce");

/// A TCP port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Spawns `command` as `name`.
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test binary's token issuer, in memory (one per test binary).
pub fn identity() -> &'static DemoIdentity {
    static ISSUER: OnceLock<DemoIdentity> = OnceLock::new();
    ISSUER.get_or_init(DemoIdentity::generate)
}

/// A development issuer kept in a fresh folder named after `what`, for
/// processes to trust (`STRATA_DEV_ISSUER`).
pub fn dev_issuer(what: &str) -> (DemoIdentity, PathBuf) {
    let dir = std::env::temp_dir().join(format!("strata-{what}-issuer-{}", uuid::Uuid::new_v4()));
    let identity = DemoIdentity::load_or_generate(&dir).expect("a development issuer");
    (identity, dir)
}

/// An HTTP client that acts as `subject`, staff and operator, unless a
/// request says otherwise, with tokens of `identity`.
pub fn staff_client(identity: &DemoIdentity, subject: &str) -> reqwest::Client {
    let bearer = format!("Bearer {}", identity.token(subject, &["staff", "operator"]));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Ops for a router under test: always healthy, no gauges.
pub fn ops() -> Ops {
    Ops {
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(|| Box::pin(async { vec![("database", true)] })),
        gauges: Arc::new(Vec::new),
    }
}

/// Waits (up to a minute) until `base`/health answers 200.
pub async fn wait_healthy(http: &reqwest::Client, base: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("{base}/health"),
        || async {
            http.get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
}

/// Runs `ecommerce admin <args>` on `db_url` and `stream` to completion
/// (errors only in its log).
pub fn admin(db_url: &str, stream: &StreamConfig, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("admin")
        .args([
            "--stream",
            &stream.stream,
            "--subject-prefix",
            &stream.prefix,
        ])
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("NATS_URL", nats_url())
        .env("RUST_LOG", "error")
        .output()
        .expect("run ecommerce admin")
}

/// How the shop's processes are started: one database, one stream, one
/// development issuer.
pub struct ShopEnv {
    /// `DATABASE_URL`.
    pub db_url: String,
    /// The stream and subject prefix.
    pub stream: StreamConfig,
    /// `STRATA_DEV_ISSUER`.
    pub issuer_dir: PathBuf,
    /// `STRATA_NO_MIGRATE=true` (a service role without DDL rights).
    pub no_migrate: bool,
}

impl ShopEnv {
    /// Starts `ecommerce <args>` as `name`, logging warnings to stderr.
    pub fn start(&self, name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args([
                "--stream",
                &self.stream.stream,
                "--subject-prefix",
                &self.stream.prefix,
            ])
            .env("DATABASE_URL", &self.db_url)
            .env("STRATA_DEV_ISSUER", &self.issuer_dir)
            .env("NATS_URL", nats_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if self.no_migrate {
            command.env("STRATA_NO_MIGRATE", "true");
        }
        Proc::spawn(name, &mut command)
    }
}

/// The shop as separate processes (relay, projector, process manager,
/// command API, query API), healthy.
pub struct ShopProcesses {
    /// How they were started (to restart one).
    pub env: ShopEnv,
    /// The relay.
    pub relay: Proc,
    /// The projector (every view).
    pub projector: Proc,
    /// The process manager and the APIs.
    pub others: Vec<Proc>,
    /// The command API's base URL.
    pub cmd: String,
    /// The query API's base URL.
    pub query: String,
}

impl ShopProcesses {
    /// Starts every process on free ports and waits until both APIs are
    /// healthy (asked through `http`).
    pub async fn start(env: ShopEnv, http: &reqwest::Client) -> ShopProcesses {
        let (cmd_port, query_port) = (free_port(), free_port());
        let relay = env.start("relay", &["relay"]);
        let projector = env.start("projector", &["projector"]);
        let others = vec![
            env.start("process-manager", &["process-manager"]),
            env.start(
                "command-api",
                &["command-api", "--listen", &format!("127.0.0.1:{cmd_port}")],
            ),
            env.start(
                "query-api",
                &["query-api", "--listen", &format!("127.0.0.1:{query_port}")],
            ),
        ];
        let shop = ShopProcesses {
            env,
            relay,
            projector,
            others,
            cmd: format!("http://127.0.0.1:{cmd_port}"),
            query: format!("http://127.0.0.1:{query_port}"),
        };
        wait_healthy(http, &shop.cmd).await;
        wait_healthy(http, &shop.query).await;
        shop
    }
}

/// The shop running in this process over the given backends: its command
/// side (charging through a gateway that accepts everything), projectors
/// and the fulfilment process manager.
pub struct InProcessShop<S: EventStore> {
    /// The command side.
    pub shop: Shop<S>,
    /// The running tasks' statuses.
    pub statuses: Statuses,
    /// Stops the tasks.
    pub shutdown: CancellationToken,
    /// The projectors and the process manager.
    pub tasks: Vec<JoinHandle<()>>,
}

impl<S: EventStore> InProcessShop<S> {
    /// Starts the projectors named in `only` (all when empty) and the
    /// process manager over `store`, `bus`, `views` and `feed`.
    pub fn start<B: EventBus, V: ViewStore>(
        store: &S,
        bus: &B,
        views: &V,
        feed: &AnyChangeFeed,
        only: &[String],
    ) -> InProcessShop<S> {
        let shop = Shop::new(
            store.clone(),
            PaymentGateway::always_accepting(),
            Arc::new(Metrics::default()),
        );
        let shutdown = CancellationToken::new();
        let statuses = Statuses::default();
        let mut tasks = spawn_projectors(only, bus, views, feed, &statuses, &shutdown);
        tasks.push(spawn_fulfilment(&shop, bus, views, &statuses, &shutdown));
        InProcessShop {
            shop,
            statuses,
            shutdown,
            tasks,
        }
    }
}

/// The shop running in this process entirely in memory (every projector,
/// the process manager): the shop, its view store and its change feed.
pub fn in_memory() -> (
    InProcessShop<InMemoryEventStore>,
    InMemoryViewStore,
    AnyChangeFeed,
) {
    let store = InMemoryEventStore::new();
    let bus = InProcessBus::new(store.clone());
    let views = InMemoryViewStore::new();
    let feed = AnyChangeFeed::in_process();
    let shop = InProcessShop::start(&store, &bus, &views, &feed, &[]);
    (shop, views, feed)
}

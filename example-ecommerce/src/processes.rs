//! The shop's processes, one per subcommand of `ecommerce`: the flags each
//! takes and what it runs. `main.rs` parses the command line and calls the
//! chosen one's `run`; the wiring of every process is here.
//!
//! Each long-running process stops when its `shutdown` token is cancelled
//! (the binary cancels it on Ctrl-C or SIGTERM).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use strata::{
    AnyChangeFeed, CancellationToken, InMemoryEventStore, InMemoryViewStore, InProcessBus,
    JetStreamBus, PgEventStore, PgViewStore, ReaderConfig, Relay, ViewReader,
};

use crate::app::Shop;
use crate::config::{self, nats, pg, redact, NatsArgs, ServerArgs};
use crate::demo::{self, DemoOptions};
use crate::http::{self, GaugeSource, Ops, QueryState};
use crate::identity::{AuthArgs, DemoIdentity};
use crate::metrics::Metrics;
use crate::runtime::{self, health, store_samples, Servers, Statuses};

/// The connections a server process makes: the store, NATS, the view
/// tables, and the settings they came from.
struct Connected {
    servers: Servers,
    store: PgEventStore,
    client: async_nats::Client,
    views: PgViewStore,
}

impl Connected {
    /// Connects to PostgreSQL (migrating unless told not to) and NATS.
    async fn to(args: &ServerArgs) -> anyhow::Result<Self> {
        let store = pg(args).await?;
        let client = nats(args).await?;
        Ok(Connected {
            servers: args.servers(),
            views: PgViewStore::new(store.pool().clone()),
            store,
            client,
        })
    }

    fn bus(&self) -> JetStreamBus {
        JetStreamBus::new(
            self.client.clone(),
            self.servers.stream.clone(),
            self.store.clone(),
        )
    }

    fn feed(&self) -> AnyChangeFeed {
        AnyChangeFeed::nats(self.client.clone(), self.servers.changes_prefix())
    }

    fn relay(&self) -> Relay<PgEventStore, PgViewStore> {
        Relay::new(
            self.store.clone(),
            self.views.clone(),
            self.client.clone(),
            self.servers.stream.clone(),
        )
    }

    /// Serves /health and /metrics (this process's statuses and the
    /// store's counters) on `listen`, if given.
    async fn serve_ops(
        &self,
        listen: Option<String>,
        statuses: &Statuses,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let ops = self.ops(Arc::new(Metrics::default()), statuses.gauges());
        serve_ops(listen, ops, shutdown).await
    }

    /// `/health` (database and NATS) and `/metrics` with `gauges` and the
    /// store's counters.
    fn ops(&self, metrics: Arc<Metrics>, gauges: GaugeSource) -> Ops {
        let store = self.store.clone();
        Ops {
            metrics,
            health: health(self.store.clone(), Some(self.client.clone())),
            gauges,
        }
        .with_gauges(move || store_samples(&store))
    }
}

/// Binds `listen`, saying which address failed.
pub async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))
}

/// Serves `ops` (/health and /metrics, open to anyone who can reach it) on
/// `listen`, if given, until `shutdown`.
pub async fn serve_ops(
    listen: Option<String>,
    ops: Ops,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    let listener = bind(&listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "ops endpoint listening");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = http::serve(listener, http::ops_router(ops), shutdown).await;
    });
    Ok(())
}

/// Serves an API's `router` on `listen` until `shutdown`, logging the
/// address as `what` listening.
async fn serve_api(
    listen: &str,
    what: &'static str,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "{what} listening");
    http::serve(listener, router, shutdown).await?;
    Ok(())
}

/// `ecommerce demo`: every process in one, a scenario, then serving.
#[derive(Args)]
pub struct DemoArgs {
    /// Use PostgreSQL and NATS (needs DATABASE_URL and NATS_URL, or the local defaults).
    #[arg(long)]
    pub servers: bool,
    /// PostgreSQL URL (implies --servers).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// NATS URL (implies --servers).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// JetStream stream name (with --servers).
    #[arg(long, env = "STRATA_STREAM", default_value = "STRATA")]
    pub stream: String,
    /// Subject prefix of events (with --servers).
    #[arg(long, env = "STRATA_SUBJECT_PREFIX", default_value = "strata")]
    pub subject_prefix: String,
    /// Command API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub command_listen: String,
    /// Query API address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub query_listen: String,
    /// Exit after the scenario instead of serving.
    #[arg(long)]
    pub exit: bool,
    /// NATS credentials and TLS (with --servers).
    #[command(flatten)]
    pub nats: NatsArgs,
}

impl DemoArgs {
    /// Runs the demo: on PostgreSQL and NATS when asked (`--servers` or a
    /// URL), in memory otherwise.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let options = DemoOptions {
            command_addr: self.command_listen,
            query_addr: self.query_listen,
            exit: self.exit,
        };
        let statuses = Statuses::default();
        if !(self.servers || self.database_url.is_some() || self.nats_url.is_some()) {
            println!("Strata demo, in memory (run with --servers, or set DATABASE_URL and NATS_URL, to use PostgreSQL and NATS)");
            let store = InMemoryEventStore::new();
            return demo::run(
                store.clone(),
                InProcessBus::new(store.clone()),
                InMemoryViewStore::new(),
                AnyChangeFeed::in_process(),
                statuses,
                health(store, None),
                options,
                shutdown,
            )
            .await;
        }
        let args = ServerArgs {
            database_url: self
                .database_url
                .unwrap_or_else(|| config::DEFAULT_DATABASE_URL.into()),
            nats_url: self
                .nats_url
                .unwrap_or_else(|| config::DEFAULT_NATS_URL.into()),
            stream: self.stream,
            subject_prefix: self.subject_prefix,
            no_migrate: false,
            nats: self.nats,
        };
        println!(
            "Strata demo on PostgreSQL ({}) and NATS JetStream ({})",
            redact(&args.database_url),
            redact(&args.nats_url)
        );
        let c = Connected::to(&args).await?;
        let relay = c.relay();
        statuses.set_relay(relay.status());
        let relay_task = tokio::spawn(relay.run(shutdown.clone()));
        let result = demo::run(
            c.store.clone(),
            c.bus(),
            c.views.clone(),
            c.feed(),
            statuses,
            health(c.store, Some(c.client)),
            options,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        let _ = relay_task.await;
        result
    }
}

/// `ecommerce migrate`: applies the database schema.
pub async fn migrate(args: &ServerArgs) -> anyhow::Result<()> {
    pg(args).await?;
    println!("schema is up to date");
    Ok(())
}

/// `ecommerce command-api`.
#[derive(Args)]
pub struct CommandApiArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// How tokens are checked.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Serve /health and /metrics here, to anyone who can reach it
    /// (on the API they need the operator role).
    #[arg(long)]
    pub ops_listen: Option<String>,
}

impl CommandApiArgs {
    /// Serves the command API until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let auth = self.auth.auth().await?;
        let c = Connected::to(&self.servers).await?;
        let metrics = Arc::new(Metrics::default());
        let shop = Shop::new(c.store.clone(), demo::demo_gateway(), Arc::clone(&metrics));
        let ops = c.ops(metrics, Arc::new(Vec::new));
        serve_ops(self.ops_listen, ops.clone(), &shutdown).await?;
        let router = http::command_router(shop, ops, auth);
        serve_api(&self.listen, "command API", router, shutdown).await
    }
}

/// `ecommerce query-api`.
#[derive(Args)]
pub struct QueryApiArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// How tokens are checked.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Serve /health and /metrics here, to anyone who can reach it
    /// (on the API they need the operator role).
    #[arg(long)]
    pub ops_listen: Option<String>,
}

impl QueryApiArgs {
    /// Serves the query API until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let auth = self.auth.auth().await?;
        let c = Connected::to(&self.servers).await?;
        let reader = ViewReader::new(c.views.clone(), ReaderConfig::default());
        let feed = c.feed();
        reader.listen(&feed, shutdown.clone()).await?;
        let ops = Ops {
            metrics: Arc::new(Metrics::default()),
            health: health(c.store, Some(c.client)),
            gauges: {
                let reader = reader.clone();
                Arc::new(move || runtime::cache_samples(&reader))
            },
        };
        serve_ops(self.ops_listen, ops.clone(), &shutdown).await?;
        let state = QueryState { reader, feed };
        let router = http::query_router(state, ops, auth, shutdown.clone());
        serve_api(&self.listen, "query API", router, shutdown).await
    }
}

/// `ecommerce auth`: the development issuer's commands.
#[derive(Subcommand)]
pub enum AuthCommand {
    /// Create a key pair and its public key set (`jwks.json`) in a folder
    /// (kept if it exists). Point the services at it with --dev-issuer.
    Init {
        /// The folder.
        #[arg(long, default_value = ".strata-dev")]
        dir: PathBuf,
    },
    /// Print a bearer token signed by the development issuer.
    Token {
        /// The folder made by `auth init`.
        #[arg(long, default_value = ".strata-dev")]
        dir: PathBuf,
        /// The subject (for a customer: the customer id).
        #[arg(long)]
        sub: String,
        /// A role (repeatable): customer, staff, operator.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

impl AuthCommand {
    /// Makes the issuer's keys, or prints a token.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            AuthCommand::Init { dir } => {
                let identity = DemoIdentity::load_or_generate(&dir)?;
                println!(
                    "development issuer {} (key {}) in {}; its key set: {}",
                    identity.issuer().issuer(),
                    identity.issuer().kid(),
                    dir.display(),
                    dir.join("jwks.json").display()
                );
            }
            AuthCommand::Token {
                dir,
                sub,
                roles,
                ttl,
            } => {
                let issuer = strata::auth::DevIssuer::load(&dir).with_context(|| {
                    format!(
                        "no development issuer in {}: run `ecommerce auth init --dir {}` first",
                        dir.display(),
                        dir.display()
                    )
                })?;
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                println!("{}", issuer.token(&sub, &roles, Duration::from_secs(ttl)));
            }
        }
        Ok(())
    }
}

/// `ecommerce relay`.
#[derive(Args)]
pub struct RelayArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// Serve /health and /metrics here.
    #[arg(long)]
    pub ops_listen: Option<String>,
}

impl RelayArgs {
    /// Relays (or stands by) until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let c = Connected::to(&self.servers).await?;
        tracing::info!(stream = %c.servers.stream.stream, "relay starting (stands by while another is active)");
        let relay = c.relay();
        let statuses = Statuses::default();
        statuses.set_relay(relay.status());
        c.serve_ops(self.ops_listen, &statuses, &shutdown).await?;
        relay.run(shutdown).await;
        Ok(())
    }
}

/// `ecommerce projector`.
#[derive(Args)]
pub struct ProjectorArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// A view to run (repeatable): catalog, order_details, customer_orders,
    /// customer_order_history, low_stock, sales_dashboard.
    #[arg(long = "view")]
    pub views: Vec<String>,
    /// Serve /health and /metrics here.
    #[arg(long)]
    pub ops_listen: Option<String>,
}

impl ProjectorArgs {
    /// Runs the chosen projectors until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let only = self.views;
        for v in &only {
            if !runtime::VIEWS.contains(&v.as_str()) {
                anyhow::bail!(
                    "unknown view {v:?}; known views: {}",
                    runtime::VIEWS.join(", ")
                );
            }
        }
        let c = Connected::to(&self.servers).await?;
        let statuses = Statuses::default();
        let tasks =
            runtime::spawn_projectors(&only, &c.bus(), &c.views, &c.feed(), &statuses, &shutdown);
        c.serve_ops(self.ops_listen, &statuses, &shutdown).await?;
        tracing::info!(views = statuses.subscribers().len(), "projectors running");
        shutdown.cancelled().await;
        runtime::join_all(tasks, http::SHUTDOWN_GRACE).await;
        Ok(())
    }
}

/// `ecommerce process-manager`.
#[derive(Args)]
pub struct ProcessManagerArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// Serve /health and /metrics here.
    #[arg(long)]
    pub ops_listen: Option<String>,
}

impl ProcessManagerArgs {
    /// Runs the fulfilment process manager until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let c = Connected::to(&self.servers).await?;
        let statuses = Statuses::default();
        c.serve_ops(self.ops_listen, &statuses, &shutdown).await?;
        let bus = c.bus();
        let shop = Shop::new(c.store, demo::demo_gateway(), Arc::new(Metrics::default()));
        let task = runtime::spawn_fulfilment(&shop, &bus, &c.views, &statuses, &shutdown);
        tracing::info!("fulfilment process manager running");
        shutdown.cancelled().await;
        runtime::join_all(vec![task], http::SHUTDOWN_GRACE).await;
        Ok(())
    }
}

/// `ecommerce admin`.
#[derive(Args)]
pub struct ShopAdminArgs {
    /// Connection settings.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// The admin command.
    #[command(flatten)]
    pub admin: strata::admin::AdminArgs,
}

impl ShopAdminArgs {
    /// Runs the admin command; returns the process's exit code. NATS is
    /// optional here: without it, what needs it says so.
    pub async fn run(self) -> anyhow::Result<i32> {
        let s = self.servers.servers();
        let store = pg(&self.servers).await?;
        let views = PgViewStore::new(store.pool().clone());
        let mut ctx = strata::admin::AdminContext::new(store, views)
            .projection(|| crate::views::CatalogView)
            .projection(|| crate::views::OrderDetailsView)
            .projection(|| crate::views::CustomerOrdersView)
            .projection(|| crate::views::CustomerOrderHistoryView)
            .projection(|| crate::views::LowStockView)
            .projection(|| crate::views::SalesDashboardView)
            .process_manager("fulfilment");
        if let Ok(Ok(client)) = tokio::time::timeout(
            Duration::from_secs(3),
            self.servers
                .nats
                .connect_options()
                .await?
                .connect(&s.nats_url),
        )
        .await
        {
            ctx = ctx
                .change_feed(AnyChangeFeed::nats(client.clone(), s.changes_prefix()))
                .nats(client, s.stream.clone());
        }
        Ok(strata::admin::run(self.admin, ctx).await)
    }
}

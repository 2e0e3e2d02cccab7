//! `ecommerce`: the example shop built on Strata. One binary, a subcommand
//! per process, and `demo`, which runs them all in one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use example_ecommerce::app::Shop;
use example_ecommerce::config::{self, nats, pg, redact, NatsArgs, ServerArgs};
use example_ecommerce::demo::{self, DemoOptions};
use example_ecommerce::http::{self, HealthCheck, Ops, QueryState};
use example_ecommerce::identity::{AuthArgs, DemoIdentity};
use example_ecommerce::metrics::Metrics;
use example_ecommerce::runtime::{self, Statuses};
use strata::{
    AnyChangeFeed, CancellationToken, EventStore, InMemoryEventStore, InMemoryViewStore,
    InProcessBus, JetStreamBus, PgEventStore, PgViewStore, ReaderConfig, Relay, ViewReader,
};

#[derive(Parser)]
#[command(name = "ecommerce", about = "The Strata example shop", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)]
enum Command {
    /// Run every process of the shop in this one, play a shopping scenario
    /// through the HTTP API, print a summary, then keep serving. In memory
    /// unless DATABASE_URL and NATS_URL (or --servers) say otherwise.
    Demo {
        /// Use PostgreSQL and NATS (needs DATABASE_URL and NATS_URL, or the local defaults).
        #[arg(long)]
        servers: bool,
        /// PostgreSQL URL (implies --servers).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// NATS URL (implies --servers).
        #[arg(long, env = "NATS_URL", hide_env_values = true)]
        nats_url: Option<String>,
        /// JetStream stream name (with --servers).
        #[arg(long, env = "STRATA_STREAM", default_value = "STRATA")]
        stream: String,
        /// Subject prefix of events (with --servers).
        #[arg(long, env = "STRATA_SUBJECT_PREFIX", default_value = "strata")]
        subject_prefix: String,
        /// Command API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        command_listen: String,
        /// Query API address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        query_listen: String,
        /// Exit after the scenario instead of serving.
        #[arg(long)]
        exit: bool,
        /// NATS credentials and TLS (with --servers).
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Apply the database schema.
    Migrate(ServerArgs),
    /// Serve the command API (bearer tokens required; see --jwks-url).
    CommandApi {
        #[command(flatten)]
        servers: ServerArgs,
        #[command(flatten)]
        auth: AuthArgs,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Serve /health and /metrics here, to anyone who can reach it
        /// (on the API they need the operator role).
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// Serve the query API (the catalog is public; the rest needs tokens).
    QueryApi {
        #[command(flatten)]
        servers: ServerArgs,
        #[command(flatten)]
        auth: AuthArgs,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Serve /health and /metrics here, to anyone who can reach it
        /// (on the API they need the operator role).
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// The development token issuer: make its keys, print tokens.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Carry events from the store into JetStream (one active, others stand by).
    Relay {
        #[command(flatten)]
        servers: ServerArgs,
        /// Serve /health and /metrics here.
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// Run projectors (all views, or those named with --view).
    Projector {
        #[command(flatten)]
        servers: ServerArgs,
        /// A view to run (repeatable): catalog, order_details, customer_orders, low_stock, sales_dashboard.
        #[arg(long = "view")]
        views: Vec<String>,
        /// Serve /health and /metrics here.
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// Run the fulfilment process manager.
    ProcessManager {
        #[command(flatten)]
        servers: ServerArgs,
        /// Serve /health and /metrics here.
        #[arg(long)]
        ops_listen: Option<String>,
    },
    /// Operate the store, the views and the relay: events, export/import,
    /// replay, projections (status, rebuild), dead letters, verify.
    Admin {
        #[command(flatten)]
        servers: ServerArgs,
        #[command(flatten)]
        admin: strata::admin::AdminArgs,
    },
}

/// The development issuer's commands.
#[derive(Subcommand)]
enum AuthCommand {
    /// Create a key pair and its public key set (`jwks.json`) in a folder
    /// (kept if it exists). Point the services at it with --dev-issuer.
    Init {
        /// The folder.
        #[arg(long, default_value = ".strata-dev")]
        dir: std::path::PathBuf,
    },
    /// Print a bearer token signed by the development issuer.
    Token {
        /// The folder made by `auth init`.
        #[arg(long, default_value = ".strata-dev")]
        dir: std::path::PathBuf,
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

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn health<S: EventStore>(store: S, client: Option<async_nats::Client>) -> HealthCheck {
    Arc::new(move || {
        let (store, client) = (store.clone(), client.clone());
        Box::pin(async move {
            let mut checks = vec![(
                "database",
                tokio::time::timeout(Duration::from_secs(2), store.head())
                    .await
                    .is_ok_and(|r| r.is_ok()),
            )];
            if let Some(c) = client {
                checks.push((
                    "nats",
                    c.connection_state() == async_nats::connection::State::Connected,
                ));
            }
            checks
        })
    })
}

/// Serves `ops` (/health and /metrics, open) on `listen`, if given.
async fn serve_ops_router(
    listen: Option<String>,
    ops: Ops,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "ops endpoint listening");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let _ = http::serve(listener, http::ops_router(ops), shutdown).await;
    });
    Ok(())
}

/// Serves /health and /metrics (with this process's statuses) if asked.
async fn serve_ops(
    listen: Option<String>,
    store: &PgEventStore,
    client: async_nats::Client,
    statuses: &Statuses,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    let gauges = {
        let (statuses, store) = (statuses.clone(), store.clone());
        Arc::new(move || {
            let mut s = statuses.samples();
            s.extend(store_samples(&store));
            s
        })
    };
    let ops = Ops {
        metrics: Arc::new(Metrics::default()),
        health: health(store.clone(), Some(client)),
        gauges,
    };
    serve_ops_router(Some(listen), ops, shutdown).await
}

/// The store's write-path counters as gauges.
fn store_samples(store: &PgEventStore) -> Vec<example_ecommerce::metrics::Sample> {
    let st = store.stats();
    vec![
        ("strata_store_appends_total", vec![], st.appends as f64),
        (
            "strata_store_group_commits_total",
            vec![],
            st.batches as f64,
        ),
        ("strata_store_conflicts_total", vec![], st.conflicts as f64),
        (
            "strata_store_append_fallbacks_total",
            vec![],
            st.fallbacks as f64,
        ),
        (
            "strata_store_slow_lock_waits",
            vec![],
            st.slow_lock_waits as f64,
        ),
        (
            "strata_store_max_lock_wait_seconds",
            vec![],
            st.max_lock_wait_us as f64 / 1e6,
        ),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signal(shutdown.clone());
    match Cli::parse().command {
        Command::Demo {
            servers,
            database_url,
            nats_url,
            stream,
            subject_prefix,
            command_listen,
            query_listen,
            exit,
            nats: nats_args,
        } => {
            let options = DemoOptions {
                command_addr: command_listen,
                query_addr: query_listen,
                exit,
            };
            let statuses = Statuses::default();
            if servers || database_url.is_some() || nats_url.is_some() {
                let args = ServerArgs {
                    database_url: database_url
                        .unwrap_or_else(|| config::DEFAULT_DATABASE_URL.into()),
                    nats_url: nats_url.unwrap_or_else(|| config::DEFAULT_NATS_URL.into()),
                    stream,
                    subject_prefix,
                    no_migrate: false,
                    nats: nats_args,
                };
                let s = args.servers();
                println!(
                    "Strata demo on PostgreSQL ({}) and NATS JetStream ({})",
                    redact(&s.database_url),
                    redact(&s.nats_url)
                );
                let store = pg(&args).await?;
                let client = nats(&args).await?;
                let views = PgViewStore::new(store.pool().clone());
                let relay = Relay::new(
                    store.clone(),
                    views.clone(),
                    client.clone(),
                    s.stream.clone(),
                );
                statuses.set_relay(relay.status());
                let relay_task = tokio::spawn(relay.run(shutdown.clone()));
                let result = demo::run(
                    store.clone(),
                    JetStreamBus::new(client.clone(), s.stream.clone(), store.clone()),
                    views,
                    AnyChangeFeed::nats(client.clone(), s.changes_prefix()),
                    statuses,
                    health(store, Some(client)),
                    options,
                    shutdown.clone(),
                )
                .await;
                shutdown.cancel();
                let _ = relay_task.await;
                result
            } else {
                println!("Strata demo, in memory (run with --servers, or set DATABASE_URL and NATS_URL, to use PostgreSQL and NATS)");
                let store = InMemoryEventStore::new();
                demo::run(
                    store.clone(),
                    InProcessBus::new(store.clone()),
                    InMemoryViewStore::new(),
                    AnyChangeFeed::in_process(),
                    statuses,
                    health(store, None),
                    options,
                    shutdown,
                )
                .await
            }
        }
        Command::Migrate(args) => {
            pg(&args).await?;
            println!("schema is up to date");
            Ok(())
        }
        Command::Auth(AuthCommand::Init { dir }) => {
            let identity = DemoIdentity::load_or_generate(&dir)?;
            println!(
                "development issuer {} (key {}) in {}; its key set: {}",
                identity.issuer().issuer(),
                identity.issuer().kid(),
                dir.display(),
                dir.join("jwks.json").display()
            );
            Ok(())
        }
        Command::Auth(AuthCommand::Token {
            dir,
            sub,
            roles,
            ttl,
        }) => {
            let issuer = strata::auth::DevIssuer::load(&dir).with_context(|| {
                format!(
                    "no development issuer in {}: run `ecommerce auth init --dir {}` first",
                    dir.display(),
                    dir.display()
                )
            })?;
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            println!("{}", issuer.token(&sub, &roles, Duration::from_secs(ttl)));
            Ok(())
        }
        Command::CommandApi {
            servers,
            auth,
            listen,
            ops_listen,
        } => {
            let auth = auth.auth().await?;
            let store = pg(&servers).await?;
            let client = nats(&servers).await?;
            let metrics = Arc::new(Metrics::default());
            let shop = Shop::new(store.clone(), demo::demo_gateway(), Arc::clone(&metrics));
            let gauges = {
                let store = store.clone();
                Arc::new(move || store_samples(&store))
            };
            let ops = Ops {
                metrics,
                health: health(store, Some(client)),
                gauges,
            };
            serve_ops_router(ops_listen, ops.clone(), &shutdown).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "command API listening");
            http::serve(listener, http::command_router(shop, ops, auth), shutdown).await?;
            Ok(())
        }
        Command::QueryApi {
            servers,
            auth,
            listen,
            ops_listen,
        } => {
            let auth = auth.auth().await?;
            let s = servers.servers();
            let store = pg(&servers).await?;
            let client = nats(&servers).await?;
            let reader = ViewReader::new(
                PgViewStore::new(store.pool().clone()),
                ReaderConfig::default(),
            );
            let feed = AnyChangeFeed::nats(client.clone(), s.changes_prefix());
            reader.listen(&feed, shutdown.clone()).await?;
            let gauges = {
                let reader = reader.clone();
                Arc::new(move || runtime::cache_samples(&reader))
            };
            let ops = Ops {
                metrics: Arc::new(Metrics::default()),
                health: health(store, Some(client)),
                gauges,
            };
            serve_ops_router(ops_listen, ops.clone(), &shutdown).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "query API listening");
            http::serve(
                listener,
                http::query_router(QueryState { reader, feed }, ops, auth, shutdown.clone()),
                shutdown,
            )
            .await?;
            Ok(())
        }
        Command::Relay {
            servers,
            ops_listen,
        } => {
            let s = servers.servers();
            let store = pg(&servers).await?;
            let client = nats(&servers).await?;
            let views = PgViewStore::new(store.pool().clone());
            tracing::info!(stream = %s.stream.stream, "relay starting (stands by while another is active)");
            let relay = Relay::new(store.clone(), views, client.clone(), s.stream);
            let statuses = Statuses::default();
            statuses.set_relay(relay.status());
            serve_ops(ops_listen, &store, client, &statuses, &shutdown).await?;
            relay.run(shutdown).await;
            Ok(())
        }
        Command::Projector {
            servers,
            views: only,
            ops_listen,
        } => {
            for v in &only {
                if !runtime::VIEWS.contains(&v.as_str()) {
                    anyhow::bail!(
                        "unknown view {v:?}; known views: {}",
                        runtime::VIEWS.join(", ")
                    );
                }
            }
            let s = servers.servers();
            let store = pg(&servers).await?;
            let client = nats(&servers).await?;
            let views = PgViewStore::new(store.pool().clone());
            let bus = JetStreamBus::new(client.clone(), s.stream.clone(), store.clone());
            let feed = AnyChangeFeed::nats(client.clone(), s.changes_prefix());
            let statuses = Statuses::default();
            let tasks = runtime::spawn_projectors(&only, &bus, &views, &feed, &statuses, &shutdown);
            serve_ops(ops_listen, &store, client, &statuses, &shutdown).await?;
            tracing::info!(count = tasks.len(), "projectors running");
            shutdown.cancelled().await;
            runtime::join_all(tasks, http::SHUTDOWN_GRACE).await;
            Ok(())
        }
        Command::Admin { servers, admin } => {
            let s = servers.servers();
            let store = pg(&servers).await?;
            let views = PgViewStore::new(store.pool().clone());
            let mut ctx = strata::admin::AdminContext::new(store, views)
                .projection(|| example_ecommerce::views::CatalogView)
                .projection(|| example_ecommerce::views::OrderDetailsView)
                .projection(|| example_ecommerce::views::CustomerOrdersView)
                .projection(|| example_ecommerce::views::LowStockView)
                .projection(|| example_ecommerce::views::SalesDashboardView)
                .process_manager("fulfilment");
            if let Ok(Ok(client)) = tokio::time::timeout(
                Duration::from_secs(3),
                servers.nats.connect_options().await?.connect(&s.nats_url),
            )
            .await
            {
                ctx = ctx
                    .change_feed(AnyChangeFeed::nats(client.clone(), s.changes_prefix()))
                    .nats(client, s.stream.clone());
            }
            std::process::exit(strata::admin::run(admin, ctx).await);
        }
        Command::ProcessManager {
            servers,
            ops_listen,
        } => {
            let s = servers.servers();
            let store = pg(&servers).await?;
            let client = nats(&servers).await?;
            let views = PgViewStore::new(store.pool().clone());
            let bus = JetStreamBus::new(client.clone(), s.stream.clone(), store.clone());
            let statuses = Statuses::default();
            serve_ops(ops_listen, &store, client, &statuses, &shutdown).await?;
            let shop = Shop::new(store, demo::demo_gateway(), Arc::new(Metrics::default()));
            let task = runtime::spawn_fulfilment(&shop, &bus, &views, &statuses, &shutdown);
            tracing::info!("fulfilment process manager running");
            shutdown.cancelled().await;
            runtime::join_all(vec![task], http::SHUTDOWN_GRACE).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `demo --servers` takes the stream name and subject prefix from
    /// `STRATA_STREAM` / `STRATA_SUBJECT_PREFIX` (or the flags), like every
    /// other subcommand.
    #[test]
    fn demo_takes_the_stream_from_the_environment() {
        std::env::set_var("STRATA_STREAM", "SHOP_DEMO_ENV");
        std::env::set_var("STRATA_SUBJECT_PREFIX", "shopdemo");
        let parsed = Cli::try_parse_from(["ecommerce", "demo", "--servers"]);
        std::env::remove_var("STRATA_STREAM");
        std::env::remove_var("STRATA_SUBJECT_PREFIX");
        let Command::Demo {
            stream,
            subject_prefix,
            ..
        } = parsed.expect("demo parses").command
        else {
            panic!("not the demo subcommand");
        };
        assert_eq!(stream, "SHOP_DEMO_ENV");
        assert_eq!(subject_prefix, "shopdemo");
        let Command::Demo { stream, .. } =
            Cli::try_parse_from(["ecommerce", "demo", "--servers", "--stream", "OTHER"])
                .expect("demo parses")
                .command
        else {
            panic!("not the demo subcommand");
        };
        assert_eq!(stream, "OTHER");
    }
}

//! `ecommerce`: the example shop built on Strata. One binary, a subcommand
//! per process, and `demo`, which runs them all in one process. The
//! processes themselves are in the library ([`example_ecommerce::processes`]).

use clap::{Parser, Subcommand};
use example_ecommerce::config::ServerArgs;
use example_ecommerce::processes::{
    self, AuthCommand, CommandApiArgs, DemoArgs, ProcessManagerArgs, ProjectorArgs, QueryApiArgs,
    RelayArgs, ShopAdminArgs,
};
use example_ecommerce::runtime;
use strata::CancellationToken;

/// mimalloc instead of the system allocator: the processes allocate per
/// request and per event, and glibc's malloc took a quarter of their CPU
/// under load (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Demo(DemoArgs),
    /// Apply the database schema.
    Migrate(ServerArgs),
    /// Serve the command API (bearer tokens required; see --jwks-url).
    CommandApi(CommandApiArgs),
    /// Serve the query API (the catalog is public; the rest needs tokens).
    QueryApi(QueryApiArgs),
    /// The development token issuer: make its keys, print tokens.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Carry events from the store into JetStream (one active, others stand by).
    Relay(RelayArgs),
    /// Run projectors (all views, or those named with --view).
    Projector(ProjectorArgs),
    /// Run the fulfilment process manager.
    ProcessManager(ProcessManagerArgs),
    /// Operate the store, the views and the relay: events, export/import,
    /// replay, projections (status, rebuild), dead letters, verify.
    Admin(ShopAdminArgs),
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

fn main() -> anyhow::Result<()> {
    init_tracing();
    let command = Cli::parse().command;
    runtime_for(&command)?.block_on(run(command))
}

/// The runtime a process gets. The relay, the projectors and the process
/// manager each run one loop of awaited round trips: one thread serves them
/// with far fewer wake-ups than a pool (each costs the most on small
/// machines, where these processes share the cores with Postgres and NATS;
/// see docs/benchmarks.md). The APIs, the demo and the admin commands get
/// tokio's multi-threaded runtime (`TOKIO_WORKER_THREADS` sets its size).
fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match command {
        Command::Relay(_) | Command::Projector(_) | Command::ProcessManager(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signal(shutdown.clone());
    match command {
        Command::Demo(args) => args.run(shutdown).await,
        Command::Migrate(args) => processes::migrate(&args).await,
        Command::CommandApi(args) => args.run(shutdown).await,
        Command::QueryApi(args) => args.run(shutdown).await,
        Command::Auth(command) => command.run(),
        Command::Relay(args) => args.run(shutdown).await,
        Command::Projector(args) => args.run(shutdown).await,
        Command::ProcessManager(args) => args.run(shutdown).await,
        Command::Admin(args) => std::process::exit(args.run().await?),
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
        let Command::Demo(demo) = parsed.expect("demo parses").command else {
            panic!("not the demo subcommand");
        };
        assert_eq!(demo.stream, "SHOP_DEMO_ENV");
        assert_eq!(demo.subject_prefix, "shopdemo");
        let Command::Demo(demo) =
            Cli::try_parse_from(["ecommerce", "demo", "--servers", "--stream", "OTHER"])
                .expect("demo parses")
                .command
        else {
            panic!("not the demo subcommand");
        };
        assert_eq!(demo.stream, "OTHER");
    }
}

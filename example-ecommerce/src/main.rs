//! `ecommerce`: the example shop built on Strata.
//!
//! For now the `demo` subcommand appends a few events and prints the store;
//! the shop's domain, services and scenario arrive with their issue.

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use strata::{
    AppendRequest, EventFilter, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent,
    PgEventStore, Position, StreamId,
};

#[derive(Parser)]
#[command(name = "ecommerce", about = "The Strata example shop", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append a few events and print the store (in memory unless DATABASE_URL is set).
    Demo {
        /// Postgres URL; in memory when absent.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Demo { database_url } => match database_url {
            Some(url) => {
                let store = PgEventStore::connect(&url)
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                println!("Event store: PostgreSQL");
                demo(store).await
            }
            None => {
                println!("Event store: in memory (set DATABASE_URL to use PostgreSQL)");
                demo(InMemoryEventStore::new()).await
            }
        },
    }
}

async fn demo<S: EventStore>(store: S) -> anyhow::Result<()> {
    let order = StreamId::new(format!("order-{}", uuid_suffix()))?;
    let placed = store
        .append(AppendRequest::new(
            order.clone(),
            "order",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "OrderPlaced",
                json!({ "customer": "ada", "lines": [{ "sku": "MUG-1", "quantity": 2 }] }),
            )],
        ))
        .await?;
    store
        .append(AppendRequest::new(
            order.clone(),
            "order",
            ExpectedVersion::Exact(placed.stream_version),
            vec![
                NewEvent::new("OrderConfirmed", json!({})),
                NewEvent::new("OrderPaid", json!({ "amount_cents": 2400 })),
            ],
        ))
        .await?;
    let head = store.head().await?;
    println!("Head position: {head}\n");
    println!(
        "{:>8}  {:<44} {:>4}  {:<16} payload",
        "position", "stream", "ver", "type"
    );
    let from = Position(head.0.saturating_sub(20));
    for e in store.read_all(from, 20, &EventFilter::all()).await? {
        println!(
            "{:>8}  {:<44} {:>4}  {:<16} {}",
            e.position, e.stream_id, e.stream_version, e.event_type, e.payload
        );
    }
    Ok(())
}

fn uuid_suffix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}", t.as_nanos())
}

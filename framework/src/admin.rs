//! Admin command line building blocks (feature `admin`).
//!
//! An application embeds [`AdminCommand`] in its own clap CLI, registers its
//! projections, and calls [`run`]:
//!
//! ```ignore
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     /// Operate the store, the views and the relay.
//!     Admin(strata::admin::AdminArgs),
//! }
//! // ...
//! let ctx = AdminContext::new(store, views).projection(MyView).nats(client, stream);
//! std::process::exit(strata::admin::run(args, ctx).await);
//! ```
//!
//! Output is a human table by default and JSON with `--json`; long work
//! shows a progress bar (rate, ETA) when stderr is a terminal and can be
//! interrupted with Ctrl-C (a rebuild resumes, an import is idempotent).
//!
//! Exit codes: 0 success, 1 a check failed (verify) or nothing matched,
//! 2 usage errors (clap), 3 backend errors.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::envelope::{EventEnvelope, NewEvent, Position, StreamId};
use crate::propagation::changes::{AnyChangeFeed, ChangeFeed};
use crate::propagation::nats::StreamConfig;
use crate::store::{AppendRequest, EventFilter, EventStore, ExpectedVersion};
use crate::views::projection::{Projection, ProjectionTest};
use crate::views::rebuild::{RebuildError, RebuildOptions, RebuildProgress, RebuildReport};
use crate::views::store::{Checkpoints, Versions, ViewId};
use crate::write::aggregate::BoxFuture;
use crate::{PgEventStore, PgViewStore};

/// `admin` arguments: a global `--json` and a command.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Read events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Write every event (from a position) to a JSON-lines file.
    Export {
        /// The file to write (`-` for standard output).
        file: PathBuf,
        /// Only events after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Append the events of a JSON-lines export, in order. Idempotent: events
    /// already present are skipped.
    Import {
        /// The file to read.
        file: PathBuf,
    },
    /// Replay events.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Projections and process managers.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Events that subscribers could not apply.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),
    /// Check the store, JetStream and the views.
    Verify {
        /// Also check that JetStream holds exactly the store's events, in order.
        #[arg(long)]
        jetstream: bool,
        /// Projections to compare with a fresh fold of the store (all registered when empty).
        #[arg(long = "projection")]
        projections: Vec<String>,
        /// Skip the projection checks.
        #[arg(long)]
        no_projections: bool,
    },
}

/// `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The latest events, then (with --follow) new ones as they come.
    Tail {
        /// How many of the latest events to show first.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u64,
        /// Keep waiting for new events.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Which events.
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Every event of one stream.
    Show {
        /// The stream id.
        stream: String,
    },
    /// Events in a position or time range.
    List {
        /// Only events after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only events up to this position.
        #[arg(long)]
        until: Option<u64>,
        /// Only events recorded at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only events recorded before this time (RFC 3339).
        #[arg(long)]
        before: Option<DateTime<Utc>>,
        /// At most this many events.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
        /// Which events.
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// Event filters.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only these stream types (repeatable).
    #[arg(long = "stream-type")]
    pub stream_types: Vec<String>,
    /// Only these event types (repeatable).
    #[arg(long = "event-type")]
    pub event_types: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> EventFilter {
        EventFilter {
            stream_types: self.stream_types.clone(),
            event_types: self.event_types.clone(),
        }
    }
}

/// `replay` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Make JetStream hold every event from the store (publishes what is
    /// missing; what is there already is never published twice).
    Jetstream,
    /// Replay the store into one projection: an online rebuild.
    Projection {
        /// The projection's name.
        name: String,
    },
}

/// `projections` subcommands.
#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Registered projections with their active versions.
    List,
    /// Every subscriber's checkpoint, lag, state and dead letters.
    Status,
    /// Rebuild a projection online into a new version, then switch to it.
    Rebuild {
        /// The projection's name.
        name: String,
    },
    /// Move a subscriber's checkpoint (e.g. a process manager, to replay
    /// from a position; views should be rebuilt instead).
    Reset {
        /// The subscriber (`<view>_v<version>` or a process manager's name).
        subscriber: String,
        /// The new checkpoint.
        #[arg(long)]
        to: u64,
    },
}

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters, newest first.
    List {
        /// Only this subscriber's.
        #[arg(long)]
        subscriber: Option<String>,
    },
    /// Try a parked event again (the subscriber resumes before it).
    Retry {
        /// The dead letter's id.
        id: i64,
    },
    /// Skip a parked event (the subscriber resumes after it).
    Skip {
        /// The dead letter's id.
        id: i64,
    },
}

/// A projection the admin CLI knows, with its type erased.
pub trait RegisteredProjection: Send + Sync {
    /// The view's name.
    fn name(&self) -> &str;
    /// The version its code declares.
    fn version(&self) -> u32;
    /// Rebuilds it online.
    fn rebuild(
        &self,
        store: PgEventStore,
        views: PgViewStore,
        feed: Option<AnyChangeFeed>,
        progress: Box<dyn FnMut(RebuildProgress) + Send>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<RebuildReport, RebuildError>>;
    /// The documents a fresh fold of `events` gives.
    fn fold(&self, events: &[EventEnvelope]) -> BTreeMap<String, Value>;
}

struct Registered<F>(F);

impl<P, F> RegisteredProjection for Registered<F>
where
    P: Projection,
    F: Fn() -> P + Send + Sync,
{
    fn name(&self) -> &str {
        // Projections name themselves; leak a copy once per registration.
        Box::leak((self.0)().name().to_owned().into_boxed_str())
    }

    fn version(&self) -> u32 {
        (self.0)().version()
    }

    fn rebuild(
        &self,
        store: PgEventStore,
        views: PgViewStore,
        feed: Option<AnyChangeFeed>,
        progress: Box<dyn FnMut(RebuildProgress) + Send>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<RebuildReport, RebuildError>> {
        let projection = (self.0)();
        Box::pin(async move {
            crate::views::rebuild::rebuild(
                projection,
                store,
                views,
                feed,
                RebuildOptions::default(),
                progress,
                shutdown,
            )
            .await
        })
    }

    fn fold(&self, events: &[EventEnvelope]) -> BTreeMap<String, Value> {
        ProjectionTest::new((self.0)())
            .given(events.iter().cloned())
            .json()
            .clone()
    }
}

/// What the admin commands operate on.
pub struct AdminContext {
    store: PgEventStore,
    views: PgViewStore,
    projections: Vec<Arc<dyn RegisteredProjection>>,
    names: Vec<String>,
    nats: Option<(async_nats::Client, StreamConfig)>,
    feed: Option<AnyChangeFeed>,
    subscribers: Vec<String>,
}

impl AdminContext {
    /// A context over the application's store and views.
    pub fn new(store: PgEventStore, views: PgViewStore) -> Self {
        AdminContext {
            store,
            views,
            projections: Vec::new(),
            names: Vec::new(),
            nats: None,
            feed: None,
            subscribers: Vec::new(),
        }
    }

    /// Registers a projection (a factory, since rebuilds consume one).
    pub fn projection<P: Projection>(
        mut self,
        make: impl Fn() -> P + Send + Sync + 'static,
    ) -> Self {
        self.names.push(make().name().to_owned());
        self.projections.push(Arc::new(Registered(make)));
        self
    }

    /// Registers a process manager's checkpoint name (for `status`).
    pub fn process_manager(mut self, name: &str) -> Self {
        self.subscribers.push(name.to_owned());
        self
    }

    /// Enables the JetStream commands.
    pub fn nats(mut self, client: async_nats::Client, config: StreamConfig) -> Self {
        self.nats = Some((client, config));
        self
    }

    /// Announces rebuilds' documents and switches on `feed`, so query
    /// services follow a switch the moment it commits.
    pub fn change_feed(mut self, feed: impl ChangeFeed) -> Self {
        self.feed = Some(feed.into_any());
        self
    }

    fn find(&self, name: &str) -> Option<(usize, &Arc<dyn RegisteredProjection>)> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| (i, &self.projections[i]))
    }
}

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a check failed or nothing matched.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the backend failed.
pub const EXIT_BACKEND: i32 = 3;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A check failed or nothing matched (exit code 1).
    #[error("{0}")]
    Failed(String),
    /// The backend failed (exit code 3).
    #[error("{0}")]
    Backend(String),
    /// An import file holds something that cannot be imported; nothing of
    /// the file was imported (exit code 1).
    #[error("line {line}: {reason}")]
    BadImport {
        /// The line (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

fn backend(e: impl std::fmt::Display) -> AdminError {
    AdminError::Backend(e.to_string())
}

/// Runs one admin command; returns the process exit code.
pub async fn run(args: AdminArgs, ctx: AdminContext) -> i32 {
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        });
    }
    let mut out = std::io::stdout().lock();
    match execute(args, &ctx, &mut out, shutdown).await {
        Ok(code) => code,
        Err(AdminError::Failed(m)) => {
            eprintln!("error: {m}");
            EXIT_FAILED
        }
        Err(e @ AdminError::BadImport { .. }) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
        Err(AdminError::Backend(m)) => {
            eprintln!("error: {m}");
            EXIT_BACKEND
        }
    }
}

/// Runs one admin command, writing its output to `out` (tests capture it).
pub async fn execute(
    args: AdminArgs,
    ctx: &AdminContext,
    out: &mut dyn Write,
    shutdown: CancellationToken,
) -> Result<i32, AdminError> {
    execute_inner(args, ctx, out, shutdown).await
}

fn progress_bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    Some(bar)
}

fn event_row(e: &EventEnvelope) -> String {
    format!(
        "{:>8}  {}  {:<40} {:>5}  {:<22} {}",
        e.position,
        e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        e.stream_id.as_str(),
        e.stream_version,
        e.event_type,
        e.payload
    )
}

fn event_header() -> String {
    format!(
        "{:>8}  {:<23}  {:<40} {:>5}  {:<22} payload",
        "position", "recorded at (UTC)", "stream", "ver", "type"
    )
}

fn print_events(
    out: &mut dyn Write,
    events: &[EventEnvelope],
    json: bool,
    header: bool,
) -> std::io::Result<()> {
    if json {
        for e in events {
            writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default())?;
        }
    } else {
        if header {
            writeln!(out, "{}", event_header())?;
        }
        for e in events {
            writeln!(out, "{}", event_row(e))?;
        }
    }
    Ok(())
}

async fn execute_inner(
    args: AdminArgs,
    ctx: &AdminContext,
    out: &mut dyn Write,
    shutdown: CancellationToken,
) -> Result<i32, AdminError> {
    let json = args.json;
    let io = |e: std::io::Error| AdminError::Backend(format!("writing output: {e}"));
    match args.command {
        AdminCommand::Events(EventsCommand::Show { stream }) => {
            let id = StreamId::new(stream).map_err(|e| AdminError::Failed(e.to_string()))?;
            let events = ctx
                .store
                .read_stream(&id, 1, usize::MAX)
                .await
                .map_err(backend)?;
            if events.is_empty() {
                return Err(AdminError::Failed(format!("no stream {id}")));
            }
            print_events(out, &events, json, true).map_err(io)?;
            Ok(EXIT_OK)
        }
        AdminCommand::Events(EventsCommand::Tail {
            limit,
            follow,
            filter,
        }) => {
            let head = ctx.store.head().await.map_err(backend)?;
            let filter = filter.filter();
            // The last `limit` matching events: scan back in windows.
            let mut from = head.0;
            let mut shown: Vec<EventEnvelope> = Vec::new();
            while from > 0 && (shown.len() as u64) < limit {
                let start = from.saturating_sub(10_000);
                let mut window = ctx
                    .store
                    .read_all(Position(start), (from - start) as usize, &filter)
                    .await
                    .map_err(backend)?;
                window.append(&mut shown);
                shown = window;
                from = start;
            }
            let skip = shown.len().saturating_sub(limit as usize);
            print_events(out, &shown[skip..], json, true).map_err(io)?;
            out.flush().map_err(io)?;
            if follow {
                let mut follower = crate::Follower::new(ctx.store.clone(), head).filter(filter);
                loop {
                    let batch = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(EXIT_OK),
                        b = follower.next_batch() => b.map_err(backend)?,
                    };
                    print_events(out, &batch, json, false).map_err(io)?;
                    out.flush().map_err(io)?;
                }
            }
            Ok(EXIT_OK)
        }
        AdminCommand::Events(EventsCommand::List {
            after,
            until,
            since,
            before,
            limit,
            filter,
        }) => {
            let filter = filter.filter();
            let mut follower = crate::Follower::new(ctx.store.clone(), Position(after))
                .filter(filter)
                .batch_size(5_000);
            let mut shown = Vec::new();
            'outer: while let Some(batch) = follower.try_next_batch().await.map_err(backend)? {
                for e in batch {
                    if until.is_some_and(|u| e.position.0 > u) || shown.len() >= limit {
                        break 'outer;
                    }
                    if since.is_some_and(|s| e.recorded_at < s)
                        || before.is_some_and(|b| e.recorded_at >= b)
                    {
                        continue;
                    }
                    shown.push(e);
                }
            }
            print_events(out, &shown, json, true).map_err(io)?;
            Ok(if shown.is_empty() {
                EXIT_FAILED
            } else {
                EXIT_OK
            })
        }
        AdminCommand::Export { file, after } => {
            let head = ctx.store.head().await.map_err(backend)?;
            let bar = progress_bar(head.0.saturating_sub(after), "exporting");
            let mut writer: Box<dyn Write> = if file.as_os_str() == "-" {
                Box::new(std::io::BufWriter::new(std::io::stdout()))
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&file).map_err(|e| {
                        AdminError::Failed(format!("cannot create {}: {e}", file.display()))
                    })?,
                ))
            };
            let mut follower =
                crate::Follower::new(ctx.store.clone(), Position(after)).batch_size(5_000);
            let mut count = 0u64;
            while let Some(batch) = follower.try_next_batch().await.map_err(backend)? {
                if shutdown.is_cancelled() {
                    return Err(AdminError::Failed(format!(
                        "interrupted after {count} events; the file is incomplete"
                    )));
                }
                for e in &batch {
                    serde_json::to_writer(&mut writer, e).map_err(backend)?;
                    writer.write_all(b"\n").map_err(io)?;
                }
                count += batch.len() as u64;
                if let Some(b) = &bar {
                    b.set_position(count);
                }
            }
            writer.flush().map_err(io)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            report(
                out,
                json,
                json!({ "exported": count, "head": follower.position().0 }),
                &format!("exported {count} events"),
            )?;
            Ok(EXIT_OK)
        }
        AdminCommand::Import { file } => import(ctx, &file, json, out, &shutdown).await,
        AdminCommand::Replay(ReplayCommand::Jetstream) => {
            let Some((client, config)) = ctx.nats.clone() else {
                return Err(AdminError::Failed("no NATS configured".into()));
            };
            let relay = crate::Relay::new(ctx.store.clone(), ctx.views.clone(), client, config);
            let mut status = relay.status();
            let stop = CancellationToken::new();
            let task = tokio::spawn(relay.run(stop.clone()));
            let head = ctx.store.head().await.map_err(backend)?;
            let done = tokio::select! {
                _ = shutdown.cancelled() => false,
                r = status.wait_for(|s| s.published >= head) => r.is_ok(),
            };
            stop.cancel();
            let _ = task.await;
            if !done {
                return Err(AdminError::Failed("interrupted".into()));
            }
            report(
                out,
                json,
                json!({ "published_up_to": head.0 }),
                &format!("JetStream holds every event up to position {head}"),
            )?;
            Ok(EXIT_OK)
        }
        AdminCommand::Replay(ReplayCommand::Projection { name })
        | AdminCommand::Projections(ProjectionsCommand::Rebuild { name }) => {
            let Some((_, p)) = ctx.find(&name) else {
                return Err(AdminError::Failed(format!(
                    "no projection {name:?}; registered: {}",
                    ctx.names.join(", ")
                )));
            };
            let head = ctx.store.head().await.map_err(backend)?;
            let bar = progress_bar(head.0, &format!("rebuilding {name}"));
            let b2 = bar.clone();
            let progress = Box::new(move |p: RebuildProgress| {
                if let Some(b) = &b2 {
                    b.set_length(p.head.0);
                    b.set_position(p.position.0);
                }
            });
            let result = p
                .rebuild(
                    ctx.store.clone(),
                    ctx.views.clone(),
                    ctx.feed.clone(),
                    progress,
                    shutdown.clone(),
                )
                .await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            match result {
                Ok(r) => {
                    let rate = r.events as f64 / r.seconds.max(1e-9);
                    report(
                        out,
                        json,
                        serde_json::to_value(&r).unwrap_or_default(),
                        &format!("rebuilt {} into version {} ({} events, {:.0} events/s); version {} is active, version {} was dropped", r.view, r.to_version, r.events, rate, r.to_version, r.from_version),
                    )?;
                    Ok(EXIT_OK)
                }
                Err(e @ RebuildError::Interrupted { .. }) => Err(AdminError::Failed(e.to_string())),
                Err(e) => Err(backend(e)),
            }
        }
        AdminCommand::Projections(ProjectionsCommand::List) => {
            let mut rows = Vec::new();
            for (name, p) in ctx.names.iter().zip(&ctx.projections) {
                let active = ctx
                    .views
                    .active(name)
                    .await
                    .map_err(backend)?
                    .map_or(p.version(), |a| a.version);
                rows.push(
                    json!({ "name": name, "code_version": p.version(), "active_version": active }),
                );
            }
            if json {
                writeln!(out, "{}", Value::Array(rows)).map_err(io)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:>12} {:>14}",
                    "projection", "code version", "active version"
                )
                .map_err(io)?;
                for r in rows {
                    writeln!(
                        out,
                        "{:<24} {:>12} {:>14}",
                        r["name"].as_str().unwrap_or(""),
                        r["code_version"].to_string(),
                        r["active_version"].to_string()
                    )
                    .map_err(io)?;
                }
            }
            Ok(EXIT_OK)
        }
        AdminCommand::Projections(ProjectionsCommand::Status) => {
            let head = ctx.store.head().await.map_err(backend)?;
            let letters = ctx.views.dead_letters(None).await.map_err(backend)?;
            let mut subscribers = Vec::new();
            for (name, p) in ctx.names.iter().zip(&ctx.projections) {
                let v = ctx
                    .views
                    .active(name)
                    .await
                    .map_err(backend)?
                    .map_or(p.version(), |a| a.version);
                subscribers.push(ViewId::new(name, v).map_err(backend)?.subscriber());
            }
            subscribers.extend(ctx.subscribers.iter().cloned());
            let mut rows = Vec::new();
            for s in subscribers {
                let cp = ctx.views.checkpoint(&s).await.map_err(backend)?;
                let parked = letters
                    .iter()
                    .filter(|d| d.subscriber == s && d.status == "parked")
                    .count();
                rows.push(json!({
                    "subscriber": s,
                    "position": cp.position.0,
                    "lag": head.0.saturating_sub(cp.position.0),
                    "state": cp.state,
                    "dead_letters": parked,
                    "error": cp.error,
                }));
            }
            if json {
                writeln!(out, "{}", json!({ "head": head.0, "subscribers": rows })).map_err(io)?;
            } else {
                writeln!(out, "store head: {head}").map_err(io)?;
                writeln!(
                    out,
                    "{:<28} {:>10} {:>8} {:<9} {:>12}",
                    "subscriber", "position", "lag", "state", "dead letters"
                )
                .map_err(io)?;
                for r in rows {
                    writeln!(
                        out,
                        "{:<28} {:>10} {:>8} {:<9} {:>12}",
                        r["subscriber"].as_str().unwrap_or(""),
                        r["position"].to_string(),
                        r["lag"].to_string(),
                        r["state"].as_str().unwrap_or(""),
                        r["dead_letters"].to_string()
                    )
                    .map_err(io)?;
                }
            }
            Ok(EXIT_OK)
        }
        AdminCommand::Projections(ProjectionsCommand::Reset { subscriber, to }) => {
            ctx.views
                .reset(&subscriber, Position(to))
                .await
                .map_err(|e| AdminError::Failed(e.to_string()))?;
            report(
                out,
                json,
                json!({ "subscriber": subscriber, "position": to }),
                &format!("{subscriber} will resume after position {to}"),
            )?;
            Ok(EXIT_OK)
        }
        AdminCommand::DeadLetters(DeadLettersCommand::List { subscriber }) => {
            let letters = ctx
                .views
                .dead_letters(subscriber.as_deref())
                .await
                .map_err(backend)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&letters).unwrap_or_default()
                )
                .map_err(io)?;
            } else {
                writeln!(
                    out,
                    "{:>5}  {:<24} {:>9}  {:<20} {:<8} error",
                    "id", "subscriber", "position", "event type", "status"
                )
                .map_err(io)?;
                for d in &letters {
                    writeln!(
                        out,
                        "{:>5}  {:<24} {:>9}  {:<20} {:<8} {}",
                        d.id, d.subscriber, d.position, d.event_type, d.status, d.error
                    )
                    .map_err(io)?;
                }
            }
            Ok(EXIT_OK)
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Retry { id }) => {
            resolve(ctx, id, false, json, out).await
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Skip { id }) => {
            resolve(ctx, id, true, json, out).await
        }
        AdminCommand::Verify {
            jetstream,
            projections,
            no_projections,
        } => verify(ctx, jetstream, &projections, no_projections, json, out).await,
    }
}

async fn resolve(
    ctx: &AdminContext,
    id: i64,
    skip: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32, AdminError> {
    if !ctx
        .views
        .resolve_dead_letter(id, skip)
        .await
        .map_err(backend)?
    {
        return Err(AdminError::Failed(format!("no parked dead letter {id}")));
    }
    let what = if skip {
        "skipped; the subscriber resumes after it"
    } else {
        "will be retried; the subscriber resumes before it"
    };
    report(
        out,
        json,
        json!({ "id": id, "skipped": skip }),
        &format!("dead letter {id} {what}"),
    )?;
    Ok(EXIT_OK)
}

fn report(out: &mut dyn Write, json: bool, value: Value, text: &str) -> Result<(), AdminError> {
    let r = if json {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    };
    r.map_err(|e| AdminError::Backend(format!("writing output: {e}")))
}

/// Reads an import file once before anything is written: every line must be
/// an event with a stream version from 1 to `i64::MAX` (what the store can
/// hold), so a bad line refuses the whole file instead of a part of it.
fn check_import(file: &PathBuf) -> Result<(), AdminError> {
    let f = std::fs::File::open(file)
        .map_err(|e| AdminError::Failed(format!("cannot open {}: {e}", file.display())))?;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line =
            line.map_err(|e| AdminError::Failed(format!("reading {}: {e}", file.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: EventEnvelope =
            serde_json::from_str(&line).map_err(|err| AdminError::BadImport {
                line: i + 1,
                reason: format!("not an event: {err}"),
            })?;
        if e.stream_version == 0 || e.stream_version > i64::MAX as u64 {
            return Err(AdminError::BadImport {
                line: i + 1,
                reason: format!(
                    "stream {} has version {}; versions run from 1 to {}",
                    e.stream_id,
                    e.stream_version,
                    i64::MAX
                ),
            });
        }
    }
    Ok(())
}

async fn import(
    ctx: &AdminContext,
    file: &PathBuf,
    json: bool,
    out: &mut dyn Write,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    check_import(file)?;
    let f = std::fs::File::open(file)
        .map_err(|e| AdminError::Failed(format!("cannot open {}: {e}", file.display())))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(size, "importing");
    let reader = std::io::BufReader::new(f);
    let mut run: Vec<EventEnvelope> = Vec::new();
    let (mut imported, mut skipped, mut read_bytes) = (0u64, 0u64, 0u64);
    let flush = |run: &mut Vec<EventEnvelope>| {
        let batch = std::mem::take(run);
        let store = ctx.store.clone();
        async move {
            let Some(first) = batch.first() else {
                return Ok((0, 0));
            };
            let request = AppendRequest::new(
                first.stream_id.clone(),
                first.stream_type.clone(),
                // `check_import` made sure versions start at 1.
                ExpectedVersion::from_seen(first.stream_version.saturating_sub(1)),
                batch
                    .iter()
                    .map(|e| NewEvent {
                        event_id: e.event_id,
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        payload: e.payload.clone(),
                        metadata: e.metadata.clone(),
                        recorded_at: Some(e.recorded_at),
                    })
                    .collect(),
            );
            let n = batch.len() as u64;
            match store.append(request).await {
                Ok(o) if o.duplicate => Ok((0, n)),
                Ok(_) => Ok((n, 0)),
                Err(e) => Err(AdminError::Failed(format!(
                    "stream {} version {}: {e}",
                    first.stream_id, first.stream_version
                ))),
            }
        }
    };
    for (line_no, line) in reader.lines().enumerate() {
        if shutdown.is_cancelled() {
            return Err(AdminError::Failed(format!("interrupted after {imported} events; run it again to continue (imports are idempotent)")));
        }
        let line =
            line.map_err(|e| AdminError::Failed(format!("reading {}: {e}", file.display())))?;
        read_bytes += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let e: EventEnvelope = serde_json::from_str(&line).map_err(|err| {
            AdminError::Failed(format!("line {}: not an event: {err}", line_no + 1))
        })?;
        let same_run = run.last().is_some_and(|l| {
            l.stream_id == e.stream_id && l.stream_version + 1 == e.stream_version
        }) && run.len() < 500;
        if !same_run {
            let (i, s) = flush(&mut run).await?;
            imported += i;
            skipped += s;
        }
        run.push(e);
        if let Some(b) = &bar {
            b.set_position(read_bytes);
        }
    }
    let (i, s) = flush(&mut run).await?;
    imported += i;
    skipped += s;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report(
        out,
        json,
        json!({ "imported": imported, "already_present": skipped }),
        &format!("imported {imported} events ({skipped} were already present)"),
    )?;
    Ok(EXIT_OK)
}

/// How one verify check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Correct as far as it goes, but not yet at the verified position
    /// (a view or JetStream catching up): not a failure.
    Behind,
    Failed,
}

impl Outcome {
    fn of(ok: bool) -> Self {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// Checks the store, JetStream and the views up to one position: the
/// store's head read once at the start. Appends after it are not looked
/// at, so verify can run while the system writes: the store checks count
/// only events up to that position; JetStream must match the store up to
/// it (a stream that ends before it is `behind`); a view is compared with a
/// fresh fold of the store up to its own checkpoint, read in one snapshot
/// with its documents, and a view whose checkpoint is before the position
/// is `behind`, not failed.
async fn verify(
    ctx: &AdminContext,
    jetstream: bool,
    only: &[String],
    no_projections: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32, AdminError> {
    let pool = ctx.store.pool();
    let upto = ctx.store.head().await.map_err(backend)?;
    let bound = upto.0.min(i64::MAX as u64) as i64;
    let mut checks: Vec<(String, Outcome, String)> = Vec::new();
    let bad_streams: Vec<String> = sqlx::query_scalar(
        "SELECT stream_id FROM strata_events WHERE position <= $1 GROUP BY stream_id \
         HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*) LIMIT 10",
    )
    .bind(bound)
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    checks.push((
        "stream versions are contiguous".into(),
        Outcome::of(bad_streams.is_empty()),
        if bad_streams.is_empty() {
            String::new()
        } else {
            format!("broken: {}", bad_streams.join(", "))
        },
    ));
    let (count, distinct, max): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), max(position) FROM strata_events \
          WHERE position <= $1",
    )
    .bind(bound)
    .fetch_one(pool)
    .await
    .map_err(backend)?;
    checks.push((
        "event ids are unique".into(),
        Outcome::of(count == distinct),
        format!("{count} events, {distinct} distinct ids"),
    ));
    let dense = max.unwrap_or(0) == count && bound == count;
    checks.push((
        format!("positions are dense up to {upto}"),
        Outcome::of(dense),
        format!("{count} events"),
    ));

    if jetstream {
        let Some((client, config)) = ctx.nats.clone() else {
            return Err(AdminError::Failed("--jetstream needs NATS".into()));
        };
        let (outcome, detail) = verify_jetstream(&ctx.store, client, &config, upto).await?;
        checks.push((
            "JetStream holds exactly the store's events, in order".into(),
            outcome,
            detail,
        ));
    }
    if !no_projections {
        // The store's events up to the position, extended when a view's
        // checkpoint is beyond it (those events are committed and final).
        let mut events = ctx
            .store
            .read_all(Position::START, upto.0 as usize, &EventFilter::all())
            .await
            .map_err(backend)?;
        for (name, p) in ctx.names.iter().zip(&ctx.projections) {
            if !only.is_empty() && !only.contains(name) {
                continue;
            }
            let version = ctx
                .views
                .active(name)
                .await
                .map_err(backend)?
                .map_or(p.version(), |a| a.version);
            let view = ViewId::new(name, version).map_err(backend)?;
            let (checkpoint, stored) = view_snapshot(pool, &view).await?;
            let known = events.last().map_or(Position::START, |e| e.position);
            if checkpoint > known {
                let more = ctx
                    .store
                    .read_all(
                        known,
                        (checkpoint.0 - known.0) as usize,
                        &EventFilter::all(),
                    )
                    .await
                    .map_err(backend)?;
                events.extend(more);
            }
            let applied = events.partition_point(|e| e.position <= checkpoint);
            let expected = p.fold(&events[..applied]);
            let differing: Vec<&String> = expected
                .keys()
                .chain(stored.keys())
                .filter(|k| expected.get(*k) != stored.get(*k))
                .take(5)
                .collect();
            let outcome = match (differing.is_empty(), checkpoint < upto) {
                (false, _) => Outcome::Failed,
                (true, true) => Outcome::Behind,
                (true, false) => Outcome::Ok,
            };
            checks.push((
                format!(
                    "{name} v{version} equals a fresh fold of the store up to its checkpoint {checkpoint}"
                ),
                outcome,
                if !differing.is_empty() {
                    format!("documents differ: {differing:?}")
                } else if outcome == Outcome::Behind {
                    format!("{} documents; behind {upto}", stored.len())
                } else {
                    format!("{} documents", stored.len())
                },
            ));
        }
    }
    let ok = checks.iter().all(|c| c.1 != Outcome::Failed);
    if json {
        let rows: Vec<Value> = checks
            .iter()
            .map(|(n, o, d)| {
                json!({
                    "check": n,
                    "ok": *o != Outcome::Failed,
                    "behind": *o == Outcome::Behind,
                    "detail": d,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "ok": ok, "position": upto.0, "checks": rows })
        )
        .map_err(backend)?;
    } else {
        writeln!(
            out,
            "verified up to position {upto} (the store's head when verify started)"
        )
        .map_err(backend)?;
        for (name, outcome, detail) in &checks {
            let mark = match outcome {
                Outcome::Ok => "ok",
                Outcome::Behind => "behind",
                Outcome::Failed => "FAIL",
            };
            writeln!(
                out,
                "{mark:<6} {name}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            )
            .map_err(backend)?;
        }
    }
    Ok(if ok { EXIT_OK } else { EXIT_FAILED })
}

/// A view's checkpoint and documents as of one moment (one repeatable-read
/// snapshot), so a projector committing meanwhile cannot make them disagree.
async fn view_snapshot(
    pool: &sqlx::PgPool,
    view: &ViewId,
) -> Result<(Position, BTreeMap<String, Value>), AdminError> {
    use sqlx::Row;
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let checkpoint: Option<i64> =
        sqlx::query_scalar("SELECT position FROM strata_checkpoints WHERE subscriber = $1")
            .bind(view.subscriber())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
    // The table name comes from a validated view name and version.
    let rows = sqlx::query(&format!(
        "SELECT key, doc FROM {} ORDER BY key",
        crate::views::postgres::view_table(view)
    ))
    .fetch_all(&mut *tx)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        // The version's table does not exist yet: no documents.
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P01") =>
        {
            Vec::new()
        }
        Err(e) => return Err(backend(e)),
    };
    let mut docs = BTreeMap::new();
    for row in rows {
        let key: String = row.try_get(0).map_err(backend)?;
        let sqlx::types::Json(doc): sqlx::types::Json<Value> = row.try_get(1).map_err(backend)?;
        docs.insert(key, doc);
    }
    Ok((Position(checkpoint.unwrap_or(0).max(0) as u64), docs))
}

/// JetStream against the store up to `upto`: every message up to it must
/// carry the store's event at that position. A stream that ends before
/// `upto` (the relay catching up) is `behind` if what it holds matches.
async fn verify_jetstream(
    store: &PgEventStore,
    client: async_nats::Client,
    config: &StreamConfig,
    upto: Position,
) -> Result<(Outcome, String), AdminError> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&config.stream).await.map_err(backend)?;
    let info = stream.info().await.map_err(backend)?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let end = last.min(upto.0);
    let behind = last < upto.0;
    if end == 0 || first > end {
        return Ok(if behind {
            (
                Outcome::Behind,
                format!("stream ends at {last}, behind {upto}"),
            )
        } else {
            (Outcome::Ok, "both empty".into())
        });
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .map_err(backend)?;
    let mut messages = consumer.messages().await.map_err(backend)?;
    let mut follower = crate::Follower::new(store.clone(), Position(first - 1)).batch_size(5_000);
    let mut checked = 0u64;
    'read: while let Some(batch) = follower.try_next_batch().await.map_err(backend)? {
        for e in batch {
            if e.position.0 > end {
                break 'read;
            }
            let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                _ => {
                    return Ok((
                        Outcome::Failed,
                        format!("stream ended early, after {checked} messages"),
                    ))
                }
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::propagation::nats::headers::EVENT_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            if seq != e.position.0 || id != e.event_id.to_string() {
                return Ok((
                    Outcome::Failed,
                    format!(
                        "message {seq} is {id:?}, the store has {} at {}",
                        e.event_id, e.position
                    ),
                ));
            }
            checked += 1;
        }
    }
    if checked != end - first + 1 {
        return Ok((
            Outcome::Failed,
            format!(
                "checked {checked} messages from sequence {first}, expected {}",
                end - first + 1
            ),
        ));
    }
    Ok(if behind {
        (
            Outcome::Behind,
            format!("{checked} messages match (from sequence {first}); the stream ends at {last}, behind {upto}"),
        )
    } else {
        (
            Outcome::Ok,
            format!("{checked} messages match (from sequence {first})"),
        )
    })
}

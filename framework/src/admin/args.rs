//! The command line: `admin` and its subcommands, as clap types an
//! application embeds in its own CLI.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::store::EventFilter;

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
    /// The store filter these arguments select.
    pub(super) fn filter(&self) -> EventFilter {
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

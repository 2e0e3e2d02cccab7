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
//!
//! # Layout
//!
//! `args.rs` holds the clap types, `registry.rs` the [`AdminContext`] with
//! its registered projections, `error.rs` [`AdminError`] and the exit
//! codes, `output.rs` tables, JSON and progress bars; one file per group
//! of commands: `events.rs`, `transfer.rs` (export, import, replay to
//! JetStream), `projections.rs`, `dead_letters.rs`, `verify.rs`.

mod args;
mod dead_letters;
mod error;
mod events;
mod output;
mod projections;
mod registry;
mod transfer;
mod verify;

use std::io::Write;

use tokio_util::sync::CancellationToken;

pub use args::{
    AdminArgs, AdminCommand, DeadLettersCommand, EventsCommand, FilterArgs, ProjectionsCommand,
    ReplayCommand,
};
pub use error::{AdminError, EXIT_BACKEND, EXIT_FAILED, EXIT_OK};
pub use registry::{AdminContext, RegisteredProjection};

/// Runs one admin command; returns the process exit code. Errors are
/// printed to standard error.
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
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
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
    let out = &mut output::Out::new(out, args.json);
    match args.command {
        AdminCommand::Events(command) => events::run(command, ctx, out, &shutdown).await,
        AdminCommand::Export { file, after } => {
            transfer::export(ctx, &file, after, out, &shutdown).await
        }
        AdminCommand::Import { file } => transfer::import(ctx, &file, out, &shutdown).await,
        AdminCommand::Replay(ReplayCommand::Jetstream) => {
            transfer::replay_jetstream(ctx, out, &shutdown).await
        }
        AdminCommand::Replay(ReplayCommand::Projection { name })
        | AdminCommand::Projections(ProjectionsCommand::Rebuild { name }) => {
            projections::rebuild(ctx, &name, out, &shutdown).await
        }
        AdminCommand::Projections(ProjectionsCommand::List) => projections::list(ctx, out).await,
        AdminCommand::Projections(ProjectionsCommand::Status) => {
            projections::status(ctx, out).await
        }
        AdminCommand::Projections(ProjectionsCommand::Reset { subscriber, to }) => {
            projections::reset(ctx, &subscriber, to, out).await
        }
        AdminCommand::DeadLetters(DeadLettersCommand::List { subscriber }) => {
            dead_letters::list(ctx, subscriber.as_deref(), out).await
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Retry { id }) => {
            dead_letters::resolve(ctx, id, false, out).await
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Skip { id }) => {
            dead_letters::resolve(ctx, id, true, out).await
        }
        AdminCommand::Verify {
            jetstream,
            projections,
            no_projections,
        } => verify::verify(ctx, jetstream, &projections, no_projections, out).await,
    }
}

//! [`AdminError`]: why an admin command failed, and its exit code.

use std::path::PathBuf;

use crate::envelope::StreamId;
use crate::error::{InputError, StoreError};
use crate::propagation::bus::BusError;
use crate::views::rebuild::RebuildError;
use crate::views::store::ViewError;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a check failed or nothing matched.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the backend failed.
pub const EXIT_BACKEND: i32 = 3;

/// Why an admin command failed. [`exit_code`](Self::exit_code) says which
/// exit code it maps to: 1 for bad input and things that are not there, 3
/// for a backend that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// An argument is not valid, e.g. a stream id (exit code 1).
    #[error("{0}")]
    InvalidInput(#[from] InputError),
    /// `events show` named a stream without events (exit code 1).
    #[error("no stream {stream}")]
    NoSuchStream {
        /// The stream asked for.
        stream: StreamId,
    },
    /// No projection of that name is registered (exit code 1).
    #[error("no projection {name:?}; registered: {}", registered.join(", "))]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The registered projections' names.
        registered: Vec<String>,
    },
    /// No dead letter with that id is parked (exit code 1).
    #[error("no parked dead letter {id}")]
    NoSuchDeadLetter {
        /// The id asked for.
        id: i64,
    },
    /// The command needs NATS, and the context has none (exit code 1).
    /// Configure it with [`AdminContext::nats`](super::AdminContext::nats).
    #[error("{command} needs NATS; none is configured")]
    NatsNotConfigured {
        /// The command, as typed.
        command: &'static str,
    },
    /// A file could not be opened, created or read (exit code 1).
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// What was done: `open`, `create` or `read`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An import file holds something that cannot be imported; nothing of
    /// the file was imported (exit code 1).
    #[error("line {line}: {reason}")]
    BadImport {
        /// The line (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The store refused an imported run of events, e.g. a stream that
    /// holds other events at those versions (exit code 1). What was
    /// imported before it stays; importing again is idempotent.
    #[error("stream {stream} version {version}: {source}")]
    ImportRefused {
        /// The run's stream.
        stream: StreamId,
        /// The run's first version.
        version: u64,
        /// The store's answer.
        #[source]
        source: StoreError,
    },
    /// Ctrl-C stopped `export`; the file is incomplete (exit code 1).
    #[error("interrupted after {exported} events; the file is incomplete")]
    ExportInterrupted {
        /// Events written before it stopped.
        exported: u64,
    },
    /// Ctrl-C stopped `import`; run it again to continue (exit code 1).
    #[error(
        "interrupted after {imported} events; run it again to continue (imports are idempotent)"
    )]
    ImportInterrupted {
        /// Events imported before it stopped.
        imported: u64,
    },
    /// Ctrl-C stopped `replay jetstream` before JetStream held every
    /// event; run it again to continue (exit code 1).
    #[error("interrupted")]
    ReplayInterrupted,
    /// A rebuild failed (exit code 1 when interrupted: run it again to
    /// resume; 3 otherwise).
    #[error("{0}")]
    Rebuild(#[from] RebuildError),
    /// The event store failed (exit code 3).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The view store failed (exit code 3), or refused a name (exit code 1).
    #[error("{0}")]
    View(#[from] ViewError),
    /// JetStream failed (exit code 3).
    #[error("{0}")]
    Bus(#[from] BusError),
    /// A database query of `verify` failed (exit code 3).
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// Writing the output (or an export file) failed (exit code 3).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl AdminError {
    /// The process exit code for this error: [`EXIT_FAILED`] for bad input,
    /// a failed check or an interruption, [`EXIT_BACKEND`] for a backend
    /// that failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Rebuild(RebuildError::Interrupted { .. })
            | AdminError::View(ViewError::InvalidName(_)) => EXIT_FAILED,
            AdminError::Rebuild(_)
            | AdminError::Store(_)
            | AdminError::View(_)
            | AdminError::Bus(_)
            | AdminError::Database(_)
            | AdminError::Output(_) => EXIT_BACKEND,
            AdminError::InvalidInput(_)
            | AdminError::NoSuchStream { .. }
            | AdminError::UnknownProjection { .. }
            | AdminError::NoSuchDeadLetter { .. }
            | AdminError::NatsNotConfigured { .. }
            | AdminError::File { .. }
            | AdminError::BadImport { .. }
            | AdminError::ImportRefused { .. }
            | AdminError::ExportInterrupted { .. }
            | AdminError::ImportInterrupted { .. }
            | AdminError::ReplayInterrupted => EXIT_FAILED,
        }
    }
}

/// A JetStream call's error, as a bus error.
pub(super) fn jetstream(e: impl Into<crate::error::BoxError>) -> AdminError {
    AdminError::Bus(BusError::Unavailable(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users see the messages of the string errors these variants
    /// replaced, with the exit codes they had.
    #[test]
    fn messages_and_exit_codes() {
        let cases: Vec<(AdminError, &str, i32)> = vec![
            (
                AdminError::NoSuchStream {
                    stream: StreamId::new("order-1").unwrap(),
                },
                "no stream order-1",
                EXIT_FAILED,
            ),
            (
                AdminError::UnknownProjection {
                    name: "nope".into(),
                    registered: vec!["orders".into(), "catalog".into()],
                },
                "no projection \"nope\"; registered: orders, catalog",
                EXIT_FAILED,
            ),
            (
                AdminError::NoSuchDeadLetter { id: 7 },
                "no parked dead letter 7",
                EXIT_FAILED,
            ),
            (
                AdminError::BadImport {
                    line: 3,
                    reason: "not an event: x".into(),
                },
                "line 3: not an event: x",
                EXIT_FAILED,
            ),
            (
                AdminError::ExportInterrupted { exported: 5 },
                "interrupted after 5 events; the file is incomplete",
                EXIT_FAILED,
            ),
            (
                AdminError::ImportInterrupted { imported: 5 },
                "interrupted after 5 events; run it again to continue (imports are idempotent)",
                EXIT_FAILED,
            ),
            (
                AdminError::File {
                    action: "open",
                    path: "/no/such".into(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
                },
                "cannot open /no/such: gone",
                EXIT_FAILED,
            ),
            (
                AdminError::View(ViewError::InvalidName("Bad".into())),
                "invalid view name \"Bad\": use 1 to 40 lowercase letters, digits or '_', \
                 starting with a letter",
                EXIT_FAILED,
            ),
            (
                AdminError::Store(StoreError::backend("down")),
                "event store backend error: down",
                EXIT_BACKEND,
            ),
            (
                AdminError::View(ViewError::backend("down")),
                "view store backend error: down",
                EXIT_BACKEND,
            ),
        ];
        for (e, message, code) in cases {
            assert_eq!(e.to_string(), message);
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}

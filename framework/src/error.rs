//! Error types of the store layer.

use uuid::Uuid;

use crate::envelope::StreamId;
use crate::store::ExpectedVersion;

/// A boxed error from a backend (Postgres, NATS, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Input that the store refuses before touching anything.
///
/// Callers should report these to the client (HTTP 400 or 413); retrying the
/// same input gives the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The stream id is empty, too long, or has characters outside the allowed set.
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidStreamId {
        /// The offending id (truncated to 64 characters).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stream type or event type name is empty, too long or has bad characters.
    #[error("invalid {kind} {name:?}: use 1 to 100 ASCII letters, digits, '-' or '_'")]
    InvalidTypeName {
        /// `stream type` or `event type`.
        kind: &'static str,
        /// The offending name (truncated to 64 characters).
        name: String,
    },
    /// An append with no events.
    #[error("an append must carry at least one event")]
    EmptyAppend,
    /// More events in one append than the configured limit.
    #[error("{count} events in one append; the limit is {max}")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An event payload (serialised JSON) over the configured limit.
    #[error("payload of event {event_id} is {size} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// The event.
        event_id: Uuid,
        /// Its serialised size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The same event id appears twice in one append.
    #[error("event id {event_id} appears more than once in the append")]
    RepeatedEventId {
        /// The repeated id.
        event_id: Uuid,
    },
    /// Schema versions start at 1.
    #[error("schema version must be at least 1")]
    InvalidSchemaVersion,
    /// A string (a JSON value or object key at any depth of a payload, or a
    /// metadata field) holds U+0000, which PostgreSQL `text` and `jsonb`
    /// cannot store. Refused by every store, so an application behaves the
    /// same on the in-memory store as on Postgres.
    #[error(
        "event {event_id}: {field} holds the character U+0000, which the event store cannot hold"
    )]
    NulCharacter {
        /// The event.
        event_id: Uuid,
        /// Where in the event, e.g. `payload.customer_id`,
        /// `payload.lines[2].name`, `payload["odd key"]` or `metadata.actor`.
        field: String,
    },
    /// A payload nested deeper than the store can read back (JSON readers,
    /// `serde_json` among them, refuse deep nesting).
    #[error("event {event_id}: {field} is nested {depth} levels deep; the limit is {max}")]
    JsonTooDeep {
        /// The event.
        event_id: Uuid,
        /// The first value found past the limit, e.g. `payload.a.b`.
        field: String,
        /// Its depth (the payload itself is level 1).
        depth: usize,
        /// The limit ([`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH)).
        max: usize,
    },
    /// The backend refused the append's data although it passed the checks
    /// above (a constraint or trigger an operator added, a limit of the
    /// backend). Only this append is refused; appends that shared its
    /// group commit are written. Retrying the same data gives the same error.
    #[error("the event store cannot hold this append's data")]
    RefusedByBackend {
        /// The backend's message: for logs, not for clients (the error's
        /// text leaves it out).
        reason: String,
    },
}

/// Errors of [`EventStore`](crate::EventStore) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected version: another writer got there
    /// first. Reload and decide again (the command handler does this), or
    /// report HTTP 409.
    #[error("version conflict on stream {stream_id}: expected {expected}, stream is at {actual}")]
    Conflict {
        /// The stream.
        stream_id: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was attempted (0: no stream).
        actual: u64,
    },
    /// The input was refused before anything was written. HTTP 400 / 413.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Some event ids of the append already exist, but not as this exact
    /// append (another stream, or only part of the batch). Nothing was
    /// written. This is a client bug; HTTP 409.
    #[error("event id {event_id} already exists outside this append")]
    EventIdReused {
        /// The first reused id found.
        event_id: Uuid,
    },
    /// A stored row could not be decoded into an envelope. Names the event.
    #[error("stored event at position {position} is corrupt: {reason}")]
    Corrupt {
        /// Where the event sits.
        position: u64,
        /// What failed.
        reason: String,
    },
    /// The backend failed (connection lost, timeout, ...). Nothing is known
    /// to have been written unless the operation is retried and reports a
    /// duplicate. Log it; HTTP 503.
    #[error("event store backend error: {0}")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<BoxError>) -> Self {
        StoreError::Backend(e.into())
    }

    /// True for errors a caller may retry as they are (backend trouble).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

/// One store error handed to every command of a failed group: each gets
/// the same variant, and a backend cause is shared (its message and its
/// source chain), not turned into text.
#[derive(Debug, Clone)]
pub(crate) struct SharedStoreError(std::sync::Arc<StoreError>);

impl From<StoreError> for SharedStoreError {
    fn from(e: StoreError) -> Self {
        SharedStoreError(std::sync::Arc::new(e))
    }
}

impl SharedStoreError {
    /// A copy of the error for one waiter.
    pub(crate) fn get(&self) -> StoreError {
        match &*self.0 {
            StoreError::Conflict {
                stream_id,
                expected,
                actual,
            } => StoreError::Conflict {
                stream_id: stream_id.clone(),
                expected: *expected,
                actual: *actual,
            },
            StoreError::Input(i) => StoreError::Input(i.clone()),
            StoreError::EventIdReused { event_id } => StoreError::EventIdReused {
                event_id: *event_id,
            },
            StoreError::Corrupt { position, reason } => StoreError::Corrupt {
                position: *position,
                reason: reason.clone(),
            },
            StoreError::Backend(_) => StoreError::Backend(Box::new(SharedCause(self.0.clone()))),
        }
    }
}

/// The backend cause of a store error handed to several callers at once
/// (every command of a group commit that failed): it reads as the
/// original, and [`SharedCause::cause`] gives the original to downcast
/// (for example to `sqlx::Error`).
#[derive(Debug)]
pub struct SharedCause(std::sync::Arc<StoreError>);

impl SharedCause {
    /// The backend's own error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match &*self.0 {
            StoreError::Backend(cause) => &**cause,
            other => other,
        }
    }
}

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            StoreError::Backend(cause) => cause.fmt(f),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            StoreError::Backend(cause) => cause.source(),
            _ => None,
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

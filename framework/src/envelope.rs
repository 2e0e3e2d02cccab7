//! Event envelopes, identifiers and metadata: the wire format of the store.
//!
//! Everything here is serialised into Postgres rows, JetStream headers and
//! HTTP bodies, so field names and shapes are part of the public contract
//! (they are pinned by insta snapshots in the tests).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::InputError;

/// Longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 200;
/// Longest stream type or event type name accepted, in bytes.
pub const MAX_TYPE_NAME_LEN: usize = 100;
/// Deepest nesting of arrays and objects accepted in a payload (the payload
/// itself is level 1). JSON readers refuse deep nesting (`serde_json` stops
/// at 128 levels), so a deeper event could be stored but never read back.
pub const MAX_JSON_DEPTH: usize = 100;

/// A position in the store's single global order.
///
/// Positions are dense: the first event ever appended has position 1 and
/// every later event has the next integer, with no gaps. `Position(0)` means
/// "before the first event".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The position before the first event.
    pub const START: Position = Position(0);

    /// The position right after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated stream id: 1 to 200 bytes of ASCII letters, digits and
/// `-`, `_`, `:`, `@`, `~`, `=`.
///
/// The set excludes `.`, `*`, `>` and whitespace so that a stream id is
/// always a valid single NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// Validates and wraps a stream id.
    pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
        let value = value.into();
        if value.is_empty() || value.len() > MAX_STREAM_ID_LEN {
            return Err(InputError::InvalidStreamId {
                id: truncate(&value),
                reason: "length must be 1 to 200 bytes",
            });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:@~=".contains(&b))
        {
            return Err(InputError::InvalidStreamId {
                id: truncate(&value),
                reason: "only ASCII letters, digits and - _ : @ ~ = are allowed",
            });
        }
        Ok(StreamId(value))
    }

    /// A stream id built from a type prefix and a UUID, e.g. `order-<uuid>`.
    pub fn from_uuid(prefix: &str, id: Uuid) -> Result<Self, InputError> {
        StreamId::new(format!("{prefix}-{id}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamId::new(s)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StreamId::new(s).map_err(serde::de::Error::custom)
    }
}

/// Checks a stream type or event type name: 1 to 100 bytes of ASCII letters,
/// digits, `-` and `_` (a valid NATS subject token).
pub fn validate_type_name(kind: &'static str, value: &str) -> Result<(), InputError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TYPE_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InputError::InvalidTypeName {
            kind,
            name: truncate(value),
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Who did what, and why: carried by every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together every event caused, directly or not, by one request.
    pub correlation_id: Uuid,
    /// The event or command that caused this event, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The id of the command that produced this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// The user or system that issued the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// W3C trace context (`traceparent`) of the request, when tracing spans
    /// should be followed across processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// A fingerprint of the request that carried the command (e.g. a hash
    /// of its route and body): a repeated command id with another
    /// fingerprint is a different request and is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            command_id: None,
            actor: None,
            traceparent: None,
            fingerprint: None,
        }
    }
}

impl Metadata {
    /// Metadata for a fresh request: a new correlation id and nothing else.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = id;
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the command id.
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = Some(id);
        self
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
}

/// An event about to be appended: what the domain produced plus metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id of the event; appending the same id twice is idempotent.
    pub event_id: Uuid,
    /// The event type name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Version of the payload's shape for this event type, starting at 1.
    pub schema_version: u32,
    /// The payload as JSON.
    pub payload: serde_json::Value,
    /// Metadata recorded with the event.
    pub metadata: Metadata,
    /// When the event happened, for imports that keep the original time;
    /// `None` (the normal case): the store's clock at commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id and default metadata.
    pub fn new(event_type: impl Into<String>, payload: serde_json::Value) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata::default(),
            recorded_at: None,
        }
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the event id.
    pub fn with_event_id(mut self, id: Uuid) -> Self {
        self.event_id = id;
        self
    }

    /// Checks that every store can hold this event's text: no string of
    /// the payload (values and object keys, at any depth) or the metadata
    /// holds U+0000, which PostgreSQL `text` and `jsonb` refuse, and the
    /// payload is nested at most [`MAX_JSON_DEPTH`] levels. Both stores run
    /// this before an append is queued; a command handler may run it to
    /// refuse one command without touching its neighbours.
    pub fn check_storable(&self) -> Result<(), InputError> {
        let mut trail = Vec::new();
        if let Some(problem) = find_unstorable(&self.payload, 1, &mut trail) {
            let field = render_path("payload", &trail);
            return Err(match problem {
                Unstorable::Nul => InputError::NulCharacter {
                    event_id: self.event_id,
                    field,
                },
                Unstorable::TooDeep(depth) => InputError::JsonTooDeep {
                    event_id: self.event_id,
                    field,
                    depth,
                    max: MAX_JSON_DEPTH,
                },
            });
        }
        let m = &self.metadata;
        for (field, value) in [
            ("metadata.actor", &m.actor),
            ("metadata.traceparent", &m.traceparent),
        ] {
            if value.as_deref().is_some_and(|v| v.contains('\0')) {
                return Err(InputError::NulCharacter {
                    event_id: self.event_id,
                    field: field.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// What [`find_unstorable`] found.
enum Unstorable {
    Nul,
    TooDeep(usize),
}

/// One step of a path into a JSON value.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The first string holding U+0000 or the first container nested deeper than
/// [`MAX_JSON_DEPTH`], depth first; `trail` ends up holding its path. Never
/// descends past the limit, so a hostile value cannot exhaust the stack here.
fn find_unstorable<'a>(
    v: &'a serde_json::Value,
    depth: usize,
    trail: &mut Vec<Step<'a>>,
) -> Option<Unstorable> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Some(Unstorable::Nul),
        Value::Array(items) => {
            if depth > MAX_JSON_DEPTH {
                return Some(Unstorable::TooDeep(depth));
            }
            for (i, item) in items.iter().enumerate() {
                trail.push(Step::Index(i));
                if let Some(p) = find_unstorable(item, depth + 1, trail) {
                    return Some(p);
                }
                trail.pop();
            }
            None
        }
        Value::Object(map) => {
            if depth > MAX_JSON_DEPTH {
                return Some(Unstorable::TooDeep(depth));
            }
            for (key, item) in map {
                trail.push(Step::Key(key));
                if key.contains('\0') {
                    return Some(Unstorable::Nul);
                }
                if let Some(p) = find_unstorable(item, depth + 1, trail) {
                    return Some(p);
                }
                trail.pop();
            }
            None
        }
        _ => None,
    }
}

/// `payload.lines[2].name`; keys that are not plain identifiers are quoted
/// as JSON strings: `payload["a b"]`, `payload["x\u0000"]`.
fn render_path(root: &str, trail: &[Step<'_>]) -> String {
    use std::fmt::Write;
    let mut out = root.to_owned();
    for step in trail {
        match step {
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Step::Key(k) => {
                let plain = k
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    let _ = write!(out, ".{k}");
                } else {
                    let quoted = serde_json::to_string(k).unwrap_or_default();
                    let _ = write!(out, "[{quoted}]");
                }
            }
        }
    }
    out
}

/// A stored event: the envelope every reader sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Position in the global order.
    pub position: Position,
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The stream (aggregate instance) the event belongs to.
    pub stream_id: StreamId,
    /// The stream's type, e.g. `order`.
    pub stream_type: String,
    /// Version of the stream after this event: 1 for a stream's first event.
    pub stream_version: u64,
    /// The event type name.
    pub event_type: String,
    /// Version of the payload's shape.
    pub schema_version: u32,
    /// The payload as JSON.
    pub payload: serde_json::Value,
    /// Metadata recorded with the event.
    pub metadata: Metadata,
    /// When the store committed the event.
    pub recorded_at: DateTime<Utc>,
}

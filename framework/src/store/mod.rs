//! The [`EventStore`] trait, its request and outcome types, and the append
//! rules every implementation shares.

pub mod follow;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{validate_type_name, EventEnvelope, NewEvent, Position, StreamId};
use crate::error::{InputError, Result, StoreError};

/// What the writer believes about the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version (its last event's version).
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the command saw: `Exact(v)` or `NoStream` for `v == 0`.
    pub fn from_seen(version: u64) -> Self {
        if version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }

    fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events to append to one stream, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The stream to append to.
    pub stream_id: StreamId,
    /// The stream's type (its aggregate type), e.g. `order`.
    pub stream_type: String,
    /// The version the writer expects the stream to be at.
    pub expected: ExpectedVersion,
    /// The events, in order. Must not be empty.
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// A new append request.
    pub fn new(
        stream_id: StreamId,
        stream_type: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            stream_id,
            stream_type: stream_type.into(),
            expected,
            events,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// Stream version of the first appended event.
    pub first_version: u64,
    /// Stream version after the append (of the last appended event).
    pub stream_version: u64,
    /// Global position of the first appended event.
    pub first_position: Position,
    /// Global position of the last appended event: the consistency token a
    /// client can wait on ("read at least this position").
    pub position: Position,
    /// True when these exact events were already stored (a retried request):
    /// nothing was written and this is the original outcome.
    pub duplicate: bool,
}

/// Which events a global read returns. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only events of these stream types.
    #[serde(default)]
    pub stream_types: Vec<String>,
    /// Only events of these event types.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// A filter that matches every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of the given stream types.
    pub fn stream_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        EventFilter {
            stream_types: types.into_iter().map(Into::into).collect(),
            event_types: Vec::new(),
        }
    }

    /// Only events of the given event types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        EventFilter {
            stream_types: Vec::new(),
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// True when the filter lets `e` through.
    pub fn matches(&self, e: &EventEnvelope) -> bool {
        (self.stream_types.is_empty() || self.stream_types.contains(&e.stream_type))
            && (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
    }
}

/// Limits on what one append may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most events in one append (default 1,000).
    pub max_events_per_append: usize,
    /// Largest serialised payload of one event, in bytes (default 256 KiB).
    pub max_payload_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_events_per_append: 1_000,
            max_payload_bytes: 256 * 1024,
        }
    }
}

/// The event store: the single source of truth.
///
/// Implementations: [`InMemoryEventStore`](crate::InMemoryEventStore) and,
/// with the `postgres` feature, [`PgEventStore`](crate::PgEventStore). Both
/// pass the same conformance suite (`strata::testing::conformance`).
///
/// **Invariants every implementation keeps:**
/// - an append lands all its events or none, and only if the stream is at
///   the expected version;
/// - positions are dense (1, 2, 3, ...) and an event becomes visible to
///   readers only after every event with a lower position is visible, so a
///   reader that follows [`read_all`](EventStore::read_all) never skips one;
/// - appending events whose ids are already stored, as the same append,
///   returns the original outcome and writes nothing.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends events to one stream atomically, at the expected version.
    fn append(&self, request: AppendRequest) -> impl Future<Output = Result<AppendOutcome>> + Send;

    /// Appends like [`append`](Self::append); a refused append comes back
    /// with the events after the expected version when the store read them
    /// in the same call ([`AppendRefused::missed`]), so a writer whose
    /// state was behind can decide again without reading the stream. The
    /// default reads nothing: `missed` is empty.
    fn append_or_missed(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = std::result::Result<AppendOutcome, AppendRefused>> + Send {
        let append = self.append(request);
        async move {
            append.await.map_err(|error| AppendRefused {
                error,
                missed: Vec::new(),
            })
        }
    }

    /// Reads a stream's events with `stream_version >= from_version`, in
    /// version order, at most `limit` of them.
    fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>>> + Send;

    /// Reads a stream's events like [`read_stream`](EventStore::read_stream),
    /// but only what loading an aggregate needs, with each payload left as
    /// JSON text so it decodes straight into the typed event (no
    /// intermediate `serde_json::Value`, no metadata).
    ///
    /// The default implementation derives it from `read_stream`; stores
    /// override it when they can do better.
    fn read_stream_raw(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StreamEvent>>> + Send {
        async move {
            let events = self.read_stream(stream_id, from_version, limit).await?;
            events
                .into_iter()
                .map(|e| {
                    Ok(StreamEvent {
                        payload: serde_json::to_string(&e.payload).map_err(StoreError::backend)?,
                        event_id: e.event_id,
                        stream_version: e.stream_version,
                        position: e.position,
                        event_type: e.event_type,
                        schema_version: e.schema_version,
                    })
                })
                .collect()
        }
    }

    /// Reads events with `position > after` in global order, at most `limit`,
    /// keeping only those the filter matches.
    fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>>> + Send;

    /// The position of the last visible event (0 when the store is empty).
    fn head(&self) -> impl Future<Output = Result<Position>> + Send;

    /// Waits until the head is beyond `after`, or `max_wait` passes, and
    /// returns the head. Wakes on new events without busy polling.
    ///
    /// With a zero `max_wait` it returns at once with the head as the store
    /// last heard of it: never beyond what readers can see, and cheaper than
    /// [`head`](EventStore::head) (the Postgres store answers from its
    /// LISTEN/NOTIFY watch while that is current).
    fn wait_for_head(
        &self,
        after: Position,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Position>> + Send;

    /// The stored events with these ids (in position order; unknown ids are
    /// left out).
    fn events_by_id(&self, ids: &[Uuid])
        -> impl Future<Output = Result<Vec<EventEnvelope>>> + Send;

    /// The stream's current version (0 when it does not exist).
    fn stream_version(&self, stream_id: &StreamId) -> impl Future<Output = Result<u64>> + Send;
}

/// An append that was refused ([`EventStore::append_or_missed`]).
#[derive(Debug)]
pub struct AppendRefused {
    /// Why.
    pub error: StoreError,
    /// For a [`StoreError::Conflict`], the stream's events after the
    /// expected version, in version order, as the store saw them when it
    /// refused the append: a prefix of them, or none (the store did not
    /// read them, or there were too many). A caller checks that they
    /// follow its state, and that they reach the conflict's `actual`
    /// version, before it relies on them.
    pub missed: Vec<StreamEvent>,
}

/// A stored event as an aggregate load reads it (see
/// [`EventStore::read_stream_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its version within the stream.
    pub stream_version: u64,
    /// Its global position.
    pub position: Position,
    /// Its type name.
    pub event_type: String,
    /// The schema version its payload was written with.
    pub schema_version: u32,
    /// The payload as JSON text (always valid JSON: the store wrote it).
    pub payload: String,
}

/// An append that passed validation, with payloads serialised once.
#[derive(Debug)]
pub(crate) struct ValidAppend {
    pub request: AppendRequest,
    /// `serde_json` text of each event's payload.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub payloads: Vec<String>,
    /// `serde_json` text of each event's metadata.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub metadata: Vec<String>,
}

/// Checks an append against the limits and against what the backend can
/// hold ([`NewEvent::check_storable`]). Nothing is written on error.
pub(crate) fn validate(request: AppendRequest, limits: &StoreLimits) -> Result<ValidAppend> {
    validate_type_name("stream type", &request.stream_type)?;
    if request.events.is_empty() {
        return Err(InputError::EmptyAppend.into());
    }
    if request.events.len() > limits.max_events_per_append {
        return Err(InputError::TooManyEvents {
            count: request.events.len(),
            max: limits.max_events_per_append,
        }
        .into());
    }
    let mut seen = HashSet::with_capacity(request.events.len());
    let mut payloads = Vec::with_capacity(request.events.len());
    let mut metadata = Vec::with_capacity(request.events.len());
    for e in &request.events {
        validate_type_name("event type", &e.event_type)?;
        if e.schema_version == 0 {
            return Err(InputError::InvalidSchemaVersion.into());
        }
        if !seen.insert(e.event_id) {
            return Err(InputError::RepeatedEventId {
                event_id: e.event_id,
            }
            .into());
        }
        // Before serialising: what the backend cannot hold (and values
        // nested too deep to serialise safely) never gets further.
        e.check_storable()?;
        let payload = serde_json::to_string(&e.payload).map_err(StoreError::backend)?;
        if payload.len() > limits.max_payload_bytes {
            return Err(InputError::PayloadTooLarge {
                event_id: e.event_id,
                size: payload.len(),
                max: limits.max_payload_bytes,
            }
            .into());
        }
        payloads.push(payload);
        metadata.push(serde_json::to_string(&e.metadata).map_err(StoreError::backend)?);
    }
    Ok(ValidAppend {
        request,
        payloads,
        metadata,
    })
}

/// A stored event, as far as the append rules need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredId {
    pub stream_id: StreamId,
    pub stream_version: u64,
    pub position: Position,
}

/// What the shared append rules decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write the events, versions starting at `current + 1`.
    Write { current: u64 },
    /// Already stored as this exact append: return the original outcome.
    Duplicate(AppendOutcome),
}

/// The append rules both stores share: idempotency by event id first, then
/// the expected-version check.
pub(crate) fn decide(
    request: &AppendRequest,
    current: u64,
    existing: &HashMap<Uuid, StoredId>,
) -> Result<Decision> {
    let found: Vec<(&Uuid, Option<&StoredId>)> = request
        .events
        .iter()
        .map(|e| (&e.event_id, existing.get(&e.event_id)))
        .collect();
    if let Some((first_id, Some(first))) = found.first() {
        let same_append = first.stream_id == request.stream_id
            && found.iter().enumerate().all(|(i, (_, s))| {
                s.is_some_and(|s| {
                    s.stream_id == request.stream_id
                        && s.stream_version == first.stream_version + i as u64
                })
            });
        if !same_append {
            return Err(StoreError::EventIdReused {
                event_id: **first_id,
            });
        }
        // `found` is non-empty here, so `last` exists.
        let last = found[found.len() - 1].1.unwrap_or(first);
        return Ok(Decision::Duplicate(AppendOutcome {
            stream_id: request.stream_id.clone(),
            first_version: first.stream_version,
            stream_version: last.stream_version,
            first_position: first.position,
            position: last.position,
            duplicate: true,
        }));
    }
    if let Some((id, _)) = found.iter().find(|(_, s)| s.is_some()) {
        return Err(StoreError::EventIdReused { event_id: **id });
    }
    if !request.expected.admits(current) {
        return Err(StoreError::Conflict {
            stream_id: request.stream_id.clone(),
            expected: request.expected,
            actual: current,
        });
    }
    Ok(Decision::Write { current })
}

/// The outcome of writing `count` events (at least one) to a stream at
/// version `current`, the first at `first_position`: both stores answer a
/// write with it.
pub(crate) fn written(
    stream_id: StreamId,
    current: u64,
    count: u64,
    first_position: Position,
) -> AppendOutcome {
    AppendOutcome {
        stream_id,
        first_version: current + 1,
        stream_version: current + count,
        first_position,
        position: Position(first_position.0 + count - 1),
        duplicate: false,
    }
}

/// Waits up to `max_wait` for `head` to move past `after`; returns the head
/// then, or at the timeout. Both stores' [`EventStore::wait_for_head`] end
/// here.
pub(crate) async fn wait_past(
    head: &tokio::sync::watch::Sender<Position>,
    after: Position,
    max_wait: Duration,
) -> Position {
    let mut rx = head.subscribe();
    let waited = tokio::time::timeout(max_wait, rx.wait_for(|h| *h > after)).await;
    match waited {
        Ok(Ok(h)) => *h,
        _ => *head.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::envelope::Metadata;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    fn request(expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest::new(sid("s-1"), "thing", expected, events)
    }

    fn one(expected: ExpectedVersion) -> AppendRequest {
        request(expected, vec![NewEvent::new("Added", json!({ "n": 1 }))])
    }

    fn input_error(r: Result<ValidAppend>) -> InputError {
        match r {
            Err(StoreError::Input(e)) => e,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    const LIMITS: StoreLimits = StoreLimits {
        max_events_per_append: 3,
        max_payload_bytes: 20,
    };

    #[test]
    fn validate_serialises_payloads_and_metadata_once() {
        let meta = Metadata::new().with_actor("alice");
        let events = vec![
            NewEvent::new("Added", json!({ "n": 1 })).with_metadata(meta.clone()),
            NewEvent::new("Removed", json!([1, 2])),
        ];
        let valid = validate(request(ExpectedVersion::Any, events.clone()), &LIMITS).unwrap();
        assert_eq!(valid.payloads, [r#"{"n":1}"#, "[1,2]"]);
        assert_eq!(valid.metadata[0], serde_json::to_string(&meta).unwrap());
        assert_eq!(valid.request.events, events);
    }

    #[test]
    fn validate_enforces_the_event_count_limit() {
        let events = |n: usize| (0..n).map(|_| NewEvent::new("E", json!(1))).collect();
        assert!(validate(request(ExpectedVersion::Any, events(3)), &LIMITS).is_ok());
        assert!(matches!(
            input_error(validate(request(ExpectedVersion::Any, events(4)), &LIMITS)),
            InputError::TooManyEvents { count: 4, max: 3 }
        ));
        assert!(matches!(
            input_error(validate(request(ExpectedVersion::Any, events(0)), &LIMITS)),
            InputError::EmptyAppend
        ));
    }

    #[test]
    fn validate_enforces_the_payload_limit_in_serialised_bytes() {
        // `{"s":"…"}` is 8 bytes around the string.
        let at_limit = NewEvent::new("E", json!({ "s": "x".repeat(12) }));
        let over = NewEvent::new("E", json!({ "s": "x".repeat(13) }));
        assert!(validate(request(ExpectedVersion::Any, vec![at_limit]), &LIMITS).is_ok());
        let id = over.event_id;
        match input_error(validate(request(ExpectedVersion::Any, vec![over]), &LIMITS)) {
            InputError::PayloadTooLarge {
                event_id,
                size,
                max,
            } => assert_eq!((event_id, size, max), (id, 21, 20)),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn validate_refuses_malformed_events() {
        let e = NewEvent::new("E", json!(1));
        type Case = (AppendRequest, fn(&InputError) -> bool);
        let cases: Vec<Case> = vec![
            (
                AppendRequest::new(
                    sid("s-1"),
                    "no spaces",
                    ExpectedVersion::Any,
                    vec![e.clone()],
                ),
                |e| matches!(e, InputError::InvalidTypeName { .. }),
            ),
            (
                request(ExpectedVersion::Any, vec![NewEvent::new("a.b", json!(1))]),
                |e| matches!(e, InputError::InvalidTypeName { .. }),
            ),
            (
                request(ExpectedVersion::Any, vec![e.clone().with_schema_version(0)]),
                |e| matches!(e, InputError::InvalidSchemaVersion),
            ),
            (request(ExpectedVersion::Any, vec![e.clone(), e]), |e| {
                matches!(e, InputError::RepeatedEventId { .. })
            }),
            (
                request(
                    ExpectedVersion::Any,
                    vec![NewEvent::new("E", json!("a\u{0}"))],
                ),
                |e| matches!(e, InputError::NulCharacter { .. }),
            ),
        ];
        for (r, is_expected) in cases {
            let err = input_error(validate(r.clone(), &StoreLimits::default()));
            assert!(is_expected(&err), "wrong error {err:?} for {r:?}");
        }
    }

    #[test]
    fn expected_version_admits() {
        let cases = [
            (ExpectedVersion::Any, 0, true),
            (ExpectedVersion::Any, 7, true),
            (ExpectedVersion::NoStream, 0, true),
            (ExpectedVersion::NoStream, 1, false),
            (ExpectedVersion::Exact(3), 3, true),
            (ExpectedVersion::Exact(3), 2, false),
            (ExpectedVersion::Exact(3), 4, false),
            (ExpectedVersion::Exact(0), 0, true),
        ];
        for (expected, current, admitted) in cases {
            assert_eq!(
                expected.admits(current),
                admitted,
                "{expected} at {current}"
            );
        }
        assert_eq!(ExpectedVersion::from_seen(0), ExpectedVersion::NoStream);
        assert_eq!(ExpectedVersion::from_seen(4), ExpectedVersion::Exact(4));
    }

    #[test]
    fn decide_writes_at_the_expected_version() {
        let none = HashMap::new();
        assert_eq!(
            decide(&one(ExpectedVersion::NoStream), 0, &none).unwrap(),
            Decision::Write { current: 0 }
        );
        assert_eq!(
            decide(&one(ExpectedVersion::Exact(5)), 5, &none).unwrap(),
            Decision::Write { current: 5 }
        );
        assert_eq!(
            decide(&one(ExpectedVersion::Any), 9, &none).unwrap(),
            Decision::Write { current: 9 }
        );
        for (expected, current) in [
            (ExpectedVersion::NoStream, 2),
            (ExpectedVersion::Exact(5), 4),
            (ExpectedVersion::Exact(5), 6),
            (ExpectedVersion::Exact(1), 0),
        ] {
            match decide(&one(expected), current, &none) {
                Err(StoreError::Conflict {
                    stream_id,
                    expected: e,
                    actual,
                }) => assert_eq!((stream_id, e, actual), (sid("s-1"), expected, current)),
                other => panic!("expected a conflict for {expected} at {current}, got {other:?}"),
            }
        }
    }

    fn stored(stream: &str, version: u64, position: u64) -> StoredId {
        StoredId {
            stream_id: sid(stream),
            stream_version: version,
            position: Position(position),
        }
    }

    #[test]
    fn decide_returns_the_first_outcome_for_the_same_append() {
        let events = vec![NewEvent::new("E", json!(1)), NewEvent::new("E", json!(2))];
        let existing: HashMap<Uuid, StoredId> = [
            (events[0].event_id, stored("s-1", 3, 10)),
            (events[1].event_id, stored("s-1", 4, 12)),
        ]
        .into_iter()
        .collect();
        // Even with a stale expected version: it is a retry, not a conflict.
        let decision = decide(&request(ExpectedVersion::Exact(2), events), 9, &existing).unwrap();
        assert_eq!(
            decision,
            Decision::Duplicate(AppendOutcome {
                stream_id: sid("s-1"),
                first_version: 3,
                stream_version: 4,
                first_position: Position(10),
                position: Position(12),
                duplicate: true,
            })
        );
    }

    #[test]
    fn decide_refuses_ids_reused_in_another_shape() {
        let events = vec![NewEvent::new("E", json!(1)), NewEvent::new("E", json!(2))];
        let (a, b) = (events[0].event_id, events[1].event_id);
        let r = request(ExpectedVersion::Any, events);
        let cases: Vec<(Vec<(Uuid, StoredId)>, Uuid)> = vec![
            // Stored on another stream.
            (vec![(a, stored("s-2", 1, 1)), (b, stored("s-2", 2, 2))], a),
            // Only the first is stored.
            (vec![(a, stored("s-1", 1, 1))], a),
            // Only a later one is stored.
            (vec![(b, stored("s-1", 1, 1))], b),
            // Both, but not as consecutive versions.
            (vec![(a, stored("s-1", 1, 1)), (b, stored("s-1", 3, 3))], a),
            // Both, in the other order.
            (vec![(a, stored("s-1", 2, 2)), (b, stored("s-1", 1, 1))], a),
        ];
        for (existing, reused) in cases {
            let existing: HashMap<Uuid, StoredId> = existing.into_iter().collect();
            match decide(&r, 5, &existing) {
                Err(StoreError::EventIdReused { event_id }) => assert_eq!(event_id, reused),
                other => panic!("expected EventIdReused for {existing:?}, got {other:?}"),
            }
        }
    }
}

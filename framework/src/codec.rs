//! Typed events: encoding to and decoding from the store's JSON envelopes,
//! with upcasting of old schema versions on every read path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::{EventEnvelope, Position, StreamId};
use crate::store::StreamEvent;

/// A domain event type: usually an enum with one variant per event type.
///
/// The enum must be *adjacently tagged* with `type` and `data`, so that
/// each variant's (renamed) name is its event type and its content is the
/// payload:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum CounterEvent {
///     #[serde(rename = "Incremented")]
///     Incremented { by: u32 },
///     #[serde(rename = "Reset")]
///     Reset,
/// }
///
/// impl strata::DomainEvent for CounterEvent {}
///
/// let (ty, payload) = strata::encode(&CounterEvent::Incremented { by: 2 }).unwrap();
/// assert_eq!(ty, "Incremented");
/// assert_eq!(payload, serde_json::json!({ "by": 2 }));
/// ```
///
/// The names are the wire format: renaming a variant's Rust name is safe as
/// long as the `serde(rename)` stays. Changing a payload's shape means a new
/// schema version ([`DomainEvent::schema_version`]) and an upcaster
/// ([`Upcasters`]) from the old one.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The stream type whose streams hold these events (the aggregate's
    /// `STREAM_TYPE`), when they belong to one. Projections and process
    /// managers that follow these events subscribe to it; `None` follows
    /// every stream type.
    const STREAM_TYPE: Option<&'static str> = None;

    /// The current schema version of `event_type`'s payload (default 1).
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }
}

/// Why a stored event could not become a typed event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// No variant of the event enum has this type name.
    UnknownEventType,
    /// The payload does not fit the type's current shape.
    InvalidPayload(String),
    /// The stored schema version is older than current and no upcaster
    /// covers it.
    MissingUpcaster {
        /// The version that has no upcaster.
        from_version: u32,
    },
    /// An upcaster refused the payload.
    UpcastFailed {
        /// The version the upcaster started from.
        from_version: u32,
        /// What it said.
        reason: String,
    },
    /// The stored schema version is newer than this code knows (an older
    /// binary reading events written by a newer one).
    NewerSchema {
        /// The newest version this code knows.
        known: u32,
    },
    /// The event type does not serialise as `{"type": ..., "data": ...}`.
    NotAdjacentlyTagged,
}

/// A stored event that could not be decoded, named by id, stream and position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode event {event_type} v{schema_version} ({event_id}, stream {stream_id}, position {position}): {kind}")]
pub struct DecodeError {
    /// The event's id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its position (0 for an event not stored yet).
    pub position: Position,
    /// Its type name.
    pub event_type: String,
    /// Its stored schema version.
    pub schema_version: u32,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::UnknownEventType => f.write_str("unknown event type"),
            DecodeErrorKind::InvalidPayload(r) => write!(f, "invalid payload: {r}"),
            DecodeErrorKind::MissingUpcaster { from_version } => {
                write!(f, "no upcaster from schema version {from_version}")
            }
            DecodeErrorKind::UpcastFailed {
                from_version,
                reason,
            } => write!(f, "upcaster from version {from_version} failed: {reason}"),
            DecodeErrorKind::NewerSchema { known } => {
                write!(f, "schema is newer than this code knows (v{known})")
            }
            DecodeErrorKind::NotAdjacentlyTagged => {
                f.write_str("the event type must be #[serde(tag = \"type\", content = \"data\")]")
            }
        }
    }
}

/// Encodes a typed event into its type name and JSON payload.
pub fn encode<E: DomainEvent>(event: &E) -> Result<(String, Value), DecodeErrorKind> {
    let value =
        serde_json::to_value(event).map_err(|e| DecodeErrorKind::InvalidPayload(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(DecodeErrorKind::NotAdjacentlyTagged);
    };
    let Some(Value::String(ty)) = map.remove("type") else {
        return Err(DecodeErrorKind::NotAdjacentlyTagged);
    };
    let payload = map.remove("data").unwrap_or(Value::Null);
    Ok((ty, payload))
}

/// Decodes a payload already at the current schema version.
pub fn decode<E: DomainEvent>(event_type: &str, payload: Value) -> Result<E, DecodeErrorKind> {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert("type".into(), Value::String(event_type.to_owned()));
    if !payload.is_null() {
        map.insert("data".into(), payload);
    }
    serde_json::from_value(Value::Object(map)).map_err(classify)
}

/// Decodes a payload already at the current schema version without
/// copying it: the typed event is read straight from the borrowed JSON
/// (the projection and process-manager path, where several readers decode
/// the same envelope).
pub fn decode_ref<E: DomainEvent>(event_type: &str, payload: &Value) -> Result<E, DecodeErrorKind> {
    E::deserialize(Tagged {
        ty: event_type,
        data: payload,
    })
    .map_err(classify)
}

/// An adjacently tagged event, `{"type": ty, "data": data}`, as a serde
/// deserializer over borrowed parts (`data` is left out when null, as
/// [`encode`] leaves it out for unit variants).
struct Tagged<'a> {
    ty: &'a str,
    data: &'a Value,
}

impl<'de> serde::Deserializer<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TaggedFields {
            tagged: self,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The fields of a [`Tagged`]: `type`, then `data` unless it is null.
struct TaggedFields<'a> {
    tagged: Tagged<'a>,
    /// 0: `type` next, 1: its value, 2: `data` next, 3: its value, 4: done.
    next: u8,
}

impl<'de> serde::de::MapAccess<'de> for TaggedFields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::value::BorrowedStrDeserializer;
        let key = match self.next {
            0 => "type",
            2 if !self.tagged.data.is_null() => "data",
            _ => return Ok(None),
        };
        self.next += 1;
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::value::BorrowedStrDeserializer;
        let at = self.next;
        self.next += 1;
        match at {
            1 => seed.deserialize(BorrowedStrDeserializer::new(self.tagged.ty)),
            _ => seed.deserialize(self.tagged.data),
        }
    }
}

/// Decodes a payload already at the current schema version from its JSON
/// text, without building a `serde_json::Value` first (the aggregate load
/// path).
pub fn decode_json<E: DomainEvent>(event_type: &str, payload: &str) -> Result<E, DecodeErrorKind> {
    let mut doc = Vec::with_capacity(payload.len() + event_type.len() + 20);
    doc.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut doc, event_type)
        .map_err(|e| DecodeErrorKind::InvalidPayload(e.to_string()))?;
    if payload.trim() != "null" {
        doc.extend_from_slice(b",\"data\":");
        doc.extend_from_slice(payload.as_bytes());
    }
    doc.push(b'}');
    serde_json::from_slice(&doc).map_err(classify)
}

fn classify(e: serde_json::Error) -> DecodeErrorKind {
    let msg = e.to_string();
    if msg.starts_with("unknown variant") {
        DecodeErrorKind::UnknownEventType
    } else {
        DecodeErrorKind::InvalidPayload(msg)
    }
}

type UpcastFn = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// Upcasters per event type and schema version: each turns a payload of
/// version *n* into version *n + 1*. Chains run until no upcaster applies.
///
/// ```
/// use serde_json::json;
/// let up = strata::Upcasters::new().register("ItemAdded", 1, |mut p| {
///     // v1 had `qty`; v2 calls it `quantity`.
///     let qty = p["qty"].take();
///     Ok(json!({ "sku": p["sku"], "quantity": qty }))
/// });
/// let (v, p) = up.upcast("ItemAdded", 1, json!({ "sku": "A", "qty": 2 })).unwrap();
/// assert_eq!((v, p), (2, json!({ "sku": "A", "quantity": 2 })));
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    map: HashMap<(String, u32), Arc<UpcastFn>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.map.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters")
            .field("registered", &keys)
            .finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the upcaster from `from_version` to `from_version + 1` of `event_type`.
    pub fn register<F>(mut self, event_type: impl Into<String>, from_version: u32, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.map
            .insert((event_type.into(), from_version), Arc::new(f));
        self
    }

    /// True when no upcaster is registered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Runs the upcaster chain from `version`; returns the final version and
    /// payload, or the version that failed with the reason.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        mut payload: Value,
    ) -> Result<(u32, Value), (u32, String)> {
        if self.map.is_empty() {
            return Ok((version, payload));
        }
        while let Some(f) = self.map.get(&(event_type.to_owned(), version)) {
            payload = f(payload).map_err(|reason| (version, reason))?;
            version += 1;
        }
        Ok((version, payload))
    }

    /// Upcasts a stored envelope in place to the newest version the
    /// upcasters reach (for readers of raw envelopes: replay, projections).
    pub fn apply(&self, envelope: &mut EventEnvelope) -> Result<(), DecodeError> {
        if self.map.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut envelope.payload);
        match self.upcast(&envelope.event_type, envelope.schema_version, payload) {
            Ok((v, p)) => {
                envelope.schema_version = v;
                envelope.payload = p;
                Ok(())
            }
            Err((from_version, reason)) => Err(decode_error(
                envelope,
                DecodeErrorKind::UpcastFailed {
                    from_version,
                    reason,
                },
            )),
        }
    }

    /// Decodes a stored envelope into a typed event, upcasting first.
    pub fn decode<E: DomainEvent>(&self, envelope: &EventEnvelope) -> Result<E, DecodeError> {
        self.decode_owned(envelope.clone())
    }

    /// Like [`decode`](Self::decode), consuming the envelope (no payload copy).
    pub fn decode_owned<E: DomainEvent>(
        &self,
        mut envelope: EventEnvelope,
    ) -> Result<E, DecodeError> {
        let envelope_payload = std::mem::take(&mut envelope.payload);
        let envelope = &envelope;
        let (version, payload) = self
            .upcast(
                &envelope.event_type,
                envelope.schema_version,
                envelope_payload,
            )
            .map_err(|(from_version, reason)| {
                decode_error(
                    envelope,
                    DecodeErrorKind::UpcastFailed {
                        from_version,
                        reason,
                    },
                )
            })?;
        let current = E::schema_version(&envelope.event_type);
        if version < current {
            return Err(decode_error(
                envelope,
                DecodeErrorKind::MissingUpcaster {
                    from_version: version,
                },
            ));
        }
        if version > current {
            return Err(decode_error(
                envelope,
                DecodeErrorKind::NewerSchema { known: current },
            ));
        }
        decode(&envelope.event_type, payload).map_err(|kind| decode_error(envelope, kind))
    }

    /// Decodes an event read by [`EventStore::read_stream_raw`]: straight
    /// from the JSON text when no upcaster applies, through the upcaster
    /// chain otherwise. The same rules and errors as
    /// [`decode_owned`](Self::decode_owned).
    ///
    /// [`EventStore::read_stream_raw`]: crate::EventStore::read_stream_raw
    pub fn decode_raw<E: DomainEvent>(
        &self,
        stream_id: &StreamId,
        event: StreamEvent,
    ) -> Result<E, DecodeError> {
        let upcast = !self.map.is_empty()
            && self
                .map
                .contains_key(&(event.event_type.clone(), event.schema_version));
        let error = |event: &StreamEvent, kind| DecodeError {
            event_id: event.event_id,
            stream_id: stream_id.to_string(),
            position: event.position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            kind,
        };
        if upcast {
            let payload: Value = serde_json::from_str(&event.payload)
                .map_err(|e| error(&event, DecodeErrorKind::InvalidPayload(e.to_string())))?;
            let envelope = EventEnvelope {
                position: event.position,
                event_id: event.event_id,
                stream_id: stream_id.clone(),
                stream_type: String::new(),
                stream_version: event.stream_version,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload,
                metadata: Default::default(),
                recorded_at: Default::default(),
            };
            return self.decode_owned(envelope);
        }
        let current = E::schema_version(&event.event_type);
        if event.schema_version < current {
            return Err(error(
                &event,
                DecodeErrorKind::MissingUpcaster {
                    from_version: event.schema_version,
                },
            ));
        }
        if event.schema_version > current {
            return Err(error(
                &event,
                DecodeErrorKind::NewerSchema { known: current },
            ));
        }
        decode_json(&event.event_type, &event.payload).map_err(|kind| error(&event, kind))
    }
}

pub(crate) fn decode_error(envelope: &EventEnvelope, kind: DecodeErrorKind) -> DecodeError {
    DecodeError {
        event_id: envelope.event_id,
        stream_id: envelope.stream_id.to_string(),
        position: envelope.position,
        event_type: envelope.event_type.clone(),
        schema_version: envelope.schema_version,
        kind,
    }
}

/// Builds the error for an event that is not stored yet.
pub(crate) fn unstored_decode_error(
    stream_id: &StreamId,
    event_type: &str,
    kind: DecodeErrorKind,
) -> DecodeError {
    DecodeError {
        event_id: Uuid::nil(),
        stream_id: stream_id.to_string(),
        position: Position::START,
        event_type: event_type.to_owned(),
        schema_version: 0,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Ev {
        #[serde(rename = "Added")]
        Added { sku: String, qty: u32 },
        #[serde(rename = "Cleared")]
        Cleared,
        #[serde(rename = "Odd \"name\"")]
        Odd(u8),
    }

    impl DomainEvent for Ev {
        fn schema_version(event_type: &str) -> u32 {
            if event_type == "Added" {
                2
            } else {
                1
            }
        }
    }

    fn raw(event_type: &str, schema_version: u32, payload: Value) -> StreamEvent {
        StreamEvent {
            event_id: Uuid::nil(),
            stream_version: 1,
            position: Position(7),
            event_type: event_type.into(),
            schema_version,
            payload: payload.to_string(),
        }
    }

    #[test]
    fn decoding_json_text_matches_decoding_values() {
        for event in [
            Ev::Added {
                sku: "A-1".into(),
                qty: 2,
            },
            Ev::Cleared,
            Ev::Odd(9),
        ] {
            let (ty, payload) = encode(&event).unwrap();
            let from_value: Ev = decode(&ty, payload.clone()).unwrap();
            let from_text: Ev = decode_json(&ty, &payload.to_string()).unwrap();
            let borrowed: Ev = decode_ref(&ty, &payload).unwrap();
            assert_eq!(from_value, event);
            assert_eq!(from_text, event);
            assert_eq!(borrowed, event);
        }
        assert_eq!(
            decode_json::<Ev>("Nope", "{}").unwrap_err(),
            DecodeErrorKind::UnknownEventType
        );
        assert!(matches!(
            decode_json::<Ev>("Added", r#"{"sku": 5}"#).unwrap_err(),
            DecodeErrorKind::InvalidPayload(_)
        ));
        // The borrowed decoder fails the same way as the others.
        assert_eq!(
            decode_ref::<Ev>("Nope", &json!({})).unwrap_err(),
            DecodeErrorKind::UnknownEventType
        );
        for (ty, payload) in [
            ("Added", json!({"sku": 5})),
            ("Added", json!({"sku": "A-1"})),
            ("Added", Value::Null),
            ("Odd \"name\"", json!("nine")),
            ("Added", json!([1, 2])),
        ] {
            let borrowed = decode_ref::<Ev>(ty, &payload).unwrap_err();
            let by_value = decode::<Ev>(ty, payload.clone()).unwrap_err();
            assert!(
                matches!(borrowed, DecodeErrorKind::InvalidPayload(_)),
                "{ty} {payload}: {borrowed:?}"
            );
            assert!(matches!(by_value, DecodeErrorKind::InvalidPayload(_)));
        }
        // A unit variant with a payload it does not need decodes as before.
        assert_eq!(
            decode_ref::<Ev>("Cleared", &json!({"extra": 1})).ok(),
            decode::<Ev>("Cleared", json!({"extra": 1})).ok()
        );
    }

    #[test]
    fn raw_decoding_keeps_the_version_rules_and_upcasts() {
        let stream = StreamId::new("s-1").unwrap();
        let none = Upcasters::new();
        let current = raw("Added", 2, json!({ "sku": "A", "qty": 1 }));
        assert_eq!(
            none.decode_raw::<Ev>(&stream, current).unwrap(),
            Ev::Added {
                sku: "A".into(),
                qty: 1
            }
        );
        let old = raw("Added", 1, json!({ "sku": "A", "count": 4 }));
        let err = none.decode_raw::<Ev>(&stream, old.clone()).unwrap_err();
        assert_eq!(
            err.kind,
            DecodeErrorKind::MissingUpcaster { from_version: 1 }
        );
        assert_eq!((err.position, err.stream_id.as_str()), (Position(7), "s-1"));
        let newer = raw("Added", 3, json!({}));
        assert_eq!(
            none.decode_raw::<Ev>(&stream, newer).unwrap_err().kind,
            DecodeErrorKind::NewerSchema { known: 2 }
        );
        let up = Upcasters::new().register("Added", 1, |mut p| {
            Ok(json!({ "sku": p["sku"].take(), "qty": p["count"].take() }))
        });
        assert_eq!(
            up.decode_raw::<Ev>(&stream, old).unwrap(),
            Ev::Added {
                sku: "A".into(),
                qty: 4
            }
        );
        let failing = Upcasters::new().register("Added", 1, |_| Err("no".to_string()));
        let err = failing
            .decode_raw::<Ev>(&stream, raw("Added", 1, json!({})))
            .unwrap_err();
        assert!(matches!(
            err.kind,
            DecodeErrorKind::UpcastFailed {
                from_version: 1,
                ..
            }
        ));
    }
}

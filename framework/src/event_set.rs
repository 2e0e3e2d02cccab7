//! The typed read side's input: the events a projection or a process
//! manager follows, decoded once by the runtime.
//!
//! An [`EventSet`] says which events to subscribe to and how an envelope
//! becomes a typed value. Every [`DomainEvent`] is one (the events of one
//! aggregate, with the stream type it declares); [`event_set!`](crate::event_set)
//! makes an enum over the events of several aggregates; [`EventEnvelope`]
//! itself is the raw escape hatch (every event, undecoded).
//!
//! The runtime upcasts an envelope, decodes it once, and hands the
//! projection a [`Recorded`]: the typed event with its envelope (position,
//! stream, metadata). An event type the set does not know is skipped; a
//! payload that does not fit is an error, retried and then dead-lettered
//! like any failure to apply.

use crate::codec::{decode_error as error, DecodeError, DecodeErrorKind, DomainEvent};
use crate::envelope::{EventEnvelope, Position, StreamId};
use crate::store::EventFilter;

/// A set of events a projection or process manager follows.
pub trait EventSet: Sized + Send + Sync + 'static {
    /// What to subscribe to: the stream types of the set (every event when
    /// the set does not know them).
    fn filter() -> EventFilter;

    /// The typed event of an (upcast) envelope: `Ok(None)` when the event
    /// is not in the set, an error when its payload does not fit.
    fn decode(envelope: &EventEnvelope) -> Result<Option<Self>, DecodeError>;
}

/// Decodes `envelope` as `E` if it is one of `E`'s events: its stream type
/// (when `E` declares one) and its event type. The schema version must be
/// the current one (upcasters run before).
pub fn decode_event<E: DomainEvent>(envelope: &EventEnvelope) -> Result<Option<E>, DecodeError> {
    if E::STREAM_TYPE.is_some_and(|t| t != envelope.stream_type) {
        return Ok(None);
    }
    let current = E::schema_version(&envelope.event_type);
    let event = match crate::codec::decode_ref::<E>(&envelope.event_type, &envelope.payload) {
        Ok(e) => e,
        Err(DecodeErrorKind::UnknownEventType) => return Ok(None),
        Err(kind) => return Err(error(envelope, kind)),
    };
    if envelope.schema_version < current {
        return Err(error(
            envelope,
            DecodeErrorKind::MissingUpcaster {
                from_version: envelope.schema_version,
            },
        ));
    }
    if envelope.schema_version > current {
        return Err(error(
            envelope,
            DecodeErrorKind::NewerSchema { known: current },
        ));
    }
    Ok(Some(event))
}

impl<E: DomainEvent> EventSet for E {
    fn filter() -> EventFilter {
        match E::STREAM_TYPE {
            Some(t) => EventFilter::stream_types([t]),
            None => EventFilter::all(),
        }
    }

    fn decode(envelope: &EventEnvelope) -> Result<Option<Self>, DecodeError> {
        decode_event(envelope)
    }
}

/// Every event, as stored: for the rare projection that reads payloads
/// itself.
impl EventSet for EventEnvelope {
    fn filter() -> EventFilter {
        EventFilter::all()
    }

    fn decode(envelope: &EventEnvelope) -> Result<Option<Self>, DecodeError> {
        Ok(Some(envelope.clone()))
    }
}

/// An event as the read side receives it: decoded, with its envelope.
/// Derefs to the event.
#[derive(Debug)]
pub struct Recorded<'a, E> {
    /// The typed event.
    pub event: &'a E,
    /// The stored envelope (position, stream, metadata, raw payload).
    pub envelope: &'a EventEnvelope,
}

impl<E> Clone for Recorded<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Recorded<'_, E> {}

impl<'a, E> Recorded<'a, E> {
    /// The event's global position.
    pub fn position(&self) -> Position {
        self.envelope.position
    }

    /// Its stream.
    pub fn stream_id(&self) -> &'a StreamId {
        &self.envelope.stream_id
    }

    /// The id part of its stream id: `MUG-01` for `product-MUG-01` (stream
    /// type `product`), when the stream id is built that way.
    pub fn stream_key(&self) -> Option<&'a str> {
        self.envelope
            .stream_id
            .as_str()
            .strip_prefix(self.envelope.stream_type.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .filter(|rest| !rest.is_empty())
    }

    /// When it was recorded.
    pub fn recorded_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.envelope.recorded_at
    }
}

impl<E> std::ops::Deref for Recorded<'_, E> {
    type Target = E;

    fn deref(&self) -> &E {
        self.event
    }
}

/// An [`EventSet`] over the events of several aggregates: an enum with one
/// variant per [`DomainEvent`] type, each of which declares its
/// `STREAM_TYPE`.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # #[serde(tag = "type", content = "data")]
/// # pub enum ProductEvent { Registered { sku: String } }
/// # impl strata::DomainEvent for ProductEvent { const STREAM_TYPE: Option<&'static str> = Some("product"); }
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # #[serde(tag = "type", content = "data")]
/// # pub enum StockEvent { Restocked { quantity: u32 } }
/// # impl strata::DomainEvent for StockEvent { const STREAM_TYPE: Option<&'static str> = Some("inventory"); }
/// strata::event_set! {
///     /// What the catalog follows.
///     pub enum CatalogEvent {
///         /// Product events.
///         Product(ProductEvent),
///         /// Stock events.
///         Stock(StockEvent),
///     }
/// }
/// use strata::EventSet;
/// assert_eq!(CatalogEvent::filter().stream_types, ["product", "inventory"]);
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($ty:ty) ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant($ty) ),+
        }

        impl $crate::EventSet for $name {
            fn filter() -> $crate::EventFilter {
                let mut types = ::std::vec::Vec::new();
                $(
                    match <$ty as $crate::DomainEvent>::STREAM_TYPE {
                        Some(t) => types.push(t),
                        None => return $crate::EventFilter::all(),
                    }
                )+
                $crate::EventFilter::stream_types(types)
            }

            fn decode(
                envelope: &$crate::EventEnvelope,
            ) -> ::std::result::Result<::std::option::Option<Self>, $crate::DecodeError> {
                $(
                    if <$ty as $crate::DomainEvent>::STREAM_TYPE
                        .is_none_or(|t| t == envelope.stream_type)
                    {
                        if let Some(e) = $crate::decode_event::<$ty>(envelope)? {
                            return Ok(Some($name::$variant(e)));
                        }
                    }
                )+
                Ok(None)
            }
        }
    };
}

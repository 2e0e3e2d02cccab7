//! Given / when / then for aggregates: no runtime, no database.
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use strata::{Aggregate, AggregateTest, DomainEvent};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # #[serde(tag = "type", content = "data")]
//! # enum Event { Incremented { by: u32 } }
//! # impl DomainEvent for Event {}
//! # #[derive(Debug, thiserror::Error)]
//! # #[error("capped")] struct Capped;
//! # #[derive(Debug, Default, Clone, Serialize, Deserialize)]
//! # struct Counter { value: u64 }
//! # impl Aggregate for Counter {
//! #     const STREAM_TYPE: &'static str = "counter";
//! #     type Command = u32; type Event = Event; type Error = Capped;
//! #     fn decide(&self, by: &u32) -> Result<Vec<Event>, Capped> {
//! #         if self.value + u64::from(*by) > 10 { Err(Capped) } else { Ok(vec![Event::Incremented { by: *by }]) }
//! #     }
//! #     fn evolve(&mut self, e: &Event) { let Event::Incremented { by } = e; self.value += u64::from(*by); }
//! # }
//! AggregateTest::<Counter>::given([Event::Incremented { by: 9 }])
//!     .when(1)
//!     .then_expect_events([Event::Incremented { by: 1 }]);
//!
//! AggregateTest::<Counter>::given([Event::Incremented { by: 9 }])
//!     .when(2)
//!     .then_expect_error(|e| matches!(e, Capped));
//! ```

use std::fmt::Debug;

use serde::Serialize;

use crate::codec::{decode, encode, DomainEvent};
use crate::write::aggregate::Aggregate;

/// A test of one aggregate: the events that happened, then a command.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state these events build.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for e in events {
            state.evolve(&roundtrip(&e));
        }
        AggregateTest { state }
    }

    /// Starts from a new aggregate.
    pub fn given_nothing() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// Whether `principal` may have `command` decided on this state
    /// ([`Aggregate::authorize`]), as the command handler asks before
    /// deciding.
    pub fn authorize(
        &self,
        command: &A::Command,
        principal: &crate::access::Principal,
    ) -> Result<(), crate::access::Forbidden> {
        self.state.authorize(command, principal)
    }

    /// Decides the command.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(&command);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The result of a decision, to check.
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

/// An event as it will be stored: type, schema version and payload. What
/// `insta` snapshots pin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodedEvent {
    /// The event type name.
    pub event_type: String,
    /// The schema version it is written with.
    pub schema_version: u32,
    /// The payload.
    pub payload: serde_json::Value,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly these events.
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                apply(self.state, &events)
            }
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e:?}"),
        }
    }

    /// Asserts the command was refused with an error that `check` accepts.
    pub fn then_expect_error(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
        A::Error: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected an error, the command produced {events:?}"),
            Err(e) => assert!(
                check(&e),
                "the command was refused with another error: {e:?}"
            ),
        }
    }

    /// The produced events as they will be stored (type, schema version,
    /// payload), for `insta::assert_json_snapshot!`. Panics if refused.
    pub fn then_encoded(self) -> Vec<EncodedEvent>
    where
        A::Error: Debug,
    {
        let events = self.result.expect("the command was refused");
        events
            .iter()
            .map(|e| {
                let (event_type, payload) = encode(e).expect("event encodes");
                EncodedEvent {
                    schema_version: A::Event::schema_version(&event_type),
                    event_type,
                    payload,
                }
            })
            .collect()
    }

    /// The raw result, for custom checks.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// Every event a test touches goes through the wire format and back, so a
/// payload that does not round-trip fails the test, not production.
fn roundtrip<E: DomainEvent>(e: &E) -> E {
    let (ty, payload) = encode(e).expect("event encodes");
    decode(&ty, payload).expect("event decodes from its own encoding")
}

fn apply<A: Aggregate>(mut state: A, events: &[A::Event]) -> A {
    for e in events {
        state.evolve(&roundtrip(e));
    }
    state
}

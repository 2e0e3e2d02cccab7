//! A small aggregate shared by the tests: a counter with a cap.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use strata::{Aggregate, DomainEvent, FailurePolicy, Projection, ProjectionError, Recorded};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CounterEvent {
    #[serde(rename = "CounterIncremented")]
    Incremented { by: u64 },
    #[serde(rename = "CounterReset")]
    Reset,
}

impl DomainEvent for CounterEvent {
    const STREAM_TYPE: Option<&'static str> = Some("counter");
}

#[derive(Debug, Clone, PartialEq)]
pub enum CounterCommand {
    Increment(u64),
    IncrementTwice(u64),
    Reset,
    Nothing,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CounterError {
    #[error("the counter would pass its cap of {cap}")]
    Capped { cap: u64 },
    #[error("increments must be positive")]
    Zero,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub value: u64,
    pub increments: u64,
}

pub const CAP: u64 = 1_000_000;

impl Aggregate for Counter {
    const STREAM_TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn decide(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Increment(0) | CounterCommand::IncrementTwice(0) => {
                Err(CounterError::Zero)
            }
            CounterCommand::Increment(by) if self.value + by > CAP => {
                Err(CounterError::Capped { cap: CAP })
            }
            CounterCommand::Increment(by) => Ok(vec![CounterEvent::Incremented { by: *by }]),
            CounterCommand::IncrementTwice(by) => Ok(vec![
                CounterEvent::Incremented { by: *by },
                CounterEvent::Incremented { by: *by },
            ]),
            CounterCommand::Reset => Ok(vec![CounterEvent::Reset]),
            CounterCommand::Nothing => Ok(vec![]),
        }
    }

    fn evolve(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Incremented { by } => {
                self.value += by;
                self.increments += 1;
            }
            CounterEvent::Reset => self.value = 0,
        }
    }
}

/// A counter's total, as the `Totals` projection keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Total {
    pub value: u64,
    pub events: u64,
}

/// Totals per counter stream. A payload with a `poison` field fails.
pub struct Totals {
    pub name: &'static str,
    pub policy: FailurePolicy,
}

impl Totals {
    /// The projection named `name`, halting on a failing event.
    pub fn named(name: &'static str) -> Totals {
        Totals {
            name,
            policy: FailurePolicy::Halt,
        }
    }
}

impl Projection for Totals {
    type Event = CounterEvent;
    type Doc = Total;
    fn name(&self) -> &str {
        self.name
    }
    fn keys(&self, e: Recorded<'_, CounterEvent>) -> Vec<String> {
        vec![e.stream_id().to_string()]
    }
    fn apply(
        &self,
        _key: &str,
        doc: Option<Total>,
        e: Recorded<'_, CounterEvent>,
    ) -> Result<Option<Total>, ProjectionError> {
        if e.envelope.payload.get("poison").is_some() {
            return Err(ProjectionError::new("poison payload"));
        }
        let mut t = doc.unwrap_or_default();
        t.events += 1;
        match e.event {
            CounterEvent::Incremented { by } => t.value += by,
            CounterEvent::Reset => t.value = 0,
        }
        Ok(Some(t))
    }
    fn on_failure(&self) -> FailurePolicy {
        self.policy
    }
}

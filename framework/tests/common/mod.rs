//! A small aggregate shared by the tests: a counter with a cap.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use strata::{Aggregate, DomainEvent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CounterEvent {
    #[serde(rename = "CounterIncremented")]
    Incremented { by: u64 },
    #[serde(rename = "CounterReset")]
    Reset,
}

impl DomainEvent for CounterEvent {}

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

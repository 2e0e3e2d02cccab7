//! Propagation: how appended events leave the store, and how views announce
//! what changed.
//!
//! - `nats` (feature `nats`): the `Relay` publishes the store's global order
//!   into one JetStream stream (sequence = position); `JetStreamBus`
//!   delivers it to projectors and process managers in other processes.
//! - [`bus`]: the [`EventBus`](crate::EventBus) trait every subscriber reads
//!   from, [`InProcessBus`](crate::InProcessBus) (follows the store
//!   directly, for the embedded mode) and the gap check both buses share.
//! - [`changes`]: the [`ChangeFeed`](crate::ChangeFeed) trait: after a
//!   projector commits, it announces the changed documents and the view's
//!   new checkpoint to readers, in process
//!   ([`InProcessChangeFeed`](crate::InProcessChangeFeed)) or over NATS
//!   (`nats::NatsChangeFeed`, feature `nats`).

pub mod bus;
pub mod changes;
#[cfg(feature = "nats")]
pub mod nats;

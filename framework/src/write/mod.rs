//! The write side: commands become events.
//!
//! - [`aggregate`]: [`Aggregate`](crate::Aggregate), the pure decider
//!   (`decide`, `evolve`), and its snapshots.
//! - [`command`]: [`CommandHandler`](crate::CommandHandler): load → decide →
//!   append to the [`store`](crate::store), with per-stream lanes, conflict
//!   retries, idempotent command ids and snapshots.
//! - [`harness`]: [`AggregateTest`](crate::AggregateTest), given / when /
//!   then for aggregates, without a runtime or a database.

pub mod aggregate;
pub mod command;
pub mod harness;

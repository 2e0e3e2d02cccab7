//! The read side: events become documents, documents are served.
//!
//! - [`projection`]: [`Projection`](crate::Projection), pure, and the
//!   [`Projector`](crate::Projector) that feeds it from a bus and commits
//!   documents and checkpoint together.
//! - [`store`]: keyed-document views, checkpoints, dead letters, leases and
//!   versions: one trait per concern ([`Leases`](crate::Leases),
//!   [`Checkpoints`](crate::Checkpoints), [`Documents`](crate::Documents),
//!   [`Versions`](crate::Versions)), the [`ViewStore`](crate::ViewStore)
//!   umbrella over all four, and
//!   [`InMemoryViewStore`](crate::InMemoryViewStore); `postgres` (feature
//!   `postgres`): `PgViewStore`.
//! - [`group`]: [`ProjectorGroup`](crate::ProjectorGroup), several
//!   projectors on one subscription, each batch committed together.
//! - [`query`]: [`ViewReader`](crate::ViewReader), cached reads with
//!   read-your-writes, kept fresh by the change feed.
//! - [`rebuild`]: online rebuilds into a new view version, switched in
//!   once caught up.

pub mod group;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub mod projection;
pub mod query;
pub mod rebuild;
pub mod store;

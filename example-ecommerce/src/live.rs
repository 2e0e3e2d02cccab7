//! Live updates (Server-Sent Events) and the demo's web page.

use axum::Router;
use strata::ViewStore;

use crate::http::QueryState;

/// Routes for live updates and the web page (none yet).
pub fn routes<V: ViewStore>(state: QueryState<V>) -> Router {
    let _ = state;
    Router::new()
}

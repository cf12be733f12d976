//! The Ocellus REST gateway. [`app`] builds the router from the shared [`AppState`].

use axum::Router;
use ocellus_common::Health;

/// State shared by every router.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Readiness and metrics.
    pub health: Health,
}

/// The whole HTTP API: operational endpoints now, one router per resource as they land.
pub fn app(state: AppState) -> Router {
    Router::new().merge(state.health.router())
}

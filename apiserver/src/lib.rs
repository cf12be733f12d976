//! The Ocellus REST gateway. [`app`] builds the router from the shared [`AppState`].
//!
//! Routes: `/healthz`, `/readyz`, `/metrics` (one segment), and the serving [`gateway`] at
//! `/{namespace}/{name}/...` (three segments or more). `/api/...` is kept for the REST APIs,
//! whose shared ground (API keys, auth, rate limits, errors, OpenAPI at `/openapi.json`) is
//! [`api`]; [`app_with_api`] adds them.

pub mod api;
pub mod gateway;
pub mod label_studio;
pub mod podlogs;
pub mod roboflow;
pub mod serving;
#[cfg(test)]
mod test_support;
pub mod ultralytics;

use axum::Router;
use ocellus_common::Health;

pub use gateway::Gateway;

/// State shared by every router.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Readiness and metrics.
    pub health: Health,
    /// The serving gateway (fed by [`gateway::watch::spawn`] in the binary, directly in tests).
    pub gateway: Gateway,
}

/// The whole HTTP API: operational endpoints and the gateway; one router per resource as they land.
pub fn app(state: AppState) -> Router {
    Router::new().merge(state.health.router()).merge(state.gateway.router())
}

/// [`app`] plus the REST APIs ([`api::ApiState::router`]: `/api/...` and `/openapi.json`). Their
/// static `/api/...` routes take precedence over the gateway's `/{namespace}/{name}/...`.
pub fn app_with_api(state: AppState, api: api::ApiState) -> Router {
    app(state).merge(api.router())
}

/// [`app_with_api`] plus the Ultralytics Platform routes ([`ultralytics`]), Roboflow's
/// dedicated deployments ([`roboflow`]) and Label Studio's ML backends ([`label_studio`]) over
/// the same cluster caches.
pub fn app_with_apis(state: AppState, api: api::ApiState, ul: ultralytics::UltralyticsApi) -> Router {
    let protected = ul.router(&api).merge(roboflow::router(&ul, &api)).merge(label_studio::router(&ul, &api));
    app(state).merge(api.router_with(protected))
}

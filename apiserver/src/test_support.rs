//! What the surfaces' router tests share: three keys (an editor and a viewer of `team-a`, an
//! editor of `team-b`) and an app over a memory cluster.

use std::sync::Arc;

use axum::Router;
use chrono::Utc;

use crate::api::keys::{KeyRecord, PlaintextKey};
use crate::api::{ApiState, KeyIndex, Keys, Limits, MemorySecrets, RateLimiter, Role};
use crate::ultralytics::{MemoryCluster, UltralyticsApi};

/// An app of the Ultralytics routes plus `surface` (built from the cluster caches and the API
/// state), over a new memory cluster; the keys `[team-a editor, team-a viewer, team-b editor]`.
pub fn app_with(
    surface: impl FnOnce(&UltralyticsApi, &ApiState) -> Router,
) -> (Router, Arc<MemoryCluster>, [String; 3]) {
    let keys =
        [PlaintextKey::from_bytes([1; 20]), PlaintextKey::from_bytes([2; 20]), PlaintextKey::from_bytes([3; 20])];
    let index = KeyIndex::from_records([
        KeyRecord::new(&keys[0], "team-a", Role::Editor, "a", Utc::now()),
        KeyRecord::new(&keys[1], "team-a", Role::Viewer, "av", Utc::now()),
        KeyRecord::new(&keys[2], "team-b", Role::Editor, "b", Utc::now()),
    ]);
    let limiter = RateLimiter::new(Limits::default(), 100);
    let api = ApiState::new(
        Keys::from_index(index),
        Arc::new(MemorySecrets::new()),
        "rel".into(),
        limiter,
        &prometheus::Registry::new(),
    )
    .expect("state");
    let cluster = Arc::new(MemoryCluster::default());
    let ul = UltralyticsApi::in_memory(&cluster, None, None);
    // Both surfaces, as the binary merges them: the Ultralytics catch-all must not take theirs.
    let app = api.router_with(ul.router(&api).merge(surface(&ul, &api)));
    (app, cluster, keys.map(|k| k.expose().to_string()))
}

//! The router over a real socket.

use ocellus_apiserver::gateway::{Gateway, GatewayConfig};
use ocellus_apiserver::{AppState, app};
use ocellus_common::Health;

#[tokio::test]
async fn serves_health_and_metrics_next_to_the_gateway() {
    let registry = prometheus::Registry::new();
    let (gateway, _wakes) = Gateway::new(GatewayConfig::default(), &registry).expect("gateway");
    gateway.index().mark_synced();
    let health = Health::new(registry);
    health.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app(AppState { health, gateway })).await });
    let r = reqwest::get(format!("http://{addr}/healthz")).await.expect("get");
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://{addr}/readyz")).await.expect("get");
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://{addr}/metrics")).await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("text").contains("ocellus_gateway_held_requests 0"));
    let r = reqwest::get(format!("http://{addr}/nope")).await.expect("get");
    assert_eq!(r.status(), 404);
    // Two segments are not a gateway route (room for the REST APIs).
    let r = reqwest::get(format!("http://{addr}/ns/name")).await.expect("get");
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.expect("text"), "", "the router's own 404, not the gateway's");
}

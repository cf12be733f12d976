//! The router over a real socket.

use ocellus_apiserver::{AppState, app};
use ocellus_common::Health;

#[tokio::test]
async fn serves_health_and_metrics() {
    let health = Health::new(prometheus::Registry::new());
    health.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app(AppState { health })).await });
    let r = reqwest::get(format!("http://{addr}/healthz")).await.expect("get");
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://{addr}/readyz")).await.expect("get");
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://{addr}/nope")).await.expect("get");
    assert_eq!(r.status(), 404);
}

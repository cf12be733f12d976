//! Logging, metrics and health endpoints shared by the Ocellus services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags every binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info,ocellus_operator=debug`).
    #[arg(long = "log-level", env = "OCELLUS_LOG", default_value = "info")]
    pub level: String,
    /// Log format.
    #[arg(long = "log-format", env = "OCELLUS_LOG_FORMAT", value_enum, default_value = "text")]
    pub format: LogFormat,
}

/// Installs the global `tracing` subscriber. Safe to call more than once (later calls are ignored).
pub fn init_tracing(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Readiness flag and metrics registry behind `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug)]
pub struct Health {
    ready: Arc<AtomicBool>,
    registry: Registry,
}

impl Health {
    /// A not-yet-ready health state over `registry`.
    pub fn new(registry: Registry) -> Self {
        Health { ready: Arc::new(AtomicBool::new(false)), registry }
    }

    /// Marks the service ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `/healthz` (liveness), `/readyz` (readiness) and `/metrics` (Prometheus text format).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    match render_metrics(&h.registry) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, TextEncoder::new().format_type().to_string())], body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain".to_string())], e),
    }
}

/// Renders a registry in the Prometheus text exposition format.
pub fn render_metrics(registry: &Registry) -> Result<String, String> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|e| e.to_string())
}

/// Serves `router` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_endpoints_over_http() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("ocellus_test_total", "test counter").expect("counter");
        registry.register(Box::new(counter.clone())).expect("register");
        counter.inc();
        let health = Health::new(registry);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = health.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        assert_eq!(client.get(format!("{base}/healthz")).send().await.expect("get").status(), 200);
        assert_eq!(client.get(format!("{base}/readyz")).send().await.expect("get").status(), 503);
        health.set_ready(true);
        assert_eq!(client.get(format!("{base}/readyz")).send().await.expect("get").status(), 200);
        let text = client.get(format!("{base}/metrics")).send().await.expect("get").text().await.expect("text");
        assert!(text.contains("ocellus_test_total 1"), "{text}");
    }
}

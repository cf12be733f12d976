//! The serving gateway: one stable address per ModelDeployment, `/{namespace}/{name}/...`.
//!
//! Everything after the prefix goes verbatim (method, rest of the path, query, end-to-end
//! headers, body) to one of the deployment's ready predictor pods: Ultralytics `/predict`, Open
//! Inference Protocol `/v2/...` and the Label Studio ML backend routes alike. Layers, as in
//! linkerd2's policy controller:
//!
//! - [`index`]: the core, with no Kubernetes dependency: deployments, ready endpoints with
//!   in-flight counts (least in-flight balancing), held requests and wake requests;
//! - `proxy`: the HTTP handler over the index (body buffering, retries, Label Studio answers at
//!   zero) and [`error::GatewayError`];
//! - [`watch`]: the Kubernetes half: ModelDeployment and EndpointSlice watches that feed the
//!   index, and the annotation patches that wake deployments.
//!
//! Routes: `/{namespace}/{name}/` and `/{namespace}/{name}/{*rest}`: three segments or more, so
//! they never meet `/healthz`, `/readyz` or `/metrics`. The namespace `api` is reserved for the
//! REST APIs (`/api/...`), which will be static routes and so take precedence; a request for a
//! deployment in a namespace named `api` gets a 404.

pub mod error;
pub mod index;
pub mod metrics;
mod proxy;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::any;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use error::GatewayError;
pub use index::{DeploymentInfo, DeploymentKey, Index, IndexConfig, Lifecycle, WakeReceiver, WakeRequest};
pub use metrics::GatewayMetrics;
pub use proxy::{LABEL_STUDIO_MODEL_CLASS, RESERVED_NAMESPACE, label_studio_model_version};

/// Limits and timings of the gateway (each one a `--gateway-...` flag of the apiserver).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Most requests held per deployment while it has no ready pod; beyond, 429. Default 256.
    pub max_held: usize,
    /// Longest a request waits for a ready pod (and for the first listing of deployments);
    /// then 503. Default 300 s.
    pub hold_timeout: Duration,
    /// Largest request body. Bodies are read into memory before they are sent, so that a
    /// request a pod refused can be sent to another; larger ones get 413. Default 32 MiB.
    pub max_body_bytes: usize,
    /// Longest a TCP connect to a pod may take before the pod counts as down. Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for a pod's response headers once the request is sent; then 504.
    /// Default 300 s.
    pub upstream_timeout: Duration,
    /// Least time between two wake patches of one deployment. Default 2 s.
    pub wake_interval: Duration,
    /// How long a pod that refused a connection is skipped. Default 5 s.
    pub eject_for: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_held: 256,
            hold_timeout: Duration::from_secs(300),
            max_body_bytes: 32 << 20,
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(300),
            wake_interval: Duration::from_secs(2),
            eject_for: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Inner {
    config: GatewayConfig,
    index: Index,
    client: Client<HttpConnector, Body>,
    metrics: GatewayMetrics,
    /// The API keys requests must carry, once [`Gateway::require_keys`] set them.
    keys: std::sync::OnceLock<crate::api::keys::Keys>,
}

/// The gateway: its index, upstream HTTP client and metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// A gateway with an empty index, its metrics registered in `registry`, and the receiver
    /// of its wake requests (for [`watch::spawn`], or a test). Needs a Tokio runtime.
    pub fn new(
        config: GatewayConfig,
        registry: &prometheus::Registry,
    ) -> Result<(Gateway, WakeReceiver), GatewayInitError> {
        let metrics = GatewayMetrics::register(registry)?;
        let (index, wakes) = Index::new(
            IndexConfig { max_held: config.max_held, wake_interval: config.wake_interval, eject_for: config.eject_for },
            metrics.clone(),
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .retry_canceled_requests(true)
            .build(connector);
        let keys = std::sync::OnceLock::new();
        Ok((Gateway { inner: Arc::new(Inner { config, index, client, metrics, keys }) }, wakes))
    }

    /// Requires every request to carry a live API key of the deployment's namespace (any role:
    /// predictions read), in any form the REST APIs accept; the key is removed before the request
    /// is forwarded. Without this call the gateway is open (tests; clusters without API keys).
    pub fn require_keys(&self, keys: crate::api::keys::Keys) {
        let _ = self.inner.keys.set(keys);
    }

    /// The index the watches feed.
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The metrics.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// The routes `/{namespace}/{name}/` and `/{namespace}/{name}/{*rest}`, any method.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{namespace}/{name}/", any(proxy::handle))
            .route("/{namespace}/{name}/{*rest}", any(proxy::handle))
            .with_state(self.clone())
    }
}

/// Why [`Gateway::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayInitError {
    /// The metrics could not be registered (registered twice in one registry).
    #[error("registering the gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

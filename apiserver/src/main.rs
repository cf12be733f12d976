//! `ocellus-apiserver`: serves the REST APIs and the serving gateway.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ocellus_apiserver::gateway::watch::{self, WatchConfig};
use ocellus_apiserver::gateway::{Gateway, GatewayConfig};
use ocellus_apiserver::{AppState, app_with_apis};
use ocellus_common::{Health, LogArgs};

/// Command-line and environment configuration.
#[derive(Parser, Debug)]
#[command(name = "ocellus-apiserver", version, about = "REST APIs over Ocellus resources")]
struct Config {
    /// Address the HTTP API (and `/healthz`, `/metrics`) listens on.
    #[arg(long, env = "OCELLUS_LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    listen_addr: SocketAddr,
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    api: ocellus_apiserver::api::ApiArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The serving gateway (`/{namespace}/{name}/...`).
#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// Requests held per ModelDeployment while it has no ready pod; beyond, 429 with Retry-After.
    #[arg(long = "gateway-max-held", env = "OCELLUS_GATEWAY_MAX_HELD", default_value_t = 256)]
    max_held: usize,
    /// Seconds a request is held for a ready pod before a 503.
    #[arg(long = "gateway-hold-timeout", env = "OCELLUS_GATEWAY_HOLD_TIMEOUT", default_value_t = 300)]
    hold_timeout_s: u64,
    /// Largest request body in bytes (bodies are buffered so that a refused send can be retried); beyond, 413.
    #[arg(long = "gateway-max-body-bytes", env = "OCELLUS_GATEWAY_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Milliseconds a TCP connect to a predictor pod may take before it counts as down.
    #[arg(long = "gateway-connect-timeout-ms", env = "OCELLUS_GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// Seconds to wait for a pod's response headers once a request is sent; then 504.
    #[arg(long = "gateway-upstream-timeout", env = "OCELLUS_GATEWAY_UPSTREAM_TIMEOUT", default_value_t = 300)]
    upstream_timeout_s: u64,
    /// Least milliseconds between two wake patches of one ModelDeployment.
    #[arg(long = "gateway-wake-interval-ms", env = "OCELLUS_GATEWAY_WAKE_INTERVAL_MS", default_value_t = 2000)]
    wake_interval_ms: u64,
    /// Milliseconds a pod that refused a connection is skipped.
    #[arg(long = "gateway-eject-ms", env = "OCELLUS_GATEWAY_EJECT_MS", default_value_t = 5000)]
    eject_ms: u64,
    /// Name of the predictor Services' port.
    #[arg(long = "gateway-port-name", env = "OCELLUS_GATEWAY_PORT_NAME", default_value = "http")]
    port_name: String,
    /// Label selector of the EndpointSlices to watch.
    #[arg(
        long = "gateway-endpointslice-selector",
        env = "OCELLUS_GATEWAY_ENDPOINTSLICE_SELECTOR",
        default_value = "kubernetes.io/service-name"
    )]
    endpointslice_selector: String,
}

impl GatewayArgs {
    fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            max_held: self.max_held,
            hold_timeout: Duration::from_secs(self.hold_timeout_s),
            max_body_bytes: self.max_body_bytes,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.max(1)),
            upstream_timeout: Duration::from_secs(self.upstream_timeout_s.max(1)),
            wake_interval: Duration::from_millis(self.wake_interval_ms.max(100)),
            eject_for: Duration::from_millis(self.eject_ms),
        }
    }

    fn watch(&self) -> WatchConfig {
        WatchConfig { port_name: self.port_name.clone(), endpointslice_selector: self.endpointslice_selector.clone() }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ocellus_common::init_tracing(&config.log);
    let registry = prometheus::Registry::new();
    let (gateway, wakes) = Gateway::new(config.gateway.gateway(), &registry).context("starting the gateway")?;
    let client = kube::Client::try_default().await.context("building the Kubernetes client")?;
    let (api, api_tasks) =
        ocellus_apiserver::api::start(client.clone(), &config.api, &registry).context("starting the REST APIs")?;
    let uploads = match (ocellus_storage::S3Config::from_env(), &config.api.s3_bucket) {
        (Ok(s3), Some(bucket)) => Some(ocellus_apiserver::ultralytics::upload::Uploads::new(
            &s3,
            bucket,
            config.api.s3_public_endpoint.as_deref(),
        )),
        (Err(e), _) => {
            tracing::warn!(error = %e, "no object storage credentials: uploads are refused");
            None
        }
        (_, None) => {
            tracing::warn!("no bucket (OCELLUS_S3_BUCKET): uploads are refused");
            None
        }
    };
    let (ul, ul_watches) = ocellus_apiserver::ultralytics::start(
        client.clone(),
        uploads,
        config.api.s3_bucket.clone(),
        Some(gateway.router()),
    );
    // The gateway takes the same namespace-bound keys as the REST APIs.
    gateway.require_keys(api.keys.clone());
    let health = Health::new(registry);
    // The watches list in the background; until both have, gateway requests wait (up to the
    // hold timeout) rather than get a 404. Readiness does not wait for them.
    let watches = watch::spawn(client, &gateway, wakes, config.gateway.watch());
    // Ready once API keys can be checked (listed, and the bootstrap key registered): before
    // that, a valid key would be refused.
    let ready = {
        let (api, ul, health) = (api.clone(), ul.clone(), health.clone());
        tokio::spawn(async move {
            while !api.is_ready() || !ul.is_ready() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            health.set_ready(true);
        })
    };
    let router = app_with_apis(AppState { health, gateway }, api, ul);
    let served = ocellus_common::serve(config.listen_addr, router, ocellus_common::shutdown_signal())
        .await
        .context("serving HTTP");
    ready.abort();
    for t in watches.tasks.into_iter().chain(api_tasks).chain(ul_watches) {
        t.abort();
    }
    served
}

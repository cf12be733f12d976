//! The Ocellus operator: reconciles Datasets, TrainingJobs, Exports and ModelDeployments.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use kube::Client;
use ocellus_common::{Health, LogArgs};

mod crd_check;

/// Command-line and environment configuration.
#[derive(Parser, Debug)]
#[command(name = "ocellus-operator", version, about = "Reconciles ocellus.dev custom resources")]
struct Config {
    /// Address of the `/healthz`, `/readyz` and `/metrics` server.
    #[arg(long, env = "OCELLUS_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "OCELLUS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    // An empty value (as the chart renders by default) means all namespaces.
    config.watch_namespace = config.watch_namespace.filter(|n| !n.is_empty());
    ocellus_common::init_tracing(&config.log);
    let registry = prometheus::Registry::new();
    let health = Health::new(registry);
    let server =
        tokio::spawn(ocellus_common::serve(config.metrics_addr, health.router(), ocellus_common::shutdown_signal()));

    let client = Client::try_default().await.context("building the Kubernetes client")?;
    tracing::info!(namespace = ?config.watch_namespace, "connected to the API server");
    crd_check::wait_for_crds(&client).await?;
    health.set_ready(true);
    tracing::info!("all ocellus.dev CRDs are served; operator ready");

    server.await.context("metrics server task")?.context("metrics server")?;
    Ok(())
}

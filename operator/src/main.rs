//! The Ocellus operator: reconciles Datasets, TrainingJobs and Exports into trainer Jobs.
//!
//! Start-up: serve `/healthz`, `/readyz` and `/metrics`; wait for the CRDs; campaign for the
//! Lease; once leading, fill the Job and Pod caches and run the controllers. SIGTERM stops the
//! controllers after their in-flight reconciles and releases the Lease; losing the Lease exits
//! at once (non-zero), so that two replicas never act together.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::FutureExt;
use kube::Client;
use ocellus_common::{Health, LogArgs};
use ocellus_operator::config::WorkloadConfig;
use ocellus_operator::leader::{Elector, LeaseConfig};
use ocellus_operator::metrics::Metrics;
use ocellus_operator::{controller, crd_check, run};
use ocellus_storage::s3::S3Config;

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
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "OCELLUS_LEASE_NAME", default_value = "ocellus-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name; a random suffix is added).
    #[arg(long, env = "POD_NAME", default_value = "ocellus-operator")]
    identity: String,
    /// Seconds a leader's Lease lasts without renewal before another replica may take it.
    #[arg(long, env = "OCELLUS_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    #[command(flatten)]
    workload: WorkloadConfig,
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
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    let health = Health::new(registry);
    let shutdown = ocellus_common::shutdown_signal().boxed().shared();
    let server = tokio::spawn(ocellus_common::serve(config.metrics_addr, health.router(), shutdown.clone()));

    let s3 = S3Config::from_env().map_err(|e| anyhow::anyhow!("S3 credentials for reading run outputs: {e}"))?;
    let s3 = S3Config {
        endpoint: Some(config.workload.s3_endpoint.clone()).filter(|e| !e.is_empty()),
        region: config.workload.s3_region.clone(),
        force_path_style: config.workload.s3_force_path_style,
        ..s3
    };
    let client = Client::try_default().await.context("building the Kubernetes client")?;
    tracing::info!(namespace = ?config.watch_namespace, "connected to the API server");
    crd_check::wait_for_crds(&client).await?;
    health.set_ready(true);
    tracing::info!("all ocellus.dev CRDs are served; operator ready");

    let identity = format!("{}-{:08x}", config.identity, rand_suffix());
    let mut lease = LeaseConfig::new(&config.lease_namespace, &config.lease_name, &identity);
    lease.lease_duration = Duration::from_secs(config.lease_duration.max(2));
    lease.renew_deadline = lease.lease_duration * 2 / 3;
    lease.retry_period = (lease.lease_duration / 7).max(Duration::from_millis(500));
    let mut elector = Elector::spawn(client.clone(), lease);
    tokio::select! {
        _ = elector.acquired() => {}
        _ = shutdown.clone() => {
            elector.release().await;
            return finish(server).await;
        }
    }
    tracing::info!(%identity, "leading: starting the controllers");

    let runtime = controller::start(
        client.clone(),
        config.workload.clone(),
        s3,
        config.watch_namespace.as_deref(),
        metrics,
        identity.clone(),
    )
    .await;
    let controllers = run::run(runtime.ctx.clone(), client, config.watch_namespace.as_deref(), shutdown.clone());
    tokio::select! {
        _ = controllers => {
            tracing::info!("controllers stopped; releasing the lease");
            elector.release().await;
        }
        _ = elector.lost() => {
            // Another replica may act now: stop at once, without finishing anything.
            tracing::error!("lost the leader lease; exiting");
            std::process::exit(1);
        }
    }
    for r in runtime.reflectors {
        r.abort();
    }
    finish(server).await
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(r) => r.context("metrics server task")?.context("metrics server"),
        Err(_) => Ok(()),
    }
}

/// A random suffix, so that a restarted pod with the same name is a new candidate.
fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

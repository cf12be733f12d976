//! `ocellus-apiserver`: serves the REST APIs.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use ocellus_apiserver::{AppState, app};
use ocellus_common::{Health, LogArgs};

/// Command-line and environment configuration.
#[derive(Parser, Debug)]
#[command(name = "ocellus-apiserver", version, about = "REST APIs over Ocellus resources")]
struct Config {
    /// Address the HTTP API (and `/healthz`, `/metrics`) listens on.
    #[arg(long, env = "OCELLUS_LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    listen_addr: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ocellus_common::init_tracing(&config.log);
    let health = Health::new(prometheus::Registry::new());
    health.set_ready(true);
    let router = app(AppState { health });
    ocellus_common::serve(config.listen_addr, router, ocellus_common::shutdown_signal()).await.context("serving HTTP")
}

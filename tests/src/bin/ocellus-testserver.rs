//! A tiny HTTP server used as a container in the local-cluster tests: answers `GET /` with its
//! pod name and address, logs a line per request, and exits cleanly on SIGTERM.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (e.g. `$(POD_IP):8080`).
    #[arg(long, env = "LISTEN")]
    listen: SocketAddr,
    /// Line printed to stdout at start (for log tests).
    #[arg(long, env = "GREETING", default_value = "testserver starting")]
    greeting: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let name = std::env::var("HOSTNAME").unwrap_or_default();
    println!("{} on {} as {name}", args.greeting, args.listen);
    let addr = args.listen;
    let app = Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/",
        get(move || {
            let name = name.clone();
            async move {
                println!("request served by {name}");
                axum::Json(serde_json::json!({"pod": name, "addr": addr.to_string()}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                s.recv().await;
            }
            println!("SIGTERM received, shutting down");
        })
        .await
}

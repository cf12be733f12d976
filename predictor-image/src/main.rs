//! `ocellus-predictor`: the predictor image's entry point (one model per server).

use clap::{Parser, Subcommand};
use ocellus_common::LogArgs;

#[derive(Parser, Debug)]
#[command(name = "ocellus-predictor", version, about = "Inference server for exported Ocellus models")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the build and runtime versions as JSON.
    Version,
}

fn main() {
    let cli = Cli::parse();
    ocellus_common::init_tracing(&cli.log);
    match cli.command {
        Command::Version => {
            println!("{}", serde_json::json!({ "predictor": env!("CARGO_PKG_VERSION") }));
        }
    }
}

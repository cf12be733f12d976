//! `ocellus-trainer`: the trainer image's entry point. Subcommands (`ingest`, `train`, `val`,
//! `export`) are run by the operator's Jobs.

use clap::{Parser, Subcommand};
use ocellus_common::LogArgs;

#[derive(Parser, Debug)]
#[command(name = "ocellus-trainer", version, about = "Dataset ingest, training, validation and export")]
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
            println!("{}", serde_json::json!({ "trainer": env!("CARGO_PKG_VERSION") }));
        }
    }
}

//! `ocellus-trainer`: the trainer image's entry point. The operator's Jobs run its subcommands.
//!
//! Output protocol (stdout, one JSON object per line): `{"event":"progress",...}` while working,
//! then `{"event":"done",...}` or `{"event":"error","reason":...,"message":...}`.
//! Exit codes (`ocellus_core::exit`): 0 success, 2 the input is invalid (retrying will not help),
//! 3 transient failure, 4 paused (`train` received SIGTERM, saved its `last` checkpoint; run
//! again with `--resume`). Every subcommand ends through `report::finish`.

mod args;
#[cfg(feature = "torch")]
mod cli;
#[cfg(feature = "torch")]
mod export_cmd;
#[cfg(feature = "torch")]
mod import_cmd;
mod ingest_cmd;
mod report;
#[cfg(feature = "torch")]
mod train_cmd;
#[cfg(feature = "torch")]
mod val_cmd;

use std::process::ExitCode;

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
    /// Ingest a dataset: fetch, validate, normalise and store it with its manifest and summary.
    Ingest(Box<ingest_cmd::IngestArgs>),
    /// Freeze a dataset's current manifest as an immutable version.
    Freeze(ingest_cmd::FreezeArgs),
    /// Train a detector on a dataset manifest (needs the `torch` feature).
    #[cfg(feature = "torch")]
    Train(Box<train_cmd::TrainArgs>),
    /// Validate weights on a dataset: mAP, per-class AP, and (optionally) the predictions.
    #[cfg(feature = "torch")]
    Val(Box<val_cmd::ValArgs>),
    /// Export weights to TorchScript, ONNX or a TensorRT engine.
    #[cfg(feature = "torch")]
    Export(Box<export_cmd::ExportArgs>),
    /// Import an Ultralytics `.pt` checkpoint as trainer weights, without running its pickle.
    #[cfg(feature = "torch")]
    Import(Box<import_cmd::ImportArgs>),
    /// Print the build and runtime versions as JSON.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ocellus_common::init_tracing(&cli.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(ocellus_core::exit::TRANSIENT);
        }
    };
    match cli.command {
        Command::Ingest(args) => rt.block_on(ingest_cmd::ingest(*args)),
        Command::Freeze(args) => rt.block_on(ingest_cmd::freeze(args)),
        #[cfg(feature = "torch")]
        Command::Train(args) => rt.block_on(train_cmd::run(*args)),
        #[cfg(feature = "torch")]
        Command::Val(args) => rt.block_on(val_cmd::run(*args)),
        #[cfg(feature = "torch")]
        Command::Export(args) => rt.block_on(export_cmd::run(*args)),
        #[cfg(feature = "torch")]
        Command::Import(args) => rt.block_on(import_cmd::run(*args)),
        Command::Version => {
            println!("{}", serde_json::json!({ "trainer": env!("CARGO_PKG_VERSION") }));
            ExitCode::SUCCESS
        }
    }
}

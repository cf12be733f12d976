//! `import`: an Ultralytics `.pt` checkpoint (e.g. `runs/detect/train/weights/best.pt`) into the
//! trainer's weights — safetensors plus model info, what `train --start-weights`, `val` and
//! `export` take — without Python: nothing in the pickle runs (see `ocellus-interop`).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use ocellus_storage::location::sidecar;
use ocellus_storage::{FetchOptions, Storage};
use ocellus_trainer::import::{self, ImportError};
use ocellus_vision::ModelInfo;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::WorkDirArgs;
use crate::report::{self, Done, Failure};

/// Largest checkpoint fetched (a yolov8x `.pt` is about 130 MB).
const MAX_CHECKPOINT: u64 = 4 << 30;

/// `import` flags.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The Ultralytics checkpoint: `s3://…/best.pt` or a local path.
    #[arg(long = "from", env = "OCELLUS_IMPORT_FROM")]
    pub from: String,
    /// Where the weights go: a `.safetensors` URI or path; the model info is written next to it
    /// (`best.safetensors` → `best.json`), as `train` writes its weights.
    #[arg(long, env = "OCELLUS_OUTPUT")]
    pub output: String,
    /// Input size recorded in the model info when the checkpoint records no `train_args.imgsz`.
    #[arg(long, env = "OCELLUS_IMGSZ", default_value_t = 640)]
    pub imgsz: u32,
    #[command(flatten)]
    pub work: WorkDirArgs,
}

/// Runs `import`.
pub async fn run(args: ImportArgs) -> ExitCode {
    let work = args.work.path("import");
    report::finish(run_import(&args, &work).await.map(Done::Finished), Some(&work))
}

/// An import failure: everything but the scratch disk is a property of the checkpoint.
pub fn import_failure(e: ImportError) -> Failure {
    Failure::invalid("InvalidCheckpoint", e.to_string())
}

/// Fetches an Ultralytics checkpoint into `work` and imports it (on a blocking thread).
pub async fn fetch_and_import(
    storage: &Storage,
    from: &str,
    imgsz: u32,
    work: &Path,
) -> Result<import::Imported, Failure> {
    std::fs::create_dir_all(work).map_err(|e| Failure::transient(format!("{}: {e}", work.display())))?;
    let pt = work.join("checkpoint.pt");
    let opts = FetchOptions { max_bytes: MAX_CHECKPOINT, ..FetchOptions::default() };
    storage.fetch(from, &pt, &opts).await.map_err(|e| Failure::from(e).or_reason("CheckpointNotFound"))?;
    let imported = tokio::task::spawn_blocking(move || import::import(&pt, imgsz))
        .await
        .map_err(|e| Failure::transient(e.to_string()))?
        .map_err(import_failure)?;
    Ok(imported)
}

async fn run_import(args: &ImportArgs, work: &Path) -> Result<serde_json::Value, Failure> {
    if !args.output.ends_with(".safetensors") {
        return Err(Failure::invalid(
            "InvalidOptions",
            format!("--output {} must name a .safetensors file", args.output),
        ));
    }
    if args.imgsz == 0 || !args.imgsz.is_multiple_of(32) {
        return Err(Failure::invalid("InvalidOptions", format!("--imgsz {} is not a multiple of 32", args.imgsz)));
    }
    let storage = Storage::from_env();
    let imported = fetch_and_import(&storage, &args.from, args.imgsz, work).await?;
    let file = work.join("weights.safetensors");
    imported.vs.save(&file).map_err(|e| Failure::transient(format!("writing {}: {e}", file.display())))?;
    let bytes = std::fs::read(&file).map_err(|e| Failure::transient(e.to_string()))?;
    let info = ModelInfo { sha256: Some(hex::encode(Sha256::digest(&bytes))), ..imported.info };
    let info_file = work.join("weights.safetensors.json");
    std::fs::write(&info_file, serde_json::to_vec_pretty(&info).unwrap_or_default())
        .map_err(|e| Failure::transient(e.to_string()))?;
    storage.store(&file, &args.output, "application/octet-stream").await?;
    // The model info last: a reader that sees it finds the weights it describes.
    storage.store(&info_file, &sidecar(&args.output), "application/json").await?;
    Ok(json!({
        "weightsUri": args.output,
        "architecture": info.architecture,
        "task": info.task,
        "classes": info.names.len(),
        "imgsz": info.imgsz,
        "ultralyticsVersion": imported.version,
    }))
}

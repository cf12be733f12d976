//! `export`: trained weights (with their `ModelInfo` sidecar) to a TorchScript, ONNX or TensorRT
//! artifact, written with its own sidecar (`<artifact>.json`, SHA-256 included) last.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use ocellus_core::ExportFormat;
use ocellus_storage::Storage;
use ocellus_storage::location::sidecar;
use ocellus_trainer::export::{self, Loaded, Options, tensorrt};
use ocellus_vision::ModelInfo;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::{DeviceArgs, WorkDirArgs};
use crate::cli::{fetch_images, fetch_model, load_manifest};
use crate::report::{self, Done, Failure, emit};

/// `export` flags.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Weights (`s3://.../weights/best.safetensors` or a local path), next to their `.json`.
    #[arg(long, env = "OCELLUS_WEIGHTS")]
    pub weights: String,
    /// `torchscript`, `onnx` or `engine`.
    #[arg(long, env = "OCELLUS_EXPORT_FORMAT")]
    pub format: String,
    /// Where to write the artifact (`s3://...` or a local path).
    #[arg(long, env = "OCELLUS_EXPORT_OUTPUT")]
    pub output: String,
    /// Square input size (default: the training size).
    #[arg(long, env = "OCELLUS_IMGSZ")]
    pub imgsz: Option<u32>,
    /// Batch size (the fixed batch unless `--dynamic`).
    #[arg(long, env = "OCELLUS_BATCH", default_value_t = 1)]
    pub batch: u32,
    /// Dynamic batch dimension.
    #[arg(long, env = "OCELLUS_DYNAMIC")]
    pub dynamic: bool,
    /// Half precision (TorchScript on CUDA, ONNX, engine).
    #[arg(long, env = "OCELLUS_HALF")]
    pub half: bool,
    /// INT8 (engine only; needs `--calibration`).
    #[arg(long, env = "OCELLUS_INT8")]
    pub int8: bool,
    /// Calibration images for INT8: a dataset manifest (`s3://.../manifest.ndjson`).
    #[arg(long, env = "OCELLUS_CALIBRATION_MANIFEST")]
    pub calibration: Option<String>,
    /// Calibration images to use.
    #[arg(long, env = "OCELLUS_CALIBRATION_IMAGES", default_value_t = 500)]
    pub calibration_images: usize,
    /// ONNX opset.
    #[arg(long, env = "OCELLUS_OPSET", default_value_t = export::DEFAULT_OPSET)]
    pub opset: i64,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub work: WorkDirArgs,
}

/// Runs `export`.
pub async fn run(args: ExportArgs) -> ExitCode {
    let work = args.work.path("export");
    report::finish(export_to(&args, &work).await.map(Done::Finished), Some(&work))
}

async fn export_to(args: &ExportArgs, work: &Path) -> Result<serde_json::Value, Failure> {
    let format = ExportFormat::parse(&args.format).map_err(|e| Failure::invalid("UnsupportedFormat", e))?;
    if args.int8 && format != ExportFormat::Engine {
        return Err(Failure::invalid("InvalidOptions", "int8 is only supported for format engine"));
    }
    if args.int8 && args.calibration.is_none() {
        return Err(Failure::invalid("InvalidOptions", "int8 needs calibration images (--calibration)"));
    }
    let dev = args.device.resolve()?;
    if args.half && format == ExportFormat::Torchscript && dev == tch::Device::Cpu {
        return Err(Failure::invalid("InvalidOptions", "half-precision TorchScript needs a CUDA device"));
    }
    if args.batch == 0 || args.batch > 256 {
        return Err(Failure::invalid("InvalidOptions", "batch must be 1 to 256"));
    }
    // TensorRT is checked before any work: a missing library is a clear, permanent error.
    if format == ExportFormat::Engine {
        tensorrt::available().map_err(|e| Failure::invalid("TensorRTUnavailable", e.to_string()))?;
    }
    let storage = Storage::from_env();
    let (weights, info) = fetch_model(&storage, &args.weights, work).await?;
    let imgsz = args.imgsz.unwrap_or(info.imgsz);
    if !imgsz.is_multiple_of(32) || !(32..=4096).contains(&imgsz) {
        return Err(Failure::invalid(
            "InvalidOptions",
            format!("imgsz {imgsz} must be a multiple of 32 between 32 and 4096"),
        ));
    }
    let opts = Options { imgsz, batch: args.batch, dynamic: args.dynamic, half: args.half, opset: args.opset };
    emit(json!({"event": "progress", "phase": "load", "architecture": info.architecture, "format": format.as_str()}));

    let model_dev = if format == ExportFormat::Torchscript { dev } else { tch::Device::Cpu };
    let mut model =
        Loaded::load(&info, &weights, model_dev).map_err(|e| Failure::invalid("InvalidWeights", e.to_string()))?;
    let artifact = work.join(format!("model.{}", format.extension()));
    match format {
        ExportFormat::Torchscript => {
            if opts.half {
                model.half();
            }
            tokio::task::block_in_place(|| export::torchscript(&model, &opts, model_dev, &artifact))
                .map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
        }
        ExportFormat::Onnx => {
            let bytes =
                export::onnx(&model, &info, &opts).map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
            std::fs::write(&artifact, bytes).map_err(|e| Failure::transient(e.to_string()))?;
        }
        ExportFormat::Engine => {
            let onnx_opts = Options { half: false, ..opts.clone() };
            let onnx_path = work.join("model.onnx");
            let bytes =
                export::onnx(&model, &info, &onnx_opts).map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
            std::fs::write(&onnx_path, bytes).map_err(|e| Failure::transient(e.to_string()))?;
            let calibration = match (&args.calibration, args.int8) {
                (Some(m), true) => Some(calibration_tensor(&storage, m, args.calibration_images, imgsz, work).await?),
                _ => None,
            };
            let req = tensorrt::BuildRequest {
                onnx: &onnx_path,
                engine: &artifact,
                fp16: args.half,
                int8: args.int8,
                calibration: calibration.as_deref(),
                imgsz,
                batch: args.batch,
                dynamic: args.dynamic,
            };
            tokio::task::block_in_place(|| tensorrt::build(&req))
                .map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
        }
    }
    let bytes = std::fs::read(&artifact).map_err(|e| Failure::transient(e.to_string()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let out_info = ModelInfo {
        format: format.as_str().into(),
        sha256: Some(sha256.clone()),
        imgsz,
        batch: args.batch,
        dynamic: args.dynamic,
        half: args.half,
        ..info
    };
    let info_file = work.join("artifact.json");
    std::fs::write(&info_file, serde_json::to_vec_pretty(&out_info).unwrap_or_default())
        .map_err(|e| Failure::transient(e.to_string()))?;
    storage.store(&artifact, &args.output, "application/octet-stream").await?;
    storage.store(&info_file, &sidecar(&args.output), "application/json").await?;
    Ok(
        json!({"artifactUri": args.output, "sizeBytes": bytes.len(), "sha256": sha256, "format": format.as_str(), "imgsz": imgsz}),
    )
}

/// Letterboxed calibration images as one raw float32 `[N, 3, S, S]` file.
async fn calibration_tensor(
    storage: &Storage,
    manifest: &str,
    n: usize,
    imgsz: u32,
    work: &Path,
) -> Result<PathBuf, Failure> {
    let (_, records) = load_manifest(storage, manifest).await?;
    let records: Vec<_> = records.into_iter().take(n.max(1)).collect();
    let dir = work.join("calibration");
    fetch_images(storage, &records, &dir).await?;
    let mut pixels = Vec::new();
    for r in &records {
        let img = image::open(dir.join(&r.file))
            .map_err(|e| Failure::invalid("InvalidCalibration", format!("{}: {e}", r.source)))?
            .to_rgb8();
        let (boxed, _) = ocellus_vision::letterbox::letterbox(&img, imgsz);
        ocellus_vision::letterbox::to_chw(&boxed, &mut pixels);
    }
    let path = work.join("calibration.f32");
    std::fs::write(&path, pixels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .map_err(|e| Failure::transient(e.to_string()))?;
    Ok(path)
}

//! `export`: trained weights (with their `ModelInfo` sidecar) to a TorchScript, ONNX or TensorRT
//! artifact, written with its own sidecar (`<artifact>.json`, SHA-256 included) last.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ocellus_crds::export::ExportFormat;
use ocellus_dataset::s3::S3Config;
use ocellus_trainer::export::{self, Loaded, Options, tensorrt};
use ocellus_vision::ModelInfo;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{Failure, device, fetch, sidecar, store};
use crate::ingest_cmd::emit;

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
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, env = "OCELLUS_DEVICE", default_value = "auto")]
    pub device: String,
    /// Scratch directory.
    #[arg(long, env = "OCELLUS_WORK_DIR", default_value = "/tmp/ocellus-export")]
    pub work_dir: PathBuf,
}

/// Runs `export`.
pub async fn run(args: ExportArgs) -> ExitCode {
    crate::cli::finish(export_to(&args).await, &args.work_dir)
}

async fn export_to(args: &ExportArgs) -> Result<serde_json::Value, Failure> {
    let format = ExportFormat::parse(&args.format).map_err(|e| Failure::Invalid("UnsupportedFormat", e))?;
    if args.int8 && format != ExportFormat::Engine {
        return Err(Failure::Invalid("InvalidOptions", "int8 is only supported for format engine".into()));
    }
    if args.int8 && args.calibration.is_none() {
        return Err(Failure::Invalid("InvalidOptions", "int8 needs calibration images (--calibration)".into()));
    }
    let dev = device(&args.device).map_err(|e| Failure::Invalid("InvalidDevice", e))?;
    if args.half && format == ExportFormat::Torchscript && dev == tch::Device::Cpu {
        return Err(Failure::Invalid("InvalidOptions", "half-precision TorchScript needs a CUDA device".into()));
    }
    if args.batch == 0 || args.batch > 256 {
        return Err(Failure::Invalid("InvalidOptions", "batch must be 1 to 256".into()));
    }
    // TensorRT is checked before any work: a missing library is a clear, permanent error.
    if format == ExportFormat::Engine {
        tensorrt::available().map_err(|e| Failure::Invalid("TensorRTUnavailable", e))?;
    }
    let s3 = S3Config::from_env().ok();
    std::fs::create_dir_all(&args.work_dir).map_err(|e| Failure::Transient(e.to_string()))?;

    let weights = fetch(s3.as_ref(), &args.weights, &args.work_dir.join("weights.safetensors")).await?;
    let info_path = fetch(s3.as_ref(), &sidecar(&args.weights), &args.work_dir.join("weights.json")).await?;
    let info: ModelInfo =
        serde_json::from_slice(&std::fs::read(&info_path).map_err(|e| Failure::Transient(e.to_string()))?)
            .map_err(|e| Failure::Invalid("InvalidModelInfo", format!("{}: {e}", sidecar(&args.weights))))?;
    let bytes = std::fs::read(&weights).map_err(|e| Failure::Transient(e.to_string()))?;
    if let Some(want) = &info.sha256
        && *want != hex::encode(Sha256::digest(&bytes))
    {
        return Err(Failure::Invalid(
            "ChecksumMismatch",
            "the weights do not match the SHA-256 in their model info".into(),
        ));
    }
    let imgsz = args.imgsz.unwrap_or(info.imgsz);
    if !imgsz.is_multiple_of(32) || !(32..=4096).contains(&imgsz) {
        return Err(Failure::Invalid(
            "InvalidOptions",
            format!("imgsz {imgsz} must be a multiple of 32 between 32 and 4096"),
        ));
    }
    let opts = Options { imgsz, batch: args.batch, dynamic: args.dynamic, half: args.half, opset: args.opset };
    emit(json!({"event": "progress", "phase": "load", "architecture": info.architecture, "format": format.as_str()}));

    let model_dev = if format == ExportFormat::Torchscript { dev } else { tch::Device::Cpu };
    let mut model = Loaded::load(&info, &weights, model_dev).map_err(|e| Failure::Invalid("InvalidWeights", e))?;
    let artifact = args.work_dir.join(format!("model.{}", format.extension()));
    match format {
        ExportFormat::Torchscript => {
            if opts.half {
                model.half();
            }
            tokio::task::block_in_place(|| export::torchscript(&model, &opts, model_dev, &artifact))
                .map_err(|e| Failure::Invalid("ExportFailed", e))?;
        }
        ExportFormat::Onnx => {
            let bytes = export::onnx(&model, &info, &opts).map_err(|e| Failure::Invalid("ExportFailed", e))?;
            std::fs::write(&artifact, bytes).map_err(|e| Failure::Transient(e.to_string()))?;
        }
        ExportFormat::Engine => {
            let onnx_opts = Options { half: false, ..opts.clone() };
            let onnx_path = args.work_dir.join("model.onnx");
            let bytes = export::onnx(&model, &info, &onnx_opts).map_err(|e| Failure::Invalid("ExportFailed", e))?;
            std::fs::write(&onnx_path, bytes).map_err(|e| Failure::Transient(e.to_string()))?;
            let calibration = match (&args.calibration, args.int8) {
                (Some(m), true) => {
                    Some(calibration_tensor(s3.as_ref(), m, args.calibration_images, imgsz, &args.work_dir).await?)
                }
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
            tokio::task::block_in_place(|| tensorrt::build(&req)).map_err(|e| Failure::Invalid("ExportFailed", e))?;
        }
    }
    let bytes = std::fs::read(&artifact).map_err(|e| Failure::Transient(e.to_string()))?;
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
    let info_file = args.work_dir.join("artifact.json");
    std::fs::write(&info_file, serde_json::to_vec_pretty(&out_info).unwrap_or_default())
        .map_err(|e| Failure::Transient(e.to_string()))?;
    store(s3.as_ref(), &artifact, &args.output, "application/octet-stream").await?;
    store(s3.as_ref(), &info_file, &sidecar(&args.output), "application/json").await?;
    Ok(
        json!({"event": "done", "artifactUri": args.output, "sizeBytes": bytes.len(), "sha256": sha256, "format": format.as_str(), "imgsz": imgsz}),
    )
}

/// Letterboxed calibration images as one raw float32 `[N, 3, S, S]` file.
async fn calibration_tensor(
    s3: Option<&S3Config>,
    manifest: &str,
    n: usize,
    imgsz: u32,
    work: &std::path::Path,
) -> Result<PathBuf, Failure> {
    let cfg = s3.ok_or_else(|| Failure::Transient("S3 is not configured".into()))?;
    let (_, records) = crate::cli::load_manifest(cfg, manifest).await?;
    let records: Vec<_> = records.into_iter().take(n.max(1)).collect();
    let dir = work.join("calibration");
    crate::cli::fetch_images(cfg, &records, &dir).await.map_err(Failure::Transient)?;
    let mut pixels = Vec::new();
    for r in &records {
        let img = image::open(dir.join(&r.file))
            .map_err(|e| Failure::Invalid("InvalidCalibration", format!("{}: {e}", r.source)))?
            .to_rgb8();
        let (boxed, _) = ocellus_vision::letterbox::letterbox(&img, imgsz);
        ocellus_vision::letterbox::to_chw(&boxed, &mut pixels);
    }
    let path = work.join("calibration.f32");
    std::fs::write(&path, pixels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .map_err(|e| Failure::Transient(e.to_string()))?;
    Ok(path)
}

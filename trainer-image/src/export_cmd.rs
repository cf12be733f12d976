//! `export`: trained weights (with their `ModelInfo` sidecar) to a TorchScript, ONNX or TensorRT
//! artifact, written with its own sidecar (`<artifact>.json`, SHA-256 included) last.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use ocellus_core::ExportFormat;
use ocellus_storage::Storage;
use ocellus_storage::location::sidecar;
use ocellus_trainer::error::ExportError;
use ocellus_trainer::export::{self, Loaded, Options, int8, tensorrt};
use ocellus_vision::decode::Thresholds;
use ocellus_vision::metrics::evaluate;
use ocellus_vision::quant::{Gate, Method, Target};
use ocellus_vision::{ModelInfo, Quantization};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::args::{DeviceArgs, WorkDirArgs};
use crate::cli::{fetch_images, fetch_model, load_split};
use crate::report::{self, Done, Failure, emit};
use crate::val_cmd::{Evaluated, evaluate_images, letterboxed};

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
    /// INT8 (`onnx` or `engine`; needs `--calibration`): a QDQ model with per-channel INT8
    /// weights and activation ranges calibrated on dataset images, gated on validation mAP.
    #[arg(long, env = "OCELLUS_INT8")]
    pub int8: bool,
    /// Calibration images for INT8: a dataset manifest (`s3://.../manifest.ndjson`).
    #[arg(long, env = "OCELLUS_CALIBRATION_MANIFEST")]
    pub calibration: Option<String>,
    /// Only calibrate on this split of the manifest (default: every image).
    #[arg(long, env = "OCELLUS_CALIBRATION_SPLIT")]
    pub calibration_split: Option<String>,
    /// Calibration images to use (the first of the manifest).
    #[arg(long, env = "OCELLUS_CALIBRATION_IMAGES", default_value_t = 500)]
    pub calibration_images: usize,
    /// Activation range method: `minmax`, `percentile` or `entropy`.
    #[arg(long, env = "OCELLUS_CALIBRATION_METHOD", default_value = "percentile")]
    pub calibration_method: String,
    /// Percentile of |x| the `percentile` method keeps (99.99 clipped enough on YOLO detectors to
    /// cost most of a point of mAP50-95; 99.999 lost none).
    #[arg(long, env = "OCELLUS_CALIBRATION_PERCENTILE", default_value_t = 99.999)]
    pub calibration_percentile: f64,
    /// Validation images of the INT8 accuracy gate: a dataset manifest (default: `--calibration`).
    #[arg(long, env = "OCELLUS_GATE_MANIFEST")]
    pub gate_manifest: Option<String>,
    /// Split of the gate manifest to validate on.
    #[arg(long, env = "OCELLUS_GATE_SPLIT", default_value = "val")]
    pub gate_split: String,
    /// Largest validation mAP50-95 loss, in points, an INT8 model may show against the float
    /// model before the export fails (`AccuracyGateFailed`).
    #[arg(long, env = "OCELLUS_MAX_ACCURACY_DROP", default_value_t = 1.0)]
    pub max_accuracy_drop: f64,
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
    let method = if args.int8 {
        if format == ExportFormat::Torchscript {
            return Err(Failure::invalid("InvalidOptions", "int8 is supported for formats onnx and engine"));
        }
        if args.half && format == ExportFormat::Onnx {
            return Err(Failure::invalid("InvalidOptions", "an ONNX export is either int8 or half, not both"));
        }
        if args.calibration.is_none() {
            return Err(Failure::invalid("InvalidOptions", "int8 needs calibration images (--calibration)"));
        }
        if !(0.0..=100.0).contains(&args.max_accuracy_drop) {
            return Err(Failure::invalid("InvalidOptions", "max-accuracy-drop must be 0 to 100 points"));
        }
        Some(
            Method::parse(&args.calibration_method, args.calibration_percentile)
                .map_err(|e| Failure::invalid("InvalidOptions", e))?,
        )
    } else {
        None
    };
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
    if method.is_some() && !info.is_detect() {
        return Err(Failure::invalid(
            "UnsupportedTask",
            format!("INT8 export is gated on detection mAP; {} is a {} model", info.architecture, info.task),
        ));
    }
    let opts = Options {
        imgsz,
        batch: args.batch,
        dynamic: args.dynamic,
        half: args.half,
        opset: args.opset,
        int8: args.int8,
    };
    emit(json!({"event": "progress", "phase": "load", "architecture": info.architecture, "format": format.as_str()}));

    let model_dev = if format == ExportFormat::Torchscript { dev } else { tch::Device::Cpu };
    let mut model =
        Loaded::load(&info, &weights, model_dev).map_err(|e| Failure::invalid("InvalidWeights", e.to_string()))?;
    let artifact = work.join(format!("model.{}", format.extension()));
    let mut quantization = None;
    match format {
        ExportFormat::Torchscript => {
            if opts.half {
                model.half();
            }
            tokio::task::block_in_place(|| export::torchscript(&model, &opts, model_dev, &artifact))
                .map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
        }
        ExportFormat::Onnx => {
            let (bytes, q) =
                onnx_bytes(args, &storage, &model, &info, &opts, method, Target::OnnxRuntime, work).await?;
            quantization = q;
            std::fs::write(&artifact, bytes).map_err(|e| Failure::transient(e.to_string()))?;
        }
        ExportFormat::Engine => {
            // TensorRT builds from ONNX: float, or for INT8 the same QDQ model as an `onnx`
            // export's calibration (encoded for TensorRT: symmetric activations, float biases), so no
            // TensorRT calibrator runs.
            let onnx_opts = Options { half: false, ..opts.clone() };
            let onnx_path = work.join("model.onnx");
            let (bytes, q) =
                onnx_bytes(args, &storage, &model, &info, &onnx_opts, method, Target::TensorRt, work).await?;
            quantization = q;
            std::fs::write(&onnx_path, bytes).map_err(|e| Failure::transient(e.to_string()))?;
            let req = tensorrt::BuildRequest {
                onnx: &onnx_path,
                engine: &artifact,
                fp16: args.half,
                int8: args.int8,
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
        quantization,
        ..info
    };
    let info_file = work.join("artifact.json");
    std::fs::write(&info_file, serde_json::to_vec_pretty(&out_info).unwrap_or_default())
        .map_err(|e| Failure::transient(e.to_string()))?;
    storage.store(&artifact, &args.output, "application/octet-stream").await?;
    storage.store(&info_file, &sidecar(&args.output), "application/json").await?;
    Ok(json!({
        "artifactUri": args.output, "sizeBytes": bytes.len(), "sha256": sha256, "format": format.as_str(),
        "imgsz": imgsz, "precision": out_info.precision(), "quantization": out_info.quantization,
    }))
}

/// The ONNX model: float, or with `method` the INT8 model for `target` (see [`int8_onnx`]).
#[allow(clippy::too_many_arguments, reason = "the export's inputs")]
async fn onnx_bytes(
    args: &ExportArgs,
    storage: &Storage,
    model: &Loaded,
    info: &ModelInfo,
    opts: &Options,
    method: Option<Method>,
    target: Target,
    work: &Path,
) -> Result<(Vec<u8>, Option<Quantization>), Failure> {
    match method {
        Some(m) => {
            let (bytes, q) = int8_onnx(args, storage, model, info, opts, m, target, work).await?;
            Ok((bytes, Some(q)))
        }
        None => {
            let bytes = export::onnx(model, info, opts).map_err(|e| Failure::invalid("ExportFailed", e.to_string()))?;
            Ok((bytes, None))
        }
    }
}

/// The QDQ INT8 model of `model`, with what its calibration and gate found: activation ranges
/// from `--calibration` images by `method`, then the float and INT8 models (both in ONNX Runtime,
/// dynamic batch) validated on `--gate-manifest`'s split; fails with `AccuracyGateFailed` when
/// INT8 loses more than `--max-accuracy-drop` points of mAP50-95.
#[allow(clippy::too_many_arguments, reason = "the export's inputs")]
async fn int8_onnx(
    args: &ExportArgs,
    storage: &Storage,
    model: &Loaded,
    info: &ModelInfo,
    opts: &Options,
    method: Method,
    target: Target,
    work: &Path,
) -> Result<(Vec<u8>, Quantization), Failure> {
    let failed = |e: ExportError| match e {
        ExportError::OnnxRuntime(m) => Failure::invalid("OnnxRuntimeUnavailable", m),
        e => Failure::invalid("ExportFailed", e.to_string()),
    };
    let imgsz = opts.imgsz;
    // Calibration images.
    let manifest = args.calibration.as_deref().unwrap_or_default();
    let (_, mut records) =
        load_split(storage, manifest, args.calibration_split.as_deref(), &info.names, "the calibration dataset")
            .await?;
    records.truncate(args.calibration_images.max(1));
    let dir = work.join("calibration");
    fetch_images(storage, &records, &dir).await?;
    emit(json!({"event": "progress", "phase": "calibrate", "images": records.len(), "method": method.name()}));

    // Statistics and both models at a dynamic batch (the gate batches images).
    let probe_opts = Options { dynamic: true, batch: 1, half: false, ..opts.clone() };
    let float = export::onnx_model(model, info, &probe_opts).map_err(failed)?;
    let observers = tokio::task::block_in_place(|| {
        let images = records.iter().map(|r| {
            let mut pixels = Vec::new();
            letterboxed(&dir.join(&r.file), imgsz, &mut pixels)
                .map_err(|e| ExportError::InvalidModel(format!("calibration image {}: {e}", r.source)))?;
            Ok(pixels)
        });
        int8::calibrate(&float, imgsz, images)
    })
    .map_err(failed)?;
    let (quantised, stats) = int8::quantize(float.clone(), &observers, method, target).map_err(failed)?;

    // The gate: float and INT8 on the same validation images, same pipeline.
    let gate_manifest = args.gate_manifest.as_deref().unwrap_or(manifest);
    let (gate_header, gate_records) =
        load_split(storage, gate_manifest, Some(&args.gate_split), &info.names, "the accuracy gate's dataset").await?;
    let gate_dir = work.join("gate");
    fetch_images(storage, &gate_records, &gate_dir).await?;
    emit(json!({"event": "progress", "phase": "gate", "images": gate_records.len()}));
    let th = Thresholds { conf: 0.001, iou: 0.7, max_det: 300 };
    let score = |bytes: Vec<u8>| -> Result<f64, Failure> {
        let mut runner = int8::Runner::new(&bytes, imgsz).map_err(failed)?;
        let Evaluated { results, .. } =
            evaluate_images(&gate_records, &gate_dir, &gate_header, info, imgsz, 8, th, |pixels, n| {
                runner.predict(pixels, n).map_err(failed)
            })?;
        Ok(evaluate(&results, info.names.len(), th.max_det).map50_95)
    };
    let (fp32_map, int8_map) =
        tokio::task::block_in_place(|| Ok::<_, Failure>((score(float.bytes())?, score(quantised.bytes())?)))?;
    let gate = Gate { fp32_map, int8_map, max_drop: args.max_accuracy_drop };
    emit(json!({
        "event": "progress", "phase": "gate", "fp32Map": fp32_map, "int8Map": int8_map, "dropPoints": gate.drop_points(),
        "quantizedConvs": stats.convs, "floatConvs": stats.float_convs, "activations": stats.activations,
    }));
    gate.check().map_err(|m| Failure::invalid("AccuracyGateFailed", m))?;
    // The artifact itself, at the requested batch, with the same ranges.
    let artifact = export::onnx_model(model, info, opts).map_err(failed)?;
    let (artifact, _) = int8::quantize(artifact, &observers, method, target).map_err(failed)?;
    let q = Quantization {
        method: method.name().into(),
        percentile: match method {
            Method::Percentile(p) => Some(p),
            _ => None,
        },
        images: records.len(),
        fp32_map,
        int8_map,
        max_drop: args.max_accuracy_drop,
    };
    Ok((artifact.bytes(), q))
}

//! `val`: weights against a dataset split, in original-image pixels (letterbox, forward, decode,
//! class-aware NMS, boxes mapped back: the predictor's pipeline). Prints COCO-style metrics with
//! per-class AP and can save every prediction as JSON.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use ocellus_dataset::manifest::{self, Header, ImageRecord};
use ocellus_storage::Storage;
use ocellus_trainer::export::Loaded;
use ocellus_vision::decode::{Thresholds, decode_to_original};
use ocellus_vision::letterbox::{Letterbox, letterbox, to_chw};
use ocellus_vision::metrics::{GroundTruth, ImageResult, evaluate};
use ocellus_vision::model_info::anchors;
use ocellus_vision::{BBox, ModelInfo};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::args::{DeviceArgs, WorkDirArgs};
use crate::cli::{fetch_images, fetch_model, load_split};
use crate::report::{self, Done, Failure};

/// `val` flags.
#[derive(Args, Debug)]
pub struct ValArgs {
    /// Weights (`s3://...safetensors` or a local path), next to their `.json`.
    #[arg(long, env = "OCELLUS_WEIGHTS")]
    pub weights: String,
    /// Dataset manifest (`s3://.../manifest.ndjson`).
    #[arg(long, env = "OCELLUS_MANIFEST")]
    pub manifest: String,
    /// Split to evaluate.
    #[arg(long, env = "OCELLUS_SPLIT", default_value = "val")]
    pub split: String,
    /// Square input size (default: the training size).
    #[arg(long, env = "OCELLUS_IMGSZ")]
    pub imgsz: Option<u32>,
    /// Images per forward pass.
    #[arg(long, env = "OCELLUS_BATCH", default_value_t = 16)]
    pub batch: usize,
    /// Confidence threshold.
    #[arg(long, env = "OCELLUS_CONF", default_value_t = 0.001)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, env = "OCELLUS_IOU", default_value_t = 0.7)]
    pub iou: f32,
    /// Most detections per image.
    #[arg(long, env = "OCELLUS_MAX_DET", default_value_t = 300)]
    pub max_det: usize,
    /// Write the predictions (JSON) here (`s3://...` or a local path).
    #[arg(long, env = "OCELLUS_PREDICTIONS")]
    pub predictions: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub work: WorkDirArgs,
}

/// Runs `val`.
pub async fn run(args: ValArgs) -> ExitCode {
    let work = args.work.path("val");
    report::finish(val(&args, &work).await.map(Done::Finished), Some(&work))
}

async fn val(args: &ValArgs, work: &Path) -> Result<serde_json::Value, Failure> {
    let dev = args.device.resolve()?;
    if !(0.0..=1.0).contains(&args.conf) || !(0.0..=1.0).contains(&args.iou) || args.batch == 0 {
        return Err(Failure::invalid("InvalidOptions", "conf and iou must be in [0, 1], batch at least 1"));
    }
    let storage = Storage::from_env();
    let (weights, info) = fetch_model(&storage, &args.weights, work).await?;
    if !info.is_detect() {
        return Err(Failure::invalid(
            "UnsupportedTask",
            format!("val supports detectors; {} is a {} model", info.architecture, info.task),
        ));
    }
    let imgsz = args.imgsz.unwrap_or(info.imgsz);
    if !imgsz.is_multiple_of(32) {
        return Err(Failure::invalid("InvalidOptions", format!("imgsz {imgsz} is not a multiple of 32")));
    }
    let (header, records) = load_split(&storage, &args.manifest, Some(&args.split), &info.names, "the dataset").await?;
    let dir = work.join("images");
    fetch_images(&storage, &records, &dir).await?;
    let model = Loaded::load(&info, &weights, dev).map_err(|e| Failure::invalid("InvalidWeights", e.to_string()))?;

    let th = Thresholds { conf: args.conf, iou: args.iou, max_det: args.max_det };
    let nc = info.names.len();
    let s = i64::from(imgsz);
    let Evaluated { results, predictions } = tokio::task::block_in_place(|| {
        evaluate_images(&records, &dir, &header, &info, imgsz, args.batch, th, |pixels, n| {
            let x = Tensor::from_slice(pixels).view([n as i64, 3, s, s]).to_device(dev);
            let y = model.forward(&x).to_device(Device::Cpu).to_kind(Kind::Float);
            Vec::<f32>::try_from(y.flatten(0, -1)).map_err(|e| Failure::transient(e.to_string()))
        })
    })?;
    let e = evaluate(&results, nc, args.max_det);
    let per_class: Vec<serde_json::Value> = (0..nc)
        .map(|c| json!({"class": c, "name": info.names[c], "ap50": e.per_class_ap50[c], "ap50_95": e.per_class_ap[c]}))
        .collect();
    if let Some(dest) = &args.predictions {
        let path = work.join("predictions.json");
        std::fs::write(&path, serde_json::to_vec(&predictions).unwrap_or_default())
            .map_err(|e| Failure::transient(e.to_string()))?;
        storage.store(&path, dest, "application/json").await?;
    }
    Ok(json!({
        "images": results.len(), "imgsz": imgsz,
        "metrics": {"precision": e.precision, "recall": e.recall, "map50": e.map50, "map50_95": e.map50_95},
        "perClass": per_class, "predictionsUri": args.predictions,
    }))
}

/// A detector's predictions over a split, ready for [`evaluate`].
pub(crate) struct Evaluated {
    /// Ground truth and detections per image, in original pixels.
    pub results: Vec<ImageResult>,
    /// Every detection as JSON, per image.
    pub predictions: Vec<serde_json::Value>,
}

/// Runs a detector over `records` (images in `dir`) with the predictor's pipeline: letterbox,
/// `forward` on `[n, 3, imgsz, imgsz]` pixels returning the raw `[n, 4 + classes, anchors]`
/// output, decode, class-aware NMS, boxes back in original pixels. Any runtime can supply
/// `forward` (libtorch for `val`, ONNX Runtime for the INT8 gate).
#[allow(clippy::too_many_arguments, reason = "one call site per runtime")]
pub(crate) fn evaluate_images(
    records: &[ImageRecord],
    dir: &Path,
    header: &Header,
    info: &ModelInfo,
    imgsz: u32,
    batch: usize,
    th: Thresholds,
    mut forward: impl FnMut(&[f32], usize) -> Result<Vec<f32>, Failure>,
) -> Result<Evaluated, Failure> {
    let c = 4 + info.names.len();
    let a = anchors(imgsz);
    let mut results = Vec::new();
    let mut predictions = Vec::new();
    for chunk in records.chunks(batch.max(1)) {
        let mut pixels = Vec::new();
        let mut boxes = Vec::new();
        for r in chunk {
            let lb = letterboxed(&dir.join(&r.file), imgsz, &mut pixels)
                .map_err(|e| Failure::invalid("CorruptImage", format!("{}: {e}", r.source)))?;
            boxes.push(lb);
        }
        let flat = forward(&pixels, chunk.len())?;
        if flat.len() != chunk.len() * c * a {
            return Err(Failure::invalid(
                "InvalidModel",
                format!("the model gave {} values for {} images of [{c}, {a}]", flat.len(), chunk.len()),
            ));
        }
        for (i, r) in chunk.iter().enumerate() {
            let dets = decode_to_original(&flat[i * c * a..(i + 1) * c * a], c - 4, a, th, &boxes[i]);
            let (w, h) = (r.width as f32, r.height as f32);
            let gts = manifest::parse_annotations(header.task, r)
                .iter()
                .filter_map(|an| {
                    let (cx, cy, bw, bh) = an.bbox()?;
                    Some(GroundTruth {
                        bbox: BBox::from_cxcywh(cx as f32 * w, cy as f32 * h, bw as f32 * w, bh as f32 * h),
                        class: an.class(),
                    })
                })
                .collect();
            predictions.push(json!({
                "file": r.file, "source": r.source, "width": r.width, "height": r.height,
                "detections": dets.iter().map(|d| json!({
                    "class": d.class, "name": info.names.get(d.class), "confidence": d.score,
                    "box": {"x1": d.bbox.x1, "y1": d.bbox.y1, "x2": d.bbox.x2, "y2": d.bbox.y2},
                })).collect::<Vec<_>>(),
            }));
            results.push(ImageResult { gts, dets });
        }
    }
    Ok(Evaluated { results, predictions })
}

/// The image at `path` letterboxed to `imgsz`, appended to `out` as CHW floats in [0, 1] (the
/// predictor's preprocessing); returns the letterbox that maps boxes back.
pub(crate) fn letterboxed(path: &Path, imgsz: u32, out: &mut Vec<f32>) -> Result<Letterbox, image::ImageError> {
    let img = image::open(path)?.to_rgb8();
    let (boxed, lb) = letterbox(&img, imgsz);
    to_chw(&boxed, out);
    Ok(lb)
}

//! Detector training: the TAL + CIoU + DFL + BCE loss, and COCO-style mAP validation with the
//! shared `ocellus_vision` post-processing (what the predictor runs).

use std::sync::Arc;

use ocellus_vision::BBox;
use ocellus_vision::decode::{Thresholds, decode_to_original};
use ocellus_vision::letterbox::Letterbox;
use ocellus_vision::metrics::{GroundTruth, ImageResult, evaluate};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data::{Batch, Sample, epoch_batches};
use super::session::{Net, Session};
use super::task::TaskModel;
use super::{EpochReport, TrainConfig, batch_tensor};
use crate::error::TrainError;
use crate::loss::{LossConfig, Target, detection_loss};
use crate::model::{Architecture, Detector};

impl TaskModel for Detector {
    fn loss(&self, x: &Tensor, b: &Batch, nc: i64, autocast: bool) -> Tensor {
        let levels: Vec<Tensor> = tch::autocast(autocast, || self.forward_levels(x, true))
            .into_iter()
            .map(|l| l.to_kind(Kind::Float))
            .collect();
        detection_loss(&LossConfig::default(), nc, &levels, &b.targets)
    }

    fn validate(&self, val: &Arc<Vec<Sample>>, cfg: &TrainConfig, report: &mut EpochReport) -> Result<(), TrainError> {
        let ev = validate(self, val, cfg.imgsz, cfg.batch, cfg.device, cfg.workers)?;
        (report.precision, report.recall, report.map50, report.map50_95) =
            (ev.precision, ev.recall, ev.map50, ev.map50_95);
        report.per_class_ap = ev.per_class_ap;
        Ok(())
    }
}

/// Validation thresholds, Ultralytics' validator defaults (and `ocellus-trainer val`'s).
const VAL_THRESHOLDS: Thresholds = Thresholds { conf: 0.001, iou: 0.7, max_det: 300 };

/// Validates `model` on `samples` as `ocellus-trainer val` does and as pycocotools scores the
/// exported model's predictions: detections mapped back to original-image pixels and clipped to
/// the image, ground truth in original pixels. (Comparing in letterboxed pixels left boxes that
/// run into the padding unclipped, and put the ground truth where one `scale` maps it, not where
/// the rounded resize put the object.)
pub fn validate(
    model: &Detector,
    samples: &Arc<Vec<Sample>>,
    imgsz: u32,
    batch: usize,
    device: Device,
    workers: usize,
) -> Result<ocellus_vision::metrics::Evaluation, TrainError> {
    let order: Vec<usize> = (0..samples.len()).collect();
    let mut results = Vec::with_capacity(samples.len());
    for b in epoch_batches(samples.clone(), order, batch, imgsz, None, 0, workers) {
        let b = b?;
        let y = tch::no_grad(|| model.predict(&batch_tensor(&b, imgsz, device)))
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let (n, c, a) = (y.size()[0] as usize, y.size()[1] as usize, y.size()[2] as usize);
        let flat: Vec<f32> = Vec::<f32>::try_from(y.flatten(0, -1))?;
        for one in flat.chunks_exact(c * a).take(n) {
            // Batches arrive in sample order; the geometry is the one `data::load` letterboxed with.
            let sample = &samples[results.len()];
            let (w, h) = image::image_dimensions(&sample.path)
                .map_err(|e| TrainError::Image { path: sample.path.clone(), message: e.to_string() })?;
            results.push(image_result(one, c - 4, a, &Letterbox::new(w, h, imgsz), &sample.targets));
        }
    }
    Ok(evaluate(&results, model.nc as usize, VAL_THRESHOLDS.max_det))
}

/// One image's detections (`out`: `[4 + classes][anchors]`) and ground truth (normalised to the
/// original image), both in original-image pixels.
fn image_result(out: &[f32], classes: usize, anchors: usize, lb: &Letterbox, targets: &[Target]) -> ImageResult {
    let (w, h) = (lb.orig_w as f32, lb.orig_h as f32);
    let gts = targets
        .iter()
        .map(|t| GroundTruth {
            bbox: BBox::from_cxcywh(t.xywh[0] * w, t.xywh[1] * h, t.xywh[2] * w, t.xywh[3] * h),
            class: t.class as usize,
        })
        .collect();
    ImageResult { gts, dets: decode_to_original(out, classes, anchors, VAL_THRESHOLDS, lb) }
}

/// Trains a detector from scratch to the end; returns the EMA weights and model, and one report
/// per epoch. See [`Session`] for pausing and resuming.
pub fn train(
    arch: &Architecture,
    nc: i64,
    train: Vec<Sample>,
    val: Vec<Sample>,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<(VarStore, Detector, Vec<EpochReport>), TrainError> {
    match Session::train_to_end(arch, nc, train, val, cfg, on_epoch)? {
        (vs, Net::Detect(m), reports) => Ok((vs, m, reports)),
        _ => Err(TrainError::Unsupported(format!("yolov8{}-cls is not a detector", arch.letter))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box that runs past the image into the padding is clipped before it is matched, as
    /// pycocotools sees the exported model's predictions: here it then equals the ground truth.
    /// Compared in letterboxed pixels, unclipped, its IoU is 0.66 and mAP50-95 was 0.4.
    #[test]
    fn scores_in_original_pixels_clipped_to_the_image() {
        // 240x160 into 160: 160x107, 26 px of padding on top. Ground truth: class 0 at
        // (100, 140)-(140, 160) in the original, on the bottom edge.
        let lb = Letterbox::new(240, 160, 160);
        let target = Target { class: 0, xywh: [120.0 / 240.0, 150.0 / 160.0, 40.0 / 240.0, 20.0 / 160.0] };
        // Predicted in letterboxed pixels: x 66.67..93.33, y from 140 * 107/160 + 26 = 119.625
        // to 140, 7 px into the bottom padding (the image ends at 133).
        let (x1, x2, y1, y2) = (200.0 / 3.0, 280.0 / 3.0, 119.625, 140.0);
        let out = [(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1, 0.9];
        let r = image_result(&out, 1, 1, &lb, &[target]);
        let d = r.dets[0].bbox;
        assert!((d.y2 - 160.0).abs() < 1e-4 && (d.y1 - 140.0).abs() < 1e-3, "{d:?}");
        let e = evaluate(&[r], 1, 300);
        assert!((e.map50_95 - 1.0).abs() < 1e-9, "{e:?}");
    }
}

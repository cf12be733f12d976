//! Detector training: the TAL + CIoU + DFL + BCE loss, and COCO-style mAP validation with the
//! shared `ocellus_vision` post-processing (what the predictor runs).

use std::sync::Arc;

use ocellus_vision::BBox;
use ocellus_vision::decode::{Thresholds, decode};
use ocellus_vision::metrics::{GroundTruth, ImageResult, evaluate};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data::{Batch, Sample, epoch_batches};
use super::session::{Net, Session};
use super::task::TaskModel;
use super::{EpochReport, TrainConfig, batch_tensor};
use crate::error::TrainError;
use crate::loss::{LossConfig, detection_loss};
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

/// Validates `model` on `samples`; boxes are compared in letterboxed pixels.
pub fn validate(
    model: &Detector,
    samples: &Arc<Vec<Sample>>,
    imgsz: u32,
    batch: usize,
    device: Device,
    workers: usize,
) -> Result<ocellus_vision::metrics::Evaluation, TrainError> {
    let order: Vec<usize> = (0..samples.len()).collect();
    let mut results = Vec::new();
    let s = imgsz as f32;
    let th = Thresholds { conf: 0.001, iou: 0.7, max_det: 300 };
    for b in epoch_batches(samples.clone(), order, batch, imgsz, None, 0, workers) {
        let b = b?;
        let y = tch::no_grad(|| model.predict(&batch_tensor(&b, imgsz, device)))
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let (n, c, a) = (y.size()[0], y.size()[1], y.size()[2]);
        let flat: Vec<f32> = Vec::<f32>::try_from(y.flatten(0, -1))?;
        for (i, targets) in b.targets.iter().enumerate().take(n as usize) {
            let one = &flat[i * (c * a) as usize..(i + 1) * (c * a) as usize];
            let dets = decode(one, (c - 4) as usize, a as usize, th);
            let gts = targets
                .iter()
                .map(|t| GroundTruth {
                    bbox: BBox::from_cxcywh(t.xywh[0] * s, t.xywh[1] * s, t.xywh[2] * s, t.xywh[3] * s),
                    class: t.class as usize,
                })
                .collect();
            results.push(ImageResult { gts, dets });
        }
    }
    Ok(evaluate(&results, (model.nc) as usize, 300))
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

//! Classifier training: cross-entropy on whole images, with the detector's optimiser, schedule,
//! EMA, checkpoints and colour/flip augmentation (through the shared session); top-1 and top-5 accuracy
//! after every epoch.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data::{Augment, Batch, Sample, epoch_batches};
use super::session::{Net, Session};
use super::task::{TaskModel, photometric_only};
use super::{EpochReport, TrainConfig, batch_tensor};
use crate::error::TrainError;
use crate::loss::Target;
use crate::model::{Architecture, Classifier};

impl TaskModel for Classifier {
    fn loss(&self, x: &Tensor, b: &Batch, _nc: i64, autocast: bool) -> Tensor {
        let logits = tch::autocast(autocast, || self.forward_t(x, true)).to_kind(Kind::Float);
        let ce = logits.cross_entropy_for_logits(&labels(b, x.device())) * b.len as f64;
        let zero = Tensor::zeros([1], (Kind::Float, x.device()));
        Tensor::cat(&[zero.shallow_clone(), ce.view([1]), zero], 0)
    }

    /// Ultralytics' `v8ClassificationLoss` is the batch's mean cross-entropy.
    fn backward_gain(&self, batch_len: usize) -> f64 {
        1.0 / batch_len.max(1) as f64
    }

    fn validate(&self, val: &Arc<Vec<Sample>>, cfg: &TrainConfig, report: &mut EpochReport) -> Result<(), TrainError> {
        let (top1, top5) = validate(self, val, cfg)?;
        (report.top1, report.top5) = (Some(top1), Some(top5));
        Ok(())
    }

    fn augment(&self, a: Augment) -> Augment {
        photometric_only(a)
    }
}

/// Metrics after one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean cross-entropy per image.
    pub loss: f64,
    /// Validation top-1 accuracy.
    pub top1: f64,
    /// Validation top-5 accuracy.
    pub top5: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// A labelled image: the class is carried as one whole-image target.
pub fn sample(path: PathBuf, class: usize) -> Sample {
    Sample { path, targets: vec![Target { class: class as i64, xywh: [0.5, 0.5, 1.0, 1.0] }] }
}

/// Class labels of a batch (each image's one whole-image target).
fn labels(b: &Batch, device: Device) -> Tensor {
    let l: Vec<i64> = b.targets.iter().map(|t| t.first().map(|t| t.class).unwrap_or(0)).collect();
    Tensor::from_slice(&l).to_device(device)
}

/// Top-1 and top-5 accuracy of `model` on `samples`.
pub fn validate(model: &Classifier, samples: &Arc<Vec<Sample>>, cfg: &TrainConfig) -> Result<(f64, f64), TrainError> {
    let (mut top1, mut top5, mut n) = (0i64, 0i64, 0i64);
    let order: Vec<usize> = (0..samples.len()).collect();
    for b in epoch_batches(samples.clone(), order, cfg.batch, cfg.imgsz, None, 0, cfg.workers) {
        let b = b?;
        let y = labels(&b, cfg.device);
        let logits = tch::no_grad(|| model.forward_t(&batch_tensor(&b, cfg.imgsz, cfg.device), false));
        let k = logits.size()[1].min(5);
        let (_, idx) = logits.topk(k, 1, true, true);
        let hit = idx.eq_tensor(&y.unsqueeze(1));
        top1 += hit.narrow(1, 0, 1).sum(Kind::Int64).int64_value(&[]);
        top5 += hit.any_dim(1, false).sum(Kind::Int64).int64_value(&[]);
        n += b.len as i64;
    }
    let n = n.max(1) as f64;
    Ok((top1 as f64 / n, top5 as f64 / n))
}

/// Trains a classifier (the resumable [`Session`], as detectors); returns the
/// EMA weights and model, and one report per epoch.
pub fn train(
    arch: &Architecture,
    nc: i64,
    train: Vec<Sample>,
    val: Vec<Sample>,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&ClassifyReport),
) -> Result<(VarStore, Classifier, Vec<ClassifyReport>), TrainError> {
    let report = |r: &EpochReport| ClassifyReport {
        epoch: r.epoch,
        loss: r.cls_loss,
        top1: r.top1.unwrap_or(0.0),
        top5: r.top5.unwrap_or(0.0),
        images_per_second: r.images_per_second,
    };
    match Session::train_to_end(arch, nc, train, val, cfg, &mut |r| on_epoch(&report(r)))? {
        (vs, Net::Classify(m), reports) => Ok((vs, m, reports.iter().map(report).collect())),
        _ => Err(TrainError::Unsupported(format!("yolov8{} is not a classifier", arch.letter))),
    }
}

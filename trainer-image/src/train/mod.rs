//! The training loop: AdamW with warm-up and linear or cosine decay, gradient accumulation to a
//! nominal batch of 64, gradient clipping, EMA weights, and validation (COCO-style mAP with the
//! shared `ocellus_vision` post-processing) after every epoch.

pub mod classify;
pub mod data;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ocellus_vision::decode::{Thresholds, decode};
use ocellus_vision::metrics::{GroundTruth, ImageResult, evaluate};
use ocellus_vision::BBox;
use serde::Serialize;
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use crate::loss::{LossConfig, Target, detection_loss};
use crate::model::{Architecture, Detector};
use data::{Augment, Rng, Sample, epoch_batches};

/// Training settings (Ultralytics' names).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Square input size.
    pub imgsz: u32,
    /// Images per batch.
    pub batch: usize,
    /// Nominal batch size: gradients are accumulated to about this many images per step.
    pub nbs: usize,
    /// Initial learning rate.
    pub lr0: f64,
    /// Final learning rate as a fraction of `lr0`.
    pub lrf: f64,
    /// Cosine instead of linear decay.
    pub cos_lr: bool,
    /// Warm-up epochs (at least 100 iterations).
    pub warmup_epochs: f64,
    /// Decoupled weight decay of convolution weights.
    pub weight_decay: f64,
    /// Seed.
    pub seed: u64,
    /// Data-loading threads.
    pub workers: usize,
    /// Device.
    pub device: Device,
    /// Augmentation (none when `None`).
    pub augment: Option<Augment>,
}

/// Metrics after one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean box loss per image.
    pub box_loss: f64,
    /// Mean classification loss per image.
    pub cls_loss: f64,
    /// Mean DFL loss per image.
    pub dfl_loss: f64,
    /// Validation precision.
    pub precision: f64,
    /// Validation recall.
    pub recall: f64,
    /// Validation mAP50.
    pub map50: f64,
    /// Validation mAP50-95.
    pub map50_95: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// Learning-rate factor of epoch `e` (0-based) of `epochs`.
pub fn lr_factor(e: f64, epochs: f64, lrf: f64, cos: bool) -> f64 {
    if cos { ((1.0 - (e * std::f64::consts::PI / epochs).cos()) / 2.0) * (lrf - 1.0) + 1.0 } else { (1.0 - e / epochs).max(0.0) * (1.0 - lrf) + lrf }
}

pub(crate) fn batch_tensor(b: &data::Batch, size: u32, device: Device) -> Tensor {
    Tensor::from_slice(&b.pixels).view([b.len as i64, 3, i64::from(size), i64::from(size)]).to_device(device)
}

/// Exponential moving average of the weights (Ultralytics' ModelEMA: decay 0.9999, tau 2000);
/// the EMA model is built on `vs` by the caller.
pub(crate) struct Ema {
    pub(crate) vs: VarStore,
    updates: f64,
}

impl Ema {
    /// An EMA starting from `source`'s current weights.
    pub(crate) fn new(mut vs: VarStore, source: &VarStore) -> Result<Ema, String> {
        vs.copy(source).map_err(|e| e.to_string())?;
        vs.freeze();
        Ok(Ema { vs, updates: 0.0 })
    }

    pub(crate) fn update(&mut self, source: &VarStore) {
        self.updates += 1.0;
        let d = 0.9999 * (1.0 - (-self.updates / 2000.0).exp());
        let src: HashMap<String, Tensor> = source.variables();
        tch::no_grad(|| {
            for (k, e) in self.vs.variables() {
                if let Some(s) = src.get(&k) {
                    if e.is_floating_point() {
                        let _ = e.shallow_clone().g_mul_scalar_(d).g_add_(&(s * (1.0 - d)));
                    }
                }
            }
        });
    }
}

/// Validates `model` on `samples`; boxes are compared in letterboxed pixels.
pub fn validate(model: &Detector, samples: &Arc<Vec<Sample>>, imgsz: u32, batch: usize, device: Device, workers: usize) -> Result<ocellus_vision::metrics::Evaluation, String> {
    let order: Vec<usize> = (0..samples.len()).collect();
    let mut results = Vec::new();
    let s = imgsz as f32;
    let th = Thresholds { conf: 0.001, iou: 0.7, max_det: 300 };
    for b in epoch_batches(samples.clone(), order, batch, imgsz, None, 0, workers) {
        let b = b?;
        let y = tch::no_grad(|| model.predict(&batch_tensor(&b, imgsz, device))).to_device(Device::Cpu).to_kind(Kind::Float);
        let (n, c, a) = (y.size()[0], y.size()[1], y.size()[2]);
        let flat: Vec<f32> = Vec::<f32>::try_from(y.flatten(0, -1)).map_err(|e| e.to_string())?;
        for (i, targets) in b.targets.iter().enumerate().take(n as usize) {
            let one = &flat[i * (c * a) as usize..(i + 1) * (c * a) as usize];
            let dets = decode(one, (c - 4) as usize, a as usize, th);
            let gts = targets
                .iter()
                .map(|t| GroundTruth { bbox: BBox::from_cxcywh(t.xywh[0] * s, t.xywh[1] * s, t.xywh[2] * s, t.xywh[3] * s), class: t.class as usize })
                .collect();
            results.push(ImageResult { gts, dets });
        }
    }
    Ok(evaluate(&results, (model.nc) as usize, 300))
}

/// Trains a detector; returns the EMA weights (the ones to keep) and one report per epoch.
pub fn train(arch: &Architecture, nc: i64, train: Vec<Sample>, val: Vec<Sample>, cfg: &TrainConfig, on_epoch: &mut dyn FnMut(&EpochReport)) -> Result<(VarStore, Detector, Vec<EpochReport>), String> {
    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(cfg.device);
    let model = Detector::new(&(vs.root() / "model"), arch, nc);
    let ema_vs = VarStore::new(cfg.device);
    let ema_model = Detector::new(&(ema_vs.root() / "model"), arch, nc);
    let mut ema = Ema::new(ema_vs, &vs)?;

    let mut opt = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }.build(&vs, cfg.lr0).map_err(|e| e.to_string())?;
    let accumulate = (cfg.nbs as f64 / cfg.batch as f64).round().max(1.0) as usize;
    let wd = cfg.weight_decay * (cfg.batch * accumulate) as f64 / cfg.nbs as f64;
    let conv_weights: Vec<Tensor> = vs.trainable_variables().into_iter().filter(|t| t.dim() == 4).collect();
    let train = Arc::new(train);
    let val = Arc::new(val);
    let nb = train.len().div_ceil(cfg.batch);
    let warmup_iters = if cfg.warmup_epochs > 0.0 { ((cfg.warmup_epochs * nb as f64).round() as usize).max(100) } else { 0 };
    let loss_cfg = LossConfig::default();
    let mut rng = Rng::new(cfg.seed);
    let mut reports = Vec::new();
    let mut iteration = 0usize;
    for epoch in 0..cfg.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let target_lr = cfg.lr0 * lr_factor(epoch as f64, cfg.epochs as f64, cfg.lrf, cfg.cos_lr);
        let mut sums = [0f64; 3];
        let mut seen = 0usize;
        for (bi, b) in epoch_batches(train.clone(), order, cfg.batch, cfg.imgsz, cfg.augment, cfg.seed ^ (epoch as u64) << 32, cfg.workers).into_iter().enumerate() {
            let b = b?;
            let lr = if iteration < warmup_iters { target_lr * iteration as f64 / warmup_iters as f64 } else { target_lr };
            opt.set_lr(lr);
            let x = batch_tensor(&b, cfg.imgsz, cfg.device);
            let targets: Vec<Vec<Target>> = b.targets;
            let loss = detection_loss(&loss_cfg, nc, &model.forward_levels(&x, true), &targets);
            let total = loss.sum(Kind::Float);
            if !total.double_value(&[]).is_finite() {
                return Err(format!("loss became non-finite at epoch {} batch {bi}", epoch + 1));
            }
            total.backward();
            for (k, s) in sums.iter_mut().enumerate() {
                *s += loss.double_value(&[k as i64]);
            }
            seen += b.len;
            iteration += 1;
            if iteration % accumulate == 0 || bi + 1 == nb {
                opt.clip_grad_norm(10.0);
                opt.step();
                opt.zero_grad();
                // Decoupled weight decay on convolution weights only (not batch-norm or biases).
                tch::no_grad(|| {
                    for w in &conv_weights {
                        let _ = w.shallow_clone().g_mul_scalar_(1.0 - lr * wd);
                    }
                });
                ema.update(&vs);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let ev = validate(&ema_model, &val, cfg.imgsz, cfg.batch, cfg.device, cfg.workers)?;
        let n = seen.max(1) as f64;
        let report = EpochReport {
            epoch: epoch + 1,
            box_loss: sums[0] / n,
            cls_loss: sums[1] / n,
            dfl_loss: sums[2] / n,
            precision: ev.precision,
            recall: ev.recall,
            map50: ev.map50,
            map50_95: ev.map50_95,
            images_per_second: n / secs,
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok((ema.vs, ema_model, reports))
}

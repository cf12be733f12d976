//! Classifier training: cross-entropy on whole images, with the detector's optimiser, schedule,
//! EMA and augmentation; top-1 and top-5 accuracy after every epoch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor, nn};

use super::data::{Rng, Sample, epoch_batches};
use super::{Ema, TrainConfig, batch_tensor, lr_factor};
use crate::loss::Target;
use crate::model::{Architecture, Classifier};

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

fn labels(b: &super::data::Batch, device: Device) -> Tensor {
    let l: Vec<i64> = b.targets.iter().map(|t| t.first().map(|t| t.class).unwrap_or(0)).collect();
    Tensor::from_slice(&l).to_device(device)
}

/// Top-1 and top-5 accuracy of `model` on `samples`.
pub fn validate(model: &Classifier, samples: &Arc<Vec<Sample>>, cfg: &TrainConfig) -> Result<(f64, f64), String> {
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

/// Trains a classifier; returns the EMA weights and model, and one report per epoch.
pub fn train(arch: &Architecture, nc: i64, train: Vec<Sample>, val: Vec<Sample>, cfg: &TrainConfig, on_epoch: &mut dyn FnMut(&ClassifyReport)) -> Result<(VarStore, Classifier, Vec<ClassifyReport>), String> {
    tch::manual_seed(cfg.seed as i64);
    let vs = VarStore::new(cfg.device);
    let model = Classifier::new(&(vs.root() / "model"), arch, nc);
    let ema_vs = VarStore::new(cfg.device);
    let ema_model = Classifier::new(&(ema_vs.root() / "model"), arch, nc);
    let mut ema = Ema::new(ema_vs, &vs)?;
    let mut opt = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }.build(&vs, cfg.lr0).map_err(|e| e.to_string())?;
    let accumulate = (cfg.nbs as f64 / cfg.batch as f64).round().max(1.0) as usize;
    let wd = cfg.weight_decay * (cfg.batch * accumulate) as f64 / cfg.nbs as f64;
    let conv_weights: Vec<Tensor> = vs.trainable_variables().into_iter().filter(|t| t.dim() >= 2).collect();
    let (train, val) = (Arc::new(train), Arc::new(val));
    let nb = train.len().div_ceil(cfg.batch);
    let warmup_iters = if cfg.warmup_epochs > 0.0 { ((cfg.warmup_epochs * nb as f64).round() as usize).max(100) } else { 0 };
    let mut rng = Rng::new(cfg.seed);
    let mut reports = Vec::new();
    let mut iteration = 0usize;
    for epoch in 0..cfg.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let target_lr = cfg.lr0 * lr_factor(epoch as f64, cfg.epochs as f64, cfg.lrf, cfg.cos_lr);
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        for (bi, b) in epoch_batches(train.clone(), order, cfg.batch, cfg.imgsz, cfg.augment, cfg.seed ^ (epoch as u64) << 32, cfg.workers).into_iter().enumerate() {
            let b = b?;
            let lr = if iteration < warmup_iters { target_lr * iteration as f64 / warmup_iters as f64 } else { target_lr };
            opt.set_lr(lr);
            let logits = model.forward_t(&batch_tensor(&b, cfg.imgsz, cfg.device), true);
            let loss = logits.cross_entropy_for_logits(&labels(&b, cfg.device));
            let v = loss.double_value(&[]);
            if !v.is_finite() {
                return Err(format!("loss became non-finite at epoch {} batch {bi}", epoch + 1));
            }
            loss.backward();
            loss_sum += v * b.len as f64;
            seen += b.len;
            iteration += 1;
            if iteration % accumulate == 0 || bi + 1 == nb {
                opt.clip_grad_norm(10.0);
                opt.step();
                opt.zero_grad();
                tch::no_grad(|| {
                    for w in &conv_weights {
                        let _ = w.shallow_clone().g_mul_scalar_(1.0 - lr * wd);
                    }
                });
                ema.update(&vs);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let (top1, top5) = validate(&ema_model, &val, cfg)?;
        let r = ClassifyReport { epoch: epoch + 1, loss: loss_sum / seen.max(1) as f64, top1, top5, images_per_second: seen as f64 / secs };
        on_epoch(&r);
        reports.push(r);
    }
    Ok((ema.vs, ema_model, reports))
}

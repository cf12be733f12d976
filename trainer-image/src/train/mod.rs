//! The training loop: AdamW or SGD with warm-up and linear or cosine decay, gradient accumulation to a
//! nominal batch of 64, gradient clipping, EMA weights, and validation (COCO-style mAP with the
//! shared `ocellus_vision` post-processing) after every epoch.

pub mod classify;
pub mod data;
pub mod detect;
pub mod geometry;
pub mod session;
pub mod task;

pub use detect::{train, validate};

use std::collections::HashMap;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::TrainError;
use data::Augment;

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
    /// Warm-up epochs (at most all but the last epoch).
    pub warmup_epochs: f64,
    /// Learning rate biases start warm-up with, falling to `lr0` (Ultralytics' `warmup_bias_lr`:
    /// 0.1, and 0 under `optimizer=auto`).
    pub warmup_bias_lr: f64,
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
    /// Optimiser.
    pub optimizer: Optimizer,
    /// SGD momentum (after warm-up, which ramps it up from 0.8) and AdamW's beta1, as
    /// Ultralytics' `momentum`.
    pub momentum: f64,
    /// Mixed precision: autocast on CUDA, with dynamic loss scaling.
    pub amp: bool,
    /// Turn mosaic off for this many final epochs (Ultralytics' `close_mosaic`).
    pub close_mosaic: usize,
    /// Early stopping: stop after this many epochs without a better fitness (Ultralytics'
    /// `patience`); 0 never stops early.
    pub patience: usize,
}

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    /// AdamW (decoupled weight decay).
    AdamW,
    /// SGD with Nesterov momentum (L2 weight decay), as Ultralytics' `optimizer=SGD`.
    Sgd,
}

impl std::str::FromStr for Optimizer {
    type Err = crate::error::ParseError;
    fn from_str(s: &str) -> Result<Self, crate::error::ParseError> {
        match s.to_ascii_lowercase().as_str() {
            "adamw" => Ok(Optimizer::AdamW),
            "sgd" => Ok(Optimizer::Sgd),
            other => Err(crate::error::ParseError(format!("unknown optimizer {other:?}: AdamW or SGD"))),
        }
    }
}

impl Default for TrainConfig {
    /// Ultralytics' defaults where they apply (CPU, AdamW at 0.002, no augmentation).
    fn default() -> Self {
        TrainConfig {
            epochs: 100,
            imgsz: 640,
            batch: 16,
            nbs: 64,
            lr0: 0.002,
            lrf: 0.01,
            cos_lr: false,
            warmup_epochs: 3.0,
            warmup_bias_lr: 0.1,
            weight_decay: 0.0005,
            seed: 0,
            workers: 2,
            device: Device::Cpu,
            augment: None,
            optimizer: Optimizer::AdamW,
            momentum: 0.937,
            amp: false,
            close_mosaic: 10,
            patience: 100,
        }
    }
}

/// Metrics after one epoch.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
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
    /// Validation AP50-95 per class (detectors; `null` for classes absent from the val split).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class_ap: Vec<Option<f64>>,
    /// Validation top-1 accuracy (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    /// Validation top-5 accuracy (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    /// Training images per second.
    pub images_per_second: f64,
}

impl EpochReport {
    /// What `best` is chosen by: mAP50-95 for detectors, mean of top-1 and top-5 for
    /// classifiers (as Ultralytics).
    pub fn fitness(&self) -> f64 {
        match (self.top1, self.top5) {
            (Some(a), Some(b)) => (a + b) / 2.0,
            _ => self.map50_95,
        }
    }
}

/// Epochs since the best one, by fitness per finished epoch, as Ultralytics' `EarlyStopping`
/// counts them: an epoch is the new best when its fitness beats the best so far, or while the
/// best so far is 0 (the early zero-fitness stage of training).
pub fn epochs_without_improvement(fitness: &[f64]) -> usize {
    let (mut best, mut best_i) = (0.0, 0);
    for (i, f) in fitness.iter().enumerate() {
        if *f > best || best == 0.0 {
            (best, best_i) = (*f, i);
        }
    }
    fitness.len().saturating_sub(best_i + 1)
}

/// Learning-rate factor of epoch `e` (0-based) of `epochs`.
pub fn lr_factor(e: f64, epochs: f64, lrf: f64, cos: bool) -> f64 {
    if cos {
        ((1.0 - (e * std::f64::consts::PI / epochs).cos()) / 2.0) * (lrf - 1.0) + 1.0
    } else {
        (1.0 - e / epochs).max(0.0) * (1.0 - lrf) + lrf
    }
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
    pub(crate) fn new(mut vs: VarStore, source: &VarStore) -> Result<Ema, TrainError> {
        vs.copy(source)?;
        vs.freeze();
        Ok(Ema { vs, updates: 0.0 })
    }

    /// Updates so far.
    pub(crate) fn updates(&self) -> f64 {
        self.updates
    }

    /// Restores the update count (checkpoints).
    pub(crate) fn set_updates(&mut self, n: f64) {
        self.updates = n;
    }

    pub(crate) fn update(&mut self, source: &VarStore) {
        self.updates += 1.0;
        let d = 0.9999 * (1.0 - (-self.updates / 2000.0).exp());
        let src: HashMap<String, Tensor> = source.variables();
        tch::no_grad(|| {
            for (k, e) in self.vs.variables() {
                if let Some(s) = src.get(&k)
                    && e.is_floating_point()
                {
                    let _ = e.shallow_clone().g_mul_scalar_(d).g_add_(&(s * (1.0 - d)));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_counts_epochs_since_the_best_as_ultralytics() {
        assert_eq!(epochs_without_improvement(&[]), 0);
        assert_eq!(epochs_without_improvement(&[0.1, 0.2, 0.3]), 0);
        assert_eq!(epochs_without_improvement(&[0.1, 0.3, 0.2, 0.25]), 2);
        assert_eq!(epochs_without_improvement(&[0.3, 0.3]), 1, "equal is no improvement");
        // While the best is 0, every epoch counts as the best (nothing learnt yet).
        assert_eq!(epochs_without_improvement(&[0.0, 0.0, 0.0]), 0);
        assert_eq!(epochs_without_improvement(&[0.0, 0.2, 0.0, 0.1]), 2);
    }
}

//! What differs between tasks in a training run, behind one trait: the session (optimiser,
//! schedule, EMA, checkpoints, pause and resume) knows no task, and each task's module
//! (`detect`, `classify`) uses the session without the session knowing it.

use std::sync::Arc;

use tch::Tensor;

use super::data::{Augment, Batch, Sample};
use super::geometry::AffineParams;
use super::{EpochReport, TrainConfig};
use crate::error::TrainError;

/// A model the session can train.
pub trait TaskModel {
    /// Loss terms `[box, cls, dfl]` summed over the batch; a task without a term leaves it 0
    /// (a classifier's cross-entropy is the `cls` term). `autocast` runs the forward pass in
    /// mixed precision; the loss itself is computed in float.
    fn loss(&self, x: &Tensor, b: &Batch, nc: i64, autocast: bool) -> Tensor;

    /// Validates on `val` and fills the task's metrics in `report`.
    fn validate(&self, val: &Arc<Vec<Sample>>, cfg: &TrainConfig, report: &mut EpochReport) -> Result<(), TrainError>;

    /// The augmentation this task trains with, given the configured one. Boxes follow mosaic
    /// and the affine warp; whole-image labels get colour and flip only.
    fn augment(&self, a: Augment) -> Augment {
        a
    }

    /// What the batch's summed loss is multiplied by before it is backpropagated, so that the
    /// gradients (and so the clipping at norm 10, Adam's epsilon and SGD's steps) have Ultralytics'
    /// scale: its detection loss is the batch's sum (per-image loss times the batch size), its
    /// classification loss the batch's mean.
    fn backward_gain(&self, batch_len: usize) -> f64 {
        let _ = batch_len;
        1.0
    }
}

/// Colour and flip only: no mosaic and no geometric warp (for whole-image labels).
pub fn photometric_only(a: Augment) -> Augment {
    Augment { mosaic: 0.0, affine: AffineParams { degrees: 0.0, translate: 0.0, scale: 0.0 }, ..a }
}

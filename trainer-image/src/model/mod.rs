//! YOLOv8-family models on libtorch: the anchor-free detector (CSP backbone with C2f blocks,
//! SPPF, PAN neck, decoupled head with distribution focal loss bins) and the classifier, at
//! Ultralytics' width/depth scales. Variable names follow Ultralytics' state-dict keys
//! (`model.<i>....`), so checkpoints map one to one.

mod blocks;
pub mod yolo;

pub use blocks::ConvBn;
pub use yolo::{Architecture, Classifier, Detector, ModelKind, Scale, parameter_count};

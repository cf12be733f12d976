//! Pure pre- and post-processing shared by the trainer's validation and the predictor, so that
//! both produce the same detections: [`letterbox`], [`decode`] of YOLOv8-style outputs,
//! class-aware [`nms`], and COCO-style evaluation in [`metrics`].

pub mod boxes;
pub mod decode;
pub mod letterbox;
pub mod metrics;
pub mod model_info;
pub mod nms;
pub mod onnx;
pub mod quant;
pub mod rng;

pub use boxes::{BBox, Detection};
pub use model_info::{ModelInfo, Quantization};

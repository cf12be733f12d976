//! What a trained or exported model is: written by the trainer next to every weights file and
//! export artifact (`<artifact>.json`), read by the predictor.

use serde::{Deserialize, Serialize};

/// Description of a model artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    /// Architecture name, e.g. `yolov8n` or `yolov8n-cls`.
    pub architecture: String,
    /// `detect` or `classify`.
    pub task: String,
    /// Class names, index = class id.
    pub names: Vec<String>,
    /// Square input size the model was trained or exported at.
    pub imgsz: u32,
    /// Artifact format: `safetensors`, `torchscript`, `onnx` or `engine`.
    pub format: String,
    /// SHA-256 (hex) of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Fixed batch size of the artifact (ignored when `dynamic`).
    #[serde(default = "one")]
    pub batch: u32,
    /// Whether the batch dimension is dynamic.
    #[serde(default)]
    pub dynamic: bool,
    /// Half-precision weights and input.
    #[serde(default)]
    pub half: bool,
    /// NMS-free detector output `(batch, rows, 6)`, rows `x1, y1, x2, y2, score, class` in input
    /// pixels, as Ultralytics' end-to-end exports (`nms=True`, YOLO26) produce; the value is the
    /// row count (their `max_det`). Unset: the raw `(batch, 4 + classes, anchors)` layout, which
    /// is decoded with NMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end2end: Option<u32>,
    /// INT8 quantisation of the artifact (QDQ ONNX or an INT8 engine): how it was calibrated and
    /// the accuracy gate it passed. Unset: float weights and activations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// How an INT8 artifact was calibrated, and what it scored against its float original.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quantization {
    /// Activation range method: `minmax`, `percentile` or `entropy`.
    pub method: String,
    /// Percentile of `|x|` kept by the `percentile` method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Calibration images used.
    pub images: usize,
    /// Validation mAP50-95 of the float model (same images, same pipeline, same runtime).
    pub fp32_map: f64,
    /// Validation mAP50-95 of the INT8 model.
    pub int8_map: f64,
    /// Largest drop allowed, in points of mAP50-95.
    pub max_drop: f64,
}

fn one() -> u32 {
    1
}

impl ModelInfo {
    /// The model info of trainer weights (`safetensors`; no SHA-256 until written).
    pub fn weights(architecture: &str, task: &str, names: Vec<String>, imgsz: u32) -> ModelInfo {
        ModelInfo {
            architecture: architecture.into(),
            task: task.into(),
            names,
            imgsz,
            format: "safetensors".into(),
            sha256: None,
            batch: 1,
            dynamic: false,
            half: false,
            end2end: None,
            quantization: None,
        }
    }

    /// Numeric precision of the artifact: `int8`, `fp16` or `fp32`.
    pub fn precision(&self) -> &'static str {
        if self.quantization.is_some() {
            "int8"
        } else if self.half {
            "fp16"
        } else {
            "fp32"
        }
    }

    /// Whether this is a detector.
    pub fn is_detect(&self) -> bool {
        self.task == "detect"
    }

    /// The model's output per image: `[4 + classes, anchors]` (raw detector), `[rows, 6]`
    /// (end-to-end detector) or `[classes]` (classifier probabilities).
    pub fn output_shape(&self) -> Vec<usize> {
        let nc = self.names.len();
        match (self.is_detect(), self.end2end) {
            (true, Some(rows)) => vec![rows as usize, 6],
            (true, None) => vec![4 + nc, anchors(self.imgsz)],
            (false, _) => vec![nc],
        }
    }
}

/// Anchor points of a detector at a square input size (strides 8, 16, 32).
pub fn anchors(imgsz: u32) -> usize {
    [8, 16, 32].iter().map(|s| (imgsz as usize / s).pow(2)).sum()
}

/// Name of the image input of exported models (as Ultralytics).
pub const INPUT_NAME: &str = "images";
/// Name of the output of exported models (as Ultralytics).
pub const OUTPUT_NAME: &str = "output0";

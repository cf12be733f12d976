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
}

fn one() -> u32 {
    1
}

impl ModelInfo {
    /// Whether this is a detector.
    pub fn is_detect(&self) -> bool {
        self.task == "detect"
    }
}

/// Name of the image input of exported models (as Ultralytics).
pub const INPUT_NAME: &str = "images";
/// Name of the output of exported models (as Ultralytics).
pub const OUTPUT_NAME: &str = "output0";

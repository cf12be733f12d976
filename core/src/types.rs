//! Plain enums of the API that workloads use too.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The vision task a dataset, model or deployment serves (`detect`, `segment`, `classify`, `pose` or `obb`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `detect`: object detection, one class and one axis-aligned box per object.
    #[default]
    Detect,
    /// `segment`: instance segmentation, one class and one polygon outline per object.
    Segment,
    /// `classify`: whole-image classification, one class per image.
    Classify,
    /// `pose`: keypoint estimation, one box and a fixed set of keypoints per object.
    Pose,
    /// `obb`: oriented object detection, one class and one rotated box (four corners) per object.
    Obb,
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "detect" => Ok(Task::Detect),
            "segment" => Ok(Task::Segment),
            "classify" => Ok(Task::Classify),
            "pose" => Ok(Task::Pose),
            "obb" => Ok(Task::Obb),
            other => Err(format!("unknown task {other:?} (detect, segment, classify, pose, obb)")),
        }
    }
}

impl Task {
    /// The lowercase name used in the API and in Ultralytics.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Detect => "detect",
            Task::Segment => "segment",
            Task::Classify => "classify",
            Task::Pose => "pose",
            Task::Obb => "obb",
        }
    }
}

/// Which checkpoint of a TrainingJob to use: `best` or `last`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// `best`: the weights of the epoch with the best validation fitness (mAP50-95 for detectors, the mean of
    /// top-1 and top-5 accuracy for classifiers).
    #[default]
    Best,
    /// `last`: the most recently saved weights (saved every `checkpoint.intervalEpochs`, at the end and on a
    /// pause).
    Last,
}

impl CheckpointKind {
    /// The lowercase name: `best` or `last` (also the file stem of its weights).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Best => "best",
            CheckpointKind::Last => "last",
        }
    }
}

/// Format of an exported model artifact: `torchscript` (run by libtorch), `onnx` (ONNX Runtime) or `engine` (TensorRT, runs only on the GPU model it was built on).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// `torchscript`: a traced TorchScript module, run by libtorch on CPU or CUDA; takes any batch size.
    Torchscript,
    /// `onnx`: an ONNX model (batch norm folded, Ultralytics metadata), run by ONNX Runtime on CPU or GPU.
    Onnx,
    /// `engine`: a TensorRT engine, built from the ONNX model; runs only on the GPU model it was built on.
    Engine,
}

impl ExportFormat {
    /// All supported formats, as named in the API.
    pub const SUPPORTED: [&'static str; 3] = ["torchscript", "onnx", "engine"];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Torchscript => "torchscript",
            ExportFormat::Onnx => "onnx",
            ExportFormat::Engine => "engine",
        }
    }

    /// Parses an Ultralytics format name; other known formats get an error naming the supported ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "torchscript" => Ok(ExportFormat::Torchscript),
            "onnx" => Ok(ExportFormat::Onnx),
            "engine" | "tensorrt" => Ok(ExportFormat::Engine),
            other => Err(format!(
                "export format {other:?} is not supported; supported formats are: {}",
                Self::SUPPORTED.join(", ")
            )),
        }
    }

    /// File extension of the artifact.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Torchscript => "torchscript",
            ExportFormat::Onnx => "onnx",
            ExportFormat::Engine => "engine",
        }
    }
}

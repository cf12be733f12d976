//! `Export`: converts trained weights to a deployable format.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, Failure, LocalRef, Scheduling, TrainingJobCheckpointRef};

/// A request to export trained weights.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ocellus.dev",
    version = "v1alpha1",
    kind = "Export",
    namespaced,
    status = "ExportStatus",
    shortname = "ex",
    category = "ocellus",
    doc = "An Export: converts trained weights to TorchScript, ONNX or a TensorRT engine.",
    printcolumn = r#"{"name":"Format","type":"string","jsonPath":".spec.format"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.artifact.sizeBytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("self.format != 'engine' || has(self.gpuProduct)").message("gpuProduct is required for format engine: a TensorRT engine only runs on the GPU model it was built for"))]
#[x_kube(validation = kube::core::Rule::new("!self.int8 || self.format == 'engine'").message("int8 is only supported for format engine"))]
#[x_kube(validation = kube::core::Rule::new("!self.int8 || has(self.calibration)").message("int8 needs a calibration dataset"))]
#[x_kube(validation = kube::core::Rule::new("!self.half || self.format != 'torchscript' || has(self.gpuProduct)").message("half-precision TorchScript needs a GPU (set gpuProduct)"))]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// The weights to export.
    pub source: ExportSource,
    /// Target format: `torchscript`, `onnx` or `engine` (TensorRT). Other Ultralytics formats (coreml, tflite, openvino, …) are not supported.
    pub format: ExportFormat,
    /// Square input size in pixels (multiple of 32). Defaults to the training size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: Option<i32>,
    /// FP16 weights and activations.
    #[serde(default)]
    pub half: bool,
    /// INT8 quantisation with calibration (engine only).
    #[serde(default)]
    pub int8: bool,
    /// Calibration images for INT8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Dynamic batch dimension (ONNX, engine).
    #[serde(default)]
    pub dynamic: bool,
    /// Batch size (maximum batch for a dynamic engine).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 256))]
    pub batch: i32,
    /// ONNX opset version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 11, max = 23))]
    pub opset: Option<i32>,
    /// GPU model to build on (`nvidia.com/gpu.product`); required for `engine`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_product: Option<String>,
    /// Node placement of the export pod.
    #[serde(default)]
    pub scheduling: Scheduling,
}

fn default_batch() -> i32 {
    1
}

/// The weights to export: exactly one of `trainingJob` or `weightsUri`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.trainingJob) != has(self.weightsUri)").message("exactly one of trainingJob or weightsUri must be set"))]
pub struct ExportSource {
    /// A checkpoint of a TrainingJob in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
    /// `s3://` URI of an Ocellus checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://.+"))]
    pub weights_uri: Option<String>,
}

/// Supported export formats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// TorchScript, for libtorch.
    Torchscript,
    /// ONNX, for ONNX Runtime.
    Onnx,
    /// TensorRT engine.
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

/// INT8 calibration data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Calibration {
    /// Dataset whose `val` split calibrates INT8 ranges.
    pub dataset_ref: LocalRef,
    /// Number of images to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub images: Option<i32>,
}

/// Lifecycle phase of an Export.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ExportPhase {
    /// Waiting for the source weights.
    #[default]
    Pending,
    /// The export Job is running.
    Running,
    /// The artifact is ready.
    Succeeded,
    /// Failed; see `failure`.
    Failed,
}

/// The exported file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `s3://` URI of the artifact.
    pub uri: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// Hex SHA-256 of the artifact.
    pub sha256: String,
}

/// Observed state of an Export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: ExportPhase,
    /// The exported artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Runtime versions the artifact was built with (e.g. `libtorch`, `onnx-opset`, `tensorrt`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime_versions: BTreeMap<String, String>,
    /// When the export started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the export finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Name of the export Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

//! `Export`: converts trained weights to a deployable format.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, JobStatus, LocalRef, Scheduling, TrainingJobCheckpointRef};
pub use ocellus_core::ExportFormat;

/// A request to export trained weights to a deployable artifact.
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
    printcolumn = r#"{"name":"Precision","type":"string","jsonPath":".status.precision"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.artifact.sizeBytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("self.format != 'engine' || has(self.gpuProduct)").message("gpuProduct is required for format engine: a TensorRT engine only runs on the GPU model it was built for"))]
#[x_kube(validation = kube::core::Rule::new("!self.int8 || self.format != 'torchscript'").message("int8 is supported for formats onnx and engine"))]
#[x_kube(validation = kube::core::Rule::new("!self.int8 || has(self.source.trainingJob) || (has(self.calibration) && has(self.calibration.datasetRef))").message("int8 from source.weightsUri needs calibration.datasetRef: there is no TrainingJob whose Dataset could calibrate it"))]
#[x_kube(validation = kube::core::Rule::new("!self.half || self.format != 'torchscript' || has(self.gpuProduct)").message("half-precision TorchScript needs a GPU (set gpuProduct)"))]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// The weights to export: exactly one of `trainingJob` or `weightsUri`.
    pub source: ExportSource,
    /// Target format: `torchscript` (for libtorch), `onnx` (for ONNX Runtime) or `engine` (TensorRT, needs `gpuProduct`). Other Ultralytics formats (coreml, tflite, openvino, …) are not supported.
    pub format: ExportFormat,
    /// Side of the square input in pixels, a multiple of 32 from 32 to 4096; the artifact expects images letterboxed to it. Unset: the training `imgsz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: Option<i32>,
    /// Half precision (FP16) weights and activations: smaller and faster on GPUs. `torchscript` then needs a GPU (`gpuProduct`); `engine` builds FP16 kernels. Default false.
    #[serde(default)]
    pub half: bool,
    /// INT8 quantisation, for `onnx` and `engine`. `onnx`: a QDQ ONNX model, with per-channel symmetric INT8 weights and 8-bit activations (unsigned, as ONNX Runtime's CPU integer kernels need) whose ranges are calibrated on Dataset images (see `calibration`); it runs on CPU with ONNX Runtime. `engine`: TensorRT builds INT8 kernels from a QDQ model of the same calibration (symmetric signed activations, float biases, as TensorRT needs). A detector's final box and class layers and its decoding stay float. The export is accuracy-gated: see `maxAccuracyDrop`. Not for `torchscript`. Default false.
    #[serde(default)]
    pub int8: bool,
    /// Images that calibrate the INT8 activation ranges, and how. Unset: 500 images of the `val` split of the source TrainingJob's Dataset, `percentile` method; required (for its `datasetRef`) when the source is a `weightsUri`. Unused without `int8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Largest loss of accuracy an INT8 export may have, in points of validation mAP50-95 (0 to 100). An INT8 export is validated as float and as INT8 on the same validation images: the `val` split of the source TrainingJob's Dataset, or, for a `weightsUri` source, the `val` split of the calibration Dataset. If INT8 loses more than this, the export fails with reason `AccuracyGateFailed`, naming both scores. Unset: 1.0. Unused without `int8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_accuracy_drop: Option<f64>,
    /// Dynamic batch dimension: an `onnx` model then takes any batch size, an `engine` any batch from 1 to `batch`. Default false: exactly `batch`. TorchScript always takes any batch.
    #[serde(default)]
    pub dynamic: bool,
    /// Batch size the artifact is built for, 1 to 256; default 1: the fixed batch of an `onnx` model or `engine`, or the largest batch of a dynamic engine. A predictor pads each run of a fixed-batch artifact to it.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 256))]
    pub batch: i32,
    /// ONNX opset version of an `onnx` export (and of the ONNX an `engine` is built from). Unset: 17. The exporter writes opsets 13 to 21; others fail the export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 11, max = 23))]
    pub opset: Option<i32>,
    /// GPU model to export on, as the node label `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`). Required for `engine`, which runs only on the GPU model it was built on, and for `half` TorchScript. Unset: exports on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_product: Option<String>,
    /// Node placement of the export pod: node selector, tolerations, priority and runtime class.
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
    /// The `best` (default) or `last` weights of a TrainingJob in the same namespace; the export waits (phase `Pending`) until they exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
    /// `s3://` URI of weights written by an Ocellus TrainingJob (`.../weights/best.safetensors`), with the `.json` metadata the trainer writes beside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://.+"))]
    pub weights_uri: Option<String>,
}

/// Images for INT8 calibration, and how activation ranges are computed from them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.percentile) || !has(self.method) || self.method == 'percentile'").message("calibration.percentile is only used by method percentile"))]
pub struct Calibration {
    /// Dataset, in the same namespace, whose images (all of its splits) calibrate the INT8 activation ranges; they should resemble what the model will see. Unset: the source TrainingJob's Dataset (the version it trained on), its `val` split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_ref: Option<LocalRef>,
    /// Number of images to calibrate with, 1 to 100000, taken from the start of the manifest (of its split). Unset: 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub images: Option<i32>,
    /// How each activation's range is taken from the calibration images: `minmax`, `percentile` or `entropy` (see [`CalibrationMethod`]). Unset: `percentile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<CalibrationMethod>,
    /// Percentile of `|x|` that bounds an activation's range with method `percentile`, 99.0 to 100.0 (100 is `minmax`). Unset: 99.999 (on YOLO detectors 99.99 clipped enough to cost most of a point of mAP50-95; 99.999 lost none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 99.0, max = 100.0))]
    pub percentile: Option<f64>,
}

/// How each INT8 activation's range is taken from the calibration images: `minmax`, the largest `|x|` seen (one outlier widens it for all values); `percentile`, that percentile of `|x|` (`calibration.percentile`), robust to outliers; `entropy`, TensorRT's entropy calibration: the threshold that minimises the KL divergence between the float and the quantised distribution. Unset: `percentile`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// `minmax`: the largest `|x|` seen; exact for the calibration images, but one outlier widens the range for all values.
    Minmax,
    /// `percentile`: that percentile of `|x|` (`calibration.percentile`); robust to outliers, the default.
    Percentile,
    /// `entropy`: TensorRT's entropy calibration: the threshold that minimises the KL divergence between the float and the quantised distribution.
    Entropy,
}

impl CalibrationMethod {
    /// The name in the CRD and on the trainer's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CalibrationMethod::Minmax => "minmax",
            CalibrationMethod::Percentile => "percentile",
            CalibrationMethod::Entropy => "entropy",
        }
    }
}

/// Lifecycle phase of an Export: `Pending`, `Running`, `Succeeded` or `Failed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ExportPhase {
    /// `Pending`: waiting for the source weights, or for the pod to be scheduled.
    #[default]
    Pending,
    /// `Running`: the export Job is running.
    Running,
    /// `Succeeded`: the artifact is in `status.artifact`.
    Succeeded,
    /// `Failed`: given up; see `failure` and the conditions.
    Failed,
}

/// The exported file, with its metadata at `<uri>.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `s3://` URI of the artifact, `.../exports/<name>/model.<torchscript|onnx|engine>`; its metadata (class names, input size, SHA-256) is at `<uri>.json`.
    pub uri: String,
    /// Size of the artifact in bytes.
    pub size_bytes: i64,
    /// SHA-256 of the artifact, lowercase hex; predictors verify it before loading.
    pub sha256: String,
}

/// Observed state of an Export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase: `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default)]
    pub phase: ExportPhase,
    /// The exported artifact: URI, size and SHA-256. Set once the export has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Numeric precision of the artifact's weights and activations, from its metadata: `fp32`, `fp16` (`half`) or `int8`. Set once the export has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// How an INT8 artifact was calibrated, and the accuracy gate it passed: its validation mAP50-95 as float and as INT8. Set once an `int8` export has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationStatus>,
    /// Runtime versions the artifact was built with, by component (e.g. `libtorch`, `onnx-opset`, `tensorrt`); an engine needs the same TensorRT version to run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime_versions: BTreeMap<String, String>,
    /// The export Job, when it started and finished, and why it failed.
    #[serde(flatten)]
    pub job: JobStatus,
}

/// How an INT8 artifact was calibrated, and what it scored against its float original.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuantizationStatus {
    /// Calibration method used: `minmax`, `percentile` or `entropy`.
    pub method: String,
    /// Percentile of `|x|` that bounded the activation ranges, with method `percentile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Number of calibration images used.
    pub images: i64,
    /// Validation mAP50-95 of the float model, 0 to 1, on the gate's validation images.
    pub fp32_map: f64,
    /// Validation mAP50-95 of the INT8 model, 0 to 1, on the same images.
    pub int8_map: f64,
    /// The largest drop that was allowed, in points of mAP50-95 (`spec.maxAccuracyDrop`); `fp32Map - int8Map` was at most this / 100.
    pub max_drop: f64,
}

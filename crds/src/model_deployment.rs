//! `ModelDeployment`: an autoscaled predictor serving one exported model.
//!
//! Not named `Deployment`, so that `kubectl get deployments` stays unambiguous.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, GpuRequest, LocalRef, Scheduling, TrainingJobCheckpointRef};
use crate::export::ExportFormat;

/// A request to serve a model behind an autoscaled predictor.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ocellus.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "mdep",
    category = "ocellus",
    doc = "A ModelDeployment: predictor pods serving one model over Ultralytics, Open Inference Protocol v2 and Label Studio ML-backend APIs.",
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".spec.backend"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("self.backend != 'tensorrt' || self.resources.gpu.count > 0").message("backend tensorrt needs a GPU (resources.gpu.count > 0)"))]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve.
    pub model: ModelSource,
    /// Inference backend; `auto` picks from the artifact's format and the GPU.
    #[serde(default)]
    pub backend: Backend,
    /// Compute for each predictor pod.
    #[serde(default)]
    pub resources: PredictorResources,
    /// Autoscaling by in-flight concurrency.
    #[serde(default)]
    pub scaling: Scaling,
    /// Dynamic batching.
    #[serde(default)]
    pub batching: Batching,
    /// Defaults for requests that do not set them.
    #[serde(default)]
    pub inference: InferenceDefaults,
    /// Node placement of predictor pods.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Scale to zero and keep it there, regardless of traffic (Roboflow "pause").
    #[serde(default)]
    pub stopped: bool,
    /// Delete the deployment this many hours after creation (Roboflow `duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0166, max = 8760.0))]
    pub duration_hours: Option<f64>,
}

/// The model: exactly one of `export`, `trainingJob` or `uri`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.export), has(self.trainingJob), has(self.uri)].filter(x, x).size() == 1").message("exactly one of export, trainingJob or uri must be set"))]
#[x_kube(validation = kube::core::Rule::new("has(self.uri) == has(self.format)").message("format must be set together with uri, and only with uri"))]
pub struct ModelSource {
    /// An Export in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<LocalRef>,
    /// A TrainingJob's checkpoint, served through TorchScript.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
    /// `s3://` or `https://` URI of an artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|https?)://.+"))]
    pub uri: Option<String>,
    /// Format of the artifact at `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ExportFormat>,
    /// SHA-256 the artifact at `uri` must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Class names, when the artifact does not carry them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

/// Inference backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// From the artifact's format: TorchScript → libtorch, ONNX → onnxruntime, engine → tensorrt.
    #[default]
    Auto,
    /// libtorch (TorchScript), CPU or CUDA.
    Libtorch,
    /// ONNX Runtime, CPU or CUDA/TensorRT execution providers.
    Onnxruntime,
    /// TensorRT engine.
    Tensorrt,
}

/// Compute for a predictor pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictorResources {
    /// CPU request (Kubernetes quantity).
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Memory request and limit (Kubernetes quantity).
    #[serde(default = "default_memory")]
    pub memory: String,
    /// GPUs per pod.
    #[serde(default)]
    pub gpu: GpuRequest,
}

fn default_cpu() -> String {
    "1".into()
}
fn default_memory() -> String {
    "2Gi".into()
}

impl Default for PredictorResources {
    fn default() -> Self {
        PredictorResources { cpu: default_cpu(), memory: default_memory(), gpu: GpuRequest::default() }
    }
}

/// Concurrency autoscaling (KPA-style): replicas = ceil(in-flight / targetConcurrency).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Scaling {
    /// Fewest replicas; 0 allows scale to zero.
    #[serde(default = "default_min")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// In-flight requests per replica the autoscaler aims for.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_concurrency: i32,
    /// With `minReplicas: 0`, scale to zero after this many seconds without requests.
    #[serde(default = "default_idle")]
    #[schemars(range(min = 30, max = 86400))]
    pub scale_to_zero_idle_seconds: i32,
}

fn default_min() -> i32 {
    1
}
fn default_max() -> i32 {
    1
}
fn default_target() -> i32 {
    8
}
fn default_idle() -> i32 {
    300
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_replicas: default_min(),
            max_replicas: default_max(),
            target_concurrency: default_target(),
            scale_to_zero_idle_seconds: default_idle(),
        }
    }
}

/// Dynamic batching.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Largest batch run at once.
    #[serde(default = "default_max_batch")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch_size: i32,
    /// Longest a request waits for a batch to fill, in milliseconds.
    #[serde(default = "default_delay")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_delay_ms: i32,
    /// Requests waiting beyond this are refused with 429.
    #[serde(default = "default_queue")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_queue: i32,
}

fn default_max_batch() -> i32 {
    8
}
fn default_delay() -> i32 {
    5
}
fn default_queue() -> i32 {
    64
}

impl Default for Batching {
    fn default() -> Self {
        Batching { max_batch_size: default_max_batch(), max_delay_ms: default_delay(), max_queue: default_queue() }
    }
}

/// Inference defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDefaults {
    /// Confidence threshold.
    #[serde(default = "default_conf")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub conf: f64,
    /// NMS IoU threshold.
    #[serde(default = "default_iou")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub iou: f64,
    /// Input size in pixels; defaults to the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: Option<i32>,
    /// Most detections per image.
    #[serde(default = "default_max_det")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_det: i32,
}

fn default_conf() -> f64 {
    0.25
}
fn default_iou() -> f64 {
    0.7
}
fn default_max_det() -> i32 {
    300
}

impl Default for InferenceDefaults {
    fn default() -> Self {
        InferenceDefaults { conf: default_conf(), iou: default_iou(), imgsz: None, max_det: default_max_det() }
    }
}

/// Lifecycle phase of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeploymentPhase {
    /// Waiting for the model artifact.
    #[default]
    Pending,
    /// Pods are starting or loading the model.
    Deploying,
    /// Serving.
    Ready,
    /// Scaled to zero while idle; the next request wakes it.
    ScaledToZero,
    /// Stopped by `stopped: true`.
    Stopped,
    /// Past its `durationHours`.
    Expired,
    /// Failed; see conditions.
    Failed,
}

/// Observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: DeploymentPhase,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the autoscaler wants.
    #[serde(default)]
    pub desired_replicas: i32,
    /// In-cluster URL of the predictor Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Version of the served model (artifact SHA-256 prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// URI of the served artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// When the autoscaler last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// When the deployment expires (from `durationHours`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

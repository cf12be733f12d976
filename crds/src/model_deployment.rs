//! `ModelDeployment`: an autoscaled predictor serving one exported model.
//!
//! Not named `Deployment`, so that `kubectl get deployments` stays unambiguous.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, GpuRequest, LocalRef, Scheduling, TrainingJobCheckpointRef};
use crate::export::ExportFormat;

/// A request to serve one model behind autoscaled predictor pods and a Service.
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
#[x_kube(validation = kube::core::Rule::new("!self.deleteOnExpiration || has(self.durationHours)").message("deleteOnExpiration needs durationHours"))]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve: exactly one of `export`, `trainingJob` or `uri`.
    pub model: ModelSource,
    /// Inference runtime: `auto` (default) picks by the artifact's format (TorchScript → `libtorch`, ONNX → `onnxruntime`, engine → `tensorrt`); `libtorch`, `onnxruntime` or `tensorrt` (which needs a GPU) force one.
    #[serde(default)]
    pub backend: Backend,
    /// CPU, memory and GPUs of each predictor pod. Unset: 1 CPU, 2Gi of memory, no GPU.
    #[serde(default)]
    pub resources: PredictorResources,
    /// Autoscaling on in-flight requests: replicas = ceil(in-flight / `targetConcurrency`), between `minReplicas` and `maxReplicas`. Unset: exactly one replica.
    #[serde(default)]
    pub scaling: Scaling,
    /// Dynamic batching in each pod: concurrent images are run through the model together. Unset: batches of up to 8, 5 ms wait, 64 images queued.
    #[serde(default)]
    pub batching: Batching,
    /// Inference settings for requests that do not set their own: confidence 0.25, NMS IoU 0.7, 300 detections at most.
    #[serde(default)]
    pub inference: InferenceDefaults,
    /// Node placement of the predictor pods: node selector, tolerations, priority and runtime class.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// `true` scales the deployment to zero replicas and keeps it there whatever the traffic (phase `Stopped`; Roboflow's "pause"); `false` (default) serves and scales as `scaling` says.
    #[serde(default)]
    pub stopped: bool,
    /// Lifetime in hours from creation (Roboflow's `duration`), 0.0166 (one minute) to 8760 (a year); when it has passed the deployment is stopped: zero replicas, phase `Expired`, time in `status.expiresAt` (or deleted, with `deleteOnExpiration`). Unset: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0166, max = 8760.0))]
    pub duration_hours: Option<f64>,
    /// `true` deletes the ModelDeployment once `durationHours` has passed (Roboflow's `delete_on_expiration`), and with it, by owner references, its predictor Deployment, Service and PodDisruptionBudget (and a `model.trainingJob`'s TorchScript Export); an `Expired` Event records the deletion first. `false` (default): an expired deployment is kept, stopped at zero replicas. Needs `durationHours`.
    #[serde(default)]
    pub delete_on_expiration: bool,
}

impl ModelDeploymentSpec {
    /// A running deployment of `model` with every other field at its default (what `kubectl
    /// apply` of a spec naming only the model gives): the start the REST APIs build theirs from.
    pub fn serving(model: ModelSource) -> ModelDeploymentSpec {
        ModelDeploymentSpec {
            model,
            backend: Backend::default(),
            resources: PredictorResources::default(),
            scaling: Scaling::default(),
            batching: Batching::default(),
            inference: InferenceDefaults::default(),
            scheduling: Scheduling::default(),
            stopped: false,
            duration_hours: None,
            delete_on_expiration: false,
        }
    }
}

/// The model: exactly one of `export`, `trainingJob` or `uri`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.export), has(self.trainingJob), has(self.uri)].filter(x, x).size() == 1").message("exactly one of export, trainingJob or uri must be set"))]
#[x_kube(validation = kube::core::Rule::new("has(self.uri) == has(self.format)").message("format must be set together with uri, and only with uri"))]
pub struct ModelSource {
    /// An Export in the same namespace; its artifact is served once the Export has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<LocalRef>,
    /// The `best` (default) or `last` checkpoint of a TrainingJob in the same namespace, served as TorchScript: the operator creates and owns an Export named `<name>-torchscript` (at `inference.imgsz` when set) and serves its artifact. The checkpoint is exported once; delete that Export to serve a newer checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
    /// `s3://` URI of an exported artifact (TorchScript, ONNX or TensorRT engine) with its model info at `<uri>.json` beside it, or of an Ultralytics ONNX or TorchScript detect/classify export, whose embedded metadata stands in for the model info; readable with the workload S3 Secret; requires `format`. `https://` URIs pass validation but are refused by the operator for now (planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|https?)://.+"))]
    pub uri: Option<String>,
    /// Format of the artifact at `uri`: `torchscript`, `onnx` or `engine`; set with `uri` and only with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ExportFormat>,
    /// SHA-256 (64 lowercase hex digits) the artifact must have: the operator compares an Export's recorded SHA-256 and each predictor pod the downloaded bytes; it is not served if it differs. Unset: not checked against a pinned value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Class names in index order, for an artifact at `uri` that does not carry its own (planned: today the model info beside the artifact must carry them, and this field is not used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

/// Inference runtime: `auto`, `libtorch`, `onnxruntime` or `tensorrt`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `auto`: from the artifact's format: TorchScript → `libtorch`, ONNX → `onnxruntime`, engine → `tensorrt`.
    #[default]
    Auto,
    /// `libtorch`: runs TorchScript artifacts, on CPU or CUDA.
    Libtorch,
    /// `onnxruntime`: runs ONNX artifacts with ONNX Runtime, on CPU or CUDA.
    Onnxruntime,
    /// `tensorrt`: TensorRT through ONNX Runtime's TensorRT execution provider, for engines (or ONNX); needs a GPU.
    Tensorrt,
}

/// CPU, memory and GPUs of a predictor pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictorResources {
    /// CPU request as a Kubernetes quantity, e.g. `2` or `500m`; default `1`. With ONNX Runtime on CPU the predictor loads one model copy per core it may use, up to 8.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Memory request and limit as a Kubernetes quantity, e.g. `4Gi`; default `2Gi`. It must hold the model copies; a pod that exceeds it is OOM-killed.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// GPUs of each predictor pod. Default `count: 0`: inference on CPU. `backend: tensorrt` needs `count` above 0.
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

/// Concurrency autoscaling (as Knative's KPA): replicas = ceil(in-flight requests / `targetConcurrency`), within `minReplicas`..`maxReplicas`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Scaling {
    /// Fewest replicas, 0 to 1000; default 1; at most `maxReplicas`. 0 enables scale to zero: no replicas after `scaleToZeroIdleSeconds` without requests, and the next request wakes the deployment.
    #[serde(default = "default_min")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas, 1 to 1000; default 1, so autoscaling needs a larger value.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// In-flight requests per replica the autoscaler aims for, 1 to 10000; default 8.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_concurrency: i32,
    /// With `minReplicas: 0`, seconds without requests before scaling to zero, 30 to 86400; default 300. Ignored otherwise.
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

/// Dynamic batching inside each predictor pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Most images per model run, 1 to 256; default 8. Used by artifacts with a dynamic batch; a fixed-batch artifact always runs its exported `batch`, and ONNX Runtime on CPU runs one image per model copy.
    #[serde(default = "default_max_batch")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch_size: i32,
    /// Longest the first image of a batch waits for more to arrive, in milliseconds, 0 to 1000; default 5. A request that arrives alone is not held back.
    #[serde(default = "default_delay")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_delay_ms: i32,
    /// Images that may wait for the model in each pod, 1 to 100000; default 64. Beyond it, requests are refused with HTTP 429 and `Retry-After`.
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

/// Inference settings used when a request does not set its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDefaults {
    /// Confidence threshold, 0 to 1; default 0.25. Detections scoring lower are dropped. A request's `conf` overrides it.
    #[serde(default = "default_conf")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub conf: f64,
    /// IoU threshold of non-maximum suppression, 0 to 1; default 0.7. Of two same-class boxes overlapping more, the lower-scoring is dropped. A request's `iou` overrides it.
    #[serde(default = "default_iou")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub iou: f64,
    /// Side of the square input in pixels that images are letterboxed to, 32 to 4096. Unset: the artifact's export `imgsz`, which ONNX and engine artifacts require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: Option<i32>,
    /// Most detections returned per image (the highest-scoring are kept), 1 to 10000; default 300.
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

/// Lifecycle phase of a ModelDeployment: `Pending`, `Deploying`, `Ready`, `ScaledToZero`, `Stopped`, `Expired` or `Failed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DeploymentPhase {
    /// `Pending`: waiting for the model artifact (e.g. an Export still running).
    #[default]
    Pending,
    /// `Deploying`: pods are starting, or loading and warming up the model.
    Deploying,
    /// `Ready`: serving.
    Ready,
    /// `ScaledToZero`: no replicas while idle (`minReplicas: 0`); the next request wakes it.
    ScaledToZero,
    /// `Stopped`: no replicas, because of `spec.stopped: true`.
    Stopped,
    /// `Expired`: no replicas, because `spec.durationHours` has passed.
    Expired,
    /// `Failed`: given up (e.g. the model cannot be loaded); see the conditions.
    Failed,
}

/// Observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase: `Pending`, `Deploying`, `Ready`, `ScaledToZero`, `Stopped`, `Expired` or `Failed`.
    #[serde(default)]
    pub phase: DeploymentPhase,
    /// Predictor pods that exist now.
    #[serde(default)]
    pub replicas: i32,
    /// Predictor pods ready to serve (model loaded and warmed up).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas the autoscaler wants now, within `minReplicas`..`maxReplicas` (0 when stopped, expired or scaled to zero).
    #[serde(default)]
    pub desired_replicas: i32,
    /// In-cluster URL of the predictor Service, `http://<name>.<namespace>.svc:8080` (Ultralytics `/predict`, Open Inference Protocol `/v2/...`, Label Studio ML backend). Clients outside the cluster go through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Version of the served model: the first 12 hex digits of the artifact's SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// URI of the artifact being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// Numeric precision of the model being served: `fp32`, `fp16` or `int8`, from its Export's status. Absent for a `model.uri` artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// When the autoscaler last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// When the deployment expires and stops, or is deleted with `spec.deleteOnExpiration` (creation time plus `spec.durationHours`; RFC 3339). Absent without `durationHours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

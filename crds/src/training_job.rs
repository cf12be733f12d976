//! `TrainingJob`: trains a model on a Dataset on (NVIDIA) GPUs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, Failure, GpuRequest, Scheduling, TrainingJobCheckpointRef};

/// A request to train a model on a Dataset.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ocellus.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    status = "TrainingJobStatus",
    shortname = "tj",
    category = "ocellus",
    doc = "A TrainingJob: trains a YOLO-style model on a Dataset, with checkpoints, metrics, pause and resume.",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model.architecture"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"mAP50-95","type":"number","jsonPath":".status.bestMetrics.map50_95"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// The Dataset to train on.
    pub dataset_ref: DatasetRef,
    /// Architecture and optional starting weights.
    pub model: ModelSpec,
    /// Training hyperparameters; unset fields take the documented defaults.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// Compute for the training pod.
    #[serde(default)]
    pub resources: TrainingResources,
    /// Node placement of the training pod.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Kueue LocalQueue to admit the Job through (sets `kueue.x-k8s.io/queue-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// Pause (true) or resume (false) training. Pausing checkpoints and stops the pod; resuming continues from `last`.
    #[serde(default)]
    pub suspend: bool,
    /// Pod failures (other than pauses) tolerated before the job fails. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<i32>,
    /// Wall-clock limit for a run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointPolicy,
}

/// A Dataset (and optionally a frozen version of it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    /// Name of the Dataset in the same namespace.
    pub name: String,
    /// Frozen version (`v<N>`); the current manifest when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^v[1-9][0-9]{0,5}$"))]
    pub version: Option<String>,
}

/// Model architecture and starting weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Architecture: `yolov8{n,s,m,l,x}` for detection, with `-cls`, `-seg`, `-pose` or `-obb` for other tasks.
    #[schemars(regex(pattern = r"^yolov8[nsmlx](-(cls|seg|pose|obb))?$"))]
    pub architecture: String,
    /// Starting weights for fine-tuning; from scratch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StartingWeights>,
}

/// Starting weights: exactly one of `uri` or `trainingJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.uri) != has(self.trainingJob)").message("exactly one of uri or trainingJob must be set"))]
pub struct StartingWeights {
    /// `s3://` URI of an Ocellus checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://.+"))]
    pub uri: Option<String>,
    /// A checkpoint of another TrainingJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
}

/// Optimiser.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Optimizer {
    /// SGD with Nesterov momentum.
    #[serde(rename = "SGD")]
    Sgd,
    /// AdamW with decoupled weight decay.
    AdamW,
    /// AdamW for short runs, SGD for long ones (as Ultralytics).
    #[default]
    #[serde(rename = "auto")]
    Auto,
}

/// Training hyperparameters (Ultralytics names and defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.imgsz % 32 == 0").message("imgsz must be a multiple of 32"))]
pub struct Hyperparameters {
    /// Epochs to train.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 10000))]
    pub epochs: i32,
    /// Square training image size in pixels (multiple of 32).
    #[serde(default = "default_imgsz")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: i32,
    /// Images per batch.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch: i32,
    /// Optimiser: `SGD`, `AdamW` or `auto`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Initial learning rate.
    #[serde(default = "default_lr0")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lr0: f64,
    /// Final learning rate as a fraction of `lr0`.
    #[serde(default = "default_lrf")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lrf: f64,
    /// Cosine (true) or linear (false) learning-rate decay.
    #[serde(default)]
    pub cos_lr: bool,
    /// Warm-up epochs.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub warmup_epochs: f64,
    /// Stop after this many epochs without improvement (0 disables).
    #[serde(default = "default_patience")]
    #[schemars(range(min = 0))]
    pub patience: i32,
    /// Random seed; training is deterministic for a given seed on CPU.
    #[serde(default)]
    pub seed: i64,
    /// Automatic mixed precision on CUDA.
    #[serde(default = "default_true")]
    pub amp: bool,
}

fn default_epochs() -> i32 {
    100
}
fn default_imgsz() -> i32 {
    640
}
fn default_batch() -> i32 {
    16
}
fn default_lr0() -> f64 {
    0.01
}
fn default_lrf() -> f64 {
    0.01
}
fn default_warmup() -> f64 {
    3.0
}
fn default_patience() -> i32 {
    100
}
fn default_true() -> bool {
    true
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            epochs: default_epochs(),
            imgsz: default_imgsz(),
            batch: default_batch(),
            optimizer: Optimizer::Auto,
            lr0: default_lr0(),
            lrf: default_lrf(),
            cos_lr: false,
            warmup_epochs: default_warmup(),
            patience: default_patience(),
            seed: 0,
            amp: true,
        }
    }
}

/// Compute for a training pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingResources {
    /// GPUs; CPU training when `count` is 0.
    #[serde(default)]
    pub gpu: GpuRequest,
    /// CPU request (Kubernetes quantity), e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit (Kubernetes quantity), e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Checkpoint policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointPolicy {
    /// Save `last` every N epochs (default 1). `best` is saved whenever mAP50-95 improves.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1))]
    pub interval_epochs: i32,
}

fn default_interval() -> i32 {
    1
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy { interval_epochs: 1 }
    }
}

/// Lifecycle phase of a TrainingJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TrainingPhase {
    /// Waiting for its Dataset or for admission.
    #[default]
    Pending,
    /// The pod is running.
    Running,
    /// Paused by `suspend`; resumes from `last`.
    Suspended,
    /// Finished; `best` and `last` are available.
    Succeeded,
    /// Failed; see `failure`.
    Failed,
}

/// Metrics of one epoch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
pub struct EpochMetrics {
    /// Epoch (1-based) these metrics belong to.
    pub epoch: i32,
    /// Box (CIoU) loss, training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_loss: Option<f64>,
    /// Classification (BCE) loss, training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_loss: Option<f64>,
    /// Distribution focal loss, training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dfl_loss: Option<f64>,
    /// Validation precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Validation recall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// Validation mAP at IoU 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map50: Option<f64>,
    /// Validation mAP averaged over IoU 0.5:0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map50_95: Option<f64>,
    /// Top-1 accuracy (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
}

/// Checkpoint locations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
pub struct Checkpoints {
    /// URI of the most recent checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// URI of the best checkpoint by mAP50-95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<String>,
}

/// Observed state of a TrainingJob.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: TrainingPhase,
    /// Last completed epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i32>,
    /// Total epochs planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<i32>,
    /// Metrics of the last completed epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_metrics: Option<EpochMetrics>,
    /// Metrics of the best epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metrics: Option<EpochMetrics>,
    /// The best epoch by mAP50-95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<i32>,
    /// Checkpoint URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Checkpoints>,
    /// URI of `results.jsonl`, one line of metrics per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_uri: Option<String>,
    /// Pod restarts after failures (pauses are not counted).
    #[serde(default)]
    pub restarts: i32,
    /// When training first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Name of the current Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
}

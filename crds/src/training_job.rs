//! `TrainingJob`: trains a model on a Dataset on (NVIDIA) GPUs.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, GpuRequest, JobStatus, Scheduling, TrainingJobCheckpointRef};

/// A request to train a model on a Dataset, checkpointing to object storage as it goes.
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
    /// The Dataset to train on, in the same namespace; the job waits (phase `Pending`) until it is `Ready`. Its `train` split is trained on; the rest is used to validate each epoch.
    pub dataset_ref: DatasetRef,
    /// Architecture to train and optional starting weights; the architecture must suit the Dataset's task.
    pub model: ModelSpec,
    /// Training hyperparameters, with Ultralytics' names and defaults; each unset field takes its default.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// CPU, memory and GPUs of the training pod. Unset: no GPU (training on CPU), no CPU or memory request.
    #[serde(default)]
    pub resources: TrainingResources,
    /// Node placement of the training pod: node selector, tolerations, priority and runtime class.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Kueue LocalQueue to admit the training Job through: the Job gets the label `kueue.x-k8s.io/queue-name` and is created suspended, and Kueue starts it when the queue's quota admits it. Unset: the Job starts at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// `true` pauses training: the pod finishes its current step, saves the `last` checkpoint and exits (phase `Suspended`, GPUs released). `false` (default) resumes from `last` with the same epoch numbering and learning-rate schedule.
    #[serde(default)]
    pub suspend: bool,
    /// Pod failures tolerated (each retried) before the TrainingJob fails, 0 to 100; default 2. Pauses do not count, and invalid input (exit code 2) is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<i32>,
    /// Wall-clock limit for a run of the training Job, in seconds (at least 1); past it the pod is stopped and the TrainingJob fails with `DeadlineExceeded`. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// When checkpoints are saved: `last` every `intervalEpochs` epochs (default 1), at the end and on a pause; `best` whenever validation fitness improves.
    #[serde(default)]
    pub checkpoint: CheckpointPolicy,
}

/// A Dataset, and optionally a frozen version of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    /// Name of the Dataset, in the same namespace.
    pub name: String,
    /// Frozen version to train on, `v<N>` from the Dataset's `status.versions`. Unset: the current manifest, which a later ingest may replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^v[1-9][0-9]{0,5}$"))]
    pub version: Option<String>,
}

/// Model architecture and starting weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model architecture: `yolov8` plus a scale, `n`, `s`, `m`, `l` or `x` (smallest to largest), for detect; with `-cls` for classify (e.g. `yolov8n-cls`). `-seg`, `-pose` and `-obb` are accepted but not trainable yet: the run fails.
    #[schemars(regex(pattern = r"^yolov8[nsmlx](-(cls|seg|pose|obb))?$"))]
    pub architecture: String,
    /// Weights to fine-tune from; layers whose shape differs (the class layers, when the class count differs) are re-initialised. Unset: trains from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StartingWeights>,
}

/// Starting weights for fine-tuning: exactly one of `uri` or `trainingJob`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.uri) != has(self.trainingJob)").message("exactly one of uri or trainingJob must be set"))]
pub struct StartingWeights {
    /// `s3://` URI of Ocellus weights or a checkpoint (`.safetensors`), e.g. `s3://<bucket>/<namespace>/trainingjobs/<name>/weights/best.safetensors`, or of an Ultralytics checkpoint (`.pt`, e.g. the `best.pt` of `yolo train`), which the trainer reads without running its pickle; its architecture must be the `architecture` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^s3://.+"))]
    pub uri: Option<String>,
    /// The `best` (default) or `last` weights of another TrainingJob in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_job: Option<TrainingJobCheckpointRef>,
}

/// Optimiser: `SGD`, `AdamW` or `auto`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Optimizer {
    /// `SGD`: stochastic gradient descent with Nesterov momentum 0.937 and L2 weight decay.
    #[serde(rename = "SGD")]
    Sgd,
    /// `AdamW`: Adam with decoupled weight decay.
    AdamW,
    /// `auto`: as Ultralytics, SGD for runs of more than 10,000 iterations, AdamW for shorter ones, with the learning
    /// rate chosen to suit and the biases' warm-up starting at 0.
    #[default]
    #[serde(rename = "auto")]
    Auto,
}

/// Training hyperparameters (Ultralytics' names and defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.imgsz % 32 == 0").message("imgsz must be a multiple of 32"))]
pub struct Hyperparameters {
    /// Number of passes over the training split, 1 to 10000; default 100.
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1, max = 10000))]
    pub epochs: i32,
    /// Side of the square training input in pixels (images are letterboxed to it): a multiple of 32 from 32 to 4096; default 640. Exports default to it.
    #[serde(default = "default_imgsz")]
    #[schemars(range(min = 32, max = 4096))]
    pub imgsz: i32,
    /// Images per training step, 1 to 1024; default 16. Gradients are accumulated over steps up to a nominal 64 images per optimiser update, as Ultralytics does.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch: i32,
    /// Optimiser: `SGD` (Nesterov momentum), `AdamW`, or `auto` (default), which as Ultralytics picks SGD for runs of more than 10,000 iterations and AdamW otherwise (momentum 0.9, biases warmed up from 0), and chooses the learning rate itself. `SGD` and `AdamW` use momentum (AdamW's beta1) 0.937 and warm the biases up from 0.1.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Learning rate after warm-up, 0 to 1; default 0.01 (suits SGD; AdamW usually wants about 0.001–0.002). Ignored with `optimizer: auto`.
    #[serde(default = "default_lr0")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lr0: f64,
    /// Final learning rate as a fraction of `lr0`, 0 to 1; default 0.01: the rate decays from `lr0` to `lr0 × lrf` over the epochs.
    #[serde(default = "default_lrf")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub lrf: f64,
    /// Shape of the decay from `lr0` to `lr0 × lrf`: cosine (`true`) or linear (`false`, default).
    #[serde(default)]
    pub cos_lr: bool,
    /// Length of the warm-up in epochs (fractions allowed, 0 to 100; default 3; at most all epochs but the last): the learning rate ramps up from 0 to `lr0` and SGD's momentum from 0.8. 0 disables it.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub warmup_epochs: f64,
    /// Early stopping: stop when validation fitness (mAP50-95, or top-1/top-5 accuracy for classifiers) has not improved for this many epochs; default 100, 0 disables.
    #[serde(default = "default_patience")]
    #[schemars(range(min = 0))]
    pub patience: i32,
    /// Random seed for initialisation, shuffling and augmentation; default 0. On CPU, the same seed and inputs give the same result.
    #[serde(default)]
    pub seed: i64,
    /// Automatic mixed precision on a GPU: FP16 autocast with dynamic loss scaling, faster and lighter on memory; default true. Ignored on CPU.
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

/// CPU, memory and GPUs of a training pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingResources {
    /// GPUs of the training pod. Default `count: 0`: trains on CPU. The trainer trains on one GPU, so a count above 1 only reserves idle GPUs for now.
    #[serde(default)]
    pub gpu: GpuRequest,
    /// CPU request as a Kubernetes quantity, e.g. `4` or `500m`. Unset: no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit as a Kubernetes quantity, e.g. `16Gi`; a pod that exceeds it is OOM-killed. Unset: no request or limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// When checkpoints are saved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointPolicy {
    /// Save the `last` checkpoint every this many epochs, at least 1; default 1. Larger values upload less but lose more epochs to a failure; the end and a pause save `last` regardless.
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

/// Lifecycle phase of a TrainingJob: `Pending`, `Running`, `Suspended`, `Succeeded` or `Failed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TrainingPhase {
    /// `Pending`: waiting for its Dataset to be ready, for Kueue admission or for the pod to be scheduled.
    #[default]
    Pending,
    /// `Running`: the training pod is running.
    Running,
    /// `Suspended`: paused by `spec.suspend`; resumes from `last` when it is set back to false.
    Suspended,
    /// `Succeeded`: all epochs done; the `best` and `last` checkpoints are available.
    Succeeded,
    /// `Failed`: given up; see `failure` and the conditions.
    Failed,
}

/// Metrics of one epoch: training losses (mean per image) and validation metrics (fractions 0 to 1).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
pub struct EpochMetrics {
    /// Epoch (1-based) these metrics belong to.
    pub epoch: i32,
    /// Box regression (CIoU) loss on the training split, mean per image (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_loss: Option<f64>,
    /// Classification loss on the training split, mean per image (BCE for detectors, cross-entropy for classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_loss: Option<f64>,
    /// Distribution focal loss (box edges) on the training split, mean per image (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dfl_loss: Option<f64>,
    /// Precision on the validation images, 0 to 1 (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<f64>,
    /// Recall on the validation images, 0 to 1 (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// Mean average precision at IoU 0.5 on the validation images, 0 to 1 (detectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map50: Option<f64>,
    /// Mean average precision averaged over IoU 0.5 to 0.95 on the validation images, 0 to 1; picks `best` for detectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map50_95: Option<f64>,
    /// Top-1 accuracy on the validation images, 0 to 1 (classifiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
}

/// Where the checkpoints are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
pub struct Checkpoints {
    /// `s3://` URI of the most recently saved checkpoint, the one a resume continues from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// `s3://` URI of the checkpoint of the best epoch (mAP50-95 for detectors, top-1/top-5 accuracy for classifiers).
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
    /// Lifecycle phase: `Pending`, `Running`, `Suspended`, `Succeeded` or `Failed`.
    #[serde(default)]
    pub phase: TrainingPhase,
    /// Last completed epoch, 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i32>,
    /// Epochs planned in all (`spec.hyperparameters.epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<i32>,
    /// Metrics of the last completed epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_metrics: Option<EpochMetrics>,
    /// Metrics of the best epoch so far (the one `best` was saved at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metrics: Option<EpochMetrics>,
    /// The best epoch so far, 1-based: highest mAP50-95 for detectors, mean of top-1 and top-5 accuracy for classifiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<i32>,
    /// URIs of the `last` and `best` checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Checkpoints>,
    /// `s3://` URI of `results.jsonl`, one JSON line of losses and metrics per epoch, rewritten after each epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_uri: Option<String>,
    /// Retries after pod failures so far, counted against `spec.backoffLimit` (pauses are not counted).
    #[serde(default)]
    pub restarts: i32,
    /// The current Job, when it started and finished, and why it failed.
    #[serde(flatten)]
    pub job: JobStatus,
}

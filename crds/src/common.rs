//! Types shared by every kind: kstatus conditions, references, phases.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The vision task a dataset, model or deployment serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Axis-aligned object detection (boxes).
    #[default]
    Detect,
    /// Instance segmentation (polygons / masks).
    Segment,
    /// Whole-image classification.
    Classify,
    /// Keypoint (pose) estimation.
    Pose,
    /// Oriented bounding boxes.
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

/// A kstatus-style condition (`Ready`, `Progressing`, `Failed`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: `Ready`, `Progressing` or `Failed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition last changed status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The condition types every Ocellus kind reports.
pub mod condition_types {
    /// The resource has reached its desired state.
    pub const READY: &str = "Ready";
    /// The controller is working towards the desired state.
    pub const PROGRESSING: &str = "Progressing";
    /// The controller has given up until the spec changes (kstatus `Stalled`).
    pub const FAILED: &str = "Failed";
}

impl Condition {
    /// A condition with the given type and boolean status.
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.into()),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Upserts `new` into `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Time) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            new.last_transition_time = if existing.status == new.status {
                existing.last_transition_time.clone().or(Some(now))
            } else {
                Some(now)
            };
            *existing = new;
        }
        None => {
            new.last_transition_time = Some(now);
            conditions.push(new);
        }
    }
}

/// A reference to a key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the resource's namespace.
    pub name: String,
}

/// A reference to another Ocellus resource in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced resource, in the same namespace.
    pub name: String,
}

/// Which checkpoint of a TrainingJob to use.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// The checkpoint with the best validation mAP50-95.
    #[default]
    Best,
    /// The most recent checkpoint.
    Last,
}

/// A reference to a checkpoint of a TrainingJob in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobCheckpointRef {
    /// Name of the TrainingJob, in the same namespace.
    pub name: String,
    /// Which of its checkpoints: `best` (default) or `last`.
    #[serde(default)]
    pub checkpoint: CheckpointKind,
}

/// A GPU request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Number of GPUs (`nvidia.com/gpu`, or MIG slices when `migProfile` is set). 0 runs on CPU.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub count: i32,
    /// Required GPU model, matched against the node label `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// MIG profile such as `1g.10gb`; requests `nvidia.com/mig-<profile>` instead of whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-7]g\.[0-9]+gb$"))]
    pub mig_profile: Option<String>,
}

impl GpuRequest {
    /// The extended resource name this request asks the scheduler for.
    pub fn resource_name(&self) -> String {
        match &self.mig_profile {
            Some(p) => format!("nvidia.com/mig-{p}"),
            None => "nvidia.com/gpu".to_string(),
        }
    }
}

/// Where pods of a workload may run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Node labels the pod's node must carry.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Tolerations added to the pod (e.g. for tainted GPU nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// PriorityClass of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// RuntimeClass of the pod (e.g. `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

/// What went wrong, as far as the controller could tell.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// CamelCase reason, e.g. `BackoffLimitExceeded`, `DatasetInvalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the failed container, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Pod-level cause: `Unschedulable`, `ImagePull`, `OOMKilled`, `DeadlineExceeded`, `Evicted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cause: Option<String>,
}

/// Status fields every kind carries (flattened into each status).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: `Ready`, `Progressing`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

//! Types shared by every kind: kstatus conditions, references, phases.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use ocellus_core::{CheckpointKind, Task};

/// A kstatus-style condition (`Ready`, `Progressing`, `Failed`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type: `Ready` (desired state reached), `Progressing` (work under way) or `Failed` (given up until the spec changes).
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition last changed status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` of the spec this condition was computed from; older than the current generation means stale.
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

/// A reference to a Secret in the same namespace; the keys it must hold depend on the field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the resource's namespace. The operator never reads it; the pod that needs it references it by name.
    pub name: String,
}

/// A reference to another Ocellus resource, by name, in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced resource, in the same namespace.
    pub name: String,
}

/// A reference to a checkpoint (`best` or `last`) of a TrainingJob in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobCheckpointRef {
    /// Name of the TrainingJob, in the same namespace; its weights are used once it has saved the checkpoint asked for.
    pub name: String,
    /// Which checkpoint: `best` (default: the epoch with the best validation mAP50-95, or top-1/top-5 accuracy for classifiers) or `last` (the most recently saved).
    #[serde(default)]
    pub checkpoint: CheckpointKind,
}

/// A request for NVIDIA GPUs (whole GPUs or MIG slices) for each pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Number of GPUs per pod (`nvidia.com/gpu`), or of MIG slices when `migProfile` is set; 0 to 16, default 0: runs on CPU only.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub count: i32,
    /// GPU model the node must have, matched against its `nvidia.com/gpu.product` label from GPU feature discovery (e.g. `NVIDIA-H100-80GB-HBM3`). Unset: any GPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// MIG profile such as `1g.10gb` (`<compute slices>g.<memory GB>gb`): requests `count` slices of `nvidia.com/mig-<profile>` instead of whole GPUs. Unset: whole GPUs.
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

/// Where the pods of a workload may run: node selector, tolerations, priority and runtime class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// Labels the pod's node must carry (key to value), in addition to the GPU `product` label when one is requested.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Tolerations added to the pod, so that it can run on tainted nodes (e.g. GPU nodes tainted `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// PriorityClass of the pod, which orders scheduling and decides preemption. Unset: the cluster's default priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// RuntimeClass of the pod, e.g. `nvidia` where the NVIDIA container runtime is not the node's default. Unset: the default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

/// Why a run failed, as far as the controller could tell.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Machine-readable CamelCase reason, e.g. `BackoffLimitExceeded`, `DatasetInvalid`, `UnsupportedTask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation, e.g. the workload's own error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the failed container, when it ran: 2 invalid input (retrying will not help), 3 transient error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Pod-level cause, when the pod itself failed: `Unschedulable`, `ImagePull`, `OOMKilled`, `DeadlineExceeded` or `Evicted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cause: Option<String>,
}

/// Status fields of the kinds that run Jobs (Dataset, TrainingJob, Export), flattened into
/// their status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Name of the `batch/v1` Job the controller runs now (or ran last), in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the current run's Job started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished, successfully or not (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why the run failed: a reason, the message, the container's exit code and the pod-level cause. Absent while nothing has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// Status fields every kind carries (flattened into each status).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the controller last acted on; when it is older than `metadata.generation`, the status is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions, at most one of each type: `Ready`, `Progressing`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

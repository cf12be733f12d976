//! What the three batch controllers share: the pure builder of a trainer Job (least-privileged
//! pod, S3 settings by reference, GPU placement) and the pure reading of how a Job's pod is
//! doing (running, stuck with a pod-level cause, or finished with the trainer's exit code and
//! last line).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use ocellus_core::exit;
use ocellus_crds::{Failure, GpuRequest, Scheduling};
use serde_json::Value;

use crate::config::WorkloadConfig;

/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ocellus-operator");
/// Label naming the kind of the owning Ocellus resource (`Dataset`, `TrainingJob`, `Export`).
pub const KIND_LABEL: &str = "ocellus.dev/kind";
/// Label naming the owning Ocellus resource.
pub const NAME_LABEL: &str = "ocellus.dev/name";
/// Label set by Kueue-aware Jobs to name their LocalQueue.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The node label GPU feature discovery sets to the GPU model.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Longest object name that can also be a label value (the Job controller labels pods with it).
pub const MAX_JOB_NAME: usize = 63;

/// One trainer run to build a Job for.
#[derive(Clone, Debug, Default)]
pub struct JobRequest {
    /// Name of the Job.
    pub name: String,
    /// Namespace of the owner and the Job.
    pub namespace: String,
    /// Controller owner reference to the Ocellus resource.
    pub owner: OwnerReference,
    /// `app.kubernetes.io/component`: `ingest`, `freeze`, `train` or `export`.
    pub component: &'static str,
    /// Trainer arguments: the subcommand, then its flags.
    pub args: Vec<String>,
    /// Extra environment, after the S3 settings.
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits (GPUs are added from `gpu`).
    pub resources: ResourceRequirements,
    /// GPUs, when the run needs them.
    pub gpu: Option<GpuRequest>,
    /// Placement from the spec.
    pub scheduling: Scheduling,
    /// Wall-clock limit of the Job.
    pub active_deadline_seconds: Option<i64>,
    /// Grace period of the pod: how long SIGTERM may take (a training checkpoint).
    pub termination_grace_period_seconds: Option<i64>,
    /// Kueue LocalQueue: the Job is created suspended with the queue label.
    pub queue_name: Option<String>,
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn secret_env(name: &str, secret: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: name.into(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The environment every trainer pod gets: the platform bucket's settings as values and its
/// credentials as references to the workload Secret (never the values).
pub fn s3_env(cfg: &WorkloadConfig) -> Vec<EnvVar> {
    vec![
        env("OCELLUS_S3_ENDPOINT", cfg.s3_endpoint.clone()),
        env("OCELLUS_S3_REGION", cfg.s3_region.clone()),
        env("OCELLUS_S3_BUCKET", cfg.s3_bucket.clone()),
        env("OCELLUS_S3_FORCE_PATH_STYLE", cfg.s3_force_path_style.to_string()),
        secret_env("AWS_ACCESS_KEY_ID", &cfg.s3_secret),
        secret_env("AWS_SECRET_ACCESS_KEY", &cfg.s3_secret),
        env("OCELLUS_LOG_FORMAT", "json"),
    ]
}

/// Labels of a Job and its pods.
pub fn labels(kind: &str, name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ("app.kubernetes.io/name".to_string(), "ocellus-trainer".to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        (KIND_LABEL.to_string(), kind.to_string()),
        (NAME_LABEL.to_string(), name.to_string()),
    ])
}

/// Builds the Job of one run (pure).
pub fn job(cfg: &WorkloadConfig, req: &JobRequest) -> Job {
    let mut labels = labels(&req.owner.kind, &req.owner.name, req.component);
    let mut resources = req.resources.clone();
    let place = placement(cfg, req.gpu.as_ref(), &req.scheduling, &mut resources);
    let pod_labels = labels.clone();
    if let Some(q) = &req.queue_name {
        labels.insert(KUEUE_QUEUE_LABEL.to_string(), q.clone());
    }
    let mut env = s3_env(cfg);
    env.extend(req.env.iter().cloned());
    let container = Container {
        name: "trainer".into(),
        image: Some(cfg.trainer_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(req.args.clone()),
        env: Some(env),
        resources: Some(resources),
        // The trainer's last stdout line is its outcome; on a failure the kubelet copies the end
        // of the log into the termination message, where the operator reads it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "scratch".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        security_context: Some(container_security()),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        // Workload pods hold no Kubernetes credentials: progress flows through the object store.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security()),
        volumes: Some(vec![scratch_volume()]),
        node_selector: place.node_selector,
        tolerations: place.tolerations,
        affinity: place.affinity,
        priority_class_name: place.priority_class_name,
        runtime_class_name: place.runtime_class_name,
        termination_grace_period_seconds: req.termination_grace_period_seconds,
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(req.name.clone()),
            namespace: Some(req.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![req.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries are the operator's (counted in the owner's status), never the Job's.
            backoff_limit: Some(0),
            completions: Some(1),
            parallelism: Some(1),
            active_deadline_seconds: req.active_deadline_seconds,
            // Kueue starts a suspended Job when its queue admits it (Job `suspend` needs 1.21+).
            suspend: req.queue_name.as_ref().map(|_| true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Where a workload pod may run: the spec's placement plus, when it asks for GPUs, the
/// cluster's GPU defaults and the GPU model's node affinity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Node selector (spec first, then the GPU defaults).
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations (spec first, then the GPU defaults).
    pub tolerations: Option<Vec<Toleration>>,
    /// Required affinity to the GPU model (`nvidia.com/gpu.product`).
    pub affinity: Option<Affinity>,
    /// Priority class from the spec.
    pub priority_class_name: Option<String>,
    /// Runtime class: the spec's, else the cluster's GPU default for GPU pods.
    pub runtime_class_name: Option<String>,
}

/// The placement of a pod asking for `gpu` (pure); adds the GPU limit to `resources`.
pub fn placement(
    cfg: &WorkloadConfig,
    gpu: Option<&GpuRequest>,
    scheduling: &Scheduling,
    resources: &mut ResourceRequirements,
) -> Placement {
    let gpus = gpu.filter(|g| g.count > 0);
    let mut tolerations = scheduling.tolerations.clone();
    let mut node_selector = scheduling.node_selector.clone();
    let mut runtime_class = scheduling.runtime_class_name.clone();
    let mut affinity = None;
    if let Some(g) = gpus {
        let name = if g.mig_profile.is_some() { g.resource_name() } else { cfg.gpu_resource.clone() };
        resources.limits.get_or_insert_with(BTreeMap::new).insert(name, Quantity(g.count.to_string()));
        for t in &cfg.gpu_tolerations.0 {
            if !tolerations.contains(t) {
                tolerations.push(t.clone());
            }
        }
        for (k, v) in &cfg.gpu_node_selector.0 {
            node_selector.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if runtime_class.is_none() && !cfg.gpu_runtime_class.is_empty() {
            runtime_class = Some(cfg.gpu_runtime_class.clone());
        }
        affinity = g.product.as_ref().map(|p| gpu_product_affinity(p));
    }
    Placement {
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity,
        priority_class_name: scheduling.priority_class_name.clone(),
        runtime_class_name: runtime_class,
    }
}

/// The container security of every workload: no privilege escalation, no capabilities, a
/// read-only root filesystem (scratch space is the `/tmp` emptyDir).
pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        ..Default::default()
    }
}

/// The pod security of every workload: a fixed non-root user and the runtime's seccomp profile.
pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

/// The writable scratch volume, mounted at `/tmp`.
pub fn scratch_volume() -> Volume {
    Volume { name: "scratch".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
}

fn gpu_product_affinity(product: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: GPU_PRODUCT_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![product.into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Job name of at most [`MAX_JOB_NAME`] characters: `<base>-<suffix>`, the base shortened
/// when needed (the suffix carries what makes it unique).
pub fn job_name(base: &str, suffix: &str) -> String {
    let room = MAX_JOB_NAME.saturating_sub(suffix.len() + 1);
    let base = if base.len() > room { base[..room].trim_end_matches(['-', '.']) } else { base };
    format!("{base}-{suffix}")
}

/// Why a pod is not making progress, as users need to see it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodCause {
    /// `Unschedulable`, `ImagePull`, `ConfigError`, `OOMKilled`, `DeadlineExceeded`, `Evicted` or `StartError`.
    pub reason: String,
    /// The scheduler's or the kubelet's message.
    pub message: String,
}

/// How a run is doing, read from its Job and the Job's pods.
#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    /// No Job.
    Missing,
    /// The Job waits: not admitted (suspended), not scheduled, or its container not started;
    /// `cause` says why when it is stuck.
    Pending { cause: Option<PodCause> },
    /// The container runs.
    Running,
    /// Exit code 0.
    Succeeded,
    /// The trainer stopped on SIGTERM after saving its state (exit code 4).
    Paused,
    /// The run failed.
    Failed(RunFailure),
}

/// A failed run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFailure {
    /// What went wrong, for the owner's status.
    pub failure: Failure,
    /// Whether a retry can help (exit 2, invalid input, cannot).
    pub retryable: bool,
}

/// Reads the state of a run from its Job and that Job's pods (pure).
pub fn observe(job: Option<&Job>, pods: &[&Pod]) -> RunState {
    let Some(job) = job else { return RunState::Missing };
    // The newest pod decides (with backoffLimit 0 there is one, unless it was replaced).
    let pod = pods.iter().max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0)).copied();
    if let Some(pod) = pod {
        let status = pod.status.clone().unwrap_or_default();
        let container = status.container_statuses.as_ref().and_then(|c| c.first()).cloned();
        let terminated = container.as_ref().and_then(|c| c.state.as_ref()?.terminated.clone());
        match status.phase.as_deref() {
            Some("Succeeded") => return RunState::Succeeded,
            Some("Failed") => {
                let pod_reason = status.reason.clone();
                if let Some(t) = &terminated {
                    return terminated_state(t.exit_code, t.reason.as_deref(), t.message.as_deref(), pod_reason);
                }
                return RunState::Failed(RunFailure {
                    failure: Failure {
                        reason: Some(pod_reason.clone().unwrap_or_else(|| "PodFailed".into())),
                        message: status.message.clone(),
                        exit_code: None,
                        pod_cause: pod_reason,
                    },
                    retryable: true,
                });
            }
            _ => {}
        }
        if let Some(t) = &terminated {
            // Terminated but the pod phase not yet updated: the container's code decides.
            return terminated_state(t.exit_code, t.reason.as_deref(), t.message.as_deref(), None);
        }
        if let Some(w) = container.as_ref().and_then(|c| c.state.as_ref()?.waiting.clone()) {
            let reason = w.reason.unwrap_or_default();
            let cause = match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => Some("ImagePull"),
                "CreateContainerConfigError" | "CreateContainerError" => Some("ConfigError"),
                _ => None,
            };
            return RunState::Pending {
                cause: cause.map(|c| PodCause {
                    reason: c.into(),
                    message: format!("{reason}: {}", w.message.unwrap_or_default()).trim_end_matches(": ").into(),
                }),
            };
        }
        if container.as_ref().and_then(|c| c.state.as_ref()?.running.as_ref()).is_some() {
            return RunState::Running;
        }
        let unschedulable =
            status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            });
        if let Some(c) = unschedulable {
            return RunState::Pending {
                cause: Some(PodCause {
                    reason: "Unschedulable".into(),
                    message: c.message.clone().unwrap_or_default(),
                }),
            };
        }
        return RunState::Pending { cause: None };
    }
    // No pod: the Job's own conditions (deadline before a pod ran, or pods already deleted).
    let st = job.status.clone().unwrap_or_default();
    for c in st.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return RunState::Succeeded,
            "Failed" => {
                let reason = c.reason.clone().unwrap_or_else(|| "JobFailed".into());
                let pod_cause = (reason == "DeadlineExceeded").then(|| reason.clone());
                return RunState::Failed(RunFailure {
                    failure: Failure { reason: Some(reason), message: c.message.clone(), exit_code: None, pod_cause },
                    retryable: true,
                });
            }
            _ => {}
        }
    }
    RunState::Pending { cause: None }
}

/// The state of a container that ended with `code`.
fn terminated_state(code: i32, reason: Option<&str>, message: Option<&str>, pod_reason: Option<String>) -> RunState {
    match code {
        0 => return RunState::Succeeded,
        c if c == i32::from(exit::PAUSED) => return RunState::Paused,
        _ => {}
    }
    let line = message.and_then(last_error_line);
    let pod_cause = match (reason, pod_reason.as_deref()) {
        (Some("OOMKilled"), _) => Some("OOMKilled".to_string()),
        (_, Some(r @ ("DeadlineExceeded" | "Evicted"))) => Some(r.to_string()),
        (Some("StartError" | "ContainerCannotRun"), _) => Some("StartError".to_string()),
        _ => None,
    };
    let (reason, text) = match line {
        Some((r, m)) => (r, m),
        None => {
            let last = message.and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty())).unwrap_or("");
            let what = match code {
                137 => "killed (SIGKILL)".to_string(),
                143 => "terminated (SIGTERM)".to_string(),
                c => format!("exited with code {c}"),
            };
            let r = pod_cause.clone().unwrap_or_else(|| "Error".into());
            (r, if last.is_empty() { format!("the trainer {what}") } else { format!("the trainer {what}: {last}") })
        }
    };
    RunState::Failed(RunFailure {
        failure: Failure { reason: Some(reason), message: Some(text), exit_code: Some(code), pod_cause },
        retryable: code != i32::from(exit::INVALID),
    })
}

/// The `reason` and `message` of the trainer's last `{"event":"error",...}` line, if the
/// termination message has one.
pub fn last_error_line(message: &str) -> Option<(String, String)> {
    message.lines().rev().find_map(|l| {
        let v: Value = serde_json::from_str(l.trim()).ok()?;
        (v.get("event")?.as_str()? == "error").then(|| {
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            (field("reason"), field("message"))
        })
    })
}

/// Attempt `n`'s back-off before it starts: 10 s doubled per earlier failure, at most 5 minutes.
pub fn backoff(failures: i32) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1u64 << failures.clamp(1, 16).saturating_sub(1) as u32);
    std::time::Duration::from_secs(secs.min(300))
}

/// How long a retry must still wait: the back-off after `failures` failures counts from the end
/// of the failed run (`completion_time`), until the retry starts (`start_time` set). `None` when
/// nothing failed, the retry has started, or its time has come.
pub fn retry_wait(
    job: &ocellus_crds::JobStatus,
    failures: i32,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<std::time::Duration> {
    if failures < 1 || job.start_time.is_some() {
        return None;
    }
    let ended = job.completion_time.as_ref()?;
    let wait = (ended.0 + backoff(failures)).duration_since(now).as_millis();
    (wait > 0).then(|| std::time::Duration::from_millis(wait as u64))
}

#[cfg(test)]
mod tests;

//! ModelDeployment controller: resolves the model (an Export's artifact, a TrainingJob
//! checkpoint through an owned TorchScript Export, or an `s3://` URI), owns the predictor
//! Deployment, its Service and, when more than one pod may run, a PodDisruptionBudget, and sizes
//! the Deployment with the concurrency autoscaler ([`crate::autoscale`]): the in-flight requests
//! of each ready pod (its `/metrics`) plus the requests the gateway holds (annotations the
//! gateway writes). `stopped` and an expired `durationHours` hold it at zero; with
//! `deleteOnExpiration`, an expired deployment is deleted instead (its children go with it by
//! owner references).
//!
//! Resolution, the children and the status are pure functions (table-tested); `reconcile`
//! only reads caches and pods' metrics, and writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, Service, ServicePort, ServiceSpec, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use ocellus_crds::{
    Backend, DeploymentPhase, Export, ExportFormat, ExportPhase, ExportSource, ExportSpec, ModelDeployment,
    ModelDeploymentStatus,
};
use serde_json::Value;

use super::{Context, Error, Health, apply_status, now, owner_ref, set_health};
use crate::autoscale::{Observation, Policy};
use crate::config::WorkloadConfig;
use crate::workload::{self, KIND_LABEL, MANAGED_BY, NAME_LABEL, PodCause};

/// Field manager of this controller's writes.
pub const MANAGER: &str = "ocellus-operator/modeldeployment";
/// Controller label of metrics.
pub const CONTROLLER: &str = "modeldeployment";
/// Kind label value of the predictor pods.
pub const KIND: &str = "ModelDeployment";
/// Annotation the gateway sets (RFC 3339) when a request arrives for a deployment without a
/// ready pod: the operator scales it from zero at once.
pub const WAKE_ANNOTATION: &str = "ocellus.dev/wake-requested-at";
/// Annotation the gateway sets with the requests it holds for the deployment (with the wake).
pub const HELD_ANNOTATION: &str = "ocellus.dev/held-requests";
/// Label naming the ModelDeployment on its Service (the gateway finds EndpointSlices by it).
pub const DEPLOYMENT_LABEL: &str = "ocellus.dev/modeldeployment";
/// Port the predictor listens on, and the Service's.
pub const PORT: i32 = 8080;
/// Name of that port.
pub const PORT_NAME: &str = "http";
/// How often the load of an autoscaled deployment is sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);
/// How long the gateway's held count stays trusted after its last write.
const HELD_FRESH: Duration = Duration::from_secs(10);
/// The predictor's in-flight gauge (requests accepted and not yet answered, queued included).
const INFLIGHT_METRIC: &str = "ocellus_predictor_inflight_requests";

/// The artifact to serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// `s3://` URI of the artifact (its model info at `<uri>.json`).
    pub uri: String,
    /// Its format.
    pub format: ExportFormat,
    /// Its SHA-256, when known.
    pub sha256: Option<String>,
    /// Its numeric precision (`fp32`, `fp16` or `int8`), when known: an Export's.
    pub precision: Option<String>,
}

impl Model {
    /// The version users see: the first 12 hex digits of the SHA-256.
    pub fn version(&self) -> Option<String> {
        self.sha256.as_ref().map(|s| s.chars().take(12).collect())
    }
}

/// Where the model stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The artifact exists.
    Ready(Model),
    /// It will exist (an Export is running, or has not been created yet).
    Waiting { reason: String, message: String },
    /// It cannot be served until a spec changes.
    Invalid { reason: String, message: String },
}

fn waiting(reason: &str, message: impl Into<String>) -> Resolution {
    Resolution::Waiting { reason: reason.into(), message: message.into() }
}

fn invalid(reason: &str, message: impl Into<String>) -> Resolution {
    Resolution::Invalid { reason: reason.into(), message: message.into() }
}

/// The owned Export that turns a TrainingJob checkpoint into TorchScript: `<name>-torchscript`.
pub fn checkpoint_export_name(md: &str) -> String {
    workload::job_name(md, "torchscript")
}

/// Name of the Export the model comes from: the referenced one, or the owned checkpoint export.
pub fn export_name(md: &ModelDeployment) -> Option<String> {
    let m = &md.spec.model;
    m.export
        .as_ref()
        .map(|e| e.name.clone())
        .or_else(|| m.training_job.as_ref().map(|_| checkpoint_export_name(&md.name_any())))
}

/// What CEL refuses on real clusters, re-checked (the local 1.20 cluster has no CEL), plus
/// what the predictor cannot run (pure).
pub fn validate(md: &ModelDeployment) -> Result<(), String> {
    let s = &md.spec;
    let m = &s.model;
    let set = [m.export.is_some(), m.training_job.is_some(), m.uri.is_some()].iter().filter(|x| **x).count();
    if set != 1 {
        return Err("exactly one of model.export, model.trainingJob or model.uri must be set".into());
    }
    if m.uri.is_some() != m.format.is_some() {
        return Err("model.format must be set together with model.uri, and only with it".into());
    }
    if let Some(uri) = &m.uri
        && !uri.starts_with("s3://")
    {
        return Err(format!("model.uri {uri}: only s3:// URIs are served for now (https:// is planned)"));
    }
    if s.backend == Backend::Tensorrt && s.resources.gpu.count < 1 {
        return Err("backend tensorrt needs a GPU (resources.gpu.count > 0)".into());
    }
    if s.scaling.min_replicas > s.scaling.max_replicas {
        return Err("scaling.minReplicas must not exceed scaling.maxReplicas".into());
    }
    if s.delete_on_expiration && s.duration_hours.is_none() {
        return Err("deleteOnExpiration needs durationHours".into());
    }
    for (what, q) in [("resources.cpu", &s.resources.cpu), ("resources.memory", &s.resources.memory)] {
        if !is_quantity(q) {
            return Err(format!("{what} {q:?} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)"));
        }
    }
    Ok(())
}

fn is_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &q[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|v| v > 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// Whether `backend` can run an artifact of `format`.
fn runs(backend: Backend, format: ExportFormat) -> bool {
    match backend {
        Backend::Auto => true,
        Backend::Libtorch => format == ExportFormat::Torchscript,
        Backend::Onnxruntime => format == ExportFormat::Onnx,
        Backend::Tensorrt => matches!(format, ExportFormat::Onnx | ExportFormat::Engine),
    }
}

/// The precision an Export's spec asks for; for Exports that succeeded before their status
/// recorded the artifact's.
fn spec_precision(spec: &ExportSpec) -> &'static str {
    if spec.int8 {
        "int8"
    } else if spec.half {
        "fp16"
    } else {
        "fp32"
    }
}

/// Resolves the model from the spec and the Export it comes from, if any (pure).
pub fn resolve(md: &ModelDeployment, export: Option<&Export>) -> Resolution {
    if let Err(e) = validate(md) {
        return invalid("InvalidSpec", e);
    }
    let m = &md.spec.model;
    let model = if let (Some(uri), Some(format)) = (&m.uri, m.format) {
        Model { uri: uri.clone(), format, sha256: m.sha256.clone(), precision: None }
    } else {
        let name = export_name(md).unwrap_or_default();
        let what = match &m.training_job {
            Some(tj) => format!("the TorchScript export {name} of TrainingJob {}", tj.name),
            None => format!("Export {name}"),
        };
        let Some(ex) = export else {
            return waiting("ExportNotFound", format!("waiting for {what}: it does not exist"));
        };
        let st = ex.status.clone().unwrap_or_default();
        match (st.phase, st.artifact) {
            (ExportPhase::Succeeded, Some(a)) => Model {
                uri: a.uri,
                format: ex.spec.format,
                sha256: Some(a.sha256),
                precision: st.precision.or_else(|| Some(spec_precision(&ex.spec).into())),
            },
            (ExportPhase::Failed, _) => {
                let why = st.job.failure.and_then(|f| f.message).unwrap_or_default();
                return invalid("ExportFailed", format!("{what} failed: {why}").trim_end_matches(": ").to_string());
            }
            (phase, _) => return waiting("ExportPending", format!("waiting for {what} (phase {phase:?})")),
        }
    };
    if !runs(md.spec.backend, model.format) {
        return invalid(
            "BackendMismatch",
            format!("backend {:?} cannot run a {:?} artifact", md.spec.backend, model.format).to_lowercase(),
        );
    }
    if let (Some(pin), Some(sha)) = (&m.sha256, &model.sha256)
        && pin != sha
    {
        return invalid("ChecksumMismatch", format!("the artifact's SHA-256 {sha} is not the pinned {pin}"));
    }
    Resolution::Ready(model)
}

/// The owned Export of a `model.trainingJob` source: the checkpoint to TorchScript, at the
/// deployment's `inference.imgsz` when set (pure). `None` for other sources.
pub fn build_checkpoint_export(md: &ModelDeployment) -> Option<Export> {
    let tj = md.spec.model.training_job.clone()?;
    let mut ex = Export::new(
        &checkpoint_export_name(&md.name_any()),
        ExportSpec {
            source: ExportSource { training_job: Some(tj), weights_uri: None },
            format: ExportFormat::Torchscript,
            imgsz: md.spec.inference.imgsz,
            half: false,
            int8: false,
            calibration: None,
            max_accuracy_drop: None,
            dynamic: false,
            batch: 1,
            opset: None,
            gpu_product: None,
            scheduling: Default::default(),
        },
    );
    ex.metadata.namespace = md.namespace();
    ex.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (DEPLOYMENT_LABEL.to_string(), md.name_any()),
    ]));
    ex.metadata.owner_references = Some(vec![owner_ref(md)]);
    Some(ex)
}

/// Labels selecting the predictor pods of `name`.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (KIND_LABEL.to_string(), KIND.to_string()),
        (NAME_LABEL.to_string(), name.to_string()),
    ])
}

fn pod_labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector(name);
    l.insert("app.kubernetes.io/name".into(), "ocellus-predictor".into());
    l.insert("app.kubernetes.io/component".into(), "predictor".into());
    l
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.to_string()), ..Default::default() }
}

fn http_probe(path: &str, period: i32, failures: i32, timeout: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(timeout),
        ..Default::default()
    }
}

/// The predictor Deployment serving `model` with `replicas` pods (pure).
///
/// Pods bind their own IP, turn ready only once the model is loaded and warmed up (`/readyz`),
/// hold no Kubernetes credentials and read the artifact with the workload S3 Secret. A new
/// model rolls out one extra pod at a time and never takes a ready pod away first.
pub fn build_deployment(cfg: &WorkloadConfig, md: &ModelDeployment, model: &Model, replicas: i32) -> Deployment {
    let name = md.name_any();
    let s = &md.spec;
    let gpu = s.resources.gpu.count > 0;
    let mut resources = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(s.resources.cpu.clone())),
            ("memory".to_string(), Quantity(s.resources.memory.clone())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(s.resources.memory.clone()))])),
        ..Default::default()
    };
    let place = workload::placement(cfg, Some(&s.resources.gpu), &s.scheduling, &mut resources);
    let backend = match s.backend {
        Backend::Auto => "auto",
        Backend::Libtorch => "torch",
        Backend::Onnxruntime => "onnx",
        Backend::Tensorrt => "tensorrt",
    };
    let mut envs = vec![EnvVar {
        name: "POD_IP".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: None }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    envs.extend(workload::s3_env(cfg));
    envs.extend([
        env("OCELLUS_LISTEN", format!("$(POD_IP):{PORT}")),
        env("OCELLUS_MODEL", &model.uri),
        env("OCELLUS_MODEL_NAME", &name),
        env("OCELLUS_MODEL_DIR", "/tmp/model"),
        env("OCELLUS_BACKEND", backend),
        env("OCELLUS_DEVICE", if gpu { "cuda" } else { "cpu" }),
        env("OCELLUS_MAX_BATCH", s.batching.max_batch_size),
        env("OCELLUS_MAX_DELAY_MS", s.batching.max_delay_ms),
        env("OCELLUS_QUEUE_CAPACITY", s.batching.max_queue),
        env("OCELLUS_CONF", s.inference.conf),
        env("OCELLUS_IOU", s.inference.iou),
        env("OCELLUS_MAX_DET", s.inference.max_det),
    ]);
    if let Some(pin) = &s.model.sha256 {
        envs.push(env("OCELLUS_MODEL_SHA256", pin));
    }
    let container = Container {
        name: "predictor".into(),
        image: Some(cfg.predictor_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(vec!["serve".into()]),
        env: Some(envs),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        // Serving only after the model is loaded and warmed up.
        readiness_probe: Some(http_probe("/readyz", 1, 2, 1)),
        // Downloading a large artifact may take minutes before the server listens.
        startup_probe: Some(http_probe("/healthz", 5, 120, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 6, 2)),
        // A crash's last log lines (the load error) become the termination message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "scratch".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        security_context: Some(workload::container_security()),
        ..Default::default()
    };
    let mut template_annotations = BTreeMap::new();
    if let Some(v) = model.version() {
        template_annotations.insert("ocellus.dev/model-version".to_string(), v);
    }
    Deployment {
        metadata: child_meta(md, pod_labels(&name)),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector(&name)), match_expressions: None },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(&name)),
                    annotations: (!template_annotations.is_empty()).then_some(template_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(workload::pod_security()),
                    volumes: Some(vec![workload::scratch_volume()]),
                    node_selector: place.node_selector,
                    tolerations: place.tolerations,
                    affinity: place.affinity,
                    priority_class_name: place.priority_class_name,
                    runtime_class_name: place.runtime_class_name,
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    }
}

/// Metadata of a child: the deployment's name and namespace, `labels`, its owner reference.
fn child_meta(md: &ModelDeployment, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(md.name_any()),
        namespace: md.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner_ref(md)]),
        ..Default::default()
    }
}

/// The Service in front of the predictor pods: `<name>:8080`, port `http` (pure).
pub fn build_service(md: &ModelDeployment) -> Service {
    let name = md.name_any();
    let mut labels = pod_labels(&name);
    labels.insert(DEPLOYMENT_LABEL.into(), name.clone());
    Service {
        metadata: child_meta(md, labels),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// A PodDisruptionBudget letting voluntary disruptions (node drains) take one predictor pod
/// at a time; only when more than one may run (pure).
pub fn build_pdb(md: &ModelDeployment) -> Option<PodDisruptionBudget> {
    if md.spec.scaling.max_replicas < 2 {
        return None;
    }
    let name = md.name_any();
    Some(PodDisruptionBudget {
        metadata: child_meta(md, pod_labels(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(&name)), match_expressions: None }),
            ..Default::default()
        }),
        status: None,
    })
}

/// Whether the deployment may serve now.
#[derive(Clone, Debug, PartialEq)]
pub enum Lifecycle {
    /// Serving and scaling.
    Serving,
    /// `spec.stopped`.
    Stopped,
    /// `durationHours` has passed.
    Expired,
}

/// When `durationHours` ends, from the creation time (pure).
pub fn expires_at(md: &ModelDeployment) -> Option<Timestamp> {
    let hours = md.spec.duration_hours?;
    let created = md.metadata.creation_timestamp.as_ref()?.0;
    let secs = (hours * 3600.0).round() as i64;
    created.checked_add(SignedDuration::from_secs(secs)).ok()
}

/// The lifecycle at `now` (pure): a stop wins over an expiry.
pub fn lifecycle(md: &ModelDeployment, now: Timestamp) -> Lifecycle {
    if md.spec.stopped {
        Lifecycle::Stopped
    } else if expires_at(md).is_some_and(|t| t <= now) {
        Lifecycle::Expired
    } else {
        Lifecycle::Serving
    }
}

/// Whether to delete `md` now (pure): `deleteOnExpiration` is set, `durationHours` has passed,
/// and it is not already being deleted. Applies to a stopped deployment too: a pause does not
/// extend its lifetime.
pub fn deletes_on_expiry(md: &ModelDeployment, now: Timestamp) -> bool {
    md.spec.delete_on_expiration && md.metadata.deletion_timestamp.is_none() && expires_at(md).is_some_and(|t| t <= now)
}

/// How long until the expiry changes something (pure): it stops a serving deployment, and
/// deletes one with `deleteOnExpiration` even when stopped. `None` when it has passed or
/// changes nothing. One second late, so that the reconcile then sees it passed.
pub fn until_expiry(md: &ModelDeployment, life: &Lifecycle, now: Timestamp) -> Option<Duration> {
    let at = expires_at(md)?;
    let acts = match life {
        Lifecycle::Serving => true,
        Lifecycle::Stopped => md.spec.delete_on_expiration,
        Lifecycle::Expired => false,
    };
    (acts && at > now)
        .then(|| Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO) + Duration::from_secs(1))
}

/// Why a predictor pod is not serving, as users need to see it (pure): `Unschedulable`,
/// `ImagePull`, `ConfigError` or `CrashLoop` (with the last line the predictor logged).
pub fn pod_cause(pod: &Pod) -> Option<PodCause> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    {
        return Some(PodCause { reason: "Unschedulable".into(), message: c.message.clone().unwrap_or_default() });
    }
    let cs = status.container_statuses.as_ref()?.first()?;
    let waiting = cs.state.as_ref().and_then(|s| s.waiting.clone());
    let reason = waiting.as_ref().and_then(|w| w.reason.clone()).unwrap_or_default();
    let kind = match reason.as_str() {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => Some("ImagePull"),
        "CreateContainerConfigError" | "CreateContainerError" => Some("ConfigError"),
        _ => None,
    };
    if let Some(kind) = kind {
        let message = waiting.and_then(|w| w.message).unwrap_or_default();
        return Some(PodCause {
            reason: kind.into(),
            message: format!("{reason}: {message}").trim_end_matches(": ").into(),
        });
    }
    let terminated = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.clone()))
        .filter(|t| t.exit_code != 0);
    if reason == "CrashLoopBackOff" || (terminated.is_some() && cs.restart_count > 0) {
        let t = terminated?;
        let line = t.message.as_deref().and_then(last_log_line);
        let code = t.exit_code;
        let what = if t.reason.as_deref() == Some("OOMKilled") {
            "was OOM-killed (raise resources.memory)".to_string()
        } else {
            format!("exited with code {code}")
        };
        let message = match line {
            Some(l) => format!("the predictor {what}: {l}"),
            None => format!("the predictor {what}"),
        };
        return Some(PodCause { reason: "CrashLoop".into(), message });
    }
    None
}

/// The last meaningful line of a predictor log tail: a JSON log line's `error` (or message),
/// else the plain line.
fn last_log_line(log: &str) -> Option<String> {
    let line = log.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let Ok(v) = serde_json::from_str::<Value>(line) else { return Some(line.to_string()) };
    let fields = v.get("fields").unwrap_or(&v);
    let pick = |k: &str| fields.get(k).and_then(Value::as_str).map(String::from);
    pick("error").or_else(|| pick("message")).or_else(|| Some(line.to_string()))
}

/// What the status is computed from.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// Stopped, expired or serving.
    pub lifecycle: Lifecycle,
    /// The model.
    pub resolution: &'a Resolution,
    /// The predictor Deployment, from the cache.
    pub deployment: Option<&'a Deployment>,
    /// Its pods, from the cache.
    pub pods: &'a [&'a Pod],
    /// Replicas the autoscaler wants.
    pub desired: i32,
}

/// The status and health of a ModelDeployment (pure). Carries over `old`'s scale time.
pub fn status(md: &ModelDeployment, old: &ModelDeploymentStatus, obs: &Observed) -> (ModelDeploymentStatus, Health) {
    let mut st = old.clone();
    st.common.observed_generation = md.metadata.generation;
    let ds = obs.deployment.and_then(|d| d.status.clone()).unwrap_or_default();
    st.replicas = ds.replicas.unwrap_or(0);
    st.ready_replicas = ds.ready_replicas.unwrap_or(0);
    st.desired_replicas = obs.desired;
    st.expires_at = expires_at(md).map(Time);
    st.url =
        obs.deployment.map(|_| format!("http://{}.{}.svc:{PORT}", md.name_any(), md.namespace().unwrap_or_default()));
    if let Resolution::Ready(m) = obs.resolution {
        st.model_uri = Some(m.uri.clone());
        st.model_version = m.version();
        st.precision = m.precision.clone();
    }
    let live_pods = obs.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
    let (phase, health) = match (&obs.lifecycle, obs.resolution) {
        (Lifecycle::Stopped, _) => stopped(DeploymentPhase::Stopped, "Stopped", "stopped (spec.stopped)", live_pods),
        (Lifecycle::Expired, _) => {
            let at = st.expires_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
            stopped(DeploymentPhase::Expired, "Expired", &format!("expired at {at} (spec.durationHours)"), live_pods)
        }
        (_, Resolution::Invalid { reason, message }) => {
            (DeploymentPhase::Failed, Health::Failed { reason: reason.clone(), message: message.clone() })
        }
        (_, Resolution::Waiting { reason, message }) if obs.deployment.is_none() => {
            (DeploymentPhase::Pending, Health::Progressing { reason: reason.clone(), message: message.clone() })
        }
        _ if st.ready_replicas > 0 => {
            let rolling = ds.updated_replicas.unwrap_or(0) < st.replicas;
            let message = format!(
                "{} of {} replicas ready{}",
                st.ready_replicas,
                obs.desired.max(st.ready_replicas),
                if rolling { "; rolling out a new model" } else { "" }
            );
            (DeploymentPhase::Ready, Health::Ready { reason: "Serving".into(), message })
        }
        _ if obs.desired == 0 => {
            let message =
                if live_pods > 0 { "scaling to zero" } else { "no replicas while idle; the next request wakes it" };
            (DeploymentPhase::ScaledToZero, Health::Ready { reason: "ScaledToZero".into(), message: message.into() })
        }
        _ => {
            let causes: Vec<PodCause> = obs.pods.iter().filter_map(|p| pod_cause(p)).collect();
            match causes.iter().find(|c| c.reason == "CrashLoop").or(causes.first()) {
                Some(c) if c.reason == "CrashLoop" || c.reason == "ConfigError" => {
                    (DeploymentPhase::Failed, Health::Failed { reason: c.reason.clone(), message: c.message.clone() })
                }
                Some(c) => (
                    DeploymentPhase::Deploying,
                    Health::Progressing { reason: c.reason.clone(), message: c.message.clone() },
                ),
                None => (
                    DeploymentPhase::Deploying,
                    Health::Progressing {
                        reason: "Starting".into(),
                        message: format!("waiting for {} pods to load and warm up the model", obs.desired),
                    },
                ),
            }
        }
    };
    st.phase = phase;
    (st, health)
}

fn stopped(phase: DeploymentPhase, reason: &str, message: &str, live_pods: usize) -> (DeploymentPhase, Health) {
    let health = if live_pods > 0 {
        Health::Progressing { reason: reason.into(), message: format!("{message}: stopping {live_pods} pods") }
    } else {
        Health::Ready { reason: reason.into(), message: message.into() }
    };
    (phase, health)
}

/// The autoscaling policy of `md`.
pub fn policy(md: &ModelDeployment) -> Policy {
    let s = &md.spec.scaling;
    Policy::new(
        s.min_replicas,
        s.max_replicas.max(s.min_replicas),
        f64::from(s.target_concurrency),
        u64::try_from(s.scale_to_zero_idle_seconds).unwrap_or(300),
    )
}

/// The gateway's wake and held count from the annotations, relative to `now` (pure): the time
/// of the wake as an [`Instant`] and the held requests, when fresh.
pub fn gateway_demand(md: &ModelDeployment, now_ts: Timestamp, now: Instant) -> (Option<Instant>, f64) {
    let annotations = md.annotations();
    let Some(at) = annotations.get(WAKE_ANNOTATION).and_then(|t| t.parse::<Timestamp>().ok()) else {
        return (None, 0.0);
    };
    let age = now_ts.duration_since(at);
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO); // a wake from the future is now
    let woken = now.checked_sub(age);
    let held = if age <= HELD_FRESH {
        annotations.get(HELD_ANNOTATION).and_then(|h| h.parse::<f64>().ok()).filter(|h| h.is_finite()).unwrap_or(0.0)
    } else {
        0.0
    };
    (woken, held.max(0.0))
}

/// Parses the predictor's in-flight gauge from its Prometheus text (pure).
pub fn inflight_of(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(INFLIGHT_METRIC)?;
        let value =
            rest.strip_prefix(' ').or_else(|| rest.strip_prefix('{').and_then(|r| r.split_once("} ").map(|x| x.1)))?;
        value.split_whitespace().next()?.parse().ok()
    })
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// In-flight requests of the ready pods, scraped concurrently (a pod that does not answer in
/// time counts as unknown and is left out).
async fn scrape(http: &reqwest::Client, pods: &[Arc<Pod>]) -> f64 {
    let urls: Vec<String> = pods
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("http://{ip}:{PORT}/metrics"))
        .collect();
    let reads = urls.into_iter().map(|u| async move {
        let text = http.get(&u).send().await.ok()?.error_for_status().ok()?.text().await.ok()?;
        inflight_of(&text)
    });
    futures::future::join_all(reads).await.into_iter().flatten().sum()
}

/// The caches a ModelDeployment reconcile reads besides the context's.
pub struct Stores {
    /// Exports (the model's source).
    pub exports: Store<Export>,
    /// ModelDeployments (to forget the autoscaler state of deleted ones).
    pub deployments: Store<ModelDeployment>,
}

/// Reconciles one ModelDeployment.
pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>, stores: &Stores) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let exports = &stores.exports;
    // A deleted deployment is never reconciled again: drop its autoscaler memory here.
    ctx.prune_scalers(|key| {
        key.split_once('/').is_some_and(|(ns, name)| stores.deployments.get(&ObjectRef::new(name).within(ns)).is_some())
    });
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    let key = format!("{ns}/{name}");
    let old = md.status.clone().unwrap_or_default();
    let now_ts = Timestamp::now();

    if deletes_on_expiry(&md, now_ts) {
        ctx.forget_scaler(&key);
        delete_expired(&md, &ctx, &key).await?;
        return Ok(Action::await_change());
    }

    // Dereference: the Export (owned for a TrainingJob checkpoint), then resolve.
    if let Some(ex) = build_checkpoint_export(&md) {
        ctx.apply(&ex, MANAGER).await?;
    }
    let export = export_name(&md).and_then(|n| exports.get(&ObjectRef::new(&n).within(&ns)));
    let resolution = resolve(&md, export.as_deref());
    let life = lifecycle(&md, now_ts);
    let deployment = ctx.deployment(&ns, &name);
    let pods = ctx.pods_of_kind(&ns, KIND, &name);
    let current = deployment.as_ref().and_then(|d| d.spec.replicas).unwrap_or(0);

    // Scale.
    let desired = match (&life, &resolution) {
        (Lifecycle::Stopped | Lifecycle::Expired, _) => {
            ctx.forget_scaler(&key);
            0
        }
        (_, Resolution::Ready(_)) => {
            let p = policy(&md);
            let ready = pods.iter().filter(|p| pod_ready(p)).count() as i32;
            let now = Instant::now();
            let (woken_at, held) = gateway_demand(&md, now_ts, now);
            let concurrency =
                if p.min_replicas == p.max_replicas { 0.0 } else { scrape(&ctx.http, &pods).await + held };
            let obs = Observation { now, concurrency, ready_replicas: ready, current_replicas: current, woken_at };
            let d = ctx.decide(&key, &p, &obs);
            ctx.metrics.scale_decision(d.reason.as_str());
            if d.desired != current {
                tracing::info!(
                    object = key,
                    from = current,
                    to = d.desired,
                    reason = d.reason.as_str(),
                    concurrency,
                    "scaling"
                );
            }
            d.desired
        }
        // No model yet (or a broken one): leave what serves as it is.
        _ => current,
    };

    let (mut st, health) = status(
        &md,
        &old,
        &Observed {
            lifecycle: life.clone(),
            resolution: &resolution,
            deployment: deployment.as_deref(),
            pods: &pods.iter().map(|p| p.as_ref()).collect::<Vec<_>>(),
            desired,
        },
    );
    let scaled = deployment.is_some() && desired != current;
    if scaled {
        st.last_scale_time = Some(now());
    }
    set_health(&mut st.common.conditions, &health, md.metadata.generation, now());

    // Apply the children, then the status.
    if let Resolution::Ready(model) = &resolution {
        ctx.apply(&build_service(&md), MANAGER).await?;
        ctx.apply(&build_deployment(&ctx.config, &md, model, desired), MANAGER).await?;
        match build_pdb(&md) {
            Some(pdb) => ctx.apply_pdb(&pdb, MANAGER).await?,
            None => ctx.delete_pdb(&ns, &name).await?,
        }
    } else if deployment.is_some() && desired != current {
        // Stopped or expired while the model is unresolved: scale what exists to zero.
        ctx.scale_deployment(&ns, &name, desired, MANAGER).await?;
    }
    write_status(&md, &ctx, &st, &old, scaled.then_some((current, desired))).await?;

    // Requeue: sample the load while autoscaling can act; wake at the expiry.
    let autoscaled = md.spec.scaling.min_replicas != md.spec.scaling.max_replicas;
    let mut next = match (&life, &resolution) {
        (Lifecycle::Serving, Resolution::Ready(_)) if autoscaled && (desired > 0 || current > 0) => Some(SAMPLE_PERIOD),
        (Lifecycle::Serving, Resolution::Ready(_)) if desired != st.ready_replicas => Some(Duration::from_secs(5)),
        _ => None,
    };
    if let Some(left) = until_expiry(&md, &life, now_ts) {
        next = Some(next.map_or(left, |n| n.min(left)));
    }
    Ok(next.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// Deletes an expired deployment with `deleteOnExpiration`, after an `Expired` Event saying so.
/// Garbage collection deletes its children. The delete is conditional on the UID, so that a
/// deployment recreated under the same name is left alone; one already gone is done.
async fn delete_expired(md: &ModelDeployment, ctx: &Context, key: &str) -> Result<(), Error> {
    let at = expires_at(md).map(|t| t.to_string()).unwrap_or_default();
    let note = format!("expired at {at} (spec.durationHours); deleting: spec.deleteOnExpiration");
    ctx.event(md, false, "Expired", note);
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: md.uid(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(&md.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(object = key, "deleted: expired with spec.deleteOnExpiration");
            Ok(())
        }
        // Gone already (404), or replaced by a new object of the same name (409: UID precondition).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    new: &ModelDeploymentStatus,
    old: &ModelDeploymentStatus,
    scaled: Option<(i32, i32)>,
) -> Result<(), Error> {
    if new == old && md.status.is_some() {
        return Ok(());
    }
    apply_status(&ctx.client, md, new, MANAGER).await?;
    if new.phase != old.phase || md.status.is_none() {
        let warning = new.phase == DeploymentPhase::Failed;
        let note = new
            .common
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| format!("{:?}", new.phase));
        ctx.event(md, warning, &format!("{:?}", new.phase), note);
    }
    if let Some((from, to)) = scaled {
        ctx.metrics.scaled(if to > from { "up" } else { "down" });
        ctx.event(md, false, "Scaled", format!("replicas {from} → {to}"));
    }
    Ok(())
}

/// The object a Deployment's pods, Service and Export belong to.
pub fn owner_of<K: Resource<DynamicType = ()>>(obj: &K) -> Option<ObjectRef<ModelDeployment>> {
    let labels = obj.meta().labels.as_ref()?;
    let name = labels.get(NAME_LABEL).filter(|_| labels.get(KIND_LABEL).map(String::as_str) == Some(KIND))?;
    Some(ObjectRef::new(name).within(obj.meta().namespace.as_deref()?))
}

#[cfg(test)]
mod tests;

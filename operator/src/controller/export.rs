//! Export controller: one export Job per spec (its hash names the Job, so a spec change
//! exports again), from a TrainingJob's `best`/`last` weights or a URI; the artifact's URI,
//! size and SHA-256 from the object store in status. `engine` exports run on the GPU model
//! they are built for. What CEL refuses on real clusters is re-checked here as a condition.
//! An `int8` export calibrates on a Dataset (by default the `val` split of the source
//! TrainingJob's) and is gated on validation accuracy by the trainer; the artifact's precision
//! and calibration come from its metadata sidecar.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use ocellus_crds::{
    Artifact, CalibrationMethod, Dataset, Export, ExportFormat, ExportPhase, ExportSpec, ExportStatus, GpuRequest,
    QuantizationStatus, TrainingJob, TrainingPhase,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::training_job::output_prefix;
use super::{Context, Error, Health, apply_status, now, owner_ref, set_health};
use crate::config::WorkloadConfig;
use crate::workload::{self, JobRequest, RunFailure, RunState};

/// The split of a TrainingJob's Dataset that calibrates and validates its INT8 export.
pub const VALIDATION_SPLIT: &str = "val";

/// Field manager of this controller's writes.
pub const MANAGER: &str = "ocellus-operator/export";
/// Controller label of metrics.
pub const CONTROLLER: &str = "export";
/// Runs of one export before a transient failure becomes final.
pub const MAX_ATTEMPTS: i32 = 3;
/// ONNX opsets the exporter writes.
pub const OPSETS: std::ops::RangeInclusive<i32> = 13..=21;

/// Checks what the CRD's CEL rules (and the exporter) would refuse (pure).
pub fn validate(spec: &ExportSpec) -> Result<(), String> {
    if spec.source.training_job.is_some() == spec.source.weights_uri.is_some() {
        return Err("exactly one of source.trainingJob or source.weightsUri must be set".into());
    }
    if spec.format == ExportFormat::Engine && spec.gpu_product.is_none() {
        return Err(
            "gpuProduct is required for format engine: a TensorRT engine only runs on the GPU model it was built for"
                .into(),
        );
    }
    if spec.int8 && spec.format == ExportFormat::Torchscript {
        return Err("int8 is supported for formats onnx and engine".into());
    }
    if spec.int8
        && spec.source.training_job.is_none()
        && spec.calibration.as_ref().and_then(|c| c.dataset_ref.as_ref()).is_none()
    {
        return Err("int8 from source.weightsUri needs calibration.datasetRef: there is no TrainingJob whose Dataset \
                    could calibrate it"
            .into());
    }
    if let Some(c) = &spec.calibration
        && c.percentile.is_some()
        && c.method.is_some_and(|m| m != CalibrationMethod::Percentile)
    {
        return Err("calibration.percentile is only used by method percentile".into());
    }
    if spec.half && spec.format == ExportFormat::Torchscript && spec.gpu_product.is_none() {
        return Err("half-precision TorchScript needs a GPU (set gpuProduct)".into());
    }
    if let Some(o) = spec.opset
        && !OPSETS.contains(&o)
    {
        return Err(format!(
            "opset {o} is not supported: the exporter writes opsets {} to {}",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    if let Some(s) = spec.imgsz
        && s % 32 != 0
    {
        return Err(format!("imgsz {s} must be a multiple of 32"));
    }
    Ok(())
}

/// The spec's hash (8 hex digits): a new hash is a new export.
pub fn spec_hash(spec: &ExportSpec) -> String {
    let v = serde_json::to_string(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(v.as_bytes())[..4])
}

/// Where the artifact goes.
pub fn artifact_uri(cfg: &WorkloadConfig, namespace: &str, name: &str, format: ExportFormat) -> String {
    cfg.uri(&format!("{namespace}/exports/{name}/model.{}", format.extension()))
}

/// The weights to export: a URI, or a TrainingJob's weights in the platform bucket.
pub fn weights_uri(cfg: &WorkloadConfig, namespace: &str, spec: &ExportSpec) -> String {
    match (&spec.source.weights_uri, &spec.source.training_job) {
        (Some(u), _) => u.clone(),
        (None, Some(r)) => {
            cfg.uri(&format!("{}/weights/{}.safetensors", output_prefix(namespace, &r.name), r.checkpoint.as_str()))
        }
        (None, None) => String::new(),
    }
}

/// What an INT8 export calibrates on and is validated on, resolved from Datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Inputs {
    /// Manifest whose images calibrate the activation ranges.
    pub calibration_manifest: String,
    /// Only the images of this split; `None`: all images of the manifest.
    pub calibration_split: Option<String>,
    /// Manifest whose `val` images the float and the INT8 model are both validated on.
    pub gate_manifest: String,
}

/// The manifest of Dataset `name` (pure): the frozen `version`'s, else the current one, which
/// a successful ingest writes last (so it stays usable while a later ingest runs or fails).
fn manifest_of(name: &str, dataset: Option<Dataset>, version: Option<&str>) -> Result<String, String> {
    let Some(ds) = dataset else { return Err(format!("Dataset {name} does not exist")) };
    let st = ds.status.unwrap_or_default();
    match version {
        Some(v) => st
            .versions
            .into_iter()
            .find(|s| s.name == v)
            .map(|s| s.manifest_uri)
            .ok_or_else(|| format!("Dataset {name} has no frozen version {v}")),
        None => st.manifest_uri.ok_or_else(|| format!("Dataset {name} is not ready (phase {:?})", st.phase)),
    }
}

/// Resolves the Datasets of an `int8` export (pure; `dataset` looks one up by name in the
/// Export's namespace). Calibration: `calibration.datasetRef`'s manifest, all of it; unset, the
/// `val` split of the manifest the source TrainingJob trained on (its pinned version, else its
/// Dataset's current manifest). Accuracy gate: the TrainingJob's manifest, else the calibration
/// Dataset's. `Ok(None)` without `int8`; `Err(message)` while a Dataset is not there.
pub fn int8_inputs(
    spec: &ExportSpec,
    tj: Option<&TrainingJob>,
    dataset: impl Fn(&str) -> Option<Dataset>,
) -> Result<Option<Int8Inputs>, String> {
    if !spec.int8 {
        return Ok(None);
    }
    // The manifest the source TrainingJob trained on.
    let trained_on = match (&spec.source.training_job, tj) {
        (Some(_), Some(tj)) => {
            let r = &tj.spec.dataset_ref;
            Some(manifest_of(&r.name, dataset(&r.name), r.version.as_deref())?)
        }
        (Some(r), None) => return Err(format!("TrainingJob {} does not exist", r.name)),
        (None, _) => None,
    };
    let named = match spec.calibration.as_ref().and_then(|c| c.dataset_ref.as_ref()) {
        Some(r) => Some(manifest_of(&r.name, dataset(&r.name), None)?),
        None => None,
    };
    let (calibration_manifest, calibration_split) = match (named, &trained_on) {
        (Some(m), _) => (m, None),
        (None, Some(m)) => (m.clone(), Some(VALIDATION_SPLIT.to_string())),
        (None, None) => return Err("int8 from source.weightsUri needs calibration.datasetRef".into()),
    };
    let gate_manifest = trained_on.unwrap_or_else(|| calibration_manifest.clone());
    Ok(Some(Int8Inputs { calibration_manifest, calibration_split, gate_manifest }))
}

/// Builds the export Job (pure). `int8` are the resolved Datasets of an `int8` export.
pub fn build_job(cfg: &WorkloadConfig, ex: &Export, job_name: &str, int8: Option<&Int8Inputs>) -> Job {
    let ns = ex.namespace().unwrap_or_default();
    let spec = &ex.spec;
    let gpu = spec.gpu_product.is_some() && (spec.format == ExportFormat::Engine || spec.half);
    let mut args = vec![
        "export".to_string(),
        format!("--weights={}", weights_uri(cfg, &ns, spec)),
        format!("--format={}", spec.format.as_str()),
        format!("--output={}", artifact_uri(cfg, &ns, &ex.name_any(), spec.format)),
        format!("--batch={}", spec.batch),
        format!("--opset={}", spec.opset.unwrap_or(17)),
        format!("--device={}", if gpu { "cuda" } else { "cpu" }),
    ];
    if let Some(s) = spec.imgsz {
        args.push(format!("--imgsz={s}"));
    }
    if spec.dynamic {
        args.push("--dynamic".into());
    }
    if spec.half {
        args.push("--half".into());
    }
    if spec.int8 {
        args.push("--int8".into());
        if let Some(i) = int8 {
            args.push(format!("--calibration={}", i.calibration_manifest));
            if let Some(split) = &i.calibration_split {
                args.push(format!("--calibration-split={split}"));
            }
        }
        let c = spec.calibration.as_ref();
        args.push(format!("--calibration-images={}", c.and_then(|c| c.images).unwrap_or(500)));
        if let Some(m) = c.and_then(|c| c.method) {
            args.push(format!("--calibration-method={}", m.as_str()));
        }
        if let Some(p) = c.and_then(|c| c.percentile) {
            args.push(format!("--calibration-percentile={p}"));
        }
        if let Some(i) = int8 {
            args.push(format!("--gate-manifest={}", i.gate_manifest));
        }
        if let Some(d) = spec.max_accuracy_drop {
            args.push(format!("--max-accuracy-drop={d}"));
        }
    }
    workload::job(
        cfg,
        &JobRequest {
            name: job_name.into(),
            namespace: ns,
            owner: owner_ref(ex),
            component: "export",
            args,
            resources: ResourceRequirements::default(),
            gpu: gpu.then(|| GpuRequest { count: 1, product: spec.gpu_product.clone(), mig_profile: None }),
            scheduling: spec.scheduling.clone(),
            ..Default::default()
        },
    )
}

/// Whether the TrainingJob an Export reads may be exported (pure): only once it has
/// Succeeded, so that `best` and `last` are the run's final weights, not an early epoch's.
/// `Err((permanent, reason, message))` otherwise.
pub fn training_gate(name: &str, tj: Option<&TrainingJob>) -> Result<(), (bool, &'static str, String)> {
    let Some(tj) = tj else {
        return Err((false, "WaitingForTrainingJob", format!("TrainingJob {name} does not exist")));
    };
    let st = tj.status.clone().unwrap_or_default();
    match st.phase {
        TrainingPhase::Succeeded => Ok(()),
        TrainingPhase::Failed => Err((
            true,
            "TrainingFailed",
            format!(
                "TrainingJob {name} failed; to export the weights it saved anyway, use source.weightsUri \
                 (s3://.../trainingjobs/{name}/weights/best.safetensors)"
            ),
        )),
        phase => Err((
            false,
            "WaitingForTraining",
            format!(
                "TrainingJob {name} is {phase:?}{}: the export starts once it has succeeded",
                st.epoch.zip(st.epochs).map(|(e, n)| format!(" (epoch {e} of {n})")).unwrap_or_default()
            ),
        )),
    }
}

/// The precision of an artifact and, for INT8, its calibration and accuracy gate, from its
/// metadata sidecar (pure): `int8` with a `quantization` object, `fp16` with `half: true`, else
/// `fp32`.
pub fn precision_of(meta: &Value) -> (String, Option<QuantizationStatus>) {
    let quantization = meta.get("quantization").filter(|q| q.is_object());
    let precision = if quantization.is_some() {
        "int8"
    } else if meta.get("half").and_then(Value::as_bool) == Some(true) {
        "fp16"
    } else {
        "fp32"
    };
    (precision.into(), quantization.and_then(|q| serde_json::from_value(q.clone()).ok()))
}

/// Records a failed export run (pure but for the clock): a retry while the failure is transient
/// and attempts are left, else `Failed` with the trainer's reason and message as they are (an
/// INT8 export that fails its accuracy gate: `AccuracyGateFailed`, exit code 2, not retried).
/// Returns when to look again.
pub fn record_failure(
    st: &mut ExportStatus,
    RunFailure { failure, retryable }: RunFailure,
    attempt: i32,
    base: &str,
    generation: Option<i64>,
) -> Option<Duration> {
    st.job.failure = Some(failure.clone());
    st.job.completion_time = Some(now());
    if retryable && attempt < MAX_ATTEMPTS {
        st.job.job_name = Some(format!("{base}-{}", attempt + 1));
        st.job.start_time = None;
        set(
            st,
            Health::Progressing {
                reason: "BackoffRetry".into(),
                message: format!("export attempt {attempt} failed: {}", failure.message.clone().unwrap_or_default()),
            },
            generation,
        );
        Some(workload::backoff(attempt))
    } else {
        st.phase = ExportPhase::Failed;
        set(
            st,
            Health::Failed {
                reason: failure.reason.clone().unwrap_or_else(|| "ExportFailed".into()),
                message: failure.message.clone().unwrap_or_default(),
            },
            generation,
        );
        None
    }
}

fn set(st: &mut ExportStatus, health: Health, generation: Option<i64>) {
    set_health(&mut st.common.conditions, &health, generation, now());
}

/// Reconciles one Export.
pub async fn reconcile(
    ex: Arc<Export>,
    ctx: Arc<Context>,
    datasets: &kube::runtime::reflector::Store<ocellus_crds::Dataset>,
    trainingjobs: &kube::runtime::reflector::Store<TrainingJob>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = ex.namespace().unwrap_or_default();
    let tj = ex
        .spec
        .source
        .training_job
        .as_ref()
        .and_then(|r| trainingjobs.get(&kube::runtime::reflector::ObjectRef::new(&r.name).within(&ns)));
    let name = ex.name_any();
    let generation = ex.metadata.generation;
    let old = ex.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.common.observed_generation = generation;

    if let Err(message) = validate(&ex.spec) {
        st.phase = ExportPhase::Failed;
        set(&mut st, Health::Failed { reason: "InvalidSpec".into(), message }, generation);
        write_status(&ex, &ctx, &st, &old).await?;
        return Ok(Action::await_change());
    }
    let base = workload::job_name(&name, &format!("export-{}", spec_hash(&ex.spec)));
    let current = st.job.job_name.as_deref().and_then(|j| j.strip_prefix(&format!("{base}-"))?.parse::<i32>().ok());
    if current.is_none() {
        // A new spec: a new export.
        st = ExportStatus { common: st.common.clone(), ..Default::default() };
        st.common.observed_generation = generation;
    }
    let attempt = current.unwrap_or(1);
    let job_name = format!("{base}-{attempt}");
    if matches!(st.phase, ExportPhase::Succeeded) || (st.phase == ExportPhase::Failed && current.is_some()) {
        write_status(&ex, &ctx, &st, &old).await?;
        return Ok(Action::await_change());
    }

    // Dereference: a TrainingJob's weights are exported once it has succeeded (its watch
    // wakes this Export), and they must exist (their sidecar is written last).
    if let Some(r) = &ex.spec.source.training_job
        && let Err((permanent, reason, message)) = training_gate(&r.name, tj.as_deref())
    {
        let health = if permanent {
            st.phase = ExportPhase::Failed;
            Health::Failed { reason: reason.into(), message }
        } else {
            st.phase = ExportPhase::Pending;
            Health::Progressing { reason: reason.into(), message }
        };
        set(&mut st, health, generation);
        write_status(&ex, &ctx, &st, &old).await?;
        // The watch that wakes this Export and the store read here are separate reflectors:
        // a wake-up can arrive before this store has the TrainingJob's last change, and no
        // later change may follow (Succeeded is final). So a wait also polls.
        return Ok(if permanent { Action::await_change() } else { Action::requeue(Duration::from_secs(15)) });
    }
    // Dereference: the weights must exist (their sidecar is written last).
    let weights = weights_uri(&ctx.config, &ns, &ex.spec);
    if ctx.size(&ocellus_storage::location::sidecar(&weights)).await?.is_none() && ex.spec.source.training_job.is_some()
    {
        st.phase = ExportPhase::Pending;
        let r =
            ex.spec.source.training_job.as_ref().map(|r| (r.name.clone(), r.checkpoint.as_str())).unwrap_or_default();
        set(
            &mut st,
            Health::Progressing {
                reason: "WaitingForWeights".into(),
                message: format!("TrainingJob {} has not saved its {} weights yet", r.0, r.1),
            },
            generation,
        );
        write_status(&ex, &ctx, &st, &old).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let (_, run) = ctx.run_state(&ns, &job_name);
    // Dereference, before the Job is created: the Datasets an INT8 export calibrates and is
    // validated on (a Job that runs keeps what it was given).
    let int8 = match run {
        RunState::Missing => match int8_inputs(&ex.spec, tj.as_deref(), |name| {
            datasets.get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns)).map(|d| (*d).clone())
        }) {
            Ok(i) => i,
            Err(message) => {
                st.phase = ExportPhase::Pending;
                set(&mut st, Health::Progressing { reason: "WaitingForCalibration".into(), message }, generation);
                write_status(&ex, &ctx, &st, &old).await?;
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
        },
        _ => None,
    };

    st.job.job_name = Some(job_name.clone());
    let mut create = false;
    let mut requeue = Some(Duration::from_secs(3));
    match run {
        RunState::Missing => {
            let waiting = workload::retry_wait(&st.job, attempt - 1, k8s_openapi::jiff::Timestamp::now());
            if let Some(w) = waiting {
                requeue = Some(w);
            } else {
                st.phase = ExportPhase::Pending;
                st.job.start_time = Some(now());
                st.job.completion_time = None;
                set(
                    &mut st,
                    Health::Progressing {
                        reason: "Starting".into(),
                        message: format!("export attempt {attempt} starting"),
                    },
                    generation,
                );
                create = true;
            }
        }
        RunState::Pending { cause } => {
            st.phase = ExportPhase::Pending;
            let (reason, message) = cause
                .map(|c| (c.reason, c.message))
                .unwrap_or(("PodPending".into(), "waiting for the export pod to start".into()));
            set(&mut st, Health::Progressing { reason, message }, generation);
        }
        RunState::Running => {
            st.phase = ExportPhase::Running;
            set(
                &mut st,
                Health::Progressing {
                    reason: "Exporting".into(),
                    message: format!("exporting to {}", ex.spec.format.as_str()),
                },
                generation,
            );
        }
        RunState::Succeeded | RunState::Paused => {
            let uri = artifact_uri(&ctx.config, &ns, &name, ex.spec.format);
            let meta_uri = ocellus_storage::location::sidecar(&uri);
            let meta = ctx.read(&meta_uri).await?.ok_or_else(|| Error::Output {
                uri: meta_uri.clone(),
                message: "missing after a successful export".into(),
            })?;
            let meta: Value = serde_json::from_slice(&meta)
                .map_err(|e| Error::Output { uri: meta_uri.clone(), message: e.to_string() })?;
            let size = ctx.size(&uri).await?.ok_or_else(|| Error::Output {
                uri: uri.clone(),
                message: "missing after a successful export".into(),
            })?;
            st.artifact = Some(Artifact {
                uri,
                size_bytes: size as i64,
                sha256: meta["sha256"].as_str().unwrap_or_default().into(),
            });
            let (precision, quantization) = precision_of(&meta);
            st.precision = Some(precision);
            st.quantization = quantization;
            if ex.spec.format != ExportFormat::Torchscript {
                st.runtime_versions.insert("onnx-opset".into(), ex.spec.opset.unwrap_or(17).to_string());
            }
            st.phase = ExportPhase::Succeeded;
            st.job.completion_time = Some(now());
            st.job.failure = None;
            set(&mut st, Health::Ready { reason: "Exported".into(), message: format!("{} bytes", size) }, generation);
            requeue = None;
        }
        RunState::Failed(f) => requeue = record_failure(&mut st, f, attempt, &base, generation),
    }
    write_status(&ex, &ctx, &st, &old).await?;
    if create {
        ctx.apply_job(&build_job(&ctx.config, &ex, &job_name, int8.as_ref()), MANAGER).await?;
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

async fn write_status(ex: &Export, ctx: &Context, new: &ExportStatus, old: &ExportStatus) -> Result<(), Error> {
    if new == old && ex.status.is_some() {
        return Ok(());
    }
    apply_status(&ctx.client, ex, new, MANAGER).await?;
    if new.phase != old.phase || ex.status.is_none() {
        let note = match (&new.job.failure, new.phase) {
            (Some(f), ExportPhase::Failed) => f.message.clone().unwrap_or_default(),
            _ => new.common.conditions.iter().find(|c| c.is_true()).and_then(|c| c.message.clone()).unwrap_or_default(),
        };
        ctx.event(ex, new.phase == ExportPhase::Failed, &format!("{:?}", new.phase), note);
    }
    Ok(())
}

#[cfg(test)]
mod tests;

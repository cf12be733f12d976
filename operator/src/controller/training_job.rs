//! TrainingJob controller: one `batch/v1` Job per attempt (`<name>-<attempt>`), the retry
//! budget counted in status, pause by stopping the attempt (the trainer checkpoints on
//! SIGTERM), resume as a new attempt with `--resume`, and progress read from the run's
//! `results.jsonl` and checkpoint sidecars in the object store.
//!
//! The driver is `dereference → validate → plan → apply → status`; [`plan`] and [`build_job`]
//! are pure and table-tested. Succeeded and Failed are final: nothing re-runs them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use ocellus_crds::{
    Checkpoints, Dataset, DatasetPhase, EpochMetrics, Failure, Optimizer, Task, TrainingJob, TrainingJobSpec,
    TrainingJobStatus, TrainingPhase,
};
use serde_json::Value;

use super::{Context, Error, Health, apply_status, now, owner_ref, set_health};
use crate::config::WorkloadConfig;
use crate::workload::{self, JobRequest, RunFailure, RunState};

/// Field manager of this controller's writes.
pub const MANAGER: &str = "ocellus-operator/trainingjob";
/// Controller label of metrics.
pub const CONTROLLER: &str = "trainingjob";
/// Annotation on each attempt's Job: the TrainingJob generation it was built from.
pub const GENERATION_ANNOTATION: &str = "ocellus.dev/generation";
/// Grace period of a training pod: SIGTERM finishes the step and uploads `last`.
pub const GRACE_SECONDS: i64 = 300;
/// How often progress is polled while an attempt runs, and a pending attempt looked at again (its
/// Job's and pod's changes wake it too, but the two caches can disagree for a moment: a pod's
/// cause seen before its Job is in the cache is picked up by the next look).
pub const POLL: Duration = Duration::from_secs(5);

/// The Dataset a TrainingJob trains on, once it can be trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetInfo {
    /// Manifest (current or the pinned version's).
    pub manifest_uri: String,
    /// Task of its labels.
    pub task: Task,
    /// Training images (for `optimizer: auto`).
    pub train_images: i64,
    /// Number of classes (for `optimizer: auto`).
    pub classes: i64,
}

/// Why a TrainingJob cannot start yet, or at all until its spec changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Blocked {
    /// Something it needs is not there yet (the Dataset being ingested): waits.
    Waiting { reason: String, message: String },
    /// The spec cannot work as written: waits for a spec change.
    Invalid { reason: String, message: String },
}

/// Checks the spec against the Dataset (pure): the architecture must suit the labels' task.
pub fn validate(tj: &TrainingJob, dataset: &DatasetInfo) -> Result<(), Blocked> {
    let name = tj.name_any();
    if name.len() > workload::MAX_JOB_NAME - 6 {
        return Err(Blocked::Invalid {
            reason: "NameTooLong".into(),
            message: format!("the name must be at most {} characters: its Jobs are named <name>-<attempt>", 57),
        });
    }
    let arch = &tj.spec.model.architecture;
    let arch_task = if arch.ends_with("-cls") {
        Task::Classify
    } else if arch.ends_with("-seg") {
        Task::Segment
    } else if arch.ends_with("-pose") {
        Task::Pose
    } else if arch.ends_with("-obb") {
        Task::Obb
    } else {
        Task::Detect
    };
    if !matches!(arch_task, Task::Detect | Task::Classify) {
        return Err(Blocked::Invalid {
            reason: "UnsupportedTask".into(),
            message: format!("{arch}: the trainer trains detect and classify models only so far"),
        });
    }
    if arch_task != dataset.task {
        return Err(Blocked::Invalid {
            reason: "TaskMismatch".into(),
            message: format!(
                "architecture {arch} is for {} but Dataset {} is labelled for {}",
                arch_task.as_str(),
                tj.spec.dataset_ref.name,
                dataset.task.as_str()
            ),
        });
    }
    Ok(())
}

/// Resolves the Dataset reference from the Dataset (pure).
pub fn dataset_info(spec: &TrainingJobSpec, dataset: Option<&Dataset>) -> Result<DatasetInfo, Blocked> {
    let name = &spec.dataset_ref.name;
    let Some(ds) = dataset else {
        return Err(Blocked::Waiting {
            reason: "DatasetNotFound".into(),
            message: format!("Dataset {name} does not exist"),
        });
    };
    let status = ds.status.clone().unwrap_or_default();
    let counts = status.counts.clone().unwrap_or_default();
    let base = |manifest_uri: String| DatasetInfo {
        manifest_uri,
        task: ds.spec.task,
        train_images: counts.per_split.get("train").copied().unwrap_or(counts.images),
        classes: counts.classes,
    };
    if let Some(v) = &spec.dataset_ref.version {
        return match status.versions.iter().find(|s| &s.name == v) {
            Some(found) => Ok(base(found.manifest_uri.clone())),
            None => Err(Blocked::Waiting {
                reason: "DatasetVersionNotFound".into(),
                message: format!("Dataset {name} has no frozen version {v} (yet)"),
            }),
        };
    }
    match (status.phase, status.manifest_uri) {
        (DatasetPhase::Ready, Some(uri)) => Ok(base(uri)),
        (phase, _) => Err(Blocked::Waiting {
            reason: "DatasetNotReady".into(),
            message: format!("Dataset {name} is {phase:?}, not Ready"),
        }),
    }
}

/// What the trainer wrote so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Per-epoch lines of `results.jsonl`.
    pub epochs: Vec<Value>,
    /// Checkpoint URIs whose sidecars exist.
    pub checkpoints: Checkpoints,
}

/// Metrics of one `results.jsonl` line.
pub fn epoch_metrics(line: &Value) -> EpochMetrics {
    let f = |k: &str| line.get(k).and_then(Value::as_f64);
    EpochMetrics {
        epoch: line.get("epoch").and_then(Value::as_i64).unwrap_or(0) as i32,
        box_loss: f("box_loss").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        cls_loss: f("cls_loss"),
        dfl_loss: f("dfl_loss").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        precision: f("precision").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        recall: f("recall").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        map50: f("map50").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        map50_95: f("map50_95").filter(|_| line.get("top1").is_none_or(Value::is_null)),
        top1: f("top1"),
    }
}

/// Fitness that picks `best`, as the trainer computes it.
fn fitness(line: &Value) -> f64 {
    let f = |k: &str| line.get(k).and_then(Value::as_f64);
    match (f("top1"), f("top5")) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        _ => f("map50_95").unwrap_or(0.0),
    }
}

/// Copies progress into status (pure).
pub fn apply_progress(status: &mut TrainingJobStatus, progress: &Progress, results_uri: String) {
    if let Some(last) = progress.epochs.last() {
        let latest = epoch_metrics(last);
        status.epoch = Some(latest.epoch);
        status.latest_metrics = Some(latest);
        status.results_uri = Some(results_uri);
        // The last epoch with the highest fitness, as the trainer picks `best` (and Ultralytics).
        let mut best: Option<&Value> = None;
        for l in &progress.epochs {
            if best.is_none_or(|b| fitness(l) >= fitness(b)) {
                best = Some(l);
            }
        }
        if let Some(b) = best {
            let m = epoch_metrics(b);
            status.best_epoch = Some(m.epoch);
            status.best_metrics = Some(m);
        }
    }
    if progress.checkpoints.last.is_some() || progress.checkpoints.best.is_some() {
        status.checkpoints = Some(progress.checkpoints.clone());
    }
}

/// The attempt number of a Job name `<name>-<n>`.
pub fn attempt_of(tj_name: &str, job_name: Option<&str>) -> i32 {
    job_name.and_then(|j| j.strip_prefix(tj_name)?.strip_prefix('-')?.parse().ok()).unwrap_or(0)
}

/// Everything [`plan`] decides from.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The dereferenced, validated Dataset, or why training cannot start.
    pub dataset: Result<DatasetInfo, Blocked>,
    /// The current attempt's state.
    pub run: RunState,
    /// Generation the current attempt's Job was built from.
    pub run_generation: Option<i64>,
    /// Whether pods of earlier attempts are still terminating (a pause checkpoints).
    pub pods_terminating: bool,
    /// Now.
    pub now: Time,
}

/// What to do to the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// Nothing.
    None,
    /// Create the current attempt's Job (named in `status.jobName`).
    Create { resume: bool },
    /// Stop the current attempt (pause, or a spec change before it ran): delete its Job.
    Stop,
}

/// The decision of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write.
    pub status: TrainingJobStatus,
    /// The cluster change.
    pub act: Act,
    /// When to look again without a watch event.
    pub requeue: Option<Duration>,
}

fn set(status: &mut TrainingJobStatus, health: Health, generation: Option<i64>, now: &Time) {
    set_health(&mut status.common.conditions, &health, generation, now.clone());
}

/// The state machine of a TrainingJob (pure): from its spec, status and what runs, the next
/// status and the one action to take.
pub fn plan(tj: &TrainingJob, obs: &Observed) -> Plan {
    let name = tj.name_any();
    let generation = tj.metadata.generation;
    let mut st = tj.status.clone().unwrap_or_default();
    st.common.observed_generation = generation;
    st.epochs = Some(tj.spec.hyperparameters.epochs);
    let now = &obs.now;
    let done = |st: TrainingJobStatus| Plan { status: st, act: Act::None, requeue: None };
    if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
        return done(tj.status.clone().unwrap_or_default());
    }
    let attempt = attempt_of(&name, st.job.job_name.as_deref());
    let backoff_limit = tj.spec.backoff_limit.unwrap_or(2);

    // The current attempt's outcome first: it moves the attempt counter.
    match &obs.run {
        RunState::Succeeded => {
            st.phase = TrainingPhase::Succeeded;
            st.job.completion_time = Some(now.clone());
            st.job.failure = None;
            let epochs = st.epoch.unwrap_or(0);
            let hp = &tj.spec.hyperparameters;
            let message = if epochs > 0 && epochs < hp.epochs && hp.patience > 0 {
                format!(
                    "stopped early after {epochs} of {} epochs: no better fitness in the last {} (patience)",
                    hp.epochs, hp.patience
                )
            } else {
                format!("trained {epochs} epochs")
            };
            set(&mut st, Health::Ready { reason: "Succeeded".into(), message }, generation, now);
            return done(st);
        }
        RunState::Failed(RunFailure { failure, retryable: false }) => {
            return fail(st, failure.clone(), generation, now);
        }
        RunState::Failed(RunFailure { failure, retryable: true }) => {
            st.restarts += 1;
            st.job.failure = Some(failure.clone());
            st.job.completion_time = Some(now.clone());
            if st.restarts > backoff_limit {
                let mut f = failure.clone();
                let cause = f.message.clone().unwrap_or_default();
                f.message = Some(format!("{} failures, backoffLimit is {backoff_limit}; last: {cause}", st.restarts));
                f.reason = Some("BackoffLimitExceeded".into());
                return fail(st, f, generation, now);
            }
            st.job.job_name = Some(workload::job_name(&name, &(attempt + 1).to_string()));
            st.job.start_time = None;
            st.phase = TrainingPhase::Pending;
            let delay = workload::backoff(st.restarts);
            let msg = format!(
                "attempt {attempt} failed ({}): retry {} of {backoff_limit} in {}s",
                failure.message.clone().unwrap_or_default(),
                st.restarts,
                delay.as_secs()
            );
            set(&mut st, Health::Progressing { reason: "BackoffRetry".into(), message: msg }, generation, now);
            return Plan { status: st, act: Act::None, requeue: Some(delay) };
        }
        RunState::Paused => {
            // The attempt saved `last` and stopped: a pause, not a failure.
            st.job.completion_time = Some(now.clone());
            st.job.job_name = Some(workload::job_name(&name, &(attempt + 1).to_string()));
            st.job.start_time = None;
            st.job.failure = None;
        }
        _ => {}
    }
    let run_exists = matches!(obs.run, RunState::Pending { .. } | RunState::Running);

    // Pause.
    if tj.spec.suspend {
        if run_exists {
            set(
                &mut st,
                Health::Progressing {
                    reason: "Suspending".into(),
                    message: "stopping the training pod; it saves `last` first".into(),
                },
                generation,
                now,
            );
            st.phase = TrainingPhase::Suspended;
            // The next attempt resumes: name it now, so that the stopped one is never re-created.
            st.job.job_name = Some(workload::job_name(&name, &(attempt + 1).to_string()));
            st.job.completion_time = Some(now.clone());
            return Plan { status: st, act: Act::Stop, requeue: None };
        }
        st.phase = TrainingPhase::Suspended;
        set(
            &mut st,
            Health::Ready {
                reason: "Suspended".into(),
                message: "paused by spec.suspend; set it to false to resume from `last`".into(),
            },
            generation,
            now,
        );
        return done(st);
    }

    // A spec change before the attempt ran (e.g. fewer GPUs for an unschedulable one): replace it.
    if let RunState::Pending { .. } = obs.run
        && obs.run_generation.is_some()
        && obs.run_generation != generation
    {
        st.job.job_name = Some(workload::job_name(&name, &(attempt + 1).to_string()));
        st.job.start_time = None;
        set(
            &mut st,
            Health::Progressing {
                reason: "SpecChanged".into(),
                message: "replacing the attempt that had not started with one built from the new spec".into(),
            },
            generation,
            now,
        );
        return Plan { status: st, act: Act::Stop, requeue: None };
    }

    match &obs.run {
        RunState::Running => {
            st.phase = TrainingPhase::Running;
            st.job.failure = None;
            let msg = match (st.epoch, st.epochs) {
                (Some(e), Some(n)) => format!("epoch {e} of {n} done"),
                _ => "training".to_string(),
            };
            set(&mut st, Health::Progressing { reason: "Running".into(), message: msg }, generation, now);
            Plan { status: st, act: Act::None, requeue: Some(POLL) }
        }
        RunState::Pending { cause } => {
            st.phase = TrainingPhase::Pending;
            let (reason, message) = match cause {
                Some(c) => {
                    st.job.failure = Some(Failure {
                        reason: Some(c.reason.clone()),
                        message: Some(c.message.clone()),
                        exit_code: None,
                        pod_cause: Some(c.reason.clone()),
                    });
                    (c.reason.clone(), c.message.clone())
                }
                None if tj.spec.queue_name.is_some() => ("Queued".into(), "waiting for Kueue to admit the Job".into()),
                None => ("PodPending".into(), "waiting for the training pod to start".into()),
            };
            set(&mut st, Health::Progressing { reason, message }, generation, now);
            Plan { status: st, act: Act::None, requeue: Some(POLL) }
        }
        // No Job for the current attempt (none yet, a pause ended, or a retry is due).
        _ => {
            match &obs.dataset {
                Ok(_) => {}
                Err(Blocked::Waiting { reason, message }) => {
                    st.phase = TrainingPhase::Pending;
                    set(
                        &mut st,
                        Health::Progressing { reason: reason.clone(), message: message.clone() },
                        generation,
                        now,
                    );
                    return done(st);
                }
                Err(Blocked::Invalid { reason, message }) => {
                    st.phase = TrainingPhase::Pending;
                    set(&mut st, Health::Failed { reason: reason.clone(), message: message.clone() }, generation, now);
                    return done(st);
                }
            }
            if obs.pods_terminating {
                set(
                    &mut st,
                    Health::Progressing {
                        reason: "WaitingForPreviousPod".into(),
                        message: "the previous attempt's pod is still saving its checkpoint".into(),
                    },
                    generation,
                    now,
                );
                return Plan { status: st, act: Act::None, requeue: Some(Duration::from_secs(2)) };
            }
            if let Some(wait) = workload::retry_wait(&st.job, st.restarts, now.0) {
                return Plan { status: st, act: Act::None, requeue: Some(wait) };
            }
            let next = attempt_of(&name, st.job.job_name.as_deref()).max(1);
            st.job.job_name = Some(workload::job_name(&name, &next.to_string()));
            st.job.start_time = Some(now.clone());
            st.job.completion_time = None;
            st.phase = TrainingPhase::Pending;
            let resume = st.checkpoints.as_ref().is_some_and(|c| c.last.is_some());
            set(
                &mut st,
                Health::Progressing {
                    reason: "Starting".into(),
                    message: format!("starting attempt {next}{}", if resume { ", resuming from `last`" } else { "" }),
                },
                generation,
                now,
            );
            Plan { status: st, act: Act::Create { resume }, requeue: Some(POLL) }
        }
    }
}

fn fail(mut st: TrainingJobStatus, failure: Failure, generation: Option<i64>, now: &Time) -> Plan {
    st.phase = TrainingPhase::Failed;
    st.job.completion_time = Some(now.clone());
    let reason = failure.reason.clone().unwrap_or_else(|| "Failed".into());
    let message = failure.message.clone().unwrap_or_default();
    st.job.failure = Some(failure);
    set_health(&mut st.common.conditions, &Health::Failed { reason, message }, generation, now.clone());
    Plan { status: st, act: Act::None, requeue: None }
}

/// Ultralytics' `optimizer: auto`: SGD (lr 0.01, momentum 0.9) for runs of more than 10,000
/// iterations, else AdamW with a learning rate fitted to the class count.
pub fn auto_optimizer(train_images: i64, classes: i64, batch: i32, epochs: i32) -> (&'static str, f64, f64) {
    let nbs = 64i64;
    let per_epoch = (train_images.max(1) + (batch as i64).max(nbs) - 1) / (batch as i64).max(nbs);
    if per_epoch * epochs as i64 > 10_000 {
        ("SGD", 0.01, 0.9)
    } else {
        let lr = (0.002 * 5.0 / (4.0 + classes as f64) * 1e6).round() / 1e6;
        ("AdamW", lr, 0.9)
    }
}

/// The key prefix of a TrainingJob's outputs in the platform bucket.
pub fn output_prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}/trainingjobs/{name}")
}

/// Builds the Job of the current attempt (pure).
pub fn build_job(
    cfg: &WorkloadConfig,
    tj: &TrainingJob,
    dataset: &DatasetInfo,
    start_weights: Option<String>,
    resume: bool,
) -> Job {
    let ns = tj.namespace().unwrap_or_default();
    let name = tj.name_any();
    let spec = &tj.spec;
    let hp = &spec.hyperparameters;
    let gpu = spec.resources.gpu.count > 0;
    let (optimizer, lr0, momentum) = match hp.optimizer {
        Optimizer::Auto => auto_optimizer(dataset.train_images, dataset.classes, hp.batch, hp.epochs),
        Optimizer::Sgd => ("SGD", hp.lr0, 0.937),
        Optimizer::AdamW => ("AdamW", hp.lr0, 0.937),
    };
    // Ultralytics starts the biases' warm-up at 0.1, or at 0 when it picks the optimizer itself.
    let warmup_bias_lr = if hp.optimizer == Optimizer::Auto { 0.0 } else { 0.1 };
    let mut args: Vec<String> = vec![
        "train".into(),
        format!("--manifest={}", dataset.manifest_uri),
        format!("--output-prefix={}", output_prefix(&ns, &name)),
        format!("--architecture={}", spec.model.architecture),
        format!("--epochs={}", hp.epochs),
        format!("--imgsz={}", hp.imgsz),
        format!("--batch={}", hp.batch),
        format!("--optimizer={optimizer}"),
        format!("--lr0={lr0}"),
        format!("--momentum={momentum}"),
        format!("--lrf={}", hp.lrf),
        format!("--warmup-epochs={}", hp.warmup_epochs),
        format!("--warmup-bias-lr={warmup_bias_lr}"),
        format!("--seed={}", hp.seed),
        format!("--patience={}", hp.patience.max(0)),
        format!("--checkpoint-interval={}", spec.checkpoint.interval_epochs.max(1)),
        format!("--device={}", if gpu { "cuda" } else { "cpu" }),
    ];
    if hp.cos_lr {
        args.push("--cos-lr".into());
    }
    if hp.amp && gpu {
        args.push("--amp".into());
    }
    if let Some(w) = start_weights {
        args.push(format!("--start-weights={w}"));
    }
    if resume {
        args.push("--resume".into());
    }
    let mut requests = std::collections::BTreeMap::new();
    let mut limits = std::collections::BTreeMap::new();
    if let Some(c) = &spec.resources.cpu {
        requests.insert("cpu".to_string(), Quantity(c.clone()));
    }
    if let Some(m) = &spec.resources.memory {
        requests.insert("memory".to_string(), Quantity(m.clone()));
        limits.insert("memory".to_string(), Quantity(m.clone()));
    }
    let attempt = attempt_of(&name, tj.status.as_ref().and_then(|s| s.job.job_name.as_deref())).max(1);
    let mut job = workload::job(
        cfg,
        &JobRequest {
            name: workload::job_name(&name, &attempt.to_string()),
            namespace: ns,
            owner: owner_ref(tj),
            component: "train",
            args,
            env: vec![EnvVar { name: "OCELLUS_WORKERS".into(), value: Some("2".into()), ..Default::default() }],
            resources: ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..Default::default()
            },
            gpu: gpu.then(|| spec.resources.gpu.clone()),
            scheduling: spec.scheduling.clone(),
            active_deadline_seconds: spec.active_deadline_seconds,
            termination_grace_period_seconds: Some(GRACE_SECONDS),
            queue_name: spec.queue_name.clone(),
        },
    );
    job.metadata.annotations =
        Some([(GENERATION_ANNOTATION.to_string(), tj.metadata.generation.unwrap_or(0).to_string())].into());
    job
}

/// The controller's view of the world besides the TrainingJob: Datasets and TrainingJobs caches.
pub struct Stores {
    /// Datasets.
    pub datasets: Store<Dataset>,
    /// TrainingJobs (for `model.from.trainingJob`).
    pub trainingjobs: Store<TrainingJob>,
}

/// Reconciles one TrainingJob.
pub async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>, stores: &Stores) -> Result<Action, Error> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = tj.namespace().unwrap_or_default();
    let name = tj.name_any();
    let old = tj.status.clone().unwrap_or_default();
    if matches!(old.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
        // Final: no Job deletion, resync or restart re-runs it, and its outputs are not polled.
        ctx.forget_reads(&ctx.config.uri(&format!("{}/results.jsonl", output_prefix(&ns, &name))));
        return Ok(Action::await_change());
    }

    // Dereference and validate.
    let ds = stores.datasets.get(&ObjectRef::new(&tj.spec.dataset_ref.name).within(&ns));
    let dataset = dataset_info(&tj.spec, ds.as_deref()).and_then(|d| validate(&tj, &d).map(|_| d));
    let start_weights = match start_weights(&tj, &ctx, stores).await? {
        Ok(w) => w,
        Err(blocked) => {
            let obs = Observed {
                dataset: Err(blocked),
                run: RunState::Missing,
                run_generation: None,
                pods_terminating: false,
                now: now(),
            };
            return write(&tj, &ctx, plan(&tj, &obs), &old).await;
        }
    };

    // Observe the current attempt.
    let job_name = old.job.job_name.clone().unwrap_or_default();
    let (job, run) = ctx.run_state(&ns, &job_name);
    let run_generation =
        job.as_ref().and_then(|j| j.annotations().get(GENERATION_ANNOTATION).and_then(|g| g.parse().ok()));
    let pods_terminating = ctx.pods.state().iter().any(|p| {
        p.namespace().as_deref() == Some(&ns)
            && p.labels().get(workload::NAME_LABEL) == Some(&name)
            && p.labels().get(workload::KIND_LABEL).map(String::as_str) == Some("TrainingJob")
            && p.metadata.deletion_timestamp.is_some()
    });
    let mut plan = plan(
        &tj,
        &Observed { dataset: dataset.clone(), run: run.clone(), run_generation, pods_terminating, now: now() },
    );
    tracing::debug!(object = %format!("{ns}/{name}"), job = %job_name, run = ?run, act = ?plan.act, "trainingjob planned");

    // Progress from the object store while an attempt runs or has just ended.
    if matches!(run, RunState::Running | RunState::Succeeded | RunState::Paused | RunState::Failed(_)) {
        let progress = read_progress(&ctx, &ns, &name).await?;
        let results = ctx.config.uri(&format!("{}/results.jsonl", output_prefix(&ns, &name)));
        apply_progress(&mut plan.status, &progress, results);
        if plan.status.phase == TrainingPhase::Running
            && let (Some(e), Some(n)) = (plan.status.epoch, plan.status.epochs)
        {
            set_health(
                &mut plan.status.common.conditions,
                &Health::Progressing { reason: "Running".into(), message: format!("epoch {e} of {n} done") },
                tj.metadata.generation,
                now(),
            );
        }
    }

    // Apply: the status first (it names the attempt), then the Job.
    let act = plan.act.clone();
    let requeue = plan.requeue;
    write_status(&tj, &ctx, &plan.status, &old).await?;
    match act {
        Act::None => {}
        Act::Create { resume } => {
            if let Ok(d) = &dataset {
                // The status now names the attempt: build its Job from that.
                let mut named = (*tj).clone();
                named.status = Some(plan.status.clone());
                ctx.apply_job(&build_job(&ctx.config, &named, d, start_weights, resume), MANAGER).await?;
            }
        }
        Act::Stop => {
            if let Some(j) = &job {
                let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
                let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                match api.delete(&j.name_any(), &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// `model.from` as a URI the trainer reads, or why it cannot be used yet.
async fn start_weights(
    tj: &TrainingJob,
    ctx: &Context,
    stores: &Stores,
) -> Result<Result<Option<String>, Blocked>, Error> {
    let Some(from) = &tj.spec.model.from else { return Ok(Ok(None)) };
    if let Some(uri) = &from.uri {
        return Ok(Ok(Some(uri.clone())));
    }
    let Some(r) = &from.training_job else { return Ok(Ok(None)) };
    let ns = tj.namespace().unwrap_or_default();
    if stores.trainingjobs.get(&ObjectRef::new(&r.name).within(&ns)).is_none() {
        return Ok(Err(Blocked::Waiting {
            reason: "StartWeightsNotFound".into(),
            message: format!("TrainingJob {} does not exist", r.name),
        }));
    }
    let weights =
        ctx.config.uri(&format!("{}/weights/{}.safetensors", output_prefix(&ns, &r.name), r.checkpoint.as_str()));
    match ctx.size(&ocellus_storage::location::sidecar(&weights)).await? {
        Some(_) => Ok(Ok(Some(weights))),
        None => Ok(Err(Blocked::Waiting {
            reason: "StartWeightsNotReady".into(),
            message: format!("TrainingJob {} has not saved its {} weights yet", r.name, r.checkpoint.as_str()),
        })),
    }
}

/// Reads `results.jsonl` and which checkpoints are complete (their sidecar is written last).
async fn read_progress(ctx: &Context, ns: &str, name: &str) -> Result<Progress, Error> {
    let prefix = output_prefix(ns, name);
    let results = ctx.config.uri(&format!("{prefix}/results.jsonl"));
    let epochs = match ctx.read_cached(&results).await? {
        Some(body) => String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| Error::Output { uri: results.clone(), message: e.to_string() })
            })
            .collect::<Result<Vec<Value>, _>>()?,
        None => vec![],
    };
    let mut checkpoints = Checkpoints::default();
    for (slot, which) in [(&mut checkpoints.last, "last"), (&mut checkpoints.best, "best")] {
        let uri = ctx.config.uri(&format!("{prefix}/checkpoints/{which}.safetensors"));
        if ctx.size(&ocellus_storage::location::sidecar(&uri)).await?.is_some() {
            *slot = Some(uri);
        }
    }
    Ok(Progress { epochs, checkpoints })
}

async fn write(tj: &TrainingJob, ctx: &Context, plan: Plan, old: &TrainingJobStatus) -> Result<Action, Error> {
    write_status(tj, ctx, &plan.status, old).await?;
    Ok(plan.requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// Writes the status when it changed, with an Event when the phase did.
async fn write_status(
    tj: &TrainingJob,
    ctx: &Context,
    new: &TrainingJobStatus,
    old: &TrainingJobStatus,
) -> Result<(), Error> {
    if new == old && tj.status.is_some() {
        return Ok(());
    }
    apply_status(&ctx.client, tj, new, MANAGER).await?;
    if let (Some(n), o) = (new.epoch, old.epoch.unwrap_or(0))
        && n > o
    {
        ctx.metrics.epochs.inc_by((n - o) as u64);
    }
    let phase_changed = new.phase != old.phase || tj.status.is_none();
    let reason_changed = headline(new) != headline(old);
    if phase_changed || reason_changed {
        let (reason, message) = headline(new);
        let warning = new.phase == TrainingPhase::Failed || new.job.failure.is_some();
        ctx.event(tj, warning, &reason, format!("{:?}: {message}", new.phase));
    }
    Ok(())
}

/// The reason and message of the condition that says the most.
fn headline(st: &TrainingJobStatus) -> (String, String) {
    st.common
        .conditions
        .iter()
        .find(|c| c.is_true() && c.type_ != super::RECONCILING && c.type_ != super::STALLED)
        .map(|c| (c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

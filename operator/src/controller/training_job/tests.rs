use super::*;
use crate::workload::PodCause;
use k8s_openapi::jiff::Timestamp;
use ocellus_crds::{DatasetRef, ModelSpec};

fn tj(status: Option<TrainingJobStatus>) -> TrainingJob {
    let spec = TrainingJobSpec {
        dataset_ref: DatasetRef { name: "shapes".into(), version: None },
        model: ModelSpec { architecture: "yolov8n".into(), from: None },
        hyperparameters: Default::default(),
        resources: Default::default(),
        scheduling: Default::default(),
        queue_name: None,
        suspend: false,
        backoff_limit: Some(1),
        active_deadline_seconds: None,
        checkpoint: Default::default(),
    };
    let mut t = TrainingJob::new("shapes", spec);
    t.metadata.namespace = Some("team-a".into());
    t.metadata.uid = Some("uid".into());
    t.metadata.generation = Some(1);
    t.status = status;
    t
}

fn info() -> DatasetInfo {
    DatasetInfo {
        manifest_uri: "s3://platform/team-a/datasets/shapes/manifest.ndjson".into(),
        task: Task::Detect,
        train_images: 32,
        classes: 3,
    }
}

fn obs(run: RunState) -> Observed {
    Observed { dataset: Ok(info()), run, run_generation: Some(1), pods_terminating: false, now: Time(Timestamp::now()) }
}

fn failed(code: i32, retryable: bool) -> RunState {
    RunState::Failed(RunFailure {
        failure: Failure {
            reason: Some("Error".into()),
            message: Some("boom".into()),
            exit_code: Some(code),
            pod_cause: None,
        },
        retryable,
    })
}

fn status_at(attempt: i32) -> TrainingJobStatus {
    let mut s = TrainingJobStatus::default();
    s.job.job_name = Some(format!("shapes-{attempt}"));
    s
}

#[test]
fn the_first_attempt_is_named_before_it_is_created() {
    let p = plan(&tj(None), &obs(RunState::Missing));
    assert_eq!(p.act, Act::Create { resume: false });
    assert_eq!(p.status.job.job_name.as_deref(), Some("shapes-1"));
    assert_eq!(p.status.phase, TrainingPhase::Pending);
    assert_eq!(p.status.common.observed_generation, Some(1));
}

#[test]
fn retryable_failures_count_against_the_budget_then_fail() {
    let p = plan(&tj(Some(status_at(1))), &obs(failed(137, true)));
    assert_eq!((p.status.restarts, p.status.job.job_name.as_deref(), p.act.clone()), (1, Some("shapes-2"), Act::None));
    assert_eq!(p.requeue, Some(workload::backoff(1)));
    // The retry waits out its back-off, then resumes from `last` when there is one.
    let mut waiting = p.status.clone();
    waiting.checkpoints = Some(Checkpoints { last: Some("s3://x/last.safetensors".into()), best: None });
    let early = plan(&tj(Some(waiting.clone())), &obs(RunState::Missing));
    assert_eq!(early.act, Act::None);
    let mut later = obs(RunState::Missing);
    later.now = Time(Timestamp::now() + Duration::from_secs(11));
    assert_eq!(plan(&tj(Some(waiting)), &later).act, Act::Create { resume: true });
    // Budget 1: the second failure is final.
    let mut second = status_at(2);
    second.restarts = 1;
    let p = plan(&tj(Some(second)), &obs(failed(1, true)));
    assert_eq!(p.status.phase, TrainingPhase::Failed);
    assert_eq!(p.status.job.failure.and_then(|f| f.reason).as_deref(), Some("BackoffLimitExceeded"));
}

#[test]
fn invalid_input_is_final_at_once() {
    let p = plan(&tj(Some(status_at(1))), &obs(failed(2, false)));
    assert_eq!((p.status.phase, p.status.restarts, p.act), (TrainingPhase::Failed, 0, Act::None));
    assert!(p.status.common.conditions.iter().any(|c| c.type_ == "Stalled" && c.is_true()));
}

#[test]
fn terminal_phases_never_run_again() {
    for phase in [TrainingPhase::Succeeded, TrainingPhase::Failed] {
        let mut s = status_at(1);
        s.phase = phase;
        // Even with its Job gone.
        let p = plan(&tj(Some(s.clone())), &obs(RunState::Missing));
        assert_eq!((p.act, p.status), (Act::None, s));
    }
}

#[test]
fn pause_stops_the_attempt_and_resume_continues_without_a_restart() {
    let mut t = tj(Some(status_at(1)));
    t.spec.suspend = true;
    let p = plan(&t, &obs(RunState::Running));
    assert_eq!(
        (p.act.clone(), p.status.phase, p.status.job.job_name.as_deref()),
        (Act::Stop, TrainingPhase::Suspended, Some("shapes-2"))
    );
    // Suspended with nothing running: stays so.
    t.status = Some(p.status);
    let idle = plan(&t, &obs(RunState::Missing));
    assert_eq!((idle.act, idle.status.phase), (Act::None, TrainingPhase::Suspended));
    // Resumed: the next attempt, from `last`, with no restart counted; not while the old pod saves.
    t.spec.suspend = false;
    let mut st = idle.status.clone();
    st.checkpoints = Some(Checkpoints { last: Some("s3://x/last.safetensors".into()), best: None });
    t.status = Some(st);
    let mut busy = obs(RunState::Missing);
    busy.pods_terminating = true;
    assert_eq!(plan(&t, &busy).act, Act::None);
    let p = plan(&t, &obs(RunState::Missing));
    assert_eq!(
        (p.act, p.status.restarts, p.status.job.job_name.as_deref()),
        (Act::Create { resume: true }, 0, Some("shapes-2"))
    );
    // A trainer that exits paused on its own (e.g. a node drain) is resumed, not counted.
    let p = plan(&tj(Some(status_at(3))), &obs(RunState::Paused));
    assert_eq!((p.status.restarts, p.status.job.job_name.as_deref()), (0, Some("shapes-4")));
}

#[test]
fn pod_causes_show_and_a_spec_change_replaces_an_attempt_that_never_ran() {
    let cause = PodCause {
        reason: "Unschedulable".into(),
        message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into(),
    };
    let p = plan(&tj(Some(status_at(1))), &obs(RunState::Pending { cause: Some(cause.clone()) }));
    let progressing = p.status.common.conditions.iter().find(|c| c.type_ == "Progressing").expect("condition");
    assert_eq!(
        (progressing.reason.as_deref(), progressing.message.as_deref()),
        (Some("Unschedulable"), Some(cause.message.as_str()))
    );
    assert_eq!(p.status.job.failure.and_then(|f| f.pod_cause).as_deref(), Some("Unschedulable"));
    let mut changed = tj(Some(status_at(1)));
    changed.metadata.generation = Some(2);
    let p = plan(&changed, &obs(RunState::Pending { cause: Some(cause) }));
    assert_eq!((p.act, p.status.job.job_name.as_deref(), p.status.restarts), (Act::Stop, Some("shapes-2"), 0));
}

#[test]
fn a_missing_or_unsuitable_dataset_blocks_the_start() {
    let mut o = obs(RunState::Missing);
    o.dataset = dataset_info(&tj(None).spec, None);
    let p = plan(&tj(None), &o);
    assert_eq!((p.act, p.status.phase), (Act::None, TrainingPhase::Pending));
    assert!(p.status.common.conditions.iter().any(|c| c.reason.as_deref() == Some("DatasetNotFound")));
    let mut cls = tj(None);
    cls.spec.model.architecture = "yolov8n-cls".into();
    assert!(matches!(validate(&cls, &info()), Err(Blocked::Invalid { reason, .. }) if reason == "TaskMismatch"));
    let mut seg = tj(None);
    seg.spec.model.architecture = "yolov8n-seg".into();
    assert!(matches!(validate(&seg, &info()), Err(Blocked::Invalid { reason, .. }) if reason == "UnsupportedTask"));
}

#[test]
fn the_job_carries_the_hyperparameters_and_kueue_suspends_it() {
    let mut t = tj(Some(status_at(2)));
    t.spec.queue_name = Some("q".into());
    t.spec.resources.gpu = ocellus_crds::GpuRequest { count: 1, product: None, mig_profile: None };
    let job = build_job(&WorkloadConfig::for_tests("trainer:1", "platform"), &t, &info(), None, true);
    assert_eq!(job.metadata.name.as_deref(), Some("shapes-2"));
    assert_eq!(
        job.spec.as_ref().and_then(|s| s.suspend),
        Some(true),
        "Kueue admits it (Job suspend: Kubernetes 1.21+, checked here without a cluster)"
    );
    let args = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    for a in [
        "train",
        "--resume",
        "--device=cuda",
        "--amp",
        "--optimizer=AdamW",
        "--epochs=100",
        "--output-prefix=team-a/trainingjobs/shapes",
    ] {
        assert!(args.iter().any(|x| x == a), "{a} missing from {args:?}");
    }
    // `optimizer: auto` as Ultralytics: AdamW with lr fitted to 3 classes for a short run, SGD for a long one.
    assert!(args.iter().any(|x| x == "--lr0=0.001429"), "{args:?}");
    assert!(args.iter().any(|x| x == "--warmup-bias-lr=0"), "auto starts the bias warm-up at 0: {args:?}");
    assert_eq!(auto_optimizer(100_000, 80, 16, 300).0, "SGD");
}

#[test]
fn progress_comes_from_results_lines() {
    let lines: Vec<Value> = vec![
        serde_json::json!({"epoch": 1, "box_loss": 2.0, "cls_loss": 3.0, "dfl_loss": 1.5, "precision": 0.1, "recall": 0.2, "map50": 0.3, "map50_95": 0.2}),
        serde_json::json!({"epoch": 2, "box_loss": 1.8, "cls_loss": 2.5, "dfl_loss": 1.4, "precision": 0.2, "recall": 0.3, "map50": 0.25, "map50_95": 0.1}),
    ];
    let mut st = TrainingJobStatus::default();
    apply_progress(&mut st, &Progress { epochs: lines, checkpoints: Checkpoints::default() }, "s3://r".into());
    assert_eq!(st.epoch, Some(2));
    assert_eq!(st.best_epoch, Some(1));
    assert_eq!(st.best_metrics.and_then(|m| m.map50_95), Some(0.2));
    assert_eq!(st.latest_metrics.and_then(|m| m.box_loss), Some(1.8));
}

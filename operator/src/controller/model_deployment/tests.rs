use super::*;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
};
use ocellus_crds::{
    Artifact, CheckpointKind, ExportStatus, GpuRequest, LocalRef, ModelDeploymentSpec, ModelSource,
    TrainingJobCheckpointRef,
};

fn md(model: ModelSource) -> ModelDeployment {
    let mut d = ModelDeployment::new("shapes", ModelDeploymentSpec::serving(model));
    d.metadata.namespace = Some("team-a".into());
    d.metadata.uid = Some("uid-1".into());
    d.metadata.generation = Some(2);
    d.metadata.creation_timestamp = Some(Time("2026-12-01T10:00:00Z".parse().expect("time")));
    d
}

fn from_export() -> ModelDeployment {
    md(ModelSource {
        export: Some(LocalRef { name: "shapes-onnx".into() }),
        training_job: None,
        uri: None,
        format: None,
        sha256: None,
        class_names: vec![],
    })
}

fn export(phase: ExportPhase) -> Export {
    let mut ex = Export::new(
        "shapes-onnx",
        ExportSpec {
            source: ExportSource { training_job: None, weights_uri: Some("s3://b/w.safetensors".into()) },
            format: ExportFormat::Onnx,
            imgsz: None,
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
    ex.status = Some(ExportStatus {
        phase,
        artifact: (phase == ExportPhase::Succeeded).then(|| Artifact {
            uri: "s3://platform/team-a/exports/shapes-onnx/model.onnx".into(),
            size_bytes: 10,
            sha256: "ab".repeat(32),
        }),
        ..Default::default()
    });
    ex
}

#[test]
fn the_model_resolves_from_an_export_and_waits_or_fails_plainly() {
    let d = from_export();
    match resolve(&d, None) {
        Resolution::Waiting { reason, .. } => assert_eq!(reason, "ExportNotFound"),
        r => panic!("{r:?}"),
    }
    match resolve(&d, Some(&export(ExportPhase::Running))) {
        Resolution::Waiting { reason, message } => {
            assert_eq!(reason, "ExportPending");
            assert!(message.contains("Export shapes-onnx"), "{message}");
        }
        r => panic!("{r:?}"),
    }
    let Resolution::Ready(m) = resolve(&d, Some(&export(ExportPhase::Succeeded))) else { panic!("not ready") };
    assert_eq!(m.uri, "s3://platform/team-a/exports/shapes-onnx/model.onnx");
    assert_eq!(m.format, ExportFormat::Onnx);
    assert_eq!(m.version().as_deref(), Some("abababababab"));
    assert!(
        matches!(resolve(&d, Some(&export(ExportPhase::Failed))), Resolution::Invalid { ref reason, .. } if reason == "ExportFailed")
    );

    let mut lt = d.clone();
    lt.spec.backend = Backend::Libtorch;
    assert!(
        matches!(resolve(&lt, Some(&export(ExportPhase::Succeeded))), Resolution::Invalid { ref reason, .. } if reason == "BackendMismatch")
    );
    let mut pinned = d.clone();
    pinned.spec.model.sha256 = Some("cd".repeat(32));
    assert!(
        matches!(resolve(&pinned, Some(&export(ExportPhase::Succeeded))), Resolution::Invalid { ref reason, .. } if reason == "ChecksumMismatch")
    );
}

#[test]
fn the_served_precision_is_the_exports() {
    let d = from_export();
    let precision = |ex: &Export| match resolve(&d, Some(ex)) {
        Resolution::Ready(m) => m.precision,
        r => panic!("{r:?}"),
    };
    // What the Export's status says (from the artifact's metadata)…
    let mut int8 = export(ExportPhase::Succeeded);
    int8.spec.int8 = true;
    if let Some(st) = int8.status.as_mut() {
        st.precision = Some("int8".into());
    }
    assert_eq!(precision(&int8).as_deref(), Some("int8"));
    // …or, from an Export that succeeded before its status had it, what its spec asked for.
    assert_eq!(precision(&export(ExportPhase::Succeeded)).as_deref(), Some("fp32"));
    let mut half = export(ExportPhase::Succeeded);
    half.spec.half = true;
    assert_eq!(precision(&half).as_deref(), Some("fp16"));
    let uri = md(ModelSource {
        export: None,
        training_job: None,
        uri: Some("s3://b/m.onnx".into()),
        format: Some(ExportFormat::Onnx),
        sha256: None,
        class_names: vec![],
    });
    let Resolution::Ready(m) = resolve(&uri, None) else { panic!("a uri resolves") };
    assert_eq!(m.precision, None);

    let Resolution::Ready(m) = resolve(&d, Some(&int8)) else { panic!("ready") };
    let (st, _) = status(
        &d,
        &ModelDeploymentStatus { precision: Some("fp32".into()), ..Default::default() },
        &Observed {
            lifecycle: Lifecycle::Serving,
            resolution: &Resolution::Ready(m),
            deployment: None,
            pods: &[],
            desired: 1,
        },
    );
    assert_eq!(st.precision.as_deref(), Some("int8"), "a new model replaces the old one's precision");
}

#[test]
fn what_cel_refuses_is_refused_here_too() {
    let uri = |u: &str, f: Option<ExportFormat>| {
        md(ModelSource {
            export: None,
            training_job: None,
            uri: Some(u.into()),
            format: f,
            sha256: None,
            class_names: vec![],
        })
    };
    assert!(matches!(resolve(&uri("s3://b/m.onnx", Some(ExportFormat::Onnx)), None), Resolution::Ready(_)));
    let e = validate(&uri("https://h/m.onnx", Some(ExportFormat::Onnx))).expect_err("https");
    assert!(e.contains("only s3://"), "{e}");
    assert!(validate(&uri("s3://b/m.onnx", None)).expect_err("format").contains("model.format"));
    let mut both = from_export();
    both.spec.model.uri = Some("s3://b/m.onnx".into());
    assert!(validate(&both).expect_err("two sources").contains("exactly one"));
    let mut trt = from_export();
    trt.spec.backend = Backend::Tensorrt;
    assert!(validate(&trt).expect_err("trt").contains("needs a GPU"));
    let mut cpu = from_export();
    cpu.spec.resources.cpu = "two".into();
    assert!(validate(&cpu).expect_err("cpu").contains("resources.cpu"));
    cpu.spec.resources.cpu = "500m".into();
    assert!(validate(&cpu).is_ok());
    let mut delete = from_export();
    delete.spec.delete_on_expiration = true;
    assert!(validate(&delete).expect_err("no duration").contains("needs durationHours"));
    delete.spec.duration_hours = Some(1.0);
    assert!(validate(&delete).is_ok());
}

#[test]
fn a_training_job_checkpoint_is_served_through_an_owned_torchscript_export() {
    let mut d = md(ModelSource {
        export: None,
        training_job: Some(TrainingJobCheckpointRef {
            name: "shapes-yolov8n".into(),
            checkpoint: CheckpointKind::Last,
        }),
        uri: None,
        format: None,
        sha256: None,
        class_names: vec![],
    });
    d.spec.inference.imgsz = Some(320);
    let ex = build_checkpoint_export(&d).expect("export");
    assert_eq!(ex.name_any(), "shapes-torchscript");
    assert_eq!(export_name(&d).as_deref(), Some("shapes-torchscript"));
    assert_eq!(ex.spec.format, ExportFormat::Torchscript);
    assert_eq!(ex.spec.imgsz, Some(320));
    assert_eq!(ex.spec.source.training_job.as_ref().map(|t| t.checkpoint), Some(CheckpointKind::Last));
    assert_eq!(ex.owner_references()[0].uid, "uid-1");
    assert_eq!(ex.namespace().as_deref(), Some("team-a"));
    assert!(build_checkpoint_export(&from_export()).is_none());
}

fn model() -> Model {
    Model {
        uri: "s3://platform/m.onnx".into(),
        format: ExportFormat::Onnx,
        sha256: Some("ab".repeat(32)),
        precision: Some("int8".into()),
    }
}

#[test]
fn the_deployment_serves_on_the_pod_ip_least_privileged_and_rolls_without_unavailability() {
    let cfg = WorkloadConfig::for_tests("trainer:1", "platform");
    let d = from_export();
    let dep = build_deployment(&cfg, &d, &model(), 2);
    let spec = dep.spec.clone();
    assert_eq!(spec.replicas, Some(2));
    let ru = spec.strategy.and_then(|s| s.rolling_update).expect("rolling update");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(dep.owner_references()[0].uid, "uid-1");
    let pod = spec.template.spec.expect("pod");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/ocellus-dev/ocellus-predictor:test"));
    assert_eq!(c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem), Some(true));
    assert_eq!(
        c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.as_deref()),
        Some("/readyz")
    );
    let env: BTreeMap<String, EnvVar> =
        c.env.clone().unwrap_or_default().into_iter().map(|e| (e.name.clone(), e)).collect();
    let val = |k: &str| env.get(k).and_then(|e| e.value.clone()).unwrap_or_default();
    assert_eq!(
        env["POD_IP"].value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
        Some("status.podIP")
    );
    let order: Vec<&str> = c.env.as_ref().expect("env").iter().map(|e| e.name.as_str()).collect();
    assert!(
        order.iter().position(|n| *n == "POD_IP") < order.iter().position(|n| *n == "OCELLUS_LISTEN"),
        "POD_IP must come first to expand"
    );
    assert_eq!(val("OCELLUS_LISTEN"), "$(POD_IP):8080");
    assert_eq!(val("OCELLUS_MODEL"), "s3://platform/m.onnx");
    assert_eq!(val("OCELLUS_MODEL_NAME"), "shapes");
    assert_eq!(val("OCELLUS_DEVICE"), "cpu");
    assert_eq!(val("OCELLUS_MAX_BATCH"), "8");
    assert_eq!(val("OCELLUS_CONF"), "0.25");
    assert!(env["AWS_SECRET_ACCESS_KEY"].value.is_none(), "credentials by reference only");
    assert!(!env.contains_key("OCELLUS_MODEL_SHA256"));
    let limits = c.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
    assert!(!limits.contains_key("nvidia.com/gpu"));
    assert_eq!(
        spec.template.metadata.and_then(|m| m.annotations).expect("annotations")["ocellus.dev/model-version"],
        "abababababab"
    );

    let mut gpu = d.clone();
    gpu.spec.resources.gpu = GpuRequest { count: 1, product: Some("NVIDIA-H200".into()), mig_profile: None };
    gpu.spec.model.sha256 = Some("ab".repeat(32));
    let dep = build_deployment(&cfg, &gpu, &model(), 1);
    let pod = dep.spec.template.spec.expect("pod");
    let c = &pod.containers[0];
    assert_eq!(
        c.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits")["nvidia.com/gpu"],
        Quantity("1".into())
    );
    assert!(pod.tolerations.unwrap_or_default().iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    assert!(pod.affinity.is_some());
    let env = c.env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.name == "OCELLUS_DEVICE" && e.value.as_deref() == Some("cuda")));
    assert!(env.iter().any(|e| e.name == "OCELLUS_MODEL_SHA256" && e.value == gpu.spec.model.sha256));
}

#[test]
fn service_and_disruption_budget() {
    let d = from_export();
    let svc = build_service(&d);
    let spec = svc.spec.clone().expect("spec");
    assert_eq!(spec.selector, Some(selector("shapes")));
    assert_eq!(spec.ports.as_ref().expect("ports")[0].port, PORT);
    assert_eq!(svc.labels()[DEPLOYMENT_LABEL], "shapes");
    assert!(build_pdb(&d).is_none(), "one replica at most: no budget");
    let mut scaled = d.clone();
    scaled.spec.scaling.max_replicas = 3;
    let pdb = build_pdb(&scaled).expect("pdb");
    assert_eq!(pdb.spec.and_then(|s| s.max_unavailable), Some(IntOrString::Int(1)));
}

#[test]
fn stop_wins_over_expiry_and_expiry_counts_from_creation() {
    let mut d = from_export();
    let at = |s: &str| s.parse::<Timestamp>().expect("time");
    assert_eq!(lifecycle(&d, at("2030-01-01T00:00:00Z")), Lifecycle::Serving);
    d.spec.duration_hours = Some(2.0);
    assert_eq!(expires_at(&d), Some(at("2026-12-01T12:00:00Z")));
    assert_eq!(lifecycle(&d, at("2026-12-01T11:59:59Z")), Lifecycle::Serving);
    assert_eq!(lifecycle(&d, at("2026-12-01T12:00:00Z")), Lifecycle::Expired);
    d.spec.stopped = true;
    assert_eq!(lifecycle(&d, at("2026-12-01T11:00:00Z")), Lifecycle::Stopped);
}

#[test]
fn delete_on_expiration_deletes_once_expired_even_when_stopped() {
    let at = |s: &str| s.parse::<Timestamp>().expect("time");
    let (before, after) = (at("2026-12-01T11:59:59Z"), at("2026-12-01T12:00:00Z"));
    let mut d = from_export();
    d.spec.duration_hours = Some(2.0);
    assert!(!deletes_on_expiry(&d, after), "without deleteOnExpiration an expired deployment is kept");
    d.spec.delete_on_expiration = true;
    assert!(!deletes_on_expiry(&d, before));
    assert!(deletes_on_expiry(&d, after));
    d.spec.stopped = true;
    assert!(deletes_on_expiry(&d, after), "a pause does not extend the lifetime");
    d.metadata.deletion_timestamp = Some(Time(after));
    assert!(!deletes_on_expiry(&d, after), "already being deleted");
    let mut forever = from_export();
    forever.spec.delete_on_expiration = true;
    assert!(!deletes_on_expiry(&forever, at("2100-01-01T00:00:00Z")), "no durationHours, no expiry");
}

#[test]
fn the_reconcile_wakes_at_the_expiry_when_it_changes_something() {
    let at = |s: &str| s.parse::<Timestamp>().expect("time");
    let now = at("2026-12-01T11:00:00Z");
    let hour = Some(Duration::from_secs(3601));
    let mut d = from_export();
    assert_eq!(until_expiry(&d, &Lifecycle::Serving, now), None, "no durationHours");
    d.spec.duration_hours = Some(2.0);
    assert_eq!(until_expiry(&d, &Lifecycle::Serving, now), hour);
    assert_eq!(until_expiry(&d, &Lifecycle::Stopped, now), None, "stopped stays stopped");
    d.spec.delete_on_expiration = true;
    assert_eq!(until_expiry(&d, &Lifecycle::Stopped, now), hour, "stopped, but deleted at the expiry");
    assert_eq!(until_expiry(&d, &Lifecycle::Expired, at("2026-12-01T12:00:00Z")), None);
}

fn pod(status: PodStatus) -> Pod {
    Pod { status: Some(status), ..Default::default() }
}

fn crashed(message: &str, restarts: i32) -> Pod {
    pod(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "predictor".into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some("CrashLoopBackOff".into()), message: None }),
                ..Default::default()
            }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 2,
                    message: Some(message.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    })
}

#[test]
fn pod_causes_name_what_users_must_fix() {
    let unschedulable = pod(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let c = pod_cause(&unschedulable).expect("cause");
    assert_eq!((c.reason.as_str(), c.message.contains("Insufficient nvidia.com/gpu")), ("Unschedulable", true));

    let log = "{\"level\":\"INFO\",\"fields\":{\"message\":\"fetching\"}}\n{\"level\":\"ERROR\",\"fields\":{\"message\":\"predictor failed\",\"error\":\"s3://b/m.onnx does not exist\"}}\n";
    let c = pod_cause(&crashed(log, 3)).expect("cause");
    assert_eq!(c.reason, "CrashLoop");
    assert_eq!(c.message, "the predictor exited with code 2: s3://b/m.onnx does not exist");
    let c = pod_cause(&crashed("plain text line\n", 1)).expect("cause");
    assert!(c.message.ends_with(": plain text line"), "{}", c.message);

    let pull = pod(PodStatus {
        container_statuses: Some(vec![ContainerStatus {
            name: "predictor".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    message: Some("no such image".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    assert_eq!(pod_cause(&pull).map(|c| c.reason), Some("ImagePull".into()));
    assert_eq!(pod_cause(&pod(PodStatus::default())), None);
}

fn deployment(replicas: i32, ready: i32, updated: i32) -> Deployment {
    Deployment {
        status: Some(DeploymentStatus {
            replicas: Some(replicas),
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn status_phases() {
    let d = from_export();
    let ready = Resolution::Ready(model());
    let waiting = waiting("ExportPending", "waiting for Export shapes-onnx");
    let old = ModelDeploymentStatus::default();
    let run = |life: Lifecycle, r: &Resolution, dep: Option<&Deployment>, pods: &[&Pod], desired: i32| {
        status(&d, &old, &Observed { lifecycle: life, resolution: r, deployment: dep, pods, desired })
    };
    let (st, h) = run(Lifecycle::Serving, &waiting, None, &[], 0);
    assert_eq!(st.phase, DeploymentPhase::Pending);
    assert!(matches!(h, Health::Progressing { ref reason, .. } if reason == "ExportPending"));
    assert_eq!(st.url, None);

    let starting = deployment(1, 0, 1);
    let (st, h) = run(Lifecycle::Serving, &ready, Some(&starting), &[], 1);
    assert_eq!((st.phase, st.desired_replicas), (DeploymentPhase::Deploying, 1));
    assert!(matches!(h, Health::Progressing { ref reason, .. } if reason == "Starting"));
    assert_eq!(st.url.as_deref(), Some("http://shapes.team-a.svc:8080"));
    assert_eq!(st.model_version.as_deref(), Some("abababababab"));
    assert_eq!(st.precision.as_deref(), Some("int8"));
    assert_eq!(st.common.observed_generation, Some(2));

    let crash = crashed("{\"fields\":{\"error\":\"bad model\"}}", 2);
    let (st, h) = run(Lifecycle::Serving, &ready, Some(&starting), &[&crash], 1);
    assert_eq!(st.phase, DeploymentPhase::Failed);
    assert!(matches!(h, Health::Failed { ref message, .. } if message.ends_with("bad model")));

    let serving = deployment(3, 2, 3);
    let (st, h) = run(Lifecycle::Serving, &ready, Some(&serving), &[], 3);
    assert_eq!((st.phase, st.replicas, st.ready_replicas), (DeploymentPhase::Ready, 3, 2));
    assert!(matches!(h, Health::Ready { ref message, .. } if message == "2 of 3 replicas ready"));
    let rolling = deployment(2, 1, 1);
    let (_, h) = run(Lifecycle::Serving, &ready, Some(&rolling), &[], 1);
    assert!(matches!(h, Health::Ready { ref message, .. } if message.contains("rolling out")));

    let zero = deployment(0, 0, 0);
    let (st, h) = run(Lifecycle::Serving, &ready, Some(&zero), &[], 0);
    assert_eq!(st.phase, DeploymentPhase::ScaledToZero);
    assert!(matches!(h, Health::Ready { ref reason, .. } if reason == "ScaledToZero"));

    let (st, h) = run(Lifecycle::Stopped, &ready, Some(&zero), &[], 0);
    assert_eq!(st.phase, DeploymentPhase::Stopped);
    assert!(matches!(h, Health::Ready { ref reason, .. } if reason == "Stopped"));
    let live = Pod::default();
    let (_, h) = run(Lifecycle::Expired, &ready, Some(&serving), &[&live], 0);
    assert!(matches!(h, Health::Progressing { ref reason, .. } if reason == "Expired"));

    let broken = invalid("InvalidSpec", "backend tensorrt needs a GPU");
    let (st, _) = run(Lifecycle::Serving, &broken, None, &[], 0);
    assert_eq!(st.phase, DeploymentPhase::Failed);
}

#[test]
fn gateway_demand_and_pod_metrics_parse() {
    let mut d = from_export();
    let now_ts: Timestamp = "2026-12-01T10:00:10Z".parse().expect("time");
    let now = Instant::now() + Duration::from_secs(3600);
    assert_eq!(gateway_demand(&d, now_ts, now), (None, 0.0));
    d.metadata.annotations = Some(BTreeMap::from([
        (WAKE_ANNOTATION.to_string(), "2026-12-01T10:00:07Z".to_string()),
        (HELD_ANNOTATION.to_string(), "12".to_string()),
    ]));
    let (woken, held) = gateway_demand(&d, now_ts, now);
    assert_eq!(woken, Some(now - Duration::from_secs(3)));
    assert_eq!(held, 12.0);
    let later: Timestamp = "2026-12-01T10:01:00Z".parse().expect("time");
    assert_eq!(gateway_demand(&d, later, now).1, 0.0, "a stale held count is not demand");
    d.metadata.annotations = Some(BTreeMap::from([
        (WAKE_ANNOTATION.to_string(), "yesterday".to_string()),
        (HELD_ANNOTATION.to_string(), "-3".to_string()),
    ]));
    assert_eq!(gateway_demand(&d, now_ts, now), (None, 0.0));

    let text = "# HELP ocellus_predictor_inflight_requests Prediction requests being served\n# TYPE ocellus_predictor_inflight_requests gauge\nocellus_predictor_inflight_requests 7\nocellus_predictor_inflight_requests_other 3\n";
    assert_eq!(inflight_of(text), Some(7.0));
    assert_eq!(inflight_of("ocellus_predictor_inflight_requests{pod=\"a\"} 2\n"), Some(2.0));
    assert_eq!(inflight_of("other 1\n"), None);
}

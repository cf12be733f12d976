use super::*;
use ocellus_crds::{Calibration, CheckpointKind, ExportSource, LocalRef, TrainingJobCheckpointRef};
use serde_json::json;

fn spec(format: ExportFormat) -> ExportSpec {
    ExportSpec {
        source: ExportSource {
            training_job: Some(TrainingJobCheckpointRef { name: "tj".into(), checkpoint: CheckpointKind::Best }),
            weights_uri: None,
        },
        format,
        imgsz: Some(160),
        half: false,
        int8: false,
        calibration: None,
        max_accuracy_drop: None,
        dynamic: true,
        batch: 16,
        opset: None,
        gpu_product: None,
        scheduling: Default::default(),
    }
}

#[test]
fn what_cel_refuses_is_refused_here_too() {
    assert!(validate(&spec(ExportFormat::Onnx)).is_ok());
    let engine = spec(ExportFormat::Engine);
    assert!(validate(&engine).expect_err("engine needs a GPU").contains("gpuProduct"));
    let mut opset = spec(ExportFormat::Onnx);
    opset.opset = Some(23);
    assert!(validate(&opset).expect_err("opset").contains("13 to 21"));
    // INT8: onnx and engine, calibrated on the TrainingJob's Dataset by default.
    let mut int8 = spec(ExportFormat::Onnx);
    int8.int8 = true;
    assert_eq!(validate(&int8), Ok(()));
    let mut engine = int8.clone();
    engine.format = ExportFormat::Engine;
    engine.gpu_product = Some("NVIDIA-H200".into());
    assert_eq!(validate(&engine), Ok(()));
    let mut ts = int8.clone();
    ts.format = ExportFormat::Torchscript;
    assert_eq!(validate(&ts), Err("int8 is supported for formats onnx and engine".into()));
    // From a weights URI there is no TrainingJob Dataset: a calibration Dataset must be named.
    let mut uri = int8.clone();
    uri.source = ExportSource { training_job: None, weights_uri: Some("s3://b/w.safetensors".into()) };
    assert!(validate(&uri).expect_err("no dataset").contains("calibration.datasetRef"));
    uri.calibration = Some(calibration(Some("shapes"), None, None));
    assert_eq!(validate(&uri), Ok(()));
    let mut pct = int8.clone();
    pct.calibration = Some(calibration(None, Some(CalibrationMethod::Entropy), Some(99.9)));
    assert_eq!(validate(&pct), Err("calibration.percentile is only used by method percentile".into()));
    pct.calibration = Some(calibration(None, None, Some(99.9)));
    assert_eq!(validate(&pct), Ok(()));
}

fn calibration(dataset: Option<&str>, method: Option<CalibrationMethod>, percentile: Option<f64>) -> Calibration {
    Calibration { dataset_ref: dataset.map(|n| LocalRef { name: n.into() }), images: None, method, percentile }
}

fn args_of(job: Job) -> Vec<String> {
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
    pod.containers[0].args.clone().unwrap_or_default()
}

fn export(s: ExportSpec) -> Export {
    let mut ex = Export::new("e", s);
    ex.metadata.namespace = Some("team-a".into());
    ex.metadata.uid = Some("u".into());
    ex
}

fn dataset(name: &str, manifest: Option<&str>, versions: &[(&str, &str)]) -> Dataset {
    let mut d: Dataset = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"task": "detect"},
    }))
    .expect("dataset");
    d.status = Some(ocellus_crds::DatasetStatus {
        phase: if manifest.is_some() { ocellus_crds::DatasetPhase::Ready } else { Default::default() },
        manifest_uri: manifest.map(String::from),
        versions: versions
            .iter()
            .map(|(v, m)| {
                serde_json::from_value(
                    json!({"name": v, "manifestUri": m, "images": 40, "createdAt": "2026-01-01T00:00:00Z"}),
                )
                .expect("version")
            })
            .collect(),
        ..Default::default()
    });
    d
}

fn trained_on(dataset: &str, version: Option<&str>) -> TrainingJob {
    serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "tj", "namespace": "team-a"},
        "spec": {"datasetRef": {"name": dataset, "version": version}, "model": {"architecture": "yolov8n"}},
    }))
    .expect("tj")
}

#[test]
fn int8_calibrates_on_the_training_jobs_val_split_unless_a_dataset_is_named() {
    let datasets = [
        dataset(
            "shapes",
            Some("s3://platform/team-a/datasets/shapes/manifest.ndjson"),
            &[("v2", "s3://platform/team-a/datasets/shapes/versions/v2/manifest.ndjson")],
        ),
        dataset("street", Some("s3://platform/team-a/datasets/street/manifest.ndjson"), &[]),
        dataset("ingesting", None, &[]),
    ];
    let lookup = |name: &str| datasets.iter().find(|d| d.name_any() == name).cloned();
    let mut s = spec(ExportFormat::Onnx);
    assert_eq!(int8_inputs(&s, Some(&trained_on("shapes", None)), lookup), Ok(None), "not int8");
    s.int8 = true;
    assert_eq!(
        int8_inputs(&s, Some(&trained_on("shapes", None)), lookup),
        Ok(Some(Int8Inputs {
            calibration_manifest: "s3://platform/team-a/datasets/shapes/manifest.ndjson".into(),
            calibration_split: Some("val".into()),
            gate_manifest: "s3://platform/team-a/datasets/shapes/manifest.ndjson".into(),
        }))
    );
    // The version the TrainingJob trained on, not what the Dataset holds now.
    let pinned = int8_inputs(&s, Some(&trained_on("shapes", Some("v2"))), lookup).expect("ok").expect("int8");
    assert_eq!(pinned.calibration_manifest, "s3://platform/team-a/datasets/shapes/versions/v2/manifest.ndjson");
    assert_eq!(pinned.gate_manifest, pinned.calibration_manifest);
    // A named Dataset calibrates with all its images; the gate stays on the TrainingJob's.
    s.calibration = Some(calibration(Some("street"), None, None));
    assert_eq!(
        int8_inputs(&s, Some(&trained_on("shapes", None)), lookup),
        Ok(Some(Int8Inputs {
            calibration_manifest: "s3://platform/team-a/datasets/street/manifest.ndjson".into(),
            calibration_split: None,
            gate_manifest: "s3://platform/team-a/datasets/shapes/manifest.ndjson".into(),
        }))
    );
    // From a weights URI: the named Dataset calibrates and gates.
    let mut uri = s.clone();
    uri.source = ExportSource { training_job: None, weights_uri: Some("s3://b/w.safetensors".into()) };
    assert_eq!(
        int8_inputs(&uri, None, lookup),
        Ok(Some(Int8Inputs {
            calibration_manifest: "s3://platform/team-a/datasets/street/manifest.ndjson".into(),
            calibration_split: None,
            gate_manifest: "s3://platform/team-a/datasets/street/manifest.ndjson".into(),
        }))
    );
    // Datasets without a manifest (or gone, or without the version): wait.
    s.calibration = Some(calibration(Some("ingesting"), None, None));
    assert_eq!(
        int8_inputs(&s, Some(&trained_on("shapes", None)), lookup),
        Err("Dataset ingesting is not ready (phase Pending)".into())
    );
    s.calibration = None;
    assert_eq!(
        int8_inputs(&s, Some(&trained_on("ingesting", None)), lookup),
        Err("Dataset ingesting is not ready (phase Pending)".into())
    );
    assert_eq!(int8_inputs(&s, Some(&trained_on("gone", None)), lookup), Err("Dataset gone does not exist".into()));
    assert_eq!(
        int8_inputs(&s, Some(&trained_on("shapes", Some("v9"))), lookup),
        Err("Dataset shapes has no frozen version v9".into())
    );
    // A re-ingest under way (or failed) leaves the last manifest usable.
    let mut reingest = datasets[0].clone();
    if let Some(st) = reingest.status.as_mut() {
        st.phase = ocellus_crds::DatasetPhase::Ingesting;
    }
    let during = int8_inputs(&s, Some(&trained_on("shapes", None)), |_: &str| Some(reingest.clone()));
    assert_eq!(
        during.expect("usable").map(|i| i.calibration_manifest).as_deref(),
        Some("s3://platform/team-a/datasets/shapes/manifest.ndjson")
    );
}

#[test]
fn int8_jobs_pass_the_calibration_and_the_gate_to_the_trainer() {
    let cfg = WorkloadConfig::for_tests("trainer:1", "platform");
    // A TrainingJob's weights to INT8 ONNX, all defaults.
    let mut s = spec(ExportFormat::Onnx);
    s.int8 = true;
    s.dynamic = false;
    s.batch = 1;
    let shapes = "s3://platform/team-a/datasets/shapes/manifest.ndjson";
    let from_tj = Int8Inputs {
        calibration_manifest: shapes.into(),
        calibration_split: Some("val".into()),
        gate_manifest: shapes.into(),
    };
    assert_eq!(
        args_of(build_job(&cfg, &export(s.clone()), "e-export-1-1", Some(&from_tj))),
        [
            "export",
            "--weights=s3://platform/team-a/trainingjobs/tj/weights/best.safetensors",
            "--format=onnx",
            "--output=s3://platform/team-a/exports/e/model.onnx",
            "--batch=1",
            "--opset=17",
            "--device=cpu",
            "--imgsz=160",
            "--int8",
            "--calibration=s3://platform/team-a/datasets/shapes/manifest.ndjson",
            "--calibration-split=val",
            "--calibration-images=500",
            "--gate-manifest=s3://platform/team-a/datasets/shapes/manifest.ndjson",
        ]
    );
    // A named Dataset, entropy calibration, a tighter gate.
    s.calibration =
        Some(Calibration { images: Some(200), ..calibration(Some("street"), Some(CalibrationMethod::Entropy), None) });
    s.max_accuracy_drop = Some(0.5);
    let named = Int8Inputs {
        calibration_manifest: "s3://platform/team-a/datasets/street/manifest.ndjson".into(),
        calibration_split: None,
        gate_manifest: shapes.into(),
    };
    assert_eq!(
        args_of(build_job(&cfg, &export(s.clone()), "e-export-1-1", Some(&named)))[8..],
        [
            "--int8",
            "--calibration=s3://platform/team-a/datasets/street/manifest.ndjson",
            "--calibration-images=200",
            "--calibration-method=entropy",
            "--gate-manifest=s3://platform/team-a/datasets/shapes/manifest.ndjson",
            "--max-accuracy-drop=0.5",
        ]
    );
    s.calibration = Some(calibration(None, Some(CalibrationMethod::Percentile), Some(99.9)));
    s.max_accuracy_drop = None;
    assert_eq!(
        args_of(build_job(&cfg, &export(s), "e-export-1-1", Some(&from_tj)))[8..],
        [
            "--int8",
            "--calibration=s3://platform/team-a/datasets/shapes/manifest.ndjson",
            "--calibration-split=val",
            "--calibration-images=500",
            "--calibration-method=percentile",
            "--calibration-percentile=99.9",
            "--gate-manifest=s3://platform/team-a/datasets/shapes/manifest.ndjson",
        ]
    );
}

#[test]
fn the_artifacts_precision_and_calibration_come_from_its_metadata() {
    assert_eq!(precision_of(&json!({"sha256": "ab", "half": false})), ("fp32".to_string(), None));
    assert_eq!(precision_of(&json!({"sha256": "ab"})), ("fp32".to_string(), None));
    assert_eq!(precision_of(&json!({"sha256": "ab", "half": true})), ("fp16".to_string(), None));
    let meta = json!({
        "sha256": "ab",
        "half": false,
        "quantization": {"method": "percentile", "percentile": 99.99, "images": 500, "fp32Map": 0.61, "int8Map": 0.6, "maxDrop": 1.0},
    });
    assert_eq!(
        precision_of(&meta),
        (
            "int8".to_string(),
            Some(QuantizationStatus {
                method: "percentile".into(),
                percentile: Some(99.99),
                images: 500,
                fp32_map: 0.61,
                int8_map: 0.6,
                max_drop: 1.0,
            })
        )
    );
    let entropy =
        json!({"quantization": {"method": "entropy", "images": 64, "fp32Map": 0.5, "int8Map": 0.495, "maxDrop": 0.5}});
    let (p, q) = precision_of(&entropy);
    assert_eq!((p.as_str(), q.and_then(|q| q.percentile)), ("int8", None));
}

#[test]
fn a_failed_accuracy_gate_fails_the_export_with_the_trainers_reason() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus};
    let message = "INT8 mAP50-95 0.570 is 4.0 points below float 0.610 (maxAccuracyDrop 1.0)";
    let log = format!(
        "{{\"event\":\"progress\"}}\n{}",
        json!({"event": "error", "reason": "AccuracyGateFailed", "message": message})
    );
    let pod = Pod {
        status: Some(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "trainer".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 2,
                        reason: Some("Error".into()),
                        message: Some(log),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let RunState::Failed(f) = workload::observe(Some(&Job::default()), &[&pod]) else { panic!("a failure") };
    assert!(!f.retryable, "exit code 2: retrying cannot help");
    let mut st = ExportStatus { phase: ExportPhase::Running, ..Default::default() };
    assert_eq!(record_failure(&mut st, f, 1, "e-export-0123abcd", Some(3)), None, "not retried");
    assert_eq!(st.phase, ExportPhase::Failed);
    let failure = st.job.failure.as_ref().expect("failure");
    assert_eq!((failure.reason.as_deref(), failure.message.as_deref()), (Some("AccuracyGateFailed"), Some(message)));
    let failed = st.common.conditions.iter().find(|c| c.type_ == "Failed").expect("Failed condition");
    assert!(failed.is_true());
    assert_eq!((failed.reason.as_deref(), failed.message.as_deref()), (Some("AccuracyGateFailed"), Some(message)));
    assert_eq!(st.job.job_name, None, "no further attempt");

    // A transient failure is retried under the next attempt's name.
    let transient = RunFailure {
        failure: ocellus_crds::Failure { reason: Some("OOMKilled".into()), ..Default::default() },
        retryable: true,
    };
    let mut st = ExportStatus::default();
    assert!(record_failure(&mut st, transient, 1, "e-export-0123abcd", Some(3)).is_some());
    assert_eq!((st.phase, st.job.job_name.as_deref()), (ExportPhase::Pending, Some("e-export-0123abcd-2")));
}

#[test]
fn engine_exports_run_on_their_gpu_model() {
    let mut s = spec(ExportFormat::Engine);
    s.gpu_product = Some("NVIDIA-H200".into());
    let mut ex = Export::new("e", s);
    ex.metadata.namespace = Some("team-a".into());
    ex.metadata.uid = Some("u".into());
    let cfg = WorkloadConfig::for_tests("trainer:1", "platform");
    let job = build_job(&cfg, &ex, "e-export-1-1", None);
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--weights=s3://platform/team-a/trainingjobs/tj/weights/best.safetensors".to_string()),
        "{args:?}"
    );
    assert!(args.contains(&"--output=s3://platform/team-a/exports/e/model.engine".to_string()), "{args:?}");
    assert!(args.contains(&"--device=cuda".to_string()));
    let terms = pod
        .affinity
        .and_then(|a| a.node_affinity?.required_during_scheduling_ignored_during_execution)
        .expect("affinity");
    assert_eq!(
        terms.node_selector_terms[0].match_expressions.as_ref().expect("expr")[0].values,
        Some(vec!["NVIDIA-H200".into()])
    );
}

#[test]
fn a_training_job_is_exported_only_once_it_has_succeeded() {
    let tj = |phase: ocellus_crds::TrainingPhase| {
        let mut t: ocellus_crds::TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "ocellus.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "shapes", "namespace": "ns"},
            "spec": {"datasetRef": {"name": "d"}, "model": {"architecture": "yolov8n"}},
        }))
        .expect("tj");
        t.status =
            Some(ocellus_crds::TrainingJobStatus { phase, epoch: Some(3), epochs: Some(30), ..Default::default() });
        t
    };
    use ocellus_crds::TrainingPhase::*;
    assert_eq!(training_gate("shapes", Some(&tj(Succeeded))), Ok(()));
    // Its `best` exists from the first epoch on: exporting it then would serve an early model.
    let (permanent, reason, message) = training_gate("shapes", Some(&tj(Running))).expect_err("running");
    assert_eq!((permanent, reason), (false, "WaitingForTraining"));
    assert!(message.contains("epoch 3 of 30"), "{message}");
    assert!(!training_gate("shapes", Some(&tj(Suspended))).expect_err("suspended").0);
    assert_eq!(training_gate("shapes", None).expect_err("missing").1, "WaitingForTrainingJob");
    let (permanent, reason, message) = training_gate("shapes", Some(&tj(Failed))).expect_err("failed");
    assert_eq!((permanent, reason), (true, "TrainingFailed"));
    assert!(message.contains("weightsUri"), "{message}");
}

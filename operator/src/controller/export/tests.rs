use super::*;
use ocellus_crds::{CheckpointKind, ExportSource, TrainingJobCheckpointRef};

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
    let mut int8 = spec(ExportFormat::Onnx);
    int8.int8 = true;
    assert!(validate(&int8).is_err());
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

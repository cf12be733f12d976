use super::*;
use ocellus_crds::{DatasetSource, DatasetVersionRequest, S3Source, SecretRef, Task};

fn ds() -> Dataset {
    let mut d = Dataset::new(
        "shapes",
        DatasetSpec {
            task: Task::Detect,
            class_names: vec!["circle".into(), "square".into()],
            source: DatasetSource {
                s3: Some(S3Source {
                    uri: "s3://src/shapes.zip".into(),
                    endpoint: None,
                    region: None,
                    credentials: Some(SecretRef { name: "src-creds".into() }),
                }),
                ..Default::default()
            },
            format: Default::default(),
            split: None,
            validation: None,
            versions: vec![],
        },
    );
    d.metadata.namespace = Some("team-a".into());
    d.metadata.uid = Some("uid".into());
    d
}

#[test]
fn only_source_fields_change_the_ingest_hash() {
    let a = ds();
    let mut b = ds();
    b.spec.versions.push(DatasetVersionRequest { name: "v1".into(), description: None });
    assert_eq!(ingest_hash(&a.spec), ingest_hash(&b.spec), "versions never re-ingest");
    b.spec.class_names.push("triangle".into());
    assert_ne!(ingest_hash(&a.spec), ingest_hash(&b.spec));
}

#[test]
fn the_ingest_job_reads_source_credentials_by_reference() {
    let mut d = ds();
    if let Some(s3) = d.spec.source.s3.as_mut() {
        s3.region = Some("eu-west-1".into());
    }
    let job = build_ingest(&WorkloadConfig::for_tests("trainer:1", "platform"), &d, "shapes-ingest-1234abcd-1");
    let c = &job.spec.and_then(|s| s.template.spec).expect("pod").containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(
        args,
        [
            "ingest",
            "--source=s3://src/shapes.zip",
            "--prefix=team-a/datasets/shapes",
            "--name=shapes",
            "--task=detect",
            "--format=auto",
            "--class-names=circle,square",
            "--on-invalid=exclude",
            "--max-invalid-fraction=0.05"
        ]
    );
    let env = c.env.clone().unwrap_or_default();
    let region = env.iter().find(|e| e.name == "OCELLUS_SOURCE_REGION").and_then(|e| e.value.as_deref());
    assert_eq!(region, Some("eu-west-1"), "the source's region signs its requests");
    let key = env.iter().find(|e| e.name == "OCELLUS_SOURCE_ACCESS_KEY_ID").expect("source key");
    assert!(key.value.is_none());
    assert_eq!(
        key.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).map(|s| s.name.as_str()),
        Some("src-creds")
    );
}

#[test]
fn summary_and_progress_reach_status() {
    let summary = serde_json::json!({
        "classNames": ["circle", "square"], "manifestUri": "s3://platform/m.ndjson",
        "counts": {"images": 40, "classes": 2, "annotations": 90, "perSplit": {"train": 32, "val": 8},
                   "perClass": [{"name": "circle", "instances": 50, "images": 30}]},
        "invalid": {"total": 1, "byReason": {"CorruptImage": 1}, "items": [{"file": "a.jpg", "kind": "CorruptImage", "detail": "truncated"}]},
    });
    let mut st = DatasetStatus::default();
    apply_summary(&mut st, &summary, "s3://platform/summary.json".into());
    let c = st.counts.expect("counts");
    assert_eq!((c.images, c.per_split["val"], c.per_class[0].instances), (40, 8, 50));
    assert_eq!(st.validation.expect("validation").samples, vec!["a.jpg: truncated (CorruptImage)"]);
    assert_eq!(st.manifest_uri.as_deref(), Some("s3://platform/m.ndjson"));
    let log = "{\"event\":\"progress\",\"phase\":\"fetch\",\"done\":1,\"total\":9}\nnot json\n{\"event\":\"progress\",\"done\":5,\"total\":9}\n";
    assert_eq!(last_progress(log), Some(Progress { done: 5, total: Some(9) }));
}

#[test]
fn the_last_frozen_version_leaves_the_dataset_ready_and_an_idle_one_unchanged() {
    let mut st = DatasetStatus { phase: DatasetPhase::Ready, ..Default::default() };
    set(&mut st, Health::Progressing { reason: "Freezing".into(), message: "freezing version v1".into() }, Some(1));
    st.versions.push(DatasetVersionStatus {
        name: "v1".into(),
        manifest_uri: "s3://b/m".into(),
        images: 4,
        ..Default::default()
    });
    settle_ready(&mut st, Some(1));
    let ready = st.common.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert!(ready.is_true(), "{ready:?}");
    assert!(
        !st.common.conditions.iter().any(|c| c.type_ == crate::controller::RECONCILING),
        "{:?}",
        st.common.conditions
    );
    assert_eq!(ready.message.as_deref(), Some("0 images ingested; frozen: v1"));

    let before = st.clone();
    settle_ready(&mut st, Some(1));
    assert_eq!(st, before, "a settled Dataset is rewritten on every reconcile");
}

#[test]
fn a_dataset_without_a_source_waits_and_says_why() {
    let mut d = ds();
    d.spec.source = DatasetSource::default();
    let yaml = serde_json::to_value(&d.spec).expect("json");
    assert!(yaml.get("source").is_none(), "an empty source is not written: {yaml}");
    let mut st = DatasetStatus::default();
    awaiting_source(&mut st, Some(1));
    assert_eq!(st.phase, DatasetPhase::Pending);
    let progressing = st.common.conditions.iter().find(|c| c.type_ == "Progressing").expect("Progressing");
    assert_eq!(progressing.reason.as_deref(), Some("AwaitingSource"));
    assert!(!st.common.conditions.iter().any(|c| c.type_ == "Ready" && c.is_true()));
    let before = st.clone();
    awaiting_source(&mut st, Some(1));
    assert_eq!(st, before, "a waiting Dataset is not rewritten on every reconcile");
}

//! Projects, models, training and exports over a memory cluster: what each route writes, how
//! the operator's status reads back, bad input, cascades, and that one workspace cannot reach
//! another's projects, models, training or exports.

use axum::http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use ocellus_crds::{
    Artifact, Checkpoints, EpochMetrics, ExportPhase, ExportStatus, JobStatus, TrainingJobStatus, TrainingPhase,
};
use serde_json::{Value, json};

use super::tests::{Fixture, call, fixture};

/// A project `vision` with a model `detector`, and a detect Dataset `shapes`; the model's id.
async fn project_with_model(f: &Fixture) -> String {
    let a = &f.a_editor;
    let (s, p) = call(
        &f.app,
        "POST",
        "/api/projects",
        a,
        Some(json!({"project": "vision", "name": "Vision", "visibility": "private"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!((p["owner"].as_str(), p["project"].as_str()), (Some("team-a"), Some("vision")));
    let (s, d) = call(&f.app, "POST", "/api/datasets", a, Some(json!({"dataset": "shapes", "task": "detect"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let (s, m) = call(
        &f.app,
        "POST",
        "/api/models",
        a,
        Some(json!({"project": "vision", "model": "detector", "name": "Detector"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert_eq!(
        (m["project"].as_str(), m["model"].as_str(), m["name"].as_str()),
        (Some("vision"), Some("detector"), Some("Detector"))
    );
    m["id"].as_str().expect("id").to_string()
}

fn start(id: &str, args: Value) -> Option<Value> {
    Some(json!({"modelId": id, "trainArgs": args}))
}

#[tokio::test]
async fn training_starts_a_training_job_whose_status_the_model_reports() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    let (_, m) = call(&f.app, "GET", "/api/models/team-a/vision/detector", a, None).await;
    assert_eq!(m["model"]["status"], "untrained", "{m}");
    let (_, t) = call(&f.app, "GET", "/api/models/team-a/vision/detector/training", a, None).await;
    assert_eq!(t, json!({"job": null}));

    let args = json!({"model": "yolov8n.yaml", "data": "ul://team-a/datasets/shapes", "epochs": 3, "imgsz": 320,
        "batch": 8, "patience": 5, "lr0": 0.01, "optimizer": "SGD", "device": "0", "project": "x"});
    let (s, r) = call(&f.app, "POST", "/api/training/start", a, start(&id, args)).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["modelId"].as_str(), r["status"].as_str(), r["gpuType"].as_str()),
        (Some(id.as_str()), Some("starting"), Some("cpu"))
    );
    assert!(r["estimatedCost"]["pricePerHour"].is_number() && r["billing"]["estimatedCostDisplay"].is_string(), "{r}");

    // The TrainingJob: named by the model, owned by its record, with the arguments mapped.
    let name = format!("detector-{}", &id[..8]);
    let tj = f.cluster.training_job_store().get(&ObjectRef::new(&name).within("team-a")).expect("training job");
    assert_eq!(tj.spec.dataset_ref.name, "shapes");
    assert_eq!(tj.spec.model.architecture, "yolov8n");
    let h = &tj.spec.hyperparameters;
    assert_eq!((h.epochs, h.imgsz, h.batch, h.patience, h.lr0), (3, 320, 8, 5, 0.01));
    assert_eq!(h.optimizer, ocellus_crds::Optimizer::Sgd);
    assert_eq!(tj.spec.resources.gpu.count, 0, "no gpuType: CPU");
    let owner = &tj.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("ConfigMap", format!("ocellus-model-{id}").as_str()));
    assert_eq!(tj.metadata.labels.as_ref().expect("labels")["ocellus.dev/project"], "vision");

    let (s, e) =
        call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "training twice: {e}");

    // The operator reports progress: epoch 2 of 3, running.
    let now = k8s_openapi::jiff::Timestamp::now();
    let started = Time(now - k8s_openapi::jiff::SignedDuration::from_secs(40));
    let metrics =
        EpochMetrics { epoch: 2, map50: Some(0.5), map50_95: Some(0.3), precision: Some(0.6), ..Default::default() };
    let mut st = TrainingJobStatus {
        phase: TrainingPhase::Running,
        epoch: Some(2),
        epochs: Some(3),
        latest_metrics: Some(metrics.clone()),
        best_metrics: Some(metrics.clone()),
        best_epoch: Some(2),
        job: JobStatus { start_time: Some(started), ..Default::default() },
        ..Default::default()
    };
    st.common.observed_generation = Some(1);
    f.cluster.set_training_status("team-a", &name, st.clone());
    let (_, t) = call(&f.app, "GET", "/api/models/team-a/vision/detector/training", a, None).await;
    let job = &t["job"];
    assert_eq!(job["status"], "running", "{t}");
    assert_eq!((job["progress"]["currentEpoch"].as_i64(), job["progress"]["totalEpochs"].as_i64()), (Some(2), Some(3)));
    let elapsed = job["timing"]["elapsedMs"].as_i64().expect("elapsed");
    assert!((40_000..60_000).contains(&elapsed), "{job}");
    assert_eq!(job["timing"]["etaMs"].as_i64(), Some(elapsed / 2), "one epoch left at the pace so far");
    assert_eq!(job["epochMetrics"]["metrics/mAP50-95(B)"], 0.3);
    assert_eq!(job["trainArgs"]["data"], "ul://team-a/datasets/shapes");

    // Done: completed, with metrics and weights.
    st.phase = TrainingPhase::Succeeded;
    st.epoch = Some(3);
    st.job.completion_time = Some(Time(now));
    st.checkpoints = Some(Checkpoints {
        best: Some("s3://ocellus/team-a/trainingjobs/x/weights/best.safetensors".into()),
        last: Some("s3://ocellus/team-a/trainingjobs/x/weights/last.safetensors".into()),
    });
    f.cluster.set_training_status("team-a", &name, st);
    let (_, m) = call(&f.app, "GET", "/api/models/team-a/vision/detector", &f.a_viewer, None).await;
    let item = &m["model"];
    for (k, v) in [
        ("status", json!("completed")),
        ("task", json!("detect")),
        ("hasWeights", json!(true)),
        ("epochs", json!(3)),
        ("epochCount", json!(3)),
        ("bestEpoch", json!(2)),
        ("baseModel", json!("yolov8n")),
        ("dataset", json!({"owner": "team-a", "dataset": "shapes"})),
        ("trainingJob", json!(name)),
    ] {
        assert_eq!(item[k], v, "{k} in {item}");
    }
    assert_eq!(item["metrics"]["metrics/mAP50(B)"], 0.5);
    assert_eq!(m["isOwner"], true);
    let (s, e) = call(&f.app, "GET", "/api/models/team-a/vision/detector/files", a, None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "no object storage in this fixture: {e}");

    // Lists: the project with its model, the account's counts.
    let (_, p) = call(&f.app, "GET", "/api/projects/team-a/vision", a, None).await;
    assert_eq!(p["project"]["modelCount"], 1, "{p}");
    assert_eq!(p["models"][0]["status"], "completed");
    let (_, l) = call(&f.app, "GET", "/api/projects/team-a", a, None).await;
    assert_eq!((l["total"].as_i64(), l["projects"][0]["modelNames"].clone()), (Some(1), json!(["detector"])));
    let (_, l) = call(&f.app, "GET", "/api/models/team-a/vision", a, None).await;
    assert_eq!(l["models"][0]["id"], json!(id));
    let (_, summary) = call(&f.app, "GET", "/api/account/summary", a, None).await;
    assert_eq!(summary["counts"], json!({"projects": 1, "datasets": 1, "models": 1}));
}

#[tokio::test]
async fn exports_are_exports_of_the_best_weights_and_follow_their_status() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    let (s, e) =
        call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(json!({"format": "onnx"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing to export before training: {e}");
    call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;

    let body = json!({"format": "onnx", "args": {"imgsz": 320, "dynamic": true}});
    let (s, r) = call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!((r["format"].as_str(), r["status"].as_str()), (Some("onnx"), Some("queued")));
    let eid = r["id"].as_str().expect("id").to_string();
    let exports = f.cluster.export_store().state();
    assert_eq!(exports.len(), 1);
    let ex = &exports[0];
    let src = ex.spec.source.training_job.as_ref().expect("training job source");
    assert_eq!(
        (src.name.as_str(), src.checkpoint),
        (format!("detector-{}", &id[..8]).as_str(), ocellus_crds::CheckpointKind::Best)
    );
    assert_eq!((ex.spec.imgsz, ex.spec.dynamic, ex.spec.batch), (Some(320), true, 1));

    let uri = format!("/api/models/team-a/vision/detector/exports/{eid}");
    let (_, one) = call(&f.app, "GET", &uri, a, None).await;
    assert_eq!(one["export"]["status"], "queued", "{one}");
    let mut st = ExportStatus { phase: ExportPhase::Failed, ..Default::default() };
    st.common.observed_generation = Some(1);
    st.job.failure = Some(ocellus_crds::Failure { message: Some("opset 99".into()), ..Default::default() });
    f.cluster.set_export_status("team-a", &ex.metadata.name.clone().expect("name"), st.clone());
    let (_, one) = call(&f.app, "GET", &uri, a, None).await;
    assert_eq!(
        (one["export"]["status"].as_str(), one["export"]["error"]["message"].as_str()),
        (Some("failed"), Some("opset 99"))
    );
    st.phase = ExportPhase::Succeeded;
    st.artifact = Some(Artifact { uri: "s3://ocellus/m.onnx".into(), size_bytes: 10, sha256: "ab".into() });
    f.cluster.set_export_status("team-a", &ex.metadata.name.clone().expect("name"), st);
    let (s, _) = call(&f.app, "GET", &uri, a, None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "the download URL needs object storage");

    for (body, field) in [
        (json!({"format": "coreml"}), "format"),
        (json!({"format": "engine"}), "format"),
        (json!({"format": "onnx", "args": {"imgsz": 100}}), "args.imgsz"),
        (json!({"format": "onnx", "args": {"int8": true}}), "args.int8"),
        (json!({"format": "torchscript", "args": {"half": true}}), "args.half"),
    ] {
        let (s, e) = call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert!(e["error"].as_str().expect("error").contains(field), "{body}: {e}");
    }
    let (s, d) = call(&f.app, "DELETE", &uri, a, None).await;
    assert_eq!((s, d["action"].as_str()), (StatusCode::OK, Some("deleted")));
    let (_, l) = call(&f.app, "GET", "/api/models/team-a/vision/detector/exports", a, None).await;
    assert_eq!(l["exports"], json!([]));
}

#[tokio::test]
async fn bad_training_requests_say_what_is_wrong_and_write_nothing() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    call(&f.app, "POST", "/api/datasets", a, Some(json!({"dataset": "flowers", "task": "classify"}))).await;
    for (args, status, needle) in [
        (json!({"model": "yolov8n.pt", "data": "shapes"}), StatusCode::BAD_REQUEST, "pretrained"),
        (json!({"model": "yolo11n.yaml", "data": "shapes"}), StatusCode::BAD_REQUEST, "trainArgs.model"),
        (json!({"data": "shapes"}), StatusCode::BAD_REQUEST, "trainArgs.model"),
        (json!({"model": "yolov8n"}), StatusCode::BAD_REQUEST, "trainArgs.data"),
        (json!({"model": "yolov8n", "data": "shapes", "mosaic": 0.5}), StatusCode::BAD_REQUEST, "trainArgs.mosaic"),
        (json!({"model": "yolov8n", "data": "shapes", "epochs": 0}), StatusCode::BAD_REQUEST, "trainArgs.epochs"),
        (json!({"model": "yolov8n", "data": "shapes", "imgsz": 330}), StatusCode::BAD_REQUEST, "multiple of 32"),
        (json!({"model": "yolov8n", "data": "shapes", "batch": -1}), StatusCode::BAD_REQUEST, "trainArgs.batch"),
        (json!({"model": "yolov8n", "data": "shapes", "cos_lr": "yes"}), StatusCode::BAD_REQUEST, "trainArgs.cos_lr"),
        (json!({"model": "yolov8n", "data": "shapes", "optimizer": "Lion"}), StatusCode::BAD_REQUEST, "optimizer"),
        (json!({"model": "yolov8n", "data": "flowers"}), StatusCode::BAD_REQUEST, "classify dataset"),
        (json!({"model": "yolov8n", "data": "missing"}), StatusCode::NOT_FOUND, "dataset 'missing'"),
        (json!({"model": "yolov8n", "data": "ul://team-b/datasets/shapes"}), StatusCode::NOT_FOUND, "dataset"),
        (json!({"model": "yolov8n", "data": "ul://team-a/shapes"}), StatusCode::BAD_REQUEST, "trainArgs.data"),
    ] {
        let (s, e) = call(&f.app, "POST", "/api/training/start", a, start(&id, args.clone())).await;
        assert_eq!(s, status, "{args}: {e}");
        assert!(e["error"].as_str().expect("error").contains(needle), "{args}: {e}");
    }
    let (s, _) = call(
        &f.app,
        "POST",
        "/api/training/start",
        a,
        start("0123456789ab", json!({"model": "yolov8n", "data": "shapes"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "unknown model id");
    let (s, _) = call(
        &f.app,
        "POST",
        "/api/training/start",
        &f.a_viewer,
        start(&id, json!({"model": "yolov8n", "data": "shapes"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot train");
    assert!(f.cluster.training_job_store().state().is_empty(), "nothing was created");

    // Models and projects: duplicates, slugs, a missing project.
    let (s, _) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "vision", "model": "detector"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, m) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "vision"}))).await;
    assert_eq!((s, m["model"].as_str()), (StatusCode::CREATED, Some("model-1")), "{m}");
    let (s, _) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "nope", "model": "m"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "vision", "model": "Bad_Slug"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&f.app, "POST", "/api/projects", a, Some(json!({"project": "vision"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, p) = call(&f.app, "POST", "/api/projects", a, Some(json!({"name": "Road Signs (2026)"}))).await;
    assert_eq!((s, p["project"].as_str()), (StatusCode::CREATED, Some("road-signs-2026")));
    let (s, _) = call(&f.app, "POST", "/api/projects", a, Some(json!({"project": "x".repeat(41)}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "slugs stay within Kubernetes' name limits");
}

#[tokio::test]
async fn deleting_a_project_deletes_its_models_training_and_exports() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;
    call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(json!({"format": "onnx"}))).await;
    let (s, d) = call(&f.app, "DELETE", "/api/projects/team-a/vision", a, None).await;
    assert_eq!((s, d["cascadedModels"].as_i64()), (StatusCode::OK, Some(1)), "{d}");
    assert!(f.cluster.record_store().state().is_empty());
    assert!(f.cluster.training_job_store().state().is_empty());
    assert!(f.cluster.export_store().state().is_empty());
    let (s, _) = call(&f.app, "GET", "/api/models/team-a/vision/detector", a, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, datasets) = call(&f.app, "GET", "/api/datasets/team-a", a, None).await;
    assert_eq!(datasets["total"], 1, "the Dataset is not the project's");

    // Cancelling training deletes the TrainingJob only; the model stays, untrained.
    let id = project_with_model_again(&f).await;
    call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;
    let (s, c) = call(&f.app, "DELETE", "/api/models/team-a/vision/detector/training", a, None).await;
    assert_eq!((s, c["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{c}");
    let (_, m) = call(&f.app, "GET", "/api/models/team-a/vision/detector", a, None).await;
    assert_eq!(m["model"]["status"], "untrained");
    let (s, _) = call(&f.app, "DELETE", "/api/models/team-a/vision/detector", a, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f.app, "GET", "/api/models/team-a/vision/detector", a, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// The project and model again (the Dataset exists already).
async fn project_with_model_again(f: &Fixture) -> String {
    let a = &f.a_editor;
    call(&f.app, "POST", "/api/projects", a, Some(json!({"project": "vision"}))).await;
    let (_, m) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "vision", "model": "detector"}))).await;
    m["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn one_workspace_cannot_reach_anothers_projects_models_or_training() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;
    let (_, r) =
        call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(json!({"format": "onnx"}))).await;
    let eid = r["id"].as_str().expect("export id").to_string();
    let b = &f.b_editor;
    let m = "/api/models/team-a/vision/detector";
    for (method, uri, body) in [
        ("GET", "/api/projects/team-a".to_string(), None),
        ("GET", "/api/projects/team-a/vision".to_string(), None),
        ("DELETE", "/api/projects/team-a/vision".to_string(), None),
        ("POST", "/api/projects".to_string(), Some(json!({"project": "p", "owner": "team-a"}))),
        ("GET", "/api/models/team-a/vision".to_string(), None),
        ("GET", m.to_string(), None),
        ("DELETE", m.to_string(), None),
        ("GET", format!("{m}/training"), None),
        ("DELETE", format!("{m}/training"), None),
        ("GET", format!("{m}/files"), None),
        ("GET", format!("{m}/exports"), None),
        ("POST", format!("{m}/exports"), Some(json!({"format": "onnx"}))),
        ("GET", format!("{m}/exports/{eid}"), None),
        ("DELETE", format!("{m}/exports/{eid}"), None),
        // team-a's model id, presented by team-b, and team-a's project named in team-b's body.
        ("POST", "/api/training/start".to_string(), start(&id, json!({"model": "yolov8n", "data": "shapes"}))),
        ("POST", "/api/models".to_string(), Some(json!({"project": "vision", "model": "x"}))),
    ] {
        let (s, e) = call(&f.app, method, &uri, b, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {e}");
    }
    // team-b's own project of the same name is its own.
    let (s, _) = call(&f.app, "POST", "/api/projects", b, Some(json!({"project": "vision"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, l) = call(&f.app, "GET", "/api/projects/team-b/vision", b, None).await;
    assert_eq!(l["models"], json!([]));
    let (s, _) = call(&f.app, "GET", m, a, None).await;
    assert_eq!(s, StatusCode::OK, "still there for its owner");
    assert_eq!(f.cluster.training_job_store().state().len(), 1);
    assert_eq!(f.cluster.export_store().state().len(), 1);
}

#[test]
fn architectures_and_data_are_read_as_ultralytics_names_them() {
    use super::models::{architecture, dataset_slug};
    assert_eq!(architecture("yolov8n.yaml").expect("yaml"), "yolov8n");
    assert_eq!(architecture("yolov8s-cls").expect("cls"), "yolov8s-cls");
    assert!(architecture("yolov8q").is_err());
    assert!(architecture("yolov8n-det").is_err());
    assert_eq!(dataset_slug("team-a", "ul://team-a/datasets/shapes").expect("ul"), "shapes");
    assert_eq!(dataset_slug("team-a", "shapes").expect("bare"), "shapes");
    assert!(dataset_slug("team-a", "../x").is_err());
}

#[test]
fn the_openapi_document_lists_every_project_and_model_route() {
    let doc = serde_json::to_value(crate::api::openapi::document()).expect("document");
    let m = "/api/models/{owner}/{project}/{model}";
    for (path, methods) in [
        ("/api/projects".to_string(), &["post"][..]),
        ("/api/projects/{owner}".to_string(), &["get"]),
        ("/api/projects/{owner}/{project}".to_string(), &["get", "delete"]),
        ("/api/models".to_string(), &["post"]),
        ("/api/training/start".to_string(), &["post"]),
        ("/api/models/{owner}/{project}".to_string(), &["get"]),
        (m.to_string(), &["get", "delete"]),
        (format!("{m}/training"), &["get", "delete"]),
        (format!("{m}/files"), &["get"]),
        (format!("{m}/exports"), &["get", "post"]),
        (format!("{m}/exports/{{export}}"), &["get", "delete"]),
        ("/api/deployments/{owner}".to_string(), &["get", "post"]),
        ("/api/deployments/{owner}/{deployment}".to_string(), &["get", "patch", "delete"]),
    ] {
        for method in methods {
            let op = &doc["paths"][&path][method];
            assert!(op.is_object(), "{method} {path} is not in the OpenAPI document");
            assert!(op["responses"].get("401").is_some(), "{method} {path} lacks the common errors");
        }
    }
}

#[tokio::test]
async fn a_trained_model_is_deployed_stopped_resized_replaced_and_deleted() {
    let f = fixture();
    let id = project_with_model(&f).await;
    let a = &f.a_editor;
    let body = json!({"project": "vision", "model": "detector", "name": "Shapes API", "region": "eu", "cpu": 2, "memoryGi": 4});
    let (s, e) = call(&f.app, "POST", "/api/deployments/team-a", a, Some(body.clone())).await;
    assert_eq!(s, StatusCode::CONFLICT, "an untrained model cannot be deployed: {e}");
    call(&f.app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;
    let (s, r) = call(&f.app, "POST", "/api/deployments/team-a", a, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!((r["deployment"].as_str(), r["status"].as_str()), (Some("shapes-api"), Some("creating")));
    let md = f.cluster.deployment_store().get(&ObjectRef::new("shapes-api").within("team-a")).expect("md");
    let src = md.spec.model.training_job.as_ref().expect("training job source");
    assert_eq!(
        (src.name.as_str(), src.checkpoint),
        (format!("detector-{}", &id[..8]).as_str(), ocellus_crds::CheckpointKind::Best)
    );
    assert_eq!((md.spec.resources.cpu.as_str(), md.spec.resources.memory.as_str()), ("2000m", "4096Mi"));
    let (_, one) = call(&f.app, "GET", "/api/deployments/team-a/shapes-api", a, None).await;
    assert_eq!(one["deployment"]["name"], "Shapes API", "{one}");
    assert_eq!(one["deployment"]["resources"]["cpu"], 2.0);

    let uri = "/api/deployments/team-a/shapes-api";
    let (s, r) = call(&f.app, "PATCH", uri, a, Some(json!({"action": "stop"}))).await;
    assert_eq!((s, r["status"].as_str()), (StatusCode::OK, Some("stopping")), "{r}");
    let spec = |f: &Fixture| {
        f.cluster.deployment_store().get(&ObjectRef::new("shapes-api").within("team-a")).expect("md").spec.clone()
    };
    assert!(spec(&f).stopped);
    call(&f.app, "PATCH", uri, a, Some(json!({"action": "start"}))).await;
    assert!(!spec(&f).stopped);
    call(&f.app, "PATCH", uri, a, Some(json!({"action": "resize", "memoryGi": 8}))).await;
    assert_eq!((spec(&f).resources.cpu.as_str(), spec(&f).resources.memory.as_str()), ("2000m", "8192Mi"), "cpu kept");
    // Replace with another trained model of the project.
    let (_, m2) = call(&f.app, "POST", "/api/models", a, Some(json!({"project": "vision", "model": "second"}))).await;
    let id2 = m2["id"].as_str().expect("id").to_string();
    call(&f.app, "POST", "/api/training/start", a, start(&id2, json!({"model": "yolov8s", "data": "shapes"}))).await;
    let (s, r) =
        call(&f.app, "PATCH", uri, a, Some(json!({"action": "replace", "project": "vision", "model": "second"}))).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let src = spec(&f).model.training_job.expect("source");
    assert_eq!(src.name, format!("second-{}", &id2[..8]));
    for (body, status) in [
        (json!({"action": "camera"}), StatusCode::BAD_REQUEST),
        (json!({"action": "resize", "cpu": 1000}), StatusCode::BAD_REQUEST),
        (json!({"action": "resize"}), StatusCode::BAD_REQUEST),
        (json!({"action": "replace", "project": "vision", "model": "nope"}), StatusCode::NOT_FOUND),
        (json!({}), StatusCode::BAD_REQUEST),
    ] {
        let (s, e) = call(&f.app, "PATCH", uri, a, Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {e}");
    }
    let (s, _) = call(&f.app, "PATCH", uri, &f.b_editor, Some(json!({"action": "stop"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace");
    let (s, _) = call(&f.app, "DELETE", "/api/deployments/team-a/shapes-api", &f.b_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace");
    let (s, _) = call(&f.app, "DELETE", uri, &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer");
    let (s, _) = call(&f.app, "DELETE", uri, a, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f.app, "GET", uri, a, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "read your delete");

    // With a completed ONNX export, a new deployment serves that (ONNX Runtime), not TorchScript.
    call(&f.app, "POST", "/api/models/team-a/vision/detector/exports", a, Some(json!({"format": "onnx"}))).await;
    let ex = f.cluster.export_store().state()[0].clone();
    let mut st = ExportStatus { phase: ExportPhase::Succeeded, ..Default::default() };
    st.common.observed_generation = Some(1);
    f.cluster.set_export_status("team-a", &ex.metadata.name.clone().expect("name"), st);
    let body = json!({"project": "vision", "model": "detector", "deployment": "onnx-api"});
    let (s, r) = call(&f.app, "POST", "/api/deployments/team-a", a, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let md = f.cluster.deployment_store().get(&ObjectRef::new("onnx-api").within("team-a")).expect("md");
    assert_eq!(md.spec.model.export.as_ref().map(|e| e.name.clone()), ex.metadata.name.clone());
    assert!(md.spec.model.training_job.is_none());
}

#[tokio::test]
async fn predictions_by_model_go_to_its_deployment_or_to_one_made_for_them() {
    use axum::Router;
    use axum::routing::any;
    let f = fixture();
    let id = project_with_model(&f).await;
    // A stand-in gateway that echoes the path it was handed.
    let gateway = Router::new().route(
        "/{ns}/{name}/{*rest}",
        any(|req: axum::extract::Request| async move { axum::Json(json!({"uri": req.uri().to_string()})) }),
    );
    let (api, ul) =
        (super::tests::api_with(&f.a_editor, "team-a"), super::tests::state(&f.cluster, Some(gateway), None));
    let app = api.router_with(ul.router(&api));
    let a = &f.a_editor;
    let uri = "/api/models/team-a/vision/detector/predict";
    let (s, e) = call(&app, "POST", uri, a, Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "an untrained model has nothing to serve: {e}");
    assert!(f.cluster.deployment_store().state().is_empty(), "nothing half-made");
    call(&app, "POST", "/api/training/start", a, start(&id, json!({"model": "yolov8n", "data": "shapes"}))).await;

    // No deployment of the model: one is made for its predictions, scaling to zero.
    let (s, echoed) = call(&app, "POST", uri, a, Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{echoed}");
    let made = format!("predict-{id}");
    assert_eq!(echoed["uri"], format!("/team-a/{made}/predict"));
    let md = f.cluster.deployment_store().get(&ObjectRef::new(&made).within("team-a")).expect("the deployment made");
    assert_eq!((md.spec.scaling.min_replicas, md.spec.scaling.max_replicas), (0, 1));
    assert!(md.spec.model.training_job.is_some(), "the model's best weights");
    // Again, and by the model's id: the same deployment.
    let (_, again) = call(&app, "POST", &format!("/api/models/{id}/predict"), a, Some(json!({}))).await;
    assert_eq!(again["uri"], format!("/team-a/{made}/predict"));
    assert_eq!(f.cluster.deployment_store().state().len(), 1);

    // A deployment of the model that serves now is preferred.
    let body = json!({"project": "vision", "model": "detector", "deployment": "api"});
    let (s, _) = call(&app, "POST", "/api/deployments/team-a", a, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let mut ready = (*f.cluster.deployment_store().get(&ObjectRef::new("api").within("team-a")).expect("md")).clone();
    ready.status =
        Some(ocellus_crds::ModelDeploymentStatus { phase: ocellus_crds::DeploymentPhase::Ready, ..Default::default() });
    f.cluster.put_deployment(ready);
    let (_, to_api) = call(&app, "POST", uri, a, Some(json!({}))).await;
    assert_eq!(to_api["uri"], "/team-a/api/predict", "{to_api}");

    // The fixture's app (no gateway) knows every key: refusals come before the gateway.
    for (key, path, status) in [
        (&f.b_editor, uri.to_string(), StatusCode::NOT_FOUND),
        (&f.b_editor, format!("/api/models/{id}/predict"), StatusCode::NOT_FOUND),
        (a, "/api/models/team-a/vision/nothing/predict".to_string(), StatusCode::NOT_FOUND),
        (a, "/api/models/0123456789ab/predict".to_string(), StatusCode::NOT_FOUND),
        (a, format!("/api/models/{id}/clone"), StatusCode::NOT_IMPLEMENTED),
    ] {
        let (s, e) = call(&f.app, "POST", &path, key, Some(json!({}))).await;
        assert_eq!(s, status, "{path}: {e}");
    }
}

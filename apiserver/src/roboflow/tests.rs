//! The Roboflow routes over a memory cluster: the reference's shapes, the key in the query or
//! body, plain-text errors, machine types from nodes, logs, and tenancy.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use kube::ResourceExt;
use ocellus_crds::{DeploymentPhase, Export, ExportPhase, ExportStatus, ModelDeployment, TrainingJob};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::api::keys::PlaintextKey;
use crate::ultralytics::cluster::PodLog;
use crate::ultralytics::{Cluster, MemoryCluster};

struct Fixture {
    app: Router,
    cluster: Arc<MemoryCluster>,
    a: String,
    a_viewer: String,
    b: String,
}

fn fixture() -> Fixture {
    let (app, cluster, [a, a_viewer, b]) = crate::test_support::app_with(super::router);
    Fixture { app, cluster, a, a_viewer, b }
}

/// A request as the Roboflow CLI sends it: GETs with the key in the query, POSTs with it in
/// the JSON body. Returns the status and the body (JSON when it parses, else the text).
async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value, String) {
    let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "gw.example:8000");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default()).expect("request");
    let r = app.clone().oneshot(req).await.expect("call");
    let status = r.status();
    let ct = r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    if status.is_success() {
        assert_eq!(ct, "application/json", "{method} {uri}: {text}");
    } else {
        assert!(ct.starts_with("text/plain"), "errors are plain text: {method} {uri} {ct} {text}");
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
}

/// `/add` of `name` (the export of that name, on `cpu`) with `key` in the body: the status.
async fn add(app: &Router, key: &str, name: &str) -> StatusCode {
    let body = json!({"api_key": key, "deployment_name": name, "machine_type": "cpu"});
    call(app, "POST", "/api/roboflow/add", Some(body)).await.0
}

async fn put_export(c: &MemoryCluster, ns: &str, name: &str, tj: &str, phase: ExportPhase) {
    let e: Export = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "Export",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"source": {"trainingJob": {"name": tj}}, "format": "onnx"},
    }))
    .expect("export");
    c.create_export(e).await.expect("create");
    c.set_export_status(ns, name, ExportStatus { phase, ..Default::default() });
}

async fn put_training_job(c: &MemoryCluster, ns: &str, name: &str) {
    let t: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"datasetRef": {"name": "shapes"}, "model": {"architecture": "yolov8n"}},
    }))
    .expect("training job");
    c.create_training_job(t).await.expect("create");
}

fn get_md(c: &MemoryCluster, ns: &str, name: &str) -> ModelDeployment {
    let found = c
        .deployment_store()
        .state()
        .into_iter()
        .find(|m| m.metadata.namespace.as_deref() == Some(ns) && m.metadata.name.as_deref() == Some(name));
    (*found.expect("the ModelDeployment")).clone()
}

#[tokio::test]
async fn add_get_list_pause_resume_delete_as_the_cli_calls_them() {
    let f = fixture();
    f.cluster.put_node(super::machines::tests_node("gpu-1", 2, Some("NVIDIA-Test-GPU")));
    put_training_job(&f.cluster, "team-a", "shapes-yolov8n").await;
    put_export(&f.cluster, "team-a", "shapes-onnx", "shapes-yolov8n", ExportPhase::Succeeded).await;

    let (s, types, _) = call(&f.app, "GET", &format!("/api/roboflow/machine_types?api_key={}", f.a), None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = types.as_array().expect("list").iter().filter_map(|t| t["machine_type"].as_str()).collect();
    assert_eq!(names, ["cpu", "gpu", "gpu-nvidia-test-gpu"]);

    // The CLI's body: the key in it, the model named by the deployment name.
    let add = json!({"api_key": f.a, "creator_email": "me@example.com", "duration": 0.5, "delete_on_expiration": true,
                     "deployment_name": "shapes-onnx", "inference_version": "latest", "machine_type": "dev-cpu"});
    let (s, d, text) = call(&f.app, "POST", "/api/roboflow/add", Some(add)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    for (k, v) in [
        ("deployment_name", json!("shapes-onnx")),
        ("machine_type", json!("cpu")),
        ("creator_email", json!("me@example.com")),
        ("subdomain", json!("shapes-onnx")),
        ("domain", json!("gw.example:8000/team-a/shapes-onnx")),
        ("url", json!("http://gw.example:8000/team-a/shapes-onnx")),
        ("duration", json!(0.5)),
        ("delete_on_expiration", json!(true)),
        ("min_replicas", json!(1)),
        ("max_replicas", json!(1)),
        ("num_replicas", json!(0)),
        ("status", json!("pending")),
        ("workspace_id", json!("team-a")),
        ("model", json!("export/shapes-onnx")),
    ] {
        assert_eq!(d[k], v, "{k} in {d}");
    }
    assert!(d["creator_id"].as_str().is_some_and(|k| !f.a.contains(k) || k.len() < 20), "never the key: {d}");
    let md = get_md(&f.cluster, "team-a", "shapes-onnx");
    assert_eq!(md.spec.duration_hours, Some(0.5));
    assert!(md.spec.delete_on_expiration);
    assert_eq!((md.spec.resources.cpu.as_str(), md.spec.resources.gpu.count), ("1000m", 0));
    assert_eq!(md.labels().get("ocellus.dev/api").map(String::as_str), Some("roboflow"));

    // A TrainingJob's name: its newest succeeded ONNX export; a GPU machine type.
    let add = json!({"api_key": f.a, "deployment_name": "tj-gpu", "model": "shapes-yolov8n",
                     "machine_type": "gpu-nvidia-test-gpu", "min_replicas": 0, "max_replicas": 2});
    let (s, d, text) = call(&f.app, "POST", "/api/roboflow/add", Some(add)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(d["model"], "export/shapes-onnx");
    let md = get_md(&f.cluster, "team-a", "tj-gpu");
    assert_eq!((md.spec.resources.gpu.count, md.spec.resources.gpu.product.as_deref()), (1, Some("NVIDIA-Test-GPU")));
    assert_eq!((md.spec.scaling.min_replicas, md.spec.scaling.max_replicas), (0, 2));
    assert_eq!(md.spec.duration_hours, Some(3.0), "Roboflow's default duration");
    assert!(!md.spec.delete_on_expiration);

    // The operator's status shows through; `model_id` is what the inference SDK takes.
    let mut ready = get_md(&f.cluster, "team-a", "shapes-onnx");
    ready.status = Some(ocellus_crds::ModelDeploymentStatus {
        phase: DeploymentPhase::Ready,
        ready_replicas: 1,
        model_version: Some("8a6453233793".into()),
        ..Default::default()
    });
    f.cluster.put_deployment(ready);
    let (s, d, _) =
        call(&f.app, "GET", &format!("/api/roboflow/get?api_key={}&deployment_name=shapes-onnx", f.a_viewer), None)
            .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((d["status"].as_str(), d["num_replicas"].as_i64()), (Some("ready"), Some(1)));
    assert_eq!(d["model_id"], "shapes-onnx/8a6453233793");

    let (_, list, _) = call(&f.app, "GET", &format!("/api/roboflow/list?api_key={}", f.a), None).await;
    let names: Vec<&str> =
        list.as_array().expect("list").iter().filter_map(|d| d["deployment_name"].as_str()).collect();
    assert_eq!(names, ["shapes-onnx", "tj-gpu"]);

    let (s, d, _) =
        call(&f.app, "POST", "/api/roboflow/pause", Some(json!({"api_key": f.a, "deployment_name": "shapes-onnx"})))
            .await;
    assert_eq!((s, d["status"].as_str()), (StatusCode::OK, Some("pausing")));
    assert!(get_md(&f.cluster, "team-a", "shapes-onnx").spec.stopped);
    let (s, d, _) =
        call(&f.app, "POST", "/api/roboflow/resume", Some(json!({"api_key": f.a, "deployment_name": "shapes-onnx"})))
            .await;
    assert_eq!((s, d["status"].as_str()), (StatusCode::OK, Some("ready")));
    assert!(!get_md(&f.cluster, "team-a", "shapes-onnx").spec.stopped);

    let (s, d, _) =
        call(&f.app, "POST", "/api/roboflow/delete", Some(json!({"api_key": f.a, "deployment_name": "tj-gpu"}))).await;
    assert_eq!((s, d["status"].as_str()), (StatusCode::OK, Some("deleted")));
    let (s, _, text) =
        call(&f.app, "GET", &format!("/api/roboflow/get?api_key={}&deployment_name=tj-gpu", f.a), None).await;
    assert_eq!((s, text.as_str()), (StatusCode::NOT_FOUND, "deployment 'tj-gpu' not found"));
}

#[tokio::test]
async fn bad_input_gets_plain_text_errors_and_writes_nothing() {
    let f = fixture();
    put_export(&f.cluster, "team-a", "broken", "x", ExportPhase::Failed).await;
    let add = |extra: Value| {
        let mut b = json!({"api_key": f.a, "deployment_name": "shapes-onnx", "machine_type": "cpu"});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    for (body, status, needle) in [
        (add(json!({"machine_type": null})), StatusCode::BAD_REQUEST, "machine_type: is required: one of cpu"),
        (add(json!({"machine_type": "gpu"})), StatusCode::BAD_REQUEST, "'gpu' is not offered here: one of cpu"),
        (add(json!({"duration": 0.001})), StatusCode::BAD_REQUEST, "duration"),
        (add(json!({"duration": "three"})), StatusCode::BAD_REQUEST, "invalid body"),
        (add(json!({"min_replicas": 3, "max_replicas": 2})), StatusCode::BAD_REQUEST, "min_replicas"),
        (add(json!({"deployment_name": "Bad_Name"})), StatusCode::BAD_REQUEST, "not a valid name"),
        (add(json!({})), StatusCode::NOT_FOUND, "an Export or TrainingJob named 'shapes-onnx' in workspace 'team-a'"),
        (add(json!({"model": "broken"})), StatusCode::CONFLICT, "export 'broken' failed"),
    ] {
        let (s, _, text) = call(&f.app, "POST", "/api/roboflow/add", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text:?} lacks {needle:?}");
    }
    assert!(f.cluster.deployment_store().state().is_empty(), "nothing half-made");
    let (s, _, text) = call(
        &f.app,
        "GET",
        &format!("/api/roboflow/get_log?api_key={}&deployment_name=x&from_timestamp=yesterday", f.a),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{text}");
    let (s, _, text) = call(&f.app, "GET", &format!("/api/roboflow/usage_workspace?api_key={}", f.a), None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED);
    assert!(text.contains("usage reports"), "{text}");
    let (s, _, _) = call(&f.app, "GET", &format!("/api/roboflow/no_such_route?api_key={}", f.a), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn keys_are_checked_in_every_form_and_bound_to_their_namespace() {
    let f = fixture();
    put_export(&f.cluster, "team-a", "shapes-onnx", "x", ExportPhase::Succeeded).await;
    put_export(&f.cluster, "team-b", "theirs", "x", ExportPhase::Succeeded).await;
    let (s, _, text) = call(&f.app, "GET", "/api/roboflow/list", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(text.contains("API key required"), "{text}");
    let (s, _, _) =
        call(&f.app, "POST", "/api/roboflow/add", Some(json!({"deployment_name": "x", "machine_type": "cpu"}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no key in the body either");
    let wrong = PlaintextKey::from_bytes([9; 20]);
    let (s, _, _) = call(&f.app, "GET", &format!("/api/roboflow/list?api_key={}", wrong.expose()), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(add(&f.app, &f.a_viewer, "shapes-onnx").await, StatusCode::FORBIDDEN, "a viewer cannot add");

    // Team B cannot serve, see, pause or delete team A's things.
    assert_eq!(add(&f.app, &f.b, "shapes-onnx").await, StatusCode::NOT_FOUND, "team A's export is not team B's");
    assert_eq!(add(&f.app, &f.a, "shapes-onnx").await, StatusCode::OK);
    let (_, list, _) = call(&f.app, "GET", &format!("/api/roboflow/list?api_key={}", f.b), None).await;
    assert_eq!(list, json!([]));
    for (m, uri, body) in [
        ("GET", format!("/api/roboflow/get?api_key={}&deployment_name=shapes-onnx", f.b), None),
        ("GET", format!("/api/roboflow/get_log?api_key={}&deployment_name=shapes-onnx", f.b), None),
        ("POST", "/api/roboflow/pause".to_string(), Some(json!({"api_key": f.b, "deployment_name": "shapes-onnx"}))),
        ("POST", "/api/roboflow/delete".to_string(), Some(json!({"api_key": f.b, "deployment_name": "shapes-onnx"}))),
    ] {
        let (s, _, _) = call(&f.app, m, &uri, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {uri}");
    }
    assert!(!get_md(&f.cluster, "team-a", "shapes-onnx").spec.stopped);
    // A header decides over the body, as over the query everywhere.
    let req = Request::builder()
        .method("POST")
        .uri("/api/roboflow/pause")
        .header(header::AUTHORIZATION, format!("Bearer {}", f.b))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"api_key": f.a, "deployment_name": "shapes-onnx"}).to_string()))
        .expect("request");
    assert_eq!(f.app.clone().oneshot(req).await.expect("call").status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn logs_come_from_the_predictor_pods_newest_first() {
    let f = fixture();
    put_export(&f.cluster, "team-a", "shapes-onnx", "x", ExportPhase::Succeeded).await;
    assert_eq!(add(&f.app, &f.a, "shapes-onnx").await, StatusCode::OK);
    let now = Utc::now();
    let at = |secs: i64| (now - chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    f.cluster.set_predictor_logs(
        "team-a",
        "shapes-onnx",
        vec![PodLog {
            pod: "shapes-onnx-abc".into(),
            text: format!(
                "{} INFO model loaded\n{} WARN slow request\n{} INFO two hours ago\n",
                at(30),
                at(10),
                at(7200)
            ),
        }],
    );
    let (s, logs, text) =
        call(&f.app, "GET", &format!("/api/roboflow/get_log?api_key={}&deployment_name=shapes-onnx", f.a), None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let got: Vec<(&str, &str)> = logs
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["severity"].as_str().unwrap_or_default(), e["payload"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [("WARNING", "[shapes-onnx-abc] WARN slow request"), ("INFO", "[shapes-onnx-abc] INFO model loaded")]
    );
    let from = (now - chrono::Duration::hours(3)).to_rfc3339();
    let uri = format!(
        "/api/roboflow/get_log?api_key={}&deployment_name=shapes-onnx&max_entries=1&from_timestamp={}",
        f.a,
        from.replace('+', "%2B")
    );
    let (_, one, _) = call(&f.app, "GET", &uri, None).await;
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    let (s, _, text) = call(
        &f.app,
        "GET",
        &format!("/api/roboflow/get_log?api_key={}&deployment_name=shapes-onnx&from_timestamp=yesterday", f.a),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(text.contains("from_timestamp"), "{text}");
}

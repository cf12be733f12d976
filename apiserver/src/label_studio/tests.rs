//! `/api/ml` over a memory cluster: the backend view of ModelDeployments, connecting a project,
//! deploying a model, changes, deletion, refusals in Label Studio's shape, tenancy.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use kube::ResourceExt;
use ocellus_crds::{DeploymentPhase, Export, ExportPhase, ExportStatus, ModelDeployment, ModelDeploymentStatus};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::ultralytics::{Cluster, MemoryCluster};

struct Fixture {
    app: Router,
    cluster: Arc<MemoryCluster>,
    keys: [String; 3],
}

fn fixture() -> Fixture {
    let (app, cluster, keys) = crate::test_support::app_with(super::router);
    Fixture { app, cluster, keys }
}

/// A request as `label-studio-sdk` sends it (`Authorization: Token`); the status and JSON body.
async fn call(app: &Router, key: &str, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "gw:8000")
        .header(header::AUTHORIZATION, format!("Token {key}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default()).expect("request");
    let r = app.clone().oneshot(req).await.expect("call");
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn md(ns: &str, name: &str, uid: &str, phase: DeploymentPhase) -> ModelDeployment {
    let mut md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"model": {"export": {"name": "e"}}},
    }))
    .expect("md");
    md.status = Some(ModelDeploymentStatus { phase, model_version: Some("8a6453233793".into()), ..Default::default() });
    md
}

fn get_md(c: &MemoryCluster, ns: &str, name: &str) -> Option<ModelDeployment> {
    c.deployment_store()
        .state()
        .into_iter()
        .find(|m| m.metadata.namespace.as_deref() == Some(ns) && m.metadata.name.as_deref() == Some(name))
        .map(|m| (*m).clone())
}

#[tokio::test]
async fn deployments_are_backends_and_a_project_connects_to_one() {
    let f = fixture();
    let [a, viewer, b] = &f.keys;
    f.cluster.put_deployment(md(
        "team-a",
        "shapes",
        "0000abcd-0000-4000-8000-000000000001",
        DeploymentPhase::ScaledToZero,
    ));
    f.cluster.put_deployment(md("team-a", "broken", "00001234-0000-4000-8000-000000000002", DeploymentPhase::Failed));
    f.cluster.put_deployment(md("team-b", "theirs", "00005678-0000-4000-8000-000000000003", DeploymentPhase::Ready));

    let (s, list) = call(&f.app, viewer, "GET", "/api/ml/", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<i64> = list.as_array().expect("list").iter().filter_map(|b| b["id"].as_i64()).collect();
    assert_eq!(ids, [0x1234, 0xabcd], "by id; team B's is not listed");
    let shapes = &list[1];
    for (k, v) in [
        ("url", json!("http://gw:8000/team-a/shapes")),
        ("project", json!(0)),
        ("state", json!("CO")),
        ("readable_state", json!("Connected")),
        ("model_version", json!("8a6453233793")),
        ("title", json!("shapes")),
        ("auth_method", json!("NONE")),
        ("is_interactive", json!(false)),
    ] {
        assert_eq!(shapes[k], v, "{k} in {shapes}");
    }
    assert_eq!((list[0]["state"].as_str(), list[0]["readable_state"].as_str()), (Some("ER"), Some("Error")));

    // Label Studio's "connect model": the deployment's gateway address, as Label Studio reaches it.
    let connect = json!({"url": "http://ocellus-apiserver.ocellus-system:8000/team-a/shapes/", "project": 7,
                         "title": "Shapes detector", "is_interactive": true, "timeout": 30, "extra_params": {"conf": 0.3}});
    let (s, backend) = call(&f.app, a, "POST", "/api/ml/", Some(connect)).await;
    assert_eq!(s, StatusCode::CREATED, "{backend}");
    assert_eq!((backend["id"].as_i64(), backend["project"].as_i64()), (Some(0xabcd), Some(7)));
    assert_eq!((backend["title"].as_str(), backend["is_interactive"].as_bool()), (Some("Shapes detector"), Some(true)));
    assert_eq!((backend["timeout"].as_f64(), &backend["extra_params"]), (Some(30.0), &json!({"conf": 0.3})));
    let ann = get_md(&f.cluster, "team-a", "shapes").expect("md").annotations().clone();
    assert_eq!(ann.get(super::PROJECT).map(String::as_str), Some("7"));
    let (_, for_7) = call(&f.app, a, "GET", "/api/ml?project=7", None).await;
    assert_eq!(for_7.as_array().map(Vec::len), Some(1));
    let (_, for_8) = call(&f.app, a, "GET", "/api/ml?project=8", None).await;
    assert_eq!(for_8, json!([]));
    // One project per deployment.
    let (s, e) = call(&f.app, a, "POST", "/api/ml", Some(json!({"url": "http://x/team-a/shapes", "project": 8}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["detail"].as_str().is_some_and(|d| d.contains("connected to project 7")), "{e}");

    let id = 0xabcd;
    let (s, changed) =
        call(&f.app, a, "PATCH", &format!("/api/ml/{id}"), Some(json!({"description": "v2", "timeout": 60}))).await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!((changed["description"].as_str(), changed["timeout"].as_f64()), (Some("v2"), Some(60.0)));
    let (_, versions) = call(&f.app, viewer, "GET", &format!("/api/ml/{id}/versions"), None).await;
    assert_eq!(versions, json!({"versions": ["8a6453233793"], "message": ""}));
    let (s, _) = call(&f.app, viewer, "PATCH", &format!("/api/ml/{id}"), Some(json!({"title": "x"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot change it");

    // Team B sees none of it.
    for (m, uri) in
        [("GET", format!("/api/ml/{id}")), ("PATCH", format!("/api/ml/{id}")), ("DELETE", format!("/api/ml/{id}"))]
    {
        let (s, e) = call(&f.app, b, m, &uri, Some(json!({}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {uri}: {e}");
        assert!(e["detail"].is_string(), "{e}");
    }
    let (s, e) =
        call(&f.app, b, "POST", "/api/ml", Some(json!({"url": "http://gw:8000/team-a/shapes", "project": 1}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "team A's deployment is not team B's: {e}");

    let (s, _) = call(&f.app, a, "DELETE", &format!("/api/ml/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(get_md(&f.cluster, "team-a", "shapes").is_none(), "deleting a backend deletes its ModelDeployment");
}

#[tokio::test]
async fn a_backend_for_a_model_is_a_new_deployment_and_bad_input_is_refused() {
    let f = fixture();
    let a = &f.keys[0];
    let e: Export = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "Export",
        "metadata": {"name": "shapes-onnx", "namespace": "team-a"},
        "spec": {"source": {"trainingJob": {"name": "tj"}}, "format": "onnx"},
    }))
    .expect("export");
    f.cluster.create_export(e).await.expect("export");
    f.cluster.set_export_status(
        "team-a",
        "shapes-onnx",
        ExportStatus { phase: ExportPhase::Succeeded, ..Default::default() },
    );
    let body = json!({"url": "", "project": 3, "title": "Shapes v1", "extra_params": {"model": "shapes-onnx"}});
    let (s, backend) = call(&f.app, a, "POST", "/api/ml", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{backend}");
    assert_eq!(backend["url"], "http://gw:8000/team-a/shapes-v1");
    assert_eq!(backend["state"], "DI", "starting");
    let md = get_md(&f.cluster, "team-a", "shapes-v1").expect("a new ModelDeployment");
    assert_eq!(md.spec.model.export.as_ref().map(|e| e.name.as_str()), Some("shapes-onnx"));

    for (body, status, needle) in [
        (json!({"url": "http://gw/team-a/nothing", "project": 1}), StatusCode::BAD_REQUEST, "not the gateway address"),
        (
            json!({"url": "", "extra_params": {"model": "nothing"}}),
            StatusCode::NOT_FOUND,
            "Export or TrainingJob named 'nothing'",
        ),
        (
            json!({"url": "http://gw/team-a/shapes-v1", "auth_method": "BASIC_AUTH", "basic_auth_user": "u"}),
            StatusCode::BAD_REQUEST,
            "only NONE",
        ),
        (json!({"url": "http://gw/team-a/shapes-v1", "timeout": -1}), StatusCode::BAD_REQUEST, "timeout"),
        (json!({"url": "http://gw/team-a/shapes-v1", "project": "seven"}), StatusCode::BAD_REQUEST, "invalid body"),
    ] {
        let (s, e) = call(&f.app, a, "POST", "/api/ml", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e["detail"].as_str().is_some_and(|d| d.contains(needle)), "{body}: {e}");
        assert_eq!(e["status_code"].as_u64(), Some(u64::from(status.as_u16())), "{e}");
    }
    let id = backend["id"].as_i64().expect("id");
    let (s, e) =
        call(&f.app, a, "PATCH", &format!("/api/ml/{id}"), Some(json!({"url": "http://gw/team-a/other"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    for (m, path) in [("POST", "train"), ("POST", "predict"), ("POST", "interactive-annotating")] {
        let (s, e) = call(&f.app, a, m, &format!("/api/ml/{id}/{path}"), Some(json!({"task": 1}))).await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{path}: {e}");
        assert!(e["detail"].as_str().is_some_and(|d| d.contains("not implemented by Ocellus")), "{e}");
    }
    let (s, _) = call(&f.app, a, "GET", "/api/ml/not-a-number", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, e) = call(&f.app, "ul_0000000000000000000000000000000000000000", "GET", "/api/ml", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(e["detail"].is_string(), "{e}");
}
